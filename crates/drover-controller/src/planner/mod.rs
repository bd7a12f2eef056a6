//! The pure planner: `plan(&Snapshot, now, &config) -> Plan`, the whole of the leader's
//! decision making, with no I/O.
//!
//! The leader runs it on a snapshot of etcd and commits the [`Plan`] in fenced transactions
//! (see [`crate::commit`]). Because it reads nothing but the snapshot and the clock, a new
//! leader given the same snapshot makes the same decisions, and a converged cluster yields an
//! empty plan: this is what "a leader change moves nothing" means at the pure level, and what
//! `planner/tests.rs` checks.
//!
//! Work is split by concern: [`nodes`] (node lifecycle), [`service`] (services: replicas,
//! node loss, failure escalation, drain, all in one copy budget), [`rollout`] (revisions
//! and rollouts of services), and [`placement`] (turning the scheduler's
//! decisions into assignments), [`jobs`] (jobs, scheduled and triggered tasks: runs, retries,
//! the circuit breaker), [`runs`] (judging and finishing one run) and [`gates`] (`dependsOn`,
//! `blocks`).

mod deadletters;
mod gates;
mod jobs;
mod nodes;
mod placement;
mod preempt;
mod reason;
mod requests;
mod rollout;
mod runs;
mod service;
mod ticks;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use drover_api::{
    Event, EventKind, Instance, InstanceId, Mode, NodeState, RevisionRecord, RunRecord,
};

use crate::config::ControllerConfig;
use crate::snapshot::{Snapshot, StatusKey};
use drover_api::records::{DeadLetterRecord, TaskRef, TaskStateRecord};
pub use reason::Reason;

/// One write the committer turns into etcd compares and operations.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create `assignments/<node>/<id>` (compare: absent).
    Assign(Box<Instance>),
    /// Delete `assignments/<node>/<id>` (compare: unchanged since `mod_revision`) and
    /// `status/<node>/<id>` with it, so a stale agent's later status write is rejected.
    ///
    /// Planners emit it for every removal; [`stop_live_copies`] turns it into a
    /// [`Write::RequestStop`] while the copy may still be live.
    Unassign {
        /// The instance.
        id: InstanceId,
        /// Its node.
        node: String,
        /// The assignment's mod revision in the snapshot.
        mod_revision: i64,
        /// Why (becomes the stop request's reason).
        reason: Reason,
    },
    /// Rewrite `assignments/<node>/<id>` with [`Instance::stop`] set (compare: mod revision;
    /// the create revision, which fences the agent's status writes, stays): the agent stops the
    /// copy and reports it terminal, and only then is the assignment deleted.
    RequestStop {
        /// The assignment with its stop request.
        instance: Box<Instance>,
        /// The assignment's mod revision in the snapshot.
        mod_revision: i64,
    },
    /// No operation, only a compare: `nodes/<node>` is absent. Every step that removes an
    /// instance (or finishes a run) because its node is dead carries it, so if the node
    /// registers again before the step lands the step conflicts and the next plan sees the node
    /// alive (promise 3: a live node never loses its instance to a stale plan).
    NodeGone {
        /// The node the plan believes dead.
        node: String,
    },
    /// Create `deadletter/<ns>/<instance>` (compare: absent).
    DeadLetter(DeadLetterRecord),
    /// Delete a dead letter that no longer describes a running spec (compare: mod revision).
    DeleteDeadLetter {
        /// Its namespace.
        namespace: String,
        /// The instance it is about.
        instance: InstanceId,
        /// The letter's mod revision in the snapshot.
        mod_revision: i64,
    },
    /// Write `nodestate/<name>` (compare: mod revision, 0 = absent).
    NodeState {
        /// The new record.
        state: NodeState,
        /// The record's mod revision in the snapshot (0 = absent).
        mod_revision: i64,
    },
    /// No operation, only a compare: the status of `id` is unchanged since `mod_revision`. Carried
    /// by every step that deletes a live node's assignment because its status said the copy
    /// had exited, so a status that moved on (the agent restarted and started the copy again)
    /// makes the step fail instead of letting a replacement start beside it.
    StatusUnchanged {
        /// The instance.
        id: InstanceId,
        /// Which key the status is under.
        at: StatusKey,
        /// The status's mod revision in the snapshot.
        mod_revision: i64,
    },
    /// Delete a status that has no assignment, or a legacy one that a status under the node
    /// has replaced (compare: mod revision).
    DeleteStatus {
        /// The instance.
        id: InstanceId,
        /// Which key the status is under.
        at: StatusKey,
        /// The status's mod revision in the snapshot.
        mod_revision: i64,
    },
    /// Create or update `runs/<ns>/<task>/<run>` (compare: mod revision, 0 = absent).
    PutRun {
        /// The new record.
        record: RunRecord,
        /// The record's mod revision in the snapshot (0 = absent).
        mod_revision: i64,
    },
    /// Delete a run record (history limit, deleted task; compare: mod revision).
    DeleteRun {
        /// Its task.
        task: TaskRef,
        /// The run number.
        run: u64,
        /// The record's mod revision in the snapshot.
        mod_revision: i64,
    },
    /// Delete a trigger request, consumed or refused (compare: mod revision).
    DeleteTrigger {
        /// Its task.
        task: TaskRef,
        /// The request id.
        id: String,
        /// The request's mod revision in the snapshot.
        mod_revision: i64,
    },
    /// Delete an operator's request, carried out or refused (compare: mod revision).
    DeleteRequest {
        /// Its task.
        task: TaskRef,
        /// The request id.
        id: String,
        /// The request's mod revision in the snapshot.
        mod_revision: i64,
    },
    /// Create `revisions/<ns>/<task>/<n>` (compare: absent). Always in a step with its
    /// task's state, so two plans can never hand out the same number for two templates.
    PutRevision(Box<NewRevision>),
    /// Delete a revision pruned from the history, or of a deleted task (compare: mod
    /// revision).
    DeleteRevision {
        /// Its task.
        task: TaskRef,
        /// The revision number.
        revision: u64,
        /// The record's mod revision in the snapshot.
        mod_revision: i64,
    },
    /// Delete the task state of a deleted task (compare: mod revision).
    DeleteTaskState {
        /// The deleted task.
        task: TaskRef,
        /// The state's mod revision in the snapshot.
        mod_revision: i64,
    },
}

