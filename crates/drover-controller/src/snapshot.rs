//! [`Snapshot`]: everything the planner reads, decoded from etcd keys, with their revisions.
//!
//! The leader keeps one snapshot up to date from a single watch over the whole prefix; the
//! planner is a pure function of it. Keys Drover does not plan from (events, controllers,
//! election keys) are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::held_statuses::pick_status;
pub use crate::held_statuses::{HeldStatuses, StatusKey};

use chrono::{DateTime, Utc};
use drover_api::decode::{decode_parsed_raw, Record};
use drover_api::{
    keys::Key, Event, EventKind, Instance, InstanceId, InstanceStatus, Keys, Node, NodeInfo,
    NodeState, RevisionRecord, RunRecord, Task, TaskRequest, TriggerRequest,
};
use drover_store::Versioned;
use serde_json::value::RawValue;

use drover_api::records::{DeadLetterRecord, TaskRef, TaskStateRecord};

pub use drover_api::decode::DecodeError;

/// A key under the prefix whose value does not decode (kept so it still counts, see
/// [`Snapshot::undecodable`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Undecodable {
    /// What it should have held (`Node`, `Instance`, ...).
    pub kind: &'static str,
    /// Why it does not decode.
    pub error: String,
    /// Its mod revision.
    pub mod_revision: i64,
}

/// An assignment whose value does not decode: it still occupies its slot on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueAssignment {
    /// The node of its key.
    pub node: String,
    /// Its mod revision.
    pub mod_revision: i64,
}

/// The cluster as etcd holds it at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The etcd revision this snapshot reflects (0 before the first listing).
    pub revision: i64,
    /// Desired tasks.
    pub tasks: BTreeMap<TaskRef, Versioned<Task>>,
    /// Live nodes: a node is alive exactly while its lease-bound key exists.
    pub nodes: BTreeMap<String, Versioned<Node>>,
    /// Durable node records (cordon, drain, dead since).
    pub nodeinfos: BTreeMap<String, Versioned<NodeInfo>>,
    /// The leader's records of node deaths (`nodestate/<node>`).
    pub nodestates: BTreeMap<String, Versioned<NodeState>>,
    /// Assignments by instance id; `value.node` is the node of the key.
    pub assignments: BTreeMap<InstanceId, Versioned<Instance>>,
    /// The template hash of each assignment placed before revisions existed (revision 0),
    /// computed once when it is decoded rather than on every plan.
    pub legacy_templates: BTreeMap<InstanceId, String>,
    /// The status the planner reads for each instance ([`Snapshot::status_key_of`] says which
    /// key it came from): the one under the node the instance is assigned to; while that node
    /// has no key for it, the legacy `status/<instance>`; for an instance with no assignment,
    /// the legacy one or the only node's. A status under another node's key is never read as
    /// this copy's (it is stray, and deleted), and one under the assigned node that does not
    /// decode says nothing (no other key stands in for it). `value.node` is the key's node.
    pub statuses: BTreeMap<InstanceId, Arc<Versioned<InstanceStatus>>>,
    /// Every status key of every instance, by the key it is under; `None` for a value that
    /// does not decode.
    pub status_keys: BTreeMap<InstanceId, HeldStatuses>,
    /// Which key each entry of [`Snapshot::statuses`] came from.
    pub status_from: BTreeMap<InstanceId, StatusKey>,
    /// Controller-owned task state.
    pub taskstates: BTreeMap<TaskRef, Versioned<TaskStateRecord>>,
    /// Dead letters by instance id.
    pub deadletters: BTreeMap<InstanceId, Versioned<DeadLetterRecord>>,
    /// Run records of jobs, scheduled and triggered tasks, by task and run number.
    pub runs: BTreeMap<TaskRef, BTreeMap<u64, Versioned<RunRecord>>>,
    /// Trigger requests not consumed yet, by task and request id (ids sort in request order).
    pub triggers: BTreeMap<TaskRef, BTreeMap<String, Versioned<TriggerRequest>>>,
    /// Operators' requests (`requests/<ns>/<task>/<id>`), by task then id.
    pub requests: BTreeMap<TaskRef, BTreeMap<String, Versioned<TaskRequest>>>,
    /// Services' revisions (`revisions/<ns>/<task>/<n>`), by task then number.
    pub revisions: BTreeMap<TaskRef, BTreeMap<u64, Versioned<RevisionRecord>>>,
    /// Revision records that do not decode, by task then number, with their mod revisions:
    /// their numbers are taken (never handed out again) and they are pruned like the others.
    pub opaque_revisions: BTreeMap<TaskRef, BTreeMap<u64, i64>>,
    /// Every key whose current value does not decode, by key (reported as events by the leader).
    pub undecodable: BTreeMap<String, Undecodable>,
    /// Nodes whose key exists but does not decode: alive (their instances stay) but
    /// unschedulable (nothing new is placed there), so a value written by a newer agent never
    /// makes a leader replace a running node's instances.
    pub opaque_nodes: BTreeSet<String>,
    /// Assignments that do not decode, by instance id: each occupies its slot, so its task is
    /// not scaled up and its id is never reused.
    pub opaque_assignments: BTreeMap<InstanceId, OpaqueAssignment>,
    /// Nodes whose `nodeinfo` record does not decode: the record is neither rewritten nor read
    /// as absent, and nothing new is placed on the node (whether it is cordoned is unknown).
    pub opaque_nodeinfos: BTreeSet<String>,
    /// Nodes whose `nodestate` record does not decode: known, never rewritten.
    pub opaque_nodestates: BTreeSet<String>,
    /// Tasks whose controller-owned state does not decode. Such a task is held: not planned
    /// at all (its instances stay as they are), because reading its state as absent could
    /// reuse run numbers or forget a suspension. Reported as an undecodable key.
    pub opaque_taskstates: BTreeSet<TaskRef>,
    /// Tasks whose key holds a value that does not decode. With a last good value (seen on
    /// this watch) that value is planned; without one (after a re-list) the task exists but
    /// cannot be planned: its instances, state and runs are kept, never removed as if the
    /// task had been deleted.
    pub opaque_tasks: BTreeSet<TaskRef>,
    /// Tasks that decode but break the rules `apply` enforces (written by another client):
    /// held, not planned, each with its reason. Kept current by [`Snapshot::revalidate`].
    pub invalid_tasks: BTreeMap<TaskRef, String>,
    /// Set when a task key changed since the last [`Snapshot::revalidate`].
    pub tasks_changed: bool,
}

