//! Planner tests for jobs, scheduled and triggered tasks, one rule each, against the simulated
//! etcd in `sim.rs`.

use drover_api::{
    ConcurrencyPolicy, HumanDuration, Phase, RestartPolicy, RunCause, RunOutcome, TaskSpec,
    Trigger, TriggerRequest,
};
use drover_store::Versioned;

use super::sim::{at, Sim};
use super::*;

fn tr(name: &str) -> TaskRef {
    TaskRef::new("default", name)
}

fn job(s: &mut TaskSpec) {
    s.restart_policy = RestartPolicy::Never;
}

fn manual(s: &mut TaskSpec) {
    job(s);
    s.trigger = Some(Trigger::Manual);
}

fn every(secs: u64) -> impl FnOnce(&mut TaskSpec) {
    move |s| {
        job(s);
        s.every = Some(HumanDuration::from_std(std::time::Duration::from_secs(
            secs,
        )));
    }
}

fn trigger(sim: &mut Sim, name: &str, id: &str, cause: RunCause) {
    let rev = sim.bump();
    let req = TriggerRequest {
        requested_at: at(0),
        cause,
        by: "test".into(),
    };
    sim.s.triggers.entry(tr(name)).or_default().insert(
        id.into(),
        Versioned {
            key: String::new(),
            value: req,
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: None,
        },
    );
}

fn runs(sim: &Sim, name: &str) -> Vec<RunRecord> {
    sim.s
        .runs
        .get(&tr(name))
        .map(|m| m.values().map(|v| v.value.clone()).collect())
        .unwrap_or_default()
}

fn state(sim: &Sim, name: &str) -> drover_api::TaskState {
    sim.s.taskstates[&tr(name)].value.state.clone()
}

/// Ends every instance of `name` with `phase` at `t`.
fn end_all(sim: &mut Sim, name: &str, phase: Phase, t: i64) {
    for id in sim.ids(name) {
        sim.set_phase(&id, phase, Some(at(t)));
    }
}

fn step(sim: &mut Sim, t: i64) -> Plan {
    let p = plan(&sim.s, at(t), &sim.config);
    sim.apply(&p);
    p
}

fn sim() -> Sim {
    let mut sim = Sim::new();
    sim.node("n1", 4000, &[]);
    sim
}

#[test]
fn a_job_runs_once_per_generation_and_its_run_is_recorded() {
    let mut sim = sim();
    sim.task("once", 2, job);
    let p = step(&mut sim, 1);
    assert_eq!(p.placed, 2);
    assert_eq!(state(&sim, "once").last_run, Some(1));
    let r = runs(&sim, "once");
    assert_eq!((r.len(), r[0].cause, r[0].attempt), (1, RunCause::Apply, 1));
    assert!(
        plan(&sim.s, at(2), &sim.config).is_empty(),
        "going: nothing to do"
    );
    end_all(&mut sim, "once", Phase::Succeeded, 3);
    sim.converge(at(4));
    let r = runs(&sim, "once");
    assert_eq!(r[0].outcome, Some(RunOutcome::Succeeded));
    assert_eq!(r[0].finished_at, Some(at(4)));
    // The finished record names where each instance ran, for `drover logs --run`.
    let nodes: Vec<(&str, &str)> = r[0]
        .nodes
        .iter()
        .map(|(i, n)| (i.as_str(), n.as_str()))
        .collect();
    assert_eq!(
        nodes,
        [("default.once.r1.0", "n1"), ("default.once.r1.1", "n1")]
    );
    assert!(sim.ids("once").is_empty() && sim.s.statuses.is_empty());
    assert_eq!(
        state(&sim, "once").last_outcome,
        Some(RunOutcome::Succeeded)
    );
    assert_eq!(runs(&sim, "once").len(), 1, "no second run");
    // A new generation that changes only priority or parallelism does not run it again...
    sim.task("once", 1, |s| {
        job(s);
        s.priority = 90;
    });
    step(&mut sim, 10);
    assert_eq!(runs(&sim, "once").len(), 1, "same template: no second run");
    // ...one that changes what runs does.
    sim.task("once", 1, |s| {
        job(s);
        s.env.insert("V".into(), "2".into());
    });
    step(&mut sim, 11);
    assert_eq!(runs(&sim, "once").len(), 2);
}

#[test]
fn every_ticks_and_forbid_skips_a_tick_that_finds_a_run_going() {
    let mut sim = sim();
    sim.task("tick", 1, every(10));
    let p = step(&mut sim, 0);
    assert_eq!(p.placed, 0);
    assert_eq!(state(&sim, "tick").next_run_at, Some(at(10)));
    assert_eq!(p.requeue_at, Some(at(10)));
    step(&mut sim, 10);
    assert_eq!(runs(&sim, "tick").len(), 1);
    assert_eq!(state(&sim, "tick").next_run_at, Some(at(20)));
    let p = step(&mut sim, 21);
    assert!(p.events.iter().any(|e| e.reason == "Skipped"));
    assert_eq!(runs(&sim, "tick").len(), 1);
    assert_eq!(state(&sim, "tick").next_run_at, Some(at(30)));
    end_all(&mut sim, "tick", Phase::Succeeded, 25);
    sim.converge(at(26));
    step(&mut sim, 30);
    assert_eq!(runs(&sim, "tick").len(), 2);
}

