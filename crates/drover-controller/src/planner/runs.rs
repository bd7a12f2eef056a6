//! Judging and finishing runs: whether every instance of a run is terminal, the run's outcome,
//! and the writes that finish it (record, task state, dead letter, instance removal).

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use drover_api::instance::reasons;
use drover_api::{
    DeadLetter, EventKind, Instance, InstanceId, InstanceStatus, Mode, Phase, RunOutcome,
    RunRecord, Task,
};
use drover_store::Versioned;

use super::{Plan, Reason, Step, Write};
use crate::snapshot::{Snapshot, StatusKey};
use drover_api::records::{DeadLetterRecord, TaskRef, TaskStateRecord};

/// Slack after `timeoutSeconds` plus the grace period before the controller itself ends a run
/// the agent has not reported (the agent enforces the deadline; this is the backstop).
pub(super) const DEADLINE_SLACK_SECS: i64 = 5;

/// Assignments and statuses of the instances of one run.
#[derive(Default)]
pub(super) struct RunInstances<'a> {
    pub(super) assignments: BTreeMap<u32, &'a Versioned<Instance>>,
    pub(super) statuses: BTreeMap<u32, &'a Versioned<InstanceStatus>>,
    /// Every status key of each slot, with its mod revision (what removing it deletes).
    pub(super) status_keys: BTreeMap<u32, (InstanceId, Vec<(StatusKey, i64)>)>,
}

/// Job instances of every run, indexed by `(task, run)`.
pub(super) fn index(snapshot: &Snapshot) -> BTreeMap<(TaskRef, u64), RunInstances<'_>> {
    let mut idx: BTreeMap<(TaskRef, u64), RunInstances<'_>> = BTreeMap::new();
    let key = |id: &InstanceId| {
        id.run()
            .map(|r| (TaskRef::new(id.namespace(), id.task()), r))
    };
    for (id, a) in &snapshot.assignments {
        if let Some(k) = key(id) {
            idx.entry(k).or_default().assignments.insert(id.slot(), a);
        }
    }
    for (id, s) in &snapshot.statuses {
        if let Some(k) = key(id) {
            idx.entry(k).or_default().statuses.insert(id.slot(), s);
        }
    }
    for id in snapshot.status_keys.keys() {
        if let Some(k) = key(id) {
            idx.entry(k)
                .or_default()
                .status_keys
                .insert(id.slot(), (id.clone(), snapshot.status_keys_of(id)));
        }
    }
    idx
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    /// Some instance is still going; look again by `deadline` (the backstop), if any.
    Going {
        /// When the controller ends the run itself.
        deadline: Option<DateTime<Utc>>,
    },
    /// Every instance is terminal (or the backstop deadline passed).
    Done {
        /// How it ended.
        outcome: RunOutcome,
        /// The failing (or last) instance's exit code.
        exit_code: Option<i32>,
        /// The failing instance and its error, for failures.
        failure: Option<(InstanceId, String)>,
    },
}

fn error_of(s: &InstanceStatus) -> String {
    match (&s.reason, &s.message) {
        (Some(r), Some(m)) => format!("{r}: {m}"),
        (Some(r), None) => r.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => s.phase.to_string(),
    }
}

