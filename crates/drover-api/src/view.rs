//! [`ClusterView`]: the cluster as people look at it — tasks with their controller-owned state,
//! instances (assignment joined with status), nodes (registration joined with the durable
//! record) and every key whose value is Invalid. Built from one listing of the whole prefix at
//! one revision and kept current from the watch of that prefix, through the one decoder
//! ([`crate::decode`]). Pure: the caller does the I/O.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::decode::{decode_parsed, Record};
use crate::instance::{Instance, InstanceStatus, Phase};
use crate::keys::{Key, Keys};
use crate::names::InstanceId;
use crate::node::{Node, NodeInfo};
use crate::task::Task;
use crate::taskstate::TaskState;

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

/// A key whose value does not decode (or, for a task, breaks apply's rules): shown as
/// `Invalid` with the error, never used.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvalidEntry {
    /// What it should have held.
    pub kind: InvalidKind,
    /// The key.
    pub key: String,
    /// Why it does not decode.
    pub error: String,
}

/// An instance as people see it: the assignment joined with the status its agent reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    /// The instance, as its keys name it (also when neither half decodes).
    pub id: InstanceId,
    /// The assignment; `None` when only a status is left (being cleaned up).
    pub assignment: Option<Instance>,
    /// The last status the agent reported, if any yet.
    pub status: Option<InstanceStatus>,
    /// Every status key's value, by the node it is under (`None`: the `status/<instance>` key
    /// of before statuses moved under their node). `status` is the one under the assigned
    /// node, else the legacy one; one under another node is never shown as this copy's.
    #[serde(skip)]
    pub status_sources: BTreeMap<Option<String>, InstanceStatus>,
    /// Set when its assignment or status key holds a value that does not decode: the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

impl InstanceView {
    /// Sets `status` from `status_sources`: the status under the assigned node's key, else the
    /// legacy one; with no assignment, the legacy one or the only node's (several nodes
    /// claiming an unassigned instance: none is shown).
    fn pick_status(&mut self) {
        let sources = &self.status_sources;
        self.status = match &self.assignment {
            Some(a) => sources
                .get(&Some(a.node.clone()))
                .or_else(|| sources.get(&None))
                .cloned(),
            None => {
                let mut nodes = sources.iter().filter(|(k, _)| k.is_some());
                match (nodes.next(), nodes.next()) {
                    (None, _) => sources.get(&None).cloned(),
                    (Some((_, only)), None) => Some(only.clone()),
                    (Some(_), Some(_)) => None,
                }
            }
        };
    }

