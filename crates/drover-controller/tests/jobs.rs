//! Work beyond services through the running controller against a real etcd: `every` schedules
//! without overlap, `dependsOn`, `blocks`, the circuit breaker, retries and dead letters,
//! manual triggers, and a leader change mid-run. A fake agent runs job instances by script.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use common::{eventually, within, Env, FakeAgent, Replica, TTL};
use drover_api::records::DeadLetterRecord;
use drover_api::{
    Event, HumanDuration, RestartPolicy, RunCause, RunOutcome, RunRecord, TaskSpec, TaskState,
    Trigger, TriggerRequest,
};
use drover_store::{Cmp, Op, Txn};

const NODE_TTL: Duration = Duration::from_secs(10);
const LONG: Duration = Duration::from_secs(30);

fn job() -> TaskSpec {
    TaskSpec {
        command: vec!["/bin/sleep".into(), "1".into()],
        restart_policy: RestartPolicy::Never,
        ..TaskSpec::default()
    }
}

fn manual() -> TaskSpec {
    TaskSpec {
        trigger: Some(Trigger::Manual),
        ..job()
    }
}

fn every(d: Duration) -> TaskSpec {
    TaskSpec {
        every: Some(HumanDuration::from_std(d)),
        ..job()
    }
}

async fn cluster(nodes: &[&str]) -> (Env, FakeAgent, Replica) {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    for n in nodes {
        env.node(&agent, n, 4000, &[], NODE_TTL).await;
    }
    let c = env.replica("c1").await;
    (env, agent, c)
}

async fn runs(env: &Env, task: &str) -> Vec<RunRecord> {
    let l = within(
        "list runs",
        env.store
            .list::<RunRecord>(&env.keys.runs_of("default", task)),
    )
    .await
    .expect("list runs");
    l.items.into_iter().map(|v| v.value).collect()
}

async fn finished(env: &Env, task: &str) -> Vec<RunRecord> {
    let mut r = runs(env, task).await;
    r.retain(|r| r.finished_at.is_some());
    r
}

async fn state(env: &Env, task: &str) -> TaskState {
    within(
        "get taskstate",
        env.store
            .get::<TaskState>(&env.keys.taskstate("default", task)),
    )
    .await
    .expect("get taskstate")
    .map(|v| v.value)
    .unwrap_or_default()
}

