//! A point-in-time read of the cluster for the read verbs: tasks, assignments, statuses, nodes
//! and node records, with the joins `get` and `describe` need.

use std::collections::BTreeMap;

use drover_api::instance::{Instance, InstanceStatus, Phase};
use drover_api::keys::Keys;
use drover_api::names::InstanceId;
use drover_api::node::{Node, NodeInfo};
use drover_api::task::Task;
use drover_api::taskstate::TaskState;
use drover_store::Store;
use serde::Serialize;

use super::store_error;
use crate::exit::CliResult;

/// Every value under `prefix` that decodes; the keys whose values do not are added to
/// `invalid` as `kind` (so one foreign value never breaks a read verb). `what` names the
/// listing in errors.
pub async fn list_valid<T: serde::de::DeserializeOwned>(
    store: &Store,
    prefix: &str,
    what: &str,
    kind: InvalidKind,
    invalid: &mut Vec<InvalidEntry>,
) -> CliResult<Vec<drover_store::Versioned<T>>> {
    let checked = store
        .list_checked::<T>(prefix)
        .await
        .map_err(|error| store_error(&format!("listing {what}"), error))?;
    invalid.extend(checked.invalid.into_iter().map(|bad| InvalidEntry {
        kind,
        key: bad.key,
        error: bad.error,
    }));
    Ok(checked.items)
}

/// What an invalid key should have held, for grouping in the read verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum InvalidKind {
    /// `tasks/`
    Task,
    /// `assignments/`
    Assignment,
    /// `status/`
    Status,
    /// `nodes/`
    Node,
    /// `nodeinfo/`
    NodeRecord,
    /// `taskstate/`
    TaskState,
    /// `deadletter/`
    DeadLetter,
    /// `runs/`
    Run,
    /// `events/`
    Event,
    /// `controllers/`
    Controller,
}

/// A key whose value does not decode: shown as `Invalid` with the error, never used.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvalidEntry {
    /// What it should have held.
    pub kind: InvalidKind,
    /// The key.
    pub key: String,
    /// Why it does not decode.
    pub error: String,
}

/// An instance as the CLI shows it: the assignment joined with the status its agent reported.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    /// The assignment; `None` when only a status is left (being cleaned up).
    pub assignment: Option<Instance>,
    /// The last status the agent reported, if any yet.
    pub status: Option<InstanceStatus>,
    /// Set when its assignment or status key holds a value that does not decode: the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

impl InstanceView {
    /// The instance's id, from whichever half is present.
    pub fn id(&self) -> Option<&InstanceId> {
        self.assignment
            .as_ref()
            .map(|a| &a.id)
            .or_else(|| self.status.as_ref().map(|s| &s.id))
    }

    /// Namespace and task name, when the assignment is known.
    pub fn task(&self) -> Option<(&str, &str)> {
        self.assignment
            .as_ref()
            .map(|a| (a.namespace.as_str(), a.task.as_str()))
            .or_else(|| {
                self.status
                    .as_ref()
                    .map(|s| (s.id.namespace(), s.id.task()))
            })
    }

    /// Whether the agent reports it Running.
    pub fn is_running(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.phase == Phase::Running)
    }

    /// The STATUS column: the reason when one is set, else the phase, `Pending` before the agent
    /// has reported.
    pub fn display_status(&self) -> String {
        if self.invalid.is_some() {
            return "Invalid".to_string();
        }
        match &self.status {
            Some(status) => status.display_status(),
            None => "Pending".to_string(),
        }
    }
}

/// A node as the CLI shows it: the live registration (if its lease holds) and the durable record.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// The node's name.
    pub name: String,
    /// The lease-bound registration; `None` when the node is dead or gone.
    pub node: Option<Node>,
    /// The durable record, if one was written.
    pub info: Option<NodeInfo>,
}

impl NodeView {
    /// The STATUS column, kubectl style.
    pub fn display_status(&self) -> String {
        let info = self.info.clone().unwrap_or_default();
        let base = if self.node.is_some() {
            "Ready"
        } else {
            "NotReady"
        };
        if info.draining {
            format!("{base},Draining")
        } else if info.cordoned {
            format!("{base},SchedulingDisabled")
        } else {
            base.to_string()
        }
    }
}

/// Everything the read verbs show, read at (nearly) one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Tasks by (namespace, name).
    pub tasks: BTreeMap<(String, String), Task>,
    /// Instances by id (string form, so they sort by task then slot).
    pub instances: BTreeMap<String, InstanceView>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeView>,
    /// Controller-owned task state (runs, circuit breaker) by (namespace, name).
    pub states: BTreeMap<(String, String), TaskState>,
    /// Keys whose values do not decode, by kind and key.
    pub invalid: Vec<InvalidEntry>,
}

