//! Rollouts through the real binary (etcd, controllers and a process agent as real
//! processes): a failing revision is stopped at its first copy and reverted, `rollout
//! status` exits non-zero naming why, `history` lists the revisions and `undo` restores a
//! chosen one; and a leader SIGKILLed mid-rollout leaves the rollout to finish with no copy
//! placed or stopped twice — judged from a watch on the assignments the test itself holds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{manifest, Cli, Daemon};
use drover_api::instance::Instance;
use drover_api::keys::Keys;
use drover_api::records::ControllerInfo;
use drover_api::taskstate::TaskState;
use drover_api::{InstanceId, Rollout};
use drover_store::{Store, StoreConfig};
use drover_testkit::{wait_for, EtcdServer};

/// A service of `replicas` sleeping processes whose exec health check runs `probe`
/// (`/bin/true` passes, `/bin/false` fails), with `env V=<version>`. Each sleeps a number of
/// seconds no other test uses ([`SLEEP`]), so the test can count its processes in `/proc`.
fn service(replicas: u32, version: &str, probe: &str, min_healthy: u32) -> String {
    format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: web\nspec:\n  command: [\"sleep\", \"{}\"]\n  env: {{V: \"{version}\"}}\n  replicas: {replicas}\n  resources: {{cpu: 10m, memory: 8Mi}}\n  terminationGracePeriodSeconds: 1\n  healthCheck: {{exec: {{command: [\"{probe}\"]}}, periodSeconds: 1, failureThreshold: 1}}\n  update: {{minHealthySeconds: {min_healthy}, autoRevert: true}}\n",
        *SLEEP
    )
}

/// This test binary's sleep length: unique to the run, so `/proc` tells its processes apart.
static SLEEP: std::sync::LazyLock<u32> =
    std::sync::LazyLock::new(|| 100_000 + rand::random::<u32>() % 800_000);

/// The processes on this host running `sleep <SLEEP>`: the workload itself, outside Drover.
fn sleepers() -> usize {
    // argv[0] is the path the agent resolved (`/usr/bin/sleep`).
    let want = format!("sleep\0{}\0", *SLEEP);
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .is_ok_and(|c| c.ends_with(want.as_bytes()))
                })
                .count()
        })
        .unwrap_or(0)
}

struct Cluster {
    _server: EtcdServer,
    endpoints: Vec<String>,
    cli: Cli,
    store: Store,
    keys: Keys,
    _state: tempfile::TempDir,
    agent: Daemon,
}

impl Cluster {
    async fn start() -> Cluster {
        let server = EtcdServer::start().await;
        let cli = Cli::new(server.endpoints());
        let store = Store::connect(StoreConfig::new(server.endpoints()))
            .await
            .expect("store");
        let keys = Keys::new(&cli.prefix);
        let state = tempfile::tempdir().expect("tempdir");
        let agent = Daemon::start(
            &cli,
            &[
                "agent",
                "--node",
                "n1",
                "--driver",
                "process",
                "--allow-root-tasks",
                "--lease-ttl",
                "10s",
                "--state-dir",
                state.path().to_str().expect("utf-8"),
            ],
        );
        Cluster {
            endpoints: server.endpoints(),
            _server: server,
            cli,
            store,
            keys,
            _state: state,
            agent,
        }
    }

    fn controller(&self, id: &str) -> Daemon {
        Daemon::start(&self.cli, &["controller", "--id", id, "--lease-ttl", "2s"])
    }

    async fn apply(&self, doc: &str) {
        let (_dir, path) = manifest(doc);
        self.cli
            .ok(&["apply", "-f", path.to_str().expect("utf-8")])
            .await;
    }

    async fn assignments(&self) -> Vec<Instance> {
        self.store
            .list_checked::<Instance>(&self.keys.assignments())
            .await
            .expect("assignments")
            .items
            .into_iter()
            .map(|a| a.value)
            .collect()
    }

    async fn rollout(&self) -> Option<Rollout> {
        self.store
            .get::<TaskState>(&self.keys.taskstate("default", "web"))
            .await
            .expect("task state")
            .and_then(|s| s.value.rollout)
    }

    /// `drover rollout status web` to its end: (success, stdout + stderr).
    async fn status(&self) -> (bool, String) {
        let out = self
            .cli
            .run(&["rollout", "status", "web", "--timeout", "100s"])
            .await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    async fn leader(&self) -> Option<String> {
        self.store
            .list::<ControllerInfo>(&self.keys.controllers())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|c| c.value.leader)
            .map(|c| c.value.id)
    }
}

/// Whether a process with this pid exists (its status file is there).
fn alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/status")).exists()
}

