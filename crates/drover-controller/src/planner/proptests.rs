//! Planner property test: converge, disturb (node deaths, scaling, new generations, deletes,
//! cordons, failures), converge again; check the invariants and that a new leader planning from
//! the same snapshot has nothing to do. Every plan on the way is checked against the copy
//! budget: no new copy of a service while its live copies fill `replicas + update.maxSurge`.

use std::collections::BTreeMap;

use drover_api::{Cpu, Phase};
use proptest::prelude::*;

use super::sim::{at, Sim};
use super::*;

#[derive(Debug, Clone)]
enum Disturb {
    KillNode(usize),
    AddNode(u64),
    Scale(usize, u32),
    Bump(usize),
    Delete(usize),
    Cordon(usize),
    Drain(usize),
    Fail(usize),
}

fn disturb() -> impl Strategy<Value = Disturb> {
    prop_oneof![
        (0usize..5).prop_map(Disturb::KillNode),
        (500u64..4000).prop_map(Disturb::AddNode),
        (0usize..4, 0u32..6).prop_map(|(t, r)| Disturb::Scale(t, r)),
        (0usize..4).prop_map(Disturb::Bump),
        (0usize..4).prop_map(Disturb::Delete),
        (0usize..5).prop_map(Disturb::Cordon),
        (0usize..5).prop_map(Disturb::Drain),
        (0usize..20).prop_map(Disturb::Fail),
    ]
}

fn check_invariants(sim: &Sim) -> Result<(), TestCaseError> {
    let mut used: BTreeMap<&str, u64> = BTreeMap::new();
    for a in sim.s.assignments.values() {
        prop_assert!(
            sim.s.nodes.contains_key(&a.value.node),
            "{} on a dead node",
            a.value.id
        );
        *used.entry(a.value.node.as_str()).or_default() += a.value.spec.resources.cpu.as_millis();
        let node = &sim.s.nodes[&a.value.node].value;
        for (k, v) in &a.value.spec.node_selector {
            prop_assert_eq!(node.labels.get(k), Some(v));
        }
        let task = sim
            .s
            .tasks
            .get(&TaskRef::new(&a.value.namespace, &a.value.task));
        // Every copy runs the task's template (a change to labels or priority alone moves
        // nothing, so its generation may be older),
        let tr = TaskRef::new(&a.value.namespace, &a.value.task);
        // unless the new template fits nowhere (the old copy keeps serving rather than leave
        // nothing running) or its rollout failed (a failed rollout holds).
        let pending = sim.s.taskstates.get(&tr).is_some_and(|s| {
            s.value.state.pending_reason.is_some()
                || s.value
                    .state
                    .rollout
                    .as_ref()
                    .is_some_and(|r| r.phase == drover_api::RolloutPhase::Failed)
        });
        let runs_template = task.is_some_and(|t| {
            (pending || t.value.spec.template_hash() == a.value.spec.template_hash())
                && t.value.metadata.generation >= a.value.generation
        });
        prop_assert!(runs_template, "{} runs another template", a.value.id);
    }
    for (n, cpu) in used {
        prop_assert!(
            cpu <= sim.s.nodes[n].value.capacity.cpu.as_millis(),
            "{} over-committed",
            n
        );
    }
    for (tr, t) in &sim.s.tasks {
        let have = sim
            .s
            .assignments
            .values()
            .filter(|a| a.value.task == tr.name)
            .count();
        let dead = sim
            .s
            .deadletters
            .values()
            .filter(|d| {
                d.value.letter.task == tr.name && d.value.generation == t.value.metadata.generation
            })
            .count();
        let want = (t.value.spec.replicas as usize).saturating_sub(dead);
        let pending = sim
            .s
            .taskstates
            .get(tr)
            .and_then(|s| s.value.state.pending_reason.clone());
        prop_assert!(have <= want);
        prop_assert!(
            have == want || pending.is_some(),
            "{}: {} of {} and no pending reason",
            tr,
            have,
            want
        );
    }
    Ok(())
}

