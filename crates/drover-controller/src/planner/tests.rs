//! Planner scenario tests against the simulated etcd in `sim.rs`.

use chrono::TimeDelta;
use drover_api::Phase;

use super::sim::{at, Sim};
use super::*;

#[test]
fn six_replicas_on_three_nodes_then_nothing_to_do() {
    let mut sim = Sim::new();
    for n in ["n1", "n2", "n3"] {
        sim.node(n, 4000, &[]);
    }
    sim.task("web", 6, |_| {});
    let p = plan(&sim.s, at(1), &sim.config);
    assert_eq!(p.placed, 6);
    assert!(p.events.iter().any(|e| e.reason == "Scheduled"));
    sim.apply(&p);
    assert_eq!(
        sim.per_node("web").values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    // A new leader with the same snapshot has nothing to do (but note that the copies run).
    assert!(super::sim::only_bookkeeping(
        &sim.s,
        &plan(&sim.s, at(100), &sim.config)
    ));
}

#[test]
fn node_selector_and_unschedulable_then_placed() {
    let mut sim = Sim::new();
    sim.node("n1", 4000, &[("disk", "hdd")]);
    sim.node("n2", 4000, &[]);
    sim.task("db", 1, |s| {
        s.node_selector.insert("disk".into(), "ssd".into());
    });
    let p = plan(&sim.s, at(1), &sim.config);
    assert_eq!((p.placed, p.pending), (0, 1));
    let reason = p.taskstates[&TaskRef::new("default", "db")]
        .state
        .state
        .pending_reason
        .clone();
    assert_eq!(
        reason.as_deref(),
        Some("Unschedulable: 0/2 nodes are available: 2 node selector mismatch")
    );
    assert!(p.events.iter().any(|e| e.reason == "FailedScheduling"));
    sim.apply(&p);
    // Still pending, but nothing new to write: no churn while waiting.
    assert!(plan(&sim.s, at(2), &sim.config).is_empty());
    sim.node("n3", 1000, &[("disk", "ssd")]);
    let p = plan(&sim.s, at(3), &sim.config);
    assert_eq!(p.placed, 1);
    sim.apply(&p);
    assert_eq!(sim.per_node("db").keys().collect::<Vec<_>>(), vec!["n3"]);
    let state = &sim.s.taskstates[&TaskRef::new("default", "db")].value;
    assert_eq!(state.state.pending_reason, None);
    assert_eq!(sim.converge(at(4)), 0);
}

#[test]
fn deleted_task_is_cleaned_up() {
    let mut sim = Sim::new();
    sim.node("n1", 4000, &[]);
    sim.task("web", 3, |_| {});
    sim.converge(at(1));
    sim.bump();
    sim.s.tasks.clear();
    sim.converge(at(2));
    assert!(sim.s.assignments.is_empty());
    assert!(sim.s.statuses.is_empty());
    assert!(sim.s.taskstates.is_empty());
}

#[test]
fn new_generation_replaces_with_fresh_ids() {
    let mut sim = Sim::new();
    sim.node("n1", 4000, &[]);
    sim.task("web", 2, |_| {});
    sim.converge(at(1));
    let before = sim.ids("web");
    sim.task("web", 2, |s| {
        s.env.insert("V".into(), "2".into()).map_or((), |_| ())
    });
    sim.converge(at(2));
    let after = sim.ids("web");
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|id| !before.contains(id)));
    assert!(sim.s.assignments.values().all(|a| a.value.generation == 2));
}

#[test]
fn scale_to_zero_and_back_never_reuses_an_id() {
    let mut sim = Sim::new();
    sim.node("n1", 4000, &[]);
    sim.task("web", 2, |_| {});
    sim.converge(at(1));
    let first = sim.ids("web");
    sim.task("web", 0, |_| {});
    sim.converge(at(2));
    sim.task("web", 2, |_| {});
    sim.converge(at(3));
    assert!(sim.ids("web").iter().all(|id| !first.contains(id)));
}

