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
use drover_api::task::Task;
use drover_store::{watcher, Event, Fed, Relisting, Sink, Store, Versioned, WatchEvents};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use super::get_jobs;
use super::rows::{self, Columns};
use super::snapshot::{self, list_valid, ClusterView, InvalidEntry, InvalidKind};
use super::{connect, store_error};
use crate::cli::{GetArgs, Global, Resource};
use crate::exit::{CliError, CliResult};
use crate::output::{to_json, to_yaml, Format, Table};

pub async fn run(global: &Global, args: GetArgs) -> CliResult {
    let (store, keys) = connect(global).await?;
    // Tasks, instances and nodes come from the cluster view: one listing at one revision, and
    // with -w that listing is the watch's own, so every later change is seen exactly once.
    let from_view = matches!(
        args.resource,
        Resource::Tasks | Resource::Instances | Resource::Nodes
    );
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
    let mut invalid: Vec<InvalidEntry> = Vec::new();
    let text = match args.resource {
        Resource::Tasks => list_tasks(&snapshot, &args, columns)?,
        Resource::Instances => list_instances(&snapshot, &args, columns)?,
        Resource::Nodes => list_nodes(&snapshot, &args, columns)?,
        Resource::Controllers => {
            list_controllers(&store, &keys, &args, columns, &mut invalid).await?
        }
        Resource::Runs => {
            let runs = get_jobs::runs(&store, &keys, &args, &mut invalid).await?;
            let mut table = get_jobs::run_table();
            let now = Utc::now();
            for run in &runs {
                table.row(get_jobs::run_row(run, now));
            }
            render(args.output, &runs, table)?
        }
        Resource::Deadletters => {
            let letters = get_jobs::deadletters(&store, &keys, &args, &mut invalid).await?;
            let mut table = get_jobs::deadletter_table();
            let now = Utc::now();
            for letter in &letters {
                table.row(get_jobs::deadletter_row(letter, now));
            }
            render(args.output, &letters, table)?
        }
    };
    let kinds: &[InvalidKind] = match args.resource {
        Resource::Tasks => &[InvalidKind::Task, InvalidKind::TaskState],
        Resource::Instances => &[InvalidKind::Assignment, InvalidKind::Status],
        Resource::Nodes => &[InvalidKind::Node, InvalidKind::NodeRecord],
        Resource::Controllers | Resource::Runs | Resource::Deadletters => &[],
    };
    invalid.extend(
        snapshot
            .invalid
            .iter()
            .filter(|entry| kinds.contains(&entry.kind))
            .cloned(),
    );
    print_now(&text);
    report_invalid(&invalid, args.output);
    match events {
        Some((events, relist)) => {
            follow_view(&store, &keys, events, relist, &args, columns).await?;
        }
        None if args.watch => follow(&store, &keys, &args, columns).await?,
        None => {}
    }
    Ok(())
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
    args: &GetArgs,
    columns: Columns,
) -> CliResult {
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
                    Resource::Tasks => list_tasks(view, args, columns)?,
                    Resource::Instances => list_instances(view, args, columns)?,
                    _ => list_nodes(view, args, columns)?,
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
                report_invalid_line(&entry, args.output);
            }
            continue;
        }
        let change = if deleted {
            Change::Deleted(key)
        } else {
            Change::Applied(key)
        };
        let text = watch_lines(store, &relist.live().0, keys, &change, args, columns).await?;
        print_now(&text);
    }
    Ok(())
}

/// One key that became Invalid while watching: a row of the listing's Invalid table, or a
/// warning on stderr for `-o json|yaml`.
fn report_invalid_line(entry: &InvalidEntry, format: Format) {
    match format {
        Format::Table | Format::Wide => {
            print_now(&format!("{}   Invalid   {}\n", entry.key, entry.error));
        }
        Format::Json | Format::Yaml => {
            eprintln!("warning: {}: Invalid: {}", entry.key, entry.error);
        }
    }
}