/// A revision record and the task it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRevision {
    /// The task.
    pub task: TaskRef,
    /// The record.
    pub record: RevisionRecord,
}

/// Writes that must land in one transaction (a removal and its replacement, say).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Set when the step creates assignments of this task: the committer adds the task's
    /// [`TaskStateWrite`] to the same transaction, comparing its mod revision, so two plans from
    /// stale snapshots can never both create instances for one task.
    pub task: Option<TaskRef>,
    /// The writes.
    pub writes: Vec<Write>,
}

/// The new controller-owned state of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskStateWrite {
    /// The new value.
    pub state: TaskStateRecord,
    /// The value's mod revision in the snapshot (0 = absent).
    pub mod_revision: i64,
}

/// What the leader should write, and when to look again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Atomic groups of writes, in order.
    pub steps: Vec<Step>,
    /// Task state to write, by task (with the steps of that task, or alone).
    pub taskstates: BTreeMap<TaskRef, TaskStateWrite>,
    /// Events to record (best effort, after the steps).
    pub events: Vec<Event>,
    /// Plan again at this time even if nothing changes (a reschedule delay ends).
    pub requeue_at: Option<DateTime<Utc>>,
    /// Instances that should exist but have no node (unschedulable right now).
    pub pending: usize,
    /// Instances placed by this plan.
    pub placed: usize,
}

impl Plan {
    /// True when there is nothing to write.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.taskstates.is_empty()
    }

    fn requeue_no_later_than(&mut self, at: DateTime<Utc>) {
        self.requeue_at = Some(self.requeue_at.map_or(at, |t| t.min(at)));
    }

    fn event(
        &mut self,
        now: DateTime<Utc>,
        ns: &str,
        kind: EventKind,
        name: &str,
        reason: &str,
        message: String,
    ) {
        self.events.push(Event {
            time: now,
            namespace: ns.to_owned(),
            kind,
            name: name.to_owned(),
            reason: reason.to_owned(),
            message,
            source: "controller".into(),
        });
    }
}