/// Whether the planner reads `key`: a change to any other key (events, controller
/// advertisements, election keys, keys outside the schema) cannot change a plan, so it need not
/// trigger one.
#[must_use]
pub fn plans_from(keys: &Keys, key: &str) -> bool {
    !matches!(
        keys.parse(key),
        Some(Key::Controller(_) | Key::Event { .. }) | None
    )
}

impl Snapshot {
    /// Records a created or changed key. Keys the planner does not read are ignored.
    ///
    /// # Caveats
    ///
    /// A value that does not decode is reported and recorded in [`Snapshot::undecodable`]. A
    /// node or assignment becomes opaque ([`Snapshot::opaque_nodes`],
    /// [`Snapshot::opaque_assignments`]) so it keeps counting; any other kind keeps its previous
    /// value (like the reflector), so one corrupt key cannot make the planner forget a task.
    pub fn apply(&mut self, keys: &Keys, raw: Versioned<Box<RawValue>>) -> Result<(), DecodeError> {
        self.revision = self.revision.max(raw.mod_revision);
        let (key, mod_revision) = (raw.key.clone(), raw.mod_revision);
        let result = self.apply_decoded(keys, raw);
        match &result {
            Ok(()) => self.forget_undecodable(keys, &key),
            Err(e) => self.record_undecodable(keys, &key, mod_revision, e),
        }
        result
    }

