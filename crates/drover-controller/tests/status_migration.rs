//! The move of statuses under their node (`status/<instance>` → `status/<node>/<instance>`)
//! on a real etcd: a leader that finds only the old keys (agents not upgraded yet) reads them
//! as the statuses they are and moves nothing; once an agent writes the new key, the leader
//! deletes the old one, and only that one.

mod common;

use std::time::Duration;

use common::{eventually, within, Env, FakeAgent, T};
use drover_api::{InstanceStatus, Phase};

async fn exists(env: &Env, key: &str) -> bool {
    within("get", env.store.get_raw(key))
        .await
        .expect("get")
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_reads_old_status_keys_moves_nothing_and_deletes_each_once_replaced() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    env.node(&agent, "n1", 4000, &[], Duration::from_secs(30))
        .await;
    env.apply("web", common::service(2, 100)).await;
    let first = env.replica("c1").await;
    eventually("2 running", T, || async {
        let running = env
            .statuses()
            .await
            .values()
            .filter(|s| s.phase == Phase::Running)
            .count();
        (running == 2).then_some(())
    })
    .await;
    first.stop().await;

    // What agents of before the move leave behind: each status under `status/<instance>`.
    let instances: Vec<_> = env.assignments().await.into_values().collect();
    for i in &instances {
        let own = env.keys.status(&i.node, &i.id);
        let status = within("get", env.store.get::<InstanceStatus>(&own))
            .await
            .expect("get")
            .expect("a status under the node");
        within(
            "put legacy",
            env.store
                .put(&env.keys.legacy_status(&i.id), &status.value, None),
        )
        .await
        .expect("put");
        within("delete", env.store.delete(&own))
            .await
            .expect("delete");
    }
    let before = env.assignment_keys().await;

    let second = env.replica("c2").await;
    let mut status = second.status.clone();
    within("the new leader synced", status.wait_for(|s| s.synced))
        .await
        .expect("status");
    // Its first plan is committed: had it read the old keys as no status at all, or deleted
    // them as foreign, it would have done so in that plan.
    assert_eq!(env.assignment_keys().await, before, "nothing moved");
    for i in &instances {
        assert!(
            exists(&env, &env.keys.legacy_status(&i.id)).await,
            "{} keeps its only status",
            i.id
        );
    }

    // One agent is upgraded and reports its instance under its node.
    let upgraded = &instances[0];
    let mut fresh = within(
        "get",
        env.store
            .get::<InstanceStatus>(&env.keys.legacy_status(&upgraded.id)),
    )
    .await
    .expect("get")
    .expect("legacy")
    .value;
    fresh.updated_at = chrono::Utc::now();
    within(
        "put",
        env.store
            .put(&env.keys.status(&upgraded.node, &upgraded.id), &fresh, None),
    )
    .await
    .expect("put");
    eventually("the replaced old key is deleted", T, || async {
        (!exists(&env, &env.keys.legacy_status(&upgraded.id)).await).then_some(())
    })
    .await;
    assert!(exists(&env, &env.keys.status(&upgraded.node, &upgraded.id)).await);
    assert!(
        exists(&env, &env.keys.legacy_status(&instances[1].id)).await,
        "the other instance's old key is still its status"
    );
    assert_eq!(env.assignment_keys().await, before, "still nothing moved");
    second.stop().await;
}