/// Computes what the leader should write to move the cluster towards its desired state.
///
/// # Guarantees
///
/// - Pure and deterministic: the same snapshot, time and config give the same plan.
/// - A cluster that satisfies every task yields an empty plan ([`Plan::is_empty`]).
/// - Every removal compares the removed key's mod revision, every creation is guarded by its
///   task's state revision, and a dead node's instances are removed in the same step as their
///   replacements (when a node can take them).
/// - Every step that removes an instance on a dead node, or finishes a run that had one,
///   carries [`Write::NodeGone`] for that node, so it cannot land once the node is back.
/// - Services never have fewer than the desired number of Running instances because of a
///   drain: an instance on a draining node is removed only once enough others run.
///
/// # Caveats
///
/// - A plan is only as fresh as its snapshot: commit it with its compares (the committer does)
///   and re-plan after any failed compare rather than retrying the same writes.
/// - A run starts in the same step as its record, its assignments and its task state (compared),
///   so two plans from stale snapshots never start the same run twice; at most one run of a
///   task starts or finishes per plan.
/// - Deleting a task deletes its task state, and with it the slot counter: a task re-created
///   under the same name may reuse slot numbers (its old instances are gone by then).
#[must_use]
pub fn plan(snapshot: &Snapshot, now: DateTime<Utc>, config: &ControllerConfig) -> Plan {
    let mut plan = Plan::default();
    nodes::plan_nodes(snapshot, now, &mut plan);

    let mut removals: Vec<service::Removal> = Vec::new();
    let mut requests: Vec<service::Want> = Vec::new();
    let mut by_task: BTreeMap<TaskRef, Vec<&Instance>> = BTreeMap::new();
    for a in snapshot.assignments.values() {
        by_task
            .entry(TaskRef::new(&a.value.namespace, &a.value.task))
            .or_default()
            .push(&a.value);
    }

    // Instances of deleted tasks go, whatever their mode.
    for (task, instances) in &by_task {
        if snapshot.task_exists(task) {
            continue;
        }
        for i in instances {
            removals.push(service::Removal::plain(snapshot, i, Reason::TaskDeleted));
        }
    }
    for (id, a) in &snapshot.opaque_assignments {
        if !snapshot.task_exists(&TaskRef::new(id.namespace(), id.task())) {
            removals.push(service::Removal {
                id: id.clone(),
                node: a.node.clone(),
                mod_revision: a.mod_revision,
                reason: Reason::TaskDeleted,
                dead_letter: None,
            });
        }
    }
    for (task, state) in &snapshot.taskstates {
        if !snapshot.task_exists(task) {
            plan.steps.push(Step {
                task: None,
                writes: vec![Write::DeleteTaskState {
                    task: task.clone(),
                    mod_revision: state.mod_revision,
                }],
            });
        }
    }

    let dead_letters = service::dead_letter_counts(snapshot);
    for (task_ref, task) in &snapshot.tasks {
        if snapshot.is_held(task_ref) {
            continue;
        }
        match task.value.spec.mode() {
            Mode::Service => {
                let mine = by_task.get(task_ref).map(Vec::as_slice).unwrap_or_default();
                service::plan_service(
                    snapshot,
                    now,
                    config,
                    task_ref,
                    &task.value,
                    mine,
                    &mut service::Out {
                        plan: &mut plan,
                        removals: &mut removals,
                        wants: &mut requests,
                        dead_letters: &dead_letters,
                    },
                );
            }
            // Planned together below, in priority order (the `blocks` gate depends on it).
            Mode::Job | Mode::Scheduled | Mode::Triggered => {}
        }
    }
    let starts = jobs::plan_jobs(snapshot, now, config, &mut plan);
    service::orphan_statuses(snapshot, &mut plan);
    rollout::orphan_revisions(snapshot, &mut plan);
    service::superseded_legacy_statuses(snapshot, &mut plan);
    deadletters::trim(snapshot, &mut plan);
    requests::plan_requests(snapshot, now, &mut plan);
    placement::place(snapshot, now, removals, requests, starts, &mut plan);
    stop_live_copies(snapshot, now, &mut plan);
    fence_dead_nodes(snapshot, &mut plan);
    plan
}

