//! Scenario 1 of the fault suite: an agent host is killed (`docker kill`: the host and every
//! process on it die at once). Judged by the witness alone: no copy starts while the task's
//! others are all live, and the killed host's copies are replaced within the agent lease TTL
//! plus 2 s.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    apply_steady, assert_safe_and_prompt, gaps_after, judge, live, now_ms, until, REPLICAS,
};
use drover_faults::cluster::Cluster;

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
    assert!(!gaps.is_empty(), "the killed host's copies left a gap");
    assert_safe_and_prompt(
        &format!("agent host killed ({on_victim} copies on {victim})"),
        &verdict,
        &gaps,
    );
}
