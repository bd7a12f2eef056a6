//! Output that outlives its container or process, end to end through the `drover` binary, a
//! controller and an agent process on a real etcd: `drover logs --previous` shows the output of
//! a crashed container (docker) or process, and `drover logs task/NAME --run N` shows a job
//! run's output after the run finished and its assignment was deleted, also after the agent
//! restarted.

mod common;

use std::time::Duration;

use common::{manifest, Daemon, Etcd};
use drover_api::instance::{Instance, InstanceStatus};
use drover_api::run::{RunOutcome, RunRecord};
use drover_testkit::wait_for;

/// A controller and one agent (`driver`) whose state dir survives its restarts.
struct Cluster {
    etcd: Etcd,
    node: String,
    driver: &'static str,
    state: tempfile::TempDir,
    controller: Daemon,
    agent: Option<Daemon>,
}

impl Cluster {
    async fn start(driver: &'static str) -> Cluster {
        let etcd = Etcd::start().await;
        let node = format!("logs-{:x}", rand::random::<u32>());
        let controller =
            Daemon::start(&etcd.cli, &["controller", "--id", "c", "--lease-ttl", "2s"]);
        let mut cluster = Cluster {
            etcd,
            node,
            driver,
            state: tempfile::tempdir().expect("tempdir"),
            controller,
            agent: None,
        };
        cluster.start_agent().await;
        cluster
    }

    async fn start_agent(&mut self) {
        let args = [
            "agent",
            "--node",
            &self.node,
            "--driver",
            self.driver,
            "--publish-ip",
            "127.0.0.1",
            "--allow-root-tasks",
            "--lease-ttl",
            "4s",
            "--state-dir",
            self.state.path().to_str().expect("utf-8"),
        ];
        self.agent = Some(Daemon::start(&self.etcd.cli, &args));
        common::node_key(&self.etcd, &self.node).await;
    }

    /// SIGTERM (the agent stops its instances and revokes its lease), then a new agent on
    /// the same state dir.
    async fn restart_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.signal("TERM");
            assert!(
                agent.wait_exit(Duration::from_secs(30)).await.is_some(),
                "the agent did not exit on SIGTERM:\n{}",
                agent.log_text()
            );
        }
        let key = self.etcd.keys.node(&self.node);
        wait_for(
            Duration::from_secs(20),
            Duration::from_millis(100),
            || async {
                self.etcd
                    .store
                    .get_raw(&key)
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            },
        )
        .await
        .expect("the node key goes with the revoked lease");
        self.start_agent().await;
    }

    async fn apply(&self, doc: &str) {
        let (_dir, path) = manifest(doc);
        self.etcd
            .cli
            .ok(&["apply", "-f", path.to_str().expect("utf-8")])
            .await;
    }

    fn logs_of_daemons(&self) -> String {
        let agent = self
            .agent
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default();
        format!(
            "controller:\n{}\nagent:\n{agent}",
            self.controller.log_text()
        )
    }

    /// Polls `drover logs ARGS` (up to `within`) until its stdout contains `want`.
    async fn logs_until(&self, args: &[&str], want: &str, within: Duration) -> String {
        let mut full = vec!["logs"];
        full.extend_from_slice(args);
        let last = std::sync::Mutex::new(String::new());
        let found = wait_for(within, Duration::from_millis(300), || {
            let full = full.clone();
            let last = &last;
            async move {
                let out = self.etcd.cli.run(&full).await;
                let stdout = String::from_utf8_lossy(&out.stdout).to_string();
                *last.lock().expect("not poisoned") = format!(
                    "exit {:?}\nstdout: {stdout}\nstderr: {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                );
                (out.status.success() && stdout.contains(want)).then_some(stdout)
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "drover {full:?} never showed {want:?} within {within:?}; last: {}\n{}",
                last.lock().expect("not poisoned"),
                self.logs_of_daemons()
            )
        })
    }

    /// The one instance id of `task` (its status), once it has one.
    async fn instance_of(&self, task: &str) -> String {
        wait_for(
            Duration::from_secs(60),
            Duration::from_millis(200),
            || async {
                let statuses = self
                    .etcd
                    .store
                    .list::<InstanceStatus>(&self.etcd.keys.statuses())
                    .await
                    .ok()?;
                statuses
                    .items
                    .into_iter()
                    .find(|s| s.value.id.task() == task)
                    .map(|s| s.value.id.to_string())
            },
        )
        .await
        .unwrap_or_else(|_| panic!("{task} has no status\n{}", self.logs_of_daemons()))
    }

    /// Waits until run 1 of `task` finished and no assignment of it is left; returns it.
    async fn finished_run(&self, task: &str) -> RunRecord {
        wait_for(
            Duration::from_secs(60),
            Duration::from_millis(200),
            || async {
                let runs = self
                    .etcd
                    .store
                    .list::<RunRecord>(&self.etcd.keys.runs_of("default", task))
                    .await
                    .ok()?;
                let run = runs
                    .items
                    .into_iter()
                    .map(|r| r.value)
                    .find(|r| r.run == 1)?;
                run.finished_at?;
                let left = self
                    .etcd
                    .store
                    .list::<Instance>(&self.etcd.keys.assignments())
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .filter(|a| a.value.task == task)
                    .count();
                (left == 0).then_some(run)
            },
        )
        .await
        .unwrap_or_else(|_| panic!("run 1 of {task} never finished\n{}", self.logs_of_daemons()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.driver != "docker" {
            return;
        }
        let listed = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=dev.drover.node={}", self.node),
            ])
            .output();
        if let Ok(out) = listed {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", id])
                    .output();
            }
        }
    }
}