/// Promise 6 on every path that takes a copy away from a live node: a removal whose copy may
/// still be live ([`Snapshot::copy_gone`] is false) becomes a [`Write::RequestStop`], or
/// nothing when the stop was requested already. The assignment is deleted by a later plan,
/// once the agent has reported the process gone.
///
/// # Guarantees
///
/// Done here, over the finished plan, so that no path (services, runs, drain, preemption,
/// deleted tasks) can delete the assignment of a copy that may still run. A step that pairs
/// such a removal with a replacement loses the replacement too: the planners count stopping
/// copies against their budgets, so this only happens to a plan that raced a status change.
fn stop_live_copies(snapshot: &Snapshot, now: DateTime<Utc>, plan: &mut Plan) {
    for step in &mut plan.steps {
        let mut keep_assigns = true;
        let mut writes = Vec::with_capacity(step.writes.len());
        for w in step.writes.drain(..) {
            let Write::Unassign {
                id, node, reason, ..
            } = &w
            else {
                writes.push(w);
                continue;
            };
            if !snapshot.node_present(node) {
                writes.push(w);
                continue;
            }
            if let Some((mod_revision, at)) = snapshot
                .terminal_status(id, node)
                .zip(snapshot.status_key_of(id))
            {
                // The compare first: etcd checks every compare before any operation, and the
                // simulated etcd applies writes in order.
                writes.push(Write::StatusUnchanged {
                    id: id.clone(),
                    at,
                    mod_revision,
                });
                writes.push(w);
                continue;
            }
            keep_assigns = false;
            let Some(a) = snapshot.assignments.get(id) else {
                // Undecodable: it cannot be rewritten with a stop request; it goes as it is.
                writes.push(w);
                continue;
            };
            if a.value.stop.is_some() {
                continue;
            }
            let mut instance = a.value.clone();
            instance.stop = Some(drover_api::StopRequest {
                reason: reason.to_string(),
                requested_at: now,
            });
            writes.push(Write::RequestStop {
                instance: Box::new(instance),
                mod_revision: a.mod_revision,
            });
        }
        if !keep_assigns {
            writes.retain(|w| !matches!(w, Write::Assign(_)));
        }
        step.writes = writes;
    }
    plan.steps.retain(|s| !s.writes.is_empty());
}

/// Whether writing `record` finishes its run (it has no outcome in the snapshot yet).
fn finishes(snapshot: &Snapshot, record: &RunRecord) -> bool {
    record.outcome.is_some()
        && snapshot
            .runs
            .get(&TaskRef::new(&record.namespace, &record.task))
            .and_then(|runs| runs.get(&record.run))
            .is_none_or(|r| r.value.outcome.is_none())
}

/// The dead nodes of each run's instances, by namespace, task and run.
type RunsOnDead<'a> = BTreeMap<(&'a str, &'a str, u64), Vec<&'a str>>;

/// Adds a [`Write::NodeGone`] to every step that removes an instance on a node the snapshot
/// says is dead, finishes a run with an instance there, or records the node's death: those
/// decisions hold only while the node stays dead.
///
/// # Guarantees
///
/// Done here, over the finished plan, so that no path (services, jobs, drain, preemption,
/// deleted tasks) can forget it. A removal on a dead node for another reason (its task was
/// deleted, say) carries it too; if the node returns, that step conflicts once and is planned
/// again without it.
fn fence_dead_nodes(snapshot: &Snapshot, plan: &mut Plan) {
    // The dead nodes of each run's instances, built on first need: one pass over the
    // assignments per plan, not one per finished run.
    let mut runs_on_dead: Option<RunsOnDead<'_>> = None;
    for step in &mut plan.steps {
        let mut dead: Vec<String> = Vec::new();
        for w in &step.writes {
            match w {
                Write::Unassign { node, .. } if !snapshot.node_present(node) => {
                    dead.push(node.clone());
                }
                // A death is recorded only while the node stays dead.
                Write::NodeState { state, .. }
                    if state.dead_since.is_some() && !snapshot.node_present(&state.name) =>
                {
                    dead.push(state.name.clone());
                }
                Write::PutRun { record, .. } if finishes(snapshot, record) => {
                    let index = runs_on_dead.get_or_insert_with(|| {
                        let mut index = RunsOnDead::new();
                        for i in snapshot.assignments.values().map(|a| &a.value) {
                            if let Some(run) = i.run {
                                if !snapshot.node_present(&i.node) {
                                    index
                                        .entry((i.namespace.as_str(), i.task.as_str(), run))
                                        .or_default()
                                        .push(i.node.as_str());
                                }
                            }
                        }
                        index
                    });
                    let key = (record.namespace.as_str(), record.task.as_str(), record.run);
                    dead.extend(
                        index
                            .get(&key)
                            .into_iter()
                            .flatten()
                            .map(|n| (*n).to_string()),
                    );
                }
                _ => {}
            }
        }
        dead.sort_unstable();
        dead.dedup();
        step.writes
            .extend(dead.into_iter().map(|node| Write::NodeGone { node }));
    }
}

#[cfg(test)]
mod jobs_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod rollout_review_tests;
#[cfg(test)]
mod rollout_tests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
