//! Shared helpers for the controller's integration tests: a real etcd, in-process controller
//! replicas, and a fake agent that registers nodes on leases and reports statuses.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use drover_api::{
    Capacity, Cpu, DriverKind, Health, Instance, InstanceId, InstanceStatus, Keys, Memory, Node,
    Phase, Task, TaskSpec,
};
use drover_controller::{Controller, ControllerConfig, ControllerStatus, Metrics};
use drover_store::{Cmp, KeepAlive, LeaseId, Op, Store, StoreConfig, Txn};
use drover_testkit::{unique_prefix, wait_for, EtcdServer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The bound on any single await in these tests.
pub const T: Duration = Duration::from_secs(20);
/// Poll interval for `wait_for`.
pub const POLL: Duration = Duration::from_millis(25);
/// Election lease TTL used by test replicas.
pub const TTL: Duration = Duration::from_secs(2);

/// Awaits `fut` with the test bound, panicking with `what` on timeout.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(T, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {T:?}: {what}"),
    }
}

/// Polls `check` until it returns `Some`, panicking with `what` after `timeout`.
pub async fn eventually<V, F, Fut>(what: &str, timeout: Duration, check: F) -> V
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<V>>,
{
    wait_for(timeout, POLL, check)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

pub async fn connect(endpoints: &[String]) -> Store {
    drover_testkit::init_tracing();
    let cfg = StoreConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        ..StoreConfig::new(endpoints.to_vec())
    };
    within("connect", Store::connect(cfg))
        .await
        .expect("connect")
}

/// One etcd, a unique prefix, and a store handle for the test's own reads and writes.
pub struct Env {
    pub etcd: EtcdServer,
    pub store: Store,
    pub keys: Keys,
}

impl Env {
    pub async fn start() -> Env {
        let etcd = within("etcd", EtcdServer::start()).await;
        let store = connect(&etcd.endpoints()).await;
        Env {
            etcd,
            store,
            keys: Keys::new(&unique_prefix()),
        }
    }

    /// Starts a controller replica with its own connection.
    pub async fn replica(&self, id: &str) -> Replica {
        let store = connect(&self.etcd.endpoints()).await;
        self.replica_with(id, store)
    }

    /// Starts a controller replica on `store` (e.g. connected through a proxy).
    pub fn replica_with(&self, id: &str, store: Store) -> Replica {
        self.replica_configured(store, Self::config(id))
    }

    /// The test replicas' configuration: TTL, short reschedule and campaign delays.
    pub fn config(id: &str) -> ControllerConfig {
        let mut config = ControllerConfig::new(id);
        config.lease_ttl = TTL;
        config.reschedule_base_delay = Duration::from_millis(200);
        config.reschedule_max_delay = Duration::from_secs(1);
        config.campaign_backoff = Duration::from_millis(200);
        config
    }

    /// Starts a controller replica on `store` with `config`.
    pub fn replica_configured(&self, store: Store, config: ControllerConfig) -> Replica {
        let id = config.id.clone();
        let controller =
            Controller::with_metrics(store, self.keys.clone(), config, Metrics::default())
                .expect("valid config");
        let status = controller.status();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(controller.run(shutdown.clone()));
        Replica {
            id,
            status,
            shutdown,
            handle,
        }
    }

    pub async fn apply(&self, name: &str, spec: TaskSpec) {
        let key = self.keys.task("default", name);
        let generation = within("get task", self.store.get::<Task>(&key))
            .await
            .expect("get task")
            .map_or(1, |t| t.value.metadata.generation + 1);
        let mut task = Task::new("default", name, spec);
        task.metadata.generation = generation;
        within("put task", self.store.put(&key, &task, None))
            .await
            .expect("put task");
    }

    /// Every assignment that decodes (tests also write values that do not).
    pub async fn assignments(&self) -> BTreeMap<InstanceId, Instance> {
        self.decodable::<Instance>(&self.keys.assignments())
            .await
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect()
    }

    /// The values under `prefix` that decode as `T`, skipping those that do not.
    pub async fn decodable<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Vec<T> {
        within("list", self.store.list_raw(prefix))
            .await
            .expect("list")
            .items
            .into_iter()
            .filter_map(|v| serde_json::from_slice(&v.value).ok())
            .collect()
    }

