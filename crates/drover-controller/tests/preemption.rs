//! Preemption through the running controller against a real etcd: on a full node a
//! priority-90 task with `preemption: true` displaces a priority-10 instance, and the event
//! names both.

mod common;

use std::time::Duration;

use common::{eventually, service, within, Env, FakeAgent};
use drover_api::{Event, Phase, RestartPolicy, RunOutcome, RunRecord, TaskSpec, Trigger};

const NODE_TTL: Duration = Duration::from_secs(10);
const LONG: Duration = Duration::from_secs(20);

async fn preempted(env: &Env) -> Vec<Event> {
    let l = within(
        "list events",
        env.store.list::<Event>(&env.keys.events_in("default")),
    )
    .await
    .expect("list events");
    l.items
        .into_iter()
        .map(|v| v.value)
        .filter(|e| e.reason == "Preempted")
        .collect()
}

#[tokio::test]
async fn a_priority_90_task_with_preemption_displaces_a_priority_10_instance() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    env.node(&agent, "full", 1000, &[], NODE_TTL).await;
    let _c = env.replica("c1").await;
    env.apply(
        "low",
        TaskSpec {
            priority: 10,
            ..service(1, 800)
        },
    )
    .await;
    let low = eventually("low runs", LONG, || async {
        let a = env.assignments().await;
        let s = env.statuses().await;
        let i = a.values().find(|i| i.task == "low")?.clone();
        (s.get(&i.id)?.phase == Phase::Running).then_some(i)
    })
    .await;

    // A job run of priority 90 that needs the node.
    agent.script("urgent", Duration::from_millis(300), 0);
    env.apply(
        "urgent",
        TaskSpec {
            priority: 90,
            preemption: true,
            restart_policy: RestartPolicy::Never,
            trigger: Some(Trigger::Manual),
            ..service(1, 500)
        },
    )
    .await;
    let req = drover_api::TriggerRequest {
        requested_at: chrono::Utc::now(),
        cause: drover_api::RunCause::Trigger,
        by: "test".into(),
    };
    within(
        "trigger",
        env.store.put(
            &env.keys
                .trigger("default", "urgent", "00000000000000000001-a"),
            &req,
            None,
        ),
    )
    .await
    .expect("put trigger");

    let done = eventually("urgent ran", LONG, || async {
        let l = env
            .store
            .list::<RunRecord>(&env.keys.runs_of("default", "urgent"))
            .await
            .ok()?;
        let r = l.items.into_iter().next()?.value;
        r.finished_at.is_some().then_some(r)
    })
    .await;
    assert_eq!(done.outcome, Some(RunOutcome::Succeeded));
    let events = preempted(&env).await;
    assert!(!events.is_empty(), "a Preempted event");
    let urgent = drover_api::InstanceId::job("default", "urgent", 1, 0).expect("id");
    assert!(
        events
            .iter()
            .any(|e| e.message.contains(&low.id.to_string())
                && e.message.contains(&urgent.to_string())),
        "the event names both instances: {events:?}"
    );
    // The evicted service comes back once the room is free again.
    eventually("low runs again", LONG, || async {
        let a = env.assignments().await;
        a.values().any(|i| i.task == "low").then_some(())
    })
    .await;
}
