//! Reconcile against a real etcd: what the leader waits for after a conflict.

use std::collections::BTreeMap;

use drover_api::{Capacity, Cpu, DriverKind, Memory, Node, Task, TaskSpec};
use drover_store::StoreConfig;
use drover_testkit::{unique_prefix, wait_for, EtcdServer};

use super::*;
use drover_api::records::TaskStateRecord;
use drover_store::watcher::Event as WatchEvent;
use drover_store::Versioned;

/// The bound on any single await in these tests.
const T: Duration = Duration::from_secs(20);

#[test]
fn a_conflict_waits_past_the_snapshot_and_for_the_plans_own_writes() {
    assert_eq!(conflict_wait_target(10, 0), 11);
    assert_eq!(conflict_wait_target(10, 15), 15);
}

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(T, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// One leader term, reconciled by hand: the leader reaches etcd through `store`, set-up writes
/// go through `direct`. Holds a fence, node `n1` and task `default/web` (1 replica), with the
/// watch running and the snapshot synced to the task.
struct Leader {
    term: Arc<Term>,
    keys: Keys,
    /// Another tenant's prefix on the same etcd.
    other: Keys,
    config: ControllerConfig,
    rx: watch::Receiver<i64>,
    stop: CancellationToken,
    _watch: AbortOnDrop<()>,
    _leading: crate::mirror::Leading,
    /// The runtime is not run; it only keeps the watch's triggers alive.
    _runner: Box<dyn std::any::Any + Send>,
}

impl Leader {
    async fn start(store: Store, direct: &Store) -> Leader {
        let keys = Keys::new(&unique_prefix());
        let other = Keys::new(&unique_prefix());
        let mut config = ControllerConfig::new("test");
        config.sync_wait = Duration::from_secs(4);
        let fence_key = format!("{}test-fence", keys.all());
        let fence_rev = within("fence", direct.put(&fence_key, &"me", None))
            .await
            .expect("fence");
        let fence = Fence {
            key: fence_key,
            create_revision: fence_rev,
        };
        let node = Node {
            name: "n1".into(),
            address: "127.0.0.1:1".into(),
            capacity: Capacity {
                cpu: Cpu::millis(4000),
                memory: Memory::mebibytes(8192),
            },
            labels: BTreeMap::new(),
            drivers: vec![DriverKind::Process],
            version: "test".into(),
            tls: false,
            started_at: Utc::now(),
        };
        within("node", direct.put(&keys.node("n1"), &node, None))
            .await
            .expect("node");
        let spec = TaskSpec {
            command: vec!["/bin/true".into()],
            replicas: 1,
            ..TaskSpec::default()
        };
        let task = Task::new("default", "web", spec);
        let task_rev = within(
            "task",
            direct.put(&keys.task("default", "web"), &task, None),
        )
        .await
        .expect("task");
        let (status, _) = watch::channel(ControllerStatus::default());
        let mirror = Mirror::new(keys.clone(), config.debounce);
        let term = Term::new(
            store.clone(),
            keys.clone(),
            config.clone(),
            fence,
            Metrics::default(),
            status,
            mirror.clone(),
        );
        let runner = drover_runtime::Reconciler::new(
            drover_runtime::ReconcilerConfig::new("test"),
            term.clone(),
            reconcile,
        )
        .expect("runtime config");
        let stop = CancellationToken::new();
        let leading = mirror.lead(runner.trigger());
        let watch = AbortOnDrop(tokio::spawn(mirror.clone().run(store, stop.clone())));
        let mut rx = term.mirror.revision.subscribe();
        within("synced", rx.wait_for(|r| *r >= task_rev))
            .await
            .expect("watch");
        Leader {
            term,
            keys,
            other,
            config,
            rx,
            stop,
            _watch: watch,
            _leading: leading,
            _runner: Box::new(runner),
        }
    }
}

/// A conflict while writes under another prefix move etcd's global revision must not stall
/// the leader: the next reconcile plans as soon as the snapshot holds the conflicting change,
/// well within `sync_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_under_foreign_writes_replans_without_waiting_for_the_global_revision() {
    drover_testkit::init_tracing();
    let etcd = within("etcd", EtcdServer::start()).await;
    let store = within(
        "connect",
        Store::connect(StoreConfig::new(etcd.endpoints())),
    )
    .await
    .expect("connect");
    let leader = Leader::start(store.clone(), &store).await;
    let (term, keys, other) = (
        leader.term.clone(),
        leader.keys.clone(),
        leader.other.clone(),
    );
    let (config, mut rx) = (leader.config.clone(), leader.rx.clone());
    let stale = {
        let mut state = term
            .mirror
            .planner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        term.mirror.apply_queued(&mut state);
        state.relist.live().clone()
    };

    // Someone changes a key the plan compares (the task's state) ...
    let state = TaskStateRecord {
        next_slot: 7,
        ..TaskStateRecord::default()
    };
    let changed = within(
        "taskstate",
        store.put(&keys.taskstate("default", "web"), &state, None),
    )
    .await
    .expect("taskstate");
    // ... while another tenant of the same etcd moves the global revision far ahead.
    for i in 0..50 {
        within(
            "foreign",
            store.put(&other.node(&format!("x{i}")), &i, None),
        )
        .await
        .expect("foreign write");
    }
    within("change seen", rx.wait_for(|r| *r >= changed))
        .await
        .expect("watch");

    // The leader planned before the change reached its snapshot: its commit conflicts.
    let fresh = {
        let mut state = term
            .mirror
            .planner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        term.mirror.apply_queued(&mut state);
        std::mem::replace(state.relist.live_mut(), stale)
    };
    let first = within("reconcile", reconcile(Cluster, term.clone()))
        .await
        .expect("a conflict is not an error");
    assert_eq!(
        first,
        Action::requeue(config.debounce.max(Duration::from_millis(10)))
    );
    assert!(
        store_assignments(&store, &keys).await.is_empty(),
        "the conflicting plan wrote nothing"
    );
    *term
        .mirror
        .planner
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .relist
        .live_mut() = fresh;

    // The next reconcile plans at once (the old rule waited for the global revision, which
    // nothing under this prefix reaches, until `sync_wait` ran out).
    let started = Instant::now();
    let prompt = config.sync_wait / 2;
    let second = tokio::time::timeout(prompt, reconcile(Cluster, term.clone()))
        .await
        .unwrap_or_else(|_| panic!("re-plan took longer than {prompt:?}"));
    assert!(second.is_ok(), "{second:?}");
    assert!(started.elapsed() < prompt);
    let placed = wait_for(T, Duration::from_millis(25), || {
        let (store, keys) = (store.clone(), keys.clone());
        async move {
            let a = store_assignments(&store, &keys).await;
            (!a.is_empty()).then_some(a)
        }
    })
    .await
    .expect("placed");
    assert_eq!(placed, vec!["default.web.7".to_owned()]);
    leader.stop.cancel();
}