    /// Records a key whose bytes are not JSON at all (the watch reports those as errors): the
    /// same as a value of the wrong shape, so a live node still counts. Keys outside the
    /// schema, and kinds the planner does not read, are ignored (the revision still moves).
    pub fn apply_not_json(
        &mut self,
        keys: &Keys,
        key: &str,
        mod_revision: i64,
        source: serde_json::Error,
    ) -> Option<DecodeError> {
        // The revision moves for every key, read or not, as it does for JSON values.
        self.revision = self.revision.max(mod_revision);
        let kind = match keys.parse(key)? {
            // Not planner input, whatever the bytes.
            Key::Controller(_) | Key::Event { .. } => return None,
            key => drover_api::decode::kind_of(&key),
        };
        let error = DecodeError {
            key: key.to_string(),
            kind,
            source,
        };
        self.record_undecodable(keys, key, mod_revision, &error);
        Some(error)
    }

    fn record_undecodable(&mut self, keys: &Keys, key: &str, mod_revision: i64, e: &DecodeError) {
        self.undecodable.insert(
            key.to_string(),
            Undecodable {
                kind: e.kind,
                error: e.source.to_string(),
                mod_revision,
            },
        );
        // A node or assignment must not vanish because it does not decode: a missing
        // node means a dead one, a missing assignment a free slot.
        match keys.parse(key) {
            Some(Key::Node(node)) => {
                self.nodes.remove(&node);
                self.opaque_nodes.insert(node);
            }
            Some(Key::Assignment { node, instance }) => {
                self.assignments.remove(&instance);
                self.legacy_templates.remove(&instance);
                self.opaque_assignments
                    .insert(instance.clone(), OpaqueAssignment { node, mod_revision });
                self.refresh_status(&instance);
            }
            Some(Key::NodeInfo(node)) => {
                self.nodeinfos.remove(&node);
                self.opaque_nodeinfos.insert(node);
            }
            Some(Key::NodeState(node)) => {
                self.nodestates.remove(&node);
                self.opaque_nodestates.insert(node);
            }
            Some(Key::TaskState { namespace, name }) => {
                let task = TaskRef::new(namespace, name);
                self.taskstates.remove(&task);
                self.opaque_taskstates.insert(task);
            }
            Some(Key::Task { namespace, name }) => {
                self.opaque_tasks.insert(TaskRef::new(namespace, name));
            }
            // A status that no longer decodes says nothing: the copy may be live
            // (never "gone" on a stale terminal phase).
            Some(Key::Status { node, instance }) => {
                self.set_status(&instance, StatusKey::Node(node), Some(None));
            }
            Some(Key::LegacyStatus(id)) => self.set_status(&id, StatusKey::Legacy, Some(None)),
            // Requests, triggers and dead letters that no longer decode are void:
            // acting on (or deleting by) their stale value would compare a revision
            // that is gone, every plan. A voided letter no longer holds its slot.
            Some(Key::Request {
                namespace,
                task,
                id,
            }) => remove_nested(&mut self.requests, TaskRef::new(namespace, task), &id),
            Some(Key::Trigger {
                namespace,
                task,
                id,
            }) => remove_nested(&mut self.triggers, TaskRef::new(namespace, task), &id),
            Some(Key::DeadLetter { instance, .. }) => {
                self.deadletters.remove(&instance);
            }
            // A run record keeps its last good value: without it the run's live
            // instances would look orphaned.
            Some(Key::Run { .. }) => {}
            // Its number stays taken; its last good value (if any) is forgotten, so a revert
            // never restores a template nobody can read any more.
            Some(Key::Revision {
                namespace,
                task,
                revision,
            }) => {
                let task = TaskRef::new(namespace, task);
                remove_nested(&mut self.revisions, task.clone(), &revision);
                self.opaque_revisions
                    .entry(task)
                    .or_default()
                    .insert(revision, mod_revision);
            }
            Some(Key::Controller(_) | Key::Event { .. }) | None => {}
        }
    }