#[test]
fn missed_ticks_start_one_catch_up_run_only_within_the_starting_deadline() {
    let mut sim = sim();
    sim.task("tick", 1, every(10));
    step(&mut sim, 0);
    // No leader from 10 to 95: one catch-up run, next tick at 100.
    let p = step(&mut sim, 95);
    assert_eq!(p.placed, 1);
    assert_eq!(state(&sim, "tick").next_run_at, Some(at(100)));

    let mut sim = self::sim();
    sim.task("tick", 1, |s| {
        every(10)(s);
        s.starting_deadline_seconds = Some(3);
    });
    step(&mut sim, 0);
    let p = step(&mut sim, 95);
    assert_eq!(p.placed, 0, "last tick 90 is 5s late, deadline 3s");
    assert!(p.events.iter().any(|e| e.reason == "Skipped"));
    assert_eq!(state(&sim, "tick").next_run_at, Some(at(100)));
    assert_eq!(step(&mut sim, 101).placed, 1);
}

#[test]
fn a_failed_run_is_retried_with_backoff_then_dead_lettered_with_its_exit_code() {
    let mut sim = sim();
    sim.task("flaky", 1, |s| {
        job(s);
        s.max_retries = 1;
    });
    step(&mut sim, 0);
    end_all(&mut sim, "flaky", Phase::Failed, 1);
    sim.converge(at(1));
    assert_eq!(runs(&sim, "flaky")[0].outcome, Some(RunOutcome::Failed));
    assert_eq!(runs(&sim, "flaky")[0].exit_code, Some(1));
    // Base delay 1 s after finished_at (1).
    let p = plan(&sim.s, at(1), &sim.config);
    assert_eq!(p.placed, 0);
    assert_eq!(p.requeue_at, Some(at(2)));
    step(&mut sim, 2);
    let r = runs(&sim, "flaky");
    assert_eq!((r[1].cause, r[1].attempt), (RunCause::Retry, 2));
    end_all(&mut sim, "flaky", Phase::Failed, 3);
    sim.converge(at(3));
    assert_eq!(sim.s.deadletters.len(), 1);
    let dl = &sim.s.deadletters.values().next().expect("one").value.letter;
    assert_eq!((dl.run, dl.attempts, dl.exit_code), (Some(2), 2, Some(1)));
    assert_eq!(sim.converge(at(100)), 0, "no more runs");
    // `drover retry`: a trigger with cause Retry runs it again.
    trigger(&mut sim, "flaky", "00001-a", RunCause::Retry);
    step(&mut sim, 101);
    let r = runs(&sim, "flaky");
    assert_eq!((r.len(), r[2].cause, r[2].attempt), (3, RunCause::Retry, 1));
    assert!(sim
        .s
        .triggers
        .get(&tr("flaky"))
        .is_none_or(|m| m.is_empty()));
}

#[test]
fn the_circuit_breaker_suspends_and_enable_resumes() {
    let mut sim = sim();
    sim.task("bad", 1, |s| {
        manual(s);
        s.max_consecutive_failures = Some(2);
    });
    for (i, t) in [(1, 0), (2, 10)] {
        trigger(&mut sim, "bad", &format!("{i:05}"), RunCause::Trigger);
        step(&mut sim, t);
        end_all(&mut sim, "bad", Phase::Failed, t + 1);
        let p = step(&mut sim, t + 1);
        assert_eq!(p.events.iter().any(|e| e.reason == "Suspended"), i == 2);
    }
    let st = state(&sim, "bad");
    assert!(st.suspended && st.consecutive_failures == 2, "{st:?}");
    trigger(&mut sim, "bad", "00003", RunCause::Trigger);
    assert_eq!(step(&mut sim, 20).placed, 0, "suspended: no run");
    assert!(state(&sim, "bad").pending_reason.is_some());
    // What `drover enable` writes.
    let mut rec = sim.s.taskstates[&tr("bad")].value.clone();
    rec.state.suspended = false;
    rec.state.suspended_reason = None;
    rec.state.consecutive_failures = 0;
    let rev = sim.bump();
    let v = sim.s.taskstates.get_mut(&tr("bad")).expect("state");
    v.value = rec;
    v.mod_revision = rev;
    assert_eq!(step(&mut sim, 21).placed, 1, "resumed");
}