    /// Namespace and task name.
    pub fn task(&self) -> (&str, &str) {
        (self.id.namespace(), self.id.task())
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

    fn is_empty(&self) -> bool {
        self.assignment.is_none() && self.status.is_none() && self.invalid.is_none()
    }
}

/// A node as people see it: the live registration (if its lease holds) and the durable record.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// The node's name.
    pub name: String,
    /// The lease-bound registration; `None` when the node is dead or gone.
    pub node: Option<Node>,
    /// The durable record, if one was written.
    pub info: Option<NodeInfo>,
    /// Set when its registration or record holds a value that does not decode: the error. The
    /// node is not read as absent (the leader counts it alive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

impl NodeView {
    /// The STATUS column, kubectl style.
    pub fn display_status(&self) -> String {
        if self.invalid.is_some() {
            return "Invalid".to_string();
        }
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

/// Everything the read verbs show, at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// The etcd revision the view reflects.
    pub revision: i64,
    /// Tasks by (namespace, name).
    pub tasks: BTreeMap<(String, String), Task>,
    /// Instances by id (string form, so they sort by task then slot).
    pub instances: BTreeMap<String, InstanceView>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeView>,
    /// Controller-owned task state (runs, circuit breaker) by (namespace, name).
    pub states: BTreeMap<(String, String), TaskState>,
    /// Keys whose values are Invalid, sorted by key. Current after [`ClusterView::settle`].
    pub invalid: Vec<InvalidEntry>,
    /// Undecodable values by key.
    undecodable: BTreeMap<String, Undecodable>,
    /// Tasks that decode but break apply's rules, as of the last [`ClusterView::settle`].
    invalid_tasks: Vec<InvalidEntry>,
    /// Whether a task key changed since the last [`ClusterView::settle`].
    tasks_changed: bool,
}

/// An undecodable value, and the instance or node whose view it marks Invalid.
#[derive(Debug, Clone, PartialEq)]
struct Undecodable {
    entry: InvalidEntry,
    object: Option<Object>,
}

/// The instance or node a key contributes to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Object {
    Instance(InstanceId),
    Node(String),
}

impl Object {
    fn of(key: &Key) -> Option<Object> {
        match key {
            Key::Assignment { instance, .. } => Some(Object::Instance(instance.clone())),
            Key::Status { instance, .. } | Key::LegacyStatus(instance) => {
                Some(Object::Instance(instance.clone()))
            }
            Key::Node(name) | Key::NodeInfo(name) => Some(Object::Node(name.clone())),
            _ => None,
        }
    }
}

/// The kinds the view holds; the others (runs, events, ...) are read by the verbs that show them.
fn held(key: &Key) -> Option<InvalidKind> {
    match key {
        Key::Task { .. } => Some(InvalidKind::Task),
        Key::Assignment { .. } => Some(InvalidKind::Assignment),
        Key::Status { .. } | Key::LegacyStatus(_) => Some(InvalidKind::Status),
        Key::Node(_) => Some(InvalidKind::Node),
        Key::NodeInfo(_) => Some(InvalidKind::NodeRecord),
        Key::TaskState { .. } => Some(InvalidKind::TaskState),
        Key::NodeState(_)
        | Key::DeadLetter { .. }
        | Key::Run { .. }
        | Key::Trigger { .. }
        | Key::Request { .. }
        | Key::Revision { .. }
        | Key::Controller(_)
        | Key::Event { .. } => None,
    }
}

impl ClusterView {
    /// Whether the view holds keys of `key`'s kind (changes of others leave it as it is).
    pub fn holds(keys: &Keys, key: &str) -> bool {
        keys.parse(key).as_ref().and_then(held).is_some()
    }

    /// Records a created or changed key. `value` is its JSON, or why it is not JSON. Returns
    /// whether the view holds keys of this kind.
    ///
    /// # Caveats
    ///
    /// Call [`ClusterView::settle`] after a batch of changes: it brings
    /// [`ClusterView::invalid`] up to date (whether a task breaks apply's rules depends on
    /// every task: a `dependsOn` cycle).
    pub fn apply(
        &mut self,
        keys: &Keys,
        key: &str,
        value: Result<serde_json::Value, String>,
        revision: i64,
    ) -> bool {
        let Some(parsed) = keys.parse(key) else {
            return false;
        };
        let Some(kind) = held(&parsed) else {
            return false;
        };
        self.revision = self.revision.max(revision);
        self.tasks_changed |= kind == InvalidKind::Task;
        // A new value replaces the old one whole: what was there goes first.
        self.forget(&parsed);
        let object = Object::of(&parsed);
        let decoded =
            value.and_then(|v| decode_parsed(parsed, key, v).map_err(|e| e.source.to_string()));
        let record = match decoded {
            Ok(record) => record,
            Err(error) => {
                self.undecodable.insert(
                    key.to_string(),
                    Undecodable {
                        entry: InvalidEntry {
                            kind,
                            key: key.to_string(),
                            error,
                        },
                        object: object.clone(),
                    },
                );
                self.refresh(object);
                return true;
            }
        };
        self.undecodable.remove(key);
        match record {
            Record::Task(task, value) => {
                self.tasks.insert((task.namespace, task.name), value);
            }
            Record::Assignment(value) => {
                let id = value.id.clone();
                let view = self.instance(&id);
                view.assignment = Some(value);
                view.pick_status();
            }
            Record::Status(id, value) => {
                let view = self.instance(&id);
                view.status_sources.insert(Some(value.node.clone()), value);
                view.pick_status();
            }
            Record::LegacyStatus(id, value) => {
                let view = self.instance(&id);
                view.status_sources.insert(None, value);
                view.pick_status();
            }
            Record::Node(name, value) => self.node(&name).node = Some(value),
            Record::NodeInfo(name, value) => self.node(&name).info = Some(value),
            Record::TaskState(task, value) => {
                self.states.insert((task.namespace, task.name), value.state);
            }
            Record::NodeState(..)
            | Record::DeadLetter(..)
            | Record::Run(..)
            | Record::Revision(..)
            | Record::Trigger(..)
            | Record::Request(..)
            | Record::Controller(..)
            | Record::Event(_) => {}
        }
        self.refresh(object);
        true
    }

