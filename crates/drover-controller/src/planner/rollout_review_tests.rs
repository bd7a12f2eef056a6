//! Rollout edge cases a review found: records lost or unreadable, drains while a rollout
//! holds, a crashing revision, unschedulable revisions, dead letters across a non-template
//! change, many requests at once, an upgrade, and a fuzz of mixed operations.

use std::collections::BTreeSet;

use drover_api::{InstanceId, Phase, RequestAction, RolloutPhase, TaskSpec};

use super::sim::{at, Sim};
use super::*;

use super::rollout_tests::{agent, ids, rollout, settled, MIN_HEALTHY};

fn web() -> TaskRef {
    TaskRef::new("default", "web")
}

fn by_revision(sim: &Sim, revision: u64) -> usize {
    sim.s
        .assignments
        .values()
        .filter(|a| a.value.revision == revision)
        .count()
}

/// As rollout_tests::round: plan, apply, and the agent starts new copies (healthy unless
/// `sick(revision)`) and stops stop-requested ones.
fn round(sim: &mut Sim, now: i64, sick: impl Fn(u64) -> bool) -> Plan {
    let p = plan(&sim.s, at(now), &sim.config);
    sim.apply(&p);
    agent(sim, now, sick);
    p
}

fn live(sim: &Sim) -> usize {
    sim.s
        .assignments
        .values()
        .filter(|a| {
            sim.s.node_present(&a.value.node)
                && !sim
                    .s
                    .statuses
                    .get(&a.value.id)
                    .is_some_and(|s| s.value.phase.is_terminal())
        })
        .count()
}

/// Promise 7: the record of the revision that runs turns undecodable (a foreign write).
/// The template did not change, yet the planner hands out a new number and replaces every
/// copy of the service.
#[test]
fn review_an_undecodable_target_revision_record_restarts_nothing() {
    let mut sim = settled(|_| {});
    let before = ids(&sim);
    let rev = sim.bump();
    sim.s.revisions.get_mut(&web()).expect("present").remove(&1);
    sim.s
        .opaque_revisions
        .entry(web())
        .or_default()
        .insert(1, rev);
    for t in 0..100 {
        round(&mut sim, 100 + t, |_| false);
    }
    let r = rollout(&sim);
    assert_eq!(ids(&sim), before, "copies were replaced: rollout now {r:?}");
}

/// Same, when a foreign client (or an operator cleaning up) deletes the record.
#[test]
fn review_a_deleted_target_revision_record_restarts_nothing() {
    let mut sim = settled(|_| {});
    let before = ids(&sim);
    sim.bump();
    sim.s.revisions.get_mut(&web()).expect("present").remove(&1);
    for t in 0..100 {
        round(&mut sim, 100 + t, |_| false);
    }
    let r = rollout(&sim);
    assert_eq!(ids(&sim), before, "copies were replaced: rollout now {r:?}");
}

/// Hold (a failed rollout, no auto revert): draining the nodes that hold every old copy
/// places copies of the *failed* revision (the fallback spec is taken from `old_live`, which
/// is empty when every old copy is on a draining node).
#[test]
fn review_a_drain_during_a_failed_rollout_never_places_the_failed_revision() {
    let mut sim = settled(|_| {});
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.env.insert("V".into(), "broken".into());
    });
    for t in 0..30 {
        round(&mut sim, 100 + t, |revision| revision == 2);
    }
    assert_eq!(rollout(&sim).phase, RolloutPhase::Failed);
    assert_eq!(by_revision(&sim, 2), 0, "the failed copy was settled away");
    sim.node("n4", 8000, &[]);
    for n in ["n1", "n2", "n3"] {
        sim.set_info(n, |i| i.draining = true);
    }
    let mut worst = 0;
    for t in 30..200 {
        round(&mut sim, 100 + t, |revision| revision == 2);
        worst = worst.max(by_revision(&sim, 2));
    }
    assert_eq!(
        worst, 0,
        "copies of the failed revision 2 placed while holding"
    );
}

/// Paused: same path, the paused revision is placed as drain replacements.
#[test]
fn review_a_drain_during_a_paused_rollout_places_no_copy_of_the_new_revision() {
    let mut sim = settled(|_| {});
    sim.request("web", "r1", RequestAction::Pause);
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.env.insert("V".into(), "2".into());
    });
    round(&mut sim, 100, |_| false);
    assert_eq!(rollout(&sim).phase, RolloutPhase::Paused);
    sim.node("n4", 8000, &[]);
    for n in ["n1", "n2", "n3"] {
        sim.set_info(n, |i| i.draining = true);
    }
    let mut worst = 0;
    for t in 1..200 {
        round(&mut sim, 100 + t, |_| false);
        worst = worst.max(by_revision(&sim, 2));
    }
    assert_eq!(
        worst,
        0,
        "paused, yet drain replacements run revision 2 ({:?})",
        rollout(&sim)
    );
}

