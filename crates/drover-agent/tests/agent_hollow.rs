//! Hollow nodes against a real etcd: many simulated nodes in one process register, run their
//! assigned hollow instances and report statuses, each node with its own watch of its own
//! assignments, so a re-list or a foreign value stays with its node.

mod support;

use std::time::{Duration, Instant};

use drover_agent::{run_hollow, HollowConfig, HollowNodes};
use drover_api::instance::{InstanceStatus, Phase};
use drover_api::keys::Keys;
use drover_api::names::InstanceId;
use drover_api::task::TaskSpec;
use drover_store::Store;
use drover_testkit::TcpProxy;
use serde_json::json;
use support::*;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Starts `config`'s hollow nodes on `store` and waits until each is registered and listed.
async fn start_hollow(store: Store, keys: &Keys, config: HollowConfig) -> HollowNodes {
    let mut registry = prometheus_client::registry::Registry::default();
    let hollow =
        HollowNodes::start(store, keys.clone(), config, &mut registry).expect("hollow nodes");
    let handle = hollow.handle();
    poll(LIMIT, "every hollow node registered and listed", || {
        let ready = handle.is_ready();
        async move { ready.then_some(()) }
    })
    .await;
    hollow
}

async fn stop_hollow(hollow: HollowNodes) {
    within(LIMIT, "hollow shutdown", hollow.stop()).await;
}

/// A hollow instance that runs until stopped.
fn forever() -> TaskSpec {
    spec(json!({"command": ["x"], "hollow": {}}))
}

/// The assignment of `id` to `node`, as the leader writes it.
fn assignment(id: &InstanceId, node: &str, spec: &TaskSpec) -> drover_api::instance::Instance {
    drover_api::instance::Instance {
        id: id.clone(),
        namespace: id.namespace().to_string(),
        task: id.task().to_string(),
        slot: id.slot(),
        run: None,
        node: node.to_string(),
        generation: 1,
        revision: 0,
        attempt: 1,
        spec: spec.clone(),
        assigned_at: chrono::Utc::now(),
        stop: None,
    }
}

async fn scale(nodes: usize, per_node: usize) {
    let env = Env::start().await;
    let base = unique("hl");
    let mut config = HollowConfig::new(&base, nodes);
    config.lease_ttl = Duration::from_secs(10);
    let shutdown = CancellationToken::new();
    let (ready_tx, mut ready) = watch::channel(0usize);
    let task = {
        let (store, keys, shutdown) = (env.store.clone(), env.keys.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut registry = prometheus_client::registry::Registry::default();
            run_hollow(store, keys, config, &mut registry, shutdown, Some(ready_tx)).await
        })
    };
    within(
        LIMIT,
        "all hollow nodes registered",
        ready.wait_for(|n| *n == nodes),
    )
    .await
    .expect("ready");
    let listed = env
        .store
        .list_raw(&env.keys.nodes())
        .await
        .expect("list nodes");
    assert_eq!(listed.items.len(), nodes);

    let started = Instant::now();
    let forever = forever();
    let mut ops = Vec::new();
    for n in 0..nodes {
        for s in 0..per_node {
            let id = id(
                "default",
                "sim",
                u32::try_from(n * per_node + s).expect("small"),
            );
            let node = format!("{base}-{n}");
            let instance = assignment(&id, &node, &forever);
            ops.push(
                drover_store::Op::put(env.keys.assignment(&node, &id), &instance, None)
                    .expect("op"),
            );
        }
    }
    for chunk in env.store.commit_batched(ops, None).await {
        chunk.result.expect("assignments written");
    }
    let total = nodes * per_node;
    poll(LIMIT, "every hollow instance Running", || {
        let (store, prefix) = (env.store.clone(), env.keys.statuses());
        async move {
            let l = store.list::<InstanceStatus>(&prefix).await.ok()?;
            (l.items
                .iter()
                .filter(|s| s.value.phase == Phase::Running)
                .count()
                == total)
                .then_some(())
        }
    })
    .await;
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    eprintln!("test process (agent side only; etcd runs apart) {rss}");
    eprintln!(
        "{nodes} hollow nodes: {total} instances Running {:?} after assignment",
        started.elapsed()
    );

    shutdown.cancel();
    within(LIMIT, "hollow shutdown", task)
        .await
        .expect("join")
        .expect("clean");
    let listed = env
        .store
        .list_raw(&env.keys.nodes())
        .await
        .expect("list nodes");
    assert!(listed.items.is_empty(), "leases revoked on shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn hollow_nodes_register_and_run_their_instances() {
    scale(20, 10).await;
}

