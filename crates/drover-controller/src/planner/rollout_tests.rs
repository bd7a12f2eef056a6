//! Rollout scenarios against the simulated etcd: the budget holds on every round (live copies
//! at most `replicas + maxSurge`, available ones at least `replicas - maxUnavailable`), a
//! failing revision is stopped at its first copy and reverted, pause and canaries hold, and a
//! change to labels or priority alone moves nothing.

use std::collections::BTreeSet;

use drover_api::{Budget, Health, InstanceId, Phase, RequestAction, RolloutPhase, TaskSpec};
use proptest::prelude::*;

use super::sim::{at, Sim};
use super::*;

pub(super) const MIN_HEALTHY: u32 = 5;

/// Four copies of `web` on three nodes, rolled out and settled, with copies that must stay
/// healthy `MIN_HEALTHY` seconds to count.
pub(super) fn settled(f: impl Fn(&mut TaskSpec) + Copy) -> Sim {
    let mut sim = Sim::new();
    for n in ["n1", "n2", "n3"] {
        sim.node(n, 8000, &[]);
    }
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        f(s);
    });
    sim.converge(at(0));
    sim.converge(at(100));
    assert_eq!(
        rollout(&sim).phase,
        RolloutPhase::Complete,
        "{:?}",
        rollout(&sim)
    );
    sim.agent_runs = false;
    sim
}

pub(super) fn rollout(sim: &Sim) -> drover_api::Rollout {
    sim.s.taskstates[&TaskRef::new("default", "web")]
        .value
        .state
        .rollout
        .clone()
        .expect("a rollout record")
}

pub(super) fn ids(sim: &Sim) -> BTreeSet<InstanceId> {
    sim.s.assignments.keys().cloned().collect()
}

/// One round at `now`: plan and apply, then the agent acts on what it saw: new copies start
/// (Running since `now`, healthy unless `sick` says otherwise for their revision), stop
/// requests end. Returns (copies that may be live, available copies) after the plan.
fn round(sim: &mut Sim, now: i64, sick: impl Fn(u64) -> bool) -> (usize, usize) {
    let p = plan(&sim.s, at(now), &sim.config);
    sim.apply(&p);
    let min = sim.s.tasks[&TaskRef::new("default", "web")]
        .value
        .spec
        .update
        .min_healthy_seconds;
    let live = sim
        .s
        .assignments
        .keys()
        .filter(|id| {
            !sim.s
                .statuses
                .get(*id)
                .is_some_and(|s| s.value.phase.is_terminal())
        })
        .count();
    let available = sim
        .s
        .assignments
        .values()
        .filter(|a| rollout::available(&sim.s, at(now), &a.value, min))
        .count();
    agent(sim, now, sick);
    (live, available)
}

/// The agent acting on what it sees at `now`: new copies start (Running since `now`, healthy
/// unless `sick` says otherwise for their revision), stop requests end.
pub(super) fn agent(sim: &mut Sim, now: i64, sick: impl Fn(u64) -> bool) {
    let todo: Vec<_> = sim
        .s
        .assignments
        .values()
        .filter_map(|a| {
            let phase = sim.s.statuses.get(&a.value.id).map(|s| s.value.phase);
            match (&a.value.stop, phase) {
                (Some(_), Some(p)) if !p.is_terminal() => Some((a.value.id.clone(), None)),
                (None, None) => Some((a.value.id.clone(), Some(sick(a.value.revision)))),
                _ => None,
            }
        })
        .collect();
    for (id, start) in todo {
        match start {
            None => sim.set_phase(&id, Phase::Stopped, None),
            Some(sick) => sim.set_status_with(&id, Phase::Running, |s| {
                s.started_at = Some(at(now));
                if sick {
                    s.health = Health::Unhealthy;
                    s.message = Some("HTTP 500 from /healthfail".into());
                }
            }),
        }
    }
}

#[test]
fn a_rolling_update_keeps_every_copy_available_and_within_the_surge() {
    let mut sim = settled(|_| {});
    let before = ids(&sim);
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.env.insert("V".into(), "2".into());
    });
    for t in 0..200 {
        let (live, available) = round(&mut sim, 100 + t, |_| false);
        assert!(
            live <= 5,
            "second {t}: {live} live copies > replicas + maxSurge"
        );
        assert!(available >= 4, "second {t}: only {available} available");
    }
    let r = rollout(&sim);
    assert_eq!((r.revision, r.phase), (2, RolloutPhase::Complete), "{r:?}");
    assert_eq!(r.stable_revision, Some(2));
    assert!(sim.s.assignments.values().all(|a| a.value.revision == 2));
    assert!(ids(&sim).is_disjoint(&before), "every copy was replaced");
    assert_eq!(sim.s.revisions[&TaskRef::new("default", "web")].len(), 2);
}