#[test]
fn a_trigger_during_a_forbid_run_is_refused_and_allow_runs_both() {
    let mut sim = sim();
    sim.task("m", 1, manual);
    trigger(&mut sim, "m", "00001", RunCause::Trigger);
    step(&mut sim, 0);
    trigger(&mut sim, "m", "00002", RunCause::Trigger);
    let p = step(&mut sim, 1);
    assert!(p.events.iter().any(|e| e.reason == "TriggerRefused"));
    assert_eq!(runs(&sim, "m").len(), 1);
    assert!(sim.s.triggers[&tr("m")].is_empty());

    sim.task("m", 1, |s| {
        manual(s);
        s.concurrency_policy = ConcurrencyPolicy::Allow;
    });
    trigger(&mut sim, "m", "00003", RunCause::Trigger);
    step(&mut sim, 2);
    assert_eq!(runs(&sim, "m").len(), 2);
}

#[test]
fn replace_cancels_the_going_run_then_starts_the_new_one() {
    let mut sim = sim();
    sim.task("r", 1, |s| {
        manual(s);
        s.concurrency_policy = ConcurrencyPolicy::Replace;
    });
    trigger(&mut sim, "r", "00001", RunCause::Trigger);
    step(&mut sim, 0);
    trigger(&mut sim, "r", "00002", RunCause::Trigger);
    sim.converge(at(1));
    let r = runs(&sim, "r");
    assert_eq!(r[0].outcome, Some(RunOutcome::Cancelled));
    assert_eq!((r.len(), r[1].outcome), (2, None));
    assert_eq!(sim.ids("r").len(), 1);
}

#[test]
fn the_controller_ends_a_run_past_its_deadline_as_deadline_exceeded() {
    let mut sim = sim();
    sim.task("slow", 1, |s| {
        job(s);
        s.timeout_seconds = Some(2);
        s.termination_grace_period_seconds = 1;
    });
    step(&mut sim, 0);
    let p = plan(&sim.s, at(1), &sim.config);
    assert_eq!(p.requeue_at, Some(at(8)));
    sim.converge(at(8));
    let r = runs(&sim, "slow");
    assert_eq!(r[0].outcome, Some(RunOutcome::DeadlineExceeded));
    assert!(sim.ids("slow").is_empty());
    assert_eq!(
        state(&sim, "slow").last_outcome,
        Some(RunOutcome::DeadlineExceeded)
    );

    // The agent's own report wins when it comes first.
    sim.task("slow", 1, |s| {
        job(s);
        s.timeout_seconds = Some(2);
    });
    step(&mut sim, 10);
    for id in sim.ids("slow") {
        sim.set_phase(&id, Phase::Failed, Some(at(12)));
        let s = std::sync::Arc::make_mut(sim.s.statuses.get_mut(&id).expect("status"));
        s.value.reason = Some("DeadlineExceeded".into());
    }
    sim.converge(at(12));
    assert_eq!(
        runs(&sim, "slow")[1].outcome,
        Some(RunOutcome::DeadlineExceeded)
    );
}

#[test]
fn depends_on_holds_a_due_run_until_the_dependency_succeeded() {
    let mut sim = sim();
    sim.task("fetch", 1, manual);
    sim.task("process", 1, |s| {
        manual(s);
        s.depends_on = vec!["fetch".into()];
    });
    trigger(&mut sim, "process", "00001", RunCause::Trigger);
    trigger(&mut sim, "fetch", "00001", RunCause::Trigger);
    step(&mut sim, 0);
    assert!(runs(&sim, "process").is_empty());
    assert_eq!(
        state(&sim, "process").pending_reason.as_deref(),
        Some("waiting for dependency fetch: it is running")
    );
    end_all(&mut sim, "fetch", Phase::Failed, 1);
    sim.converge(at(1));
    assert!(runs(&sim, "process").is_empty());
    assert_eq!(
        state(&sim, "process").pending_reason.as_deref(),
        Some("waiting for dependency fetch: its last run Failed")
    );
    trigger(&mut sim, "fetch", "00002", RunCause::Trigger);
    step(&mut sim, 2);
    end_all(&mut sim, "fetch", Phase::Succeeded, 3);
    sim.converge(at(3));
    let r = runs(&sim, "process");
    assert_eq!(r.len(), 1, "the held trigger runs once the gate opens");
    assert_eq!(state(&sim, "process").pending_reason, None);
}

