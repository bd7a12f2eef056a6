//! Property test of [`decide`]: arbitrary entries (every state, matched or recovered, any
//! restart count and deadline), arbitrary desired values (assigned, unassigned, stop
//! requested, re-placed, fenced node, agent going away) and times; checks the rules that
//! must hold on any input, among them "a copy ends before its replacement starts", and, for
//! a matched copy, that the step is the one a model written from the spec's rules gives.

use std::sync::Arc;
use std::time::Duration;

use drover_api::instance::Instance;
use drover_api::names::InstanceId;
use drover_api::task::{DriverKind, RestartPolicy};
use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::deadline::{self, Deadline};
use crate::driver::{Handle, InstanceMeta};
use crate::local::StopReason;
use crate::restart::Backoff;

const BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(30),
};
const REV: i64 = 100;

/// The spec knobs `decide` looks at.
#[derive(Debug, Clone)]
struct Spec {
    job: bool,
    policy: RestartPolicy,
    max_restarts: u32,
    probe: bool,
    timeout: Option<u64>,
    hollow: bool,
}

/// A local entry, as plain data.
#[derive(Debug, Clone)]
struct Local {
    /// Matched to an assignment with this create revision; `None`: recovered, unmatched.
    rev: Option<i64>,
    generation: u64,
    attempt: u32,
    state: u8,
    restart_count: u32,
    /// Seconds before `now` the first run started.
    first_started: Option<u64>,
    /// Backoff deadline, seconds after `now` (negative: passed).
    until: i64,
    code: Option<i32>,
    unhealthy: bool,
}

#[derive(Debug, Clone)]
struct Case {
    spec: Spec,
    local: Option<Local>,
    desired: Desired,
    /// `now`, seconds after the base instant.
    now: u64,
}

fn policy() -> impl Strategy<Value = RestartPolicy> {
    prop_oneof![
        Just(RestartPolicy::Always),
        Just(RestartPolicy::OnFailure),
        Just(RestartPolicy::Never),
    ]
}

prop_compose! {
    fn spec()(
        job in any::<bool>(),
        policy in policy(),
        max_restarts in 0u32..4,
        probe in any::<bool>(),
        timeout in proptest::option::of(1u64..200),
        hollow in any::<bool>(),
    ) -> Spec {
        Spec { job, policy, max_restarts, probe, timeout, hollow }
    }
}

prop_compose! {
    fn local()(
        // Mostly matched to the assignment, so most cases reach the per-state rules.
        rev in prop_oneof![6 => Just(Some(REV)), 1 => Just(Some(REV - 7)), 1 => Just(None)],
        generation in 1u64..3,
        attempt in 1u32..3,
        state in 0u8..8,
        restart_count in 0u32..5,
        first_started in proptest::option::of(0u64..300),
        until in -60i64..60,
        code in proptest::option::of(-2i32..3),
        unhealthy in any::<bool>(),
    ) -> Local {
        Local {
            rev, generation, attempt, state, restart_count, first_started, until, code, unhealthy,
        }
    }
}

fn desired() -> impl Strategy<Value = Desired> {
    let wanted = (
        prop_oneof![5 => Just(REV), 1 => Just(REV + 3)],
        1u64..3,
        1u32..3,
        proptest::option::weighted(0.2, prop_oneof![Just("Drained"), Just("Preempted")]),
    )
        .prop_map(|(create_revision, generation, attempt, stop)| Wanted {
            create_revision,
            generation,
            attempt,
            stop: stop.map(str::to_string),
        });
    (
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.1),
        proptest::option::weighted(0.85, wanted),
    )
        .prop_map(|(node_fenced, shutting_down, assignment)| Desired {
            node_fenced,
            shutting_down,
            assignment,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        spec(),
        proptest::option::weighted(0.9, local()),
        desired(),
        0u64..400,
    )
        .prop_map(|(spec, local, desired, now)| Case {
            spec,
            local,
            desired,
            now,
        })
}

fn id(job: bool) -> InstanceId {
    let made = if job {
        InstanceId::job("default", "batch", 1, 0)
    } else {
        InstanceId::service("default", "web", 0)
    };
    made.unwrap_or_else(|e| panic!("valid id: {e}"))
}

