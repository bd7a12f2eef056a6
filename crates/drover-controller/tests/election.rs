//! Leader election against a real etcd: one leader among replicas, failover after a crash
//! within TTL + 3 s, handover on resign without a TTL wait, and fencing of a deposed leader.

mod common;

use std::time::Duration;

use common::{connect, eventually, service, within, Env, FakeAgent, Replica, TTL};
use drover_api::records::ControllerInfo;
use drover_api::Event;
use drover_store::{Election, Error, Fence, Txn};
use drover_testkit::TcpProxy;
use tokio::time::Instant;

async fn one_leader<'a>(replicas: &'a [&'a Replica]) -> &'a Replica {
    let id = eventually("a leader is elected", TTL * 3, || async {
        let leaders = Env::leaders(replicas);
        (leaders.len() == 1).then(|| leaders[0].to_owned())
    })
    .await;
    replicas
        .iter()
        .find(|r| r.id == id)
        .copied()
        .expect("leader is a replica")
}

#[tokio::test]
async fn three_replicas_elect_exactly_one_leader_and_advertise_it() {
    let env = Env::start().await;
    let (a, b, c) = (
        env.replica("a").await,
        env.replica("b").await,
        env.replica("c").await,
    );
    let all = [&a, &b, &c];
    let leader = one_leader(&all).await;
    // It stays exactly one for a while.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(
            Env::leaders(&all).len(),
            1,
            "exactly one leader at any time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ads = eventually("all replicas advertise", TTL * 2, || async {
        let l = env
            .store
            .list::<ControllerInfo>(&env.keys.controllers())
            .await
            .ok()?;
        (l.items.len() == 3 && l.items.iter().filter(|i| i.value.leader).count() == 1).then_some(l)
    })
    .await;
    let advertised = ads.items.iter().find(|i| i.value.leader).expect("a leader");
    assert_eq!(advertised.value.id, leader.id);
    for r in [a, b, c] {
        r.stop().await;
    }
    let left = within("list", env.store.list_raw(&env.keys.controllers()))
        .await
        .expect("list");
    assert!(
        left.items.is_empty(),
        "stopped replicas revoke their advertisement"
    );
}

#[tokio::test]
async fn crashed_leader_is_replaced_within_ttl_and_the_standby_reconciles() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    env.node(&agent, "n1", 4000, &[], Duration::from_secs(10))
        .await;
    let (a, b) = (env.replica("a").await, env.replica("b").await);
    let pair = [&a, &b];
    let leader = one_leader(&pair).await;
    let standby = if leader.id == a.id { &b } else { &a };
    // Let the leader sync before the crash.
    eventually("leader synced", TTL * 2, || async {
        leader.status.borrow().synced.then_some(())
    })
    .await;

    let crashed = Instant::now();
    leader.crash();
    eventually(
        "standby takes over",
        TTL + Duration::from_secs(3),
        || async { standby.is_leader().then_some(()) },
    )
    .await;
    tracing::info!(took = ?crashed.elapsed(), "failover after crash");
    env.apply("web", service(2, 100)).await;
    let bound = TTL + Duration::from_secs(3);
    eventually("new leader places the new task", bound, || async {
        (env.per_node("web").await.values().sum::<usize>() == 2).then_some(())
    })
    .await;
    assert!(
        crashed.elapsed() <= bound * 2,
        "took {:?}",
        crashed.elapsed()
    );
}

#[tokio::test]
async fn resigning_leader_hands_over_without_waiting_for_the_ttl() {
    let env = Env::start().await;
    let (a, b) = (env.replica("a").await, env.replica("b").await);
    let leader_id = one_leader(&[&a, &b]).await.id.clone();
    let (leader, standby) = if leader_id == a.id { (a, b) } else { (b, a) };
    let resigned = Instant::now();
    leader.stop().await;
    eventually("standby takes over", TTL, || async {
        standby.is_leader().then_some(())
    })
    .await;
    let took = resigned.elapsed();
    assert!(
        took < TTL,
        "handover took {took:?}, not faster than the TTL {TTL:?}"
    );
    tracing::info!(?took, "handover after resign");
}