#[test]
fn mutually_blocking_tasks_never_start_together_and_priority_wins() {
    let mut sim = sim();
    sim.task("a-import", 1, |s| {
        manual(s);
        s.blocks = vec!["b-cleanup".into()];
    });
    sim.task("b-cleanup", 1, |s| {
        manual(s);
        s.priority = 60;
    });
    trigger(&mut sim, "a-import", "00001", RunCause::Trigger);
    trigger(&mut sim, "b-cleanup", "00001", RunCause::Trigger);
    step(&mut sim, 0);
    assert_eq!(runs(&sim, "b-cleanup").len(), 1, "higher priority first");
    assert!(runs(&sim, "a-import").is_empty());
    assert_eq!(
        state(&sim, "a-import").pending_reason.as_deref(),
        Some("Blocked by b-cleanup")
    );
    end_all(&mut sim, "b-cleanup", Phase::Succeeded, 1);
    sim.converge(at(1));
    assert_eq!(runs(&sim, "a-import").len(), 1);
}

#[test]
fn run_history_is_bounded_by_history_limit() {
    let mut sim = sim();
    sim.task("h", 1, |s| {
        manual(s);
        s.history_limit = 2;
    });
    for i in 0..4 {
        trigger(&mut sim, "h", &format!("{i:05}"), RunCause::Trigger);
        step(&mut sim, i * 10);
        end_all(&mut sim, "h", Phase::Succeeded, i * 10 + 1);
        sim.converge(at(i * 10 + 1));
    }
    let nums: Vec<u64> = runs(&sim, "h").iter().map(|r| r.run).collect();
    assert_eq!(nums, vec![3, 4]);
    assert_eq!(state(&sim, "h").last_run, Some(4));
}

#[test]
fn a_preempting_task_evicts_the_fewest_lower_priority_instances_then_is_placed() {
    let mut sim = Sim::new();
    sim.node("a", 1000, &[("pool", "a")]);
    sim.node("b", 1000, &[("pool", "b")]);
    // a: three 300m low (two victims needed); b: one 800m low (one victim needed).
    sim.task("low-big", 1, |s| {
        s.priority = 10;
        s.resources.cpu = drover_api::Cpu::millis(800);
        s.node_selector.insert("pool".into(), "b".into());
    });
    sim.task("low-small", 3, |s| {
        s.priority = 10;
        s.resources.cpu = drover_api::Cpu::millis(300);
        s.node_selector.insert("pool".into(), "a".into());
    });
    sim.converge(at(0));
    assert_eq!(sim.ids("low-small").len(), 3);
    sim.task("high", 1, |s| {
        s.priority = 90;
        s.preemption = true;
        s.resources.cpu = drover_api::Cpu::millis(600);
    });
    let p = step(&mut sim, 1);
    let preempted: Vec<_> = p
        .events
        .iter()
        .filter(|e| e.reason == "Preempted")
        .collect();
    assert_eq!(preempted.len(), 2, "one victim, an event on each task");
    assert!(preempted[0].message.contains("low-big") && preempted[0].message.contains("high"));
    // The victim is asked to stop and keeps its room until its agent reports it gone; the
    // plans in between evict nothing more.
    assert_eq!(sim.ids("low-big").len(), 1);
    let p = step(&mut sim, 2);
    assert!(p.events.iter().all(|e| e.reason != "Preempted"));
    assert!(sim.ids("low-big").is_empty());
    assert_eq!(
        sim.per_node("high").into_keys().collect::<Vec<_>>(),
        vec!["b".to_owned()]
    );
    assert_eq!(sim.ids("low-small").len(), 3, "the others stay");

    // Without `preemption`, nothing is evicted.
    let mut sim = Sim::new();
    sim.node("n1", 1000, &[]);
    sim.task("low", 1, |s| {
        s.priority = 10;
        s.resources.cpu = drover_api::Cpu::millis(800);
    });
    sim.converge(at(0));
    sim.task("high", 1, |s| {
        s.priority = 90;
        s.resources.cpu = drover_api::Cpu::millis(600);
    });
    let p = step(&mut sim, 1);
    assert!(p.events.iter().all(|e| e.reason != "Preempted"));
    assert_eq!(sim.ids("low").len(), 1);
}

#[test]
fn a_run_finished_by_node_loss_is_fenced_on_the_node_staying_dead() {
    let mut sim = sim();
    sim.task("once", 1, job);
    step(&mut sim, 1);
    sim.kill_node("n1");
    let p = plan(&sim.s, at(2), &sim.config);
    let finishing = p
        .steps
        .iter()
        .find(|s| {
            s.writes.iter().any(
                |w| matches!(w, Write::PutRun { record, .. } if record.outcome == Some(RunOutcome::Failed)),
            )
        })
        .expect("the run finishes as Failed");
    assert!(finishing
        .writes
        .iter()
        .any(|w| matches!(w, Write::NodeGone { node } if node == "n1")));
    let removal = p
        .steps
        .iter()
        .find(|s| s.writes.iter().any(|w| matches!(w, Write::Unassign { .. })))
        .expect("the instance is removed");
    assert!(removal
        .writes
        .iter()
        .any(|w| matches!(w, Write::NodeGone { node } if node == "n1")));
}
