//! Promise 3 at the commit level, against a real etcd: a plan that replaces a dead node's
//! instances cannot land once that node has registered again.

mod common;

use chrono::Utc;
use common::{within, Env};
use drover_api::{Capacity, Cpu, DriverKind, Memory, Node};
use drover_controller::commit;
use drover_controller::{plan, ControllerConfig, Snapshot, Write};
use drover_store::Fence;

fn node(name: &str) -> Node {
    Node {
        name: name.into(),
        address: "127.0.0.1:1".into(),
        capacity: Capacity {
            cpu: Cpu::millis(4000),
            memory: Memory::mebibytes(8192),
        },
        labels: Default::default(),
        drivers: vec![DriverKind::Process],
        version: "test".into(),
        started_at: Utc::now(),
    }
}

/// The whole prefix as the leader's watch would see it after a re-list.
async fn snapshot(env: &Env) -> Snapshot {
    let listing = within("list", env.store.list::<serde_json::Value>(&env.keys.all()))
        .await
        .expect("list");
    let mut s = Snapshot::default();
    for item in listing.items {
        // Keys the planner does not read decode or are ignored; none is corrupt here.
        s.apply(&env.keys, item).expect("decodes");
    }
    s.revision = listing.revision;
    s
}

#[tokio::test]
async fn a_replacement_planned_while_the_node_was_gone_conflicts_once_it_is_back() {
    let env = Env::start().await;
    let config = ControllerConfig::new("test");
    let fence_key = format!("{}test-fence", env.keys.all());
    let fence_rev = within("fence", env.store.put(&fence_key, &"me", None))
        .await
        .expect("fence");
    let fence = Fence {
        key: fence_key,
        create_revision: fence_rev,
    };
    let max_ops = env.store.config().max_txn_ops;
    let max_bytes = env.store.config().max_request_bytes;
    for n in ["n1", "n2"] {
        within("put node", env.store.put(&env.keys.node(n), &node(n), None))
            .await
            .expect("put node");
    }
    env.apply("web", common::service(2, 100)).await;

    // Converge: one instance per node (spread).
    for _ in 0..5 {
        let p = plan(&snapshot(&env).await, Utc::now(), &config);
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
    let stale = plan(&snapshot(&env).await, Utc::now(), &config);
    assert!(stale.steps.iter().any(|s| s
        .writes
        .iter()
        .any(|w| matches!(w, Write::NodeGone { node } if node == "n2"))));

    // ... but n2 registers again before the leader commits it.
    within(
        "put node",
        env.store.put(&env.keys.node("n2"), &node("n2"), None),
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
    let fresh = plan(&snapshot(&env).await, Utc::now(), &config);
    assert!(
        fresh
            .steps
            .iter()
            .all(|s| !s.writes.iter().any(|w| matches!(w, Write::Unassign { .. }))),
        "{fresh:?}"
    );
}
