//! The docker driver against the real Docker engine and the `drover/echo-server:latest` test
//! image (built by `hack/build-images.sh`). Skipped, with a notice, only where no daemon answers.

mod support;

use std::time::{Duration, Instant};

use drover_agent::driver::docker::DockerDriver;
use drover_agent::driver::{Driver, Error, TaskState};
use drover_agent::ports::PortAllocator;
use futures::StreamExt;
use serde_json::json;
use support::{
    assert_exited_with, bind, http, poll, request, spec, unique, wait_log, within, DockerCleanup,
    IMAGE, LIMIT,
};

/// The driver, or `None` (with a printed notice) when no Docker daemon answers here.
async fn docker() -> Option<DockerDriver> {
    match tokio::time::timeout(Duration::from_secs(15), DockerDriver::connect()).await {
        Ok(Ok(d)) => Some(d.with_host_ip("127.0.0.1")),
        Ok(Err(Error::DaemonUnavailable { message })) => {
            eprintln!("SKIPPED: no Docker daemon answers ({message})");
            None
        }
        Ok(Err(e)) => panic!("connecting to docker: {e}"),
        Err(_) => {
            eprintln!("SKIPPED: the Docker daemon does not answer");
            None
        }
    }
}

fn echo_spec() -> drover_api::task::TaskSpec {
    spec(json!({
        "image": IMAGE,
        "env": {"PORT": "7777"},
        "ports": [{"containerPort": 7777}],
        "resources": {"cpu": "250m", "memory": "64Mi"}
    }))
}

