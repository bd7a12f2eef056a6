//! Scenario 1 of the fault suite: an agent host is killed (`docker kill`: the host and every
//! process on it die at once). Judged by the witness alone: no copy starts while the task's
//! others are all live, and the killed host's copies are replaced within the agent lease TTL
//! plus 2 s.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{apply_steady, gaps_after, judge, live, now_ms, until, REPLICAS};
use drover_faults::cluster::{Cluster, AGENT_TTL};
use drover_witness::checker;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn a_killed_agent_host_is_replaced_within_the_lease_and_never_doubled() {
    let cluster = Cluster::start(3).await.expect("cluster up");
    let applied = apply_steady(&cluster).await;
    let before = live(&cluster, now_ms(), 500);
    let victim = before[0].host.clone();
    let on_victim = before.iter().filter(|c| c.host == victim).count();
    let killed = now_ms();
    cluster.kill(&victim).await.expect("kill");
    until("3 live copies again", Duration::from_secs(60), || {
        let copies = live(&cluster, now_ms(), 500);
        let hosts: BTreeSet<&str> = copies.iter().map(|c| c.host.as_str()).collect();
        (copies.len() == REPLICAS as usize && !hosts.contains(victim.as_str())).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let verdict = judge(&cluster, applied);
    let gaps = gaps_after(&verdict, killed);
    eprintln!(
        "agent host killed: {on_victim} copies on {victim}; overlaps {:?}; replacement gaps {gaps:?} ms (p99 {:?}); lease {AGENT_TTL:?}",
        verdict.overlaps,
        checker::quantile(&gaps, 0.99)
    );
    assert!(
        verdict.overlaps.is_empty(),
        "overlap: {:?}",
        verdict.overlaps
    );
    assert!(!gaps.is_empty(), "the killed host's copies left a gap");
    let bound = i64::try_from((AGENT_TTL + Duration::from_secs(2)).as_millis()).unwrap_or(i64::MAX);
    assert!(
        gaps.iter().all(|g| *g <= bound),
        "replacement gaps {gaps:?} ms over lease TTL + 2 s"
    );
}
