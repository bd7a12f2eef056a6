//! Keep-alives across a failing etcd member: a member that stops answering, and the etcd
//! leader killed. The agent fences once no ping sent in the last TTL/2 was acknowledged, so the
//! bound checked here is that the age of the last acknowledged send never reaches TTL/2 while
//! a quorum is reachable.

mod common;

use std::time::Duration;

use common::within;
use drover_store::{KeepAlive, Store, StoreConfig};
use drover_testkit::{init_tracing, EtcdCluster, EtcdServer, TcpProxy};
use tokio::time::Instant;

/// Production timeouts: the hang of a silent member must be caught by the keep-alive loop
/// itself, not by a short test-sized request timeout or HTTP/2 keep-alive.
async fn connect_with_production_timeouts(endpoints: Vec<String>) -> Store {
    init_tracing();
    within("connect", Store::connect(StoreConfig::new(endpoints)))
        .await
        .expect("connect")
}

/// The largest age of the last acknowledged send seen over `window`, sampled every 20 ms.
async fn oldest_ack_age(ka: &KeepAlive, window: Duration) -> Duration {
    let end = Instant::now() + window;
    let mut worst = Duration::ZERO;
    while Instant::now() < end {
        worst = worst.max(Instant::now() - ka.last_ack_sent_at());
        assert!(ka.is_lost().is_none(), "lease declared lost: {ka:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worst
}

/// A lease of `ttl` granted and kept alive through `store`.
async fn kept_alive(store: &Store, ttl: Duration) -> KeepAlive {
    let lease = within("grant", store.grant(ttl)).await.expect("grant");
    within("keep_alive", store.keep_alive(lease, ttl))
        .await
        .expect("keep_alive")
}

/// Waits for the next acknowledgement, so a fault injected now starts right after one.
async fn next_ack(ka: &KeepAlive) {
    let before = ka.last_ack_sent_at();
    within("next ack", async {
        while ka.last_ack_sent_at() == before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Asserts that over `window` the last acknowledged send never grew TTL/2 old (when the agent
/// would fence).
async fn assert_acks_stay_young(ka: &KeepAlive, window: Duration) {
    let fences_at = ka.ttl() / 2;
    let worst = oldest_ack_age(ka, window).await;
    eprintln!("oldest acknowledged send: {worst:?} (fencing begins at {fences_at:?})");
    assert!(
        worst < fences_at,
        "the last acknowledged send grew {worst:?} old; the agent fences at {fences_at:?}"
    );
}

#[tokio::test]
async fn a_silent_member_does_not_delay_acks_past_half_the_ttl() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let proxy = TcpProxy::start(etcd.client_addr()).await;
    // The proxy is the preferred endpoint; the direct URL reaches the same member.
    let store = connect_with_production_timeouts(vec![proxy.url(), etcd.client_url()]).await;
    let ttl = Duration::from_secs(6);
    let ka = kept_alive(&store, ttl).await;

    // Right after an acknowledgement, the preferred endpoint goes silent: connections stay
    // open and nothing comes back (a host gone from the network, not a refused connection).
    next_ack(&ka).await;
    proxy.blackhole();

    assert_acks_stay_young(&ka, 2 * ttl).await;
}

/// The members' view of who leads: the index of the leader among `cluster`'s members.
async fn leader_index(cluster: &EtcdCluster) -> usize {
    let out = within(
        "endpoint status",
        cluster.etcdctl(&["endpoint", "status", "-w", "json"]),
    )
    .await
    .expect("etcdctl endpoint status");
    let statuses: Vec<serde_json::Value> = serde_json::from_str(&out).expect("status json");
    let member_id = |s: &serde_json::Value| s["Status"]["header"]["member_id"].as_u64();
    let leader = statuses
        .iter()
        .find_map(|s| s["Status"]["leader"].as_u64())
        .expect("a leader");
    statuses
        .iter()
        .position(|s| member_id(s) == Some(leader))
        .expect("the leader is one of the members")
}

#[tokio::test]
async fn killing_the_etcd_leader_the_keeper_talks_to_does_not_delay_acks_past_half_the_ttl() {
    let mut cluster = within("etcd cluster", EtcdCluster::start(3)).await;
    let leader = leader_index(&cluster).await;
    // The leader first, so the keep-alive stream runs through it: one kill takes away both the
    // keeper's member and the leader, and renewals stall for the election.
    let mut endpoints = cluster.endpoints();
    endpoints.swap(0, leader);
    let store = connect_with_production_timeouts(endpoints).await;
    // The agent's default TTL: an etcd election (1–2 s of election timeout, then a vote) must
    // fit before TTL/2 together with the ping interval.
    let ttl = Duration::from_secs(10);
    let ka = kept_alive(&store, ttl).await;

    cluster.kill_member(leader);
    assert_acks_stay_young(&ka, ttl).await;
}

#[tokio::test]
async fn a_silent_member_and_an_election_among_the_others_do_not_strand_the_keeper() {
    let mut cluster = within("etcd cluster", EtcdCluster::start(3)).await;
    let leader = leader_index(&cluster).await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let proxies = [
        TcpProxy::start(cluster.member(follower).client_addr()).await,
        TcpProxy::start(cluster.member(leader).client_addr()).await,
        TcpProxy::start(cluster.member(other).client_addr()).await,
    ];
    // The keeper starts on the follower's proxy.
    let store = connect_with_production_timeouts(proxies.iter().map(TcpProxy::url).collect()).await;
    let ttl = Duration::from_secs(10);
    let ka = kept_alive(&store, ttl).await;
    next_ack(&ka).await;

    // The keeper's member goes silent to clients (it stays in the cluster), and the leader
    // dies: the one member left that answers says "no leader" until the two elect.
    proxies[0].blackhole();
    cluster.kill_member(leader);
    assert_acks_stay_young(&ka, ttl).await;
}
