//! Everything that is not a service: plain jobs (one run per generation), scheduled tasks (cron
//! or `every`), triggered tasks, retries with backoff, the circuit breaker, concurrency
//! policies and run history.
//!
//! Each task's runs are judged from their instances ([`super::runs`]); then at most one thing
//! happens per task per plan: a run finishes, or going runs are cancelled (`Replace`), or one
//! due run starts (handed to placement as a [`RunStart`]), or a due run is held with a
//! `pendingReason`. One change per plan keeps every task-state write atomic with the run
//! writes it accounts for; the commit of each change wakes the leader for the next.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use drover_api::{ConcurrencyPolicy, EventKind, InstanceId, Mode, RunCause, RunRecord, Task};
use drover_store::Versioned;

use super::gates::Gates;
use super::requests;
use super::runs::{self, Verdict};
use super::ticks::{first_tick, ticks};
use super::{Plan, Step, TaskStateWrite, Write};
use crate::config::ControllerConfig;
use crate::snapshot::Snapshot;
use drover_api::records::{TaskRef, TaskStateRecord};

/// The most instances of one run: a run starts in one transaction (record, task state,
/// trigger, fence and one assignment per instance, each with its compare) within etcd's
/// default limit of 128 operations.
pub(super) const MAX_RUN_REPLICAS: u32 = 120;

/// A run to start, if placement finds a node for every instance.
#[derive(Debug, Clone)]
pub(super) struct RunStart {
    /// Its task.
    pub(super) task: TaskRef,
    /// The record to create.
    pub(super) record: RunRecord,
    /// Instances to place (slots `0..replicas`).
    pub(super) replicas: u32,
    /// Writes that land with it (the trigger it consumes).
    pub(super) writes: Vec<Write>,
    /// The task state once started.
    pub(super) started: TaskStateRecord,
    /// The task state if it cannot be placed (placement sets the pending reason).
    pub(super) held: TaskStateRecord,
}

/// Inserts the task state write when it changed.
pub(super) fn put_state(
    plan: &mut Plan,
    task: &TaskRef,
    old: Option<&Versioned<TaskStateRecord>>,
    next: TaskStateRecord,
) {
    if old.map(|s| &s.value) != Some(&next) {
        plan.taskstates.insert(
            task.clone(),
            TaskStateWrite {
                state: next,
                mod_revision: old.map_or(0, |s| s.mod_revision),
            },
        );
    }
}

/// Inserts the task state write even when unchanged: finishing a run must compare it.
fn force_state(
    plan: &mut Plan,
    task: &TaskRef,
    old: Option<&Versioned<TaskStateRecord>>,
    next: TaskStateRecord,
) {
    plan.taskstates.insert(
        task.clone(),
        TaskStateWrite {
            state: next,
            mod_revision: old.map_or(0, |s| s.mod_revision),
        },
    );
}

/// Plans every job, scheduled and triggered task; returns the runs to start.
pub(super) fn plan_jobs(
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    config: &ControllerConfig,
    plan: &mut Plan,
) -> Vec<RunStart> {
    let index = runs::index(snapshot);
    let mut tasks: Vec<(&TaskRef, &Task)> = snapshot
        .tasks
        .iter()
        .filter(|(r, t)| t.value.spec.mode() != Mode::Service && !snapshot.is_held(r))
        .map(|(r, t)| (r, &t.value))
        .collect();
    // Priority, then name: the order in which mutually blocking tasks win within one plan.
    tasks.sort_by(|a, b| {
        b.1.spec
            .priority
            .cmp(&a.1.spec.priority)
            .then_with(|| a.0.cmp(b.0))
    });
    let mut gates = Gates::new(snapshot);
    let mut starts = Vec::new();
    for (task_ref, task) in tasks {
        let cx = TaskCx {
            snapshot,
            now,
            config,
            task_ref,
            task,
            index: &index,
        };
        if let Some(start) = cx.plan(&gates, plan) {
            gates.starting.insert(task_ref.clone());
            starts.push(start);
        }
    }
    runs::cleanup(snapshot, now, &index, plan);
    starts
}

struct TaskCx<'a> {
    snapshot: &'a Snapshot,
    now: DateTime<Utc>,
    config: &'a ControllerConfig,
    task_ref: &'a TaskRef,
    task: &'a Task,
    index: &'a BTreeMap<(TaskRef, u64), runs::RunInstances<'a>>,
}

