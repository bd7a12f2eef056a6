//! `drover get tasks|instances|nodes [NAME] [-o table|wide|json|yaml] [-w]`.
//!
//! Tasks, instances and nodes are listed from one [`ClusterView`] (one listing of the prefix at
//! one revision); with `-w` that listing is the watch's own and every later change updates the
//! view and prints a row (or a `deleted` line), without re-listing. Controllers, runs and dead
//! letters are listed and followed by their own prefix.

use std::io::Write;

use chrono::Utc;
use drover_api::deadletter::DeadLetter;
use drover_api::keys::Keys;
use drover_api::records::ControllerInfo;
use drover_api::run::RunRecord;
use drover_store::{watcher, Event, Fed, Relisting, Sink, Store, Versioned, WatchEvents};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use super::get_jobs;
use super::get_view::{list_instances, list_nodes, list_tasks, one, Filter};
use super::objects;
use super::rows::{self, Columns};
use super::snapshot::{self, list_valid, ClusterView, InvalidEntry, InvalidKind};
use super::{connect, store_error};
use crate::cli::{GetArgs, Global, Resource};
use crate::exit::{CliError, CliResult};
use crate::output::{Format, Listing, Table};
use crate::selector::Selector;

pub async fn run(global: &Global, args: GetArgs) -> CliResult {
    // A bad selector is a usage error before anything is read.
    let selector = match &args.selector {
        Some(text) => Selector::parse(text).map_err(|error| CliError::usage(error.to_string()))?,
        None => Selector::default(),
    };
    if args.resource == Resource::Events {
        return super::get_events::run(global, &args, &selector).await;
    }
    if args.for_object.is_some() {
        return Err(CliError::usage("--for applies to `get events` only"));
    }
    let (store, keys) = connect(global).await?;
    // Tasks, instances and nodes come from the cluster view: one listing at one revision, and
    // with -w that listing is the watch's own, so every later change is seen exactly once.
    // Runs and dead letters are selected by their task's labels, which the view holds.
    let from_view = matches!(
        args.resource,
        Resource::Tasks | Resource::Instances | Resource::Nodes
    ) || (!selector.requirements().is_empty() && !args.watch);
    let mut events = None;
    let snapshot = match (from_view, args.watch) {
        (false, _) => ClusterView::default(),
        (true, false) => snapshot::read(&store, &keys).await?,
        (true, true) => {
            let mut stream = watcher::<serde_json::Value>(store.clone(), keys.all());
            let relist = listed_view(&mut stream, &keys).await?;
            let view = relist.live().0.clone();
            events = Some((stream, relist));
            view
        }
    };
    let columns = Columns {
        namespace: args.all_namespaces,
        wide: args.output == Format::Wide,
    };
    let filter = Filter {
        args: &args,
        selector: &selector,
    };
    let task_labels = |namespace: &str, task: &str| {
        snapshot
            .tasks
            .get(&(namespace.to_string(), task.to_string()))
            .map(|t| &t.metadata.labels)
    };
    let none = std::collections::BTreeMap::new();
    let mut invalid: Vec<InvalidEntry> = Vec::new();
    let text =
        match args.resource {
            Resource::Tasks => list_tasks(&snapshot, &keys, &filter, columns)?,
            Resource::Instances => list_instances(&snapshot, &filter, columns)?,
            Resource::Nodes => list_nodes(&snapshot, &filter, columns)?,
            Resource::Controllers => {
                list_controllers(&store, &keys, &filter, columns, &mut invalid).await?
            }
            Resource::Runs => {
                let runs = get_jobs::runs(&store, &keys, &args, &mut invalid).await?;
                let mut listing = Listing {
                    table: get_jobs::run_table(),
                    ..Listing::default()
                };
                let now = Utc::now();
                for run in runs.iter().filter(|r| {
                    selector.matches(task_labels(&r.namespace, &r.task).unwrap_or(&none))
                }) {
                    listing.table.row(get_jobs::run_row(run, now));
                    listing.names.push(format!("run/{}.{}", run.task, run.run));
                    listing.objects.push(objects_value(run));
                }
                listing.render(&args.output)?
            }
            Resource::Deadletters => {
                let letters = get_jobs::deadletters(&store, &keys, &args, &mut invalid).await?;
                let mut listing = Listing {
                    table: get_jobs::deadletter_table(),
                    ..Listing::default()
                };
                let now = Utc::now();
                for letter in letters.iter().filter(|l| {
                    selector.matches(task_labels(&l.namespace, &l.task).unwrap_or(&none))
                }) {
                    listing.table.row(get_jobs::deadletter_row(letter, now));
                    listing
                        .names
                        .push(format!("deadletter/{}", letter.instance));
                    listing.objects.push(objects_value(letter));
                }
                listing.render(&args.output)?
            }
            Resource::Events => String::new(),
        };
    let kinds: &[InvalidKind] = match args.resource {
        Resource::Tasks => &[InvalidKind::Task, InvalidKind::TaskState],
        Resource::Instances => &[InvalidKind::Assignment, InvalidKind::Status],
        Resource::Nodes => &[InvalidKind::Node, InvalidKind::NodeRecord],
        Resource::Controllers | Resource::Runs | Resource::Deadletters | Resource::Events => &[],
    };
    invalid.extend(
        snapshot
            .invalid
            .iter()
            .filter(|entry| kinds.contains(&entry.kind))
            .filter(|entry| filter.keeps_invalid(entry, &snapshot, &keys))
            .cloned(),
    );
    print_now(&text);
    report_invalid(&invalid, &args.output);
    match events {
        Some((events, relist)) => {
            follow_view(&store, &keys, events, relist, &filter, columns).await?;
        }
        None if args.watch => follow(&store, &keys, &filter, columns).await?,
        None => {}
    }
    Ok(())
}

