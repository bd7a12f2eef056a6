//! The process driver against real processes: logs, follow, group stop, SIGKILL after the grace,
//! recovery from pid files, and clear start errors.

mod support;

use std::time::{Duration, Instant};

use drover_agent::driver::process::ProcessDriver;
use drover_agent::driver::{Driver, Error, TaskState};
use futures::StreamExt;
use serde_json::json;
use support::{assert_exited_with, log_text, poll, request, spec, unique, wait_log, within, LIMIT};

/// A driver under `dir` that, like `--allow-root-tasks`, runs processes as root: these tests
/// run as root and are about processes, not about whom they run as (see `run_as.rs`).
fn root_driver(dir: &tempfile::TempDir) -> ProcessDriver {
    ProcessDriver::new(dir.path())
        .expect("driver")
        .allow_root_tasks(true)
}

fn sh(script: &str) -> serde_json::Value {
    json!({ "command": ["sh", "-c", script] })
}

/// Live (non-zombie) members of process group `pgid`, read from `/proc`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
        })
        .collect()
}

#[tokio::test]
async fn logs_follow_and_group_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = root_driver(&dir);
    let node = unique("node");
    // The trailing `echo` keeps sh alive as the parent of `sleep`, so the group has two members.
    let req = request(
        &node,
        "proc",
        0,
        spec(sh("echo hello; sleep 1; echo second; sleep 30; echo never")),
    );
    let handle = within(LIMIT, "start", driver.start(&req))
        .await
        .expect("start");
    let pgid: u32 = handle.id.parse().expect("pid");

    wait_log(&driver, &handle, "hello").await;

    // Follow from the start: sees `hello`, then `second`, written about a second later.
    let mut follow = driver.logs(&handle, true, None);
    let mut seen = Vec::new();
    within(LIMIT, "follow sees the new line", async {
        while let Some(line) = follow.next().await {
            let line = line.expect("log line").line;
            seen.push(line.clone());
            if line == "second" {
                break;
            }
        }
    })
    .await;
    assert_eq!(seen, ["hello", "second"]);

    poll(LIMIT, "sleep forked", || async {
        (group_members(pgid).len() >= 2).then_some(())
    })
    .await;
    let began = Instant::now();
    within(LIMIT, "stop", driver.stop(&handle, Duration::from_secs(10)))
        .await
        .expect("stop");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "SIGTERM should have ended it at once"
    );
    assert!(group_members(pgid).is_empty(), "the whole group is gone");
    let state = within(LIMIT, "wait", driver.wait(&handle))
        .await
        .expect("wait");
    assert!(
        matches!(
            state,
            TaskState::Exited {
                code: Some(143),
                finished_at: Some(_)
            }
        ),
        "{state:?}"
    );

    // The follow stream ends once the process is gone.
    within(LIMIT, "follow ends", async {
        while follow.next().await.is_some() {}
    })
    .await;

    driver.destroy(&handle).await.expect("destroy");
    assert!(!driver.log_path(&req.meta.instance).exists());
    assert_eq!(
        driver.inspect(&handle).await.expect("inspect"),
        TaskState::NotFound
    );
}

#[tokio::test]
async fn sigterm_ignored_means_sigkill_after_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = root_driver(&dir);
    let req = request(
        &unique("node"),
        "proc",
        0,
        spec(sh("trap '' TERM; echo ready; sleep 30; echo never")),
    );
    let handle = within(LIMIT, "start", driver.start(&req))
        .await
        .expect("start");
    let pgid: u32 = handle.id.parse().expect("pid");
    wait_log(&driver, &handle, "ready").await;

    let grace = Duration::from_millis(1500);
    let began = Instant::now();
    within(LIMIT, "stop", driver.stop(&handle, grace))
        .await
        .expect("stop");
    let took = began.elapsed();
    assert!(
        took >= grace,
        "must wait the grace period first, took {took:?}"
    );
    assert!(took < grace + Duration::from_secs(5), "took {took:?}");
    assert!(group_members(pgid).is_empty());
    let state = within(LIMIT, "wait", driver.wait(&handle))
        .await
        .expect("wait");
    assert_exited_with(&state, 137);
    driver.destroy(&handle).await.expect("destroy");
}

#[tokio::test]
async fn recover_adopts_from_pid_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = unique("node");
    let req = request(&node, "proc", 1, spec(sh("sleep 30; echo never")));
    let handle = {
        let first = root_driver(&dir);
        within(LIMIT, "start", first.start(&req))
            .await
            .expect("start")
    };
    // A new driver on the same state dir, as after an agent restart.
    let second = root_driver(&dir);
    assert!(second
        .recover("some-other-node")
        .await
        .expect("recover")
        .is_empty());
    let found = within(LIMIT, "recover", second.recover(&node))
        .await
        .expect("recover");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].meta, req.meta);
    assert_eq!(found[0].handle, handle);
    assert_eq!(found[0].state, TaskState::Running);

    // Starting the same instance again adopts instead of duplicating.
    let again = within(LIMIT, "start again", second.start(&req))
        .await
        .expect("start again");
    assert_eq!(again, handle);

    within(LIMIT, "stop", second.stop(&handle, Duration::from_secs(5)))
        .await
        .expect("stop");
    // Not our child any more: the exit code is unknown.
    let state = within(LIMIT, "wait", second.wait(&handle))
        .await
        .expect("wait");
    assert_eq!(
        state,
        TaskState::Exited {
            code: None,
            finished_at: None
        }
    );
    // Dead processes are not recovered, and their pid files are cleaned up.
    assert!(second.recover(&node).await.expect("recover").is_empty());
}