#[test]
fn dead_node_instances_are_replaced_in_the_same_step() {
    let mut sim = Sim::new();
    for n in ["n1", "n2", "n3"] {
        sim.node(n, 4000, &[]);
        sim.set_info(n, |_| {});
    }
    sim.task("web", 6, |_| {});
    sim.converge(at(1));
    sim.kill_node("n2");
    let p = plan(&sim.s, at(2), &sim.config);
    let pairs = p
        .steps
        .iter()
        .filter(|s| {
            matches!(s.writes.as_slice(), [Write::Unassign { node, .. }, Write::Assign(new), Write::NodeGone { node: gone }] if node == "n2" && new.node != "n2" && gone == "n2")
        })
        .count();
    assert_eq!(pairs, 2);
    // The death is recorded only while the node stays dead (fenced on its key's absence).
    assert!(p.steps.iter().any(|s| matches!(&s.writes[..], [Write::NodeState { state, .. }, Write::NodeGone { node }] if state.name == "n2" && state.dead_since == Some(at(2)) && node == "n2")));
    assert!(p.events.iter().any(|e| e.reason == "NodeDead"));
    sim.apply(&p);
    assert_eq!(
        sim.per_node("web").values().copied().collect::<Vec<_>>(),
        vec![3, 3]
    );
    assert_eq!(sim.converge(at(3)), 0);
    // The node returns: its death mark is cleared, and nothing moves back.
    sim.node("n2", 4000, &[]);
    assert_eq!(sim.converge(at(4)), 1);
    assert_eq!(sim.s.nodestates["n2"].value.dead_since, None);
    assert_eq!(sim.per_node("web").len(), 2);
}

#[test]
fn failed_instances_are_rescheduled_with_delay_then_dead_lettered() {
    let mut sim = Sim::new();
    sim.node("n1", 4000, &[]);
    sim.node("n2", 4000, &[]);
    sim.task("web", 1, |_| {});
    sim.converge(at(0));
    let mut t = 10;
    for attempt in 1..=sim.config.reschedule_limit {
        let id = sim.ids("web").pop().expect("one instance");
        let node = sim.s.assignments[&id].value.node.clone();
        assert_eq!(sim.s.assignments[&id].value.attempt, attempt);
        sim.set_phase(&id, Phase::Failed, Some(at(t)));
        // Before the delay: wait, and ask to be woken when it ends.
        let p = plan(&sim.s, at(t), &sim.config);
        assert!(p.is_empty());
        let delay = sim.config.reschedule_delay(attempt - 1);
        let due = at(t) + TimeDelta::from_std(delay).expect("small");
        assert_eq!(p.requeue_at, Some(due));
        let p = plan(&sim.s, due, &sim.config);
        sim.apply(&p);
        let new = sim.ids("web").pop().expect("replacement");
        assert_ne!(new, id);
        assert_ne!(
            sim.s.assignments[&new].value.node, node,
            "prefers another node"
        );
        assert_eq!(sim.s.assignments[&new].value.attempt, attempt + 1);
        t += 1000;
    }
    let id = sim.ids("web").pop().expect("last attempt");
    sim.set_phase(&id, Phase::Failed, Some(at(t)));
    let p = plan(&sim.s, at(t), &sim.config);
    assert!(p.events.iter().any(|e| e.reason == "DeadLettered"));
    sim.apply(&p);
    assert!(sim.ids("web").is_empty());
    let dl = &sim.s.deadletters[&id].value;
    assert_eq!(dl.letter.attempts, sim.config.reschedule_limit + 1);
    assert_eq!(dl.letter.exit_code, Some(1));
    // The dead-lettered slot is not refilled while the task keeps its generation...
    assert_eq!(sim.converge(at(t + 1)), 0);
    // ...and a new generation starts afresh.
    sim.task("web", 1, |s| s.priority = 60);
    sim.converge(at(t + 2));
    assert_eq!(sim.ids("web").len(), 1);
}

/// Drains `n1` of a 3-replica service with `surge` extra copies allowed, the agent acting one
/// round late (starting new copies, stopping stop-requested ones). Returns, per round, the
/// copies that may be live (assignments whose status is not terminal) and the Running count.
fn drain_rounds(surge: u32) -> Vec<(usize, usize)> {
    move_rounds(surge, |sim| {
        sim.set_info("n1", |i| {
            i.draining = true;
            i.cordoned = true;
        });
    })
}