/// No plan adds a copy of a service beyond its budget, counting every copy that may be live
/// (stopping ones included).
fn check_budget(s: &Snapshot, p: &Plan) -> Result<(), TestCaseError> {
    let mut new: BTreeMap<TaskRef, usize> = BTreeMap::new();
    for w in p.steps.iter().flat_map(|s| &s.writes) {
        if let Write::Assign(i) = w {
            if i.run.is_none() {
                *new.entry(TaskRef::new(&i.namespace, &i.task)).or_default() += 1;
            }
        }
    }
    for (task, added) in new {
        let Some(t) = s.tasks.get(&task) else {
            continue;
        };
        let live = s
            .assignments
            .values()
            .filter(|a| a.value.namespace == task.namespace && a.value.task == task.name)
            .filter(|a| !s.copy_gone(&a.value.id, &a.value.node))
            .count();
        let cap = t.value.spec.replicas as usize
            + t.value.spec.update.budget(t.value.spec.replicas).surge as usize;
        prop_assert!(
            live + added <= cap,
            "{}: {} live + {} new copies > {} (replicas + surge)",
            task,
            live,
            added,
            cap
        );
    }
    Ok(())
}

/// [`Sim::converge`], checking every plan against the copy budget.
fn converge_checked(sim: &mut Sim, now: i64) -> Result<(), TestCaseError> {
    for _ in 0..40 {
        let p = plan(&sim.s, at(now), &sim.config);
        if p.is_empty() {
            return Ok(());
        }
        check_budget(&sim.s, &p)?;
        sim.apply(&p);
    }
    Err(TestCaseError::fail("did not converge in 40 rounds"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn converges_and_a_new_leader_changes_nothing(
        nodes in prop::collection::vec((500u64..4000, prop::bool::ANY), 1..5),
        tasks in prop::collection::vec((0u32..6, 100u64..1500, prop::bool::ANY, 0u8..=100), 1..4),
        disturbances in prop::collection::vec(disturb(), 0..6),
    ) {
        let mut sim = Sim::new();
        for (i, (cpu, ssd)) in nodes.iter().enumerate() {
            let labels: &[(&str, &str)] = if *ssd { &[("disk", "ssd")] } else { &[] };
            sim.node(&format!("n{i}"), *cpu, labels);
        }
        for (i, (replicas, cpu, sel, prio)) in tasks.iter().enumerate() {
            sim.task(&format!("t{i}"), *replicas, |s| {
                s.resources.cpu = Cpu::millis(*cpu);
                s.priority = *prio;
                s.update.max_surge = drover_api::Budget::Count(u32::from(*prio % 2));
                if *sel { s.node_selector.insert("disk".into(), "ssd".into()); }
            });
        }
        let mut now = 0;
        converge_checked(&mut sim, now)?;
        check_invariants(&sim)?;
        let mut extra = nodes.len();
        for d in disturbances {
            now += 10_000;
            let node_names: Vec<String> = sim.s.nodes.keys().cloned().collect();
            let task_names: Vec<String> = sim.s.tasks.keys().map(|t| t.name.clone()).collect();
            match d {
                Disturb::KillNode(i) if !node_names.is_empty() => sim.kill_node(&node_names[i % node_names.len()]),
                Disturb::AddNode(cpu) => { sim.node(&format!("n{extra}"), cpu, &[]); extra += 1; }
                Disturb::Scale(i, r) if !task_names.is_empty() => sim.task(&task_names[i % task_names.len()].clone(), r, |_| {}),
                Disturb::Bump(i) if !task_names.is_empty() => {
                    let name = task_names[i % task_names.len()].clone();
                    let spec = sim.s.tasks[&TaskRef::new("default", &name)].value.spec.clone();
                    sim.task(&name, spec.replicas, |s| *s = spec);
                }
                Disturb::Delete(i) if !task_names.is_empty() => {
                    sim.bump();
                    sim.s.tasks.remove(&TaskRef::new("default", &task_names[i % task_names.len()]));
                }
                Disturb::Cordon(i) if !node_names.is_empty() => sim.set_info(&node_names[i % node_names.len()], |n| n.cordoned = true),
                Disturb::Drain(i) if !node_names.is_empty() => sim.set_info(&node_names[i % node_names.len()], |n| { n.cordoned = true; n.draining = true; }),
                Disturb::Fail(i) => {
                    let ids: Vec<_> = sim.s.assignments.keys().cloned().collect();
                    if !ids.is_empty() {
                        sim.set_phase(&ids[i % ids.len()], Phase::Failed, Some(at(now - 10_000)));
                    }
                }
                _ => {}
            }
            converge_checked(&mut sim, now)?;
            check_invariants(&sim)?;
            // Failover: a fresh planner on the same snapshot, later, has nothing to do.
            prop_assert!(plan(&sim.s, at(now + 1), &sim.config).is_empty());
        }
    }
}