/// Judges one run from its instances.
///
/// # Guarantees
///
/// A run is `Done` only when every instance it has is terminal, lost (its node is dead or its
/// assignment is gone), or the backstop deadline (`timeoutSeconds` + grace + slack) passed;
/// any instance failing with reason `DeadlineExceeded` makes the outcome `DeadlineExceeded`.
pub(super) fn judge(
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    task: &Task,
    record: &RunRecord,
    inst: Option<&RunInstances<'_>>,
) -> Verdict {
    let spec = &task.spec;
    let deadline = spec.timeout_seconds.map(|t| {
        let secs = i64::try_from(t)
            .unwrap_or(i64::MAX / 4)
            .saturating_add(i64::from(spec.termination_grace_period_seconds))
            .saturating_add(DEADLINE_SLACK_SECS);
        record.started_at + TimeDelta::try_seconds(secs).unwrap_or(TimeDelta::MAX)
    });
    let empty = RunInstances::default();
    let inst = inst.unwrap_or(&empty);
    // Every slot the run started with: an instance that has neither assignment nor status
    // was removed (preempted, say) and counts as lost.
    let started = inst
        .assignments
        .values()
        .next()
        .map_or(spec.replicas, |a| a.value.spec.replicas);
    let mut slots: Vec<u32> = (0..started).collect();
    slots.extend(inst.assignments.keys().copied());
    slots.extend(inst.statuses.keys().copied());
    slots.sort_unstable();
    slots.dedup();

    let mut going = false;
    let mut all_ok = !slots.is_empty();
    let mut deadline_hit = false;
    let mut exit_code = None;
    let mut failure: Option<(InstanceId, String)> = None;
    let mut fail = |id: InstanceId, error: String, code: Option<i32>, f: &mut Option<_>| {
        if f.is_none() {
            *f = Some((id, error));
            exit_code = code;
        }
    };
    for slot in slots {
        let a = inst.assignments.get(&slot);
        let s = inst.statuses.get(&slot).map(|s| &s.value);
        // An assignment that does not decode is still there: its instance may be running.
        let opaque = InstanceId::job(&record.namespace, &record.task, record.run, slot)
            .is_ok_and(|id| snapshot.opaque_assignments.contains_key(&id));
        match (a, s) {
            (None, _) if opaque && !s.is_some_and(|s| s.phase.is_terminal()) => going = true,
            (_, Some(s)) if s.phase == Phase::Succeeded => {}
            (_, Some(s)) if s.phase.is_terminal() => {
                all_ok = false;
                if s.reason.as_deref() == Some(reasons::DEADLINE_EXCEEDED) {
                    deadline_hit = true;
                }
                fail(s.id.clone(), error_of(s), s.exit_code, &mut failure);
            }
            (Some(a), _) if !snapshot.node_present(&a.value.node) => {
                all_ok = false;
                let error = format!("NodeLost: node {} died", a.value.node);
                fail(a.value.id.clone(), error, None, &mut failure);
            }
            (Some(_), _) => going = true,
            (None, Some(s)) => {
                all_ok = false;
                fail(
                    s.id.clone(),
                    "Lost: assignment removed".into(),
                    None,
                    &mut failure,
                );
            }
            (None, None) => {
                all_ok = false;
                if let Ok(id) = InstanceId::job(&record.namespace, &record.task, record.run, slot) {
                    fail(id, "Lost: assignment removed".into(), None, &mut failure);
                }
            }
        }
    }
    if going {
        if deadline.is_some_and(|d| now >= d) {
            return Verdict::Done {
                outcome: RunOutcome::DeadlineExceeded,
                exit_code,
                failure: failure.or_else(|| {
                    let id = inst.assignments.values().next()?.value.id.clone();
                    Some((
                        id,
                        format!(
                            "{}: run still going at its deadline",
                            reasons::DEADLINE_EXCEEDED
                        ),
                    ))
                }),
            };
        }
        return Verdict::Going { deadline };
    }
    if all_ok {
        let code = inst.statuses.values().find_map(|s| s.value.exit_code);
        return Verdict::Done {
            outcome: RunOutcome::Succeeded,
            exit_code: code.or(Some(0)),
            failure: None,
        };
    }
    let outcome = if deadline_hit {
        RunOutcome::DeadlineExceeded
    } else {
        RunOutcome::Failed
    };
    Verdict::Done {
        outcome,
        exit_code,
        failure: failure.or_else(|| {
            InstanceId::job(&record.namespace, &record.task, record.run, 0)
                .ok()
                .map(|id| (id, "Lost: no instance of the run is left".into()))
        }),
    }
}

/// Writes that remove every instance of a run (assignments with their statuses, and statuses
/// whose assignment is already gone), one step per instance.
pub(super) fn remove_instances(inst: Option<&RunInstances<'_>>, plan: &mut Plan) {
    let Some(inst) = inst else { return };
    for a in inst.assignments.values() {
        plan.steps.push(Step {
            task: None,
            writes: vec![Write::Unassign {
                id: a.value.id.clone(),
                node: a.value.node.clone(),
                mod_revision: a.mod_revision,
                reason: Reason::RunFinished,
            }],
        });
    }
    for (slot, (id, held)) in &inst.status_keys {
        if inst.assignments.contains_key(slot) {
            continue;
        }
        for (at, mod_revision) in held {
            plan.steps.push(Step {
                task: None,
                writes: vec![Write::DeleteStatus {
                    id: id.clone(),
                    at: at.clone(),
                    mod_revision: *mod_revision,
                }],
            });
        }
    }
}

