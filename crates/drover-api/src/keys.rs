//! The etcd key schema: every key Drover reads or writes is built and parsed here, and only here.
//!
//! All keys live under one prefix (default `/drover`, configurable with `--prefix`). Values are
//! JSON so that `etcdctl watch --prefix /drover/status/` is readable by a person.
//!
//! | key | written by | value | lifetime |
//! |---|---|---|---|
//! | `tasks/<ns>/<name>` | users (`drover apply`, any etcd client) | [`Task`](crate::task::Task) with its `generation` | until deleted |
//! | `assignments/<node>/<instance>` | leader controller (fenced txn) | [`Instance`](crate::instance::Instance): task ref, generation, resolved spec, attempt | until unassigned |
//! | `status/<node>/<instance>` | the agent of `<node>` running it, fenced on the assignment | [`InstanceStatus`](crate::instance::InstanceStatus) | deleted by the controller with the assignment |
//! | `nodes/<node>` | agent, bound to its lease | [`Node`](crate::node::Node) | lease: gone when the agent dies |
//! | `nodeinfo/<node>` | operators (`drover cordon`, `uncordon`, `drain`) | [`NodeInfo`](crate::node::NodeInfo): cordoned, draining | durable |
//! | `nodestate/<node>` | leader controller | [`NodeState`](crate::node::NodeState): dead since | durable |
//! | `leader/<lease-id>` | controller replicas via etcd's election API | replica id | lease |
//! | `controllers/<replica>` | each controller replica, on its lease | replica address/info | lease |
//! | `events/<ns>/<id>` | everyone, on a TTL lease | [`Event`](crate::event::Event) | TTL |
//! | `deadletter/<ns>/<instance>` | leader controller | [`DeadLetter`](crate::deadletter::DeadLetter) | until cleared |
//! | `taskstate/<ns>/<name>` | leader controller | [`TaskState`](crate::taskstate::TaskState): suspended, failures, last/next run | deleted with the task |
//! | `runs/<ns>/<task>/<run>` | leader controller | [`RunRecord`](crate::run::RunRecord) | pruned to `historyLimit` |
//! | `triggers/<ns>/<task>/<id>` | users (`drover trigger`) | trigger request (free-form JSON) | deleted once consumed |
//! | `requests/<ns>/<task>/<id>` | users (`drover enable`, `drover retry`, `drover rollout pause\|resume\|promote`) | [`TaskRequest`](crate::request::TaskRequest) | deleted by the leader once carried out |
//! | `revisions/<ns>/<task>/<n>` | leader controller | [`RevisionRecord`](crate::rollout::RevisionRecord): a service's copy template, numbered | pruned to the newest [`REVISION_HISTORY`](crate::rollout::REVISION_HISTORY), deleted with the task |
//!
//! Statuses sit under their node (`status/<node>/`) so that etcd's prefix permissions can let
//! one node's agent write its own statuses and no other's (docs/security.md). Before that they
//! were `status/<instance>`: [`Keys::parse`] still reads such a key as [`Key::LegacyStatus`],
//! which the leader reads as the instance's status until the agent writes one under its node,
//! and then deletes.
//!
//! Run and revision numbers are zero-padded to 20 digits in keys, so etcd's lexical order is numeric order
//! and a range read over `runs/<ns>/<task>/` returns runs oldest first.
//!
//! # Guarantees
//!
//! Builders take already-validated names (DNS-1123 labels, [`InstanceId`]s). Those never contain
//! `/`, so a key built from them stays in its own directory: `tasks_in("a")` never matches a key
//! of namespace `ab`, because every directory prefix ends with `/`. The `parse_*` functions are
//! strict: they return `None` for anything that a builder could not have produced (wrong prefix,
//! extra segments, invalid names), so a stray key written by hand is ignored rather than
//! misread.
//!
//! # Caveats
//!
//! Builders do not validate (they return `String`, not `Result`); validating names is the job
//! of the resource's own validation. Event, trigger and controller ids are free-form but must
//! not contain `/` (debug builds assert it).

use crate::names::{is_valid_label, InstanceId};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/drover";