    fn forget_undecodable(&mut self, keys: &Keys, key: &str) {
        if self.undecodable.remove(key).is_none() {
            return;
        }
        match keys.parse(key) {
            Some(Key::Node(node)) => {
                self.opaque_nodes.remove(&node);
            }
            Some(Key::Assignment { instance, .. }) => {
                self.opaque_assignments.remove(&instance);
                self.refresh_status(&instance);
            }
            Some(Key::NodeInfo(node)) => {
                self.opaque_nodeinfos.remove(&node);
            }
            Some(Key::NodeState(node)) => {
                self.opaque_nodestates.remove(&node);
            }
            Some(Key::TaskState { namespace, name }) => {
                self.opaque_taskstates
                    .remove(&TaskRef::new(namespace, name));
            }
            Some(Key::Task { namespace, name }) => {
                self.opaque_tasks.remove(&TaskRef::new(namespace, name));
            }
            Some(Key::Revision {
                namespace,
                task,
                revision,
            }) => remove_nested(
                &mut self.opaque_revisions,
                TaskRef::new(namespace, task),
                &revision,
            ),
            // Kinds with no opaque set: nothing to forget.
            Some(
                Key::Status { .. }
                | Key::LegacyStatus(_)
                | Key::Request { .. }
                | Key::Trigger { .. }
                | Key::DeadLetter { .. }
                | Key::Run { .. }
                | Key::Controller(_)
                | Key::Event { .. },
            )
            | None => {}
        }
    }

    fn apply_decoded(
        &mut self,
        keys: &Keys,
        raw: Versioned<Box<RawValue>>,
    ) -> Result<(), DecodeError> {
        let key = match keys.parse(&raw.key) {
            // Not planner input.
            Some(Key::Controller(_) | Key::Event { .. }) | None => return Ok(()),
            Some(key) => key,
        };
        match decode_parsed_raw(key, &raw.key, &raw.value)? {
            Record::Task(task, value) => {
                self.tasks_changed = true;
                self.tasks.insert(task, raw.map(|_| value));
            }
            Record::Node(node, value) => {
                self.nodes.insert(node, raw.map(|_| value));
            }
            Record::NodeInfo(node, value) => {
                self.nodeinfos.insert(node, raw.map(|_| value));
            }
            Record::NodeState(node, value) => {
                self.nodestates.insert(node, raw.map(|_| value));
            }
            Record::Assignment(value) => {
                let id = value.id.clone();
                if value.revision == 0 {
                    self.legacy_templates
                        .insert(id.clone(), value.spec.template_hash());
                } else {
                    self.legacy_templates.remove(&id);
                }
                self.assignments.insert(id.clone(), raw.map(|_| value));
                self.refresh_status(&id);
            }
            Record::Status(id, value) => {
                let at = StatusKey::Node(value.node.clone());
                self.set_status(&id, at, Some(Some(raw.map(|_| value))));
            }
            Record::LegacyStatus(id, value) => {
                self.set_status(&id, StatusKey::Legacy, Some(Some(raw.map(|_| value))));
            }
            Record::TaskState(task, value) => {
                self.taskstates.insert(task, raw.map(|_| value));
            }
            Record::DeadLetter(instance, value) => {
                self.deadletters.insert(instance, raw.map(|_| value));
            }
            Record::Run(task, run, value) => {
                self.runs
                    .entry(task)
                    .or_default()
                    .insert(run, raw.map(|_| value));
            }
            Record::Request(task, id, value) => {
                self.requests
                    .entry(task)
                    .or_default()
                    .insert(id, raw.map(|_| value));
            }
            Record::Trigger(task, id, value) => {
                self.triggers
                    .entry(task)
                    .or_default()
                    .insert(id, raw.map(|_| value));
            }
            Record::Revision(task, revision, value) => {
                // Validated as the leader writes it: a record that claims another number or
                // a template its spec does not have, or whose spec `apply` would refuse, is
                // Invalid (it could make old copies look current, or be restored by a revert).
                let spec_task = Task::new(&task.namespace, &task.name, value.spec.clone());
                let problem = if value.revision != revision {
                    Some(format!(
                        "holds revision {} under number {revision}",
                        value.revision
                    ))
                } else if value.template_hash != value.spec.template_hash() {
                    Some("its templateHash is not its spec's".to_string())
                } else {
                    spec_task
                        .validate()
                        .first()
                        .map(|e| format!("its spec is not valid: {e}"))
                };
                if let Some(problem) = problem {
                    return Err(DecodeError {
                        key: raw.key.clone(),
                        kind: "RevisionRecord",
                        source: <serde_json::Error as serde::de::Error>::custom(problem),
                    });
                }
                self.revisions
                    .entry(task)
                    .or_default()
                    .insert(revision, raw.map(|_| value));
            }
            Record::Controller(..) | Record::Event(_) => {}
        }
        Ok(())
    }

