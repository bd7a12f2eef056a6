//! Promise 3 at the commit level, against a real etcd: a plan that replaces a dead node's
//! instances cannot land once that node has registered again.

mod common;

use chrono::Utc;
use common::{within, Env};
use drover_controller::commit;
use drover_controller::{plan, ControllerConfig, Write};

#[tokio::test]
async fn a_replacement_planned_while_the_node_was_gone_conflicts_once_it_is_back() {
    let env = Env::start().await;
    let config = ControllerConfig::new("test");
    let fence = env.test_fence().await;
    let max_ops = env.store.config().max_txn_ops;
    let max_bytes = env.store.config().max_request_bytes;
    for n in ["n1", "n2"] {
        within(
            "put node",
            env.store
                .put(&env.keys.node(n), &common::node_record(n, 4000, 8192), None),
        )
        .await
        .expect("put node");
    }
    env.apply("web", common::service(2, 100)).await;

    // Converge: one instance per node (spread).
    for _ in 0..5 {
        let p = plan(&env.snapshot().await, Utc::now(), &config);
        if p.is_empty() {
            break;
        }
        within(
            "commit",
            commit::commit(&env.store, &env.keys, &fence, &p, max_ops, max_bytes),
        )
        .await
        .expect("commit");
    }
    let before = env.assignments().await;
    assert_eq!(env.per_node("web").await.len(), 2, "{before:?}");

    // n2's lease expires; a plan is made from that snapshot ...
    within("delete node", env.store.delete(&env.keys.node("n2")))
        .await
        .expect("delete node");
    let stale = plan(&env.snapshot().await, Utc::now(), &config);
    assert!(stale.steps.iter().any(|s| s
        .writes
        .iter()
        .any(|w| matches!(w, Write::NodeGone { node } if node == "n2"))));

    // ... but n2 registers again before the leader commits it.
    within(
        "put node",
        env.store.put(
            &env.keys.node("n2"),
            &common::node_record("n2", 4000, 8192),
            None,
        ),
    )
    .await
    .expect("put node");
    let result = within(
        "commit",
        commit::commit(&env.store, &env.keys, &fence, &stale, max_ops, max_bytes),
    )
    .await;
    // Every step is refused (each compares n2 absent) and nothing lands.
    let done = result.expect("a refused step is not a commit error");
    assert_eq!(done.revision, 0, "nothing landed: {done:?}");
    assert!(done.rejected.len() >= stale.steps.len(), "{done:?}");
    assert_eq!(env.assignments().await, before, "nothing moved");

    // Re-planning sees n2 alive and leaves its instance alone.
    let fresh = plan(&env.snapshot().await, Utc::now(), &config);
    assert!(
        fresh
            .steps
            .iter()
            .all(|s| !s.writes.iter().any(|w| matches!(w, Write::Unassign { .. }))),
        "{fresh:?}"
    );
}