/// A record as a JSON object for `-o json|yaml|jsonpath`.
fn objects_value<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value)
        .unwrap_or_else(|error| serde_json::json!({"error": error.to_string()}))
}

/// The CLI's view as the watch of the whole prefix keeps it current.
struct Watched(ClusterView);

impl Sink for Watched {
    type Value = serde_json::Value;
    type Context = Keys;

    fn fresh(&self, _: &Keys) -> Self {
        Watched(ClusterView::default())
    }

    fn apply(&mut self, keys: &Keys, item: Versioned<serde_json::Value>) {
        self.0
            .apply(keys, &item.key, Ok(item.value), item.mod_revision);
    }

    fn delete(&mut self, keys: &Keys, key: &str, revision: i64) {
        self.0.remove(keys, key, revision);
    }

    fn not_json(&mut self, keys: &Keys, key: &str, revision: i64, error: serde_json::Error) {
        self.0.apply(keys, key, Err(error.to_string()), revision);
    }

    fn listed(&mut self, keys: &Keys, revision: i64) {
        self.0.revision = revision;
        self.0.settle(keys);
    }
}

/// Consumes the watch up to its first listing; returns the view it built.
async fn listed_view(
    events: &mut WatchEvents<serde_json::Value>,
    keys: &Keys,
) -> CliResult<Relisting<Watched>> {
    let mut relist = Relisting::new(Watched(ClusterView::default()));
    while let Some(item) = events.next().await {
        let fed = relist
            .feed(keys, item)
            .map_err(|error| store_error("watching", error))?;
        if fed == Fed::Listed {
            return Ok(relist);
        }
    }
    Err(CliError::failure(
        "the watch ended before its first listing",
    ))
}

/// Follows the watch after the first listing: each change updates the view (no re-listing)
/// and prints the rows of the objects it touched. A re-list (after a compaction) is built
/// aside and swapped in whole.
async fn follow_view(
    store: &Store,
    keys: &Keys,
    mut events: WatchEvents<serde_json::Value>,
    mut relist: Relisting<Watched>,
    filter: &Filter<'_>,
    columns: Columns,
) -> CliResult {
    let args = filter.args;
    while let Some(item) = events.next().await {
        let fed = relist
            .feed(keys, item)
            .map_err(|error| store_error("watching", error))?;
        let (key, deleted) = match fed {
            Fed::Changed { key, deleted } => (key, deleted),
            // A re-list (the watch's revision was compacted): what changed meanwhile is not
            // known change by change, so the whole table is printed again, as it is now.
            Fed::Listed => {
                let view = &relist.live().0;
                let table = match args.resource {
                    Resource::Tasks => list_tasks(view, keys, filter, columns)?,
                    Resource::Instances => list_instances(view, filter, columns)?,
                    _ => list_nodes(view, filter, columns)?,
                };
                print_now(&table);
                continue;
            }
            Fed::Nothing => continue,
        };
        if !ClusterView::holds(keys, &key) {
            continue;
        }
        relist.live_mut().0.settle(keys);
        // A task whose value is Invalid has no row to print: say so, as the listing does.
        let invalid_task = relist
            .live()
            .0
            .invalid_entry(&key)
            .filter(|entry| matches!(entry.kind, InvalidKind::Task | InvalidKind::TaskState))
            .cloned();
        if let Some(entry) = invalid_task {
            if args.resource == Resource::Tasks {
                report_invalid_line(&entry, &args.output);
            }
            continue;
        }
        let change = if deleted {
            Change::Deleted(key)
        } else {
            Change::Applied(key)
        };
        let text = watch_lines(store, &relist.live().0, keys, &change, filter, columns).await?;
        print_now(&text);
    }
    Ok(())
}