#[test]
fn a_failing_revision_stops_at_its_first_copy_and_is_reverted() {
    let mut sim = settled(|s| s.update.auto_revert = true);
    let before = ids(&sim);
    let mut events = Vec::new();
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.update.auto_revert = true;
        s.env.insert("V".into(), "broken".into());
    });
    for t in 0..60 {
        let p = plan(&sim.s, at(100 + t), &sim.config);
        events.extend(p.events.iter().map(|e| e.reason.clone()));
        let (live, available) = round(&mut sim, 100 + t, |revision| revision == 2);
        assert!(
            live <= 5 && available >= 4,
            "second {t}: {live} live, {available} available"
        );
        let new = sim
            .s
            .assignments
            .values()
            .filter(|a| a.value.revision == 2)
            .count();
        assert!(new <= 1, "second {t}: {new} copies of the failing revision");
    }
    let r = rollout(&sim);
    assert_eq!(r.revision, 1, "back on revision 1: {r:?}");
    assert_eq!(r.phase, RolloutPhase::Complete);
    let failure = r.failure.expect("the failure is kept");
    assert_eq!(
        (failure.revision, failure.reason.as_str()),
        (2, "Unhealthy")
    );
    assert!(failure.message.contains("HTTP 500"), "{}", failure.message);
    assert_eq!(ids(&sim), before, "the old copies never stopped");
    for reason in ["RolloutStarted", "RolloutFailed", "RolloutReverted"] {
        assert!(
            events.iter().any(|e| e == reason),
            "no {reason} in {events:?}"
        );
    }
    // The spec still names revision 2; nothing tries it again until it changes.
    assert!(super::sim::only_bookkeeping(
        &sim.s,
        &plan(&sim.s, at(500), &sim.config)
    ));
}

#[test]
fn without_auto_revert_a_failed_rollout_holds_and_keeps_the_old_copies() {
    let mut sim = settled(|_| {});
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.env.insert("V".into(), "broken".into());
    });
    for t in 0..30 {
        round(&mut sim, 100 + t, |revision| revision == 2);
    }
    let r = rollout(&sim);
    assert_eq!((r.revision, r.phase), (2, RolloutPhase::Failed), "{r:?}");
    let old = sim
        .s
        .assignments
        .values()
        .filter(|a| a.value.revision == 1)
        .count();
    assert_eq!(old, 4, "no old copy was replaced by the failing revision");
}

#[test]
fn a_copy_that_never_becomes_healthy_fails_the_rollout_at_its_deadline() {
    let mut sim = settled(|_| {});
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.update.healthy_deadline_seconds = 20;
        s.env.insert("V".into(), "2".into());
    });
    // The agent never starts the new copy: no status at all.
    let p = plan(&sim.s, at(100), &sim.config);
    sim.apply(&p);
    let p = plan(&sim.s, at(101), &sim.config);
    sim.apply(&p);
    assert!(
        p.requeue_at.is_some_and(|t| t <= at(120)),
        "{:?}",
        p.requeue_at
    );
    let p = plan(&sim.s, at(121), &sim.config);
    assert!(
        p.events.iter().any(|e| e.reason == "RolloutFailed"),
        "{:?}",
        p.events
    );
    sim.apply(&p);
    let failure = rollout(&sim).failure.expect("failed");
    assert_eq!(failure.reason, "HealthyDeadlineExceeded");
}

#[test]
fn pause_holds_the_rollout_and_resume_finishes_it() {
    let mut sim = settled(|_| {});
    sim.request("web", "r1", RequestAction::Pause);
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.env.insert("V".into(), "2".into());
    });
    for t in 0..30 {
        round(&mut sim, 100 + t, |_| false);
    }
    assert_eq!(rollout(&sim).phase, RolloutPhase::Paused);
    assert!(
        sim.s.requests.values().all(|m| m.is_empty()),
        "the request was carried out and deleted: {:?}",
        sim.s.requests
    );
    assert!(sim.s.assignments.values().all(|a| a.value.revision == 1));
    sim.request("web", "r2", RequestAction::Resume);
    for t in 30..200 {
        round(&mut sim, 100 + t, |_| false);
    }
    assert_eq!(rollout(&sim).phase, RolloutPhase::Complete);
    assert!(sim.s.assignments.values().all(|a| a.value.revision == 2));
}

