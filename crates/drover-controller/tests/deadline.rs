//! The controller's deadline backstop against a real etcd: a run whose agent never reports an
//! end is ended by the controller at `timeoutSeconds` + grace + slack, as `DeadlineExceeded`,
//! and its instances are removed.

mod common;

use std::time::Duration;

use common::{eventually, within, Env, FakeAgent};
use drover_api::{RestartPolicy, RunOutcome, RunRecord, TaskSpec, TaskState};

#[tokio::test]
async fn a_run_still_going_past_its_deadline_is_ended_as_deadline_exceeded() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    env.node(&agent, "n1", 4000, &[], Duration::from_secs(10))
        .await;
    let _c = env.replica("c1").await;
    agent.script("stuck", Duration::from_secs(600), 0);
    env.apply(
        "stuck",
        TaskSpec {
            command: vec!["/bin/sleep".into(), "60".into()],
            restart_policy: RestartPolicy::Never,
            timeout_seconds: Some(1),
            termination_grace_period_seconds: 0,
            ..TaskSpec::default()
        },
    )
    .await;
    let run = eventually(
        "ended by the controller",
        Duration::from_secs(20),
        || async {
            let l = env
                .store
                .list::<RunRecord>(&env.keys.runs_of("default", "stuck"))
                .await
                .ok()?;
            let r = l.items.into_iter().next()?.value;
            r.finished_at.is_some().then_some(r)
        },
    )
    .await;
    assert_eq!(run.outcome, Some(RunOutcome::DeadlineExceeded));
    let took = run.finished_at.expect("finished") - run.started_at;
    assert!(
        took >= chrono::TimeDelta::seconds(6),
        "not before the backstop: {took}"
    );
    assert!(
        took < chrono::TimeDelta::seconds(9),
        "soon after it: {took}"
    );
    eventually("instances removed", Duration::from_secs(5), || async {
        env.assignments()
            .await
            .values()
            .all(|i| i.task != "stuck")
            .then_some(())
    })
    .await;
    let st = within(
        "state",
        env.store
            .get::<TaskState>(&env.keys.taskstate("default", "stuck")),
    )
    .await
    .expect("get")
    .expect("state");
    assert_eq!(st.value.last_outcome, Some(RunOutcome::DeadlineExceeded));
}
