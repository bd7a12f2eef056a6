//! Scenario 7 of the fault suite: etcd compacted to its newest revision while an agent and the
//! leader are cut off, with a task applied and the load changing tasks meanwhile. The members
//! drop the cut-off connections (they ping silent clients), so once back on the network both must
//! watch anew from a revision that no longer exists: each must relist rather than miss what
//! changed. The agent is cut off for less than TTL/2, so it keeps its copies; the leader for
//! less than its lease, so it may keep leading — on its relisted view. Then the leader is
//! killed, so a standby's fresh view plans too.

mod common;

use std::time::Duration;

use common::load::service;
use common::new_leader;
use common::scenario::{rounds, Promise, Scenario};
use drover_faults::cluster::Cluster;

/// What the store's watcher logs when its revision was compacted away.
const RELISTED: &str = "compacted; re-listing";
/// How long after reconnecting a watch may take to meet the compaction.
const RELIST_WITHIN: Duration = Duration::from_secs(15);
/// What a controller logs when it stops leading.
const STEPPED_DOWN: &str = "stepping down";

fn chrono_now() -> String {
    chrono::Utc::now().format("%H:%M:%S%.3f").to_string()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn a_compaction_while_cut_off_is_relisted_not_missed() {
    let cluster = Cluster::start(3).await.expect("cluster up");
    let mut scenario = Scenario::begin(&cluster, "7 compaction while cut off").await;
    for round in 0..rounds() {
        let leader = cluster.leader().await.expect("leader").expect("one leads");
        let agent = &cluster.agents[round % cluster.agents.len()];
        let before = (
            cluster.log_lines_with(agent, RELISTED).await,
            cluster.log_lines_with(&leader, RELISTED).await,
            cluster.log_lines_with(&leader, STEPPED_DOWN).await,
        );
        eprintln!(
            "round {round}: cutting {agent} and {leader} off at {}",
            chrono_now()
        );
        scenario.fault();
        cluster.disconnect(agent).await.expect("disconnect agent");
        cluster
            .disconnect(&leader)
            .await
            .expect("disconnect leader");
        // Once the members have dropped the silent connections (they ping after 500 ms and
        // wait 500 ms more), two changes (besides the load) that neither can have received
        // before, so the revision each watch resumes from (one past the last it saw) lies
        // below the compaction (etcd keeps the compacted revision itself). Changes made
        // before the drop would still reach them over the old connection once it is back.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for marker in ["a", "b"] {
            let task = service(&format!("marker-{round}{marker}"), 0, &cluster.witness());
            cluster.apply(&task).await.expect("apply a marker task");
        }
        let revision = cluster.cli().compact_all().await.expect("compact");
        eprintln!("round {round}: compacted to {revision} at {}", chrono_now());
        cluster.reconnect(&leader).await.expect("reconnect leader");
        cluster.reconnect(agent).await.expect("reconnect agent");
        eprintln!("round {round}: both back at {}", chrono_now());
        // The path under test was taken: the watches met the compaction and relisted. A
        // client learns that the member dropped its connection only when it next sends on it
        // (at the latest its HTTP/2 keep-alive, 5 s + 3 s), so this can take a while.
        let deadline = tokio::time::Instant::now() + RELIST_WITHIN;
        let (agent_relisted, leader_relisted, stepped_down) = loop {
            let seen = (
                cluster.log_lines_with(agent, RELISTED).await > before.0,
                cluster.log_lines_with(&leader, RELISTED).await > before.1,
                cluster.log_lines_with(&leader, STEPPED_DOWN).await > before.2,
            );
            if (seen.0 && (seen.1 || seen.2)) || tokio::time::Instant::now() >= deadline {
                break seen;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        eprintln!(
            "compacted to {revision}: agent {agent} relisted: {agent_relisted}; leader {leader} \
             relisted: {leader_relisted}, stepped down: {stepped_down}"
        );
        assert!(
            agent_relisted,
            "agent {agent} did not relist within {RELIST_WITHIN:?} of the compaction"
        );
        if !(leader_relisted || stepped_down) {
            for line in cluster.lines_with(&leader, "drover_store::watcher").await {
                eprintln!("{leader}: {line}");
            }
        }
        assert!(
            leader_relisted || stepped_down,
            "leader {leader} kept leading for {RELIST_WITHIN:?} after the compaction without \
             relisting"
        );

        let now = cluster.leader().await.expect("leader").expect("one leads");
        cluster.kill(&now).await.expect("kill the leader");
        new_leader(&cluster, &now).await;
        cluster.boot(&now).await.expect("boot");
    }
    scenario.finish(Promise::Undisturbed).await;
}
