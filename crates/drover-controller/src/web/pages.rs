//! The web view's pages: pure functions of the replica's [`Snapshot`] (and its recent events)
//! to small serializable records. Big lists are summarised (counts per state) and paged
//! ([`Paging`], at most [`MAX_LIMIT`] rows), so a page costs one pass over the snapshot at
//! most and its size does not grow with the cluster.
//!
//! A key whose value does not decode or breaks `apply`'s rules is a row like the others, marked
//! `invalid` with its key and the reason (foreign writers are normal).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use drover_api::keys::Key;
use drover_api::records::TaskRef;
use drover_api::{InstanceId, Keys, Phase};
use serde::Serialize;

use super::recent::{Kept, Ring};
use crate::snapshot::{Snapshot, StatusKey};

/// Rows per page unless the query says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The most rows one page holds.
pub const MAX_LIMIT: usize = 500;

/// Which rows a list request wants: page `page` (from 1) of `limit` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// Page number, from 1.
    pub page: usize,
    /// Rows per page, 1 to [`MAX_LIMIT`].
    pub limit: usize,
}

impl Default for Paging {
    fn default() -> Self {
        Paging {
            page: 1,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl Paging {
    /// Reads `page=` and `limit=` from a query string; missing or bad values take the default,
    /// and the limit is clamped to 1..=[`MAX_LIMIT`].
    #[must_use]
    pub fn from_query(query: Option<&str>) -> Paging {
        let mut paging = Paging::default();
        for pair in query.unwrap_or("").split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let Ok(n) = value.parse::<usize>() else {
                continue;
            };
            match name {
                "page" => paging.page = n.max(1),
                "limit" => paging.limit = n.clamp(1, MAX_LIMIT),
                _ => {}
            }
        }
        paging
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// This page's number (clamped to the last page).
    pub page: usize,
    /// How many pages there are (at least 1).
    pub pages: usize,
    /// Rows in the whole list.
    pub total: usize,
    /// Rows per page.
    pub limit: usize,
}

/// Page `paging` of `items`, which hold `total` items, each shown as `row(item)`.
///
/// # Guarantees
/// Builds only the rows of that page: earlier items are skipped before `row` runs (a mapped
/// iterator's `skip` would build every skipped row), so the last page costs what the first does.
pub fn paginate<I, T>(
    items: I,
    total: usize,
    paging: Paging,
    row: impl FnMut(I::Item) -> T,
) -> Page<T>
where
    I: Iterator,
{
    let pages = total.div_ceil(paging.limit).max(1);
    let page = paging.page.min(pages);
    Page {
        items: items
            .skip((page - 1) * paging.limit)
            .take(paging.limit)
            .map(row)
            .collect(),
        page,
        pages,
        total,
        limit: paging.limit,
    }
}

/// A value that does not decode or is not valid: its key and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invalid {
    /// The etcd key.
    pub key: String,
    /// What is wrong with it.
    pub error: String,
}

/// Who serves the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replica {
    /// The replica id.
    pub id: String,
    /// Whether it leads now.
    pub leader: bool,
}

/// Counts of the whole cluster, for the view's header.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The replica answering.
    pub replica: Replica,
    /// The revision the data reflects (0 before the first listing).
    pub revision: i64,
    /// Nodes: total, alive, dead, cordoned, draining, invalid.
    pub nodes: BTreeMap<&'static str, usize>,
    /// Tasks: total and per mode, suspended, invalid.
    pub tasks: BTreeMap<&'static str, usize>,
    /// Instances: total and per phase (`NoStatus`, `Invalid` included).
    pub instances: BTreeMap<&'static str, usize>,
    /// Dead letters.
    pub dead_letters: usize,
    /// Run records.
    pub runs: usize,
    /// Keys whose value does not decode or breaks `apply`'s rules.
    pub invalid_keys: usize,
    /// Events the view keeps (the newest).
    pub recent_events: usize,
}

/// The phase shown for an instance: its status's phase, `NoStatus`, or `Invalid`.
fn instance_state(s: &Snapshot, id: &InstanceId) -> &'static str {
    match s.statuses.get(id).map(|st| st.value.phase) {
        Some(Phase::Pending) => "Pending",
        Some(Phase::Starting) => "Starting",
        Some(Phase::Running) => "Running",
        Some(Phase::Succeeded) => "Succeeded",
        Some(Phase::Failed) => "Failed",
        Some(Phase::Stopping) => "Stopping",
        Some(Phase::Stopped) => "Stopped",
        None if status_is_invalid(s, id) => "Invalid",
        None => "NoStatus",
    }
}