/// One key that became Invalid while watching: a row of the listing's Invalid table, or a
/// warning on stderr for `-o json|yaml`.
fn report_invalid_line(entry: &InvalidEntry, format: &Format) {
    if format.is_table() {
        print_now(&format!("{}   Invalid   {}\n", entry.key, entry.error));
    } else {
        eprintln!("warning: {}: Invalid: {}", entry.key, entry.error);
    }
}

/// Keys whose values do not decode are listed, never fatal: after the table as `Invalid` rows
/// (key and error), and on stderr for the other formats, so the document on stdout stays one
/// a script can parse (for tasks, `-o json|yaml` also hold them as `status.phase: Invalid`).
pub fn report_invalid(invalid: &[InvalidEntry], format: &Format) {
    if invalid.is_empty() {
        return;
    }
    match format {
        Format::Table | Format::Wide => {
            let mut table = Table::new(vec!["KEY", "STATUS", "ERROR"]);
            for entry in invalid {
                table.row(vec![
                    entry.key.clone(),
                    "Invalid".to_string(),
                    entry.error.clone(),
                ]);
            }
            print_now(&format!("\n{}", table.render()));
        }
        _ => {
            for entry in invalid {
                eprintln!("warning: {}: Invalid: {}", entry.key, entry.error);
            }
        }
    }
}

async fn list_controllers(
    store: &Store,
    keys: &Keys,
    filter: &Filter<'_>,
    columns: Columns,
    invalid: &mut Vec<InvalidEntry>,
) -> CliResult<String> {
    let args = filter.args;
    let prefix = keys.controllers();
    let listed = list_valid::<ControllerInfo>(
        store,
        &prefix,
        "controllers",
        InvalidKind::Controller,
        invalid,
    )
    .await?;
    let replicas: Vec<ControllerInfo> = listed
        .into_iter()
        .map(|item| item.value)
        .filter(|info| args.name.as_deref().is_none_or(|wanted| wanted == info.id))
        // Controllers carry no labels: only a selector that holds for none keeps them.
        .filter(|_| filter.selector.matches(&Default::default()))
        .collect();
    if let (Some(name), true) = (&args.name, replicas.is_empty() && !args.watch) {
        return Err(CliError::failure(format!(
            "controller \"{name}\" not found"
        )));
    }
    let mut listing = Listing {
        table: rows::controller_table(columns),
        ..Listing::default()
    };
    let now = Utc::now();
    for info in &replicas {
        listing.table.row(rows::controller_row(info, now));
        listing.names.push(format!("controller/{}", info.id));
        listing.objects.push(objects_value(info));
    }
    if replicas.is_empty() && args.output.is_table() && !args.watch {
        return Ok("No controllers found.\n".to_string());
    }
    listing.render(&args.output)
}

fn print_now(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (e.g. `| head`) is not an error worth reporting.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Follows controllers, runs or dead letters after the first listing: each change prints the
/// row of the key it touched, read back from etcd.
async fn follow(store: &Store, keys: &Keys, filter: &Filter<'_>, columns: Columns) -> CliResult {
    let args = filter.args;
    let prefix = match args.resource {
        Resource::Controllers => keys.controllers(),
        Resource::Runs => keys.runs_of(&args.namespace, args.name.as_deref().unwrap_or_default()),
        Resource::Deadletters => keys.deadletters(),
        // The view's kinds follow the watch in `follow_view`.
        Resource::Tasks | Resource::Instances | Resource::Nodes | Resource::Events => return Ok(()),
    };
    let mut changes = changed_keys::<serde_json::Value>(store.clone(), prefix).boxed();
    let nothing = ClusterView::default();
    while let Some(change) = changes.next().await {
        let key = change.map_err(|error| store_error("watching", error))?;
        let text = watch_lines(store, &nothing, keys, &key, filter, columns).await?;
        print_now(&text);
    }
    Ok(())
}

/// What changed: the key of every `Apply`/`Delete` after the initial listing.
fn changed_keys<T: DeserializeOwned + Send + 'static>(
    store: Store,
    prefix: String,
) -> impl Stream<Item = Result<Change, drover_store::Error>> + Send {
    watcher::<T>(store, prefix).filter_map(|event| async move {
        match event {
            Ok(Event::Apply(item)) => Some(Ok(Change::Applied(item.key))),
            Ok(Event::Delete { key, .. }) => Some(Ok(Change::Deleted(key))),
            Ok(_) => None,
            Err(error) if error.retryable() => None,
            Err(error) => Some(Err(error)),
        }
    })
}

/// One watched change.
enum Change {
    Applied(String),
    Deleted(String),
}

