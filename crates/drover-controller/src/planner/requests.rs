//! Operators' requests (`requests/<ns>/<task>/<id>`): `drover enable` and `drover retry`. The
//! leader carries each out and deletes it in the same step, so the records it owns (task
//! state, dead letters) have no other writer.
//!
//! A job's enable and its retry of a dead-lettered run are folded into the job's own planning
//! ([`super::jobs`]), where its task state is written; everything else — service retries,
//! requests that cannot be carried out — is handled here.

use chrono::{DateTime, Utc};
use drover_api::{EventKind, Mode, RequestAction, TaskRequest};
use drover_store::Versioned;

use super::{Plan, Step, Write};
use crate::snapshot::Snapshot;
use drover_api::records::{DeadLetterRecord, TaskRef};

/// The task's first pending enable request, for a job to carry out.
pub(super) fn enable<'a>(
    snapshot: &'a Snapshot,
    task: &TaskRef,
) -> Option<(&'a str, &'a Versioned<TaskRequest>)> {
    snapshot
        .requests
        .get(task)?
        .iter()
        .find(|(_, r)| r.value.action == RequestAction::Enable)
        .map(|(id, r)| (id.as_str(), r))
}

/// The task's first retry request whose dead letter is one of the task's runs.
pub(super) fn job_retry<'a>(
    snapshot: &'a Snapshot,
    task: &TaskRef,
) -> Option<(
    &'a str,
    &'a Versioned<TaskRequest>,
    &'a Versioned<DeadLetterRecord>,
)> {
    snapshot.requests.get(task)?.iter().find_map(|(id, r)| {
        let letter = retry_letter(snapshot, task, r)?;
        letter
            .value
            .letter
            .run
            .is_some()
            .then_some((id.as_str(), r, letter))
    })
}

/// The dead letter a retry request names, if it exists and belongs to the request's task.
fn retry_letter<'a>(
    snapshot: &'a Snapshot,
    task: &TaskRef,
    request: &Versioned<TaskRequest>,
) -> Option<&'a Versioned<DeadLetterRecord>> {
    let RequestAction::Retry { instance } = &request.value.action else {
        return None;
    };
    snapshot
        .deadletters
        .get(instance)
        .filter(|d| d.value.letter.namespace == task.namespace && d.value.letter.task == task.name)
}