/// Canary 1: with the old copies on draining nodes, the drain's replacements are all the
/// new revision: more canaries than `canary` before any promote.
#[test]
fn review_a_drain_during_a_canary_keeps_one_canary() {
    let mut sim = settled(|s| s.update.canary = 1);
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.update.canary = 1;
        s.env.insert("V".into(), "2".into());
    });
    sim.node("n4", 8000, &[]);
    for n in ["n1", "n2", "n3"] {
        sim.set_info(n, |i| i.draining = true);
    }
    let mut worst = 0;
    for t in 0..200 {
        round(&mut sim, 100 + t, |_| false);
        worst = worst.max(by_revision(&sim, 2));
    }
    assert!(
        worst <= 1,
        "{worst} copies of revision 2 before any promote ({:?})",
        rollout(&sim)
    );
}

/// Promise 1: a revision whose copies fit on no node (a template field: nodeSelector) never
/// fails: every plan "places" one (seen.placing > 0), which switches off the progress
/// deadline, and no copy is ever placed, so no healthy deadline runs either.
#[test]
fn review_an_unschedulable_revision_fails_at_its_progress_deadline() {
    let mut sim = settled(|_| {});
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.node_selector.insert("disk".into(), "none".into());
    });
    for t in (0..2000).step_by(10) {
        round(&mut sim, 100 + t, |_| false);
    }
    let r = rollout(&sim);
    assert_eq!(
        r.phase,
        RolloutPhase::Failed,
        "2000 s past a 600 s progress deadline: {r:?}"
    );
}

/// A dead letter holds its slot "while the task keeps this generation". Copies are no longer
/// replaced when the generation moves without a template change, so a copy placed at
/// generation 1 is dead-lettered with generation 1 while the task is at generation 2, and its
/// slot is refilled at once (a fresh attempt 1 chain).
#[test]
fn review_a_dead_lettered_slot_is_not_refilled_after_a_priority_change() {
    let mut sim = settled(|_| {});
    sim.config.reschedule_limit = 0;
    // Generation 2, same template: nothing restarts (as intended).
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.priority = 60;
    });
    round(&mut sim, 100, |_| false);
    let victim = ids(&sim).into_iter().next().expect("present");
    sim.set_phase(&victim, Phase::Failed, Some(at(100)));
    round(&mut sim, 110, |_| false);
    assert_eq!(sim.s.deadletters.len(), 1, "dead-lettered");
    for t in 111..130 {
        round(&mut sim, t, |_| false);
    }
    assert_eq!(
        sim.s.assignments.len(),
        3,
        "the dead-lettered slot was refilled: letters {:?}",
        sim.s
            .deadletters
            .values()
            .map(|d| d.value.generation)
            .collect::<Vec<_>>()
    );
}

/// Promise 8: every carried-out request is deleted in the one step that writes the rollout
/// record (and the revision record). Many requests make a step over etcd's 128 operations:
/// etcd refuses it alone, every plan, and the rollout record never moves.
#[test]
fn review_many_requests_never_make_a_step_over_the_txn_limit() {
    let mut sim = settled(|_| {});
    for n in 0..200 {
        sim.request("web", &format!("r{n:03}"), RequestAction::Pause);
    }
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.env.insert("V".into(), "2".into());
    });
    let p = plan(&sim.s, at(100), &sim.config);
    let widest = p.steps.iter().map(|s| s.writes.len()).max().unwrap_or(0);
    // One compare is the fence, one the task state, one put the task state.
    assert!(widest <= 125, "a step of {widest} writes");
}

/// Upgrade from the version before revisions: no rollout record, copies with revision 0.
/// Nothing restarts (good), but a copy that was not healthy when the new leader first looks
/// (placed long ago, so past its healthy deadline) fails the "first deployment": the
/// upgrade writes a RolloutFailed for a service nobody changed.
#[test]
fn review_an_upgrade_records_no_failed_rollout() {
    let mut sim = settled(|_| {});
    // Make it look like the previous version wrote it.
    sim.bump();
    sim.s.revisions.clear();
    for a in sim.s.assignments.values_mut() {
        a.value.revision = 0;
    }
    if let Some(s) = sim.s.taskstates.get_mut(&web()) {
        s.value.state.rollout = None;
    }
    let before = ids(&sim);
    let id = before.iter().next().expect("present").clone();
    // One copy restarted just before the upgrade (not yet minHealthySeconds up).
    sim.set_status_with(&id, Phase::Running, |s| {
        s.started_at = Some(at(999));
    });
    let mut events = Vec::new();
    for t in 0..20 {
        let p = round(&mut sim, 1000 + t, |_| false);
        events.extend(
            p.events
                .iter()
                .map(|e| (e.reason.clone(), e.message.clone())),
        );
    }
    assert_eq!(ids(&sim), before, "nothing restarted");
    assert!(
        !events.iter().any(|(r, _)| r == "RolloutFailed"),
        "{events:?} / {:?}",
        rollout(&sim)
    );
}

