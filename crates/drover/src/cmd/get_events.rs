//! `drover get events [--for task/NAME|node/NAME|instance/ID]`: recent events, oldest first,
//! in every output format. Events live under `events/<ns>/` on a TTL lease (node events under
//! the default namespace); a value there that does not decode is reported Invalid, never fatal.

use std::collections::BTreeMap;

use chrono::Utc;
use drover_api::event::{Event, EventKind};
use drover_api::keys::Keys;
use drover_api::task::API_VERSION;
use drover_store::Store;
use serde_json::{json, Value};

use super::connect;
use super::get::report_invalid;
use super::rows::Columns;
use super::snapshot::{self, list_valid, ClusterView, InvalidEntry, InvalidKind};
use crate::cli::{GetArgs, Global};
use crate::exit::{CliError, CliResult};
use crate::output::{age, Listing, Table};
use crate::selector::Selector;

/// The object `--for` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct About {
    /// Its kind.
    pub kind: EventKind,
    /// Its name (an instance: its id).
    pub name: String,
}

impl About {
    /// Parses `task/NAME`, `node/NAME` or `instance/ID` (plural and short kinds too).
    pub fn parse(text: &str) -> CliResult<About> {
        let usage = || {
            CliError::usage(format!(
                "--for {text:?}: expected task/NAME, node/NAME or instance/ID"
            ))
        };
        let (kind, name) = text.split_once('/').ok_or_else(usage)?;
        let kind = match kind {
            "task" | "tasks" => EventKind::Task,
            "node" | "nodes" | "no" => EventKind::Node,
            "instance" | "instances" | "inst" => EventKind::Instance,
            _ => return Err(usage()),
        };
        if name.is_empty() {
            return Err(usage());
        }
        Ok(About {
            kind,
            name: name.to_string(),
        })
    }

    /// Whether `event` concerns this object; a task's events include its instances'.
    pub fn covers(&self, event: &Event) -> bool {
        match (self.kind, event.kind) {
            (a, b) if a == b => event.name == self.name,
            (EventKind::Task, EventKind::Instance) => event
                .name
                .parse::<drover_api::names::InstanceId>()
                .is_ok_and(|id| id.task() == self.name),
            _ => false,
        }
    }
}

/// The table for events.
pub fn event_table(columns: Columns) -> Table {
    let mut headers = Vec::new();
    if columns.namespace {
        headers.push("NAMESPACE");
    }
    headers.extend(["AGE", "OBJECT", "REASON", "SOURCE", "MESSAGE"]);
    Table::new(headers)
}

/// The object an event is about, as `kind/name`.
pub fn object_of(event: &Event) -> String {
    format!("{:?}/{}", event.kind, event.name).to_lowercase()
}

/// Every event in `namespace` (every namespace with `None`) that decodes, oldest first, with
/// the id its key gives it; those that do not decode go to `invalid`.
pub async fn read(
    store: &Store,
    keys: &Keys,
    namespace: Option<&str>,
    invalid: &mut Vec<InvalidEntry>,
) -> CliResult<Vec<(String, Event)>> {
    let prefix = match namespace {
        Some(ns) => keys.events_in(ns),
        None => keys.events(),
    };
    let mut events: Vec<(String, Event)> =
        list_valid::<Event>(store, &prefix, "events", InvalidKind::Event, invalid)
            .await?
            .into_iter()
            .map(|item| {
                let id = keys
                    .parse_event_key(&item.key)
                    .map_or_else(|| item.key.clone(), |(_, id)| id);
                (id, item.value)
            })
            .collect();
    events.sort_by(|a, b| a.1.time.cmp(&b.1.time).then_with(|| a.0.cmp(&b.0)));
    Ok(events)
}

/// An event as `-o json` prints it.
fn event_object(id: &str, event: &Event) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "Event",
        "metadata": {"name": id, "namespace": event.namespace},
        "involvedObject": {"kind": event.kind, "name": event.name},
        "time": event.time,
        "reason": event.reason,
        "message": event.message,
        "source": event.source,
    })
}

