//! `drover bench scale` end to end, small: with its own etcd and a failover, and against a
//! given etcd. Only facts that hold on any machine are asserted (everything Running, nothing
//! moved by the leader change, at least one term, a figure in every row, nothing left behind),
//! never a time.

use std::process::Stdio;
use std::time::Duration;

use drover_testkit::EtcdServer;
use tokio::process::Command;

/// Bound on one small run (a debug build on a busy 2-core machine takes about 10 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(100);

/// One table row: what, value, note.
type Row = (String, String, String);

/// Runs `drover bench scale <args>` with `envs`, requires success; returns the table's rows.
async fn bench(args: &[&str], etcd: Option<&str>) -> Vec<Row> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
    command
        .args(["bench", "scale"])
        .args(args)
        .env_remove("DROVER_ETCD")
        .env_remove("DROVER_PREFIX")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(etcd) = etcd {
        command.env("DROVER_ETCD", etcd);
    }
    let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("bench scale {args:?} did not finish within {RUN_TIMEOUT:?}"))
        .expect("drover runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench scale {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<Row> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| what |"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), 3, "a row of three cells: {l}");
            (cells[0].into(), cells[1].into(), cells[2].into())
        })
        .collect();
    assert!(!rows.is_empty(), "a table:\n{stdout}");
    for (what, value, _) in &rows {
        assert!(
            value.chars().any(|c| c.is_ascii_digit()),
            "row {what:?} has no figure: {value:?}\n{stdout}"
        );
    }
    rows
}

/// The value of the row whose label starts with `what`.
fn value<'a>(rows: &'a [Row], what: &str) -> &'a str {
    rows.iter()
        .find(|(w, _, _)| w.starts_with(what))
        .map(|(_, v, _)| v.as_str())
        .unwrap_or_else(|| panic!("no row {what:?} in {rows:#?}"))
}

fn bench_dirs() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("drover-bench-etcd-"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn own_etcd_with_a_failover_runs_everything_and_moves_nothing() {
    let before = bench_dirs();
    let rows = bench(
        &[
            "--nodes",
            "20",
            "--instances",
            "200",
            "--replicas-per-task",
            "100",
            "--failover",
            "--web",
        ],
        None,
    )
    .await;
    value(&rows, "apply → all 200 assigned");
    value(&rows, "web view: first page");
    assert!(
        value(&rows, "web view: c0 RSS before → with the view open").contains(" %)"),
        "{rows:#?}"
    );
    value(&rows, "apply → all 200 Running");
    value(&rows, "placements/s");
    value(&rows, "peak RSS (VmHWM), etcd");
    value(&rows, "etcd db size at the end");
    assert_eq!(
        value(&rows, "failover: assignment keys put or deleted"),
        "0",
        "a leader change moves nothing"
    );
    value(&rows, "failover: SIGKILL");
    let terms: usize = value(&rows, "leader terms")
        .parse()
        .expect("a count of terms");
    assert!(terms >= 1, "at least the term that placed everything");
    let baselines = rows
        .iter()
        .filter(|(w, _, _)| w.starts_with("raw puts"))
        .count();
    assert_eq!(baselines, 3, "three baseline runs");
    for (what, _, note) in rows.iter().filter(|(w, _, _)| w.starts_with("raw puts")) {
        assert!(
            note.contains("; 64 requests in flight at most"),
            "{what}: {note}"
        );
    }
    let batched: Vec<_> = rows
        .iter()
        .filter(|(what, _, _)| what.starts_with("puts of"))
        .collect();
    assert_eq!(batched.len(), 1, "one batched reference run");
    let (what, _, note) = batched[0];
    // 200 values make 2 transactions of at most 125: fewer than the 8 lanes can hold.
    let in_flight: usize = note
        .split("; ")
        .find_map(|part| part.split_once(" requests in flight"))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{what}: no in-flight count in {note}"));
    assert!((1..=8).contains(&in_flight), "{what}: {note}");
    assert!(note.contains("the batched reference"), "{what}: {note}");
    let (_, _, placed) = rows
        .iter()
        .find(|(w, _, _)| w.starts_with("placements/s"))
        .expect("a placements row");
    assert!(
        placed.contains("of the baseline") && placed.contains("of the batched reference"),
        "placements against both: {placed}"
    );
    let left: Vec<String> = bench_dirs()
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    assert!(left.is_empty(), "etcd data dirs left behind: {left:?}");
}

#[tokio::test]
async fn a_given_etcd_is_used_and_left_clean() {
    let etcd = EtcdServer::start().await;
    let endpoint = etcd.client_url();
    let rows = bench(
        &[
            "--nodes",
            "10",
            "--instances",
            "50",
            "--replicas-per-task",
            "25",
        ],
        Some(&endpoint),
    )
    .await;
    value(&rows, "apply → all 50 Running");
    assert!(
        !rows
            .iter()
            .any(|(w, _, _)| w.contains("etcd") && w.contains("RSS")),
        "no etcd of its own: {rows:#?}"
    );
    let left = etcd
        .etcdctl(&["get", "--prefix", "/drover-bench-", "--keys-only"])
        .await
        .expect("etcdctl");
    assert!(left.trim().is_empty(), "keys left behind: {left}");
}