/// Promise 4: a held rollout (paused, awaiting promotion, failed) in a quiet cluster plans
/// nothing.
#[test]
fn review_held_rollouts_plan_nothing_when_quiet() {
    // Failed.
    let mut sim = settled(|_| {});
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.env.insert("V".into(), "broken".into());
    });
    for t in 0..40 {
        round(&mut sim, 100 + t, |r| r == 2);
    }
    assert_eq!(rollout(&sim).phase, RolloutPhase::Failed);
    let p = plan(&sim.s, at(1000), &sim.config);
    assert!(p.is_empty(), "failed: {:?} {:?}", p.steps, p.taskstates);
    // Awaiting promotion.
    let mut sim = settled(|s| s.update.canary = 1);
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.update.canary = 1;
        s.env.insert("V".into(), "2".into());
    });
    for t in 0..40 {
        round(&mut sim, 100 + t, |_| false);
    }
    assert_eq!(rollout(&sim).phase, RolloutPhase::AwaitingPromotion);
    let p = plan(&sim.s, at(5000), &sim.config);
    assert!(p.is_empty(), "awaiting: {:?} {:?}", p.steps, p.taskstates);
    // Paused.
    let mut sim = settled(|_| {});
    sim.request("web", "r1", RequestAction::Pause);
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.env.insert("V".into(), "2".into());
    });
    for t in 0..40 {
        round(&mut sim, 100 + t, |_| false);
    }
    let p = plan(&sim.s, at(5000), &sim.config);
    assert!(p.is_empty(), "paused: {:?} {:?}", p.steps, p.taskstates);
}

mod fuzz {
    use super::*;
    use drover_api::Budget;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Template(u8),
        Pause,
        Resume,
        Promote,
        Drain(u8),
        Undrain(u8),
        Kill(u8),
        Revive(u8),
        Tick,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4).prop_map(Op::Template),
            Just(Op::Pause),
            Just(Op::Resume),
            Just(Op::Promote),
            (0u8..4).prop_map(Op::Drain),
            (0u8..4).prop_map(Op::Undrain),
            (0u8..4).prop_map(Op::Kill),
            (0u8..4).prop_map(Op::Revive),
            Just(Op::Tick),
            Just(Op::Tick),
            Just(Op::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Promise 6 on every plan, whatever mix of templates (3+ revisions at once), pause,
        /// promote, drains and lost nodes: copies that may be live <= replicas + surge, and an
        /// available copy is asked to stop only while >= replicas - maxUnavailable others
        /// stay available.
        #[test]
        fn review_budget_holds_under_mixed_operations(
            replicas in 1u32..5,
            surge in 0u32..3,
            unavailable in 0u32..3,
            canary in 0u32..2,
            sick_template in 0u8..4,
            ops in proptest::collection::vec(op(), 1..60),
            lazy in proptest::collection::vec(any::<bool>(), 180),
        ) {
            prop_assume!(surge + unavailable > 0);
            let strategy = move |s: &mut TaskSpec, v: u8| {
                s.update.max_surge = Budget::Count(surge);
                s.update.max_unavailable = Some(Budget::Count(unavailable));
                s.update.min_healthy_seconds = 2;
                s.update.canary = canary;
                s.update.auto_revert = true;
                if v > 0 {
                    s.env.insert("V".into(), v.to_string());
                }
            };
            let nodes = ["n0", "n1", "n2", "n3"];
            let mut sim = Sim::new();
            for n in nodes {
                sim.node(n, 8000, &[]);
            }
            sim.task("web", replicas, |s| strategy(s, 0));
            sim.converge(at(0));
            sim.converge(at(10));
            sim.agent_runs = false;
            let cap = (replicas + surge) as usize;
            let floor = replicas.saturating_sub(unavailable) as usize;
            let mut sick_revisions: BTreeSet<u64> = BTreeSet::new();
            let mut t = 20;
            let mut req = 0;
            for o in ops {
                match o {
                    Op::Template(v) => sim.task("web", replicas, |s| strategy(s, v)),
                    Op::Pause => { req += 1; sim.request("web", &format!("q{req}"), RequestAction::Pause) }
                    Op::Resume => { req += 1; sim.request("web", &format!("q{req}"), RequestAction::Resume) }
                    Op::Promote => {
                        if let Some(r) = sim.s.taskstates.get(&web()).and_then(|s| s.value.state.rollout.clone()) {
                            req += 1;
                            sim.request("web", &format!("q{req}"), RequestAction::Promote { revision: r.revision });
                        }
                    }
                    Op::Drain(n) => sim.set_info(nodes[n as usize], |i| i.draining = true),
                    Op::Undrain(n) => sim.set_info(nodes[n as usize], |i| i.draining = false),
                    Op::Kill(n) => if sim.s.nodes.len() > 1 { sim.kill_node(nodes[n as usize]) },
                    Op::Revive(n) => if !sim.s.nodes.contains_key(nodes[n as usize]) { sim.node(nodes[n as usize], 8000, &[]) },
                    Op::Tick => {}
                }
                // Which revision number the sick template got (if any).
                if let Some(m) = sim.s.revisions.get(&web()) {
                    for r in m.values() {
                        if r.value.spec.env.get("V").map(String::as_str) == Some(&sick_template.to_string()) && sick_template > 0 {
                            sick_revisions.insert(r.value.revision);
                        }
                    }
                }
                for _ in 0..3 {
                    t += 1;
                    let avail_before: BTreeSet<InstanceId> = sim.s.assignments.values()
                        .filter(|a| sim.s.node_present(&a.value.node) && rollout::available(&sim.s, at(t), &a.value, 2))
                        .map(|a| a.value.id.clone()).collect();
                    let p = plan(&sim.s, at(t), &sim.config);
                    let stopped: BTreeSet<InstanceId> = p.steps.iter().flat_map(|s| s.writes.iter()).filter_map(|w| match w {
                        Write::RequestStop { instance, .. } => Some(instance.id.clone()),
                        Write::Unassign { id, .. } => Some(id.clone()),
                        _ => None,
                    }).collect();
                    let stopped_available = stopped.intersection(&avail_before).count();
                    let left = avail_before.len() - stopped_available;
                    prop_assert!(stopped_available == 0 || left >= floor,
                        "t={}: stopped {} available copies leaving {} < {}", t, stopped_available, left, floor);
                    sim.apply(&p);
                    let live = live(&sim);
                    let sick = sick_revisions.clone();
                    if !lazy[(t as usize) % lazy.len()] {
                        agent(&mut sim, t, move |r| sick.contains(&r));
                    }
                    prop_assert!(live <= cap, "t={}: {} live > {} ({:?})", t, live, cap,
                        sim.s.taskstates.get(&web()).and_then(|s| s.value.state.rollout.clone()));
                }
            }
        }
    }
}

