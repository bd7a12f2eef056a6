//! Promise 6 on agent shutdown, judged by the workload itself: every copy appends `start` and
//! `stop` lines (pid, nanoseconds) to a file outside Drover, and takes 5 s to stop after
//! SIGTERM. When its agent gets SIGTERM, the replacement on the other node must start only
//! after the old copy has exited: the agent stops its copies first and releases its lease last.
//! Checked for a single-replica service and for a job run retried elsewhere.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{manifest, Cli, Daemon};
use drover_api::instance::{InstanceStatus, Phase};
use drover_api::keys::Keys;
use drover_store::{Store, StoreConfig};
use drover_testkit::{wait_for, EtcdServer};

/// A workload that records its own life and needs 5 s to stop.
fn witness_command(records: &Path) -> String {
    let file = records.display();
    format!(
        "echo start $$ $(date +%s%N) >> {file}; \
         trap 'sleep 5; echo stop $$ $(date +%s%N) >> {file}; exit 0' TERM; \
         while true; do sleep 0.1; done"
    )
}

/// (kind, pid, nanos) in file order.
fn records(path: &Path) -> Vec<(String, u32, u128)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((
                parts.next()?.to_string(),
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// The most copies alive at once, from the records alone.
fn max_live(records: &[(String, u32, u128)]) -> usize {
    let mut events: Vec<(u128, i32)> = records
        .iter()
        .map(|(kind, _, t)| (*t, if kind == "start" { 1 } else { -1 }))
        .collect();
    // A stop and a start at the same instant: count the stop first.
    events.sort();
    let (mut live, mut max) = (0i32, 0i32);
    for (_, delta) in events {
        live += delta;
        max = max.max(live);
    }
    usize::try_from(max).unwrap_or(0)
}

async fn scenario(task_yaml: impl FnOnce(&Path) -> String) {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let store = Store::connect(StoreConfig::new(server.endpoints()))
        .await
        .expect("store");
    let keys = Keys::new(&cli.prefix);
    let witness = tempfile::tempdir().expect("tempdir");
    let file = witness.path().join("records");
    let states = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let _controller = Daemon::start(&cli, &["controller", "--id", "c", "--lease-ttl", "2s"]);
    let mut agents: Vec<(String, Daemon)> = ["a", "b"]
        .iter()
        .zip(&states)
        .map(|(node, state)| {
            let daemon = Daemon::start(
                &cli,
                &[
                    "agent",
                    "--node",
                    node,
                    "--driver",
                    "process",
                    "--lease-ttl",
                    "3s",
                    "--state-dir",
                    state.path().to_str().expect("utf-8"),
                ],
            );
            ((*node).to_string(), daemon)
        })
        .collect();
    wait_for(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let n = store.list_raw(&keys.nodes()).await.ok()?.items.len();
            (n == 2).then_some(())
        },
    )
    .await
    .expect("both agents register");

    let (_dir, path) = manifest(&task_yaml(&file));
    cli.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let first = wait_for(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let statuses = store
                .list_checked::<InstanceStatus>(&keys.statuses())
                .await
                .ok()?;
            let running = statuses
                .items
                .into_iter()
                .find(|s| s.value.phase == Phase::Running)?;
            (records(&file).len() == 1).then_some(running.value)
        },
    )
    .await
    .expect("the first copy runs and recorded its start");

    let index = agents
        .iter()
        .position(|(n, _)| *n == first.node)
        .expect("its agent");
    let (_, old_agent) = &mut agents[index];
    old_agent.signal("TERM");
    let exited = old_agent.wait_exit(Duration::from_secs(30)).await;
    assert!(exited.is_some(), "the agent exits after stopping its copy");

    let seen = wait_for(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let seen = records(&file);
            (seen.iter().filter(|r| r.0 == "start").count() >= 2).then_some(seen)
        },
    )
    .await
    .expect("a replacement starts on the other node");
    eprintln!("workload records: {seen:?}");
    let old_pid = seen[0].1;
    let stopped = seen
        .iter()
        .find(|r| r.0 == "stop" && r.1 == old_pid)
        .expect("the old copy recorded its stop");
    let replacement = seen
        .iter()
        .find(|r| r.0 == "start" && r.1 != old_pid)
        .expect("the replacement recorded its start");
    assert!(
        replacement.2 >= stopped.2,
        "the replacement started {} ms before the old copy exited",
        (stopped.2 - replacement.2) / 1_000_000
    );
    assert_eq!(max_live(&seen), 1, "never two live copies: {seen:?}");
}

#[tokio::test]
async fn sigterm_of_an_agent_stops_a_service_copy_before_its_replacement_starts() {
    scenario(|file| {
        format!(
            "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: solo\nspec:\n  command: [sh, -c, \"{}\"]\n  terminationGracePeriodSeconds: 30\n",
            witness_command(file)
        )
    })
    .await;
}

#[tokio::test]
async fn sigterm_of_an_agent_stops_a_job_run_before_its_retry_starts() {
    scenario(|file| {
        format!(
            "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: once\nspec:\n  command: [sh, -c, \"{}\"]\n  restartPolicy: Never\n  maxRetries: 2\n  terminationGracePeriodSeconds: 30\n",
            witness_command(file)
        )
    })
    .await;
}

#[test]
fn max_live_counts_overlap_from_records() {
    let r = |k: &str, p, t| (k.to_string(), p, t);
    assert_eq!(
        max_live(&[r("start", 1, 1), r("stop", 1, 5), r("start", 2, 6)]),
        1
    );
    assert_eq!(
        max_live(&[r("start", 1, 1), r("start", 2, 3), r("stop", 1, 5)]),
        2
    );
}
