//! Scenario 6 of the fault suite, first part: one etcd member's host killed (sometimes etcd's
//! leader, so a leader election follows). Agents and controllers renew their leases through
//! the members that answer: the witness sees no copy missing and none doubled.

mod common;

use std::time::Duration;

use common::{apply_steady, assert_safe_and_prompt, gaps_after, judge, now_ms};
use drover_faults::cluster::{Cluster, AGENT_TTL};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn an_etcd_member_killed_disturbs_no_copy() {
    let cluster = Cluster::start(3).await.expect("cluster up");
    let applied = apply_steady(&cluster).await;
    let killed = now_ms();
    cluster.kill("e1").await.expect("kill e1");
    // Longer than every lease: agents and the leader must renew through e2 and e3.
    tokio::time::sleep(AGENT_TTL + Duration::from_secs(4)).await;
    for agent in &cluster.agents {
        let logs = cluster.logs(agent).await;
        for line in logs
            .lines()
            .filter(|l| l.contains("FENC") || l.contains("WARN") || l.contains("ERROR"))
        {
            eprintln!("{agent}: {line}");
        }
    }
    let verdict = judge(&cluster, applied);
    let gaps = gaps_after(&verdict, killed);
    assert!(
        gaps.is_empty(),
        "copies went missing while a member was down: {gaps:?} ms"
    );
    assert_safe_and_prompt("etcd member e1 killed", &verdict, &gaps);
}