/// Keys whose values do not decode are listed, never fatal: after the table as `Invalid` rows
/// (key and error), and on stderr for `-o json|yaml`, so the document on stdout stays one a
/// script can parse and `apply` back.
fn report_invalid(invalid: &[InvalidEntry], format: Format) {
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
        Format::Json | Format::Yaml => {
            for entry in invalid {
                eprintln!("warning: {}: Invalid: {}", entry.key, entry.error);
            }
        }
    }
}

fn in_scope(args: &GetArgs, namespace: &str, name: &str) -> bool {
    (args.all_namespaces || namespace == args.namespace)
        && args.name.as_deref().is_none_or(|wanted| wanted == name)
}

fn render<T: serde::Serialize>(format: Format, items: &[T], table: Table) -> CliResult<String> {
    match format {
        Format::Json => to_json(items),
        Format::Yaml => to_yaml(items),
        Format::Table | Format::Wide if table.is_empty() => Ok(String::new()),
        Format::Table | Format::Wide => Ok(table.render()),
    }
}

fn not_found(args: &GetArgs, kind: &str, count: usize) -> CliResult {
    match &args.name {
        Some(name) if count == 0 && !args.watch => Err(CliError::failure(format!(
            "{kind} \"{name}\" not found in namespace \"{}\"",
            args.namespace
        ))),
        _ => Ok(()),
    }
}

fn list_tasks(snapshot: &ClusterView, args: &GetArgs, columns: Columns) -> CliResult<String> {
    let tasks: Vec<&Task> = snapshot
        .tasks
        .values()
        .filter(|t| in_scope(args, &t.metadata.namespace, &t.metadata.name))
        .collect();
    not_found(args, "task", tasks.len())?;
    let mut table = rows::task_table(columns);
    for task in &tasks {
        table.row(rows::task_row(task, snapshot, columns));
    }
    if tasks.is_empty() && matches!(args.output, Format::Table | Format::Wide) && !args.watch {
        return Ok(no_resources(args));
    }
    render(args.output, &tasks, table)
}

fn list_instances(snapshot: &ClusterView, args: &GetArgs, columns: Columns) -> CliResult<String> {
    let now = Utc::now();
    let views: Vec<_> = snapshot
        .instances
        .values()
        .filter(|view| {
            let (namespace, task) = view.task();
            let id = view.id.to_string();
            (args.all_namespaces || namespace == args.namespace)
                && args
                    .name
                    .as_deref()
                    .is_none_or(|wanted| wanted == id || wanted == task)
        })
        .collect();
    not_found(args, "instance", views.len())?;
    let mut table = rows::instance_table(columns);
    for view in &views {
        table.row(rows::instance_row(view, columns, now));
    }
    if views.is_empty() && matches!(args.output, Format::Table | Format::Wide) && !args.watch {
        return Ok(no_resources(args));
    }
    render(args.output, &views, table)
}

fn list_nodes(snapshot: &ClusterView, args: &GetArgs, columns: Columns) -> CliResult<String> {
    let now = Utc::now();
    let views: Vec<_> = snapshot
        .nodes
        .values()
        .filter(|view| {
            args.name
                .as_deref()
                .is_none_or(|wanted| wanted == view.name)
        })
        .collect();
    not_found(args, "node", views.len())?;
    let mut table = rows::node_table(columns);
    for view in &views {
        table.row(rows::node_row(view, snapshot, columns, now));
    }
    if views.is_empty() && matches!(args.output, Format::Table | Format::Wide) && !args.watch {
        return Ok("No nodes found.\n".to_string());
    }
    render(args.output, &views, table)
}

async fn list_controllers(
    store: &Store,
    keys: &Keys,
    args: &GetArgs,
    columns: Columns,
    invalid: &mut Vec<InvalidEntry>,
) -> CliResult<String> {
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
        .collect();
    not_found(args, "controller", replicas.len())?;
    let mut table = rows::controller_table(columns);
    let now = Utc::now();
    for info in &replicas {
        table.row(rows::controller_row(info, now));
    }
    if replicas.is_empty() && matches!(args.output, Format::Table | Format::Wide) && !args.watch {
        return Ok("No controllers found.\n".to_string());
    }
    render(args.output, &replicas, table)
}