/// The scale point; slow-ish, so run on demand:
/// `cargo test -p drover-agent --test agent_hollow -- --ignored`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "scale run (300 nodes x 3000 instances); run with --ignored"]
async fn three_hundred_hollow_nodes_run_three_thousand_instances() {
    scale(300, 10).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hollow_scripts_end_in_the_right_phase() {
    let env = Env::start().await;
    let base = unique("hs");
    let hollow = start_hollow(env.store.clone(), &env.keys, HollowConfig::new(&base, 1)).await;
    let node = format!("{base}-0");
    let done = id("default", "done", 0);
    env.assign(
        &node,
        &done,
        spec(json!({"command": ["x"], "restartPolicy": "Never", "hollow": {"runSeconds": 0.2}})),
    )
    .await;
    let broken = id("default", "broken", 0);
    env.assign(
        &node,
        &broken,
        spec(json!({"command": ["x"], "hollow": {"startError": "scripted"}})),
    )
    .await;
    let st = env
        .wait_status(&done, LIMIT, "Succeeded", |s| s.phase.is_terminal())
        .await;
    assert_eq!((st.phase, st.exit_code), (Phase::Succeeded, Some(0)));
    let st = env
        .wait_status(&broken, LIMIT, "StartError", |s| s.phase.is_terminal())
        .await;
    assert_eq!(st.reason.as_deref(), Some("StartError"));
    stop_hollow(hollow).await;
}

/// What a hollow process asks of etcd is what as many real agents would: every node watches
/// its own `assignments/<node>/` prefix, so etcd counts (at least) one watcher per node.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_sees_one_watch_per_hollow_node() {
    const NODES: usize = 20;
    const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
    let env = Env::start().await;
    let before = etcd_metric(&env.etcd, WATCHERS)
        .await
        .expect("etcd metrics");
    let config = HollowConfig::new(unique("hw"), NODES);
    let hollow = start_hollow(env.store.clone(), &env.keys, config).await;
    let mut seen = before;
    let counted = tokio::time::timeout(LIMIT, async {
        loop {
            if let Some(n) = etcd_metric(&env.etcd, WATCHERS).await {
                seen = n;
                if n >= before + NODES as f64 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        counted.is_ok(),
        "etcd counts {seen} watchers ({before} before the hollow nodes); want one per node, {NODES}"
    );
    stop_hollow(hollow).await;
}

/// What a node shows of itself, to compare before and after something happened elsewhere.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// Mod revision of the status of its instance (a rewrite or restart moves it).
    status_revision: i64,
    listings: Option<u64>,
    assigned: Option<usize>,
    reconciles: Option<u64>,
    running: usize,
}

async fn seen(env: &Env, hollow: &HollowNodes, node: &str, id: &InstanceId) -> Seen {
    let h = hollow.handle();
    let status = within(
        LIMIT,
        "read status",
        env.store.get::<InstanceStatus>(&env.keys.status(node, id)),
    )
    .await
    .expect("status read")
    .expect("status exists");
    Seen {
        status_revision: status.mod_revision,
        listings: h.listings(node),
        assigned: h.assigned(node),
        reconciles: h.reconciles(node),
        running: h.running(node),
    }
}

/// One node's watch meets a compaction and re-lists; no other node's cache, reconciles or
/// instances move. (Were two nodes to share one cache, node 0's re-list would swap the other's
/// assignments out of it; were a re-list to reconcile every node, the others' counts would move.)
#[tokio::test(flavor = "multi_thread")]
async fn a_relist_of_one_node_leaves_every_other_node_alone() {
    const NODES: usize = 4;
    const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
    let env = Env::start().await;
    let proxy = within(LIMIT, "proxy", TcpProxy::start(env.etcd.client_addr())).await;
    let cut_off = connect(vec![proxy.url()]).await;
    let mut config = HollowConfig::new(unique("hr"), NODES);
    // The cut below must not fence anyone (that would restart every node's instances).
    config.lease_ttl = Duration::from_secs(30);
    let names = config.names();
    let hollow = start_hollow(cut_off.clone(), &env.keys, config).await;
    let ids: Vec<InstanceId> = (0..NODES)
        .map(|n| id("default", "relist", u32::try_from(n).expect("small")))
        .collect();
    // Node 0's assignment first, each next one after the previous status write: every other
    // node's watch has seen a revision at least two newer than the newest node 0's has seen.
    let mut revisions = Vec::new();
    for (node, id) in names.iter().zip(&ids) {
        revisions.push(env.assign(node, id, forever()).await);
        env.wait_status(id, LIMIT, "Running", |s| s.phase == Phase::Running)
            .await;
    }
    let h = hollow.handle();
    let listed = h.listings(&names[0]).expect("node 0 served");
    let mut before = Vec::new();
    for (node, id) in names.iter().zip(&ids).skip(1) {
        before.push(seen(&env, &hollow, node, id).await);
    }

    // Compacted at node 1's assignment: node 0's watch cannot resume (its next revision is
    // gone), every other node's can. Cutting the connection makes all of them resume.
    within(LIMIT, "compact", env.etcd.compact(revisions[1]))
        .await
        .expect("compact");
    proxy.cut();
    poll(LIMIT, "etcd dropped the cut-off watches", || async {
        let n = etcd_metric(&env.etcd, WATCHERS).await?;
        (n < NODES as f64).then_some(())
    })
    .await;
    proxy.restore();
    poll(LIMIT, "node 0 re-listed", || {
        let listings = h.listings(&names[0]);
        async move { (listings == Some(listed + 1)).then_some(()) }
    })
    .await;
    poll(LIMIT, "every node watches again", || async {
        let n = etcd_metric(&env.etcd, WATCHERS).await?;
        (n >= NODES as f64).then_some(())
    })
    .await;
    assert_eq!(
        h.assigned(&names[0]),
        Some(1),
        "node 0's cache re-listed whole"
    );
    for ((node, id), was) in names.iter().zip(&ids).skip(1).zip(&before) {
        assert_eq!(
            &seen(&env, &hollow, node, id).await,
            was,
            "{node} was touched"
        );
    }

    // Every watch still follows its prefix: a new instance on each node runs.
    for (n, node) in names.iter().enumerate() {
        let canary = id("default", "canary", u32::try_from(n).expect("small"));
        env.assign(node, &canary, forever()).await;
        env.wait_status(&canary, LIMIT, "canary Running", |s| {
            s.phase == Phase::Running
        })
        .await;
    }
    for ((node, id), was) in names.iter().zip(&ids).skip(1).zip(&before) {
        let now = seen(&env, &hollow, node, id).await;
        assert_eq!(
            (now.status_revision, now.listings, now.running),
            (was.status_revision, Some(1), 2),
            "{node}: {now:?}"
        );
    }
    assert!(h.stop_records().is_empty(), "{:#?}", h.stop_records());
    stop_hollow(hollow).await;
}

/// Promise 7 on the hollow side: a value under one node's assignment prefix that does not
/// decode is handled as the real agent handles it — logged with its key and skipped, nothing
/// started or written for it — and stays with that node: its own watch goes on past it, and
/// no other node notices.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_value_under_one_nodes_prefix_stays_with_that_node() {
    const NODES: usize = 3;
    let env = Env::start().await;
    let config = HollowConfig::new(unique("hf"), NODES);
    let names = config.names();
    let garbage = |node: &str, task: &str| {
        let key = env.keys.assignment(node, &id("default", task, 0));
        let store = env.store.clone();
        async move {
            within(
                LIMIT,
                "foreign put",
                store.put_raw(&key, b"{not json".to_vec(), None),
            )
            .await
            .expect("foreign value written");
        }
    };
    // One met by node 1's first listing, one by node 0's watch.
    garbage(&names[1], "listed").await;
    let hollow = start_hollow(env.store.clone(), &env.keys, config).await;
    garbage(&names[0], "watched").await;
    let ids: Vec<InstanceId> = (0..NODES)
        .map(|n| id("default", "good", u32::try_from(n).expect("small")))
        .collect();
    for (node, id) in names.iter().zip(&ids) {
        env.assign(node, id, forever()).await;
    }
    for id in &ids {
        env.wait_status(id, LIMIT, "Running", |s| s.phase == Phase::Running)
            .await;
    }
    let h = hollow.handle();
    for node in &names {
        assert_eq!(h.listings(node), Some(1), "{node} never re-listed");
        assert_eq!(
            h.assigned(node),
            Some(1),
            "{node} caches its good assignment only"
        );
        assert_eq!(h.running(node), 1, "{node}");
    }
    for task in ["listed", "watched"] {
        assert!(
            env.status(&id("default", task, 0)).await.is_none(),
            "nothing written for {task}"
        );
    }
    // Node 0 still follows its prefix after the foreign value: an unassignment stops its copy.
    env.unassign(&names[0], &ids[0]).await;
    poll(LIMIT, "node 0's instance stopped", || {
        let running = h.running(&names[0]);
        async move { (running == 0).then_some(()) }
    })
    .await;
    assert_eq!((h.running(&names[1]), h.running(&names[2])), (1, 1));
    stop_hollow(hollow).await;
}

/// etcd's own count of `Txn` requests it answered (confirm reads and status writes are txns).
const TXNS: &str = "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}";

/// Each hollow node's burst of assignments (one txn per node, as the leader groups them) is
/// confirmed and reported in grouped requests, as a real agent's would be, even though the
/// nodes share one reconcile loop: counted by etcd.
#[tokio::test(flavor = "multi_thread")]
async fn each_hollow_nodes_burst_of_starts_shares_its_requests() {
    const NODES: usize = 20;
    const PER_NODE: u32 = 10;
    let env = Env::start().await;
    let base = unique("hb");
    let hollow = start_hollow(
        env.store.clone(),
        &env.keys,
        HollowConfig::new(&base, NODES),
    )
    .await;
    let before = etcd_metric(&env.etcd, TXNS).await.unwrap_or(0.0);
    let forever = forever();
    let mut ids = Vec::new();
    let mut bursts = Vec::new();
    for n in 0..NODES {
        let node = format!("{base}-{n}");
        let mut txn = drover_store::Txn::new();
        for s in 0..PER_NODE {
            let slot = u32::try_from(n).expect("small") * PER_NODE + s;
            let id = id("default", "burst", slot);
            let instance = assignment(&id, &node, &forever);
            txn = txn
                .put(env.keys.assignment(&node, &id), &instance, None)
                .expect("encode");
            ids.push(id);
        }
        bursts.push(env.store.commit(txn, None));
    }
    for done in futures::future::join_all(bursts).await {
        done.expect("a node's burst");
    }
    let total = ids.len();
    poll(LIMIT, "every burst instance Running", || {
        let (store, prefix) = (env.store.clone(), env.keys.statuses());
        async move {
            let l = store.list::<InstanceStatus>(&prefix).await.ok()?;
            let running = l
                .items
                .iter()
                .filter(|s| s.value.phase == Phase::Running)
                .count();
            (running == total).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = etcd_metric(&env.etcd, TXNS).await.expect("etcd metrics");
    let agent_txns = after - before - NODES as f64;
    eprintln!("{total} starts on {NODES} hollow nodes took {agent_txns} txns");
    // One at a time that is at least 2 per start: a confirm read and a status write. (With a
    // node's burst spread through the shared queue among the other nodes', it was 299.)
    assert!(
        agent_txns < total as f64,
        "{agent_txns} txns for {total} starts: not grouped per node"
    );
    stop_hollow(hollow).await;
}
