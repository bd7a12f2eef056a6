//! Helpers for the agent integration tests: a real etcd, assignments written as the controller
//! would, bounded polling of statuses, and in-process agents.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use drover_agent::config::DriverChoice;
use drover_agent::{Agent, AgentConfig, AgentHandle};
use drover_api::instance::{Instance, InstanceStatus};
use drover_api::keys::Keys;
use drover_api::names::InstanceId;
use drover_api::task::TaskSpec;
use drover_store::{Store, StoreConfig};
use drover_testkit::EtcdServer;
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
            attempt: 1,
            spec,
            assigned_at: Utc::now(),
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
            .delete(self.keys.status(id));
        self.store.commit(txn, None).await.expect("unassigned");
    }

    pub async fn status(&self, id: &InstanceId) -> Option<InstanceStatus> {
        self.store
            .get::<InstanceStatus>(&self.keys.status(id))
            .await
            .ok()
            .flatten()
            .map(|v| v.value)
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

/// Container ids of `node` (running only, or all).
pub fn docker_ps(node: &str, all: bool) -> Vec<String> {
    let mut args = vec!["ps", "-q", "--no-trunc"];
    if all {
        args.push("-a");
    }
    let filter = format!("label=dev.drover.node={node}");
    args.extend(["--filter", &filter]);
    let out = std::process::Command::new("docker")
        .args(&args)
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Removes every container of a node when dropped, even when the test panics.
pub struct DockerCleanup(pub String);

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let ids = docker_ps(&self.0, true);
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

/// One HTTP/1.1 request; returns (status, body).
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
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
