//! The harness of the rolling-update tests: a small cluster of real processes on this host
//! (etcd, a controller, agents per node), an external poller that GETs every copy's published
//! port each tick, and what Docker says from outside Drover.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{manifest, records, Daemon, Etcd};
use drover_api::instance::{Health, Instance, InstanceStatus, Phase};
use drover_api::{Rollout, RolloutPhase, Task, TaskState};
use drover_testkit::wait_for;
use etcd_client::{EventType, WatchOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};

/// The test workload's image, built by `hack/build-images.sh`.
pub const IMAGE: &str = "drover/echo-server:latest";

/// How often the poller looks at every copy.
pub const TICK: Duration = Duration::from_millis(100);

/// Bound on one poll of one copy: a copy that takes longer does not count as answering.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// Bound on a rollout or drain reaching its end (inside nextest's 120 s limit, so the test
/// reports what it saw rather than being killed).
pub const SETTLE: Duration = Duration::from_secs(60);

/// Runs `docker args`, bounded; `None` when it cannot run, fails or does not finish.
pub async fn docker(args: &[&str]) -> Option<String> {
    let run = tokio::process::Command::new("docker")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .ok()?
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether the Docker tests can run: `false` (with a notice) where no daemon answers; a
/// daemon without the test image is a setup error, not a reason to skip.
pub async fn docker_ready() -> bool {
    if docker(&["version", "--format", "{{.Server.Version}}"])
        .await
        .is_none()
    {
        eprintln!("SKIPPED: no Docker daemon answers");
        return false;
    }
    assert!(
        docker(&["image", "inspect", IMAGE]).await.is_some(),
        "Docker answers but {IMAGE} is missing: run hack/build-images.sh"
    );
    true
}

/// A container id as both Docker and the statuses can be compared by (Docker's short form;
/// process ids are shorter anyway).
pub fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// A GET of `path` on the loopback `port`: whether it answered 200 within [`ANSWER_TIMEOUT`].
pub async fn answers(port: u16, path: &str) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        let mut read = 0;
        while read < head.len() {
            let n = stream.read(&mut head[read..]).await.ok()?;
            if n == 0 {
                break;
            }
            read += n;
        }
        Some(&head[..read] == b"HTTP/1.1 200")
    };
    matches!(
        tokio::time::timeout(ANSWER_TIMEOUT, attempt).await,
        Ok(Some(true))
    )
}

/// A small cluster on this host: etcd, one controller and one agent per node (started on
/// demand), all real processes. Dropping it kills the daemons, then removes what their copies
/// left: the nodes' containers (Docker), or the process groups of copies the workload's
/// records show alive (process driver).
pub struct Cluster {
    pub etcd: Etcd,
    driver: &'static str,
    /// Node names; unique per test under Docker, whose containers are shared by all tests.
    pub nodes: Vec<String>,
    /// Started agents, by node index.
    agents: BTreeMap<usize, Daemon>,
    states: Vec<tempfile::TempDir>,
    controller: Daemon,
    /// The process workload's records, whose live copies are killed on drop.
    pub records: Option<PathBuf>,
}

impl Cluster {
    /// Etcd and a controller; agents come with [`Cluster::agent`].
    pub async fn start(driver: &'static str, nodes: &[&str]) -> Cluster {
        let etcd = Etcd::start().await;
        let controller =
            Daemon::start(&etcd.cli, &["controller", "--id", "c", "--lease-ttl", "2s"]);
        let tag = rand::random::<u32>();
        Cluster {
            nodes: nodes.iter().map(|n| format!("{n}-{tag:08x}")).collect(),
            states: nodes
                .iter()
                .map(|_| tempfile::tempdir().expect("tempdir"))
                .collect(),
            etcd,
            driver,
            agents: BTreeMap::new(),
            controller,
            records: None,
        }
    }

    /// Starts the agent of node `i` and waits until its node key is there.
    pub async fn agent(&mut self, i: usize) {
        let node = self.nodes[i].clone();
        let state = self.states[i].path().to_str().expect("utf-8").to_string();
        let mut args = vec![
            "agent",
            "--node",
            &node,
            "--driver",
            self.driver,
            "--lease-ttl",
            "10s",
            "--state-dir",
            &state,
        ];
        if self.driver == "docker" {
            args.extend(["--publish-ip", "127.0.0.1"]);
        } else {
            // Tests run as root; their tasks set no spec.user.
            args.push("--allow-root-tasks");
        }
        let daemon = Daemon::start(&self.etcd.cli, &args);
        self.agents.insert(i, daemon);
        crate::common::node_key(&self.etcd, &node).await;
    }