/// Whether the status key the planner would read for `id` holds a value that does not decode.
fn status_is_invalid(s: &Snapshot, id: &InstanceId) -> bool {
    s.opaque_assignments.contains_key(id)
        || s.status_keys
            .get(id)
            .is_some_and(|held| held.values().any(Option::is_none))
}

/// Every known node name: alive, recorded, or undecodable.
fn node_names(s: &Snapshot) -> BTreeSet<&str> {
    s.nodes
        .keys()
        .chain(&s.opaque_nodes)
        .chain(s.nodeinfos.keys())
        .chain(&s.opaque_nodeinfos)
        .chain(s.nodestates.keys())
        .map(String::as_str)
        .collect()
}

/// Every task that exists or is held.
fn task_refs(s: &Snapshot) -> BTreeSet<&TaskRef> {
    s.tasks.keys().chain(&s.opaque_tasks).collect()
}

/// The header's counts.
#[must_use]
pub fn summary(s: &Snapshot, replica: Replica, events: &Ring) -> Summary {
    let mut nodes = BTreeMap::new();
    let names = node_names(s);
    nodes.insert("total", names.len());
    nodes.insert("alive", names.iter().filter(|n| s.node_present(n)).count());
    nodes.insert("dead", names.iter().filter(|n| !s.node_present(n)).count());
    nodes.insert(
        "cordoned",
        s.nodeinfos.values().filter(|i| i.value.cordoned).count(),
    );
    nodes.insert(
        "draining",
        s.nodeinfos.values().filter(|i| i.value.draining).count(),
    );
    nodes.insert("invalid", s.opaque_nodes.len() + s.opaque_nodeinfos.len());

    let mut tasks = BTreeMap::new();
    tasks.insert("total", task_refs(s).len());
    for task in s.tasks.values() {
        let mode = match task.value.spec.mode() {
            drover_api::task::Mode::Service => "service",
            drover_api::task::Mode::Job => "job",
            drover_api::task::Mode::Scheduled => "scheduled",
            drover_api::task::Mode::Triggered => "triggered",
        };
        *tasks.entry(mode).or_default() += 1;
    }
    tasks.insert(
        "suspended",
        s.taskstates
            .values()
            .filter(|t| t.value.state.suspended)
            .count(),
    );
    tasks.insert(
        "invalid",
        s.opaque_tasks.len()
            + s.invalid_tasks
                .keys()
                .filter(|t| !s.opaque_tasks.contains(t))
                .count(),
    );

    let mut instances: BTreeMap<&'static str, usize> = BTreeMap::new();
    let ids = s.assignments.keys().chain(s.opaque_assignments.keys());
    let mut total = 0;
    for id in ids {
        total += 1;
        *instances.entry(instance_state(s, id)).or_default() += 1;
    }
    instances.insert("total", total);

    Summary {
        replica,
        revision: s.revision,
        nodes,
        tasks,
        instances,
        dead_letters: s.deadletters.len(),
        runs: s.runs.values().map(BTreeMap::len).sum(),
        invalid_keys: invalid_count(s),
        recent_events: events.len(),
    }
}

/// One row of the nodes page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRow {
    /// The node's name.
    pub name: String,
    /// Its lease-bound key exists.
    pub alive: bool,
    /// `drover cordon`.
    pub cordoned: bool,
    /// `drover drain`.
    pub draining: bool,
    /// Allocatable CPU, e.g. `4000m`.
    pub cpu: Option<String>,
    /// Allocatable memory, e.g. `8Gi`.
    pub memory: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its gRPC address.
    pub address: Option<String>,
    /// Instances assigned to it.
    pub instances: usize,
    /// When the leader saw its lease end.
    pub dead_since: Option<DateTime<Utc>>,
    /// Its `nodes/` or `nodeinfo/` key does not decode.
    pub invalid: Option<Invalid>,
}

