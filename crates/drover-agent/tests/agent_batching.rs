//! A burst of assignments to one node (the leader writes a node's placements in one
//! transaction) is confirmed and reported in a few grouped etcd requests, not two per
//! instance; counted by etcd itself.

mod support;

use std::time::Duration;

use drover_agent::config::DriverChoice;
use drover_api::instance::{Instance, Phase};
use serde_json::json;
use support::*;

/// etcd's own count of `Txn` requests it answered (confirm reads and status writes are txns).
const TXNS: &str = "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}";

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_starts_on_one_node_is_confirmed_and_reported_in_grouped_requests() {
    const BURST: u32 = 32;
    let env = Env::start().await;
    let node = env.node("burst", DriverChoice::Process).await;
    let before = etcd_metric(&env.etcd, TXNS).await.unwrap_or(0.0);
    let ids: Vec<_> = (0..BURST)
        .map(|slot| id("default", "burst", slot))
        .collect();
    let mut burst = drover_store::Txn::new();
    for id in &ids {
        let instance = Instance {
            id: id.clone(),
            namespace: id.namespace().to_string(),
            task: id.task().to_string(),
            slot: id.slot(),
            run: None,
            node: node.name.clone(),
            generation: 1,
            revision: 0,
            attempt: 1,
            spec: spec(json!({"command": ["/bin/sh", "-c", "sleep 600"]})),
            assigned_at: chrono::Utc::now(),
            stop: None,
        };
        burst = burst
            .put(env.keys.assignment(&node.name, id), &instance, None)
            .expect("encode");
    }
    env.store.commit(burst, None).await.expect("the burst");
    for id in &ids {
        let st = env
            .wait_status(id, LIMIT, "Running", |s| s.phase == Phase::Running)
            .await;
        assert_eq!(st.node, node.name);
        // The process driver's run id is its pid.
        let pid = st.container_id.expect("a run id");
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{id}: the process it reports runs"
        );
    }
    // Statuses settle (nothing more to write) before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = etcd_metric(&env.etcd, TXNS).await.expect("etcd metrics");
    let agent_txns = after - before - 1.0;
    eprintln!("{BURST} starts took {agent_txns} txns of the agent");
    // One at a time that is at least 2 per start: a confirm read and a status write.
    assert!(
        agent_txns < f64::from(BURST) * 1.5,
        "{agent_txns} txns for {BURST} starts: not grouped"
    );
    node.agent.stop().await;
}