#[tokio::test]
async fn a_failing_update_is_reverted_and_status_history_and_undo_say_so() {
    let c = Cluster::start().await;
    let _controller = c.controller("c1");
    c.apply(&service(3, "1", "/bin/true", 1)).await;
    let (ok, text) = c.status().await;
    assert!(
        ok,
        "the first rollout completes: {text}\n{}",
        c.agent.log_text()
    );
    let old: BTreeSet<InstanceId> = c.assignments().await.into_iter().map(|i| i.id).collect();
    let pids: Vec<String> = c
        .store
        .list::<drover_api::InstanceStatus>(&c.keys.statuses())
        .await
        .expect("statuses")
        .items
        .into_iter()
        .filter_map(|s| s.value.container_id)
        .collect();
    assert_eq!(pids.len(), 3);

    // Revision 2 fails its health check. Watch how many of its copies ever exist.
    let (seen, watch) = watch_assignments(&c).await;
    c.apply(&service(3, "2", "/bin/false", 1)).await;
    let status = tokio::spawn({
        let cli = Cli {
            endpoints: c.cli.endpoints.clone(),
            prefix: c.cli.prefix.clone(),
            access: Vec::new(),
        };
        async move {
            let out = cli
                .run(&["rollout", "status", "web", "--timeout", "100s"])
                .await;
            (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        }
    });
    let most_new = std::sync::atomic::AtomicUsize::new(0);
    let reverted = wait_for(
        Duration::from_secs(90),
        Duration::from_millis(100),
        || async {
            let new = c
                .assignments()
                .await
                .iter()
                .filter(|i| i.revision == 2)
                .count();
            most_new.fetch_max(new, std::sync::atomic::Ordering::Relaxed);
            let r = c.rollout().await?;
            (r.revision == 1 && r.reverted_hash.is_some() && new == 0).then_some(r)
        },
    )
    .await
    .unwrap_or_else(|_| panic!("never reverted: {:?}", most_new));
    watch.abort();
    let created_new = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|s| matches!(s, Seen::Created(_, 2)))
        .count();
    let most_new = most_new.into_inner();
    let (ok, text) = status.await.expect("status task");
    assert!(
        !ok,
        "rollout status exits non-zero on a reverted rollout: {text}"
    );
    assert!(text.contains("reverted to revision 1"), "{text}");
    assert!(text.contains("Unhealthy"), "names the reason: {text}");
    assert_eq!(
        created_new, 1,
        "the failing revision was stopped at its first copy"
    );
    assert!(most_new <= 1, "{most_new} copies of revision 2 at once");
    assert_eq!(
        reverted.failure.as_ref().map(|f| f.revision),
        Some(2),
        "{reverted:?}"
    );
    let now: BTreeSet<InstanceId> = c.assignments().await.into_iter().map(|i| i.id).collect();
    assert_eq!(now, old, "the old copies stayed");
    for pid in &pids {
        assert!(alive(pid), "old process {pid} still runs (never restarted)");
    }

    // A good revision 3 rolls out; then undo picks revision 1 back.
    c.apply(&service(3, "3", "/bin/true", 1)).await;
    let (ok, text) = c.status().await;
    assert!(ok, "revision 3 rolls out: {text}");
    let history = c.cli.ok(&["rollout", "history", "web"]).await;
    for needle in ["1 ", "2 ", "3 ", "failed: Unhealthy", "env"] {
        assert!(
            history.contains(needle),
            "history lacks {needle:?}:\n{history}"
        );
    }
    let undo = c
        .cli
        .ok(&["rollout", "undo", "web", "--to-revision", "1"])
        .await;
    assert!(undo.contains("rolled back to revision 1"), "{undo}");
    let (ok, text) = c.status().await;
    assert!(ok, "the undo rolls out: {text}");
    assert!(text.contains("revision 1"), "{text}");
    let back = c.assignments().await;
    assert_eq!(back.len(), 3);
    assert!(back
        .iter()
        .all(|i| i.revision == 1 && i.spec.env["V"] == "1"));
    // `undo` to a revision the task does not have names what it keeps.
    let out = c
        .cli
        .run(&["rollout", "undo", "web", "--to-revision", "9"])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no revision 9"));
}

/// One assignment change seen by the test's own watch.
#[derive(Debug)]
enum Seen {
    Created(InstanceId, u64),
    StopAsked(InstanceId),
    Deleted(InstanceId),
}