/// Like [`drain_rounds`], for any change that makes copies move (`disturb`).
fn move_rounds(surge: u32, disturb: impl FnOnce(&mut Sim)) -> Vec<(usize, usize)> {
    let mut sim = Sim::new();
    for n in ["n1", "n2", "n3"] {
        sim.node(n, 4000, &[]);
    }
    sim.task("web", 3, |s| {
        s.update.max_surge = drover_api::Budget::Count(surge)
    });
    sim.converge(at(0));
    sim.agent_runs = false;
    disturb(&mut sim);
    let mut rounds = Vec::new();
    for round in 0..20 {
        let p = plan(&sim.s, at(round + 1), &sim.config);
        sim.apply(&p);
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
        let running = sim
            .s
            .statuses
            .values()
            .filter(|s| s.value.phase == Phase::Running)
            .count();
        rounds.push((live, running));
        let late: Vec<_> = sim
            .s
            .assignments
            .values()
            .filter_map(|a| {
                let status = sim.s.statuses.get(&a.value.id).map(|s| s.value.phase);
                match (&a.value.stop, status) {
                    (Some(_), Some(p)) if !p.is_terminal() => {
                        Some((a.value.id.clone(), Phase::Stopped))
                    }
                    (None, None) => Some((a.value.id.clone(), Phase::Running)),
                    _ => None,
                }
            })
            .collect();
        for (id, phase) in late {
            sim.set_phase(&id, phase, None);
        }
    }
    let generation = sim.s.tasks[&TaskRef::new("default", "web")]
        .value
        .metadata
        .generation;
    assert!(
        sim.s
            .assignments
            .values()
            .all(|a| a.value.generation == generation),
        "every copy runs the current generation"
    );
    if sim.s.nodeinfos.get("n1").is_some_and(|i| i.value.draining) {
        assert_eq!(sim.per_node("web").get("n1"), None, "n1 is drained");
    }
    assert_eq!(sim.ids("web").len(), 3);
    assert_eq!(sim.converge(at(100)), 0);
    rounds
}

#[test]
fn drain_with_surge_replaces_first_and_stays_within_the_budget() {
    for (round, (live, running)) in drain_rounds(1).into_iter().enumerate() {
        assert!(running >= 3, "round {round}: running dropped to {running}");
        assert!(
            live <= 4,
            "round {round}: {live} live copies > replicas + surge"
        );
    }
}

#[test]
fn a_new_generation_without_surge_replaces_one_copy_at_a_time() {
    let bump = |sim: &mut Sim| {
        sim.task("web", 3, |s| {
            s.update.max_surge = drover_api::Budget::Count(0);
            s.env.insert("V".into(), "2".into());
        })
    };
    for (round, (live, running)) in move_rounds(0, bump).into_iter().enumerate() {
        assert!(live <= 3, "round {round}: {live} live copies > replicas");
        assert!(running >= 2, "round {round}: more than one copy down");
    }
    let bump = |sim: &mut Sim| {
        sim.task("web", 3, |s| {
            s.update.max_surge = drover_api::Budget::Count(1);
            s.env.insert("V".into(), "2".into());
        });
    };
    for (round, (live, running)) in move_rounds(1, bump).into_iter().enumerate() {
        assert!(
            live <= 4,
            "round {round}: {live} live copies > replicas + surge"
        );
        assert!(running >= 3, "round {round}: running dropped to {running}");
    }
}

#[test]
fn a_replacement_that_fits_nowhere_does_not_hold_a_rollout_forever() {
    let mut sim = Sim::new();
    sim.node("n1", 1000, &[]);
    sim.task("web", 1, |s| {
        s.resources.cpu = drover_api::Cpu::millis(700);
        s.update.max_surge = drover_api::Budget::Count(1);
    });
    sim.converge(at(0));
    sim.task("web", 1, |s| {
        s.resources.cpu = drover_api::Cpu::millis(700);
        s.update.max_surge = drover_api::Budget::Count(1);
        s.env.insert("V".into(), "2".into());
    });
    sim.converge(at(1));
    let a: Vec<_> = sim.s.assignments.values().collect();
    assert_eq!(a.len(), 1);
    assert_eq!(
        a[0].value.generation, 2,
        "the old copy made room for the new one"
    );
}

#[test]
fn a_live_copy_is_deleted_only_on_a_terminal_status_of_its_own_node_that_still_holds() {
    let mut sim = Sim::new();
    sim.node("n1", 4000, &[]);
    sim.task("web", 1, |_| {});
    sim.converge(at(0));
    let id = sim.ids("web")[0].clone();
    sim.task("web", 0, |_| {});
    // A foreign status write naming another node proves nothing: a stop is requested.
    sim.set_phase(&id, Phase::Stopped, None);
    if let Some(s) = sim.s.statuses.get_mut(&id) {
        std::sync::Arc::make_mut(s).value.node = "elsewhere".into();
    }
    let p = plan(&sim.s, at(1), &sim.config);
    assert!(p
        .steps
        .iter()
        .flat_map(|s| &s.writes)
        .any(|w| matches!(w, Write::RequestStop { .. })));
    // Its own agent's terminal status: deleted, on the condition that the status still holds.
    sim.set_phase(&id, Phase::Stopped, None);
    let rev = sim.s.statuses[&id].mod_revision;
    let p = plan(&sim.s, at(2), &sim.config);
    assert!(p.steps.iter().any(|s| matches!(
        s.writes.as_slice(),
        [Write::StatusUnchanged { mod_revision, .. }, Write::Unassign { .. }] if *mod_revision == rev
    )), "{:?}", p.steps);
}

