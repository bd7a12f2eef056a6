//! Scenario 1 of the fault suite: an agent host is killed (`docker kill`: the host and every
//! process on it die at once), and booted again before the next round. Judged by the witness:
//! no copy starts while the task's others are all live, the killed host's copies are replaced
//! within the agent lease TTL plus 2 s, and every job run is done exactly once.

mod common;

use common::scenario::{rounds, Promise, Scenario};
use common::{agents_registered, host_of_a_copy, moved_off};
use drover_faults::cluster::Cluster;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn a_killed_agent_host_is_replaced_within_the_lease_and_never_doubled() {
    let cluster = Cluster::start(3).await.expect("cluster up");
    let mut scenario = Scenario::begin(&cluster, "1 agent host killed").await;
    for _ in 0..rounds() {
        let victim = host_of_a_copy(&cluster);
        scenario.fault();
        cluster.kill(&victim).await.expect("kill");
        moved_off(&cluster, &victim).await;
        cluster.boot(&victim).await.expect("boot");
        agents_registered(&cluster).await;
    }
    scenario.finish(Promise::Replaced).await;
}
