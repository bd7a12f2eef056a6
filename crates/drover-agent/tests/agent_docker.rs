//! The agent end to end against a real etcd and the real Docker engine with
//! `drover/echo-server:latest` (built by `hack/build-images.sh`): assignments written as the
//! controller would, the agent run in-process, statuses observed in etcd.

mod support;

use std::time::Duration;

use drover_agent::config::DriverChoice;
use drover_api::instance::{Health, Phase};
use serde_json::json;
use support::*;

fn echo(extra: serde_json::Value) -> drover_api::task::TaskSpec {
    let mut base = json!({
        "image": IMAGE,
        "env": {"PORT": "7777"},
        "ports": [{"containerPort": 7777}],
        "terminationGracePeriodSeconds": 2
    });
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    spec(base)
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_task_runs_with_a_host_port_and_echoes() {
    let env = Env::start().await;
    let node = env.node("dk", DriverChoice::Docker).await;
    let id = id("default", "echo", 0);
    env.assign(&node.name, &id, echo(json!({}))).await;
    let st = env
        .wait_status(&id, LIMIT, "Running", |s| s.phase == Phase::Running)
        .await;
    assert_eq!(st.ports.len(), 1);
    assert_eq!(st.ports[0].container_port, 7777);
    assert!(st.started_at.is_some() && st.container_id.is_some());
    let port = st.ports[0].host_port;
    let (code, body) = poll(LIMIT, "echo answers", || async move {
        http(port, "POST", "/", r#"{"Msg":"hi"}"#).await.ok()
    })
    .await;
    assert_eq!((code, body.as_str()), (200, r#"{"Msg":"hi"}"#));
    node.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_health_check_restarts_max_restarts_times_then_fails() {
    let env = Env::start().await;
    let node = env.node("hc", DriverChoice::Docker).await;
    let id = id("default", "sick", 0);
    let check = json!({
        "healthCheck": {"http": {"path": "/healthfail", "port": 7777}, "periodSeconds": 1, "failureThreshold": 1},
        "maxRestarts": 2
    });
    env.assign(&node.name, &id, echo(check)).await;
    let st = env
        .wait_status(&id, LIMIT, "Failed after 2 restarts", |s| {
            s.phase == Phase::Failed
        })
        .await;
    assert_eq!(st.restart_count, 2, "{st:#?}");
    assert_eq!(st.reason.as_deref(), Some("Unhealthy"));
    assert_eq!(st.health, Health::Unhealthy);
    // Left stopped: nothing of this node runs any more.
    assert!(docker_ps(&node.name, false).is_empty());
    node.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_killed_from_outside_is_restarted_once() {
    let env = Env::start().await;
    let node = env.node("kl", DriverChoice::Docker).await;
    let id = id("default", "victim", 0);
    env.assign(&node.name, &id, echo(json!({}))).await;
    let st = env
        .wait_status(&id, LIMIT, "Running", |s| s.phase == Phase::Running)
        .await;
    assert_eq!(st.restart_count, 0);
    let container = st.container_id.clone().expect("container id");
    let out = std::process::Command::new("docker")
        .args(["kill", &container])
        .output()
        .expect("docker kill");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = env
        .wait_status(&id, LIMIT, "restarted", |s| {
            s.phase == Phase::Running && s.restart_count == 1
        })
        .await;
    assert_ne!(st.container_id.as_deref(), Some(container.as_str()));
    assert_eq!(st.exit_code, Some(137));
    node.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_is_replaced_by_one_that_adopts_its_containers() {
    let env = Env::start().await;
    let node = unique("ad");
    let _clean = DockerCleanup(node.clone());
    let state = tempfile::tempdir().expect("tempdir");
    let config = agent_config(&node, DriverChoice::Docker, &state);
    let agent = Running::start(env.store.clone(), env.keys.clone(), config.clone()).await;
    let ids: Vec<_> = (0..3).map(|i| id("default", "keep", i)).collect();
    for i in &ids {
        env.assign(&node, i, echo(json!({}))).await;
    }
    let mut before = Vec::new();
    for i in &ids {
        let st = env
            .wait_status(i, LIMIT, "Running", |s| s.phase == Phase::Running)
            .await;
        before.push(st.container_id.expect("container"));
    }
    // The in-process SIGKILL: no cleanup, containers keep running.
    agent.kill().await;
    assert_eq!(docker_ps(&node, false).len(), 3);
    // While no agent runs, the controller unassigns the third instance.
    env.unassign(&node, &ids[2]).await;

    let agent = Running::start(env.store.clone(), env.keys.clone(), config).await;
    // Adopted, not duplicated: the same containers, with the ports they had.
    for (i, c) in ids[..2].iter().zip(&before) {
        let st = env
            .wait_status(i, LIMIT, "Running", |s| s.phase == Phase::Running)
            .await;
        assert_eq!(st.container_id.as_ref(), Some(c));
        assert_eq!(st.ports.len(), 1);
    }
    // The adopted instance whose assignment is gone is stopped and removed.
    poll(LIMIT, "unassigned container removed", || {
        let node = node.clone();
        async move { (docker_ps(&node, true).len() == 2).then_some(()) }
    })
    .await;
    let mut running = docker_ps(&node, false);
    running.sort();
    let mut expected = before[..2].to_vec();
    expected.sort();
    assert_eq!(
        running, expected,
        "exactly one container per assigned instance"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_image_is_reported_as_image_not_found_within_seconds() {
    assert_fails_to_start(
        DriverChoice::Docker,
        spec(json!({"image": "drover/does-not-exist:never"})),
        "ImageNotFound",
        "drover/does-not-exist:never",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_logs_over_grpc_and_follow() {
    let env = Env::start().await;
    let node = env.node("lg", DriverChoice::Docker).await;
    let id = id("default", "talk", 0);
    env.assign(&node.name, &id, echo(json!({}))).await;
    let st = env
        .wait_status(&id, LIMIT, "Running", |s| s.phase == Phase::Running)
        .await;
    let port = st.ports[0].host_port;
    let addr = drover_agent::AgentEndpoint::plaintext(node.agent.handle.address().to_string());
    // The start-up line is there.
    let first = wait_agent_logs(&addr, &id, "startup line", |lines| {
        lines.iter().any(|l| l.contains("listening"))
    })
    .await;
    assert!(!first.is_empty());
    // Follow sees a line written after it started.
    let mut follow = within(
        LIMIT,
        "follow",
        drover_agent::logs_client(&addr, &id.to_string(), true, Some(1)),
    )
    .await
    .expect("follow stream");
    poll(LIMIT, "echo answers", || async move {
        http(port, "POST", "/", "{\"Msg\":\"later\"}").await.ok()
    })
    .await;
    follow_until(&mut follow, "followed line", |line| line.contains("POST")).await;
    let ping = drover_agent::grpc::ping(&addr).await.expect("ping");
    assert_eq!(ping.running, 1);
    assert_eq!(ping.state(), drover_proto::agent::v1::NodeState::Busy);
    node.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_revokes_the_lease_and_stops_instances_unless_keep_running() {
    let env = Env::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    for keep in [false, true] {
        let node = unique("sd");
        let _clean = DockerCleanup(node.clone());
        let mut config = agent_config(&node, DriverChoice::Docker, &state);
        config.keep_running_on_shutdown = keep;
        config.lease_ttl = Duration::from_secs(30);
        config.self_fence_margin = Some(Duration::from_secs(3));
        let agent = Running::start(env.store.clone(), env.keys.clone(), config).await;
        let id = id("default", "sd", 0);
        env.assign(&node, &id, echo(json!({}))).await;
        env.wait_status(&id, LIMIT, "Running", |s| s.phase == Phase::Running)
            .await;
        assert!(env
            .store
            .get_raw(&env.keys.node(&node))
            .await
            .expect("get")
            .is_some());
        agent.stop().await;
        let node_key = env.store.get_raw(&env.keys.node(&node)).await.expect("get");
        if keep {
            assert_eq!(
                docker_ps(&node, false).len(),
                1,
                "keep_running leaves it running"
            );
            assert!(
                node_key.is_some(),
                "keep_running leaves the lease for the next agent"
            );
        } else {
            assert!(
                node_key.is_none(),
                "the node key is gone at once (lease revoked)"
            );
            assert!(
                docker_ps(&node, true).is_empty(),
                "instances stopped and removed"
            );
        }
    }
}