    /// Records a deleted key at `revision`.
    pub fn remove(&mut self, keys: &Keys, key: &str, revision: i64) {
        self.revision = self.revision.max(revision);
        self.forget_undecodable(keys, key);
        let Some(parsed) = keys.parse(key) else {
            return;
        };
        match parsed {
            Key::Task { namespace, name } => {
                self.tasks_changed = true;
                self.tasks.remove(&TaskRef::new(namespace, name));
            }
            Key::Node(node) => {
                self.nodes.remove(&node);
            }
            Key::NodeInfo(node) => {
                self.nodeinfos.remove(&node);
            }
            Key::NodeState(node) => {
                self.nodestates.remove(&node);
            }
            Key::Assignment { node, instance } => {
                // Only if it is the same placement (ids never move between nodes, but be strict).
                if self
                    .assignments
                    .get(&instance)
                    .is_some_and(|a| a.value.node == node)
                {
                    self.assignments.remove(&instance);
                    self.legacy_templates.remove(&instance);
                    self.refresh_status(&instance);
                }
            }
            Key::Status { node, instance } => {
                self.set_status(&instance, StatusKey::Node(node), None)
            }
            Key::LegacyStatus(id) => self.set_status(&id, StatusKey::Legacy, None),
            Key::TaskState { namespace, name } => {
                self.taskstates.remove(&TaskRef::new(namespace, name));
            }
            Key::DeadLetter { instance, .. } => {
                self.deadletters.remove(&instance);
            }
            Key::Run {
                namespace,
                task,
                run,
            } => remove_nested(&mut self.runs, TaskRef::new(namespace, task), &run),
            Key::Trigger {
                namespace,
                task,
                id,
            } => remove_nested(&mut self.triggers, TaskRef::new(namespace, task), &id),
            Key::Request {
                namespace,
                task,
                id,
            } => remove_nested(&mut self.requests, TaskRef::new(namespace, task), &id),
            Key::Revision {
                namespace,
                task,
                revision,
            } => remove_nested(
                &mut self.revisions,
                TaskRef::new(namespace, task),
                &revision,
            ),
            Key::Controller(_) | Key::Event { .. } => {}
        }
    }

    /// Whether the planner must leave `task` alone this round (see
    /// [`Snapshot::opaque_taskstates`]).
    #[must_use]
    pub fn is_held(&self, task: &TaskRef) -> bool {
        self.opaque_taskstates.contains(task) || self.invalid_tasks.contains_key(task)
    }

    /// Validates the stored tasks with the rules `apply` enforces (their own fields, the key
    /// naming them, the size limit, `dependsOn` cycles across all of them), if a task changed
    /// since the last call.
    ///
    /// # Caveats
    /// The cycle check is over every task, so its cost grows with the number of tasks, not
    /// instances; it runs only when a task key changed.
    pub fn revalidate(&mut self) {
        if !self.tasks_changed {
            return;
        }
        self.tasks_changed = false;
        let stored: Vec<((String, String), &Task)> = self
            .tasks
            .iter()
            .map(|(r, t)| ((r.namespace.clone(), r.name.clone()), &t.value))
            .collect();
        self.invalid_tasks = drover_api::manifest::validate_stored(&stored)
            .into_iter()
            .map(|((ns, name), reason)| (TaskRef::new(ns, name), reason))
            .collect();
    }

    /// Whether `task` exists: its key holds a value, decodable or not. Cleanup of deleted tasks
    /// asks this, never `tasks.contains_key`, so an undecodable task is not taken for deleted.
    #[must_use]
    pub fn task_exists(&self, task: &TaskRef) -> bool {
        self.tasks.contains_key(task) || self.opaque_tasks.contains(task)
    }