/// A page of nodes, by name.
#[must_use]
pub fn nodes(s: &Snapshot, keys: &Keys, paging: Paging) -> Page<NodeRow> {
    let names = node_names(s);
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for a in s.assignments.values() {
        *per_node.entry(a.value.node.as_str()).or_default() += 1;
    }
    for o in s.opaque_assignments.values() {
        *per_node.entry(o.node.as_str()).or_default() += 1;
    }
    let total = names.len();
    paginate(names.into_iter(), total, paging, |name| {
        let node = s.nodes.get(name).map(|n| &n.value);
        let info = s.nodeinfos.get(name).map(|i| &i.value);
        let invalid = [keys.node(name), keys.nodeinfo(name)]
            .into_iter()
            .find_map(|key| {
                s.undecodable.get(&key).map(|bad| Invalid {
                    error: format!("does not decode as {}: {}", bad.kind, bad.error),
                    key,
                })
            });
        NodeRow {
            name: name.to_string(),
            alive: s.node_present(name),
            cordoned: info.is_some_and(|i| i.cordoned),
            draining: info.is_some_and(|i| i.draining),
            cpu: node.map(|n| n.capacity.cpu.to_string()),
            memory: node.map(|n| n.capacity.memory.to_string()),
            labels: node.map(|n| n.labels.clone()).unwrap_or_default(),
            address: node.map(|n| n.address.clone()),
            instances: per_node.get(name).copied().unwrap_or(0),
            dead_since: s.nodestates.get(name).and_then(|d| d.value.dead_since),
            invalid,
        }
    })
}

/// One row of the tasks page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `service`, `job`, `scheduled`, `triggered` (none when the task does not decode).
    pub mode: Option<String>,
    /// `replicas`.
    pub desired: Option<u32>,
    /// Instances whose agent reports Running.
    pub running: usize,
    /// Instances assigned.
    pub instances: usize,
    /// The task's generation.
    pub generation: Option<u64>,
    /// A service's rollout: phase and revision, e.g. `Complete (rev 2)`.
    pub rollout: Option<String>,
    /// The latest run and its outcome, e.g. `#3 Succeeded`.
    pub last_run: Option<String>,
    /// When the next scheduled run is due.
    pub next_run: Option<DateTime<Utc>>,
    /// The circuit breaker tripped.
    pub suspended: bool,
    /// Why a due run waits.
    pub pending: Option<String>,
    /// The task's key or its state does not decode, or it breaks `apply`'s rules.
    pub invalid: Option<Invalid>,
}

fn task_row(s: &Snapshot, keys: &Keys, task: &TaskRef, counts: Option<&(usize, usize)>) -> TaskRow {
    let spec = s.tasks.get(task).map(|t| &t.value);
    let state = s.taskstates.get(task).map(|t| &t.value.state);
    let task_key = keys.task(&task.namespace, &task.name);
    let state_key = keys.taskstate(&task.namespace, &task.name);
    let invalid = if let Some(bad) = s.undecodable.get(&task_key) {
        Some(Invalid {
            error: format!("does not decode as {}: {}", bad.kind, bad.error),
            key: task_key,
        })
    } else if let Some(reason) = s.invalid_tasks.get(task) {
        Some(Invalid {
            key: task_key,
            error: reason.clone(),
        })
    } else {
        s.undecodable.get(&state_key).map(|bad| Invalid {
            error: format!("does not decode as {}: {}", bad.kind, bad.error),
            key: state_key,
        })
    };
    let (instances, running) = counts.copied().unwrap_or((0, 0));
    TaskRow {
        namespace: task.namespace.clone(),
        name: task.name.clone(),
        mode: spec.map(|t| t.spec.mode().to_string()),
        desired: spec.map(|t| t.spec.replicas),
        running,
        instances,
        generation: spec.map(|t| t.metadata.generation),
        rollout: state
            .and_then(|st| st.rollout.as_ref())
            .map(|r| format!("{} (rev {})", r.phase, r.revision)),
        last_run: state.and_then(|st| {
            st.last_run.map(|n| match st.last_outcome {
                Some(outcome) => format!("#{n} {outcome}"),
                None => format!("#{n}"),
            })
        }),
        next_run: state.and_then(|st| st.next_run_at),
        suspended: state.is_some_and(|st| st.suspended),
        pending: state.and_then(|st| st.pending_reason.clone()),
        invalid,
    }
}

/// (instances, running) per task `(namespace, name)`, in one pass over the assignments.
fn counts_per_task(s: &Snapshot) -> HashMap<(&str, &str), (usize, usize)> {
    let mut counts: HashMap<(&str, &str), (usize, usize)> = HashMap::new();
    for (id, a) in &s.assignments {
        let entry = counts
            .entry((a.value.namespace.as_str(), a.value.task.as_str()))
            .or_default();
        entry.0 += 1;
        if s.statuses
            .get(id)
            .is_some_and(|st| st.value.phase == Phase::Running)
        {
            entry.1 += 1;
        }
    }
    for id in s.opaque_assignments.keys() {
        counts.entry((id.namespace(), id.task())).or_default().0 += 1;
    }
    counts
}

/// A page of tasks, by namespace and name.
#[must_use]
pub fn tasks(s: &Snapshot, keys: &Keys, paging: Paging) -> Page<TaskRow> {
    let refs = task_refs(s);
    let counts = counts_per_task(s);
    let total = refs.len();
    paginate(refs.into_iter(), total, paging, |t| {
        task_row(
            s,
            keys,
            t,
            counts.get(&(t.namespace.as_str(), t.name.as_str())),
        )
    })
}

