//! Whom the process driver runs a process as, and with what: `spec.user`/`spec.group` on a
//! real child (read back from `/proc/PID/status`), the refusal of root on a root agent, a clean
//! environment (from `/proc/PID/environ`) and a `workingDir` that must exist.

mod support;

use std::collections::BTreeMap;

use drover_agent::driver::process::{ProcessDriver, DEFAULT_PATH};
use drover_agent::driver::{Error, Handle};
use serde_json::json;
use support::{request, spec, unique, within, LIMIT};

/// These tests switch users, which only root can: elsewhere they say so and pass.
fn running_as_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("not running as root: nothing to check here");
    }
    root
}

/// The `Uid:`, `Gid:` and `Groups:` lines of `/proc/<pid>/status`, as (real uid, real gid,
/// supplementary groups).
fn ids_of(pid: &str) -> (u32, u32, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .map(|n| n.parse().expect("numeric id"))
            .collect()
    };
    let (uid, gid) = (field("Uid:"), field("Gid:"));
    assert!(
        uid.iter().all(|u| *u == uid[0]),
        "real = effective = saved uid: {uid:?}"
    );
    assert!(
        gid.iter().all(|g| *g == gid[0]),
        "real = effective = saved gid: {gid:?}"
    );
    (uid[0], gid[0], field("Groups:"))
}

/// A NUL-separated environment (as in `/proc/<pid>/environ`) as a map.
fn environ_map(raw: &[u8]) -> BTreeMap<String, String> {
    raw.split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

async fn start(driver: &ProcessDriver, slot: u32, spec_json: serde_json::Value) -> Handle {
    let req = request(&unique("node"), "runas", slot, spec(spec_json));
    within(LIMIT, "start", driver.start(&req))
        .await
        .expect("start")
}

async fn refused(driver: &ProcessDriver, slot: u32, spec_json: serde_json::Value) -> Error {
    let req = request(&unique("node"), "runas", slot, spec(spec_json));
    within(LIMIT, "start", driver.start(&req))
        .await
        .expect_err("refused")
}

#[tokio::test]
async fn a_process_with_user_nobody_runs_as_nobody_with_only_its_primary_group() {
    if !running_as_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = ProcessDriver::new(dir.path()).expect("driver");
    let h = start(
        &driver,
        0,
        json!({"command": ["sleep", "30"], "user": "nobody"}),
    )
    .await;
    assert_eq!(
        ids_of(&h.id),
        (65534, 65534, vec![]),
        "nobody, no groups of root"
    );
    driver.destroy(&h).await.expect("destroy");
    // Numeric ids, and a group of its own.
    let h = start(
        &driver,
        1,
        json!({"command": ["sleep", "30"], "user": "4242", "group": "4343"}),
    )
    .await;
    assert_eq!(ids_of(&h.id), (4242, 4343, vec![]));
    driver.destroy(&h).await.expect("destroy");
}

#[tokio::test]
async fn a_root_driver_refuses_root_unless_allowed() {
    if !running_as_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = ProcessDriver::new(dir.path()).expect("driver");
    for (slot, user) in [(0, None), (1, Some("root")), (2, Some("0"))] {
        let mut s = json!({"command": ["sleep", "30"]});
        if let Some(u) = user {
            s["user"] = json!(u);
        }
        let err = refused(&driver, slot, s.clone()).await;
        assert!(matches!(err, Error::Refused { .. }), "{err:?}");
        assert_eq!(err.reason(), "RunAsRootRefused");
        let text = err.to_string();
        assert!(
            text.contains("task runas/t") && text.contains("--allow-root-tasks"),
            "{text}"
        );
        assert!(!err.retryable());
        let allowed = ProcessDriver::new(dir.path())
            .expect("driver")
            .allow_root_tasks(true);
        let h = start(&allowed, slot, s).await;
        assert_eq!(ids_of(&h.id).0, 0, "allowed: runs as root");
        allowed.destroy(&h).await.expect("destroy");
    }
}

#[tokio::test]
async fn the_environment_is_the_minimal_set_drover_and_the_spec_only() {
    if !running_as_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = ProcessDriver::new(dir.path()).expect("driver");
    // This test process has a full environment (CARGO_*, PATH, ...): none of it may pass.
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
    // The task copies its own /proc/self/environ out: a root without CAP_SYS_PTRACE (as in a
    // container) may not read another user's environ, but every process may read its own.
    let out = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        out.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let copy = out.path().join("environ");
    let h = start(
        &driver,
        0,
        json!({"command": ["cp", "/proc/self/environ", copy.to_str().expect("utf-8")],
               "user": "nobody", "env": {"GREETING": "hi"}}),
    )
    .await;
    let raw = within(LIMIT, "the task's copy of its environment", async {
        loop {
            match std::fs::read(&copy) {
                Ok(raw) if !raw.is_empty() => break raw,
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let env = environ_map(&raw);
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "DROVER_INSTANCE",
            "DROVER_NAMESPACE",
            "DROVER_NODE",
            "DROVER_TASK",
            "GREETING",
            "HOME",
            "LOGNAME",
            "PATH",
            "USER"
        ]
    );
    assert_eq!(env["PATH"], DEFAULT_PATH);
    assert_eq!(env["HOME"], "/nonexistent");
    assert_eq!(env["USER"], "nobody");
    driver.destroy(&h).await.expect("destroy");
}

#[tokio::test]
async fn unknown_accounts_and_a_missing_working_dir_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = ProcessDriver::new(dir.path())
        .expect("driver")
        .allow_root_tasks(true);
    let err = refused(
        &driver,
        0,
        json!({"command": ["true"], "user": "drover-no-such-user"}),
    )
    .await;
    assert_eq!(err.reason(), "UnknownUser");
    assert!(err.to_string().contains("drover-no-such-user"), "{err}");
    let err = refused(
        &driver,
        1,
        json!({"command": ["true"], "user": "nobody", "group": "drover-no-such-group"}),
    )
    .await;
    assert_eq!(err.reason(), "UnknownGroup");
    let missing = dir.path().join("no-such-dir").display().to_string();
    let err = refused(
        &driver,
        2,
        json!({"command": ["true"], "workingDir": missing}),
    )
    .await;
    assert_eq!(err.reason(), "WorkingDirNotFound");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").expect("write");
    let err = refused(
        &driver,
        3,
        json!({"command": ["true"], "workingDir": file.display().to_string()}),
    )
    .await;
    assert!(err.to_string().contains("is not a directory"), "{err}");
}
