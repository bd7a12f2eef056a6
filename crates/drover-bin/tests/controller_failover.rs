//! Controller replicas as real processes: one leader at a time, takeover after SIGKILL within
//! the lease TTL, immediate handover on SIGTERM, and a paused (SIGSTOP) ex-leader that writes
//! nothing after it resumes.

mod common;

use std::time::{Duration, Instant};

use common::{manifest, task_doc, Cli, Daemon};
use drover_api::instance::Instance;
use drover_api::keys::Keys;
use drover_api::node::{Capacity, Node};
use drover_api::quantity::{Cpu, Memory};
use drover_api::records::ControllerInfo;
use drover_api::task::DriverKind;
use drover_store::{LeaseId, Store, StoreConfig};
use drover_testkit::{wait_for, EtcdServer};

/// The election lease TTL the replicas run with.
const TTL: Duration = Duration::from_secs(2);

struct Cluster {
    _server: EtcdServer,
    cli: Cli,
    store: Store,
    keys: Keys,
}

impl Cluster {
    async fn start() -> Cluster {
        let server = EtcdServer::start().await;
        let cli = Cli::new(server.endpoints());
        let store = Store::connect(StoreConfig::new(server.endpoints()))
            .await
            .expect("store");
        let keys = Keys::new(&cli.prefix);
        Cluster {
            _server: server,
            cli,
            store,
            keys,
        }
    }

    fn replica(&self, id: &str) -> Daemon {
        Daemon::start(&self.cli, &["controller", "--id", id, "--lease-ttl", "2s"])
    }

    /// Registers a node with a long lease so the leader has somewhere to place instances.
    async fn node(&self, name: &str) -> LeaseId {
        let lease = self
            .store
            .grant(Duration::from_secs(60))
            .await
            .expect("lease");
        let node = Node {
            name: name.into(),
            address: "127.0.0.1:1".into(),
            capacity: Capacity {
                cpu: Cpu::cores(64),
                memory: Memory::mebibytes(65536),
            },
            labels: Default::default(),
            drivers: vec![DriverKind::Process, DriverKind::Docker],
            version: "test".into(),
            tls: false,
            started_at: chrono::Utc::now(),
        };
        self.store
            .put(&self.keys.node(name), &node, Some(lease))
            .await
            .expect("node");
        lease
    }

    async fn leaders(&self) -> Vec<String> {
        self.store
            .list::<ControllerInfo>(&self.keys.controllers())
            .await
            .expect("list controllers")
            .items
            .into_iter()
            .filter(|i| i.value.leader)
            .map(|i| i.value.id)
            .collect()
    }

