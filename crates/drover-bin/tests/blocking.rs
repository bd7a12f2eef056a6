//! `blocks` judged by the workloads themselves: two mutually blocking jobs append `start` and
//! `stop` lines (name, nanoseconds) to one file outside Drover; the first needs 3 s to stop
//! after SIGTERM (grace period 5 s). However the first is made to stop — its `timeoutSeconds`
//! runs out, or the task is deleted — the second may start only after the first's process
//! has exited: a copy inside its grace period still counts as running.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{manifest, records, Cli, Daemon};
use drover_testkit::{wait_for, EtcdServer};

/// A job `name` that records its life in `file` as `<kind> <tag> <nanos>` and needs 3 s to stop.
fn job(name: &str, tag: u32, blocks: &str, file: &Path, extra: &str) -> String {
    let file = file.display();
    format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  command: [sh, -c, \"echo start {tag} $(date +%s%N) >> {file}; trap 'sleep 3; echo stop {tag} $(date +%s%N) >> {file}; exit 1' TERM; while true; do sleep 0.1; done\"]\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 5\n  blocks: [{blocks}]\n{extra}"
    )
}

/// How the first job is made to stop.
enum End {
    /// `timeoutSeconds: 2`: the agent stops it at its deadline.
    Timeout,
    /// `drover delete` of the running task.
    Delete,
}

async fn second_waits_for_first_to_exit(end: End) {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let witness = tempfile::tempdir().expect("tempdir");
    let file = witness.path().join("records");
    let state = tempfile::tempdir().expect("tempdir");
    let _controller = Daemon::start(&cli, &["controller", "--id", "c", "--lease-ttl", "2s"]);
    let _agent = Daemon::start(
        &cli,
        &[
            "agent",
            "--node",
            "a",
            "--driver",
            "process",
            // Tests run as root; their tasks set no spec.user.
            "--allow-root-tasks",
            "--state-dir",
            state.path().to_str().expect("utf-8"),
        ],
    );
    let extra = match end {
        End::Timeout => "  timeoutSeconds: 2\n",
        End::Delete => "",
    };
    let (_d1, first) = manifest(&job("first", 1, "second", &file, extra));
    cli.ok(&["apply", "-f", first.to_str().expect("utf-8")])
        .await;
    wait_for(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { (!records(&file).is_empty()).then_some(()) },
    )
    .await
    .expect("the first job starts");
    let (_d2, second) = manifest(&job("second", 2, "first", &file, ""));
    cli.ok(&["apply", "-f", second.to_str().expect("utf-8")])
        .await;
    if let End::Delete = end {
        cli.ok(&["delete", "task", "first"]).await;
    }
    let seen = wait_for(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let seen = records(&file);
            seen.iter()
                .any(|r| r.0 == "start" && r.1 == 2)
                .then_some(seen)
        },
    )
    .await
    .expect("the second job starts");
    eprintln!("workload records: {seen:?}");
    let stopped = seen
        .iter()
        .find(|r| r.0 == "stop" && r.1 == 1)
        .map(|r| r.2)
        .expect("the first job recorded its stop before the second started");
    let started = seen
        .iter()
        .find(|r| r.0 == "start" && r.1 == 2)
        .map(|r| r.2)
        .expect("second start");
    assert!(
        started >= stopped,
        "the second started {} ms before the first exited",
        (stopped - started) / 1_000_000
    );
}

#[tokio::test]
async fn a_job_blocked_by_one_stopping_at_its_deadline_starts_after_it_exited() {
    second_waits_for_first_to_exit(End::Timeout).await;
}

#[tokio::test]
async fn a_job_blocked_by_a_deleted_one_starts_after_its_copy_exited() {
    second_waits_for_first_to_exit(End::Delete).await;
}
