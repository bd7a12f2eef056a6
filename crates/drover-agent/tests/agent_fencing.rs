//! Promise 3 at the edges of registration, with the process driver against a real etcd: an
//! agent cut off past its TTL does not restart what was moved away meanwhile, an agent that
//! cannot register fences what it adopted, and a node name is held by one
//! agent at a time (the same agent restarting may take it back).

mod support;

use std::time::Duration;

use drover_agent::config::DriverChoice;
use drover_agent::heartbeat::State;
use drover_agent::local::StopReason;
use drover_api::instance::Phase;
use drover_testkit::TcpProxy;
use serde_json::json;
use support::*;

fn sleeper() -> drover_api::task::TaskSpec {
    spec(json!({"command": ["/bin/sh", "-c", "sleep 600"], "terminationGracePeriodSeconds": 1}))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_re_registered_agent_does_not_restart_an_instance_removed_while_it_was_cut_off() {
    let env = Env::start().await;
    let proxy = within(LIMIT, "proxy", TcpProxy::start(env.etcd.client_addr())).await;
    let agent_store = connect(vec![proxy.url()]).await;
    let node = unique("rr");
    let state = tempfile::tempdir().expect("tempdir");
    let config = agent_config(&node, DriverChoice::Process, &state);
    let agent = Running::start(agent_store, env.keys.clone(), config).await;
    let old_lease = agent.handle.lease().expect("registered");
    let moved = id("default", "moved", 0);
    env.assign(&node, &moved, sleeper()).await;
    env.wait_status(&moved, LIMIT, "Running", |s| s.phase == Phase::Running)
        .await;

    // Cut off past the TTL: the agent fences, the lease expires, and the leader (this test)
    // removes the assignment to place the instance elsewhere.
    proxy.cut();
    wait_lease_gone(&env.store, old_lease, Duration::from_secs(20)).await;
    env.unassign(&node, &moved).await;
    proxy.restore();
    wait_new_lease(&agent.handle, Some(old_lease)).await;

    // Assigned after the delete: once it runs, the agent's watch has delivered the delete too.
    let canary = id("default", "canary", 0);
    env.assign(&node, &canary, sleeper()).await;
    env.wait_status(&canary, LIMIT, "canary Running", |s| {
        s.phase == Phase::Running
    })
    .await;

    // The only stop of the moved instance is the fence: it was never started again (a stale
    // start would show as a second stop, when the delete arrived or the status write failed).
    let records = agent.handle.stop_records();
    let stops: Vec<_> = records.iter().filter(|r| r.instance == moved).collect();
    assert_eq!(stops.len(), 1, "{records:#?}");
    assert_eq!(stops[0].reason, StopReason::Fenced);
    assert!(env.status(&moved).await.is_none(), "no status was written");
    assert_eq!(agent.handle.running(), 1, "only the canary runs");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_cannot_register_fences_what_it_adopted_within_the_ttl() {
    let env = Env::start().await;
    let proxy = within(LIMIT, "proxy", TcpProxy::start(env.etcd.client_addr())).await;
    let agent_store = connect(vec![proxy.url()]).await;
    let node = unique("ad");
    let state = tempfile::tempdir().expect("tempdir");
    let config = agent_config(&node, DriverChoice::Process, &state);
    let (ttl, margin) = (config.lease_ttl, config.fence_margin());
    let first = Running::start(agent_store.clone(), env.keys.clone(), config.clone()).await;
    let id = id("default", "adopted", 0);
    // Ignores SIGTERM, with a grace longer than the TTL: only a clipped grace and SIGKILL
    // end it in time.
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
    let pid = st.container_id.expect("pid");
    // The agent dies (its instance keeps running), and comes back while etcd is unreachable.
    first.kill().await;
    proxy.cut();
    let began = chrono::Utc::now();
    let second = Running::spawn(agent_store, env.keys.clone(), config).await;
    // The agent's own start lies between `began` and `spawned`.
    let spawned = chrono::Utc::now();
    let rec = poll(ttl * 3, "a fence stop of the adopted instance", || {
        let recs = second.handle.stop_records();
        let id = id.clone();
        async move {
            recs.into_iter()
                .find(|r| r.instance == id && r.reason == StopReason::Fenced)
        }
    })
    .await;
    let window = chrono::Duration::from_std(ttl - margin).expect("duration");
    let deadline = rec.deadline.expect("deadline");
    let jitter = chrono::Duration::milliseconds(50);
    assert!(rec.confirmed, "{rec:?}");
    assert!(
        began + window - jitter <= deadline && deadline <= spawned + window + jitter,
        "the deadline is the agent's start + TTL - margin: {rec:?}"
    );
    assert!(
        rec.stopped_at <= deadline + jitter,
        "stopped by the deadline: {rec:?}"
    );
    // Killed means gone or a zombie: the adopted process's parent (the killed first agent)
    // is gone, and whoever inherits it reaps it in its own time.
    let gone = || !pid.parse().is_ok_and(drover_testkit::process_alive);
    poll(
        Duration::from_secs(2),
        "the adopted process is gone",
        || async { gone().then_some(()) },
    )
    .await;
    assert_eq!(second.handle.lease(), None, "never registered");

    // Once etcd answers, the agent registers and runs the instance again.
    proxy.restore();
    wait_new_lease(&second.handle, None).await;
    env.wait_status(&id, LIMIT, "Running again", |s| {
        s.phase == Phase::Running && s.container_id.as_deref() != Some(&pid)
    })
    .await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_agent_with_the_same_node_name_is_refused_while_the_first_runs() {
    let env = Env::start().await;
    let first = env.node("dup", DriverChoice::Process).await;
    let lease = first.agent.handle.lease().expect("registered");
    let state = tempfile::tempdir().expect("tempdir");
    let config = agent_config(&first.name, DriverChoice::Process, &state);
    let second = Running::spawn(env.store.clone(), env.keys.clone(), config).await;
    poll(LIMIT, "the second agent is refused", || {
        let refused = second.handle.state() == State::Refused(lease);
        async move { refused.then_some(()) }
    })
    .await;
    let key = env.keys.node(&first.name);
    let bound = env
        .store
        .get_raw(&key)
        .await
        .expect("get")
        .expect("node key");
    assert_eq!(
        bound.lease,
        Some(lease),
        "the node key stays with the first agent"
    );
    assert_eq!(first.agent.handle.lease(), Some(lease));
    assert!(!second.handle.is_ready());

    // Once the first is gone (its lease revoked at shutdown), the second takes the name.
    first.agent.stop().await;
    let taken = wait_new_lease(&second.handle, Some(lease)).await;
    let bound = env
        .store
        .get_raw(&key)
        .await
        .expect("get")
        .expect("node key");
    assert_eq!(bound.lease, Some(taken));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_agent_restarted_within_the_ttl_takes_its_node_back() {
    let env = Env::start().await;
    let node = env.node("again", DriverChoice::Process).await;
    let old = node.agent.handle.lease().expect("registered");
    // SIGKILL: the old lease lives on for up to a TTL.
    node.agent.kill().await;
    let config = agent_config(&node.name, DriverChoice::Process, &node.state);
    let again = Running::start(env.store.clone(), env.keys.clone(), config).await;
    let new = again.handle.lease().expect("registered");
    assert_ne!(new, old);
    assert!(
        matches!(env.store.lease_ttl(old).await, Ok(Some(_))),
        "registered while the previous lease was still alive"
    );
    let bound = env
        .store
        .get_raw(&env.keys.node(&node.name))
        .await
        .expect("get")
        .expect("node key");
    assert_eq!(bound.lease, Some(new));
    again.stop().await;
}