/// The lines to print for one change, in the listing's format.
async fn watch_lines(
    store: &Store,
    snapshot: &ClusterView,
    keys: &Keys,
    change: &Change,
    filter: &Filter<'_>,
    columns: Columns,
) -> CliResult<String> {
    let args = filter.args;
    let (key, deleted) = match change {
        Change::Applied(key) => (key.as_str(), false),
        Change::Deleted(key) => (key.as_str(), true),
    };
    let now = Utc::now();
    let table = || rows::table_for(args.resource, columns);
    let record = |value: serde_json::Value, name: String, row: Vec<String>| {
        one(args, value, name, table(), row, None)
    };
    match args.resource {
        Resource::Tasks => {
            let name = keys
                .parse_task_key(key)
                .or_else(|| keys.parse_taskstate_key(key))
                .or_else(|| {
                    keys.parse_any_status_key(key)
                        .map(|id| (id.namespace().to_string(), id.task().to_string()))
                });
            let Some((namespace, name)) = name else {
                return Ok(String::new());
            };
            match snapshot.tasks.get(&(namespace.clone(), name.clone())) {
                Some(task) if filter.keeps(&namespace, &name, Some(&task.metadata.labels)) => one(
                    args,
                    objects::task_object(task, snapshot, keys),
                    format!("task/{name}"),
                    table(),
                    rows::task_row(task, snapshot, columns),
                    Some(&task.metadata.labels),
                ),
                Some(_) => Ok(String::new()),
                None if deleted && filter.keeps(&namespace, &name, None) => {
                    Ok(format!("task/{name} deleted\n"))
                }
                None => Ok(String::new()),
            }
        }
        Resource::Instances => {
            let id = keys
                .parse_any_status_key(key)
                .or_else(|| keys.parse_assignment_key(key).map(|(_, id)| id));
            let Some(id) = id else {
                return Ok(String::new());
            };
            match snapshot.instances.get(&id.to_string()) {
                Some(view) if filter.keeps_instance(view, snapshot) => {
                    let labels = objects::instance_labels(view, snapshot);
                    one(
                        args,
                        objects::instance_object(view, snapshot),
                        format!("instance/{id}"),
                        table(),
                        rows::instance_row(view, columns, now),
                        labels,
                    )
                }
                Some(_) => Ok(String::new()),
                None if (args.all_namespaces || id.namespace() == args.namespace)
                    && args
                        .name
                        .as_deref()
                        .is_none_or(|n| n == id.task() || n == id.to_string()) =>
                {
                    Ok(format!("instance/{id} deleted\n"))
                }
                None => Ok(String::new()),
            }
        }
        Resource::Nodes => {
            let name = keys
                .parse_node_key(key)
                .or_else(|| keys.parse_nodeinfo_key(key));
            let Some(name) = name else {
                return Ok(String::new());
            };
            if args.name.as_deref().is_some_and(|wanted| wanted != name) {
                return Ok(String::new());
            }
            match snapshot.nodes.get(&name) {
                Some(view) if filter.keeps_node(view) => one(
                    args,
                    objects::node_object(view, snapshot),
                    format!("node/{name}"),
                    table(),
                    rows::node_row(view, snapshot, columns, now),
                    view.node.as_ref().map(|n| &n.labels),
                ),
                Some(_) => Ok(String::new()),
                None => Ok(format!("node/{name} deleted\n")),
            }
        }
        Resource::Runs => match store
            .get::<RunRecord>(key)
            .await
            .map_err(|error| store_error("reading a run", error))?
        {
            Some(run) => record(
                objects_value(&run.value),
                format!("run/{}.{}", run.value.task, run.value.run),
                get_jobs::run_row(&run.value, now),
            ),
            None => Ok(format!("{key} deleted\n")),
        },
        Resource::Deadletters => match store
            .get::<DeadLetter>(key)
            .await
            .map_err(|error| store_error("reading a dead letter", error))?
        {
            Some(letter) => record(
                objects_value(&letter.value),
                format!("deadletter/{}", letter.value.instance),
                get_jobs::deadletter_row(&letter.value, now),
            ),
            None => Ok(format!("{key} deleted\n")),
        },
        Resource::Controllers => {
            let Some(id) = keys.parse_controller_key(key) else {
                return Ok(String::new());
            };
            if deleted {
                return Ok(format!("controller/{id} gone\n"));
            }
            let info = store
                .get::<ControllerInfo>(key)
                .await
                .map_err(|error| store_error("reading a controller", error))?;
            match info {
                Some(info) => record(
                    objects_value(&info.value),
                    format!("controller/{id}"),
                    rows::controller_row(&info.value, now),
                ),
                None => Ok(format!("controller/{id} gone\n")),
            }
        }
        Resource::Events => Ok(String::new()),
    }
}