/// Finishes a run: its record, the task state's outcome bookkeeping (circuit breaker), a dead
/// letter when retries are exhausted, and the removal of its instances.
///
/// # Guarantees
///
/// The record and the dead letter land in one step guarded by the task state (the caller puts
/// `state` in the plan), so a run is counted once; instance removals follow in their own steps
/// and are redone by the next plan if they do not land.
#[allow(clippy::too_many_arguments)]
pub(super) fn finish(
    now: DateTime<Utc>,
    task_ref: &TaskRef,
    task: &Task,
    record: &Versioned<RunRecord>,
    verdict: (RunOutcome, Option<i32>, Option<(InstanceId, String)>),
    inst: Option<&RunInstances<'_>>,
    state: &mut TaskStateRecord,
    plan: &mut Plan,
) {
    let (outcome, exit_code, failure) = verdict;
    let spec = &task.spec;
    let mut rec = record.value.clone();
    rec.finished_at = Some(now);
    rec.outcome = Some(outcome);
    rec.exit_code = exit_code;
    rec.nodes = nodes_of(inst);
    let mut writes = vec![Write::PutRun {
        record: rec.clone(),
        mod_revision: record.mod_revision,
    }];
    let (ns, name) = (task_ref.namespace.as_str(), task_ref.name.as_str());
    state.state.last_outcome = Some(outcome);
    let code = exit_code.map_or_else(String::new, |c| format!(", exit code {c}"));
    plan.event(
        now,
        ns,
        EventKind::Task,
        name,
        "RunFinished",
        format!("run {} (attempt {}) {outcome}{code}", rec.run, rec.attempt),
    );
    match outcome {
        RunOutcome::Succeeded => state.state.consecutive_failures = 0,
        RunOutcome::Cancelled => {}
        RunOutcome::Failed | RunOutcome::DeadlineExceeded => {
            let failures = state.state.consecutive_failures.saturating_add(1);
            state.state.consecutive_failures = failures;
            if let Some(max) = spec.max_consecutive_failures.filter(|m| *m > 0) {
                if failures >= max && !state.state.suspended {
                    let reason = format!(
                        "{failures} consecutive failed runs (maxConsecutiveFailures: {max}); \
                         drover enable resumes it"
                    );
                    state.state.suspended = true;
                    state.state.suspended_reason = Some(reason.clone());
                    plan.event(now, ns, EventKind::Task, name, "Suspended", reason);
                }
            }
            if rec.attempt > spec.max_retries {
                if let Some((instance, last_error)) = failure {
                    plan.event(
                        now,
                        ns,
                        EventKind::Task,
                        name,
                        "DeadLettered",
                        format!(
                            "run {} failed after {} attempt(s) ({last_error}{code}); instance {instance} dead-lettered",
                            rec.run, rec.attempt
                        ),
                    );
                    writes.push(Write::DeadLetter(DeadLetterRecord {
                        letter: DeadLetter {
                            instance,
                            namespace: ns.to_owned(),
                            task: name.to_owned(),
                            run: Some(rec.run),
                            attempts: rec.attempt,
                            last_error,
                            exit_code,
                            time: now,
                        },
                        generation: task.metadata.generation,
                    }));
                }
            }
        }
    }
    plan.steps.push(Step {
        task: Some(task_ref.clone()),
        writes,
    });
    remove_instances(inst, plan);
}

/// Where each instance of a run ran: its assignment's node, else its status's (an instance
/// whose assignment is already gone). The agents there keep its output after the run.
fn nodes_of(inst: Option<&RunInstances<'_>>) -> BTreeMap<String, String> {
    let Some(inst) = inst else {
        return BTreeMap::new();
    };
    let mut nodes: BTreeMap<String, String> = inst
        .statuses
        .values()
        .map(|s| (s.value.id.to_string(), s.value.node.clone()))
        .collect();
    for a in inst.assignments.values() {
        nodes.insert(a.value.id.to_string(), a.value.node.clone());
    }
    nodes
}

/// Removes what finished or deleted runs left behind: instances of finished or unknown runs,
/// and the run records and trigger requests of deleted tasks.
pub(super) fn cleanup(
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    index: &BTreeMap<(TaskRef, u64), RunInstances<'_>>,
    plan: &mut Plan,
) {
    for ((task, run), inst) in index {
        if !snapshot.task_exists(task) {
            // Assignments of deleted tasks are removed with the services'; statuses here.
            let orphans = RunInstances {
                assignments: BTreeMap::new(),
                statuses: inst
                    .statuses
                    .iter()
                    .filter(|(slot, _)| !inst.assignments.contains_key(slot))
                    .map(|(k, v)| (*k, *v))
                    .collect(),
                status_keys: inst
                    .status_keys
                    .iter()
                    .filter(|(slot, _)| !inst.assignments.contains_key(slot))
                    .map(|(k, v)| (*k, v.clone()))
                    .collect(),
            };
            remove_instances(Some(&orphans), plan);
            continue;
        }
        let open = snapshot
            .runs
            .get(task)
            .and_then(|m| m.get(run))
            .is_some_and(|r| r.value.finished_at.is_none());
        if !open {
            remove_instances(Some(inst), plan);
        }
    }
    for (task, records) in &snapshot.runs {
        if snapshot.task_exists(task) {
            continue;
        }
        for rec in records.values() {
            plan.steps.push(Step {
                task: None,
                writes: vec![Write::DeleteRun {
                    task: task.clone(),
                    run: rec.value.run,
                    mod_revision: rec.mod_revision,
                }],
            });
        }
    }
    for (task, triggers) in &snapshot.triggers {
        // Jobs, scheduled and triggered tasks consume their triggers; the rest are refused.
        let service = match snapshot.tasks.get(task) {
            None if snapshot.opaque_tasks.contains(task) => continue,
            None => false,
            Some(t) if t.value.spec.mode() == Mode::Service => true,
            Some(_) => continue,
        };
        for (id, t) in triggers {
            if service {
                plan.event(
                    now,
                    &task.namespace,
                    EventKind::Task,
                    &task.name,
                    "TriggerRefused",
                    format!("trigger {id} refused: the task is a service and runs continuously"),
                );
            }
            plan.steps.push(Step {
                task: None,
                writes: vec![Write::DeleteTrigger {
                    task: task.clone(),
                    id: id.clone(),
                    mod_revision: t.mod_revision,
                }],
            });
        }
    }
}
