//! Work beyond services, end to end: a controller process and real agents running real
//! processes. Triggers, schedules without overlap, dependencies, mutual exclusion, deadlines,
//! the circuit breaker, dead letters and retries — checked from the run records in etcd.

mod common;

use std::time::Duration;

use common::{manifest, Cli, Daemon};
use drover_api::keys::Keys;
use drover_api::run::{RunOutcome, RunRecord};
use drover_api::taskstate::TaskState;
use drover_store::{Store, StoreConfig};
use drover_testkit::{wait_for, EtcdServer};

/// A controller and `agents` process-driver agents on one etcd.
struct Cluster {
    _server: EtcdServer,
    cli: Cli,
    store: Store,
    keys: Keys,
    daemons: Vec<Daemon>,
    _state: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn start(agents: usize) -> Cluster {
        let server = EtcdServer::start().await;
        let cli = Cli::new(server.endpoints());
        let store = Store::connect(StoreConfig::new(server.endpoints()))
            .await
            .expect("store");
        let keys = Keys::new(&cli.prefix);
        let mut daemons = vec![Daemon::start(
            &cli,
            &["controller", "--id", "c", "--lease-ttl", "2s"],
        )];
        let mut state = Vec::new();
        for i in 0..agents {
            let dir = tempfile::tempdir().expect("tempdir");
            let node = format!("n{i}");
            daemons.push(Daemon::start(
                &cli,
                &[
                    "agent",
                    "--node",
                    &node,
                    "--driver",
                    "process",
                    // Tests run as root; their tasks set no spec.user.
                    "--allow-root-tasks",
                    "--lease-ttl",
                    "4s",
                    "--state-dir",
                    dir.path().to_str().expect("utf-8"),
                ],
            ));
            state.push(dir);
        }
        let cluster = Cluster {
            _server: server,
            cli,
            store,
            keys,
            daemons,
            _state: state,
        };
        wait_for(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                let nodes = cluster
                    .store
                    .list_raw(&cluster.keys.nodes())
                    .await
                    .ok()?
                    .items
                    .len();
                (nodes == agents).then_some(())
            },
        )
        .await
        .expect("agents register");
        cluster
    }

    async fn apply(&self, yaml: &str) {
        let (_dir, path) = manifest(yaml);
        self.cli
            .ok(&["apply", "-f", path.to_str().expect("utf-8")])
            .await;
    }

    async fn runs(&self, task: &str) -> Vec<RunRecord> {
        self.store
            .list::<RunRecord>(&self.keys.runs_of("default", task))
            .await
            .expect("list runs")
            .items
            .into_iter()
            .map(|i| i.value)
            .collect()
    }

    async fn state(&self, task: &str) -> TaskState {
        self.store
            .get::<TaskState>(&self.keys.taskstate("default", task))
            .await
            .expect("get")
            .map(|v| v.value)
            .unwrap_or_default()
    }

    /// Waits until `task` has at least `count` finished runs; returns all its runs.
    async fn finished(&self, task: &str, count: usize, within: Duration) -> Vec<RunRecord> {
        wait_for(within, Duration::from_millis(200), || async {
            let runs = self.runs(task).await;
            (runs.iter().filter(|r| r.finished_at.is_some()).count() >= count).then_some(runs)
        })
        .await
        .unwrap_or_else(|_| panic!("{task}: {count} finished runs not seen within {within:?}"))
    }
}

fn job(name: &str, script: &str, extra: &str) -> String {
    format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  command: [sh, -c, {script:?}]\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 2\n  resources: {{cpu: 10m, memory: 1Mi}}\n{extra}"
    )
}

/// No two runs of the list overlap in time (a finished run ends before the next one starts).
fn assert_no_overlap(runs: &[RunRecord], what: &str) {
    let mut spans: Vec<_> = runs.iter().map(|r| (r.started_at, r.finished_at)).collect();
    spans.sort();
    for pair in spans.windows(2) {
        let end = pair[0]
            .1
            .unwrap_or_else(|| panic!("{what}: an earlier run is still going"));
        assert!(end <= pair[1].0, "{what}: runs overlap: {pair:?}");
    }
}