/// One row of a task's instances.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceRow {
    /// The instance id.
    pub id: String,
    /// The node it is assigned to.
    pub node: String,
    /// Phase (`NoStatus` before its agent reports, `Invalid` when a key does not decode).
    pub phase: String,
    /// The status column of `drover get instances` (reason or phase).
    pub status: String,
    /// Local restarts.
    pub restarts: u32,
    /// Last exit code.
    pub exit_code: Option<i32>,
    /// Health check result.
    pub health: Option<String>,
    /// Placement attempt.
    pub attempt: Option<u32>,
    /// Job run number.
    pub run: Option<u64>,
    /// The stop the leader asked for, if any.
    pub stopping: Option<String>,
    /// When its process started.
    pub started_at: Option<DateTime<Utc>>,
    /// Its assignment or status key does not decode.
    pub invalid: Option<Invalid>,
}

/// A task's instances: counts per phase and one page of rows, by id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskInstances {
    /// The task's row (none when no such task exists and no instance names it).
    pub task: Option<TaskRow>,
    /// Instances per phase.
    pub phases: BTreeMap<&'static str, usize>,
    /// The page.
    pub page: Page<InstanceRow>,
}

fn instance_row(s: &Snapshot, keys: &Keys, id: &InstanceId) -> InstanceRow {
    let assignment = s.assignments.get(id).map(|a| &a.value);
    let node = assignment
        .map(|a| a.node.clone())
        .or_else(|| s.opaque_assignments.get(id).map(|o| o.node.clone()))
        .unwrap_or_default();
    let status = s.statuses.get(id).map(|st| &st.value);
    let invalid = if s.opaque_assignments.contains_key(id) {
        let key = keys.assignment(&node, id);
        s.undecodable.get(&key).map(|bad| Invalid {
            error: format!("does not decode as {}: {}", bad.kind, bad.error),
            key,
        })
    } else {
        s.status_keys.get(id).and_then(|held| {
            held.iter().find(|(_, v)| v.is_none()).map(|(at, _)| {
                let key = match at {
                    StatusKey::Node(n) => keys.status(n, id),
                    StatusKey::Legacy => keys.legacy_status(id),
                };
                let error = s
                    .undecodable
                    .get(&key)
                    .map(|bad| format!("does not decode as {}: {}", bad.kind, bad.error))
                    .unwrap_or_else(|| "does not decode".into());
                Invalid { key, error }
            })
        })
    };
    InstanceRow {
        id: id.to_string(),
        node,
        phase: instance_state(s, id).to_string(),
        status: status.map_or_else(
            || instance_state(s, id).to_string(),
            |st| st.display_status(),
        ),
        restarts: status.map_or(0, |st| st.restart_count),
        exit_code: status.and_then(|st| st.exit_code),
        health: status.map(|st| format!("{:?}", st.health)),
        attempt: assignment.map(|a| a.attempt),
        run: assignment.and_then(|a| a.run),
        stopping: assignment.and_then(|a| a.stop.as_ref().map(|st| st.reason.clone())),
        started_at: status.and_then(|st| st.started_at),
        invalid,
    }
}

/// The instances of `task`, paged.
#[must_use]
pub fn task_instances(s: &Snapshot, keys: &Keys, task: &TaskRef, paging: Paging) -> TaskInstances {
    let of_task = |id: &&InstanceId| id.namespace() == task.namespace && id.task() == task.name;
    let ids: Vec<&InstanceId> = s
        .assignments
        .keys()
        .filter(of_task)
        .chain(s.opaque_assignments.keys().filter(of_task))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut phases: BTreeMap<&'static str, usize> = BTreeMap::new();
    for id in &ids {
        *phases.entry(instance_state(s, id)).or_default() += 1;
    }
    let exists = s.task_exists(task) || !ids.is_empty();
    let total = ids.len();
    let counts = (total, phases.get("Running").copied().unwrap_or(0));
    TaskInstances {
        task: exists.then(|| task_row(s, keys, task, Some(&counts))),
        phases,
        page: paginate(ids.into_iter(), total, paging, |id| {
            instance_row(s, keys, id)
        }),
    }
}

/// One job run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    /// Run number.
    pub run: u64,
    /// What started it.
    pub cause: String,
    /// Attempt.
    pub attempt: u32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// How it ended (`Running` while it runs).
    pub outcome: String,
    /// Exit code.
    pub exit_code: Option<i32>,
}

