//! Scenarios 4 and 5 of the fault suite: the leader's host killed; the leader frozen (`docker
//! pause`) for longer than its election lease, then resumed; the leader cut off from etcd (but
//! not from the agents), then reconnected. A leader change must disturb nothing: the witness
//! sees every copy of the steady service keep running — no gap, no overlap — and the deposed
//! leader, once back, changes nothing either.

mod common;

use std::time::Duration;

use common::new_leader;
use common::scenario::{rounds, Promise, Scenario};
use drover_faults::cluster::{Cluster, CONTROLLER_TTL};

async fn leader(cluster: &Cluster) -> String {
    cluster.leader().await.expect("leader").expect("one leads")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn the_leaders_host_killed_or_frozen_disturbs_no_copy() {
    let cluster = Cluster::start(3).await.expect("cluster up");
    let mut scenario = Scenario::begin(&cluster, "4 leader killed; leader frozen > lease").await;
    for _ in 0..rounds() {
        let first = leader(&cluster).await;
        scenario.fault();
        cluster.kill(&first).await.expect("kill the leader's host");
        let second = new_leader(&cluster, &first).await;
        cluster.boot(&first).await.expect("boot");

        // Frozen past its lease: a standby takes over; resumed, its fence is stale.
        scenario.fault();
        cluster.pause(&second).await.expect("pause");
        tokio::time::sleep(CONTROLLER_TTL * 2).await;
        let third = new_leader(&cluster, &second).await;
        cluster.unpause(&second).await.expect("unpause");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_ne!(third, second);
    }
    scenario.finish(Promise::Undisturbed).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn a_leader_cut_off_from_etcd_but_not_the_agents_disturbs_no_copy() {
    let cluster = Cluster::start(3).await.expect("cluster up");
    let mut scenario = Scenario::begin(&cluster, "5 leader cut off from etcd").await;
    for _ in 0..rounds() {
        let cut = leader(&cluster).await;
        scenario.fault();
        cluster.disconnect(&cut).await.expect("disconnect");
        let next = new_leader(&cluster, &cut).await;
        // Longer than the deposed leader's lease: it must have stepped down by itself.
        tokio::time::sleep(CONTROLLER_TTL * 2).await;
        cluster.reconnect(&cut).await.expect("reconnect");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            leader(&cluster).await,
            next,
            "the reconnected replica does not take over"
        );
    }
    scenario.finish(Promise::Undisturbed).await;
}