fn instance(spec: &Spec, generation: u64, attempt: u32) -> Instance {
    let id = id(spec.job);
    let mut json = serde_json::json!({
        "command": ["/bin/true"],
        "restartPolicy": format!("{:?}", spec.policy),
        "maxRestarts": spec.max_restarts,
    });
    if let Some(t) = spec.timeout {
        json["timeoutSeconds"] = t.into();
    }
    if spec.probe {
        json["healthCheck"] = serde_json::json!({"exec": {"command": ["/bin/true"]}});
    }
    Instance {
        namespace: id.namespace().to_string(),
        task: id.task().to_string(),
        slot: id.slot(),
        run: id.run(),
        node: "n1".into(),
        generation,
        revision: 0,
        attempt,
        spec: serde_json::from_value(json).unwrap_or_else(|e| panic!("spec: {e}")),
        assigned_at: chrono::Utc::now(),
        stop: None,
        id,
    }
}

fn at(base: Instant, secs: i64) -> Instant {
    if secs >= 0 {
        base + Duration::from_secs(secs.unsigned_abs())
    } else {
        base.checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .unwrap_or(base)
    }
}

/// Builds the entry; `base` is an instant far enough in the past for every offset.
fn entry(case: &Case, l: &Local, now: Instant) -> Entry {
    let kind = if case.spec.hollow {
        DriverKind::Hollow
    } else {
        DriverKind::Process
    };
    let mut e = match l.rev {
        Some(rev) => Entry::new(
            Arc::new(instance(&case.spec, l.generation, l.attempt)),
            rev,
            kind,
        ),
        None => Entry::unmatched(
            InstanceMeta {
                instance: id(case.spec.job),
                node: "n1".into(),
                generation: l.generation,
                attempt: l.attempt,
            },
            kind,
        ),
    };
    let run = || {
        Run::new(
            Handle {
                instance: id(case.spec.job),
                id: "42".into(),
                started_at: chrono::Utc::now(),
            },
            7,
        )
    };
    let exit = Exit {
        code: l.code,
        finished: None,
    };
    e.set_state(match l.state {
        0 => State::Pending,
        1 => State::Backoff {
            until: at(now, l.until),
        },
        2 => State::Running { run: run() },
        3 => State::Probing { run: run() },
        4 => State::Unhealthy { run: run() },
        5 => State::Exited {
            run: run(),
            exit,
            unhealthy: l.unhealthy,
        },
        6 => State::Fenced {
            last: l.unhealthy.then(|| (run(), exit)),
        },
        _ => State::Terminal {
            last: l.unhealthy.then(|| (run(), exit)),
        },
    });
    e.set_restart_count(l.restart_count);
    e.set_first_started(
        l.first_started
            .map(|s| at(now, -i64::try_from(s).unwrap_or(i64::MAX))),
    );
    e
}

/// What the agent does for a matched entry with no stop request, written from the spec's
/// rules (docs/architecture.md, restartPolicy / maxRestarts / timeoutSeconds / healthCheck)
/// rather than from `decide`'s code: the model `decide` is checked against.
fn model(spec: &Spec, l: &Local, e: &Entry, now: Instant) -> Step {
    let expired = match e.deadline(now) {
        Deadline::Exceeded(limit) => Some(limit),
        _ => None,
    };
    let running = matches!(l.state, 2..=4);
    match l.state {
        7 => Step::Idle,
        0 | 1 if expired.is_some() => Step::Expire(expired.unwrap_or_default()),
        1 if at(now, l.until) > now => Step::Wait(at(now, l.until) - now),
        0 | 1 => Step::Start,
        _ if running && expired.is_some() => Step::Expire(expired.unwrap_or_default()),
        4 => Step::StopUnhealthy,
        2 if spec.probe && !spec.hollow => Step::Probe,
        2 | 3 => Step::Idle,
        _ => {
            // Exited: restart while the policy wants it and the budget lasts, else the end.
            let clean = !l.unhealthy && l.code == Some(0);
            let wants = match spec.policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !clean,
                RestartPolicy::Never => false,
            };
            if wants && l.restart_count < spec.max_restarts {
                match expired {
                    Some(limit) => Step::Expire(limit),
                    None => Step::Restart {
                        after: BACKOFF.delay(l.restart_count + 1),
                        restart: l.restart_count + 1,
                        ended: if l.unhealthy {
                            crate::restart::Ended::Unhealthy
                        } else {
                            crate::restart::Ended::Exited(l.code)
                        },
                    },
                }
            } else {
                // Compared on the phase only: the reason and message are the status's words.
                Step::Finish {
                    phase: if clean && !wants {
                        drover_api::instance::Phase::Succeeded
                    } else {
                        drover_api::instance::Phase::Failed
                    },
                    reason: None,
                    message: String::new(),
                }
            }
        }
    }
}