#[test]
fn a_canary_holds_the_rollout_until_promoted() {
    let mut sim = settled(|s| s.update.canary = 1);
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.update.canary = 1;
        s.env.insert("V".into(), "2".into());
    });
    for t in 0..60 {
        let (live, available) = round(&mut sim, 100 + t, |_| false);
        assert!(
            live <= 5 && available >= 4,
            "second {t}: {live} live, {available} available"
        );
    }
    assert_eq!(rollout(&sim).phase, RolloutPhase::AwaitingPromotion);
    let new = sim
        .s
        .assignments
        .values()
        .filter(|a| a.value.revision == 2)
        .count();
    assert_eq!(new, 1, "one canary");
    // A promote of another revision does nothing.
    sim.request("web", "p0", RequestAction::Promote { revision: 7 });
    round(&mut sim, 160, |_| false);
    assert_eq!(rollout(&sim).phase, RolloutPhase::AwaitingPromotion);
    sim.request("web", "p1", RequestAction::Promote { revision: 2 });
    for t in 61..250 {
        round(&mut sim, 100 + t, |_| false);
    }
    assert_eq!(rollout(&sim).phase, RolloutPhase::Complete);
    assert!(sim.s.assignments.values().all(|a| a.value.revision == 2));
}

#[test]
fn changing_only_labels_priority_or_the_strategy_moves_nothing() {
    let mut sim = settled(|_| {});
    let before = ids(&sim);
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = 1;
        s.update.max_surge = Budget::Percent(50);
        s.priority = 90;
    });
    if let Some(t) = sim.s.tasks.get_mut(&TaskRef::new("default", "web")) {
        t.value.metadata.labels.insert("team".into(), "b".into());
    }
    for t in 0..20 {
        round(&mut sim, 100 + t, |_| false);
    }
    assert_eq!(ids(&sim), before);
    assert_eq!(rollout(&sim).revision, 1);
}

#[test]
fn undo_to_an_earlier_template_reuses_its_revision_number() {
    let mut sim = settled(|_| {});
    sim.agent_runs = true;
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.env.insert("V".into(), "2".into());
    });
    for t in 0..100 {
        round(&mut sim, 100 + t, |_| false);
    }
    assert_eq!(rollout(&sim).revision, 2);
    // What `drover rollout undo --to-revision 1` applies: revision 1's template.
    sim.task("web", 4, |s| s.update.min_healthy_seconds = MIN_HEALTHY);
    for t in 100..250 {
        round(&mut sim, 100 + t, |_| false);
    }
    let r = rollout(&sim);
    assert_eq!((r.revision, r.phase), (1, RolloutPhase::Complete), "{r:?}");
    assert_eq!(sim.s.revisions[&TaskRef::new("default", "web")].len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the budget and however slowly the agent starts and stops copies, a rollout
    /// never has more than `replicas + maxSurge` copies that may be live, never fewer than
    /// `replicas - maxUnavailable` available (once all were), and ends with every copy on
    /// the new revision.
    #[test]
    fn a_rollout_stays_within_its_budget_and_finishes(
        replicas in 1u32..6,
        surge in 0u32..3,
        unavailable in 0u32..3,
        lag in proptest::collection::vec(0u8..3, 60),
    ) {
        prop_assume!(surge + unavailable > 0);
        let strategy = move |s: &mut TaskSpec| {
            s.update.max_surge = Budget::Count(surge);
            s.update.max_unavailable = Some(Budget::Count(unavailable));
            s.update.min_healthy_seconds = 1;
        };
        let mut sim = Sim::new();
        for n in ["n1", "n2", "n3"] {
            sim.node(n, 8000, &[]);
        }
        sim.task("web", replicas, strategy);
        sim.converge(at(0));
        sim.converge(at(10));
        sim.agent_runs = false;
        sim.task("web", replicas, move |s| {
            strategy(s);
            s.env.insert("V".into(), "2".into());
        });
        let cap = (replicas + surge) as usize;
        let floor = replicas.saturating_sub(unavailable) as usize;
        let mut t = 20;
        for (i, skip) in lag.iter().enumerate() {
            t += 1;
            if *skip == 0 && i % 2 == 0 {
                // The agent is slow this second: the leader plans, nothing starts.
                let p = plan(&sim.s, at(t), &sim.config);
                sim.apply(&p);
                continue;
            }
            let (live, available) = round(&mut sim, t, |_| false);
            prop_assert!(live <= cap, "second {}: {} live > {}", t, live, cap);
            prop_assert!(available >= floor, "second {}: {} available < {}", t, available, floor);
        }
        for _ in 0..100 {
            t += 1;
            round(&mut sim, t, |_| false);
        }
        prop_assert!(sim.s.assignments.values().all(|a| a.value.revision == 2));
        prop_assert_eq!(sim.s.assignments.len(), replicas as usize);
        prop_assert_eq!(rollout(&sim).phase, RolloutPhase::Complete);
    }
}