fn token(what: &str) -> String {
    format!("{what}-{:08x}", rand::random::<u32>())
}

#[tokio::test]
async fn process_previous_shows_the_crashed_process_and_a_finished_run_survives_an_agent_restart() {
    let mut cluster = Cluster::start("process").await;
    let first = token("first");
    let mark = cluster.state.path().join("crashed-once");
    // The first process prints a unique line and exits 3; the restarted one keeps running.
    let script = format!(
        "if [ -e {m} ]; then echo second run; exec sleep 3600; fi; touch {m}; echo {first}; exit 3",
        m = mark.display()
    );
    cluster
        .apply(&format!(
            "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: crash\nspec:\n  command: [sh, -c, {script:?}]\n  restartPolicy: Always\n  resources: {{cpu: 10m, memory: 1Mi}}\n"
        ))
        .await;
    let id = cluster.instance_of("crash").await;
    let previous = cluster
        .logs_until(&[&id, "--previous"], &first, Duration::from_secs(60))
        .await;
    assert!(!previous.contains("second run"), "{previous}");
    let current = cluster
        .logs_until(&[&id], "second run", Duration::from_secs(30))
        .await;
    assert!(
        !current.contains(&first),
        "the current run is the second: {current}"
    );
    // The process driver records no line times: --since says so instead of guessing.
    let since = cluster
        .etcd
        .cli
        .run(&["logs", &id, "--previous", "--since", "1h"])
        .await;
    let stderr = String::from_utf8_lossy(&since.stderr);
    assert!(
        !since.status.success() && stderr.contains("process driver records none"),
        "{stderr}"
    );

    let done = token("job");
    cluster
        .apply(&format!(
            "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: once\nspec:\n  command: [sh, -c, \"echo {done}\"]\n  restartPolicy: Never\n  resources: {{cpu: 10m, memory: 1Mi}}\n"
        ))
        .await;
    let run = cluster.finished_run("once").await;
    assert_eq!(run.outcome, Some(RunOutcome::Succeeded));
    assert_eq!(
        run.nodes.values().collect::<Vec<_>>(),
        [&cluster.node],
        "the record names the node: {run:?}"
    );
    let out = cluster
        .logs_until(&["task/once", "--run", "1"], &done, Duration::from_secs(30))
        .await;
    assert_eq!(out.trim(), done, "one instance: just its output");
    cluster.restart_agent().await;
    let after = cluster
        .logs_until(&["task/once", "--run", "1"], &done, Duration::from_secs(30))
        .await;
    assert_eq!(after.trim(), done);
    // The instance by name, too, and --tail on retained output.
    let by_id = cluster
        .logs_until(
            &["default.once.r1.0", "--tail", "1"],
            &done,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(by_id.trim(), done);

    // A run of two instances: each printed after a header naming it and its node.
    let pair = token("pair");
    cluster
        .apply(&format!(
            "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: pair\nspec:\n  command: [sh, -c, \"echo {pair} $DROVER_INSTANCE\"]\n  replicas: 2\n  restartPolicy: Never\n  resources: {{cpu: 10m, memory: 1Mi}}\n"
        ))
        .await;
    cluster.finished_run("pair").await;
    let both = cluster
        .logs_until(&["task/pair"], "default.pair.r1.1", Duration::from_secs(30))
        .await;
    let node = &cluster.node;
    assert_eq!(
        both.lines().collect::<Vec<_>>(),
        [
            format!("==> default.pair.r1.0 (node {node}) <=="),
            format!("{pair} default.pair.r1.0"),
            format!("==> default.pair.r1.1 (node {node}) <=="),
            format!("{pair} default.pair.r1.1"),
        ],
        "{both}"
    );

    // A run that does not exist, and the node of a run gone: both named.
    let missing = cluster
        .etcd
        .cli
        .run(&["logs", "task/once", "--run", "7"])
        .await;
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("task default/once has no run 7"),
        "{stderr}"
    );
    if let Some(mut agent) = cluster.agent.take() {
        agent.signal("TERM");
        agent.wait_exit(Duration::from_secs(30)).await;
    }
    let key = cluster.etcd.keys.node(&cluster.node);
    wait_for(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            cluster
                .etcd
                .store
                .get_raw(&key)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await
    .expect("the node key goes with the revoked lease");
    let gone = cluster
        .etcd
        .cli
        .run(&["logs", "task/once", "--run", "1"])
        .await;
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(
        !gone.status.success()
            && stderr.contains(&format!("node \"{}\"", cluster.node))
            && stderr.contains("not alive"),
        "{stderr}"
    );
}

/// An echo-server container whose `PORT` is not a number prints
/// `echo-server: cannot listen on port <PORT>: ...` on stderr and exits 1.
fn crashing_container(name: &str, port: &str, policy: &str) -> String {
    format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  image: drover/echo-server:latest\n  env: {{PORT: {port}}}\n  restartPolicy: {policy}\n  resources: {{cpu: 10m, memory: 16Mi}}\n"
    )
}

