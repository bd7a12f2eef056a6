//! A planner slower than the election TTL must not cost the leader its lease: planning runs
//! off the async reactor, so the election keep-alive, the watch and shutdown keep running.
//!
//! The test runs on a single-threaded runtime (`#[tokio::test]`'s default), the harshest case:
//! a plan that kept the reactor's only thread busy would starve every keep-alive.

mod common;

use std::time::Duration;

use common::{connect, eventually, service, Env, FakeAgent, TTL};
use drover_store::Election;

#[tokio::test]
async fn a_plan_slower_than_the_ttl_keeps_the_lease_and_commits() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    env.node(&agent, "n1", 4000, &[], Duration::from_secs(30))
        .await;
    let mut config = Env::config("slow");
    // Every plan keeps its thread busy for 2.5 TTLs.
    config.slow_plan_for_tests = TTL * 5 / 2;
    let replica = env.replica_configured(connect(&env.etcd.endpoints()).await, config);
    eventually("it leads", TTL * 3, || async {
        replica.is_leader().then_some(())
    })
    .await;
    let election = Election::new(env.store.clone(), env.keys.election());
    let first = election
        .leader::<String>()
        .await
        .expect("leader")
        .expect("someone leads");

    // Watch the replica's own view of its role for the rest of the test.
    let mut status = replica.status.clone();
    let lost = tokio::spawn(async move {
        while status.changed().await.is_ok() {
            if !status.borrow().leader {
                return true;
            }
        }
        false
    });

    env.apply("web", service(2, 100)).await;
    // Two slow plans at least (the first may have started before the apply), then the commit.
    eventually("web placed by the slow leader", TTL * 10, || async {
        (env.per_node("web").await.values().sum::<usize>() == 2).then_some(())
    })
    .await;
    // One more slow plan over the settled cluster, with the replica still leading after it.
    tokio::time::sleep(TTL * 3).await;
    let now = election
        .leader::<String>()
        .await
        .expect("leader")
        .expect("someone leads");
    assert_eq!(
        (now.key.as_str(), now.create_revision),
        (first.key.as_str(), first.create_revision),
        "the same election key throughout: one term"
    );
    assert!(replica.is_leader(), "still leads");
    if lost.is_finished() {
        assert!(!lost.await.expect("watcher"), "leadership was lost");
    } else {
        lost.abort();
    }
    replica.stop().await;
}