    /// Whether `node` is alive: its lease-bound key exists, decodable or not.
    #[must_use]
    pub fn node_present(&self, node: &str) -> bool {
        self.nodes.contains_key(node) || self.opaque_nodes.contains(node)
    }

    /// Sets what the key `at` of `id` holds: `Some(Some(v))` a status, `Some(None)` a value
    /// that does not decode, `None` no key; then picks the status the planner reads.
    pub(crate) fn set_status(
        &mut self,
        id: &InstanceId,
        at: StatusKey,
        entry: Option<Option<Versioned<InstanceStatus>>>,
    ) {
        match entry {
            Some(entry) => {
                self.status_keys
                    .entry(id.clone())
                    .or_default()
                    .insert(at, entry.map(Arc::new));
            }
            None => {
                if let Some(held) = self.status_keys.get_mut(id) {
                    held.remove(&at);
                    if held.is_empty() {
                        self.status_keys.remove(id);
                    }
                }
            }
        }
        self.refresh_status(id);
    }

    /// The node `id` is assigned to, decodable or not.
    fn assigned_node(&self, id: &InstanceId) -> Option<&str> {
        self.assignments
            .get(id)
            .map(|a| a.value.node.as_str())
            .or_else(|| self.opaque_assignments.get(id).map(|o| o.node.as_str()))
    }

    /// Picks the status of `id` the planner reads (see [`Snapshot::statuses`]).
    fn refresh_status(&mut self, id: &InstanceId) {
        let picked = self
            .status_keys
            .get(id)
            .and_then(|held| pick_status(held, self.assigned_node(id)))
            .map(|(at, status)| (at, status.clone()));
        match picked {
            Some((at, status)) => {
                self.statuses.insert(id.clone(), status);
                self.status_from.insert(id.clone(), at);
            }
            None => {
                self.statuses.remove(id);
                self.status_from.remove(id);
            }
        }
    }

    /// Which key the status of `id` the planner reads is under, if it has one.
    pub fn status_key_of(&self, id: &InstanceId) -> Option<StatusKey> {
        self.status_from.get(id).cloned()
    }