    /// Every daemon's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut text = format!("controller:\n{}", self.controller.log_text());
        for (i, agent) in &self.agents {
            text.push_str(&format!(
                "\nagent {}:\n{}",
                self.nodes[*i],
                agent.log_text()
            ));
        }
        text
    }

    pub async fn apply(&self, doc: &str) {
        let (_dir, path) = manifest(doc);
        self.etcd
            .cli
            .ok(&["apply", "-f", path.to_str().expect("utf-8")])
            .await;
    }

    /// The task's statuses that decode (others are skipped).
    pub async fn statuses(&self, task: &str) -> Option<Vec<InstanceStatus>> {
        let listed = self
            .etcd
            .store
            .list_checked::<InstanceStatus>(&self.etcd.keys.statuses())
            .await
            .ok()?;
        Some(
            listed
                .items
                .into_iter()
                .map(|s| s.value)
                .filter(|s| s.id.task() == task)
                .collect(),
        )
    }

    /// The task's assignments, with their etcd versions.
    pub async fn assignments(
        &self,
        task: &str,
    ) -> Option<(i64, Vec<drover_store::Versioned<Instance>>)> {
        let listed = self
            .etcd
            .store
            .list::<Instance>(&self.etcd.keys.assignments())
            .await
            .ok()?;
        let mine = listed
            .items
            .into_iter()
            .filter(|a| a.value.task == task)
            .collect();
        Some((listed.revision, mine))
    }

    /// The task's rollout record.
    pub async fn rollout(&self, task: &str) -> Option<Rollout> {
        self.etcd
            .store
            .get::<TaskState>(&self.etcd.keys.taskstate("default", task))
            .await
            .ok()??
            .value
            .rollout
    }

    /// The task's generation, as stored.
    pub async fn generation(&self, task: &str) -> Option<u64> {
        let stored = self
            .etcd
            .store
            .get::<Task>(&self.etcd.keys.task("default", task))
            .await
            .ok()??;
        Some(stored.value.metadata.generation)
    }

    /// Waits until `count` copies of `task` run healthy and its rollout is complete; returns
    /// their statuses and the rollout.
    pub async fn settled(&self, task: &str, count: usize) -> (Vec<InstanceStatus>, Rollout) {
        let reached = wait_for(SETTLE, Duration::from_millis(200), || async {
            let rollout = self.rollout(task).await?;
            if rollout.phase != RolloutPhase::Complete {
                return None;
            }
            let (_, assigned) = self.assignments(task).await?;
            let current = assigned
                .iter()
                .all(|a| a.value.revision == rollout.revision && a.value.stop.is_none());
            if assigned.len() != count || !current {
                return None;
            }
            let statuses = self.statuses(task).await?;
            let healthy = statuses
                .iter()
                .filter(|s| s.phase == Phase::Running && s.health == Health::Healthy)
                .count();
            (statuses.len() == count && healthy == count).then_some((statuses, rollout))
        })
        .await;
        match reached {
            Ok(settled) => settled,
            Err(_) => panic!(
                "{task}: {count} healthy copies of one revision, rollout Complete, not reached within {SETTLE:?}\n{}\n{}",
                self.state_of(task).await,
                self.logs()
            ),
        }
    }

    /// What the leader and the agents say of `task`: its rollout, assignments and statuses.
    pub async fn state_of(&self, task: &str) -> String {
        let rollout = self.rollout(task).await;
        let assigned: Vec<String> = self
            .assignments(task)
            .await
            .map(|(_, a)| a)
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let i = &a.value;
                format!(
                    "{} on {} revision {} stop {:?}",
                    i.id, i.node, i.revision, i.stop
                )
            })
            .collect();
        let statuses: Vec<String> = self
            .statuses(task)
            .await
            .unwrap_or_default()
            .iter()
            .map(|s| {
                format!(
                    "{} on {} {} {:?} since {:?} container {:?}",
                    s.id, s.node, s.phase, s.health, s.healthy_since, s.container_id
                )
            })
            .collect();
        format!(
            "rollout: {rollout:?}\nassignments:\n  {}\nstatuses:\n  {}",
            assigned.join("\n  "),
            statuses.join("\n  ")
        )
    }

    /// Docker: the ids (short) of the task's containers running on this cluster's nodes.
    pub async fn running_containers(&self, task: &str) -> Option<BTreeSet<String>> {
        running_containers(&self.nodes, task).await
    }
}