/// A failed rollout (no auto revert) keeps replacing the failed revision's crashed copy "as it
/// was" until it is dead-lettered; the letter then lowers `desired` for the generation, and the
/// hold trims a healthy copy of the old revision.
#[test]
fn review_a_crashing_revision_costs_no_healthy_old_copy() {
    let mut sim = settled(|_| {});
    sim.config.reschedule_limit = 1;
    sim.task("web", 4, |s| {
        s.update.min_healthy_seconds = MIN_HEALTHY;
        s.env.insert("V".into(), "crash".into());
    });
    let mut placed_failed = 0;
    for t in 0..600 {
        let p = plan(&sim.s, at(100 + t), &sim.config);
        placed_failed += p
            .steps
            .iter()
            .flat_map(|s| s.writes.iter())
            .filter(|w| matches!(w, Write::Assign(i) if i.revision == 2))
            .count();
        sim.apply(&p);
        // The agent: revision 2 crashes for good (Failed), everything else runs.
        let todo: Vec<_> = sim
            .s
            .assignments
            .values()
            .filter_map(|a| {
                let phase = sim.s.statuses.get(&a.value.id).map(|s| s.value.phase);
                match (&a.value.stop, phase) {
                    (Some(_), Some(p)) if !p.is_terminal() => {
                        Some((a.value.id.clone(), Phase::Stopped))
                    }
                    (None, None) if a.value.revision == 2 => {
                        Some((a.value.id.clone(), Phase::Failed))
                    }
                    (None, None) => Some((a.value.id.clone(), Phase::Running)),
                    _ => None,
                }
            })
            .collect();
        for (id, phase) in todo {
            match phase {
                Phase::Running => {
                    sim.set_status_with(&id, Phase::Running, |s| s.started_at = Some(at(100 + t)))
                }
                p => sim.set_phase(&id, p, Some(at(100 + t))),
            }
        }
    }
    let r = rollout(&sim);
    assert_eq!(r.phase, RolloutPhase::Failed, "{r:?}");
    eprintln!(
        "copies of failed revision 2 placed: {placed_failed}; dead letters {}",
        sim.s.deadletters.len()
    );
    assert_eq!(
        by_revision(&sim, 1),
        4,
        "healthy old copies left: {}",
        by_revision(&sim, 1)
    );
}
