//! Scenario 3 of the fault suite: an agent stopped gracefully (SIGTERM: it stops its copies,
//! reports them, then releases its lease) and a node drained (`drover drain`). Each copy ends
//! before its replacement starts (the task has no surge budget), so the witness sees no
//! overlap, and each replacement follows within the agent lease TTL plus 2 s.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    apply_steady, assert_safe_and_prompt, gaps_after, judge, live, now_ms, until, REPLICAS,
};
use drover_faults::cluster::Cluster;

/// Waits until REPLICAS copies report, none of them on `gone`.
async fn moved_off(cluster: &Cluster, gone: &str) {
    until("every copy off the host", Duration::from_secs(90), || {
        let copies = live(cluster, now_ms(), 500);
        let hosts: BTreeSet<&str> = copies.iter().map(|c| c.host.as_str()).collect();
        (copies.len() == REPLICAS as usize && !hosts.contains(gone)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn a_stopped_agent_and_a_drained_node_hand_over_without_overlap() {
    let cluster = Cluster::start(3).await.expect("cluster up");
    let applied = apply_steady(&cluster).await;

    let stopped = live(&cluster, now_ms(), 500)[0].host.clone();
    let first_fault = now_ms();
    cluster.signal(&stopped, "TERM").await.expect("SIGTERM");
    moved_off(&cluster, &stopped).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let drained = live(&cluster, now_ms(), 500)
        .into_iter()
        .map(|c| c.host)
        .find(|h| *h != stopped)
        .expect("a host still running a copy");
    cluster
        .drover(&["drain", &drained, "--timeout", "60s"])
        .await
        .expect("drain");
    moved_off(&cluster, &drained).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let verdict = judge(&cluster, applied);
    let gaps = gaps_after(&verdict, first_fault);
    assert_safe_and_prompt(
        &format!("agent {stopped} stopped (SIGTERM), node {drained} drained"),
        &verdict,
        &gaps,
    );
}
