//! Promise 4 with values this controller cannot read: after a leader change, a node whose key
//! does not decode still counts as alive, and an assignment that does not decode still holds its
//! slot, so nothing is moved and nothing is added.

mod common;

use std::time::Duration;

use common::{eventually, within, Env, FakeAgent, T};
use drover_api::{Event, Phase};

/// Rewrites `key` as JSON that no longer decodes (`edit` spoils it), keeping its lease.
async fn spoil(env: &Env, key: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let raw = within("get", env.store.get_raw(key))
        .await
        .expect("get")
        .expect("key exists");
    let mut value: serde_json::Value = serde_json::from_slice(&raw.value).expect("json");
    edit(&mut value);
    let bytes = serde_json::to_vec(&value).expect("encodes");
    within("put", env.store.put_raw(key, bytes, raw.lease))
        .await
        .expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_moves_nothing_off_an_undecodable_node_or_assignment() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    for n in ["n1", "n2"] {
        env.node(&agent, n, 4000, &[], Duration::from_secs(30))
            .await;
    }
    env.apply("web", common::service(4, 100)).await;
    let first = env.replica("c1").await;
    eventually("4 running, 2 per node", T, || async {
        let per_node = env.per_node("web").await;
        let running = env
            .statuses()
            .await
            .values()
            .filter(|s| s.phase == Phase::Running)
            .count();
        (per_node.values().copied().collect::<Vec<_>>() == [2, 2] && running == 4).then_some(())
    })
    .await;
    first.stop().await;

    // A newer agent's node record (an unknown driver) and an assignment with a spoiled spec.
    spoil(&env, &env.keys.node("n2"), |v| {
        v["drivers"] = serde_json::json!(["warp-drive"]);
    })
    .await;
    let on_n1 = env
        .assignments()
        .await
        .into_values()
        .find(|i| i.node == "n1")
        .expect("an instance on n1");
    let spoiled = env.keys.assignment("n1", &on_n1.id);
    spoil(&env, &spoiled, |v| {
        v["spec"] = serde_json::json!("not a spec")
    })
    .await;
    let before = env.assignment_keys().await;
    assert_eq!(before.len(), 4);

    // A fresh leader lists everything, plans, and reports both keys.
    let second = env.replica("c2").await;
    eventually("new leader synced", T, || async {
        let s = *second.status.borrow();
        (s.leader && s.synced).then_some(())
    })
    .await;
    let reported = eventually("undecodable keys reported", T, || async {
        let events = within("events", env.store.list::<Event>(&env.keys.events()))
            .await
            .expect("events");
        let found: Vec<Event> = events
            .items
            .into_iter()
            .map(|e| e.value)
            .filter(|e| e.reason == "Undecodable")
            .collect();
        (found.len() >= 2).then_some(found)
    })
    .await;
    assert!(reported
        .iter()
        .any(|e| e.name == "n2" && e.message.contains(&env.keys.node("n2"))));
    assert!(reported.iter().any(|e| e.message.contains(&spoiled)));
    // `synced` means the first plan was committed: a move would be visible now.
    assert_eq!(
        env.assignment_keys().await,
        before,
        "nothing moved or added"
    );
    let events = within("events", env.store.list::<Event>(&env.keys.events()))
        .await
        .expect("events");
    assert!(
        !events.items.iter().any(|e| e.value.reason == "NodeDead"),
        "n2 was never taken for dead"
    );
    second.stop().await;
}