    /// Assignments of `task`, counted per node.
    /// Every assignment key with its create revision (a moved or replaced instance would have
    /// a new key or a new create revision), read raw so that undecodable values are listed too.
    pub async fn assignment_keys(&self) -> BTreeMap<String, i64> {
        within("list", self.store.list_raw(&self.keys.assignments()))
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|v| (v.key, v.create_revision))
            .collect()
    }

    pub async fn per_node(&self, task: &str) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for i in self.assignments().await.values().filter(|i| i.task == task) {
            *m.entry(i.node.clone()).or_default() += 1;
        }
        m
    }

    /// Every status that decodes.
    pub async fn statuses(&self) -> BTreeMap<InstanceId, InstanceStatus> {
        self.decodable::<InstanceStatus>(&self.keys.statuses())
            .await
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect()
    }

    /// The ids of the replicas that currently claim to lead.
    pub fn leaders<'a>(replicas: &'a [&'a Replica]) -> Vec<&'a str> {
        replicas
            .iter()
            .filter(|r| r.status.borrow().leader)
            .map(|r| r.id.as_str())
            .collect()
    }

    /// Registers a fake node on a lease of `ttl`.
    pub async fn node(
        &self,
        agent: &FakeAgent,
        name: &str,
        cpu_millis: u64,
        labels: &[(&str, &str)],
        ttl: Duration,
    ) {
        let lease = within("grant", self.store.grant(ttl)).await.expect("grant");
        let keepalive = within("keep_alive", self.store.keep_alive(lease, ttl))
            .await
            .expect("keep_alive");
        let node = Node {
            name: name.into(),
            address: "127.0.0.1:1".into(),
            capacity: Capacity {
                cpu: Cpu::millis(cpu_millis),
                memory: Memory::mebibytes(8192),
            },
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            drivers: vec![DriverKind::Process, DriverKind::Docker, DriverKind::Hollow],
            version: "test".into(),
            tls: false,
            started_at: Utc::now(),
        };
        within(
            "put node",
            self.store.put(&self.keys.node(name), &node, Some(lease)),
        )
        .await
        .expect("put node");
        agent
            .nodes
            .lock()
            .expect("lock")
            .insert(name.into(), (lease, Some(keepalive)));
    }
}

/// A process-driver node record of `cpu_millis` CPU and `memory_mib` memory, for tests that
/// write node keys themselves (no lease).
pub fn node_record(name: &str, cpu_millis: u64, memory_mib: u64) -> Node {
    Node {
        name: name.into(),
        address: "127.0.0.1:1".into(),
        capacity: Capacity {
            cpu: Cpu::millis(cpu_millis),
            memory: Memory::mebibytes(memory_mib),
        },
        labels: Default::default(),
        drivers: vec![DriverKind::Process],
        version: "test".into(),
        tls: false,
        started_at: Utc::now(),
    }
}

impl Env {
    /// A stand-in election fence for tests that commit plans themselves: a key under the
    /// prefix, compared by its create revision like a leader key.
    pub async fn test_fence(&self) -> drover_store::Fence {
        let key = format!("{}test-fence", self.keys.all());
        let create_revision = within("fence", self.store.put(&key, &"me", None))
            .await
            .expect("fence");
        drover_store::Fence {
            key,
            create_revision,
        }
    }

    /// The whole prefix as the leader's watch would see it after a re-list (every value
    /// decodes: the test wrote them all).
    pub async fn snapshot(&self) -> drover_controller::Snapshot {
        let listing = within(
            "list",
            self.store
                .list::<Box<serde_json::value::RawValue>>(&self.keys.all()),
        )
        .await
        .expect("list");
        let mut s = drover_controller::Snapshot::default();
        for item in listing.items {
            s.apply(&self.keys, item).expect("decodes");
        }
        s.revision = listing.revision;
        s
    }
}

pub fn service(replicas: u32, cpu_millis: u64) -> TaskSpec {
    let mut spec = TaskSpec {
        command: vec!["/bin/sleep".into(), "1000".into()],
        replicas,
        ..TaskSpec::default()
    };
    spec.resources.cpu = Cpu::millis(cpu_millis);
    spec
}

/// Scripts for job instances by task name: how long they run and their exit code.
pub type Scripts = Arc<Mutex<BTreeMap<String, (Duration, i32)>>>;

/// What a job instance does when its task has no script: run 200 ms, exit 0.
pub const DEFAULT_SCRIPT: (Duration, i32) = (Duration::from_millis(200), 0);

/// Fake nodes by name: their lease, and its keep-alive while the node lives.
type Nodes = Arc<Mutex<BTreeMap<String, (LeaseId, Option<KeepAlive>)>>>;

/// An in-process controller replica.
pub struct Replica {
    pub id: String,
    pub status: watch::Receiver<ControllerStatus>,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<()>,
}

impl Replica {
    /// Simulates a crash: the replica stops at once, without resigning or revoking anything.
    pub fn crash(&self) {
        self.handle.abort();
    }

    /// Graceful shutdown (resigns if leading); waits for it to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        within("replica stop", self.handle)
            .await
            .expect("replica task");
    }

    pub fn is_leader(&self) -> bool {
        self.status.borrow().leader
    }
}