/// Why a run is due.
enum Due {
    Again {
        attempt: u32,
    },
    Trigger {
        id: String,
        cause: RunCause,
        mod_revision: i64,
    },
    Apply,
    Tick {
        following: Option<DateTime<Utc>>,
    },
    /// `drover retry` of a dead-lettered run: consumes the request and the letter.
    Retry {
        request: String,
        request_revision: i64,
        letter: InstanceId,
        letter_revision: i64,
    },
}

impl TaskCx<'_> {
    fn event(&self, plan: &mut Plan, reason: &str, message: String) {
        let (ns, name) = (&self.task_ref.namespace, &self.task_ref.name);
        plan.event(self.now, ns, EventKind::Task, name, reason, message);
    }

    fn plan(&self, gates: &Gates<'_>, plan: &mut Plan) -> Option<RunStart> {
        let (snapshot, now, task_ref, task) = (self.snapshot, self.now, self.task_ref, self.task);
        let spec = &task.spec;
        let old = snapshot.taskstates.get(task_ref);
        let mut state = old.map(|s| s.value.clone()).unwrap_or_default();
        let records = snapshot.runs.get(task_ref);
        let inst = |run: u64| self.index.get(&(task_ref.clone(), run));

        // 0. `drover enable`: clears the circuit breaker, alone in this plan (the request is
        // deleted in the step that writes the state, so it is carried out exactly once).
        if let Some((id, request)) = requests::enable(snapshot, task_ref) {
            let was = state.state.suspended;
            state.state.suspended = false;
            state.state.suspended_reason = None;
            state.state.consecutive_failures = 0;
            plan.steps.push(Step {
                task: Some(task_ref.clone()),
                writes: vec![Write::DeleteRequest {
                    task: task_ref.clone(),
                    id: id.to_owned(),
                    mod_revision: request.mod_revision,
                }],
            });
            let message = if was {
                format!(
                    "enabled by {}: the circuit breaker is reset",
                    request.value.by
                )
            } else {
                format!("enable by {}: the task was not suspended", request.value.by)
            };
            self.event(plan, "Enabled", message);
            force_state(plan, task_ref, old, state);
            return None;
        }

        // 1. Judge going runs; finish at most one per plan.
        let mut going: Vec<&Versioned<RunRecord>> = Vec::new();
        for rec in records.into_iter().flat_map(|m| m.values()) {
            if rec.value.finished_at.is_some() {
                continue;
            }
            match runs::judge(snapshot, now, task, &rec.value, inst(rec.value.run)) {
                Verdict::Going { deadline } => {
                    if let Some(d) = deadline {
                        plan.requeue_no_later_than(d);
                    }
                    going.push(rec);
                }
                Verdict::Done {
                    outcome,
                    exit_code,
                    failure,
                } => {
                    let verdict = (outcome, exit_code, failure);
                    let i = inst(rec.value.run);
                    runs::finish(now, task_ref, task, rec, verdict, i, &mut state, plan);
                    force_state(plan, task_ref, old, state);
                    return None;
                }
            }
        }
        self.trim_history(plan);

        // 2. What is due, most urgent first.
        let latest = records
            .and_then(|m| m.values().next_back())
            .map(|v| &v.value);
        let mut due: Option<Due> = None;
        if let Some(rec) = latest.filter(|r| {
            r.outcome
                .is_some_and(|o| !o.is_success() && o != drover_api::RunOutcome::Cancelled)
                && r.attempt <= spec.max_retries
        }) {
            let delay = self.config.reschedule_delay(rec.attempt.saturating_sub(1));
            let at = rec.finished_at.unwrap_or(now)
                + TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX);
            if now >= at {
                due = Some(Due::Again {
                    attempt: rec.attempt.saturating_add(1),
                });
            } else {
                plan.requeue_no_later_than(at);
            }
        }
        if due.is_none() {
            if let Some((id, t)) = snapshot
                .triggers
                .get(task_ref)
                .and_then(|m| m.iter().next())
            {
                due = Some(Due::Trigger {
                    id: id.clone(),
                    cause: t.value.cause,
                    mod_revision: t.mod_revision,
                });
            }
        }
        if due.is_none() {
            if let Some((id, request, letter)) = requests::job_retry(snapshot, task_ref) {
                due = Some(Due::Retry {
                    request: id.to_owned(),
                    request_revision: request.mod_revision,
                    letter: letter.value.letter.instance.clone(),
                    letter_revision: letter.mod_revision,
                });
            }
        }
        if due.is_none()
            && spec.mode() == Mode::Job
            && state.run_generation != Some(task.metadata.generation)
        {
            if state.run_template.as_deref() == Some(spec.template_hash().as_str()) {
                // Only labels, priority or the like changed: this job has run as it is.
                state.run_generation = Some(task.metadata.generation);
            } else {
                due = Some(Due::Apply);
            }
        }
        if spec.mode() == Mode::Scheduled {
            if let Some(tick) = self.tick(&mut state, plan) {
                due = due.or(Some(tick));
            }
        }

        let Some(due) = due else {
            state.state.pending_reason = None;
            put_state(plan, task_ref, old, state);
            return None;
        };
        if state.state.suspended {
            let why = state.state.suspended_reason.clone().unwrap_or_default();
            state.state.pending_reason = Some(format!("suspended: {why}"));
            put_state(plan, task_ref, old, state);
            return None;
        }

        // 3. A run is going: apply the concurrency policy.
        if let Some(first) = going.first() {
            let run = first.value.run;
            match spec.concurrency_policy {
                ConcurrencyPolicy::Allow => {}
                ConcurrencyPolicy::Forbid => {
                    match due {
                        Due::Trigger {
                            id, mod_revision, ..
                        } => {
                            plan.steps.push(Step {
                                task: None,
                                writes: vec![Write::DeleteTrigger {
                                    task: task_ref.clone(),
                                    id: id.clone(),
                                    mod_revision,
                                }],
                            });
                            self.event(
                                plan,
                                "TriggerRefused",
                                format!("trigger {id} refused: run {run} is still going (concurrencyPolicy: Forbid)"),
                            );
                        }
                        Due::Tick { following } => {
                            state.state.next_run_at = following;
                            self.event(
                                plan,
                                "Skipped",
                                format!("scheduled run skipped: run {run} is still going (concurrencyPolicy: Forbid)"),
                            );
                        }
                        Due::Retry {
                            request,
                            request_revision,
                            letter,
                            ..
                        } => {
                            plan.steps.push(Step {
                                task: None,
                                writes: vec![Write::DeleteRequest {
                                    task: task_ref.clone(),
                                    id: request,
                                    mod_revision: request_revision,
                                }],
                            });
                            self.event(
                                plan,
                                "RetryRefused",
                                format!("retry of {letter} refused: run {run} is still going (concurrencyPolicy: Forbid); the dead letter stays"),
                            );
                        }
                        Due::Again { .. } | Due::Apply => {
                            state.state.pending_reason =
                                Some(format!("waiting for run {run} to finish"));
                        }
                    }
                    put_state(plan, task_ref, old, state);
                    return None;
                }
                ConcurrencyPolicy::Replace => {
                    for rec in &going {
                        let verdict = (drover_api::RunOutcome::Cancelled, None, None);
                        let i = inst(rec.value.run);
                        runs::finish(now, task_ref, task, rec, verdict, i, &mut state, plan);
                    }
                    self.event(
                        plan,
                        "Replaced",
                        format!(
                            "cancelled {} going run(s) for a new run (concurrencyPolicy: Replace)",
                            going.len()
                        ),
                    );
                    force_state(plan, task_ref, old, state);
                    return None;
                }
            }
        }

        // 4. A copy of a finished run that is still stopping (a run cut off at its deadline,
        // cancelled, or preempted) holds its place until its process has exited: a retry never
        // runs beside the copy it retries, nor does any other run unless runs may overlap.
        let may_overlap = spec.concurrency_policy == ConcurrencyPolicy::Allow
            && !matches!(due, Due::Again { .. });
        if let Some(run) = self.stopping_run().filter(|_| !may_overlap) {
            state.state.pending_reason =
                Some(format!("waiting for the copies of run {run} to stop"));
            put_state(plan, task_ref, old, state);
            return None;
        }

        // 5. Gates.
        let gate = if spec.replicas == 0 {
            Err("replicas is 0: a run would have no instance".to_owned())
        } else if spec.replicas > MAX_RUN_REPLICAS {
            Err(format!(
                "replicas {} exceeds {MAX_RUN_REPLICAS}, the most instances one run can start \
                 atomically (one etcd transaction)",
                spec.replicas
            ))
        } else {
            gates.check(task_ref, task)
        };
        if let Err(reason) = gate {
            if state.state.pending_reason.as_ref() != Some(&reason) {
                self.event(plan, "Waiting", reason.clone());
            }
            state.state.pending_reason = Some(reason);
            put_state(plan, task_ref, old, state);
            return None;
        }

        // 6. Start it.
        let last = records
            .and_then(|m| m.keys().next_back().copied())
            .max(state.state.last_run)
            .unwrap_or(0);
        let run = last.saturating_add(1);
        let held = state.clone();
        let mut started = state;
        started.state.last_run = Some(run);
        started.state.pending_reason = None;
        let mut writes = Vec::new();
        let (cause, attempt) = match due {
            Due::Again { attempt } => (RunCause::Retry, attempt),
            Due::Retry {
                request,
                request_revision,
                letter,
                letter_revision,
            } => {
                writes.push(Write::DeleteRequest {
                    task: task_ref.clone(),
                    id: request,
                    mod_revision: request_revision,
                });
                writes.push(Write::DeleteDeadLetter {
                    namespace: task_ref.namespace.clone(),
                    instance: letter,
                    mod_revision: letter_revision,
                });
                (RunCause::Retry, 1)
            }
            Due::Trigger {
                id,
                cause,
                mod_revision,
            } => {
                writes.push(Write::DeleteTrigger {
                    task: task_ref.clone(),
                    id,
                    mod_revision,
                });
                (cause, 1)
            }
            Due::Apply => {
                started.run_generation = Some(task.metadata.generation);
                started.run_template = Some(task.spec.template_hash());
                (RunCause::Apply, 1)
            }
            Due::Tick { following } => {
                started.state.next_run_at = following;
                (RunCause::Schedule, 1)
            }
        };
        Some(RunStart {
            task: task_ref.clone(),
            record: RunRecord {
                task: task_ref.name.clone(),
                namespace: task_ref.namespace.clone(),
                run,
                started_at: now,
                finished_at: None,
                outcome: None,
                exit_code: None,
                attempt,
                cause,
                nodes: std::collections::BTreeMap::new(),
            },
            replicas: spec.replicas,
            writes,
            started,
            held,
        })
    }

    /// A run of this task that has finished (or has no record) but still has assignments: its
    /// copies are stopping.
    fn stopping_run(&self) -> Option<u64> {
        let records = self.snapshot.runs.get(self.task_ref);
        self.index
            .range((self.task_ref.clone(), 0)..=(self.task_ref.clone(), u64::MAX))
            .find(|(&(_, run), inst)| {
                !inst.assignments.is_empty()
                    && records
                        .and_then(|m| m.get(&run))
                        .is_none_or(|r| r.value.finished_at.is_some())
            })
            .map(|(&(_, run), _)| run)
    }

    /// Schedule bookkeeping: sets `nextRunAt` when unset, skips ticks past their starting
    /// deadline, and returns the due tick (at most one, however many were missed).
    fn tick(&self, state: &mut TaskStateRecord, plan: &mut Plan) -> Option<Due> {
        let (now, spec) = (self.now, &self.task.spec);
        let Some(next) = state.state.next_run_at else {
            let first = first_tick(spec, now);
            state.state.next_run_at = first;
            if let Some(at) = first {
                plan.requeue_no_later_than(at);
            }
            return None;
        };
        if now < next {
            plan.requeue_no_later_than(next);
            return None;
        }
        let (last_missed, following) = ticks(spec, next, now);
        let late = now - last_missed;
        if let Some(limit) = spec.starting_deadline_seconds {
            let limit = TimeDelta::try_seconds(i64::try_from(limit).unwrap_or(i64::MAX / 4))
                .unwrap_or(TimeDelta::MAX);
            if late > limit {
                state.state.next_run_at = following;
                self.event(
                    plan,
                    "Skipped",
                    format!(
                        "scheduled run due at {last_missed} skipped: missed its starting deadline"
                    ),
                );
                if let Some(at) = following {
                    plan.requeue_no_later_than(at);
                }
                return None;
            }
        }
        Some(Due::Tick { following })
    }

    /// Deletes the oldest finished run records beyond `historyLimit`.
    fn trim_history(&self, plan: &mut Plan) {
        let Some(records) = self.snapshot.runs.get(self.task_ref) else {
            return;
        };
        let limit = usize::try_from(self.task.spec.history_limit).unwrap_or(usize::MAX);
        let excess = records.len().saturating_sub(limit);
        for rec in records
            .values()
            .filter(|r| r.value.finished_at.is_some())
            .take(excess)
        {
            plan.steps.push(Step {
                task: None,
                writes: vec![Write::DeleteRun {
                    task: self.task_ref.clone(),
                    run: rec.value.run,
                    mod_revision: rec.mod_revision,
                }],
            });
        }
    }
}