    /// Waits until exactly one replica leads, other than `not`; returns its id.
    async fn one_leader(&self, not: Option<&str>, within: Duration) -> String {
        wait_for(within, Duration::from_millis(50), || async {
            let leaders = self.leaders().await;
            match leaders.as_slice() {
                [one] if Some(one.as_str()) != not => Some(one.clone()),
                _ => None,
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no single new leader within {within:?}"))
    }

    async fn assignments_of(&self, task: &str) -> Vec<(Instance, i64)> {
        self.store
            .list::<Instance>(&self.keys.assignments())
            .await
            .expect("list assignments")
            .items
            .into_iter()
            .filter(|i| i.value.task == task)
            .map(|i| (i.value, i.mod_revision))
            .collect()
    }

    async fn apply(&self, name: &str, replicas: u32) {
        let (_dir, path) = manifest(&task_doc(name, replicas));
        self.cli
            .ok(&["apply", "-f", path.to_str().expect("utf-8")])
            .await;
    }
}

fn index_of(replicas: &[Daemon], ids: &[&str], leader: &str) -> usize {
    let i = ids
        .iter()
        .position(|id| *id == leader)
        .expect("leader is one of ours");
    assert!(i < replicas.len());
    i
}

#[tokio::test]
async fn three_replicas_one_leader_and_sigkill_takeover_reconciles_a_new_task() {
    let cluster = Cluster::start().await;
    cluster.node("n1").await;
    let ids = ["c0", "c1", "c2"];
    let mut replicas: Vec<Daemon> = ids.iter().map(|id| cluster.replica(id)).collect();
    let leader = cluster.one_leader(None, Duration::from_secs(20)).await;
    // Exactly one leads at every sample over a while.
    for _ in 0..20 {
        assert!(cluster.leaders().await.len() <= 1, "two leaders at once");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let i = index_of(&replicas, &ids, &leader);
    let killed_at = Instant::now();
    replicas[i].kill().await;
    cluster.apply("after-kill", 2).await;
    let bound = TTL + Duration::from_secs(3);
    wait_for(bound, Duration::from_millis(50), || async {
        (cluster.assignments_of("after-kill").await.len() == 2).then_some(())
    })
    .await
    .unwrap_or_else(|_| {
        panic!("a standby did not take over and place the new task within {bound:?}")
    });
    eprintln!(
        "SIGKILL of the leader → new task placed after {:?}",
        killed_at.elapsed()
    );
    let new_leader = cluster
        .one_leader(Some(&leader), Duration::from_secs(5))
        .await;
    assert_ne!(new_leader, leader);
}

#[tokio::test]
async fn sigterm_hands_over_without_waiting_for_the_lease() {
    let cluster = Cluster::start().await;
    let ids = ["a", "b"];
    let mut replicas: Vec<Daemon> = ids.iter().map(|id| cluster.replica(id)).collect();
    let leader = cluster.one_leader(None, Duration::from_secs(20)).await;
    let i = index_of(&replicas, &ids, &leader);
    let started = Instant::now();
    replicas[i].signal("TERM");
    let next = cluster.one_leader(Some(&leader), TTL * 3).await;
    let handover = started.elapsed();
    eprintln!("SIGTERM handover to {next} took {handover:?} (lease TTL {TTL:?})");
    assert!(
        handover < TTL,
        "handover waited for the lease: {handover:?}"
    );
    assert!(
        replicas[i]
            .wait_exit(Duration::from_secs(10))
            .await
            .is_some(),
        "old leader exits"
    );
}

#[tokio::test]
async fn a_paused_leader_writes_nothing_after_it_resumes() {
    let cluster = Cluster::start().await;
    cluster.node("n1").await;
    let ids = ["p", "q"];
    let replicas: Vec<Daemon> = ids.iter().map(|id| cluster.replica(id)).collect();
    let leader = cluster.one_leader(None, Duration::from_secs(20)).await;
    let i = index_of(&replicas, &ids, &leader);

    replicas[i].signal("STOP");
    // The other replica takes over once the paused leader's lease expires, and places a task
    // the paused leader has never seen.
    cluster.apply("while-paused", 3).await;
    wait_for(
        TTL + Duration::from_secs(5),
        Duration::from_millis(50),
        || async { (cluster.assignments_of("while-paused").await.len() == 3).then_some(()) },
    )
    .await
    .expect("the new leader places the task");
    let placed = cluster.assignments_of("while-paused").await;
    let revision_before = cluster.store.list_raw("/").await.expect("list").revision;

    replicas[i].signal("CONT");
    // Give the resumed ex-leader time to act on what it missed.
    tokio::time::sleep(TTL * 2).await;
    let after = cluster.assignments_of("while-paused").await;
    assert_eq!(after.len(), 3, "no double scheduling");
    for (instance, mod_revision) in &after {
        assert!(
            *mod_revision <= revision_before,
            "{} was written after the ex-leader resumed",
            instance.id
        );
    }
    assert_eq!(
        placed
            .iter()
            .map(|(i, _)| i.id.to_string())
            .collect::<Vec<_>>(),
        after
            .iter()
            .map(|(i, _)| i.id.to_string())
            .collect::<Vec<_>>()
    );
    // Nothing at all under the prefix was written by anyone after the resume, except events
    // and controller records of the replica that really leads.
    let changed: Vec<String> = cluster
        .store
        .list_raw(&format!("{}/", cluster.cli.prefix))
        .await
        .expect("list")
        .items
        .into_iter()
        .filter(|kv| kv.mod_revision > revision_before)
        .map(|kv| kv.key)
        .filter(|key| !key.contains("/controllers/") && !key.contains("/leader/"))
        .collect();
    let from_old: Vec<&String> = changed
        .iter()
        .filter(|k| k.contains(&format!("-{leader}-")))
        .collect();
    assert!(from_old.is_empty(), "the ex-leader wrote {from_old:?}");
    let leaders = cluster.leaders().await;
    assert_eq!(leaders.len(), 1, "one leader after the resume: {leaders:?}");
    assert_ne!(
        leaders[0], leader,
        "the paused replica does not lead again by itself"
    );
}
