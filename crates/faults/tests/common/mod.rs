//! What the fault scenarios share: a witness-reporting service task, and reading its copies.
#![allow(dead_code)]

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
pub async fn until<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies task `w` (REPLICAS copies of the witness workload) and waits until all report and
/// two seconds of steady state passed; returns when it was applied.
pub async fn apply_steady(cluster: &Cluster) -> i64 {
    let manifest = format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: w\nspec:\n  command: [/witness, report, --to, \"{}\"]\n  replicas: {REPLICAS}\n  terminationGracePeriodSeconds: 2\n  resources: {{cpu: 10m, memory: 1Mi}}\n",
        cluster.witness()
    );
    let path = cluster.file("w.yaml", &manifest).expect("manifest");
    let applied = now_ms();
    cluster
        .drover(&["apply", "-f", &path])
        .await
        .expect("apply");
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

/// Prints the scenario's figures and asserts its promises: no overlap, and every replacement
/// gap within the agent lease TTL plus 2 s.
pub fn assert_safe_and_prompt(scenario: &str, verdict: &ServiceVerdict, gaps: &[i64]) {
    use drover_faults::cluster::AGENT_TTL;
    eprintln!(
        "{scenario}: overlaps {:?}; replacement gaps {gaps:?} ms (p99 {:?}); lease {AGENT_TTL:?}",
        verdict.overlaps,
        checker::quantile(gaps, 0.99)
    );
    assert!(
        verdict.overlaps.is_empty(),
        "overlap: {:?}",
        verdict.overlaps
    );
    let bound = i64::try_from((AGENT_TTL + Duration::from_secs(2)).as_millis()).unwrap_or(i64::MAX);
    assert!(
        gaps.iter().all(|g| *g <= bound),
        "replacement gaps {gaps:?} ms over lease TTL + 2 s"
    );
}