#[test]
fn a_legacy_status_is_read_until_its_node_has_one_then_deleted() {
    let mut sim = Sim::new();
    sim.node("n1", 4000, &[]);
    sim.task("web", 1, |_| {});
    sim.converge(at(0));
    let id = sim.ids("web")[0].clone();
    // An agent from before statuses moved under their node reported it Running.
    sim.forget_status(&id);
    sim.set_legacy_phase(&id, Phase::Running);
    let p = plan(&sim.s, at(1), &sim.config);
    assert!(p.is_empty(), "nothing to move yet: {p:?}");

    // The upgraded agent writes under its node: the legacy key is deleted, compared.
    sim.set_phase(&id, Phase::Running, None);
    let legacy_rev = sim.legacy_revision(&id);
    let p = plan(&sim.s, at(2), &sim.config);
    assert!(
        p.steps.iter().any(|s| matches!(
            s.writes.as_slice(),
            [Write::DeleteStatus { at: StatusKey::Legacy, mod_revision, .. }] if *mod_revision == legacy_rev
        )),
        "{:?}",
        p.steps
    );
    sim.apply(&p);
    assert_eq!(
        sim.s.status_keys_of(&id).len(),
        1,
        "only the node's status is left"
    );
    assert_eq!(sim.s.statuses[&id].value.phase, Phase::Running);
    assert_eq!(sim.converge(at(3)), 0);
}

#[test]
fn a_copy_known_gone_only_from_its_legacy_status_is_deleted_comparing_that_key() {
    let mut sim = Sim::new();
    sim.node("n1", 4000, &[]);
    sim.task("web", 1, |_| {});
    sim.converge(at(0));
    let id = sim.ids("web")[0].clone();
    sim.task("web", 0, |_| {});
    sim.forget_status(&id);
    sim.set_legacy_phase(&id, Phase::Stopped);
    let rev = sim.legacy_revision(&id);
    let p = plan(&sim.s, at(1), &sim.config);
    assert!(
        p.steps.iter().any(|s| matches!(
            s.writes.as_slice(),
            [Write::StatusUnchanged { at: StatusKey::Legacy, mod_revision, .. }, Write::Unassign { .. }]
                if *mod_revision == rev
        )),
        "{:?}",
        p.steps
    );
    sim.apply(&p);
    // The unassign deleted only the node's (absent) status; the orphaned legacy one goes next.
    let p = plan(&sim.s, at(2), &sim.config);
    assert!(
        p.steps.iter().any(|s| matches!(
            s.writes.as_slice(),
            [Write::DeleteStatus {
                at: StatusKey::Legacy,
                ..
            }]
        )),
        "{:?}",
        p.steps
    );
    sim.apply(&p);
    assert!(sim.s.statuses.is_empty() && sim.s.status_keys.is_empty());
}

#[test]
fn drain_without_surge_stops_one_copy_before_replacing_it() {
    let rounds = drain_rounds(0);
    for (round, (live, running)) in rounds.iter().enumerate() {
        assert!(*live <= 3, "round {round}: {live} live copies > replicas");
        assert!(*running >= 2, "round {round}: more than one copy down");
    }
    assert!(
        rounds.iter().any(|(_, running)| *running == 2),
        "without surge a drain has a gap of one copy: {rounds:?}"
    );
}

#[test]
fn every_removal_on_a_dead_node_is_fenced_on_its_absence() {
    let mut sim = Sim::new();
    for n in ["n1", "n2"] {
        sim.node(n, 4000, &[]);
        sim.set_info(n, |_| {});
    }
    sim.task("web", 4, |_| {});
    sim.converge(at(1));
    sim.kill_node("n2");
    let p = plan(&sim.s, at(2), &sim.config);
    let on_n2: Vec<&Step> = p
        .steps
        .iter()
        .filter(|s| {
            s.writes
                .iter()
                .any(|w| matches!(w, Write::Unassign { node, .. } if node == "n2"))
        })
        .collect();
    assert_eq!(on_n2.len(), 2);
    for step in on_n2 {
        assert!(
            step.writes
                .iter()
                .any(|w| matches!(w, Write::NodeGone { node } if node == "n2")),
            "{step:?}"
        );
    }
    // Removals on live nodes carry no such compare.
    assert!(p.steps.iter().all(|s| !s
        .writes
        .iter()
        .any(|w| matches!(w, Write::NodeGone { node } if node == "n1"))));
}

