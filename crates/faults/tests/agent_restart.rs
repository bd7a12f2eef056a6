//! Scenario 8 of the fault suite: an agent host restarted whole (`docker kill`, then `docker
//! start` with its disk, and so its agent state dir, kept), quicker than its lease expires. Its
//! copies died with the host; the agent that boots finds their pid files (in a fresh pid
//! namespace, where those numbers may now belong to other processes), must adopt nothing that
//! is not its own, and must not let a copy run twice: the witness sees no overlap, and the
//! host's copies are back within the lease TTL plus 2 s.

mod common;

use std::time::Duration;

use common::scenario::{rounds, Promise, Scenario};
use common::{agents_registered, host_of_a_copy, live, now_ms, until_or_none, REPLICAS};
use drover_faults::cluster::Cluster;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn a_restarted_agent_host_adopts_nothing_foreign_and_runs_no_copy_twice() {
    let cluster = Cluster::start(3).await.expect("cluster up");
    let mut scenario = Scenario::begin(&cluster, "8 agent host restarted").await;
    for _ in 0..rounds() {
        let victim = host_of_a_copy(&cluster);
        let at = scenario.fault();
        cluster.kill(&victim).await.expect("kill");
        cluster.boot(&victim).await.expect("boot");
        agents_registered(&cluster).await;
        let back = until_or_none(Duration::from_secs(60), || {
            let copies = live(&cluster, now_ms(), 500);
            let fresh = copies.iter().all(|c| c.host != victim || c.first_ms > at);
            (copies.len() == REPLICAS as usize && fresh).then_some(())
        })
        .await;
        if back.is_none() {
            for host in [victim.as_str(), "c1", "c2", "c3"] {
                eprintln!("--- {host}\n{}", cluster.logs(host).await);
            }
            panic!("every copy of w reporting again within 60 s after {victim} restarted");
        }
    }
    scenario.finish(Promise::Replaced).await;
}