/// Carries out service retries and refuses what cannot be done; leaves a job's enable and
/// run retries to the job planner, and a held task's requests until it decodes.
pub(super) fn plan_requests(snapshot: &Snapshot, now: DateTime<Utc>, plan: &mut Plan) {
    for (task, requests) in &snapshot.requests {
        let mode = match snapshot.tasks.get(task) {
            Some(t) => Some(t.value.spec.mode()),
            None if snapshot.task_exists(task) => continue,
            None => None,
        };
        if snapshot.is_held(task) {
            continue;
        }
        let is_job = mode.is_some_and(|m| m != Mode::Service);
        for (id, request) in requests {
            let delete = Write::DeleteRequest {
                task: task.clone(),
                id: id.clone(),
                mod_revision: request.mod_revision,
            };
            let by = &request.value.by;
            let (writes, reason, message) = match (&request.value.action, mode) {
                (_, None) => (
                    vec![delete],
                    "RequestRefused",
                    format!("request {id} by {by} refused: the task does not exist"),
                ),
                (RequestAction::Enable, _) if is_job => continue,
                // Carried out by the service's rollout (`super::rollout`).
                (
                    RequestAction::Pause | RequestAction::Resume | RequestAction::Promote { .. },
                    Some(Mode::Service),
                ) => continue,
                (RequestAction::Pause | RequestAction::Resume | RequestAction::Promote { .. }, Some(_)) => (
                    vec![delete],
                    "RequestRefused",
                    format!("request {id} by {by} refused: rollouts are for services; this task runs to completion"),
                ),
                (RequestAction::Enable, Some(_)) => (
                    vec![delete],
                    "Enabled",
                    format!("enable by {by}: a service has no circuit breaker; nothing to do"),
                ),
                (RequestAction::Retry { instance }, Some(_)) => {
                    match retry_letter(snapshot, task, request) {
                        None => (
                            vec![delete],
                            "RetryRefused",
                            format!("retry of {instance} by {by} refused: it has no dead letter"),
                        ),
                        Some(letter) if letter.value.letter.run.is_some() && is_job => continue,
                        Some(letter) => (
                            vec![
                                Write::DeleteDeadLetter {
                                    namespace: task.namespace.clone(),
                                    instance: instance.clone(),
                                    mod_revision: letter.mod_revision,
                                },
                                delete,
                            ],
                            "Retried",
                            format!("retry of {instance} by {by}: its dead letter is dropped and its slot refilled"),
                        ),
                    }
                }
            };
            plan.event(
                now,
                &task.namespace,
                EventKind::Task,
                &task.name,
                reason,
                message,
            );
            plan.steps.push(Step { task: None, writes });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use drover_api::{DeadLetter, InstanceId, RestartPolicy};

    use super::super::plan;
    use super::super::sim::{at, Sim};
    use super::*;

    fn versioned<T>(value: T, rev: i64) -> Versioned<T> {
        Versioned {
            key: String::new(),
            value,
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: None,
        }
    }

    fn ask(sim: &mut Sim, task: &str, id: &str, action: RequestAction) {
        let rev = sim.bump();
        let request = TaskRequest {
            action,
            requested_at: at(0),
            by: "ops".into(),
        };
        sim.s
            .requests
            .entry(TaskRef::new("default", task))
            .or_default()
            .insert(id.into(), versioned(request, rev));
    }

    fn letter(sim: &mut Sim, id: &InstanceId) {
        let rev = sim.bump();
        let record = DeadLetterRecord {
            letter: DeadLetter {
                instance: id.clone(),
                namespace: "default".into(),
                task: id.task().into(),
                run: id.run(),
                attempts: 4,
                last_error: "Error".into(),
                exit_code: Some(1),
                time: at(0),
            },
            generation: 1,
        };
        sim.s.deadletters.insert(id.clone(), versioned(record, rev));
    }

    fn pending(sim: &Sim) -> usize {
        sim.s.requests.values().map(BTreeMap::len).sum()
    }

    fn reasons(p: &Plan) -> Vec<&str> {
        p.events.iter().map(|e| e.reason.as_str()).collect()
    }

    #[test]
    fn a_service_retry_drops_the_letter_and_refills_the_slot() {
        let mut sim = Sim::new();
        sim.node("n1", 4000, &[]);
        sim.task("web", 2, |_| {});
        let dead = InstanceId::service("default", "web", 7).expect("id");
        letter(&mut sim, &dead);
        sim.converge(at(1));
        assert_eq!(sim.ids("web").len(), 1, "the letter holds one slot");
        ask(
            &mut sim,
            "web",
            "r1",
            RequestAction::Retry { instance: dead },
        );
        let p = plan(&sim.s, at(2), &sim.config);
        assert!(reasons(&p).contains(&"Retried"), "{:?}", reasons(&p));
        sim.apply(&p);
        assert_eq!(pending(&sim), 0);
        assert!(sim.s.deadletters.is_empty());
        sim.converge(at(3));
        assert_eq!(sim.ids("web").len(), 2);
    }

    #[test]
    fn requests_that_cannot_be_carried_out_are_refused_and_consumed() {
        let mut sim = Sim::new();
        sim.node("n1", 4000, &[]);
        sim.task("web", 1, |_| {});
        let nothing = InstanceId::service("default", "web", 3).expect("id");
        ask(
            &mut sim,
            "web",
            "r1",
            RequestAction::Retry { instance: nothing },
        );
        ask(&mut sim, "web", "r2", RequestAction::Enable);
        ask(&mut sim, "gone", "r3", RequestAction::Enable);
        let p = plan(&sim.s, at(1), &sim.config);
        let got = reasons(&p);
        for want in ["RetryRefused", "Enabled", "RequestRefused"] {
            assert!(got.contains(&want), "{want} in {got:?}");
        }
        sim.apply(&p);
        assert_eq!(pending(&sim), 0, "{:?}", sim.s.requests);
    }

    #[test]
    fn a_job_enable_resets_the_breaker_once() {
        let mut sim = Sim::new();
        sim.node("n1", 4000, &[]);
        sim.task("batch", 1, |s| s.restart_policy = RestartPolicy::Never);
        let rev = sim.bump();
        let mut state = drover_api::records::TaskStateRecord::default();
        state.state.suspended = true;
        state.state.suspended_reason = Some("3 failures".into());
        state.state.consecutive_failures = 3;
        sim.s
            .taskstates
            .insert(TaskRef::new("default", "batch"), versioned(state, rev));
        ask(&mut sim, "batch", "r1", RequestAction::Enable);
        let p = plan(&sim.s, at(1), &sim.config);
        assert!(reasons(&p).contains(&"Enabled"));
        sim.apply(&p);
        let state = &sim.s.taskstates[&TaskRef::new("default", "batch")]
            .value
            .state;
        assert!(!state.suspended && state.consecutive_failures == 0);
        assert_eq!(pending(&sim), 0);
        let again = plan(&sim.s, at(2), &sim.config);
        assert!(!reasons(&again).contains(&"Enabled"), "carried out once");
    }
}