#[tokio::test]
async fn a_manual_task_runs_exactly_once_per_trigger_and_a_second_trigger_is_refused() {
    let cluster = Cluster::start(1).await;
    cluster
        .apply(&job("manual", "sleep 3", "  trigger: manual\n"))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        cluster.runs("manual").await.is_empty(),
        "a manual task does not run on apply"
    );
    let out = cluster.cli.ok(&["trigger", "manual"]).await;
    assert!(out.contains("task/manual triggered"), "{out}");
    wait_for(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { (!cluster.runs("manual").await.is_empty()).then_some(()) },
    )
    .await
    .expect("the trigger starts a run");
    let refused = cluster.cli.run(&["trigger", "manual"]).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("has run 1 going"), "{stderr}");
    let runs = cluster.finished("manual", 1, Duration::from_secs(30)).await;
    assert_eq!(runs.len(), 1, "exactly one run: {runs:?}");
    assert_eq!(runs[0].outcome, Some(RunOutcome::Succeeded));
    let history = cluster.cli.ok(&["get", "runs", "manual"]).await;
    let row = history.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with('1') && row.contains("trigger") && row.contains("Succeeded"),
        "{history}"
    );
    let overview = cluster.cli.ok(&["get", "tasks"]).await;
    assert!(
        overview.contains("triggered") && overview.contains("#1 Succeeded"),
        "{overview}"
    );
}

#[tokio::test]
async fn scheduled_runs_repeat_and_never_overlap_under_forbid() {
    let cluster = Cluster::start(1).await;
    // Each run takes 3 s; ticks come every 2 s; Forbid skips the ticks that find a run going.
    cluster
        .apply(&job("ticker", "sleep 3", "  every: 2s\n"))
        .await;
    let runs = cluster.finished("ticker", 3, Duration::from_secs(60)).await;
    let done: Vec<RunRecord> = runs
        .into_iter()
        .filter(|r| r.finished_at.is_some())
        .collect();
    assert_no_overlap(&done, "ticker");
    assert!(
        done.iter()
            .all(|r| r.outcome == Some(RunOutcome::Succeeded)),
        "{done:?}"
    );
}

