//! The agent with the process driver against a real etcd: start errors, logs over gRPC,
//! fenced (stale) status writes, and self-fencing through a proxy that is cut.

mod support;

use std::time::Duration;

use drover_agent::config::DriverChoice;
use drover_agent::local::StopReason;
use drover_agent::status::{self, Written};
use drover_api::instance::Phase;
use drover_testkit::TcpProxy;
use futures::StreamExt;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_binary_is_a_start_error() {
    let env = Env::start().await;
    let node = unique("se");
    let state = tempfile::tempdir().expect("tempdir");
    let agent = Running::start(
        env.store.clone(),
        env.keys.clone(),
        agent_config(&node, DriverChoice::Process, &state),
    )
    .await;
    let id = id("default", "nobin", 0);
    env.assign(
        &node,
        &id,
        spec(json!({"command": ["/no/such/binary-drover"]})),
    )
    .await;
    let st = env
        .wait_status(&id, Duration::from_secs(10), "StartError", |s| {
            s.phase == Phase::Failed
        })
        .await;
    assert_eq!(st.reason.as_deref(), Some("StartError"));
    assert!(st
        .message
        .unwrap_or_default()
        .contains("/no/such/binary-drover"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_exits_zero_succeeds_and_a_crash_loop_fails() {
    let env = Env::start().await;
    let node = unique("jb");
    let state = tempfile::tempdir().expect("tempdir");
    let agent = Running::start(
        env.store.clone(),
        env.keys.clone(),
        agent_config(&node, DriverChoice::Process, &state),
    )
    .await;
    let ok = id("default", "ok", 0);
    env.assign(
        &node,
        &ok,
        spec(json!({"command": ["/bin/true"], "restartPolicy": "OnFailure"})),
    )
    .await;
    let crash = id("default", "crash", 0);
    env.assign(
        &node,
        &crash,
        spec(json!({"command": ["/bin/sh", "-c", "exit 3"], "maxRestarts": 2})),
    )
    .await;
    let st = env
        .wait_status(&ok, LIMIT, "Succeeded", |s| s.phase.is_terminal())
        .await;
    assert_eq!(
        (st.phase, st.exit_code, st.restart_count),
        (Phase::Succeeded, Some(0), 0)
    );
    let st = env
        .wait_status(&crash, LIMIT, "Failed", |s| s.phase.is_terminal())
        .await;
    assert_eq!(st.phase, Phase::Failed);
    assert_eq!(st.reason.as_deref(), Some("CrashLoopBackOff"));
    assert_eq!((st.exit_code, st.restart_count), (Some(3), 2));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn process_logs_over_grpc_and_follow() {
    let env = Env::start().await;
    let node = unique("pl");
    let state = tempfile::tempdir().expect("tempdir");
    let agent = Running::start(
        env.store.clone(),
        env.keys.clone(),
        agent_config(&node, DriverChoice::Process, &state),
    )
    .await;
    let id = id("default", "ticker", 0);
    let script = "echo hello; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done";
    env.assign(
        &node,
        &id,
        spec(json!({"command": ["/bin/sh", "-c", script], "terminationGracePeriodSeconds": 1})),
    )
    .await;
    env.wait_status(&id, LIMIT, "Running", |s| s.phase == Phase::Running)
        .await;
    let addr = agent.handle.address().to_string();
    let lines = poll(LIMIT, "hello line", || {
        let (addr, id) = (addr.clone(), id.to_string());
        async move {
            let lines: Vec<String> = drover_agent::logs_client(&addr, &id, false, None)
                .await
                .ok()?
                .filter_map(|l| async move { l.ok() })
                .collect()
                .await;
            (lines.first().map(String::as_str) == Some("hello")).then_some(lines)
        }
    })
    .await;
    let last_seen: u32 = lines
        .iter()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .max()
        .unwrap_or(0);
    let mut follow = within(
        LIMIT,
        "follow",
        drover_agent::logs_client(&addr, &id.to_string(), true, Some(1)),
    )
    .await
    .expect("follow");
    within(LIMIT, "a newer line while following", async {
        while let Some(line) = follow.next().await {
            let n: u32 = line
                .expect("line")
                .strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if n > last_seen + 2 {
                return;
            }
        }
        panic!("follow ended");
    })
    .await;
    let missing = drover_agent::logs_client(&addr, "default.nope.0", false, None).await;
    assert!(missing.is_err(), "unknown instance is NotFound");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_status_write_is_rejected() {
    let env = Env::start().await;
    let id = id("default", "moved", 0);
    let spec = spec(json!({"command": ["/bin/true"]}));
    let first = env.assign("old-node", &id, spec.clone()).await;
    let key = env.keys.assignment("old-node", &id);
    let mut st = drover_api::instance::InstanceStatus {
        id: id.clone(),
        node: "old-node".into(),
        phase: Phase::Running,
        reason: None,
        message: None,
        container_id: None,
        restart_count: 0,
        exit_code: None,
        health: Default::default(),
        ports: Vec::new(),
        generation: 1,
        attempt: 1,
        started_at: None,
        finished_at: None,
        updated_at: chrono::Utc::now(),
    };
    let w = status::write(&env.store, &env.keys, &key, first, &st)
        .await
        .expect("write");
    assert!(matches!(w, Written::Ok { .. }));
    // The controller reassigns: delete (with the status) and re-create under the same key.
    env.unassign("old-node", &id).await;
    let second = env.assign("old-node", &id, spec).await;
    assert!(second > first);
    st.phase = Phase::Failed;
    let w = status::write(&env.store, &env.keys, &key, first, &st)
        .await
        .expect("write");
    assert_eq!(
        w,
        Written::Stale,
        "a write fenced on the old create revision is rejected"
    );
    assert!(env.status(&id).await.is_none(), "nothing was written");
    // And with the assignment simply gone.
    env.unassign("old-node", &id).await;
    assert_eq!(
        status::write(&env.store, &env.keys, &key, second, &st)
            .await
            .expect("write"),
        Written::Stale
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn self_fencing_stops_instances_before_the_lease_can_expire_then_re_registers() {
    let env = Env::start().await;
    let proxy = within(LIMIT, "proxy", TcpProxy::start(env.etcd.client_addr())).await;
    let agent_store = connect(vec![proxy.url()]).await;
    let node = unique("fn");
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = agent_config(&node, DriverChoice::Process, &state);
    config.lease_ttl = Duration::from_secs(4);
    let agent = Running::start(agent_store, env.keys.clone(), config).await;
    let old_lease = agent.handle.lease().expect("registered");
    let id = id("default", "stubborn", 0);
    // Ignores SIGTERM and has a grace longer than the time left: fencing must clip it and SIGKILL
    // in time (an ordinary stop would wait the full 8 s).
    let script = "trap '' TERM; while true; do sleep 0.1; done";
    env.assign(
        &node,
        &id,
        spec(json!({"command": ["/bin/sh", "-c", script], "terminationGracePeriodSeconds": 8})),
    )
    .await;
    let st = env
        .wait_status(&id, LIMIT, "Running", |s| s.phase == Phase::Running)
        .await;
    let pid: i32 = st.container_id.expect("pid").parse().expect("numeric pid");

    proxy.cut();
    let rec = poll(Duration::from_secs(15), "fence stop record", || {
        let recs = agent.handle.stop_records();
        async move { recs.into_iter().find(|r| r.reason == StopReason::Fenced) }
    })
    .await;
    // The lease still exists on the server when the instance is already gone...
    let ttl_left = env.store.lease_ttl(old_lease).await.expect("lease ttl");
    assert!(
        ttl_left.is_some(),
        "instance stopped before the lease expired on the server"
    );
    // ...and the recorded times say the same.
    let expiry = rec.lease_expiry_earliest.expect("expiry recorded");
    let deadline = rec.deadline.expect("deadline recorded");
    assert!(rec.confirmed, "{rec:?}");
    assert!(
        rec.stopped_at <= deadline + chrono::Duration::milliseconds(50),
        "{rec:?}"
    );
    assert!(rec.stopped_at < expiry, "{rec:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process group is gone"
    );
    // The record is also in the state dir, for other processes.
    let file = state.path().join(&node).join("stops.jsonl");
    assert!(drover_agent::local::Records::read_file(&file)
        .expect("stops.jsonl")
        .iter()
        .any(|r| r.reason == StopReason::Fenced));

    proxy.restore();
    let new_lease = poll(LIMIT, "re-registered", || {
        let lease = agent.handle.lease();
        async move { lease.filter(|l| *l != old_lease) }
    })
    .await;
    assert_ne!(new_lease, old_lease);
    let node_key = env
        .store
        .get_raw(&env.keys.node(&node))
        .await
        .expect("get")
        .expect("node key");
    assert_eq!(node_key.lease, Some(new_lease));
    // Still assigned: converges by starting it again.
    env.wait_status(&id, LIMIT, "Running again", |s| {
        s.phase == Phase::Running && s.container_id.as_deref() != Some(&pid.to_string())
    })
    .await;
    agent.stop().await;
}
