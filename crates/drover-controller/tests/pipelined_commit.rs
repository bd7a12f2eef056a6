//! Pipelined commits against a real etcd: a plan's transactions go out on several lanes at
//! once, every task's chain of task-state compares holds, and a stale copy of the same plan
//! lands nothing.

mod common;

use std::collections::BTreeMap;

use chrono::Utc;
use common::{within, Env};
use drover_api::records::TaskStateRecord;
use drover_controller::commit::{self, Limits};
use drover_controller::{plan, ControllerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_commits_on_several_lanes_at_once_and_a_stale_copy_lands_nothing() {
    let env = Env::start().await;
    let fence = env.test_fence().await;
    for n in ["n1", "n2", "n3", "n4"] {
        within(
            "put node",
            env.store.put(
                &env.keys.node(n),
                &common::node_record(n, 64_000, 64 * 1024),
                None,
            ),
        )
        .await
        .expect("put node");
    }
    // Six tasks of 300 replicas: each needs several transactions (etcd's default limit is 128
    // operations), chained through its task state.
    let tasks: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    for t in &tasks {
        env.apply(t, common::service(300, 10)).await;
    }
    let p = plan(
        &env.snapshot().await,
        Utc::now(),
        &ControllerConfig::new("test"),
    );
    assert_eq!(p.placed, 1800);
    let limits = Limits::new(
        env.store.config().max_txn_ops,
        env.store.config().max_request_bytes,
        4,
    );
    let done = within(
        "commit",
        commit::commit_pipelined(&env.store, &env.keys, &fence, &p, limits),
    )
    .await
    .expect("commit");
    assert!(done.rejected.is_empty(), "{:?}", done.rejected);
    // More transactions than tasks: some task's chain spans several.
    assert!(done.txns > tasks.len(), "{done:?}");

    // Everything landed, and each task's state is the planned one.
    let assigned = env.assignments().await;
    assert_eq!(assigned.len(), 1800);
    for t in &tasks {
        assert_eq!(assigned.values().filter(|i| &i.task == t).count(), 300);
        let state = within(
            "taskstate",
            env.store
                .get::<TaskStateRecord>(&env.keys.taskstate("default", t)),
        )
        .await
        .expect("get")
        .expect("written");
        assert_eq!(state.value.next_slot, 300, "{t}");
        // Written by the first of its transactions only; the others compared it.
        assert_eq!(state.version, 1, "{t}: its state was put more than once");
    }

    // The lanes ran at once: the transactions of different tasks interleave in etcd's
    // revision order (one lane at a time would have written task by task). Seen from etcd's
    // own revisions, not from the committer.
    let listing = within("list", env.store.list_raw(&env.keys.assignments()))
        .await
        .expect("list");
    let mut revisions: BTreeMap<i64, String> = BTreeMap::new();
    for item in &listing.items {
        let instance: drover_api::Instance =
            serde_json::from_slice(&item.value).expect("an instance");
        revisions.insert(item.mod_revision, instance.task);
    }
    let order: Vec<&String> = revisions.values().collect();
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        switches > tasks.len(),
        "transactions of different tasks interleave ({switches} switches between {} tasks)",
        tasks.len()
    );

    // The same plan again, from its now stale snapshot: every step is refused.
    let again = within(
        "commit",
        commit::commit_pipelined(&env.store, &env.keys, &fence, &p, limits),
    )
    .await
    .expect("a refused step is not a commit error");
    assert_eq!(again.revision, 0, "nothing landed: {again:?}");
    assert_eq!(env.assignments().await.len(), 1800);
}