/// Fake agents: nodes on leases, plus a loop that reports every new assignment on a live node
/// `Running` (fenced on the assignment, like a real agent) after `start_delay`, and every
/// assignment the controller asked to stop `Stopped`.
pub struct FakeAgent {
    store: Store,
    keys: Keys,
    nodes: Nodes,
    task: JoinHandle<()>,
    /// Job scripts (see [`Scripts`]).
    pub scripts: Scripts,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAgent {
    pub fn start(env: &Env, start_delay: Duration) -> FakeAgent {
        let nodes: Nodes = Arc::default();
        let scripts: Scripts = Arc::default();
        let task = tokio::spawn(run_agent(
            env.store.clone(),
            env.keys.clone(),
            nodes.clone(),
            start_delay,
            scripts.clone(),
        ));
        FakeAgent {
            store: env.store.clone(),
            keys: env.keys.clone(),
            nodes,
            task,
            scripts,
        }
    }

    /// Job instances of `task` run for `run_for`, then exit with `exit_code`.
    pub fn script(&self, task: &str, run_for: Duration, exit_code: i32) {
        self.scripts
            .lock()
            .expect("lock")
            .insert(task.into(), (run_for, exit_code));
    }

    /// Revokes the node's lease: etcd deletes its key at once.
    pub async fn revoke(&self, name: &str) {
        let lease = self
            .nodes
            .lock()
            .expect("lock")
            .remove(name)
            .map(|(l, _)| l);
        if let Some(lease) = lease {
            within("revoke", self.store.revoke(lease))
                .await
                .expect("revoke");
        }
    }

    /// Reports `id` Failed (restarts exhausted), fenced on its assignment.
    pub async fn fail(&self, instance: &Instance) {
        let mut s = status(instance, Phase::Failed);
        s.reason = Some("CrashLoopBackOff".into());
        s.exit_code = Some(3);
        s.finished_at = Some(Utc::now());
        write_status(&self.store, &self.keys, instance, &s).await;
    }
}

fn status(i: &Instance, phase: Phase) -> InstanceStatus {
    InstanceStatus {
        id: i.id.clone(),
        node: i.node.clone(),
        phase,
        reason: None,
        message: None,
        container_id: None,
        restart_count: 0,
        exit_code: None,
        health: Health::Unknown,
        ports: vec![],
        generation: i.generation,
        attempt: i.attempt,
        started_at: Some(Utc::now()),
        healthy_since: None,
        finished_at: None,
        updated_at: Utc::now(),
    }
}

async fn write_status(store: &Store, keys: &Keys, i: &Instance, s: &InstanceStatus) -> bool {
    let akey = keys.assignment(&i.node, &i.id);
    let Ok(Some(a)) = store.get_raw(&akey).await else {
        return false;
    };
    let Ok(op) = Op::put(keys.status(&i.node, &i.id), s, None) else {
        return false;
    };
    let txn = Txn::new()
        .when(Cmp::CreateRevision(akey, a.create_revision))
        .op(op);
    store.commit(txn, None).await.is_ok_and(|o| o.succeeded)
}

async fn run_agent(
    store: Store,
    keys: Keys,
    nodes: Nodes,
    start_delay: Duration,
    scripts: Scripts,
) {
    let mut seen: BTreeMap<InstanceId, Instant> = BTreeMap::new();
    let mut reported: BTreeSet<InstanceId> = BTreeSet::new();
    // Job instances reported Running, with when; removed once they ended.
    let mut running: BTreeMap<InstanceId, Instant> = BTreeMap::new();
    let mut ended: BTreeSet<InstanceId> = BTreeSet::new();
    let mut stopped: BTreeSet<InstanceId> = BTreeSet::new();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Ok(listing) = store.list::<Instance>(&keys.assignments()).await else {
            continue;
        };
        let live: BTreeSet<String> = nodes.lock().expect("lock").keys().cloned().collect();
        for a in listing.items {
            let i = a.value;
            if !live.contains(&i.node) || ended.contains(&i.id) {
                continue;
            }
            // Asked to stop: report it gone (a fake copy stops at once).
            if let Some(stop) = &i.stop {
                if !stopped.contains(&i.id) {
                    let mut s = status(&i, Phase::Stopped);
                    s.reason = Some(stop.reason.clone());
                    s.finished_at = Some(Utc::now());
                    if write_status(&store, &keys, &i, &s).await {
                        stopped.insert(i.id.clone());
                        running.remove(&i.id);
                    }
                }
                continue;
            }
            if let Some(since) = running.get(&i.id) {
                let (run_for, code) = scripts
                    .lock()
                    .expect("lock")
                    .get(&i.task)
                    .copied()
                    .unwrap_or(DEFAULT_SCRIPT);
                if since.elapsed() >= run_for {
                    let phase = if code == 0 {
                        Phase::Succeeded
                    } else {
                        Phase::Failed
                    };
                    let mut s = status(&i, phase);
                    s.exit_code = Some(code);
                    s.reason = (code != 0).then(|| "Error".into());
                    s.finished_at = Some(Utc::now());
                    if write_status(&store, &keys, &i, &s).await {
                        running.remove(&i.id);
                        ended.insert(i.id.clone());
                    }
                }
                continue;
            }
            if reported.contains(&i.id) {
                continue;
            }
            let first = *seen.entry(i.id.clone()).or_insert_with(Instant::now);
            if first.elapsed() >= start_delay
                && write_status(&store, &keys, &i, &status(&i, Phase::Running)).await
            {
                reported.insert(i.id.clone());
                if i.run.is_some() {
                    running.insert(i.id.clone(), Instant::now());
                }
            }
        }
    }
}