fn no_resources(args: &GetArgs) -> String {
    if args.all_namespaces {
        "No resources found.\n".to_string()
    } else {
        format!("No resources found in {} namespace.\n", args.namespace)
    }
}

fn print_now(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (e.g. `| head`) is not an error worth reporting.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Follows controllers, runs or dead letters after the first listing: each change prints the
/// row of the key it touched, read back from etcd.
async fn follow(store: &Store, keys: &Keys, args: &GetArgs, columns: Columns) -> CliResult {
    let prefix = match args.resource {
        Resource::Controllers => keys.controllers(),
        Resource::Runs => keys.runs_of(&args.namespace, args.name.as_deref().unwrap_or_default()),
        Resource::Deadletters => keys.deadletters(),
        // The view's kinds follow the watch in `follow_view`.
        Resource::Tasks | Resource::Instances | Resource::Nodes => return Ok(()),
    };
    let mut changes = changed_keys::<serde_json::Value>(store.clone(), prefix).boxed();
    let nothing = ClusterView::default();
    while let Some(change) = changes.next().await {
        let key = change.map_err(|error| store_error("watching", error))?;
        let text = watch_lines(store, &nothing, keys, &key, args, columns).await?;
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
    args: &GetArgs,
    columns: Columns,
) -> CliResult<String> {
    let (key, deleted) = match change {
        Change::Applied(key) => (key.as_str(), false),
        Change::Deleted(key) => (key.as_str(), true),
    };
    let now = Utc::now();
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
            if !in_scope(args, &namespace, &name) {
                return Ok(String::new());
            }
            match snapshot.tasks.get(&(namespace.clone(), name.clone())) {
                Some(task) => one(args, task, rows::task_row(task, snapshot, columns), columns),
                None if deleted => Ok(format!("task/{name} deleted\n")),
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
            if !in_scope(args, id.namespace(), id.task())
                && args.name.as_deref() != Some(&id.to_string())
            {
                return Ok(String::new());
            }
            match snapshot.instances.get(&id.to_string()) {
                Some(view) => one(args, view, rows::instance_row(view, columns, now), columns),
                None => Ok(format!("instance/{id} deleted\n")),
            }
        }
        Resource::Runs => match store
            .get::<RunRecord>(key)
            .await
            .map_err(|error| store_error("reading a run", error))?
        {
            Some(run) => one(
                args,
                &run.value,
                get_jobs::run_row(&run.value, now),
                columns,
            ),
            None => Ok(format!("{key} deleted\n")),
        },
        Resource::Deadletters => match store
            .get::<DeadLetter>(key)
            .await
            .map_err(|error| store_error("reading a dead letter", error))?
        {
            Some(letter) => one(
                args,
                &letter.value,
                get_jobs::deadletter_row(&letter.value, now),
                columns,
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
                Some(info) => one(
                    args,
                    &info.value,
                    rows::controller_row(&info.value, now),
                    columns,
                ),
                None => Ok(format!("controller/{id} gone\n")),
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
                Some(view) => one(
                    args,
                    view,
                    rows::node_row(view, snapshot, columns, now),
                    columns,
                ),
                None => Ok(format!("node/{name} deleted\n")),
            }
        }
    }
}

/// One object in the listing's format: a table row without header, or a JSON/YAML document.
fn one<T: serde::Serialize>(
    args: &GetArgs,
    item: &T,
    row: Vec<String>,
    columns: Columns,
) -> CliResult<String> {
    match args.output {
        Format::Json => serde_json::to_string(item)
            .map(|line| line + "\n")
            .map_err(|error| CliError::failure(format!("cannot encode JSON: {error}"))),
        Format::Yaml => to_yaml(std::slice::from_ref(item)),
        Format::Table | Format::Wide => {
            let mut table = rows::table_for(args.resource, columns);
            table.row(row);
            Ok(table.render_rows())
        }
    }
}