#[tokio::test]
async fn a_dependent_task_waits_for_its_dependency_and_not_after_a_failure() {
    let cluster = Cluster::start(1).await;
    cluster
        .apply(
            &[
                job("fetch", "sleep 2; exit 0", "  trigger: manual\n"),
                job(
                    "process",
                    "exit 0",
                    "  trigger: manual\n  dependsOn: [fetch]\n",
                ),
            ]
            .join("---\n"),
        )
        .await;
    cluster.cli.ok(&["trigger", "process"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        cluster.runs("process").await.is_empty(),
        "process must wait for fetch"
    );
    let reason = cluster
        .state("process")
        .await
        .pending_reason
        .unwrap_or_default();
    assert!(reason.contains("fetch"), "describe says why: {reason:?}");

    cluster.cli.ok(&["trigger", "fetch"]).await;
    let fetch = cluster.finished("fetch", 1, Duration::from_secs(30)).await;
    let process = cluster
        .finished("process", 1, Duration::from_secs(30))
        .await;
    let fetch_end = fetch[0].finished_at.expect("finished");
    assert!(
        process[0].started_at >= fetch_end,
        "process started before fetch succeeded"
    );

    // Now fetch fails: a new process run must not start, and describe says why.
    cluster
        .apply(&job("fetch", "exit 7", "  trigger: manual\n"))
        .await;
    cluster.cli.ok(&["trigger", "fetch"]).await;
    cluster.finished("fetch", 2, Duration::from_secs(30)).await;
    cluster.cli.ok(&["trigger", "process"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        cluster.runs("process").await.len(),
        1,
        "no run after a failed dependency"
    );
    let text = cluster.cli.ok(&["describe", "task", "process"]).await;
    assert!(
        text.contains("Waiting:") && text.contains("fetch"),
        "{text}"
    );
}

#[tokio::test]
async fn mutually_blocking_tasks_never_overlap_on_three_nodes() {
    let cluster = Cluster::start(3).await;
    cluster
        .apply(
            &[
                job(
                    "import",
                    "sleep 2",
                    "  trigger: manual\n  blocks: [cleanup]\n",
                ),
                job(
                    "cleanup",
                    "sleep 2",
                    "  trigger: manual\n  blocks: [import]\n",
                ),
            ]
            .join("---\n"),
        )
        .await;
    for round in 1..=2 {
        cluster.cli.ok(&["trigger", "import"]).await;
        cluster.cli.ok(&["trigger", "cleanup"]).await;
        cluster
            .finished("import", round, Duration::from_secs(40))
            .await;
        cluster
            .finished("cleanup", round, Duration::from_secs(40))
            .await;
    }
    let all = [cluster.runs("import").await, cluster.runs("cleanup").await].concat();
    assert!(all.len() >= 4, "{all:?}");
    assert_no_overlap(&all, "import/cleanup");
}

#[tokio::test]
async fn a_run_past_its_deadline_ends_as_deadline_exceeded() {
    let cluster = Cluster::start(1).await;
    cluster
        .apply(&job("slow", "sleep 60", "  timeoutSeconds: 2\n"))
        .await;
    let runs = cluster.finished("slow", 1, Duration::from_secs(30)).await;
    let run = &runs[0];
    assert_eq!(run.outcome, Some(RunOutcome::DeadlineExceeded), "{run:?}");
    let took = run.finished_at.expect("finished") - run.started_at;
    // timeout 2 s + grace 2 s, and a few seconds for reporting.
    assert!(took < chrono::Duration::seconds(2 + 2 + 5), "took {took}");
}

#[tokio::test]
async fn the_circuit_breaker_suspends_and_enable_resumes() {
    let cluster = Cluster::start(1).await;
    cluster
        .apply(&job(
            "broken",
            "exit 1",
            "  every: 1s\n  maxConsecutiveFailures: 3\n",
        ))
        .await;
    let state = wait_for(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let state = cluster.state("broken").await;
            state.suspended.then_some(state)
        },
    )
    .await
    .expect("suspended");
    assert_eq!(state.consecutive_failures, 3);
    let failed = cluster
        .runs("broken")
        .await
        .iter()
        .filter(|r| r.finished_at.is_some())
        .count();
    assert_eq!(failed, 3, "suspended after its third failed run");
    let overview = cluster.cli.ok(&["get", "tasks"]).await;
    assert!(overview.contains("suspended"), "{overview}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        cluster.runs("broken").await.len(),
        3,
        "no run while suspended"
    );

    cluster.cli.ok(&["enable", "broken"]).await;
    cluster.finished("broken", 4, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_job_that_exhausts_its_retries_is_dead_lettered_and_retry_runs_it_again() {
    let cluster = Cluster::start(1).await;
    cluster
        .apply(&job("flaky", "exit 3", "  maxRetries: 1\n"))
        .await;
    let letter = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        common::dead_letter_of(&cluster.store, &cluster.keys, "flaky")
    })
    .await
    .expect("a dead letter");
    assert_eq!(letter.exit_code, Some(3));
    let runs = cluster.runs("flaky").await;
    assert_eq!(runs.len(), 2, "the first run and one retry: {runs:?}");
    let listed = cluster.cli.ok(&["get", "deadletters"]).await;
    assert!(listed.contains(&letter.instance.to_string()), "{listed}");

    cluster
        .cli
        .ok(&["retry", &letter.instance.to_string()])
        .await;
    cluster.finished("flaky", 3, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_leader_killed_mid_run_loses_no_run_and_doubles_none() {
    use drover_api::records::ControllerInfo;

    let mut cluster = Cluster::start(1).await;
    let standby = Daemon::start(
        &cluster.cli,
        &["controller", "--id", "d", "--lease-ttl", "2s"],
    );
    cluster.daemons.push(standby);
    cluster
        .apply(&job("steady", "sleep 2", "  every: 1s\n"))
        .await;
    cluster.finished("steady", 2, Duration::from_secs(60)).await;
    // Kill whichever replica leads while a run is going.
    wait_for(
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            cluster
                .runs("steady")
                .await
                .iter()
                .any(|r| r.finished_at.is_none())
                .then_some(())
        },
    )
    .await
    .expect("a run is going");
    let leaders = cluster
        .store
        .list::<ControllerInfo>(&cluster.keys.controllers())
        .await
        .expect("list")
        .items;
    let leader = leaders
        .iter()
        .find(|i| i.value.leader)
        .expect("a leader")
        .value
        .id
        .clone();
    let index = if leader == "c" {
        0
    } else {
        cluster.daemons.len() - 1
    };
    cluster.daemons[index].kill().await;
    let before = cluster.runs("steady").await.len();
    let runs = cluster
        .finished("steady", before + 2, Duration::from_secs(60))
        .await;
    let numbers: Vec<u64> = runs.iter().map(|r| r.run).collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(
        numbers, expected,
        "run numbers are contiguous: none lost, none doubled"
    );
    let done: Vec<RunRecord> = runs
        .into_iter()
        .filter(|r| r.finished_at.is_some())
        .collect();
    assert_no_overlap(&done, "steady");
    assert!(
        done.iter()
            .all(|r| r.outcome == Some(RunOutcome::Succeeded)),
        "the run going at the kill was finished by the new leader: {done:?}"
    );
}