#[tokio::test]
async fn a_deposed_leaders_fence_is_rejected() {
    let env = Env::start().await;
    let (a, b) = (env.replica("a").await, env.replica("b").await);
    let pair = [&a, &b];
    let leader = one_leader(&pair).await;
    let standby = if leader.id == a.id { &b } else { &a };
    let election = Election::new(env.store.clone(), env.keys.election());
    let info = within("leader", election.leader::<String>())
        .await
        .expect("leader")
        .expect("someone leads");
    assert_eq!(info.value, leader.id);
    let old = Fence {
        key: info.key,
        create_revision: info.create_revision,
    };
    // The fence works while the leader leads...
    let probe = format!("{}probe", env.keys.all());
    let ok = within(
        "fenced write",
        env.store
            .commit(Txn::new().put(&probe, &1, None).expect("op"), Some(&old)),
    )
    .await
    .expect("write with a live fence");
    assert!(ok.succeeded);
    // ...and is rejected once it has been deposed (a crash: its lease expires).
    leader.crash();
    eventually(
        "standby takes over",
        TTL + Duration::from_secs(3),
        || async { standby.is_leader().then_some(()) },
    )
    .await;
    let err = within(
        "stale write",
        env.store
            .commit(Txn::new().put(&probe, &2, None).expect("op"), Some(&old)),
    )
    .await
    .expect_err("a deposed leader's write must fail");
    assert!(matches!(err, Error::Fenced { .. }), "{err}");
    let v = within("get", env.store.get::<i32>(&probe))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(v.value, 1, "the stale write did not land");
}

#[tokio::test]
async fn a_partitioned_leader_steps_down_and_nothing_it_writes_lands_after_takeover() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    for n in ["n1", "n2", "n3"] {
        env.node(&agent, n, 4000, &[], Duration::from_secs(30))
            .await;
    }
    let proxy = TcpProxy::start(env.etcd.client_addr()).await;
    let a = env.replica_with("a", connect(&[proxy.url()]).await);
    eventually("a leads", TTL * 3, || async {
        a.status.borrow().synced.then_some(())
    })
    .await;
    let b = env.replica("b").await;
    env.apply("web", service(3, 100)).await;
    eventually("web placed", TTL * 3, || async {
        (env.per_node("web").await.values().sum::<usize>() == 3).then_some(())
    })
    .await;

    // Partition the leader: its bytes stall, like a paused process.
    proxy.blackhole();
    let partitioned = Instant::now();
    let pair = [&a, &b];
    let mut max_leaders = 0;
    while !b.is_leader() {
        max_leaders = max_leaders.max(Env::leaders(&pair).len());
        assert!(
            partitioned.elapsed() < TTL + Duration::from_secs(3),
            "no takeover"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!(took = ?partitioned.elapsed(), "takeover after partition");
    let election = Election::new(env.store.clone(), env.keys.election());
    let new_fence = within("leader", election.leader::<String>())
        .await
        .expect("leader")
        .expect("b leads");
    assert_eq!(new_fence.value, "b");
    // The store revision when the takeover was observed: the old leader's key is gone by now.
    let takeover = within("revision", env.store.list_raw(&env.keys.controllers()))
        .await
        .expect("list")
        .revision;
    // The new leader works while the old one is cut off.
    env.apply("api", service(2, 100)).await;
    eventually("api placed by b", TTL * 3, || async {
        (env.per_node("api").await.values().sum::<usize>() == 2).then_some(())
    })
    .await;
    proxy.restore();
    tokio::time::sleep(TTL).await;
    max_leaders = max_leaders.max(Env::leaders(&pair).len());
    assert!(max_leaders <= 1, "two replicas believed they led at once");
    assert!(!a.is_leader() && b.is_leader());

    // No double scheduling, and every event since the takeover comes from the new leader.
    let all = env.assignments().await;
    assert_eq!(all.values().filter(|i| i.task == "web").count(), 3);
    assert_eq!(all.values().filter(|i| i.task == "api").count(), 2);
    let events = within(
        "events",
        env.store.list::<Event>(&env.keys.events_in("default")),
    )
    .await
    .expect("events");
    for e in events.items.iter().filter(|e| e.mod_revision > takeover) {
        assert_eq!(
            e.value.source, "controller/b",
            "a write of the deposed leader landed: {e:?}"
        );
    }
    a.stop().await;
    b.stop().await;
}