    /// Legacy statuses that a key under a node has replaced, with their mod revisions:
    /// nothing reads them any more, and the leader deletes them.
    pub fn superseded_legacy_statuses(&self) -> impl Iterator<Item = (&InstanceId, i64)> + '_ {
        self.status_keys.iter().filter_map(|(id, held)| {
            let legacy = held.get(&StatusKey::Legacy)?.as_ref()?;
            let replaced = held.keys().any(|k| matches!(k, StatusKey::Node(_)))
                && self.status_from.get(id) != Some(&StatusKey::Legacy);
            replaced.then_some((id, legacy.mod_revision))
        })
    }

    /// Statuses of assigned instances under a node other than the one they are assigned to
    /// (another client wrote them, or a node's agent wrote for a copy it does not run), with
    /// their keys and mod revisions: never read, deleted by the leader.
    pub fn stray_statuses(&self) -> impl Iterator<Item = (&InstanceId, StatusKey, i64)> + '_ {
        self.status_keys.iter().flat_map(move |(id, held)| {
            let assigned = self.assigned_node(id);
            held.iter().filter_map(move |(at, entry)| {
                let StatusKey::Node(node) = at else {
                    return None;
                };
                let status = entry.as_ref()?;
                (assigned.is_some_and(|a| a != node)).then(|| (id, at.clone(), status.mod_revision))
            })
        })
    }

    /// Every status key of `id` that holds a decodable value, with its mod revision: what
    /// removing the instance deletes.
    pub fn status_keys_of(&self, id: &InstanceId) -> Vec<(StatusKey, i64)> {
        self.status_keys.get(id).map_or_else(Vec::new, |held| {
            held.iter()
                .filter_map(|(at, e)| e.as_ref().map(|s| (at.clone(), s.mod_revision)))
                .collect()
        })
    }

    /// Whether the copy of instance `id` on `node` is known to have no live process: its node
    /// is dead (its agent fenced itself before the lease could expire) or its agent reported a
    /// terminal phase. Otherwise — running, starting, stopping, or no status yet — it may be
    /// live and counts as a copy.
    pub fn copy_gone(&self, id: &InstanceId, node: &str) -> bool {
        !self.node_present(node) || self.terminal_status(id, node).is_some()
    }

    /// The mod revision of `id`'s status when it reports the copy on `node` terminal (a status
    /// naming another node — a foreign write — proves nothing).
    pub fn terminal_status(&self, id: &InstanceId, node: &str) -> Option<i64> {
        self.statuses
            .get(id)
            .filter(|s| s.value.phase.is_terminal() && s.value.node == node)
            .map(|s| s.mod_revision)
    }

    /// Events for undecodable keys not in `reported` yet (by key and mod revision), which it
    /// then records; keys that decode again are dropped from it. A node key names its node, an
    /// assignment its instance, anything else the key itself.
    pub fn undecodable_events(
        &self,
        keys: &Keys,
        reported: &mut BTreeMap<String, i64>,
        now: DateTime<Utc>,
    ) -> Vec<Event> {
        let invalid: BTreeMap<String, (&TaskRef, &String, i64)> = self
            .invalid_tasks
            .iter()
            .filter_map(|(t, reason)| {
                let rev = self.tasks.get(t)?.mod_revision;
                Some((keys.task(&t.namespace, &t.name), (t, reason, rev)))
            })
            .collect();
        reported.retain(|key, _| self.undecodable.contains_key(key) || invalid.contains_key(key));
        let mut events = Vec::new();
        for (key, (task, reason, rev)) in &invalid {
            if reported.insert(key.clone(), *rev) == Some(*rev) {
                continue;
            }
            events.push(Event {
                time: now,
                namespace: task.namespace.clone(),
                kind: EventKind::Task,
                name: task.name.clone(),
                reason: "Invalid".into(),
                message: format!("{key} is invalid: {reason}; the task is not planned"),
                source: "controller".into(),
            });
        }
        for (key, bad) in &self.undecodable {
            if reported.insert(key.clone(), bad.mod_revision) == Some(bad.mod_revision) {
                continue;
            }
            let (namespace, kind, name, effect) = match keys.parse(key) {
                Some(Key::Node(node)) => {
                    let effect = "the node counts as alive but takes no new instances";
                    ("default".to_owned(), EventKind::Node, node, effect)
                }
                Some(Key::Assignment { instance, .. }) => {
                    let effect = "the instance keeps its slot and is not replaced";
                    (
                        instance.namespace().to_owned(),
                        EventKind::Instance,
                        instance.to_string(),
                        effect,
                    )
                }
                Some(Key::NodeInfo(_)) => {
                    let effect = "the node keeps its instances but takes no new ones";
                    ("default".to_owned(), EventKind::Node, key.clone(), effect)
                }
                Some(Key::NodeState(_)) => {
                    let effect = "the node's death is judged from its lease alone; the record is not rewritten";
                    ("default".to_owned(), EventKind::Node, key.clone(), effect)
                }
                Some(Key::TaskState { .. }) => {
                    let effect = "the task is held: not planned until its state decodes";
                    ("default".to_owned(), EventKind::Task, key.clone(), effect)
                }
                _ => {
                    let effect = "its last good value, if any, is used";
                    ("default".to_owned(), EventKind::Task, key.clone(), effect)
                }
            };
            events.push(Event {
                time: now,
                namespace,
                kind,
                name,
                reason: "Undecodable".into(),
                message: format!(
                    "{key} does not decode as {}: {}; {effect}",
                    bad.kind, bad.error
                ),
                source: "controller".into(),
            });
        }
        events
    }

    /// Instances assigned to `node`.
    pub fn instances_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.assignments
            .values()
            .map(|a| &a.value)
            .filter(move |i| i.node == node)
    }
}

/// Removes `inner` from `outer[task]`, dropping the task's entry once empty.
fn remove_nested<K: Ord, V>(
    outer: &mut BTreeMap<TaskRef, BTreeMap<K, V>>,
    task: TaskRef,
    inner: &K,
) {
    if let Some(m) = outer.get_mut(&task) {
        m.remove(inner);
        if m.is_empty() {
            outer.remove(&task);
        }
    }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
