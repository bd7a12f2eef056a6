//! Placement through the running controller against a real etcd: spread, nodeSelector, and an
//! unschedulable task that waits with a reason until a fitting node registers.

mod common;

use std::time::Duration;

use common::{eventually, service, within, Env, FakeAgent, TTL};
use drover_api::records::TaskStateRecord;
use drover_api::{Event, Phase};

const NODE_TTL: Duration = Duration::from_secs(10);

#[tokio::test]
async fn six_replicas_on_three_nodes_land_two_per_node() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    for n in ["n1", "n2", "n3"] {
        env.node(&agent, n, 4000, &[], NODE_TTL).await;
    }
    let c = env.replica("c1").await;
    env.apply("web", service(6, 250)).await;
    let per_node = eventually("6 instances placed", TTL * 3, || async {
        let m = env.per_node("web").await;
        (m.values().sum::<usize>() == 6).then_some(m)
    })
    .await;
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{per_node:?}"
    );
    eventually("all Running", TTL * 3, || async {
        let s = env.statuses().await;
        (s.len() == 6 && s.values().all(|s| s.phase == Phase::Running)).then_some(())
    })
    .await;
    let events = within(
        "events",
        env.store.list::<Event>(&env.keys.events_in("default")),
    )
    .await
    .expect("events");
    assert!(
        events
            .items
            .iter()
            .any(|e| e.value.reason == "Scheduled" && e.value.name == "web"),
        "a Scheduled event is recorded"
    );
    c.stop().await;
}

#[tokio::test]
async fn node_selector_is_honoured() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    env.node(&agent, "ssd-1", 4000, &[("disk", "ssd")], NODE_TTL)
        .await;
    env.node(&agent, "ssd-2", 4000, &[("disk", "ssd")], NODE_TTL)
        .await;
    env.node(&agent, "hdd-1", 4000, &[("disk", "hdd")], NODE_TTL)
        .await;
    let c = env.replica("c1").await;
    let mut spec = service(4, 100);
    spec.node_selector.insert("disk".into(), "ssd".into());
    env.apply("db", spec).await;
    let per_node = eventually("4 instances placed", TTL * 3, || async {
        let m = env.per_node("db").await;
        (m.values().sum::<usize>() == 4).then_some(m)
    })
    .await;
    assert_eq!(per_node.keys().collect::<Vec<_>>(), vec!["ssd-1", "ssd-2"]);
    c.stop().await;
}

#[tokio::test]
async fn unschedulable_task_is_pending_with_a_reason_then_placed_when_a_node_fits() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    for n in ["n1", "n2", "n3"] {
        env.node(&agent, n, 500, &[], NODE_TTL).await;
    }
    let c = env.replica("c1").await;
    env.apply("big", service(1, 2000)).await;
    let key = env.keys.taskstate("default", "big");
    let reason = eventually("a pending reason", TTL * 3, || async {
        let s = env.store.get::<TaskStateRecord>(&key).await.ok()??;
        s.value.state.pending_reason
    })
    .await;
    assert_eq!(
        reason,
        "Unschedulable: 0/3 nodes are available: 3 insufficient cpu"
    );
    assert!(env.per_node("big").await.is_empty());
    let events = within(
        "events",
        env.store.list::<Event>(&env.keys.events_in("default")),
    )
    .await
    .expect("events");
    assert!(events
        .items
        .iter()
        .any(|e| e.value.reason == "FailedScheduling"));

    env.node(&agent, "large", 4000, &[], NODE_TTL).await;
    let per_node = eventually("placed on the new node", TTL * 3, || async {
        let m = env.per_node("big").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(per_node.keys().collect::<Vec<_>>(), vec!["large"]);
    eventually("the pending reason is cleared", TTL * 3, || async {
        let s = env.store.get::<TaskStateRecord>(&key).await.ok()??;
        s.value.state.pending_reason.is_none().then_some(())
    })
    .await;
    c.stop().await;
}
