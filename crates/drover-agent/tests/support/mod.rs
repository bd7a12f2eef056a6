//! Helpers shared by every integration test: bounded waits, unique names, specs and start
//! requests, Docker housekeeping and, for the agent tests, a real etcd, assignments written as
//! the controller would, bounded polling of statuses and in-process agents.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use drover_agent::config::DriverChoice;
use drover_agent::driver::{Driver, Handle, InstanceMeta, StartRequest, TaskState};
use drover_agent::{Agent, AgentConfig, AgentHandle};
use drover_api::instance::{Instance, InstanceStatus, Phase, PortBinding};
use drover_api::keys::Keys;
use drover_api::names::InstanceId;
use drover_api::task::TaskSpec;
use drover_store::{Store, StoreConfig};
use drover_testkit::EtcdServer;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every await in these tests is bounded by this unless it says otherwise.
pub const LIMIT: Duration = Duration::from_secs(60);
pub const IMAGE: &str = "drover/echo-server:latest";

/// Awaits `fut`, failing the test (not hanging it) after `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `limit`.
pub async fn poll<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(limit, what, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// A DNS label unique to this process and call.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        rand_u16() % 10_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    (nanos / 1000 % 65_536) as u16
}

pub async fn connect(endpoints: Vec<String>) -> Store {
    let mut cfg = StoreConfig::new(endpoints);
    cfg.request_timeout = Duration::from_secs(2);
    within(LIMIT, "connect to etcd", Store::connect(cfg))
        .await
        .expect("etcd answers")
}

/// A real etcd with a store on it, and a fresh key prefix.
pub struct Env {
    pub etcd: EtcdServer,
    pub store: Store,
    pub keys: Keys,
}

impl Env {
    pub async fn start() -> Env {
        drover_testkit::init_tracing();
        let etcd = within(LIMIT, "start etcd", EtcdServer::start()).await;
        let store = connect(etcd.endpoints()).await;
        Env {
            etcd,
            store,
            keys: Keys::new(&drover_testkit::unique_prefix()),
        }
    }

    /// Writes `assignments/<node>/<id>` as the controller would; returns its create revision.
    pub async fn assign(&self, node: &str, id: &InstanceId, spec: TaskSpec) -> i64 {
        let instance = Instance {
            id: id.clone(),
            namespace: id.namespace().to_string(),
            task: id.task().to_string(),
            slot: id.slot(),
            run: id.run(),
            node: node.to_string(),
            generation: 1,
            revision: 0,
            attempt: 1,
            spec,
            assigned_at: Utc::now(),
            stop: None,
        };
        self.store
            .put(&self.keys.assignment(node, id), &instance, None)
            .await
            .expect("assignment written")
    }

    /// Removes an assignment and its status, as the controller does (one txn).
    pub async fn unassign(&self, node: &str, id: &InstanceId) {
        let txn = drover_store::Txn::new()
            .delete(self.keys.assignment(node, id))
            .delete(self.keys.status(node, id));
        self.store.commit(txn, None).await.expect("unassigned");
    }

    /// The status of `id` written last, under whichever node's key it is (a test that moves
    /// an instance between nodes leaves the old node's status behind); the node of the key
    /// must be the node the status names (an agent writes only under its own node).
    pub async fn status(&self, id: &InstanceId) -> Option<InstanceStatus> {
        let listing = self.store.list_raw(&self.keys.statuses()).await.ok()?;
        let (node, value) = listing
            .items
            .iter()
            .filter_map(|kv| {
                let (node, of) = self.keys.parse_status_key(&kv.key)?;
                (&of == id).then_some((kv.mod_revision, node, kv.value.clone()))
            })
            .max_by_key(|(revision, ..)| *revision)
            .map(|(_, node, value)| (node, value))?;
        let status: InstanceStatus = serde_json::from_slice(&value).ok()?;
        assert_eq!(
            status.node, node,
            "the status of {id} is under another node's key"
        );
        Some(status)
    }

