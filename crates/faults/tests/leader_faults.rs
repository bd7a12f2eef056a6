//! Scenario 4 of the fault suite: the leader's host killed, and the leader frozen (`docker
//! pause`) for longer than its election lease, then resumed. A leader change must disturb
//! nothing: the witness sees every copy keep running — no gap, no overlap — and the frozen
//! leader, once resumed, changes nothing either.

mod common;

use std::time::Duration;

use common::{apply_steady, assert_safe_and_prompt, gaps_after, judge, now_ms};
use drover_faults::cluster::{Cluster, CONTROLLER_TTL};

async fn new_leader(cluster: &Cluster, old: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(leader)) = cluster.leader().await {
            if leader != old {
                return leader;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a new leader within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "fault suite: needs the drover/fault-host image; run with hack/faults.sh"]
async fn the_leaders_host_killed_or_frozen_disturbs_no_copy() {
    let cluster = Cluster::start(3).await.expect("cluster up");
    let applied = apply_steady(&cluster).await;

    let first = cluster.leader().await.expect("leader").expect("one leads");
    let killed = now_ms();
    cluster.kill(&first).await.expect("kill the leader's host");
    let second = new_leader(&cluster, &first).await;

    // Frozen past its lease: a standby takes over; resumed, the old leader's fence is stale.
    cluster.pause(&second).await.expect("pause");
    tokio::time::sleep(CONTROLLER_TTL * 2).await;
    let third = new_leader(&cluster, &second).await;
    cluster.unpause(&second).await.expect("unpause");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_ne!(third, second);

    let verdict = judge(&cluster, applied);
    let gaps = gaps_after(&verdict, killed);
    assert!(
        gaps.is_empty(),
        "a leader change left copies missing: {gaps:?} ms"
    );
    assert_safe_and_prompt(
        &format!("leader {first} killed, {second} frozen, {third} leads"),
        &verdict,
        &gaps,
    );
}