const TASKS: &str = "tasks";
const ASSIGNMENTS: &str = "assignments";
const STATUS: &str = "status";
const NODES: &str = "nodes";
const NODEINFO: &str = "nodeinfo";
const NODESTATE: &str = "nodestate";
const LEADER: &str = "leader";
const CONTROLLERS: &str = "controllers";
const EVENTS: &str = "events";
const DEADLETTER: &str = "deadletter";
const TASKSTATE: &str = "taskstate";
const RUNS: &str = "runs";
const TRIGGERS: &str = "triggers";
const REQUESTS: &str = "requests";
const REVISIONS: &str = "revisions";

/// A Drover key, parsed: which kind it is and the names in it ([`Keys::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `tasks/<ns>/<name>`.
    Task {
        /// Namespace.
        namespace: String,
        /// Task name.
        name: String,
    },
    /// `assignments/<node>/<instance>`.
    Assignment {
        /// Node.
        node: String,
        /// Instance.
        instance: InstanceId,
    },
    /// `status/<node>/<instance>`.
    Status {
        /// The node whose agent writes it.
        node: String,
        /// Instance.
        instance: InstanceId,
    },
    /// `status/<instance>`: a status written before statuses moved under their node; read
    /// until its agent writes the new key, then deleted by the leader.
    LegacyStatus(InstanceId),
    /// `nodes/<node>`.
    Node(String),
    /// `nodeinfo/<node>`.
    NodeInfo(String),
    /// `nodestate/<node>`.
    NodeState(String),
    /// `controllers/<id>`.
    Controller(String),
    /// `events/<ns>/<id>`.
    Event {
        /// Namespace.
        namespace: String,
        /// Event id.
        id: String,
    },
    /// `deadletter/<ns>/<instance>`.
    DeadLetter {
        /// Namespace.
        namespace: String,
        /// Instance.
        instance: InstanceId,
    },
    /// `taskstate/<ns>/<name>`.
    TaskState {
        /// Namespace.
        namespace: String,
        /// Task name.
        name: String,
    },
    /// `runs/<ns>/<task>/<run>`.
    Run {
        /// Namespace.
        namespace: String,
        /// Task name.
        task: String,
        /// Run number.
        run: u64,
    },
    /// `triggers/<ns>/<task>/<id>`.
    Trigger {
        /// Namespace.
        namespace: String,
        /// Task name.
        task: String,
        /// Request id.
        id: String,
    },
    /// `requests/<ns>/<task>/<id>`.
    Request {
        /// Namespace.
        namespace: String,
        /// Task name.
        task: String,
        /// Request id.
        id: String,
    },
    /// `revisions/<ns>/<task>/<n>`.
    Revision {
        /// Namespace.
        namespace: String,
        /// Task name.
        task: String,
        /// Revision number.
        revision: u64,
    },
}

/// Builds and parses Drover's etcd keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

fn seg(s: &str) -> &str {
    debug_assert!(!s.contains('/'), "key segment {s:?} contains '/'");
    s
}

fn run_segment(run: u64) -> String {
    format!("{run:020}")
}

