//! Scenario 3 of the fault suite: an agent stopped gracefully (SIGTERM: it stops its copies,
//! reports them, then releases its lease) and a node drained (`drover drain`). Each copy ends
//! before its replacement starts (the task has no surge budget), so the witness sees no
//! overlap, and each replacement follows within the agent lease TTL plus 2 s.

mod common;

use common::scenario::{rounds, Promise, Scenario};
use common::{agents_registered, host_of_a_copy, moved_off};
use drover_faults::cluster::Cluster;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn a_stopped_agent_and_a_drained_node_hand_over_without_overlap() {
    let cluster = Cluster::start(3).await.expect("cluster up");
    let mut scenario = Scenario::begin(&cluster, "3 agent stopped (SIGTERM), node drained").await;
    for _ in 0..rounds() {
        let stopped = host_of_a_copy(&cluster);
        scenario.fault();
        cluster.signal(&stopped, "TERM").await.expect("SIGTERM");
        moved_off(&cluster, &stopped).await;
        cluster.boot(&stopped).await.expect("boot");
        agents_registered(&cluster).await;

        let drained = host_of_a_copy(&cluster);
        scenario.fault();
        cluster
            .drover(&["drain", &drained, "--timeout", "60s"])
            .await
            .expect("drain");
        moved_off(&cluster, &drained).await;
        cluster
            .drover(&["uncordon", &drained])
            .await
            .expect("uncordon");
    }
    scenario.finish(Promise::Replaced).await;
}