/// The labels an event is selected by: those of the object it is about (an instance's are its
/// task's).
fn labels_of<'a>(event: &Event, view: &'a ClusterView) -> Option<&'a BTreeMap<String, String>> {
    let task = |name: &str| {
        view.tasks
            .get(&(event.namespace.clone(), name.to_string()))
            .map(|t| &t.metadata.labels)
    };
    match event.kind {
        EventKind::Task => task(&event.name),
        EventKind::Instance => event
            .name
            .parse::<drover_api::names::InstanceId>()
            .ok()
            .and_then(|id| task(id.task())),
        EventKind::Node => view
            .nodes
            .get(&event.name)
            .and_then(|n| n.node.as_ref())
            .map(|n| &n.labels),
    }
}

pub async fn run(global: &Global, args: &GetArgs, selector: &Selector) -> CliResult {
    let about = args.for_object.as_deref().map(About::parse).transpose()?;
    if args.watch {
        return Err(CliError::usage("get events does not take -w yet"));
    }
    let (store, keys) = connect(global).await?;
    // Node events are kept under the default namespace, whatever -n says.
    let namespace = match &about {
        _ if args.all_namespaces => None,
        Some(About {
            kind: EventKind::Node,
            ..
        }) => Some("default"),
        _ => Some(args.namespace.as_str()),
    };
    let mut invalid = Vec::new();
    let events = read(&store, &keys, namespace, &mut invalid).await?;
    let view = if selector.requirements().is_empty() {
        ClusterView::default()
    } else {
        snapshot::read(&store, &keys).await?
    };
    let none = BTreeMap::new();
    let columns = Columns {
        namespace: args.all_namespaces,
        wide: false,
    };
    let mut listing = Listing {
        table: event_table(columns),
        ..Listing::default()
    };
    let now = Utc::now();
    for (id, event) in &events {
        if about.as_ref().is_some_and(|a| !a.covers(event))
            || args.name.as_deref().is_some_and(|n| n != id)
            || !selector.matches(labels_of(event, &view).unwrap_or(&none))
        {
            continue;
        }
        let mut row = Vec::new();
        if columns.namespace {
            row.push(event.namespace.clone());
        }
        row.extend([
            age(Some(event.time), now),
            object_of(event),
            event.reason.clone(),
            event.source.clone(),
            event.message.clone(),
        ]);
        listing.table.row(row);
        listing.names.push(format!("event/{id}"));
        listing.objects.push(event_object(id, event));
    }
    let text = if listing.names.is_empty() && args.output.is_table() {
        super::get_view::no_resources(args)
    } else {
        listing.render(&args.output)?
    };
    print!("{text}");
    report_invalid(&invalid, &args.output);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event(kind: EventKind, name: &str) -> Event {
        Event {
            time: Utc::now(),
            namespace: "default".into(),
            kind,
            name: name.into(),
            reason: "Scheduled".into(),
            message: String::new(),
            source: "controller".into(),
        }
    }

    #[test]
    fn for_names_one_object_and_a_task_covers_its_instances() {
        let task = About::parse("task/web").unwrap();
        assert!(task.covers(&event(EventKind::Task, "web")));
        assert!(task.covers(&event(EventKind::Instance, "default.web.0")));
        assert!(!task.covers(&event(EventKind::Instance, "default.db.0")));
        assert!(!task.covers(&event(EventKind::Node, "web")));
        let node = About::parse("node/n1").unwrap();
        assert!(node.covers(&event(EventKind::Node, "n1")));
        assert!(!node.covers(&event(EventKind::Task, "n1")));
        for bad in ["web", "pod/web", "task/"] {
            assert_eq!(
                About::parse(bad).unwrap_err().exit_code(),
                crate::exit::USAGE
            );
        }
    }
}