fn parse_run_segment(s: &str) -> Option<u64> {
    if s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn free_id(s: &str) -> bool {
    !s.is_empty() && !s.contains('/')
}

impl Keys {
    /// Keys under `prefix`. Trailing slashes are removed (`/drover/` and `/drover` are the
    /// same prefix); an empty prefix puts keys at `/tasks/...`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The normalised prefix, without a trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Everything Drover owns: `<prefix>/`.
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    fn dir(&self, kind: &str) -> String {
        format!("{}/{kind}/", self.prefix)
    }

    /// The part of `key` after `<prefix>/<kind>/`, split on `/`, if it has `n` non-empty parts.
    fn parts<'a>(&self, key: &'a str, kind: &str, n: usize) -> Option<Vec<&'a str>> {
        let rest = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')?
            .strip_prefix(kind)?
            .strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        (parts.len() == n && parts.iter().all(|p| !p.is_empty())).then_some(parts)
    }

    // ---- tasks ----

    /// `tasks/<ns>/<name>`: a Task, written by users.
    pub fn task(&self, ns: &str, name: &str) -> String {
        format!("{}{}/{}", self.tasks(), seg(ns), seg(name))
    }

    /// Prefix of all tasks: `tasks/`.
    pub fn tasks(&self) -> String {
        self.dir(TASKS)
    }

    /// Prefix of the tasks of one namespace: `tasks/<ns>/`.
    pub fn tasks_in(&self, ns: &str) -> String {
        format!("{}{}/", self.tasks(), seg(ns))
    }

    /// `(namespace, name)` of a task key.
    pub fn parse_task_key(&self, key: &str) -> Option<(String, String)> {
        self.parse_ns_name(key, TASKS)
    }

    fn parse_ns_name(&self, key: &str, kind: &str) -> Option<(String, String)> {
        let p = self.parts(key, kind, 2)?;
        (is_valid_label(p[0]) && is_valid_label(p[1])).then(|| (p[0].to_string(), p[1].to_string()))
    }

    // ---- assignments ----

    /// `assignments/<node>/<instance>`: an Instance, written by the leader.
    pub fn assignment(&self, node: &str, instance: &InstanceId) -> String {
        format!("{}{}", self.node_assignments(node), instance)
    }

    /// Prefix of all assignments: `assignments/`.
    pub fn assignments(&self) -> String {
        self.dir(ASSIGNMENTS)
    }

    /// Prefix of one node's assignments (what its agent watches): `assignments/<node>/`.
    pub fn node_assignments(&self, node: &str) -> String {
        format!("{}{}/", self.assignments(), seg(node))
    }

    /// `(node, instance)` of an assignment key.
    pub fn parse_assignment_key(&self, key: &str) -> Option<(String, InstanceId)> {
        let p = self.parts(key, ASSIGNMENTS, 2)?;
        if !is_valid_label(p[0]) {
            return None;
        }
        Some((p[0].to_string(), p[1].parse().ok()?))
    }

    // ---- status ----

    /// `status/<node>/<instance>`: an InstanceStatus, written by the agent of `node` running it.
    pub fn status(&self, node: &str, instance: &InstanceId) -> String {
        format!("{}{}", self.node_statuses(node), instance)
    }

    /// Prefix of all statuses: `status/`.
    pub fn statuses(&self) -> String {
        self.dir(STATUS)
    }

    /// Prefix of one node's statuses (the only statuses its agent may write):
    /// `status/<node>/`.
    pub fn node_statuses(&self, node: &str) -> String {
        format!("{}{}/", self.statuses(), seg(node))
    }

    /// `(node, instance)` of a status key.
    pub fn parse_status_key(&self, key: &str) -> Option<(String, InstanceId)> {
        let p = self.parts(key, STATUS, 2)?;
        if !is_valid_label(p[0]) {
            return None;
        }
        Some((p[0].to_string(), p[1].parse().ok()?))
    }

    /// The instance of a status key of either form (under its node, or legacy).
    pub fn parse_any_status_key(&self, key: &str) -> Option<InstanceId> {
        self.parse_status_key(key)
            .map(|(_, id)| id)
            .or_else(|| self.parse_legacy_status_key(key))
    }

    /// `status/<instance>`: where statuses were before they moved under their node. Only the
    /// migration reads and deletes these.
    pub fn legacy_status(&self, instance: &InstanceId) -> String {
        format!("{}{}", self.statuses(), instance)
    }

    /// The instance of a [`legacy_status`](Self::legacy_status) key.
    pub fn parse_legacy_status_key(&self, key: &str) -> Option<InstanceId> {
        self.parts(key, STATUS, 1)?[0].parse().ok()
    }

    // ---- nodes ----

    /// `nodes/<node>`: a Node, bound to the agent's lease.
    pub fn node(&self, node: &str) -> String {
        format!("{}{}", self.nodes(), seg(node))
    }

    /// Prefix of all live nodes: `nodes/`.
    pub fn nodes(&self) -> String {
        self.dir(NODES)
    }

    /// The node name of a node key.
    pub fn parse_node_key(&self, key: &str) -> Option<String> {
        self.parse_single_label(key, NODES)
    }

    fn parse_single_label(&self, key: &str, kind: &str) -> Option<String> {
        let p = self.parts(key, kind, 1)?;
        is_valid_label(p[0]).then(|| p[0].to_string())
    }

    /// `nodeinfo/<node>`: the durable NodeInfo record.
    pub fn nodeinfo(&self, node: &str) -> String {
        format!("{}{}", self.nodeinfos(), seg(node))
    }

    /// Prefix of all node infos: `nodeinfo/`.
    pub fn nodeinfos(&self) -> String {
        self.dir(NODEINFO)
    }

    /// The node name of a nodeinfo key.
    pub fn parse_nodeinfo_key(&self, key: &str) -> Option<String> {
        self.parse_single_label(key, NODEINFO)
    }

    /// `nodestate/<node>`: the leader's record of the node's lease ending.
    pub fn nodestate(&self, node: &str) -> String {
        format!("{}{}", self.nodestates(), seg(node))
    }

    /// Prefix of all node states: `nodestate/`.
    pub fn nodestates(&self) -> String {
        self.dir(NODESTATE)
    }

    /// The node name of a nodestate key.
    pub fn parse_nodestate_key(&self, key: &str) -> Option<String> {
        self.parse_single_label(key, NODESTATE)
    }

    // ---- controllers ----

    /// The election name passed to etcd's election API: `<prefix>/leader`. etcd creates the
    /// candidates' keys as `<prefix>/leader/<lease-id>`; the leader is the one with the lowest
    /// create revision, and its create revision is what leader writes are fenced on.
    pub fn election(&self) -> String {
        format!("{}/{LEADER}", self.prefix)
    }

    /// Prefix of the election candidates' keys: `<prefix>/leader/`.
    pub fn election_prefix(&self) -> String {
        self.dir(LEADER)
    }

    /// `controllers/<replica>`: one controller replica advertising itself (on its lease).
    pub fn controller(&self, replica: &str) -> String {
        format!("{}{}", self.controllers(), seg(replica))
    }

    /// Prefix where controller replicas advertise themselves: `controllers/`.
    pub fn controllers(&self) -> String {
        self.dir(CONTROLLERS)
    }

    /// The replica id of a controller key.
    pub fn parse_controller_key(&self, key: &str) -> Option<String> {
        let p = self.parts(key, CONTROLLERS, 1)?;
        Some(p[0].to_string())
    }

    // ---- events ----

    /// `events/<ns>/<id>`: an Event (on a TTL lease). `id` is free-form without `/`; a
    /// time-ordered id (e.g. zero-padded nanoseconds plus a suffix) keeps listings in order.
    pub fn event(&self, ns: &str, id: &str) -> String {
        format!("{}{}", self.events_in(ns), seg(id))
    }

    /// Prefix of one namespace's events: `events/<ns>/`.
    pub fn events_in(&self, ns: &str) -> String {
        format!("{}{}/", self.events(), seg(ns))
    }

    /// Prefix of all events: `events/`.
    pub fn events(&self) -> String {
        self.dir(EVENTS)
    }

    /// `(namespace, id)` of an event key.
    pub fn parse_event_key(&self, key: &str) -> Option<(String, String)> {
        let p = self.parts(key, EVENTS, 2)?;
        (is_valid_label(p[0]) && free_id(p[1])).then(|| (p[0].to_string(), p[1].to_string()))
    }

    // ---- dead letters ----

    /// `deadletter/<ns>/<instance>`: an instance that exhausted its retries.
    pub fn deadletter(&self, ns: &str, instance: &InstanceId) -> String {
        format!("{}{}/{}", self.deadletters(), seg(ns), instance)
    }

    /// Prefix of all dead letters: `deadletter/`.
    pub fn deadletters(&self) -> String {
        self.dir(DEADLETTER)
    }

    /// `(namespace, instance)` of a dead-letter key.
    pub fn parse_deadletter_key(&self, key: &str) -> Option<(String, InstanceId)> {
        let p = self.parts(key, DEADLETTER, 2)?;
        if !is_valid_label(p[0]) {
            return None;
        }
        Some((p[0].to_string(), p[1].parse().ok()?))
    }

    // ---- task state ----

    /// `taskstate/<ns>/<name>`: controller-owned state of a task (suspended, failures, runs).
    pub fn taskstate(&self, ns: &str, name: &str) -> String {
        format!("{}{}/{}", self.taskstates(), seg(ns), seg(name))
    }

    /// Prefix of all task states: `taskstate/`.
    pub fn taskstates(&self) -> String {
        self.dir(TASKSTATE)
    }

    /// `(namespace, name)` of a task-state key.
    pub fn parse_taskstate_key(&self, key: &str) -> Option<(String, String)> {
        self.parse_ns_name(key, TASKSTATE)
    }

    // ---- runs ----

    /// `runs/<ns>/<task>/<run>`: the record of one job run (run zero-padded to 20 digits).
    pub fn run(&self, ns: &str, task: &str, run: u64) -> String {
        format!("{}{}", self.runs_of(ns, task), run_segment(run))
    }

    /// Prefix of one task's runs, oldest first: `runs/<ns>/<task>/`.
    pub fn runs_of(&self, ns: &str, task: &str) -> String {
        format!("{}{}/{}/", self.runs(), seg(ns), seg(task))
    }

    /// Prefix of all run records: `runs/`.
    pub fn runs(&self) -> String {
        self.dir(RUNS)
    }

    /// `(namespace, task, run)` of a run key.
    pub fn parse_run_key(&self, key: &str) -> Option<(String, String, u64)> {
        let p = self.parts(key, RUNS, 3)?;
        if !(is_valid_label(p[0]) && is_valid_label(p[1])) {
            return None;
        }
        Some((p[0].to_string(), p[1].to_string(), parse_run_segment(p[2])?))
    }

    // ---- triggers ----

    /// `triggers/<ns>/<task>/<id>`: a manual trigger request (`drover trigger`).
    pub fn trigger(&self, ns: &str, task: &str, id: &str) -> String {
        format!("{}{}/{}/{}", self.triggers(), seg(ns), seg(task), seg(id))
    }

    /// Prefix of all trigger requests: `triggers/`.
    pub fn triggers(&self) -> String {
        self.dir(TRIGGERS)
    }

    /// `(namespace, task, id)` of a trigger key.
    pub fn parse_trigger_key(&self, key: &str) -> Option<(String, String, String)> {
        let p = self.parts(key, TRIGGERS, 3)?;
        (is_valid_label(p[0]) && is_valid_label(p[1]) && free_id(p[2]))
            .then(|| (p[0].to_string(), p[1].to_string(), p[2].to_string()))
    }

    /// Which kind of Drover key `key` is, with its names; `None` for anything a builder here
    /// could not have produced (election keys included: their ids are etcd's).
    pub fn parse(&self, key: &str) -> Option<Key> {
        if let Some((namespace, name)) = self.parse_task_key(key) {
            return Some(Key::Task { namespace, name });
        }
        if let Some((node, instance)) = self.parse_assignment_key(key) {
            return Some(Key::Assignment { node, instance });
        }
        if let Some((node, instance)) = self.parse_status_key(key) {
            return Some(Key::Status { node, instance });
        }
        if let Some(id) = self.parse_legacy_status_key(key) {
            return Some(Key::LegacyStatus(id));
        }
        if let Some(node) = self.parse_node_key(key) {
            return Some(Key::Node(node));
        }
        if let Some(node) = self.parse_nodeinfo_key(key) {
            return Some(Key::NodeInfo(node));
        }
        if let Some(node) = self.parse_nodestate_key(key) {
            return Some(Key::NodeState(node));
        }
        if let Some(id) = self.parse_controller_key(key) {
            return Some(Key::Controller(id));
        }
        if let Some((namespace, id)) = self.parse_event_key(key) {
            return Some(Key::Event { namespace, id });
        }
        if let Some((namespace, instance)) = self.parse_deadletter_key(key) {
            return Some(Key::DeadLetter {
                namespace,
                instance,
            });
        }
        if let Some((namespace, name)) = self.parse_taskstate_key(key) {
            return Some(Key::TaskState { namespace, name });
        }
        if let Some((namespace, task, run)) = self.parse_run_key(key) {
            return Some(Key::Run {
                namespace,
                task,
                run,
            });
        }
        if let Some((namespace, task, id)) = self.parse_trigger_key(key) {
            return Some(Key::Trigger {
                namespace,
                task,
                id,
            });
        }
        if let Some((namespace, task, revision)) = self.parse_revision_key(key) {
            return Some(Key::Revision {
                namespace,
                task,
                revision,
            });
        }
        self.parse_request_key(key)
            .map(|(namespace, task, id)| Key::Request {
                namespace,
                task,
                id,
            })
    }

    // ---- revisions ----

    /// `revisions/<ns>/<task>/<n>`: one copy template of a service.
    pub fn revision(&self, ns: &str, task: &str, revision: u64) -> String {
        format!("{}{}", self.revisions_of(ns, task), run_segment(revision))
    }

    /// Prefix of one task's revisions, oldest first: `revisions/<ns>/<task>/`.
    pub fn revisions_of(&self, ns: &str, task: &str) -> String {
        format!("{}{}/{}/", self.revisions(), seg(ns), seg(task))
    }

    /// Prefix of all revisions: `revisions/`.
    pub fn revisions(&self) -> String {
        self.dir(REVISIONS)
    }

    /// `(namespace, task, revision)` of a revision key.
    pub fn parse_revision_key(&self, key: &str) -> Option<(String, String, u64)> {
        let p = self.parts(key, REVISIONS, 3)?;
        if !(is_valid_label(p[0]) && is_valid_label(p[1])) {
            return None;
        }
        Some((p[0].to_string(), p[1].to_string(), parse_run_segment(p[2])?))
    }

    // ---- requests ----

    /// `requests/<ns>/<task>/<id>`: an operator's request about a task (`drover enable`,
    /// `drover retry`).
    pub fn request(&self, ns: &str, task: &str, id: &str) -> String {
        format!("{}{}/{}/{}", self.requests(), seg(ns), seg(task), seg(id))
    }

    /// Prefix of all task requests: `requests/`.
    pub fn requests(&self) -> String {
        self.dir(REQUESTS)
    }

    /// `(namespace, task, id)` of a request key.
    pub fn parse_request_key(&self, key: &str) -> Option<(String, String, String)> {
        let p = self.parts(key, REQUESTS, 3)?;
        (is_valid_label(p[0]) && is_valid_label(p[1]) && free_id(p[2]))
            .then(|| (p[0].to_string(), p[1].to_string(), p[2].to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id() -> InstanceId {
        InstanceId::job("team-a", "my-job", 7, 1).unwrap()
    }

    #[test]
    fn parse_names_the_kind_of_every_built_key() {
        let k = Keys::default();
        let i = id();
        let cases = [
            (
                k.task("a", "b"),
                Key::Task {
                    namespace: "a".into(),
                    name: "b".into(),
                },
            ),
            (
                k.assignment("n", &i),
                Key::Assignment {
                    node: "n".into(),
                    instance: i.clone(),
                },
            ),
            (
                k.status("n1", &i),
                Key::Status {
                    node: "n1".into(),
                    instance: i.clone(),
                },
            ),
            (k.legacy_status(&i), Key::LegacyStatus(i.clone())),
            (k.node("n"), Key::Node("n".into())),
            (k.nodeinfo("n"), Key::NodeInfo("n".into())),
            (k.nodestate("n"), Key::NodeState("n".into())),
            (k.controller("c"), Key::Controller("c".into())),
            (
                k.event("a", "e1"),
                Key::Event {
                    namespace: "a".into(),
                    id: "e1".into(),
                },
            ),
            (
                k.deadletter("team-a", &i),
                Key::DeadLetter {
                    namespace: "team-a".into(),
                    instance: i.clone(),
                },
            ),
            (
                k.taskstate("a", "b"),
                Key::TaskState {
                    namespace: "a".into(),
                    name: "b".into(),
                },
            ),
            (
                k.run("a", "b", 3),
                Key::Run {
                    namespace: "a".into(),
                    task: "b".into(),
                    run: 3,
                },
            ),
            (
                k.revision("a", "b", 4),
                Key::Revision {
                    namespace: "a".into(),
                    task: "b".into(),
                    revision: 4,
                },
            ),
            (
                k.trigger("a", "b", "t"),
                Key::Trigger {
                    namespace: "a".into(),
                    task: "b".into(),
                    id: "t".into(),
                },
            ),
            (
                k.request("a", "b", "r"),
                Key::Request {
                    namespace: "a".into(),
                    task: "b".into(),
                    id: "r".into(),
                },
            ),
        ];
        for (key, want) in cases {
            assert_eq!(k.parse(&key), Some(want), "{key}");
        }
        assert_eq!(k.parse("/drover/tasks/a"), None);
        assert_eq!(k.parse("/other/tasks/a/b"), None);
    }

    #[test]
    fn prefix_is_normalised() {
        assert_eq!(Keys::new("/drover/").task("a", "b"), "/drover/tasks/a/b");
        assert_eq!(Keys::new("/drover//").prefix(), "/drover");
        assert_eq!(Keys::default(), Keys::new("/drover"));
        assert_eq!(Keys::new("").task("a", "b"), "/tasks/a/b");
        assert_eq!(Keys::new("/x").all(), "/x/");
    }

    #[test]
    fn layout() {
        let k = Keys::default();
        assert_eq!(
            k.assignment("node-1", &id()),
            "/drover/assignments/node-1/team-a.my-job.r7.1"
        );
        assert_eq!(
            k.status("n1", &id()),
            "/drover/status/n1/team-a.my-job.r7.1"
        );
        assert_eq!(k.legacy_status(&id()), "/drover/status/team-a.my-job.r7.1");
        assert_eq!(k.node_statuses("n1"), "/drover/status/n1/");
        assert_eq!(k.run("a", "b", 42), "/drover/runs/a/b/00000000000000000042");
        assert_eq!(k.election(), "/drover/leader");
        assert_eq!(k.election_prefix(), "/drover/leader/");
        for p in [
            k.tasks(),
            k.tasks_in("a"),
            k.assignments(),
            k.node_assignments("n"),
            k.statuses(),
            k.nodes(),
            k.nodeinfos(),
            k.nodestates(),
            k.controllers(),
            k.events(),
            k.events_in("a"),
            k.deadletters(),
            k.taskstates(),
            k.runs(),
            k.runs_of("a", "b"),
            k.triggers(),
            k.requests(),
        ] {
            assert!(p.ends_with('/'), "{p}");
            assert!(p.starts_with("/drover/"), "{p}");
        }
        // Run keys sort numerically.
        assert!(k.run("a", "b", 9) < k.run("a", "b", 10));
    }

    #[test]
    fn keys_parse_back() {
        let k = Keys::new("/pfx/");
        assert_eq!(
            k.parse_task_key(&k.task("ns", "echo")),
            Some(("ns".into(), "echo".into()))
        );
        assert_eq!(
            k.parse_assignment_key(&k.assignment("n1", &id())),
            Some(("n1".into(), id()))
        );
        assert_eq!(
            k.parse_status_key(&k.status("n1", &id())),
            Some(("n1".into(), id()))
        );
        assert_eq!(
            k.parse_legacy_status_key(&k.legacy_status(&id())),
            Some(id())
        );
        assert_eq!(k.parse_legacy_status_key(&k.status("n1", &id())), None);
        assert_eq!(k.parse_status_key(&k.legacy_status(&id())), None);
        assert_eq!(k.parse_any_status_key(&k.legacy_status(&id())), Some(id()));
        assert_eq!(k.parse_any_status_key(&k.status("n1", &id())), Some(id()));
        assert_eq!(k.parse_node_key(&k.node("n1")), Some("n1".into()));
        assert_eq!(k.parse_nodeinfo_key(&k.nodeinfo("n1")), Some("n1".into()));
        assert_eq!(k.parse_nodestate_key(&k.nodestate("n1")), Some("n1".into()));
        assert_eq!(k.parse_nodestate_key(&k.nodeinfo("n1")), None);
        assert_eq!(
            k.parse_controller_key(&k.controller("c-1")),
            Some("c-1".into())
        );
        assert_eq!(
            k.parse_event_key(&k.event("ns", "0001-x")),
            Some(("ns".into(), "0001-x".into()))
        );
        assert_eq!(
            k.parse_deadletter_key(&k.deadletter("team-a", &id())),
            Some(("team-a".into(), id()))
        );
        assert_eq!(
            k.parse_taskstate_key(&k.taskstate("ns", "t")),
            Some(("ns".into(), "t".into()))
        );
        assert_eq!(
            k.parse_run_key(&k.run("ns", "t", u64::MAX)),
            Some(("ns".into(), "t".into(), u64::MAX))
        );
        assert_eq!(
            k.parse_trigger_key(&k.trigger("ns", "t", "abc")),
            Some(("ns".into(), "t".into(), "abc".into()))
        );
    }

    #[test]
    fn foreign_keys_do_not_parse() {
        let k = Keys::default();
        for key in [
            "/drover/tasks/ns",
            "/drover/tasks/ns/",
            "/drover/tasks/ns/a/b",
            "/drover/tasks/NS/a",
            "/drover/tasks//a",
            "/droverx/tasks/ns/a",
            "/other/tasks/ns/a",
            "drover/tasks/ns/a",
            "/drover/taskss/ns/a",
        ] {
            assert_eq!(k.parse_task_key(key), None, "{key}");
        }
        assert_eq!(k.parse_status_key("/drover/status/n1/not-an-id"), None);
        assert_eq!(
            k.parse_status_key("/drover/status/N1/team-a.my-job.r7.1"),
            None
        );
        assert_eq!(k.parse_legacy_status_key("/drover/status/not-an-id"), None);
        assert_eq!(k.parse_node_key(&k.nodeinfo("n1")), None);
        assert_eq!(k.parse_assignment_key("/drover/assignments/n1"), None);
        assert_eq!(k.parse_run_key("/drover/runs/a/b/42"), None);
    }

    #[test]
    fn keys_stay_under_their_prefix() {
        let k = Keys::default();
        // A namespace that is a prefix of another never shares a directory prefix.
        assert!(!k.task("ab", "x").starts_with(&k.tasks_in("a")));
        assert!(!k
            .assignment("node-10", &id())
            .starts_with(&k.node_assignments("node-1")));
        assert!(!k
            .status("node-10", &id())
            .starts_with(&k.node_statuses("node-1")));
        assert!(!k.run("a", "bc", 1).starts_with(&k.runs_of("a", "b")));
        // Every key of a kind is under that kind's prefix, and under nobody else's.
        let all_dirs = [
            k.tasks(),
            k.assignments(),
            k.statuses(),
            k.nodes(),
            k.nodeinfos(),
            k.nodestates(),
            k.controllers(),
            k.events(),
            k.deadletters(),
            k.taskstates(),
            k.runs(),
            k.triggers(),
            k.requests(),
            k.election_prefix(),
        ];
        let keys = [
            (k.task("a", "b"), k.tasks()),
            (k.assignment("n", &id()), k.assignments()),
            (k.status("n1", &id()), k.statuses()),
            (k.legacy_status(&id()), k.statuses()),
            (k.node("n"), k.nodes()),
            (k.nodeinfo("n"), k.nodeinfos()),
            (k.nodestate("n"), k.nodestates()),
            (k.event("a", "1"), k.events()),
            (k.deadletter("a", &id()), k.deadletters()),
            (k.taskstate("a", "b"), k.taskstates()),
            (k.run("a", "b", 1), k.runs()),
            (k.trigger("a", "b", "1"), k.triggers()),
            (k.request("a", "b", "1"), k.requests()),
        ];
        assert!(k.status("n1", &id()).starts_with(&k.node_statuses("n1")));
        for (key, own) in keys {
            for dir in &all_dirs {
                assert_eq!(key.starts_with(dir.as_str()), dir == &own, "{key} vs {dir}");
            }
        }
    }
}