#[tokio::test]
async fn docker_previous_shows_the_crashed_container_and_a_finished_run_stays_readable() {
    let cluster = Cluster::start("docker").await;
    let port = token("crash");
    cluster
        .apply(&crashing_container("crash", &port, "Always"))
        .await;
    let id = cluster.instance_of("crash").await;
    let want = format!("cannot listen on port {port}");
    let previous = cluster
        .logs_until(&[&id, "--previous"], &want, Duration::from_secs(90))
        .await;
    assert_eq!(
        previous.lines().count(),
        1,
        "one crashed container's output: {previous}"
    );
    // Docker records line times: --timestamps prints them, --since selects by them.
    let stamped = cluster
        .logs_until(
            &[&id, "--previous", "--timestamps", "--since", "1h"],
            &want,
            Duration::from_secs(30),
        )
        .await;
    let (time, rest) = stamped
        .trim()
        .split_once(' ')
        .expect("a time, then the line");
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok() && rest.contains(&want),
        "{stamped}"
    );
    let later = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    let none = cluster
        .etcd
        .cli
        .ok(&["logs", &id, "--previous", "--since", &later])
        .await;
    assert!(none.is_empty(), "nothing was written after {later}: {none}");

    let job_port = token("job");
    cluster
        .apply(&crashing_container("once", &job_port, "Never"))
        .await;
    let run = cluster.finished_run("once").await;
    assert_eq!(run.outcome, Some(RunOutcome::Failed), "{run:?}");
    let out = cluster
        .logs_until(
            &["task/once", "--run", "1"],
            &format!("cannot listen on port {job_port}"),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(out.lines().count(), 1, "{out}");
}