#[tokio::test]
async fn echo_server_round_trip() {
    let Some(driver) = docker().await else { return };
    let fp = driver.fingerprint().await;
    assert!(fp.healthy, "{fp:?}");
    let node = unique("dtest");
    let _cleanup = DockerCleanup(node.clone());
    let ports = PortAllocator::default();
    let mut req = request(&node, "docker", 0, echo_spec());
    let host_port = ports.allocate(&req.meta.instance, 1).expect("port")[0];
    req.ports = vec![bind(7777, host_port)];

    let handle = within(LIMIT, "start", driver.start(&req))
        .await
        .expect("start");
    assert_eq!(
        driver.inspect(&handle).await.expect("inspect"),
        TaskState::Running
    );

    let payload = r#"{"hello":"drover"}"#;
    let (status, body) = poll(LIMIT, "echo answers on the host port", || async {
        http(host_port, "POST", "/", payload).await.ok()
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, payload);
    let (status, _) = within(LIMIT, "health", http(host_port, "GET", "/health", ""))
        .await
        .expect("health");
    assert_eq!(status, 200);

    // Follow with tail 0: whatever it yields was logged after it attached. The stream is lazy,
    // so a task drives it while we keep making requests until one shows up.
    let mut follow = driver.logs(&handle, true, Some(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(line) = follow.next().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    within(LIMIT, "follow sees a new request", async {
        loop {
            let _ = http(host_port, "GET", "/health", "").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(line) = rx.try_recv() {
                if line.expect("log line").line.contains("GET /health") {
                    return;
                }
            }
        }
    })
    .await;
    reader.abort();

    wait_log(&driver, &handle, "POST /").await;
    let tail: Vec<_> = within(
        LIMIT,
        "tail",
        driver.logs(&handle, false, Some(1)).collect(),
    )
    .await;
    assert_eq!(tail.len(), 1, "{tail:?}");

    let grace = Duration::from_secs(10);
    let began = Instant::now();
    within(LIMIT, "stop", driver.stop(&handle, grace))
        .await
        .expect("stop");
    assert!(
        began.elapsed() < grace,
        "SIGTERM through docker-init should end it before the grace"
    );
    let state = driver.inspect(&handle).await.expect("inspect");
    assert!(
        matches!(
            state,
            TaskState::Exited {
                code: Some(_),
                finished_at: Some(_)
            }
        ),
        "{state:?}"
    );

    within(LIMIT, "destroy", driver.destroy(&handle))
        .await
        .expect("destroy");
    assert_eq!(
        driver.inspect(&handle).await.expect("inspect"),
        TaskState::NotFound
    );
    ports.release(&req.meta.instance);
}

#[tokio::test]
async fn missing_image_fails_fast() {
    let Some(driver) = docker().await else { return };
    let node = unique("dtest");
    let _cleanup = DockerCleanup(node.clone());
    let req = request(
        &node,
        "docker",
        1,
        spec(json!({"image": "drover/does-not-exist:never"})),
    );
    let began = Instant::now();
    let err = within(Duration::from_secs(10), "start", driver.start(&req))
        .await
        .expect_err("no image");
    assert!(
        matches!(&err, Error::ImageNotFound { image } if image == "drover/does-not-exist:never"),
        "{err:?}"
    );
    assert_eq!(err.reason(), "ImageNotFound");
    assert!(began.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn recover_finds_labelled_containers_after_restart() {
    let Some(driver) = docker().await else { return };
    let node = unique("dtest");
    let _cleanup = DockerCleanup(node.clone());
    let req = request(&node, "docker", 2, echo_spec());
    let handle = within(LIMIT, "start", driver.start(&req))
        .await
        .expect("start");
    drop(driver);

    // A new driver, as after an agent restart.
    let Some(driver) = docker().await else { return };
    let other = driver
        .recover(&unique("dtest"))
        .await
        .expect("recover other node");
    assert!(other.is_empty(), "{other:?}");
    let found = within(LIMIT, "recover", driver.recover(&node))
        .await
        .expect("recover");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].meta, req.meta);
    assert_eq!(found[0].handle.id, handle.id);
    assert_eq!(found[0].state, TaskState::Running);
    // Starting the same attempt again adopts the running container instead of duplicating it.
    let again = within(LIMIT, "start again", driver.start(&req))
        .await
        .expect("start again");
    assert_eq!(again.id, handle.id);

    within(LIMIT, "destroy", driver.destroy(&handle))
        .await
        .expect("destroy");
    assert!(driver.recover(&node).await.expect("recover").is_empty());
}

#[tokio::test]
async fn killed_from_outside_reports_exited() {
    let Some(driver) = docker().await else { return };
    let node = unique("dtest");
    let _cleanup = DockerCleanup(node.clone());
    let req = request(&node, "docker", 3, echo_spec());
    let handle = within(LIMIT, "start", driver.start(&req))
        .await
        .expect("start");
    let waiter = {
        let (driver, handle) = (driver.clone(), handle.clone());
        tokio::spawn(async move { driver.wait(&handle).await })
    };
    let out = within(
        LIMIT,
        "docker kill",
        tokio::process::Command::new("docker")
            .args(["kill", &handle.id])
            .output(),
    )
    .await
    .expect("docker kill runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = within(LIMIT, "wait", waiter)
        .await
        .expect("join")
        .expect("wait");
    assert_exited_with(&state, 137);
    assert_eq!(driver.inspect(&handle).await.expect("inspect"), state);
    // Stopping something already dead is fine.
    driver
        .stop(&handle, Duration::from_secs(1))
        .await
        .expect("stop");
    driver.destroy(&handle).await.expect("destroy");
}

#[tokio::test]
async fn a_dyn_driver_runs_a_container() {
    let Some(driver) = docker().await else { return };
    let driver: std::sync::Arc<dyn Driver> = std::sync::Arc::new(driver);
    let node = unique("dtest");
    let _cleanup = DockerCleanup(node.clone());
    // No command override: the image's entrypoint runs; an immediate exit code comes back.
    let mut s = echo_spec();
    s.env.insert("PORT".into(), "not-a-port".into());
    let handle = within(
        LIMIT,
        "start",
        driver.start(&request(&node, "docker", 4, s)),
    )
    .await
    .expect("start");
    let state = within(LIMIT, "wait", driver.wait(&handle))
        .await
        .expect("wait");
    assert!(
        matches!(state, TaskState::Exited { code: Some(c), .. } if c != 0),
        "{state:?}"
    );
    driver.destroy(&handle).await.expect("destroy");
}
