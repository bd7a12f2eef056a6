//! Hollow nodes against a real etcd: many simulated nodes in one process register, run their
//! assigned hollow instances and report statuses.

mod support;

use std::time::{Duration, Instant};

use drover_agent::{run_hollow, HollowConfig};
use drover_api::instance::{InstanceStatus, Phase};
use serde_json::json;
use support::*;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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
    let forever = spec(json!({"command": ["x"], "hollow": {}}));
    let mut ops = Vec::new();
    for n in 0..nodes {
        for s in 0..per_node {
            let id = id(
                "default",
                "sim",
                u32::try_from(n * per_node + s).expect("small"),
            );
            let node = format!("{base}-{n}");
            let instance = drover_api::instance::Instance {
                id: id.clone(),
                namespace: "default".into(),
                task: "sim".into(),
                slot: id.slot(),
                run: None,
                node: node.clone(),
                generation: 1,
                attempt: 1,
                spec: forever.clone(),
                assigned_at: chrono::Utc::now(),
                stop: None,
            };
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
    let shutdown = CancellationToken::new();
    let (ready_tx, mut ready) = watch::channel(0usize);
    let task = {
        let (store, keys, shutdown) = (env.store.clone(), env.keys.clone(), shutdown.clone());
        let config = HollowConfig::new(&base, 1);
        tokio::spawn(async move {
            let mut registry = prometheus_client::registry::Registry::default();
            run_hollow(store, keys, config, &mut registry, shutdown, Some(ready_tx)).await
        })
    };
    within(LIMIT, "registered", ready.wait_for(|n| *n == 1))
        .await
        .expect("ready");
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
    shutdown.cancel();
    within(LIMIT, "hollow shutdown", task)
        .await
        .expect("join")
        .expect("clean");
}