/// Docker: the ids (short) of `task`'s containers running on `nodes`.
pub async fn running_containers(nodes: &[String], task: &str) -> Option<BTreeSet<String>> {
    let out = docker(&[
        "ps",
        "--no-trunc",
        "--filter",
        &format!("label=dev.drover.task={task}"),
        "--format",
        "{{.ID}} {{.Label \"dev.drover.node\"}}",
    ])
    .await?;
    Some(
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, node)| nodes.iter().any(|n| n == node))
            .map(|(id, _)| short(id))
            .collect(),
    )
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first, so none starts a copy again while the leftovers are removed.
        for agent in self.agents.values_mut() {
            let _ = agent.child.start_kill();
        }
        let pids: Vec<u32> = self.agents.values().filter_map(|a| a.child.id()).collect();
        for _ in 0..100 {
            if !pids.iter().any(|p| drover_testkit::process_alive(*p)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.driver == "docker" {
            for node in &self.nodes {
                let listed = std::process::Command::new("docker")
                    .args([
                        "ps",
                        "-aq",
                        "--filter",
                        &format!("label=dev.drover.node={node}"),
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
        if let Some(path) = &self.records {
            kill_live_copies(path);
        }
    }
}

/// Kills the process group of every copy the records show started and not stopped.
pub fn kill_live_copies(path: &Path) {
    use rustix::process::{kill_process_group, Pid, Signal};
    let seen = records(path);
    let stopped: BTreeSet<u32> = seen.iter().filter(|r| r.0 == "stop").map(|r| r.1).collect();
    for (_, pid, _) in seen.iter().filter(|r| r.0 == "start") {
        if stopped.contains(pid) {
            continue;
        }
        if let Some(pid) = i32::try_from(*pid).ok().and_then(Pid::from_raw) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
}

/// What the poller saw in one tick.
#[derive(Debug, Clone, Default)]
pub struct Tick {
    /// Copies (short container ids) that answered `/health` with 200.
    pub answered: BTreeSet<String>,
    /// Docker: the task's containers running (live, answering or not).
    pub running: BTreeSet<String>,
    /// Whether the tick counts (the test was watching for dips then).
    pub counted: bool,
}

impl Tick {
    /// Live copies: answering, or their container running.
    pub fn live(&self) -> usize {
        self.answered.union(&self.running).count()
    }
}

/// An external client: every [`TICK`] it learns the task's copies and ports from the
/// statuses in etcd and GETs `/health` on each, all at once; under Docker it also lists the
/// task's running containers.
pub struct Poller {
    ticks: Arc<Mutex<Vec<Tick>>>,
    counting: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Poller {
    pub fn start(cluster: &Cluster, task: &str) -> Poller {
        let ticks = Arc::new(Mutex::new(Vec::new()));
        let counting = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let store = cluster.etcd.store.clone();
        let prefix = cluster.etcd.keys.statuses();
        let docker_nodes = (cluster.driver == "docker").then(|| cluster.nodes.clone());
        let task = task.to_string();
        let handle = tokio::spawn({
            let (ticks, counting, stop) = (ticks.clone(), counting.clone(), stop.clone());
            async move {
                // Copy → host port, as last read; kept when a read fails.
                let mut known: BTreeMap<String, u16> = BTreeMap::new();
                let mut interval = tokio::time::interval(TICK);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::SeqCst) {
                    interval.tick().await;
                    let read = tokio::time::timeout(
                        ANSWER_TIMEOUT,
                        store.list_checked::<InstanceStatus>(&prefix),
                    )
                    .await;
                    if let Ok(Ok(listed)) = read {
                        known = listed
                            .items
                            .into_iter()
                            .map(|s| s.value)
                            .filter(|s| s.id.task() == task)
                            .filter_map(|s| {
                                let port = s.ports.first()?.host_port;
                                Some((short(s.container_id.as_deref()?), port))
                            })
                            .collect();
                    }
                    let mut polls = JoinSet::new();
                    for (copy, port) in known.clone() {
                        polls.spawn(async move { answers(port, "/health").await.then_some(copy) });
                    }
                    let running = async {
                        match &docker_nodes {
                            Some(nodes) => running_containers(nodes, &task).await,
                            None => Some(BTreeSet::new()),
                        }
                    };
                    let (answered, running) = tokio::join!(polls.join_all(), running);
                    let tick = Tick {
                        answered: answered.into_iter().flatten().collect(),
                        running: running.unwrap_or_default(),
                        counted: counting.load(Ordering::SeqCst),
                    };
                    ticks.lock().expect("ticks").push(tick);
                }
            }
        });
        Poller {
            ticks,
            counting,
            stop,
            handle,
        }
    }

    /// Waits until one tick satisfies `check`.
    pub async fn until(&self, what: &str, check: impl Fn(&Tick) -> bool) {
        let seen = || async {
            let ticks = self.ticks.lock().expect("ticks");
            ticks.last().filter(|t| check(t)).map(|_| ())
        };
        wait_for(Duration::from_secs(60), TICK, seen)
            .await
            .unwrap_or_else(|_| {
                let last = self.ticks.lock().expect("ticks").last().cloned();
                panic!("the poller never saw {what}; last tick: {last:?}")
            });
    }

    /// From now on every tick counts.
    pub fn count(&self) {
        self.counting.store(true, Ordering::SeqCst);
    }

    /// Stops polling; returns every tick.
    pub async fn finish(self) -> Vec<Tick> {
        self.stop.store(true, Ordering::SeqCst);
        if tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .is_err()
        {
            panic!("the poller did not stop");
        }
        let ticks = self.ticks.lock().expect("ticks").clone();
        ticks
    }
}

/// The counted ticks in short: one line per change of what answered and what was live.
pub fn timeline(ticks: &[Tick], old: &BTreeSet<String>) -> String {
    let mut lines = Vec::new();
    let mut last = None;
    for (n, t) in ticks.iter().enumerate().filter(|(_, t)| t.counted) {
        let old_up = t.answered.intersection(old).count();
        let line = format!(
            "answering {} (old {old_up}, new {}), live {}",
            t.answered.len(),
            t.answered.len() - old_up,
            t.live()
        );
        if last.as_ref() != Some(&line) {
            lines.push(format!("tick {n}: {line}"));
            last = Some(line);
        }
    }
    lines.join("\n")
}

impl Cluster {
    /// [`Cluster::settled`] on a revision after `revision`.
    pub async fn settled_after(
        &self,
        task: &str,
        count: usize,
        revision: u64,
    ) -> (Vec<InstanceStatus>, Rollout) {
        wait_for(SETTLE, Duration::from_millis(200), || async {
            let rollout = self.rollout(task).await?;
            (rollout.revision > revision).then_some(())
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{task}: no rollout past revision {revision}\n{}",
                self.logs()
            )
        });
        let (statuses, rollout) = self.settled(task, count).await;
        assert!(rollout.revision > revision, "a new revision rolled out");
        (statuses, rollout)
    }
}

/// `docker inspect`: (running, started at) of a container.
pub async fn container_state(id: &str) -> Option<(bool, String)> {
    let out = docker(&[
        "inspect",
        "--format",
        "{{.State.Running}} {{.State.StartedAt}}",
        id,
    ])
    .await?;
    let (running, started) = out.trim().split_once(' ')?;
    Some((running == "true", started.to_string()))
}

/// Every change under `prefix` from revision `from` on: (key, put, created by this change),
/// until the task is aborted.
pub async fn watch(
    endpoints: Vec<String>,
    prefix: String,
    from: i64,
) -> (Arc<Mutex<Vec<(String, bool, bool)>>>, JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connect = etcd_client::Client::connect(endpoints, None);
    let mut client = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("watch client in time")
        .expect("watch client");
    let options = WatchOptions::new().with_prefix().with_start_revision(from);
    let mut stream = tokio::time::timeout(
        Duration::from_secs(10),
        client.watch(prefix.as_str(), Some(options)),
    )
    .await
    .expect("watch in time")
    .expect("watch");
    let sink = Arc::clone(&seen);
    let handle = tokio::spawn(async move {
        while let Ok(Some(response)) = stream.message().await {
            let mut sink = sink.lock().expect("lock");
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let put = event.event_type() == EventType::Put;
                sink.push((
                    kv.key_str().unwrap_or_default().to_string(),
                    put,
                    put && kv.version() == 1,
                ));
            }
        }
    });
    (seen, handle)
}

/// Where the echo server's static binary is: `DROVER_ECHO_SERVER`, else copied out of the
/// test image into `dir`, else `None`.
pub async fn echo_server_binary(dir: &Path) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("DROVER_ECHO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let created = docker(&["create", IMAGE]).await?;
    let id = created.trim().to_string();
    let target = dir.join("echo-server");
    let copied = docker(&[
        "cp",
        &format!("{id}:/echo-server"),
        target.to_str().expect("utf-8"),
    ])
    .await;
    let _ = docker(&["rm", "-f", &id]).await;
    copied.map(|_| target)
}