    /// Records a deleted key. Returns whether the view holds keys of this kind.
    pub fn remove(&mut self, keys: &Keys, key: &str, revision: i64) -> bool {
        let Some(parsed) = keys.parse(key) else {
            return false;
        };
        let Some(kind) = held(&parsed) else {
            return false;
        };
        self.revision = self.revision.max(revision);
        self.tasks_changed |= kind == InvalidKind::Task;
        self.undecodable.remove(key);
        self.forget(&parsed);
        self.refresh(Object::of(&parsed));
        true
    }

    /// Brings [`ClusterView::invalid`] up to date: undecodable values, and tasks that decode
    /// but break apply's rules (written by another client), by the same rules the controller
    /// holds them with. The rules are re-checked only when a task changed.
    pub fn settle(&mut self, keys: &Keys) {
        if std::mem::take(&mut self.tasks_changed) {
            let named: Vec<((String, String), &Task)> = self
                .tasks
                .iter()
                .map(|(name, task)| (name.clone(), task))
                .collect();
            self.invalid_tasks = crate::manifest::validate_stored(&named)
                .into_iter()
                .map(|((ns, name), reason)| InvalidEntry {
                    kind: InvalidKind::Task,
                    key: keys.task(&ns, &name),
                    error: reason,
                })
                .collect();
        }
        let mut invalid: Vec<InvalidEntry> = self
            .undecodable
            .values()
            .map(|bad| bad.entry.clone())
            .collect();
        invalid.extend(self.invalid_tasks.iter().cloned());
        invalid.sort_by(|a, b| a.key.cmp(&b.key));
        self.invalid = invalid;
    }

    /// The Invalid entry of `key`, if its value is Invalid (after [`ClusterView::settle`]).
    pub fn invalid_entry(&self, key: &str) -> Option<&InvalidEntry> {
        self.invalid.iter().find(|entry| entry.key == key)
    }

    /// Drops what `key` contributed.
    fn forget(&mut self, key: &Key) {
        match key {
            Key::Task { namespace, name } => {
                self.tasks.remove(&(namespace.clone(), name.clone()));
            }
            Key::TaskState { namespace, name } => {
                self.states.remove(&(namespace.clone(), name.clone()));
            }
            // Only the assignment of the key's own node: a foreign key naming the instance
            // under another node says nothing about the real one.
            Key::Assignment { node, instance } => {
                if let Some(view) = self.instances.get_mut(&instance.to_string()) {
                    if view.assignment.as_ref().is_some_and(|a| &a.node == node) {
                        view.assignment = None;
                        view.pick_status();
                    }
                }
            }
            Key::Status { node, instance } => {
                if let Some(view) = self.instances.get_mut(&instance.to_string()) {
                    view.status_sources.remove(&Some(node.clone()));
                    view.pick_status();
                }
            }
            Key::LegacyStatus(id) => {
                if let Some(view) = self.instances.get_mut(&id.to_string()) {
                    view.status_sources.remove(&None);
                    view.pick_status();
                }
            }
            Key::Node(name) => {
                if let Some(view) = self.nodes.get_mut(name) {
                    view.node = None;
                }
            }
            Key::NodeInfo(name) => {
                if let Some(view) = self.nodes.get_mut(name) {
                    view.info = None;
                }
            }
            Key::NodeState(_)
            | Key::DeadLetter { .. }
            | Key::Run { .. }
            | Key::Revision { .. }
            | Key::Trigger { .. }
            | Key::Request { .. }
            | Key::Controller(_)
            | Key::Event { .. } => {}
        }
    }