impl Snapshot {
    /// Reads the whole cluster state the CLI shows.
    pub async fn read(store: &Store, keys: &Keys) -> CliResult<Snapshot> {
        let mut invalid = Vec::new();
        let bad = &mut invalid;
        let tasks =
            list_valid::<Task>(store, &keys.tasks(), "tasks", InvalidKind::Task, bad).await?;
        let assignments = list_valid::<Instance>(
            store,
            &keys.assignments(),
            "assignments",
            InvalidKind::Assignment,
            bad,
        )
        .await?;
        let statuses = list_valid::<InstanceStatus>(
            store,
            &keys.statuses(),
            "statuses",
            InvalidKind::Status,
            bad,
        )
        .await?;
        let nodes =
            list_valid::<Node>(store, &keys.nodes(), "nodes", InvalidKind::Node, bad).await?;
        let infos = list_valid::<NodeInfo>(
            store,
            &keys.nodeinfos(),
            "node records",
            InvalidKind::NodeRecord,
            bad,
        )
        .await?;
        let states = list_valid::<TaskState>(
            store,
            &keys.taskstates(),
            "task states",
            InvalidKind::TaskState,
            bad,
        )
        .await?;

        let mut snapshot = Snapshot::default();
        for item in states {
            if let Some(name) = keys.parse_taskstate_key(&item.key) {
                snapshot.states.insert(name, item.value);
            }
        }
        // An instance whose assignment or status does not decode still shows, as Invalid.
        for entry in &invalid {
            let id = match entry.kind {
                InvalidKind::Assignment => keys.parse_assignment_key(&entry.key).map(|(_, id)| id),
                InvalidKind::Status => keys.parse_status_key(&entry.key),
                _ => None,
            };
            if let Some(id) = id {
                snapshot.instance(&id).invalid = Some(entry.error.clone());
            }
        }
        // Tasks that decode but break apply's rules (written by another client) are Invalid
        // too, by the same rules the controller holds them with.
        let named: Vec<((String, String), &Task)> = tasks
            .iter()
            .filter_map(|t| Some((keys.parse_task_key(&t.key)?, &t.value)))
            .collect();
        for ((ns, name), reason) in drover_api::manifest::validate_stored(&named) {
            invalid.push(InvalidEntry {
                kind: InvalidKind::Task,
                key: keys.task(&ns, &name),
                error: reason,
            });
        }
        snapshot.invalid = invalid;
        let tasks = tasks.into_iter().map(|t| t.value);
        let assignments = assignments.into_iter().map(|a| a.value);
        let statuses = statuses.into_iter().map(|s| s.value);
        let infos = infos.into_iter().map(|i| i.value);
        let nodes = nodes.into_iter().map(|n| n.value);
        for task in tasks {
            let meta = &task.metadata;
            snapshot
                .tasks
                .insert((meta.namespace.clone(), meta.name.clone()), task);
        }
        for assignment in assignments {
            let id = assignment.id.clone();
            snapshot.instance(&id).assignment = Some(assignment);
        }
        for status in statuses {
            let id = status.id.clone();
            snapshot.instance(&id).status = Some(status);
        }
        for info in infos {
            let name = info.name.clone();
            snapshot.node(&name).info = Some(info);
        }
        for node in nodes {
            let name = node.name.clone();
            snapshot.node(&name).node = Some(node);
        }
        Ok(snapshot)
    }

    /// The view of instance `id`, created empty on first use.
    fn instance(&mut self, id: &InstanceId) -> &mut InstanceView {
        self.instances
            .entry(id.to_string())
            .or_insert_with(|| InstanceView {
                assignment: None,
                status: None,
                invalid: None,
            })
    }

    /// The view of node `name`, created empty on first use.
    fn node(&mut self, name: &str) -> &mut NodeView {
        self.nodes
            .entry(name.to_string())
            .or_insert_with(|| NodeView {
                name: name.to_string(),
                node: None,
                info: None,
            })
    }

    /// The instances of one task.
    pub fn instances_of<'a>(
        &'a self,
        namespace: &'a str,
        task: &'a str,
    ) -> impl Iterator<Item = &'a InstanceView> + 'a {
        self.instances
            .values()
            .filter(move |view| view.task() == Some((namespace, task)))
    }

    /// Instances assigned to one node.
    pub fn instances_on<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a InstanceView> + 'a {
        self.instances
            .values()
            .filter(move |view| view.assignment.as_ref().is_some_and(|a| a.node == node))
    }
}