/// `step` with a Finish's words blanked, to compare with [`model`].
fn phase_only(step: &Step) -> Step {
    match step {
        Step::Finish { phase, .. } => Step::Finish {
            phase: *phase,
            reason: None,
            message: String::new(),
        },
        other => other.clone(),
    }
}

fn starts(step: &Step) -> bool {
    matches!(step, Step::Start | Step::Restart { .. } | Step::Probe)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn decide_keeps_its_rules(case in case()) {
        // A base far from the process start, so offsets into the past exist.
        let now = Instant::now() + Duration::from_secs(1000 + case.now);
        let e = case.local.as_ref().map(|l| entry(&case, l, now));
        let step = decide(e.as_ref(), &case.desired, &BACKOFF, now);

        let d = &case.desired;
        // A fenced node or an agent going away: nothing at all.
        if d.node_fenced || d.shutting_down {
            prop_assert_eq!(&step, &Step::Hold);
            return Ok(());
        }
        prop_assert_ne!(&step, &Step::Hold);
        let Some(wanted) = &d.assignment else {
            // Unassigned: stopped and forgotten, never started.
            prop_assert_eq!(
                &step,
                &Step::Forget { reason: StopReason::Unassigned, again: false }
            );
            return Ok(());
        };
        let Some(e) = &e else {
            prop_assert_eq!(&step, &Step::Track);
            return Ok(());
        };
        prop_assert_ne!(&step, &Step::Track);
        match e.create_revision() {
            // Another placement: the local copy ends before anything new starts.
            Some(rev) if rev != wanted.create_revision => {
                prop_assert_eq!(
                    &step,
                    &Step::Forget { reason: StopReason::Unassigned, again: true }
                );
                return Ok(());
            }
            None => {
                let same = e.meta().generation == wanted.generation
                    && e.meta().attempt == wanted.attempt;
                let expected = if same {
                    Step::Adopt
                } else {
                    Step::Forget { reason: StopReason::Unassigned, again: true }
                };
                prop_assert_eq!(&step, &expected);
                return Ok(());
            }
            Some(_) => {}
        }
        // A copy fencing stopped is never started again: it is forgotten and re-created.
        if matches!(e.state(), State::Fenced { .. }) {
            prop_assert_eq!(&step, &Step::Forget { reason: StopReason::Fenced, again: true });
            return Ok(());
        }
        // A stop request: never a start, restart or probe.
        if wanted.stop.is_some() {
            prop_assert!(matches!(step, Step::StopOnRequest { .. } | Step::Idle), "{:?}", step);
            prop_assert!(!starts(&step));
            return Ok(());
        }
        let l = case.local.as_ref().expect("an entry was built from it");
        // Every state leads somewhere: the step is the one the spec's rules give.
        prop_assert_eq!(phase_only(&step), model(&case.spec, l, e, now), "state {:?}", e.state());
        // And the safety rules, stated on their own.
        if step == Step::Start {
            prop_assert!(!e.is_running());
            prop_assert!(!matches!(e.deadline(now), Deadline::Exceeded(_)));
        }
        if let Step::Restart { after, restart, .. } = step {
            prop_assert!(case.spec.policy != RestartPolicy::Never);
            prop_assert!(restart <= case.spec.max_restarts);
            prop_assert!(!after.is_zero());
        }
        if let Step::Expire(limit) = step {
            prop_assert_eq!(Some(limit), e.instance().and_then(|i| deadline::limit(&i.spec)));
        }
        // A job that exits 0 under a policy that does not restart it succeeded.
        if l.state == 5 && !l.unhealthy && l.code == Some(0) && case.spec.policy != RestartPolicy::Always {
            prop_assert!(matches!(step, Step::Finish { phase: drover_api::instance::Phase::Succeeded, .. }), "{:?}", step);
        }
    }
}