    /// Recomputes one instance's or node's Invalid mark from its keys, and drops its view when
    /// nothing is left of it.
    fn refresh(&mut self, object: Option<Object>) {
        let Some(object) = object else {
            return;
        };
        let error = self
            .undecodable
            .values()
            .find(|bad| bad.object.as_ref() == Some(&object))
            .map(|bad| bad.entry.error.clone());
        match object {
            Object::Instance(id) => match error {
                Some(error) => self.instance(&id).invalid = Some(error),
                None => {
                    let name = id.to_string();
                    if let Some(view) = self.instances.get_mut(&name) {
                        view.invalid = None;
                        if view.is_empty() {
                            self.instances.remove(&name);
                        }
                    }
                }
            },
            Object::Node(name) => match error {
                Some(error) => self.node(&name).invalid = Some(error),
                None => {
                    if let Some(view) = self.nodes.get_mut(&name) {
                        view.invalid = None;
                        if view.node.is_none() && view.info.is_none() {
                            self.nodes.remove(&name);
                        }
                    }
                }
            },
        }
    }

    /// The view of instance `id`, created empty on first use.
    fn instance(&mut self, id: &InstanceId) -> &mut InstanceView {
        self.instances
            .entry(id.to_string())
            .or_insert_with(|| InstanceView {
                id: id.clone(),
                assignment: None,
                status: None,
                status_sources: BTreeMap::new(),
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
                invalid: None,
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
            .filter(move |view| view.task() == (namespace, task))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn assignment(id: &str, node: &str) -> serde_json::Value {
        let (ns, rest) = id.split_once('.').unwrap();
        let task = rest.split('.').next().unwrap();
        serde_json::json!({
            "id": id, "namespace": ns, "task": task, "slot": 0, "node": node,
            "generation": 1, "attempt": 0, "spec": {"command": ["true"]},
            "assignedAt": "2026-01-01T00:00:00Z"
        })
    }

    #[test]
    fn an_instance_is_joined_replaced_and_forgotten_key_by_key() {
        let keys = Keys::new("/p");
        let id: InstanceId = "default.web.0".parse().unwrap();
        let mut view = ClusterView::default();
        let a = keys.assignment("n1", &id);
        assert!(view.apply(&keys, &a, Ok(assignment("default.web.0", "n1")), 5));
        assert_eq!(view.instances["default.web.0"].display_status(), "Pending");
        assert_eq!(view.instances_on("n1").count(), 1);

        // A foreign value under the status key makes the instance Invalid; a good one heals it.
        let s = keys.status("n1", &id);
        view.apply(&keys, &s, Err("not JSON".into()), 6);
        // A later change of the other half keeps the instance Invalid.
        view.apply(&keys, &a, Ok(assignment("default.web.0", "n1")), 7);
        view.settle(&keys);
        assert_eq!(view.instances["default.web.0"].display_status(), "Invalid");
        assert_eq!(view.invalid.len(), 1);
        assert_eq!(view.invalid[0].kind, InvalidKind::Status);
        view.remove(&keys, &s, 7);
        view.settle(&keys);
        assert!(view.invalid.is_empty());
        assert!(view.instances["default.web.0"].invalid.is_none());
        assert_eq!(view.instances["default.web.0"].display_status(), "Pending");

        view.remove(&keys, &a, 8);
        view.settle(&keys);
        assert!(view.instances.is_empty(), "nothing left of it");
        assert_eq!(view.revision, 8);
    }

    fn status(id: &str, node: &str, phase: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id, "node": node, "phase": phase, "generation": 1, "attempt": 0,
            "updatedAt": "2026-01-01T00:00:00Z"
        })
    }

    #[test]
    fn a_legacy_status_shows_until_the_nodes_own_status_and_its_removal_keeps_that_one() {
        let keys = Keys::new("/p");
        let id: InstanceId = "default.web.0".parse().unwrap();
        let (a, legacy, own) = (
            keys.assignment("n1", &id),
            keys.legacy_status(&id),
            keys.status("n1", &id),
        );
        let mut view = ClusterView::default();
        view.apply(&keys, &a, Ok(assignment("default.web.0", "n1")), 5);
        view.apply(
            &keys,
            &legacy,
            Ok(status("default.web.0", "n1", "Running")),
            6,
        );
        view.settle(&keys);
        assert_eq!(view.instances["default.web.0"].display_status(), "Running");

        view.apply(
            &keys,
            &own,
            Ok(status("default.web.0", "n1", "Stopping")),
            7,
        );
        // A later write of the old key (an agent not yet upgraded) does not hide the new one.
        view.apply(
            &keys,
            &legacy,
            Ok(status("default.web.0", "n1", "Running")),
            8,
        );
        view.remove(&keys, &legacy, 9);
        view.settle(&keys);
        assert_eq!(view.instances["default.web.0"].display_status(), "Stopping");

        view.remove(&keys, &own, 10);
        view.settle(&keys);
        assert_eq!(view.instances["default.web.0"].display_status(), "Pending");
    }

    #[test]
    fn a_status_under_another_nodes_key_is_not_shown_and_its_removal_keeps_the_real_one() {
        let keys = Keys::new("/p");
        let id: InstanceId = "default.web.0".parse().unwrap();
        let mut view = ClusterView::default();
        view.apply(
            &keys,
            &keys.assignment("n1", &id),
            Ok(assignment("default.web.0", "n1")),
            5,
        );
        view.apply(
            &keys,
            &keys.status("n1", &id),
            Ok(status("default.web.0", "n1", "Running")),
            6,
        );
        let forged = keys.status("n2", &id);
        view.apply(
            &keys,
            &forged,
            Ok(status("default.web.0", "n2", "Failed")),
            7,
        );
        view.settle(&keys);
        assert_eq!(view.instances["default.web.0"].display_status(), "Running");
        view.remove(&keys, &forged, 8);
        view.settle(&keys);
        assert_eq!(view.instances["default.web.0"].display_status(), "Running");
    }

    #[test]
    fn kinds_the_view_does_not_hold_are_ignored() {
        let keys = Keys::new("/p");
        let mut view = ClusterView::default();
        assert!(!view.apply(&keys, "/p/events/default/x", Err("junk".into()), 3));
        assert!(!view.apply(&keys, "/p/leader/1", Ok(serde_json::json!(1)), 3));
        view.settle(&keys);
        assert_eq!(view, ClusterView::default());
    }

    #[test]
    fn a_node_whose_registration_does_not_decode_is_invalid_not_gone() {
        let keys = Keys::new("/p");
        let mut view = ClusterView::default();
        let key = keys.node("n1");
        view.apply(&keys, &key, Err("not JSON".into()), 3);
        view.settle(&keys);
        assert_eq!(view.nodes["n1"].display_status(), "Invalid");
        assert_eq!(
            view.invalid_entry(&key).map(|e| e.kind),
            Some(InvalidKind::Node)
        );
        view.remove(&keys, &key, 4);
        view.settle(&keys);
        assert!(view.nodes.is_empty());
        assert!(view.invalid.is_empty());
    }

    #[test]
    fn deleting_an_assignment_under_another_node_leaves_the_real_one() {
        let keys = Keys::new("/p");
        let id: InstanceId = "default.web.0".parse().unwrap();
        let mut view = ClusterView::default();
        view.apply(
            &keys,
            &keys.assignment("n1", &id),
            Ok(assignment("default.web.0", "n1")),
            2,
        );
        let foreign = keys.assignment("n9", &id);
        view.apply(&keys, &foreign, Err("junk".into()), 3);
        view.remove(&keys, &foreign, 4);
        view.settle(&keys);
        let kept = view.instances["default.web.0"].assignment.as_ref();
        assert_eq!(kept.map(|a| a.node.as_str()), Some("n1"));
        assert!(view.instances["default.web.0"].invalid.is_none());
    }
}