/// A task's run history, newest first.
#[must_use]
pub fn runs(s: &Snapshot, task: &TaskRef, paging: Paging) -> Page<RunRow> {
    let Some(runs) = s.runs.get(task) else {
        return paginate(std::iter::empty::<RunRow>(), 0, paging, |r| r);
    };
    paginate(runs.values().rev(), runs.len(), paging, |r| {
        let r = &r.value;
        RunRow {
            run: r.run,
            cause: format!("{:?}", r.cause).to_lowercase(),
            attempt: r.attempt,
            started_at: r.started_at,
            finished_at: r.finished_at,
            outcome: r
                .outcome
                .map_or_else(|| "Running".to_string(), |o| o.to_string()),
            exit_code: r.exit_code,
        }
    })
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterRow {
    /// The instance.
    pub instance: String,
    /// Its task, `ns/name`.
    pub task: String,
    /// The run, for jobs.
    pub run: Option<u64>,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub last_error: String,
    /// The last exit code.
    pub exit_code: Option<i32>,
    /// When.
    pub time: DateTime<Utc>,
}

/// Dead letters, by instance id.
#[must_use]
pub fn dead_letters(s: &Snapshot, paging: Paging) -> Page<DeadLetterRow> {
    paginate(s.deadletters.values(), s.deadletters.len(), paging, |d| {
        let l = &d.value.letter;
        DeadLetterRow {
            instance: l.instance.to_string(),
            task: format!("{}/{}", l.namespace, l.task),
            run: l.run,
            attempts: l.attempts,
            last_error: l.last_error.clone(),
            exit_code: l.exit_code,
            time: l.time,
        }
    })
}

/// One recent event (or an `events/` key that does not decode).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    /// When.
    pub time: Option<DateTime<Utc>>,
    /// `Task`, `Node` or `Instance`.
    pub kind: Option<String>,
    /// Which object, `ns/name` (nodes by name).
    pub object: Option<String>,
    /// CamelCase reason.
    pub reason: Option<String>,
    /// Detail.
    pub message: Option<String>,
    /// Who reported it.
    pub source: Option<String>,
    /// Its key does not decode.
    pub invalid: Option<Invalid>,
}

/// The newest events first.
#[must_use]
pub fn events(ring: &Ring, paging: Paging) -> Page<EventRow> {
    paginate(
        ring.newest_first(),
        ring.len(),
        paging,
        |(key, kept)| match kept {
            Kept::Event(e) => EventRow {
                time: Some(e.time),
                kind: Some(format!("{:?}", e.kind)),
                object: Some(match e.kind {
                    drover_api::EventKind::Node => e.name.clone(),
                    _ => format!("{}/{}", e.namespace, e.name),
                }),
                reason: Some(e.reason.clone()),
                message: Some(e.message.clone()),
                source: Some(e.source.clone()),
                invalid: None,
            },
            Kept::Invalid(error) => EventRow {
                time: None,
                kind: None,
                object: None,
                reason: None,
                message: None,
                source: None,
                invalid: Some(Invalid {
                    key: key.to_string(),
                    error: format!("does not decode as Event: {error}"),
                }),
            },
        },
    )
}

fn invalid_count(s: &Snapshot) -> usize {
    s.undecodable.len()
        + s.invalid_tasks
            .keys()
            .filter(|t| !s.opaque_tasks.contains(t))
            .count()
}

/// Every key whose value does not decode or breaks `apply`'s rules, by key.
#[must_use]
pub fn invalid(s: &Snapshot, keys: &Keys, paging: Paging) -> Page<Invalid> {
    let mut all: BTreeMap<String, String> = s
        .undecodable
        .iter()
        .map(|(key, bad)| {
            (
                key.clone(),
                format!("does not decode as {}: {}", bad.kind, bad.error),
            )
        })
        .collect();
    for (task, reason) in &s.invalid_tasks {
        all.entry(keys.task(&task.namespace, &task.name))
            .or_insert_with(|| reason.clone());
    }
    let total = all.len();
    paginate(all.into_iter(), total, paging, |(key, error)| Invalid {
        key,
        error,
    })
}

/// The task a path `/<ns>/<name>` or its key names, if the names are valid.
#[must_use]
pub fn task_ref(keys: &Keys, namespace: &str, name: &str) -> Option<TaskRef> {
    match keys.parse(&keys.task(namespace, name)) {
        Some(Key::Task { namespace, name }) => Some(TaskRef::new(namespace, name)),
        _ => None,
    }
}

#[cfg(test)]
#[path = "pages_tests.rs"]
mod tests;
