//! What the fault scenarios share: a witness-reporting service task, reading its copies, the
//! steady load ([`load`]) and each scenario's frame ([`scenario`]).
#![allow(dead_code)]

pub mod load;
pub mod scenario;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_faults::cluster::Cluster;
use drover_witness::checker::{self, Copy, Desired, ServiceVerdict};

/// Replicas of the scenario's service task `w`.
pub const REPLICAS: u32 = 3;
/// The witness workload's report period.
pub const PERIOD_MS: i64 = 100;

/// Milliseconds since the Unix epoch: the clock the witness stamps with (same kernel).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Copies of task `w` that reported within the last `window` ms before `at`.
pub fn live(cluster: &Cluster, at: i64, window: i64) -> Vec<Copy> {
    let (copies, _) = checker::copies(&cluster.records().expect("records"));
    copies
        .into_iter()
        .filter(|c| c.instance.task() == "w" && c.last_ms >= at - window)
        .collect()
}

/// Polls `check` every 200 ms until it answers, failing with `what` after `within`.
pub async fn until<T>(what: &str, within: Duration, check: impl FnMut() -> Option<T>) -> T {
    match until_or_none(within, check).await {
        Some(v) => v,
        None => panic!("{what} within {within:?}"),
    }
}

/// Polls `check` every 200 ms until it answers; `None` after `within`.
pub async fn until_or_none<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies task `w` (REPLICAS copies of the witness workload) and waits until all report and
/// two seconds of steady state passed; returns when it was applied.
pub async fn apply_steady(cluster: &Cluster) -> i64 {
    let manifest = load::service("w", REPLICAS, &cluster.witness());
    let applied = now_ms();
    cluster.apply(&manifest).await.expect("apply");
    until("3 live copies", Duration::from_secs(60), || {
        (live(cluster, now_ms(), 500).len() == REPLICAS as usize).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    applied
}

/// Judges task `w` from its application to its last report.
pub fn judge(cluster: &Cluster, applied: i64) -> ServiceVerdict {
    let (copies, skipped) = checker::copies(&cluster.records().expect("records"));
    assert_eq!(skipped, 0, "every report names a Drover instance");
    let copies: Vec<&Copy> = copies.iter().filter(|c| c.instance.task() == "w").collect();
    // Judged up to the last report: after it, live copies have just not reported yet.
    let end = copies.iter().map(|c| c.last_ms).max().unwrap_or(applied);
    let timeline = [Desired {
        from_ms: applied,
        desired: REPLICAS,
        allowed: REPLICAS,
    }];
    checker::judge_service(&copies, &timeline, PERIOD_MS, end)
}

/// The lengths of the gaps that end after `fault_ms`.
pub fn gaps_after(verdict: &ServiceVerdict, fault_ms: i64) -> Vec<i64> {
    verdict
        .gaps
        .iter()
        .filter(|g| g.to_ms > fault_ms)
        .map(checker::Interval::millis)
        .collect()
}

/// Waits until REPLICAS copies of `w` report, none of them on `host`.
pub async fn moved_off(cluster: &Cluster, host: &str) {
    until(
        &format!("every copy of w off {host}"),
        Duration::from_secs(90),
        || {
            let copies = live(cluster, now_ms(), 500);
            let on_host = copies.iter().any(|c| c.host == host);
            (copies.len() == REPLICAS as usize && !on_host).then_some(())
        },
    )
    .await;
}

/// A host running a copy of `w` now.
pub fn host_of_a_copy(cluster: &Cluster) -> String {
    live(cluster, now_ms(), 500)
        .first()
        .map(|c| c.host.clone())
        .expect("a live copy of w")
}

/// Waits until a controller other than `old` leads; returns it.
pub async fn new_leader(cluster: &Cluster, old: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(leader)) = cluster.leader().await {
            if leader != old {
                return leader;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a controller other than {old} leads within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until all three etcd members answer and one of them leads; returns the leader.
pub async fn etcd_whole(cluster: &Cluster) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(statuses) = cluster.cli().member_statuses().await {
            if statuses.len() == 3 {
                if let Ok(Some(leader)) = cluster.etcd_leader().await {
                    return leader;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "all etcd members answer within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until every agent is registered again (after a host came back).
pub async fn agents_registered(cluster: &Cluster) {
    let want = cluster.agents.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(store) = cluster.store().await {
            if let Ok(nodes) = store
                .list::<drover_api::node::Node>(&cluster.keys().nodes())
                .await
            {
                if nodes.items.len() == want {
                    return;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{want} agents registered within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