#[tokio::test]
async fn exit_code_env_and_working_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = root_driver(&dir);
    let workdir = tempfile::tempdir().expect("workdir");
    let mut s = spec(sh(
        "echo \"$GREETING $DROVER_TASK\"; pwd; echo oops >&2; exit 3",
    ));
    s.env.insert("GREETING".into(), "hi".into());
    s.working_dir = Some(workdir.path().display().to_string());
    let req = request(&unique("node"), "proc", 2, s);
    let handle = within(LIMIT, "start", driver.start(&req))
        .await
        .expect("start");
    let state = within(LIMIT, "wait", driver.wait(&handle))
        .await
        .expect("wait");
    assert!(
        matches!(state, TaskState::Exited { code: Some(3), .. }),
        "{state:?}"
    );
    let text = log_text(&driver, &handle).await;
    assert!(text.contains("hi t"), "{text}");
    assert!(
        text.contains(&workdir.path().display().to_string()),
        "{text}"
    );
    assert!(text.contains("oops"), "stderr goes to the same log: {text}");
    let tail: Vec<_> = driver.logs(&handle, false, Some(1)).collect().await;
    assert_eq!(tail.len(), 1);
    // Stopping something that already exited is fine.
    driver
        .stop(&handle, Duration::from_secs(1))
        .await
        .expect("stop");
}

#[tokio::test]
async fn missing_binary_is_a_start_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = root_driver(&dir);
    let req = request(
        &unique("node"),
        "proc",
        3,
        spec(json!({"command": ["drover-no-such-binary", "x"]})),
    );
    let err = within(LIMIT, "start", driver.start(&req))
        .await
        .expect_err("must fail");
    assert!(matches!(err, Error::StartError { .. }), "{err:?}");
    assert_eq!(err.reason(), "StartError");
    assert!(err.to_string().contains("drover-no-such-binary"), "{err}");

    let req = request(
        &unique("node"),
        "proc",
        4,
        spec(json!({"command": ["/nonexistent/bin/tool"]})),
    );
    let err = driver.start(&req).await.expect_err("must fail");
    assert!(err.to_string().contains("/nonexistent/bin/tool"), "{err}");

    let fp = driver.fingerprint().await;
    assert!(fp.healthy);
}

#[tokio::test]
async fn a_new_attempt_replaces_a_leftover_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = root_driver(&dir);
    let mut req = request(&unique("node"), "proc", 5, spec(sh("sleep 30; echo never")));
    let old = within(LIMIT, "start", driver.start(&req))
        .await
        .expect("start");
    req.meta.attempt = 1;
    let new = within(LIMIT, "start attempt 1", driver.start(&req))
        .await
        .expect("start attempt 1");
    assert_ne!(old.id, new.id);
    let old_pgid: u32 = old.id.parse().expect("pid");
    assert!(group_members(old_pgid).is_empty(), "the old copy is gone");
    assert_eq!(
        driver.inspect(&new).await.expect("inspect"),
        TaskState::Running
    );
    driver.destroy(&new).await.expect("destroy");
}

/// A stopped child must be reaped before `stop` returns: a zombie left for the reaper task to
/// collect later reads as still `Running` to `inspect` and keeps its `/proc` entry, so callers
/// that check "the process is gone" right after a stop raced the reaper (a flaky CI run).
#[tokio::test]
async fn once_stop_returns_its_own_child_is_reaped_and_its_exit_known() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = root_driver(&dir);
    let node = unique("node");
    // Repeated because the race is one of scheduling: a single run can pass by luck.
    for ordinal in 0..20 {
        let req = request(&node, "reaped", ordinal, spec(sh("sleep 30; echo never")));
        let handle = within(LIMIT, "start", driver.start(&req))
            .await
            .expect("start");
        let pid: u32 = handle.id.parse().expect("pid");
        within(LIMIT, "stop", driver.stop(&handle, Duration::ZERO))
            .await
            .expect("stop");
        let state = driver.inspect(&handle).await.expect("inspect");
        assert!(
            matches!(state, TaskState::Exited { .. }),
            "run {ordinal}: stopped but {state:?}"
        );
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "run {ordinal}: pid {pid} is still in /proc (an unreaped zombie)"
        );
        driver.destroy(&handle).await.expect("destroy");
    }
}
