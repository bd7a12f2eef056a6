//! The listings `get` draws from the cluster view — tasks, instances and nodes — in every
//! output format, filtered by namespace, name and `-l` selector.

use std::collections::BTreeMap;

use chrono::Utc;
use drover_api::keys::Keys;
use drover_api::task::Task;

use super::objects::{self, instance_labels, undecodable_tasks};
use super::rows::{self, Columns};
use super::snapshot::{ClusterView, InstanceView, InvalidEntry, InvalidKind, NodeView};
use crate::cli::GetArgs;
use crate::exit::{CliError, CliResult};
use crate::output::{pairs, Format, Listing};
use crate::selector::Selector;

/// What a listing keeps: the namespace and name from the command line and the selector.
pub struct Filter<'a> {
    /// The command line.
    pub args: &'a GetArgs,
    /// `-l`, empty when not given.
    pub selector: &'a Selector,
}

impl Filter<'_> {
    fn namespace(&self, namespace: &str) -> bool {
        self.args.all_namespaces || namespace == self.args.namespace
    }

    fn labels(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.selector.matches(labels.unwrap_or(&BTreeMap::new()))
    }

    /// Whether the object named `namespace/name` with `labels` is listed.
    pub fn keeps(
        &self,
        namespace: &str,
        name: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        self.namespace(namespace)
            && self
                .args
                .name
                .as_deref()
                .is_none_or(|wanted| wanted == name)
            && self.labels(labels)
    }

    /// Whether an instance is listed: by id or by its task's name, and its task's labels.
    pub fn keeps_instance(&self, view: &InstanceView, cluster: &ClusterView) -> bool {
        let (namespace, task) = view.task();
        let id = view.id.to_string();
        self.namespace(namespace)
            && self
                .args
                .name
                .as_deref()
                .is_none_or(|wanted| wanted == id || wanted == task)
            && self.labels(instance_labels(view, cluster))
    }

    /// Whether a node is listed.
    pub fn keeps_node(&self, view: &NodeView) -> bool {
        self.args
            .name
            .as_deref()
            .is_none_or(|wanted| wanted == view.name)
            && self.labels(view.node.as_ref().map(|n| &n.labels))
    }

    /// Whether an Invalid key is reported with this listing: the labels of the object it
    /// belongs to match (none when that object is unknown, as for a task that does not
    /// decode).
    pub fn keeps_invalid(&self, entry: &InvalidEntry, view: &ClusterView, keys: &Keys) -> bool {
        let task_labels =
            |ns: String, name: String| view.tasks.get(&(ns, name)).map(|t| &t.metadata.labels);
        let labels = match entry.kind {
            InvalidKind::Task => keys
                .parse_task_key(&entry.key)
                .and_then(|(n, t)| task_labels(n, t)),
            InvalidKind::TaskState => keys
                .parse_taskstate_key(&entry.key)
                .and_then(|(n, t)| task_labels(n, t)),
            InvalidKind::Assignment | InvalidKind::Status => keys
                .parse_any_status_key(&entry.key)
                .or_else(|| keys.parse_assignment_key(&entry.key).map(|(_, id)| id))
                .and_then(|id| task_labels(id.namespace().into(), id.task().into())),
            InvalidKind::Node | InvalidKind::NodeRecord => keys
                .parse_node_key(&entry.key)
                .or_else(|| keys.parse_nodeinfo_key(&entry.key))
                .and_then(|n| view.nodes.get(&n))
                .and_then(|n| n.node.as_ref().map(|n| &n.labels)),
            _ => None,
        };
        self.labels(labels)
    }
}

/// Adds the LABELS column when asked.
fn label_column(listing: &mut Listing, args: &GetArgs) {
    if args.show_labels {
        listing.table.add_column("LABELS");
    }
}