/// Every assignment change from now on, as a plain etcd watch sees it (outside Drover).
async fn watch_assignments(
    c: &Cluster,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Seen>::new()));
    let mut client = etcd_client::Client::connect(c.endpoints.clone(), None)
        .await
        .expect("watch client");
    let mut stream = client
        .watch(
            c.keys.assignments().as_str(),
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .expect("watch");
    let watch = tokio::spawn({
        let seen = seen.clone();
        async move {
            let mut stopped: BTreeSet<InstanceId> = BTreeSet::new();
            while let Ok(Some(response)) = stream.message().await {
                let mut seen = seen.lock().expect("lock");
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let key = kv.key_str().expect("utf-8 key");
                    let Some(id) = key.rsplit('/').next().and_then(|s| s.parse().ok()) else {
                        continue;
                    };
                    if event.event_type() == etcd_client::EventType::Delete {
                        seen.push(Seen::Deleted(id));
                        continue;
                    }
                    let Ok(i) = serde_json::from_slice::<Instance>(kv.value()) else {
                        continue;
                    };
                    if i.stop.is_some() {
                        if stopped.insert(id.clone()) {
                            seen.push(Seen::StopAsked(id));
                        }
                    } else if kv.create_revision() == kv.mod_revision() {
                        seen.push(Seen::Created(id, i.revision));
                    }
                }
            }
        }
    });
    (seen, watch)
}

#[tokio::test]
async fn a_leader_killed_mid_rollout_finishes_it_with_no_step_repeated_or_skipped() {
    let c = Cluster::start().await;
    let mut replicas = vec![("c1", c.controller("c1")), ("c2", c.controller("c2"))];
    c.apply(&service(4, "1", "/bin/true", 2)).await;
    let (ok, text) = c.status().await;
    assert!(ok, "{text}");
    let old: BTreeSet<InstanceId> = c.assignments().await.into_iter().map(|i| i.id).collect();

    // The test's own record of every assignment change from here on: a plain etcd watch.
    let (seen, watch) = watch_assignments(&c).await;
    let most_alive = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let witness = tokio::spawn({
        let most = most_alive.clone();
        async move {
            loop {
                most.fetch_max(sleepers(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.apply(&service(4, "2", "/bin/true", 2)).await;
    // Kill the leader once the rollout is under way: a new copy available, old ones left.
    wait_for(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let r = c.rollout().await?;
            (r.revision == 2
                && r.available >= 1
                && r.phase == drover_api::RolloutPhase::Progressing)
                .then_some(())
        },
    )
    .await
    .expect("the rollout got under way");
    let leader = c.leader().await.expect("a leader");
    let index = replicas
        .iter()
        .position(|(id, _)| *id == leader)
        .expect("the leader is ours");
    let (_, mut killed) = replicas.remove(index);
    killed.kill().await;

    let (ok, text) = c.status().await;
    assert!(ok, "the rollout finished under the new leader: {text}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    watch.abort();
    witness.abort();
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));

    let created: Vec<(&InstanceId, u64)> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Created(id, r) => Some((id, *r)),
            _ => None,
        })
        .collect();
    assert_eq!(
        created.len(),
        4,
        "exactly one new copy per replica: {seen:?}"
    );
    assert!(created.iter().all(|(_, r)| *r == 2), "{seen:?}");
    let mut asked: BTreeMap<&InstanceId, usize> = BTreeMap::new();
    for s in &seen {
        if let Seen::StopAsked(id) = s {
            *asked.entry(id).or_default() += 1;
        }
    }
    let asked_ids: BTreeSet<InstanceId> = asked.keys().map(|id| (*id).clone()).collect();
    assert_eq!(
        asked_ids, old,
        "every old copy, and only those, was asked to stop: {seen:?}"
    );
    let deleted: BTreeSet<InstanceId> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Deleted(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        deleted, old,
        "only the old copies went, each once: {seen:?}"
    );
    // Live copies, counted in /proc every 20 ms, never exceeded replicas + maxSurge.
    let most = most_alive.load(std::sync::atomic::Ordering::Relaxed);
    assert!(most <= 5, "{most} processes at once: {seen:?}");
    assert!(most >= 4, "the witness saw the copies ({most})");
    let now = c.assignments().await;
    assert_eq!(now.len(), 4);
    assert!(now.iter().all(|i| i.revision == 2));

    // The leaders' events number the rollout's steps: none twice.
    let events = c
        .store
        .list::<drover_api::Event>(&c.keys.events())
        .await
        .expect("events")
        .items;
    let mut steps = BTreeMap::new();
    for e in events.iter().map(|e| &e.value).filter(|e| e.name == "web") {
        if let Some(n) = e
            .message
            .strip_prefix("step ")
            .and_then(|m| m.split(':').next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            assert!(
                steps.insert(n, e.reason.clone()).is_none(),
                "step {n} recorded twice: {events:?}"
            );
        }
    }
    assert!(
        steps.values().any(|r| r == "RolloutComplete"),
        "the completion is an event: {steps:?}"
    );
}