#[test]
fn an_undecodable_node_stays_alive_and_an_undecodable_assignment_keeps_its_slot() {
    use crate::snapshot::OpaqueAssignment;
    let mut sim = Sim::new();
    for n in ["n1", "n2"] {
        sim.node(n, 4000, &[]);
        sim.set_info(n, |_| {});
    }
    sim.task("web", 4, |_| {});
    sim.converge(at(1));
    // As a fresh leader's re-list leaves them: n2 and one instance on n1 do not decode.
    sim.s.nodes.remove("n2");
    sim.s.opaque_nodes.insert("n2".into());
    let hidden = sim
        .s
        .assignments
        .values()
        .find(|a| a.value.node == "n1")
        .map(|a| (a.value.id.clone(), a.mod_revision))
        .expect("an instance on n1");
    sim.s.assignments.remove(&hidden.0);
    sim.s.opaque_assignments.insert(
        hidden.0.clone(),
        OpaqueAssignment {
            node: "n1".into(),
            mod_revision: hidden.1,
        },
    );
    assert!(
        plan(&sim.s, at(2), &sim.config).is_empty(),
        "nothing moved, nothing added"
    );
    // Scaling up places on n1 only, never reusing the hidden instance's slot.
    sim.task("web", 5, |_| {});
    let p = plan(&sim.s, at(3), &sim.config);
    let placed: Vec<&Instance> = p
        .steps
        .iter()
        .flat_map(|s| &s.writes)
        .filter_map(|w| match w {
            Write::Assign(i) => Some(&**i),
            _ => None,
        })
        .collect();
    assert!(!placed.is_empty());
    assert!(placed.iter().all(|i| i.node == "n1" && i.id != hidden.0));
}

#[test]
fn an_undecodable_assignment_on_a_dead_node_is_replaced_by_key() {
    use crate::snapshot::OpaqueAssignment;
    let mut sim = Sim::new();
    for n in ["n1", "n2"] {
        sim.node(n, 4000, &[]);
        sim.set_info(n, |_| {});
    }
    sim.task("web", 2, |_| {});
    sim.converge(at(1));
    let (id, rev) = sim
        .s
        .assignments
        .values()
        .find(|a| a.value.node == "n2")
        .map(|a| (a.value.id.clone(), a.mod_revision))
        .expect("an instance on n2");
    sim.s.assignments.remove(&id);
    sim.s.opaque_assignments.insert(
        id.clone(),
        OpaqueAssignment {
            node: "n2".into(),
            mod_revision: rev,
        },
    );
    sim.kill_node("n2");
    let p = plan(&sim.s, at(2), &sim.config);
    assert!(p.steps.iter().any(|s| matches!(
        s.writes.as_slice(),
        [Write::Unassign { id: old, node, mod_revision, .. }, Write::Assign(new), Write::NodeGone { .. }]
            if *old == id && node == "n2" && *mod_revision == rev && new.node == "n1"
    )));
}

#[test]
fn a_death_recorded_by_an_older_leader_in_nodeinfo_keeps_its_time_unannounced() {
    let mut sim = Sim::new();
    sim.node("n1", 4000, &[]);
    sim.set_info("gone", |i| i.legacy_dead_since = Some(at(-100)));
    let p = plan(&sim.s, at(1), &sim.config);
    assert!(
        p.events.iter().all(|e| e.reason != "NodeDead"),
        "{:?}",
        p.events
    );
    assert!(p.steps.iter().flat_map(|s| &s.writes).any(|w| matches!(
        w,
        Write::NodeState { state, .. } if state.name == "gone" && state.dead_since == Some(at(-100))
    )));
    // Written back by an operator, the legacy field is gone.
    let json = serde_json::to_string(&sim.s.nodeinfos["gone"].value).expect("encodes");
    assert!(!json.contains("deadSince"), "{json}");
    let old: drover_api::NodeInfo =
        serde_json::from_str(r#"{"name":"x","deadSince":"2026-01-01T00:00:00Z"}"#)
            .expect("decodes");
    assert!(old.legacy_dead_since.is_some());
}