async fn store_assignments(store: &Store, keys: &Keys) -> Vec<String> {
    let listing = within(
        "list",
        store.list::<drover_api::Instance>(&keys.assignments()),
    )
    .await
    .expect("list");
    listing
        .items
        .into_iter()
        .map(|v| v.value.id.to_string())
        .collect()
}

/// A commit whose reply is lost (the proxy holds the bytes, etcd applies the txn after the
/// client gave up) while another tenant keeps writing elsewhere on the same etcd: the leader
/// must plan again within a second of etcd answering, not wait for the global revision, which
/// a snapshot of its own prefix never reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_reply_under_foreign_writes_does_not_stall_the_leader() {
    drover_testkit::init_tracing();
    let etcd = within("etcd", EtcdServer::start()).await;
    let direct = within(
        "connect",
        Store::connect(StoreConfig::new(etcd.endpoints())),
    )
    .await
    .expect("connect");
    let proxy = drover_testkit::TcpProxy::start(etcd.client_addr()).await;
    let mut via = StoreConfig::new([proxy.url()]);
    via.request_timeout = Duration::from_millis(800);
    let store = within("connect", Store::connect(via))
        .await
        .expect("connect");
    let leader = Leader::start(store, &direct).await;
    let (term, keys, other) = (
        leader.term.clone(),
        leader.keys.clone(),
        leader.other.clone(),
    );

    // Another tenant writes under its own prefix throughout (bounded: 300 writes).
    let foreign = {
        let (direct, other) = (direct.clone(), other.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                let _ = direct.put(&other.node(&format!("x{i}")), &i, None).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // The commit's reply is lost: bytes are held past the client's timeout, then delivered.
    proxy.blackhole();
    let first = {
        let term = term.clone();
        tokio::spawn(async move { reconcile(Cluster, term).await })
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    proxy.restore();
    let answered = Instant::now();
    let first = within("first reconcile", first).await.expect("join");
    assert!(first.is_err(), "the commit's outcome is unknown: {first:?}");

    // The next reconcile plans and completes promptly.
    let second = tokio::time::timeout(Duration::from_secs(1), reconcile(Cluster, term.clone()))
        .await
        .expect("re-plan within 1 s of etcd answering, not after sync_wait");
    assert!(second.is_ok(), "{second:?}");
    let placed = wait_for(T, Duration::from_millis(25), || {
        let (direct, keys) = (direct.clone(), keys.clone());
        async move {
            let a = store_assignments(&direct, &keys).await;
            (!a.is_empty()).then_some(a)
        }
    })
    .await
    .expect("placed");
    assert_eq!(placed.len(), 1, "placed once: {placed:?}");
    assert!(
        answered.elapsed() < Duration::from_secs(3),
        "took {:?} after etcd answered again",
        answered.elapsed()
    );
    foreign.abort();
    leader.stop.cancel();
}

/// Only changes the planner reads trigger a plan: the leader's own events, controller
/// advertisements, election keys and keys outside the schema do not; the revision moves with
/// all of them, and a listing counts only once complete.
#[test]
fn only_keys_the_planner_reads_trigger_a_plan_but_every_key_moves_the_revision() {
    let keys = Keys::new("/p");
    let put = |key: String,
               rev: i64|
     -> drover_store::Result<WatchEvent<Box<serde_json::value::RawValue>>> {
        Ok(WatchEvent::Apply(Versioned {
            key,
            value: serde_json::value::to_raw_value(&serde_json::json!({})).expect("JSON"),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: None,
        }))
    };
    let mut seen = Seen::default();
    assert!(!seen.track(&keys, &Ok(WatchEvent::Init)));
    let listed = Ok(WatchEvent::InitApply(Versioned {
        key: keys.task("default", "web"),
        value: serde_json::value::to_raw_value(&serde_json::json!({})).expect("JSON"),
        create_revision: 3,
        mod_revision: 3,
        version: 1,
        lease: None,
    }));
    assert!(
        !seen.track(&keys, &listed),
        "a listing counts once complete"
    );
    assert_eq!(seen.published(), None, "not listed yet");
    assert!(seen.track(&keys, &Ok(WatchEvent::InitDone { revision: 5 })));
    assert_eq!(seen.published(), Some(5));

    for (key, rev) in [
        (format!("{}default/e1", keys.events()), 6),
        (format!("{}c1", keys.controllers()), 7),
        (format!("{}1234", keys.election_prefix()), 8),
        ("/p/nonsense/x".to_string(), 9),
    ] {
        assert!(
            !seen.track(&keys, &put(key.clone(), rev)),
            "{key} triggered"
        );
        assert_eq!(seen.published(), Some(rev), "{key} moves the revision");
    }
    for (key, rev) in [
        (keys.task("default", "web"), 10),
        (keys.node("n1"), 11),
        (keys.nodeinfo("n1"), 12),
    ] {
        assert!(
            seen.track(&keys, &put(key.clone(), rev)),
            "{key} did not trigger"
        );
    }
    let deleted = Ok(WatchEvent::Delete {
        key: keys.node("n1"),
        mod_revision: 13,
        prev: None,
    });
    assert!(seen.track(&keys, &deleted));
    assert_eq!(seen.published(), Some(13));
}

/// Changes arriving while the last plan's "cool-down" (its own duration after it ended) runs
/// wait for it; otherwise the debounce applies.
#[test]
fn plans_are_spaced_by_the_last_plans_duration_but_never_closer_than_the_debounce() {
    let now = Instant::now();
    let debounce = Duration::from_millis(20);
    assert_eq!(plan_spacing(debounce, None, now), debounce);
    assert_eq!(
        plan_spacing(debounce, Some(now + Duration::from_millis(900)), now),
        Duration::from_millis(900)
    );
    assert_eq!(
        plan_spacing(debounce, Some(now + Duration::from_millis(5)), now),
        debounce
    );
    assert_eq!(
        plan_spacing(debounce, Some(now - Duration::from_secs(1)), now),
        debounce,
        "a cool-down in the past does not delay"
    );
}

/// A standby's mirror (no term, no trigger) keeps its snapshot current by itself: what a new
/// leader plans from at once after its election, instead of listing the whole prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standbys_mirror_applies_changes_without_any_plan() {
    drover_testkit::init_tracing();
    let etcd = within("etcd", EtcdServer::start()).await;
    let store = within(
        "connect",
        Store::connect(StoreConfig::new(etcd.endpoints())),
    )
    .await
    .expect("connect");
    let keys = Keys::new(&unique_prefix());
    let mirror = Mirror::new(keys.clone(), Duration::from_millis(20));
    let stop = CancellationToken::new();
    let _watch = AbortOnDrop(tokio::spawn(
        mirror.clone().run(store.clone(), stop.clone()),
    ));
    let mut last = 0;
    for i in 0..50 {
        let task = Task::new("default", &format!("t{i}"), TaskSpec::default());
        last = within(
            "put",
            store.put(&keys.task("default", &format!("t{i}")), &task, None),
        )
        .await
        .expect("put");
    }
    // The queue is applied in the background (every second at the latest), not by a plan.
    let applied = wait_for(T, Duration::from_millis(50), || {
        let mirror = mirror.clone();
        async move {
            let state = mirror
                .planner
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let live = state.relist.live();
            (live.revision >= last && live.tasks.len() == 50).then_some(live.revision)
        }
    })
    .await;
    assert!(applied.is_ok(), "the standby's snapshot never caught up");
    // Something changed after that still arrives (the watch goes on).
    within("delete", store.delete(&keys.task("default", "t0")))
        .await
        .expect("delete");
    let gone = wait_for(T, Duration::from_millis(50), || {
        let mirror = mirror.clone();
        async move {
            let state = mirror
                .planner
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (state.relist.live().tasks.len() == 49).then_some(())
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "the deletion never reached the standby's snapshot"
    );
    stop.cancel();
}
