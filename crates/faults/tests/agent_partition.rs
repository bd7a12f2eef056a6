//! Scenario 2 of the fault suite: an agent host cut off from etcd and the controllers
//! (`docker network disconnect` of the cluster network; its copies still reach the witness on
//! a network of their own), later reconnected. Its copies must stop before its lease can have
//! expired, so before any replacement starts: the witness sees no overlap. With the test-only
//! switch that keeps copies running on a fenced node, the same scenario must show overlap — the
//! checker can fail.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::scenario::{rounds, Promise, Scenario};
use common::{apply_steady, gaps_after, host_of_a_copy, judge, live, now_ms, until, REPLICAS};
use drover_faults::cluster::Cluster;
use drover_witness::checker::ServiceVerdict;

/// Cuts the host of one copy off, waits for its replacements, reconnects it and waits until
/// the cluster converges again; returns the verdict, the gaps after the cut and the victim.
async fn partition(cluster: &Cluster) -> (ServiceVerdict, Vec<i64>, String) {
    let applied = apply_steady(cluster).await;
    let victim = live(cluster, now_ms(), 500)[0].host.clone();
    let cut = now_ms();
    cluster.disconnect(&victim).await.expect("disconnect");
    until(
        "replacements on the other hosts",
        Duration::from_secs(60),
        || {
            let copies = live(cluster, now_ms(), 500);
            let elsewhere = copies.iter().filter(|c| c.host != victim).count();
            (elsewhere >= REPLICAS as usize).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.reconnect(&victim).await.expect("reconnect");
    // Converged: exactly REPLICAS copies report, whatever host they are on.
    until("the cluster converges", Duration::from_secs(60), || {
        let copies = live(cluster, now_ms(), 500);
        let ids: BTreeSet<String> = copies.iter().map(|c| c.instance.to_string()).collect();
        (copies.len() == REPLICAS as usize && ids.len() == REPLICAS as usize).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let verdict = judge(cluster, applied);
    let gaps = gaps_after(&verdict, cut);
    (verdict, gaps, victim)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn a_cut_off_agent_stops_its_copies_before_any_replacement_starts() {
    let cluster = Cluster::start(3).await.expect("cluster up");
    let mut scenario = Scenario::begin(&cluster, "2 agent host cut off").await;
    for _ in 0..rounds() {
        let victim = host_of_a_copy(&cluster);
        scenario.fault();
        cluster.disconnect(&victim).await.expect("disconnect");
        common::moved_off(&cluster, &victim).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.reconnect(&victim).await.expect("reconnect");
        common::agents_registered(&cluster).await;
    }
    scenario.finish(Promise::Replaced).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn without_self_fencing_the_witness_sees_the_overlap() {
    let cluster = Cluster::start_with(3, &["--unsafe-keep-copies-when-fenced"])
        .await
        .expect("cluster up");
    let (verdict, _, victim) = partition(&cluster).await;
    eprintln!(
        "agent host cut off, self-fencing disabled: {victim}; overlaps {:?}",
        verdict.overlaps
    );
    assert!(
        !verdict.overlaps.is_empty(),
        "the checker must see the cut-off copies overlap their replacements"
    );
}