fn label_cell(row: &mut Vec<String>, args: &GetArgs, labels: Option<&BTreeMap<String, String>>) {
    if args.show_labels {
        row.push(labels.map_or_else(|| "<none>".to_string(), pairs));
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

/// The text for an empty table, kubectl's words.
pub fn no_resources(args: &GetArgs) -> String {
    if args.all_namespaces {
        "No resources found.\n".to_string()
    } else {
        format!("No resources found in {} namespace.\n", args.namespace)
    }
}

fn finish(listing: Listing, args: &GetArgs, empty: String) -> CliResult<String> {
    if listing.names.is_empty() && args.output.is_table() && !args.watch {
        return Ok(empty);
    }
    listing.render(&args.output)
}

/// Tasks. A `tasks/` key whose value does not decode is an object too (`status.phase:
/// Invalid`), so `-o json|yaml|name|jsonpath` shows it; the table shows it in its Invalid
/// rows.
pub fn list_tasks(
    view: &ClusterView,
    keys: &Keys,
    filter: &Filter<'_>,
    columns: Columns,
) -> CliResult<String> {
    let args = filter.args;
    let tasks: Vec<&Task> = view
        .tasks
        .values()
        .filter(|t| {
            filter.keeps(
                &t.metadata.namespace,
                &t.metadata.name,
                Some(&t.metadata.labels),
            )
        })
        .collect();
    let junk: Vec<(String, String, &InvalidEntry)> = undecodable_tasks(view, keys)
        .filter_map(|entry| {
            let (ns, name) = keys.parse_task_key(&entry.key)?;
            filter.keeps(&ns, &name, None).then_some((ns, name, entry))
        })
        .collect();
    not_found(args, "task", tasks.len() + junk.len())?;
    let mut listing = Listing {
        table: rows::task_table(columns),
        ..Listing::default()
    };
    label_column(&mut listing, args);
    let mut objects = Vec::new();
    for task in &tasks {
        let mut row = rows::task_row(task, view, columns);
        label_cell(&mut row, args, Some(&task.metadata.labels));
        listing.table.row(row);
        let meta = &task.metadata;
        objects.push((
            (meta.namespace.clone(), meta.name.clone()),
            objects::task_object(task, view, keys),
        ));
    }
    for (ns, name, entry) in junk {
        objects.push(((ns, name), objects::undecodable_task_object(entry, keys)));
    }
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    for ((_, name), object) in objects {
        listing.names.push(format!("task/{name}"));
        listing.objects.push(object);
    }
    finish(listing, args, no_resources(args))
}

/// Instances.
pub fn list_instances(
    view: &ClusterView,
    filter: &Filter<'_>,
    columns: Columns,
) -> CliResult<String> {
    let args = filter.args;
    let now = Utc::now();
    let listed: Vec<&InstanceView> = view
        .instances
        .values()
        .filter(|v| filter.keeps_instance(v, view))
        .collect();
    not_found(args, "instance", listed.len())?;
    let mut listing = Listing {
        table: rows::instance_table(columns),
        ..Listing::default()
    };
    label_column(&mut listing, args);
    for instance in listed {
        let mut row = rows::instance_row(instance, columns, now);
        label_cell(&mut row, args, instance_labels(instance, view));
        listing.table.row(row);
        listing.names.push(format!("instance/{}", instance.id));
        listing
            .objects
            .push(objects::instance_object(instance, view));
    }
    finish(listing, args, no_resources(args))
}

/// Nodes.
pub fn list_nodes(view: &ClusterView, filter: &Filter<'_>, columns: Columns) -> CliResult<String> {
    let args = filter.args;
    let now = Utc::now();
    let listed: Vec<&NodeView> = view
        .nodes
        .values()
        .filter(|v| filter.keeps_node(v))
        .collect();
    not_found(args, "node", listed.len())?;
    let mut listing = Listing {
        table: rows::node_table(columns),
        ..Listing::default()
    };
    label_column(&mut listing, args);
    for node in listed {
        let mut row = rows::node_row(node, view, columns, now);
        label_cell(&mut row, args, node.node.as_ref().map(|n| &n.labels));
        listing.table.row(row);
        listing.names.push(format!("node/{}", node.name));
        listing.objects.push(objects::node_object(node, view));
    }
    finish(listing, args, "No nodes found.\n".to_string())
}

/// One watched object in the listing's format: a table row without header, a JSON line, a YAML
/// document, its name, or the template applied to it.
pub fn one(
    args: &GetArgs,
    object: serde_json::Value,
    name: String,
    mut table: crate::output::Table,
    mut row: Vec<String>,
    labels: Option<&BTreeMap<String, String>>,
) -> CliResult<String> {
    match &args.output {
        Format::Json => serde_json::to_string(&object)
            .map(|line| line + "\n")
            .map_err(|error| CliError::failure(format!("cannot encode JSON: {error}"))),
        Format::Yaml => crate::output::to_yaml(std::slice::from_ref(&object)),
        Format::Name => Ok(format!("{name}\n")),
        Format::JsonPath(template) => Ok(template.render(&object)),
        Format::Table | Format::Wide => {
            if args.show_labels {
                table.add_column("LABELS");
            }
            label_cell(&mut row, args, labels);
            table.row(row);
            Ok(table.render_rows())
        }
    }
}