    /// Waits until the status of `id` satisfies `pred`.
    pub async fn wait_status(
        &self,
        id: &InstanceId,
        limit: Duration,
        what: &str,
        pred: impl Fn(&InstanceStatus) -> bool,
    ) -> InstanceStatus {
        let mut last = None;
        let found = tokio::time::timeout(limit, async {
            loop {
                if let Some(s) = self.status(id).await {
                    if pred(&s) {
                        return s;
                    }
                    last = Some(s);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        match found {
            Ok(s) => s,
            Err(_) => {
                panic!("timed out after {limit:?} waiting for {what}; last status: {last:#?}")
            }
        }
    }

    /// Waits until `id` ends for good, and checks it `Failed` with `reason`.
    pub async fn wait_failed(
        &self,
        id: &InstanceId,
        limit: Duration,
        reason: &str,
    ) -> InstanceStatus {
        let st = self
            .wait_status(id, limit, reason, |s| s.phase.is_terminal())
            .await;
        assert_eq!(
            (st.phase, st.reason.as_deref()),
            (Phase::Failed, Some(reason)),
            "{st:#?}"
        );
        st
    }

    /// A fresh node named from `prefix` with an agent of `driver` on it ([`agent_config`]).
    pub async fn node(&self, prefix: &str, driver: DriverChoice) -> TestNode {
        let name = unique(prefix);
        let containers = (driver == DriverChoice::Docker).then(|| DockerCleanup(name.clone()));
        let state = tempfile::tempdir().expect("tempdir");
        let agent = Running::start(
            self.store.clone(),
            self.keys.clone(),
            agent_config(&name, driver, &state),
        )
        .await;
        TestNode {
            name,
            agent,
            state,
            _containers: containers,
        }
    }
}

/// Runs `spec` alone on a fresh node of `driver` and checks that it fails within 10 s with
/// `reason` and a message that names `names`.
pub async fn assert_fails_to_start(
    driver: DriverChoice,
    spec: TaskSpec,
    reason: &str,
    names: &str,
) {
    let env = Env::start().await;
    let node = env.node("se", driver).await;
    let id = id("default", "nostart", 0);
    env.assign(&node.name, &id, spec).await;
    let st = env.wait_failed(&id, Duration::from_secs(10), reason).await;
    let message = st.message.unwrap_or_default();
    assert!(message.contains(names), "{message:?} names {names:?}");
    node.agent.stop().await;
}

/// Polls `agent` for the whole log of `id` until `ready` accepts it; returns it.
pub async fn wait_agent_logs(
    agent: &drover_agent::AgentEndpoint,
    id: &InstanceId,
    what: &str,
    ready: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let id = id.to_string();
    poll(LIMIT, what, || async {
        let lines: Vec<String> = drover_agent::logs_client(agent, &id, false, None)
            .await
            .ok()?
            .filter_map(|l| async move { l.ok() })
            .collect()
            .await;
        ready(&lines).then_some(lines)
    })
    .await
}

/// Reads a followed log until a line satisfies `found`; fails if the stream ends first.
pub async fn follow_until<S, E>(follow: &mut S, what: &str, mut found: impl FnMut(&str) -> bool)
where
    S: futures::Stream<Item = Result<String, E>> + Unpin,
    E: std::fmt::Debug,
{
    within(LIMIT, what, async {
        while let Some(line) = follow.next().await {
            if found(&line.expect("log line")) {
                return;
            }
        }
        panic!("the followed log ended");
    })
    .await;
}

/// A node with an in-process agent, from [`Env::node`]. Dropping it removes its state dir
/// and, for docker, every container of the node (even when the test panics).
pub struct TestNode {
    pub name: String,
    pub agent: Running,
    pub state: tempfile::TempDir,
    _containers: Option<DockerCleanup>,
}

/// An agent config for tests: its own state dir, a random port window, quick restarts.
pub fn agent_config(node: &str, driver: DriverChoice, state: &tempfile::TempDir) -> AgentConfig {
    let mut c = AgentConfig::new(node);
    c.driver = driver;
    c.state_dir = state.path().join(node);
    c.lease_ttl = Duration::from_secs(4);
    let base = 20_000 + (rand_u16() % 11_000);
    c.port_range = base..=base + 300;
    c.restart_backoff = Duration::from_millis(200);
    c.restart_backoff_max = Duration::from_secs(2);
    // These tests run as root and run process tasks without `spec.user`: they opt in, as
    // `--allow-root-tasks` would. The tests of the refusal itself turn it off again.
    c.allow_root_tasks = true;
    c
}

/// An agent running in this process.
pub struct Running {
    pub handle: AgentHandle,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<drover_agent::agent::Result<()>>,
}

impl Running {
    pub async fn start(store: Store, keys: Keys, config: AgentConfig) -> Running {
        let shutdown = CancellationToken::new();
        let mut registry = prometheus_client::registry::Registry::default();
        let agent = within(
            LIMIT,
            "agent start",
            Agent::start(store, keys, config, &mut registry, shutdown.clone()),
        )
        .await
        .expect("agent starts");
        let handle = agent.handle();
        let task = tokio::spawn(agent.join());
        within(LIMIT, "agent ready", handle.wait_ready()).await;
        Running {
            handle,
            shutdown,
            task,
        }
    }

    /// Graceful shutdown, bounded.
    pub async fn stop(self) {
        self.shutdown.cancel();
        within(LIMIT, "agent shutdown", self.task)
            .await
            .expect("agent task")
            .expect("clean shutdown");
    }

    /// The in-process SIGKILL: no cleanup at all.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A spec from manifest JSON.
pub fn spec(json: serde_json::Value) -> TaskSpec {
    serde_json::from_value(json).expect("valid task spec")
}

pub fn id(ns: &str, task: &str, slot: u32) -> InstanceId {
    InstanceId::service(ns, task, slot).expect("valid id")
}

/// A start request for slot `slot` of task `t` in `namespace` on `node`, for the driver tests.
pub fn request(node: &str, namespace: &str, slot: u32, spec: TaskSpec) -> StartRequest {
    StartRequest {
        meta: InstanceMeta {
            instance: InstanceId::service(namespace, "t", slot).expect("valid instance id"),
            node: node.to_string(),
            generation: 1,
            attempt: 0,
        },
        spec,
        ports: Vec::new(),
    }
}

/// Publishes `container_port` on `host_port`.
pub fn bind(container_port: u16, host_port: u16) -> PortBinding {
    PortBinding {
        container_port,
        host_port,
    }
}

/// The non-following log output of `handle`, as text (unreadable lines left out).
pub async fn log_text(driver: &dyn Driver, handle: &Handle) -> String {
    let lines: Vec<_> = within(LIMIT, "logs", driver.logs(handle, false, None).collect()).await;
    lines
        .into_iter()
        .filter_map(Result::ok)
        .map(|l| l.line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls the log of `handle` until it contains `needle`.
pub async fn wait_log(driver: &dyn Driver, handle: &Handle, needle: &str) {
    poll(LIMIT, &format!("{needle:?} in the log"), || async {
        log_text(driver, handle)
            .await
            .contains(needle)
            .then_some(())
    })
    .await;
}

/// Asserts that `state` is an exit with `code`.
pub fn assert_exited_with(state: &TaskState, code: i32) {
    assert!(
        matches!(state, TaskState::Exited { code: Some(c), .. } if *c == code),
        "expected an exit with code {code}: {state:?}"
    );
}

/// Container ids of `node` (running only, or all).
pub fn docker_ps(node: &str, all: bool) -> Vec<String> {
    try_docker_ps(node, all).expect("docker ps")
}

fn try_docker_ps(node: &str, all: bool) -> std::io::Result<Vec<String>> {
    let mut args = vec!["ps", "-q", "--no-trunc"];
    if all {
        args.push("-a");
    }
    let filter = format!("label=dev.drover.node={node}");
    args.extend(["--filter", &filter]);
    let out = std::process::Command::new("docker").args(&args).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// Removes every container of a node when dropped, even when the test panics (and never
/// panics itself).
pub struct DockerCleanup(pub String);

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let ids = try_docker_ps(&self.0, true).unwrap_or_default();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

/// One HTTP/1.1 request over a fresh connection; returns (status, body).
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {text:?}")))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The payload of a `Transfer-Encoding: chunked` body (big responses, such as etcd's
/// `/metrics`, come chunked even with `Connection: close`).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = size.split(';').next().unwrap_or_default().trim();
        let Ok(n) = usize::from_str_radix(size, 16) else {
            break;
        };
        let (Some(chunk), Some(after)) = (tail.get(..n), tail.get(n..)) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(chunk);
        rest = after.strip_prefix("\r\n").unwrap_or(after);
    }
    out
}

impl Running {
    /// Starts an agent without waiting for it to be ready (etcd may be unreachable, or the
    /// node name taken).
    pub async fn spawn(store: Store, keys: Keys, config: AgentConfig) -> Running {
        let shutdown = CancellationToken::new();
        let mut registry = prometheus_client::registry::Registry::default();
        let agent = within(
            LIMIT,
            "agent start",
            Agent::start(store, keys, config, &mut registry, shutdown.clone()),
        )
        .await
        .expect("agent starts");
        let handle = agent.handle();
        let task = tokio::spawn(agent.join());
        Running {
            handle,
            shutdown,
            task,
        }
    }
}

/// A gauge or counter from etcd's own `/metrics` (a sample without labels), if it answers.
pub async fn etcd_metric(etcd: &EtcdServer, name: &str) -> Option<f64> {
    let (status, body) = http(etcd.client_addr().port(), "GET", "/metrics", "")
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

/// Waits until etcd no longer has `lease` (it expired or was revoked).
pub async fn wait_lease_gone(store: &Store, lease: drover_store::LeaseId, limit: Duration) {
    poll(limit, "the lease is gone on the server", || async move {
        matches!(store.lease_ttl(lease).await, Ok(None)).then_some(())
    })
    .await;
}

/// Waits until the agent holds a lease other than `old`; returns it.
pub async fn wait_new_lease(
    handle: &AgentHandle,
    old: Option<drover_store::LeaseId>,
) -> drover_store::LeaseId {
    poll(LIMIT, "registered with a new lease", || {
        let lease = handle.lease();
        async move { lease.filter(|l| Some(*l) != old) }
    })
    .await
}