async fn events(env: &Env, reason: &str) -> Vec<Event> {
    let l = within(
        "list events",
        env.store.list::<Event>(&env.keys.events_in("default")),
    )
    .await
    .expect("list events");
    l.items
        .into_iter()
        .map(|v| v.value)
        .filter(|e| e.reason == reason)
        .collect()
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// What `drover trigger` / `drover retry` write.
async fn trigger(env: &Env, task: &str, cause: RunCause) {
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let id = format!("{nanos:020}-{}", SEQ.fetch_add(1, Ordering::SeqCst));
    let req = TriggerRequest {
        requested_at: Utc::now(),
        cause,
        by: "test".into(),
    };
    within(
        "put trigger",
        env.store
            .put(&env.keys.trigger("default", task, &id), &req, None),
    )
    .await
    .expect("put trigger");
}

/// Asserts that no two runs overlap: each starts after the previous one finished.
fn assert_no_overlap(mut all: Vec<RunRecord>) {
    all.sort_by_key(|r| r.started_at);
    for w in all.windows(2) {
        let end = w[0].finished_at.expect("earlier run finished");
        assert!(
            w[1].started_at >= end,
            "{}/{} started at {} before {}/{} finished at {end}",
            w[1].task,
            w[1].run,
            w[1].started_at,
            w[0].task,
            w[0].run
        );
    }
}

#[tokio::test]
async fn every_runs_repeatedly_and_forbid_runs_never_overlap() {
    let (env, agent, _c) = cluster(&["n1"]).await;
    agent.script("quick", Duration::from_millis(200), 0);
    agent.script("long", Duration::from_millis(2500), 0);
    env.apply("quick", every(Duration::from_secs(1))).await;
    env.apply("long", every(Duration::from_secs(1))).await;
    eventually("quick ran 3 times", LONG, || async {
        (finished(&env, "quick").await.len() >= 3).then_some(())
    })
    .await;
    eventually("long ran 3 times", LONG, || async {
        (finished(&env, "long").await.len() >= 3).then_some(())
    })
    .await;
    let long = finished(&env, "long").await;
    assert!(long
        .iter()
        .all(|r| r.outcome == Some(RunOutcome::Succeeded)));
    assert!(long.iter().all(|r| r.cause == RunCause::Schedule));
    assert_no_overlap(long);
    assert!(
        !events(&env, "Skipped").await.is_empty(),
        "ticks were skipped"
    );
    assert!(state(&env, "quick").await.next_run_at.is_some());
}

#[tokio::test]
async fn depends_on_waits_for_a_successful_fetch_and_says_why() {
    let (env, agent, _c) = cluster(&["n1"]).await;
    agent.script("fetch", Duration::from_millis(300), 1);
    env.apply("fetch", manual()).await;
    env.apply(
        "process",
        TaskSpec {
            depends_on: vec!["fetch".into()],
            ..manual()
        },
    )
    .await;
    trigger(&env, "process", RunCause::Trigger).await;
    trigger(&env, "fetch", RunCause::Trigger).await;
    eventually("fetch failed", LONG, || async {
        let f = finished(&env, "fetch").await;
        (f.first()?.outcome == Some(RunOutcome::Failed)).then_some(())
    })
    .await;
    let why = eventually("process waits with a reason", LONG, || async {
        state(&env, "process").await.pending_reason
    })
    .await;
    eventually("process says fetch failed", LONG, || async {
        let why = state(&env, "process").await.pending_reason?;
        (why == "waiting for dependency fetch: its last run Failed").then_some(())
    })
    .await;
    assert!(why.starts_with("waiting for dependency fetch"), "{why}");
    assert!(runs(&env, "process").await.is_empty(), "process never ran");

    agent.script("fetch", Duration::from_millis(300), 0);
    trigger(&env, "fetch", RunCause::Trigger).await;
    let p = eventually("process ran", LONG, || async {
        finished(&env, "process").await.into_iter().next()
    })
    .await;
    let fetched = finished(&env, "fetch").await;
    let ok = fetched
        .iter()
        .find(|r| r.outcome == Some(RunOutcome::Succeeded))
        .expect("fetch succeeded");
    assert!(p.started_at >= ok.finished_at.expect("finished"));
    assert_eq!(runs(&env, "process").await.len(), 1);
    assert_eq!(state(&env, "process").await.pending_reason, None);
}

#[tokio::test]
async fn mutually_blocking_tasks_triggered_together_never_overlap() {
    let (env, agent, _c) = cluster(&["n1", "n2", "n3"]).await;
    agent.script("import", Duration::from_millis(500), 0);
    agent.script("cleanup", Duration::from_millis(500), 0);
    env.apply(
        "import",
        TaskSpec {
            blocks: vec!["cleanup".into()],
            ..manual()
        },
    )
    .await;
    env.apply("cleanup", manual()).await;
    for round in 1..=3 {
        trigger(&env, "import", RunCause::Trigger).await;
        trigger(&env, "cleanup", RunCause::Trigger).await;
        eventually("both ran", LONG, || async {
            let a = finished(&env, "import").await.len();
            let b = finished(&env, "cleanup").await.len();
            (a >= round && b >= round).then_some(())
        })
        .await;
    }
    let mut all = runs(&env, "import").await;
    all.extend(runs(&env, "cleanup").await);
    assert_eq!(all.len(), 6);
    assert_no_overlap(all);
    let blocked = events(&env, "Waiting").await;
    assert!(blocked.iter().any(|e| e.message.starts_with("Blocked by")));
}

#[tokio::test]
async fn three_failed_runs_in_a_row_suspend_and_enable_resumes() {
    let (env, agent, _c) = cluster(&["n1"]).await;
    agent.script("bad", Duration::from_millis(100), 1);
    env.apply(
        "bad",
        TaskSpec {
            max_consecutive_failures: Some(3),
            ..every(Duration::from_secs(1))
        },
    )
    .await;
    eventually("suspended", LONG, || async {
        state(&env, "bad").await.suspended.then_some(())
    })
    .await;
    let r = runs(&env, "bad").await;
    assert_eq!(r.len(), 3, "suspended after the third failed run");
    assert!(r.iter().all(|r| r.outcome == Some(RunOutcome::Failed)));
    let st = state(&env, "bad").await;
    assert_eq!(st.consecutive_failures, 3);
    assert!(st.suspended_reason.is_some());
    assert!(!events(&env, "Suspended").await.is_empty());
    // The next tick comes due and is held, not run.
    eventually("a due tick is held", LONG, || async {
        let why = state(&env, "bad").await.pending_reason?;
        why.starts_with("suspended").then_some(())
    })
    .await;
    assert_eq!(runs(&env, "bad").await.len(), 3);

    // What `drover enable` writes: a CAS keeping every other field.
    let key = env.keys.taskstate("default", "bad");
    let cur = within("get", env.store.get::<serde_json::Value>(&key))
        .await
        .expect("get")
        .expect("taskstate");
    let mut v = cur.value.clone();
    v["suspended"] = serde_json::json!(false);
    v["suspendedReason"] = serde_json::Value::Null;
    v["consecutiveFailures"] = serde_json::json!(0);
    let txn = Txn::new()
        .when(Cmp::ModRevision(key.clone(), cur.mod_revision))
        .op(Op::put(key, &v, None).expect("encode"));
    let out = within("enable", env.store.commit(txn, None))
        .await
        .expect("commit");
    assert!(out.succeeded);
    eventually("runs again", LONG, || async {
        (runs(&env, "bad").await.len() >= 4).then_some(())
    })
    .await;
}

#[tokio::test]
async fn exhausted_retries_dead_letter_with_the_exit_code_and_a_retry_runs_again() {
    let (env, agent, _c) = cluster(&["n1"]).await;
    agent.script("flaky", Duration::from_millis(100), 7);
    env.apply(
        "flaky",
        TaskSpec {
            max_retries: 2,
            ..job()
        },
    )
    .await;
    let dl = eventually("dead-lettered", LONG, || async {
        let l = env
            .store
            .list::<DeadLetterRecord>(&env.keys.deadletters())
            .await
            .ok()?;
        l.items.into_iter().next()
    })
    .await;
    assert_eq!(dl.value.letter.exit_code, Some(7));
    assert_eq!(dl.value.letter.run, Some(3));
    assert_eq!(dl.value.letter.attempts, 3);
    let r = runs(&env, "flaky").await;
    let attempts: Vec<(u32, RunCause)> = r.iter().map(|r| (r.attempt, r.cause)).collect();
    assert_eq!(
        attempts,
        vec![
            (1, RunCause::Apply),
            (2, RunCause::Retry),
            (3, RunCause::Retry)
        ]
    );
    assert!(r.iter().all(|r| r.exit_code == Some(7)));

    // `drover retry`: delete the dead letter and write a Retry trigger, in one txn.
    agent.script("flaky", Duration::from_millis(100), 0);
    trigger(&env, "flaky", RunCause::Retry).await;
    within("delete dl", env.store.delete(&dl.key))
        .await
        .expect("delete");
    let again = eventually("ran again", LONG, || async {
        finished(&env, "flaky")
            .await
            .into_iter()
            .find(|r| r.run == 4)
    })
    .await;
    assert_eq!(
        (again.cause, again.outcome),
        (RunCause::Retry, Some(RunOutcome::Succeeded))
    );
}

#[tokio::test]
async fn a_manual_trigger_runs_once_and_a_second_during_the_run_is_refused() {
    let (env, agent, _c) = cluster(&["n1"]).await;
    agent.script("report", Duration::from_millis(1500), 0);
    env.apply("report", manual()).await;
    trigger(&env, "report", RunCause::Trigger).await;
    eventually("run 1 going", LONG, || async {
        let r = runs(&env, "report").await;
        (r.len() == 1 && r[0].finished_at.is_none()).then_some(())
    })
    .await;
    trigger(&env, "report", RunCause::Trigger).await;
    eventually("refused", LONG, || async {
        (!events(&env, "TriggerRefused").await.is_empty()).then_some(())
    })
    .await;
    eventually("run 1 finished", LONG, || async {
        (finished(&env, "report").await.len() == 1).then_some(())
    })
    .await;
    let left = within("list", env.store.list_raw(&env.keys.triggers()))
        .await
        .expect("list");
    assert!(left.items.is_empty(), "triggers consumed");
    assert_eq!(runs(&env, "report").await.len(), 1, "exactly one run");
}

#[tokio::test]
async fn a_leader_change_mid_run_loses_no_run_and_doubles_none() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    env.node(&agent, "n1", 4000, &[], NODE_TTL).await;
    let a = env.replica("a").await;
    let b = env.replica("b").await;
    agent.script("tick", Duration::from_millis(1500), 0);
    agent.script("batch", Duration::from_millis(1500), 0);
    env.apply("tick", every(Duration::from_secs(1))).await;
    env.apply("batch", manual()).await;
    eventually("runs going", LONG, || async {
        let t = runs(&env, "tick").await;
        (t.iter().any(|r| r.finished_at.is_none())).then_some(())
    })
    .await;
    trigger(&env, "batch", RunCause::Trigger).await;
    eventually("batch going", LONG, || async {
        (runs(&env, "batch").await.len() == 1).then_some(())
    })
    .await;
    let pair = [&a, &b];
    let leader = eventually("a leader", TTL * 3, || async {
        let l = Env::leaders(&pair);
        (l.len() == 1).then(|| l[0].to_owned())
    })
    .await;
    let (old, standby) = if leader == a.id { (&a, &b) } else { (&b, &a) };
    old.crash();
    let going_at_crash: Vec<u64> = runs(&env, "tick")
        .await
        .into_iter()
        .filter(|r| r.finished_at.is_none())
        .map(|r| r.run)
        .collect();
    eventually("standby leads", TTL * 4, || async {
        standby.is_leader().then_some(())
    })
    .await;
    eventually("batch finished by the new leader", LONG, || async {
        (finished(&env, "batch").await.len() == 1).then_some(())
    })
    .await;
    let last = *going_at_crash.last().expect("a tick run was going");
    eventually("two more tick runs", LONG, || async {
        let f = finished(&env, "tick").await;
        (f.iter().any(|r| r.run == last) && f.iter().any(|r| r.run >= last + 2)).then_some(())
    })
    .await;
    let tick = runs(&env, "tick").await;
    let nums: Vec<u64> = tick.iter().map(|r| r.run).collect();
    let expected: Vec<u64> = (1..=*nums.last().expect("runs")).collect();
    assert_eq!(nums, expected, "run numbers are contiguous: none lost");
    let done: Vec<RunRecord> = tick
        .into_iter()
        .filter(|r| r.finished_at.is_some())
        .collect();
    assert!(done
        .iter()
        .all(|r| r.outcome == Some(RunOutcome::Succeeded)));
    assert_no_overlap(done);
    assert_eq!(runs(&env, "batch").await.len(), 1, "batch not doubled");
    let st = state(&env, "batch").await;
    assert_eq!(st.last_outcome, Some(drover_api::RunOutcome::Succeeded));
}
