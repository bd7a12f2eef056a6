//! The hollow driver under paused tokio time: scripted exits, start errors, stop, logs, and many
//! instances at once.

mod support;

use std::sync::Arc;
use std::time::Duration;

use drover_agent::driver::hollow::{HollowDriver, STOPPED_EXIT_CODE};
use drover_agent::driver::{Driver, DriverKind, Error, TaskState};
use futures::StreamExt;
use serde_json::json;
use support::{assert_exited_with, request, spec, within};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn exits_with_the_scripted_code_after_run_seconds() {
    let driver = HollowDriver::new();
    let req = request(
        "n1",
        "hollow",
        0,
        spec(json!({"image": "x", "hollow": {"runSeconds": 90.5, "exitCode": 3}})),
    );
    let began = Instant::now();
    let handle = driver.start(&req).await.expect("start");
    assert_eq!(driver.inspect(&handle), TaskState::Running);
    let state = within(LIMIT, "wait", driver.wait(&handle)).await;
    assert!(
        matches!(
            state,
            TaskState::Exited {
                code: Some(3),
                finished_at: Some(_)
            }
        ),
        "{state:?}"
    );
    assert_eq!(began.elapsed(), Duration::from_millis(90_500));
    // Stopping after the exit changes nothing.
    driver.stop(&handle, Duration::from_secs(30));
    assert_eq!(driver.inspect(&handle), state);
    let lines: Vec<_> = driver.logs(&handle, false, None).collect().await;
    assert_eq!(lines.len(), 2);
    assert!(lines[1]
        .as_ref()
        .expect("line")
        .line
        .contains("code Some(3)"));
}

#[tokio::test(start_paused = true)]
async fn start_error_is_honoured() {
    let driver = HollowDriver::new();
    let req = request(
        "n1",
        "hollow",
        1,
        spec(json!({"command": ["x"], "hollow": {"startError": "boom"}})),
    );
    let err = driver.start(&req).await.expect_err("scripted failure");
    assert!(
        matches!(&err, Error::StartError { message } if message == "boom"),
        "{err:?}"
    );
    assert_eq!(err.reason(), "StartError");
    assert!(driver.is_empty());
}

#[tokio::test(start_paused = true)]
async fn runs_forever_until_stopped_and_wait_wakes() {
    let driver: Arc<dyn Driver> = Arc::new(HollowDriver::new());
    assert_eq!(driver.kind(), DriverKind::Hollow);
    assert!(driver.fingerprint().await.healthy);
    let req = request("n1", "hollow", 2, spec(json!({"image": "x"})));
    let handle = driver.start(&req).await.expect("start");
    // Idempotent: a second start returns the running one.
    assert_eq!(driver.start(&req).await.expect("again"), handle);

    let waiter = {
        let (driver, handle) = (Arc::clone(&driver), handle.clone());
        tokio::spawn(async move { driver.wait(&handle).await })
    };
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    assert_eq!(
        driver.inspect(&handle).await.expect("inspect"),
        TaskState::Running
    );
    let mut follow = driver.logs(&handle, true, None);
    driver
        .stop(&handle, Duration::from_secs(30))
        .await
        .expect("stop");
    let state = within(LIMIT, "waiter", waiter)
        .await
        .expect("join")
        .expect("wait");
    assert_exited_with(&state, STOPPED_EXIT_CODE);
    let mut lines = Vec::new();
    while let Some(line) = within(LIMIT, "follow", follow.next()).await {
        lines.push(line.expect("line").line);
    }
    assert_eq!(lines.len(), 2, "{lines:?}");

    assert!(
        driver.recover("n1").await.expect("recover").is_empty(),
        "nothing survives"
    );
    driver.destroy(&handle).await.expect("destroy");
    assert_eq!(
        driver.inspect(&handle).await.expect("inspect"),
        TaskState::NotFound
    );
    assert_eq!(
        driver.wait(&handle).await.expect("wait"),
        TaskState::NotFound
    );
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_instances_cost_no_tasks() {
    let driver = HollowDriver::new();
    let mut handles = Vec::new();
    for slot in 0..10_000u32 {
        let run = if slot % 2 == 0 {
            json!(10.0)
        } else {
            json!(null)
        };
        let req = request(
            "n1",
            "scale",
            slot,
            spec(json!({"image": "x", "hollow": {"runSeconds": run}})),
        );
        handles.push(driver.start(&req).await.expect("start"));
    }
    assert_eq!(driver.len(), 10_000);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let running = handles
        .iter()
        .filter(|h| driver.inspect(h).is_running())
        .count();
    assert_eq!(running, 5_000);
}
