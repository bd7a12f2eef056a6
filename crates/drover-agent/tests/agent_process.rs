//! The agent with the process driver against a real etcd: start errors, logs over gRPC,
//! fenced (stale) status writes, self-fencing through a proxy that is cut, and jobs stopped
//! for their `timeoutSeconds`.

mod support;

use std::time::Duration;

use drover_agent::config::DriverChoice;
use drover_agent::local::StopReason;
use drover_agent::status::{self, Written};
use drover_api::instance::{reasons, InstanceStatus, Phase};
use drover_testkit::TcpProxy;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_binary_is_a_start_error() {
    assert_fails_to_start(
        DriverChoice::Process,
        spec(json!({"command": ["/no/such/binary-drover"]})),
        "StartError",
        "/no/such/binary-drover",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_exits_zero_succeeds_and_a_crash_loop_fails() {
    let env = Env::start().await;
    let node = env.node("jb", DriverChoice::Process).await;
    let ok = id("default", "ok", 0);
    env.assign(
        &node.name,
        &ok,
        spec(json!({"command": ["/bin/true"], "restartPolicy": "OnFailure"})),
    )
    .await;
    let crash = id("default", "crash", 0);
    env.assign(
        &node.name,
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
    node.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn process_logs_over_grpc_and_follow() {
    let env = Env::start().await;
    let node = env.node("pl", DriverChoice::Process).await;
    let id = id("default", "ticker", 0);
    let script = "echo hello; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done";
    env.assign(
        &node.name,
        &id,
        spec(json!({"command": ["/bin/sh", "-c", script], "terminationGracePeriodSeconds": 1})),
    )
    .await;
    env.wait_status(&id, LIMIT, "Running", |s| s.phase == Phase::Running)
        .await;
    let addr = drover_agent::AgentEndpoint::plaintext(node.agent.handle.address().to_string());
    let lines = wait_agent_logs(&addr, &id, "hello line", |lines| {
        lines.first().map(String::as_str) == Some("hello")
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
    follow_until(&mut follow, "a newer line while following", |line| {
        let n: u32 = line
            .strip_prefix("tick ")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        n > last_seen + 2
    })
    .await;
    let missing = drover_agent::logs_client(&addr, "default.nope.0", false, None).await;
    assert!(missing.is_err(), "unknown instance is NotFound");
    node.agent.stop().await;
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
        healthy_since: None,
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
    // (The in-memory record comes first; the file is appended to right after: poll for it.)
    let file = state.path().join(&node).join("stops.jsonl");
    drover_testkit::wait_for(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async {
            drover_agent::local::Records::read_file(&file)
                .ok()?
                .iter()
                .any(|r| r.reason == StopReason::Fenced)
                .then_some(())
        },
    )
    .await
    .expect("stops.jsonl holds the fenced stop");

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

/// Reconcile and driver polling between a deadline (or a SIGKILL) and the recorded exit.
const SLACK: Duration = Duration::from_secs(3);

/// How long the run in `st` lasted, by its recorded start and finish.
fn ran(st: &InstanceStatus) -> Duration {
    let (start, end) = (
        st.started_at.expect("started_at"),
        st.finished_at.expect("finished_at"),
    );
    (end - start).to_std().expect("finished after it started")
}

/// Runs `script` on `node` as a job with `restart_policy`, `timeoutSeconds` = `timeout` and a
/// grace period of `grace`, until it fails for its deadline. Checks that it was stopped no
/// earlier than the deadline and no later than `timeout + grace + SLACK`, and that its process
/// is gone; returns its status and how long it ran.
async fn run_past_deadline(
    env: &Env,
    node: &TestNode,
    script: &str,
    restart_policy: &str,
    (timeout, grace): (Duration, Duration),
) -> (InstanceStatus, Duration) {
    let id = id("default", "late", 0);
    env.assign(
        &node.name,
        &id,
        spec(json!({
            "command": ["/bin/sh", "-c", script],
            "restartPolicy": restart_policy,
            "timeoutSeconds": timeout.as_secs(),
            "terminationGracePeriodSeconds": grace.as_secs(),
        })),
    )
    .await;
    let st = env
        .wait_failed(&id, LIMIT, reasons::DEADLINE_EXCEEDED)
        .await;
    let ran = ran(&st);
    assert!(ran >= timeout, "stopped before its deadline: {ran:?}");
    assert!(
        ran <= timeout + grace + SLACK,
        "stopped too late: {ran:?} > timeout + grace + slack"
    );
    let pid = st.container_id.clone().expect("pid");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the process is gone"
    );
    (st, ran)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_past_its_timeout_is_stopped_and_fails_with_deadline_exceeded() {
    let env = Env::start().await;
    let node = env.node("dl", DriverChoice::Process).await;
    let limits = (Duration::from_secs(2), Duration::from_secs(5));
    let (st, _) = run_past_deadline(&env, &node, "sleep 60", "Never", limits).await;
    assert_eq!(
        st.message.as_deref(),
        Some("ran longer than timeoutSeconds (2s)")
    );
    assert_eq!(st.restart_count, 0);
    node.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_ignoring_sigterm_past_its_timeout_is_killed_after_its_grace_and_not_restarted() {
    let env = Env::start().await;
    let node = env.node("dk", DriverChoice::Process).await;
    let (timeout, grace) = (Duration::from_secs(2), Duration::from_secs(1));
    let script = "trap '' TERM; while true; do sleep 0.1; done";
    // OnFailure would restart a killed process: the deadline must prevent that.
    let (st, ran) = run_past_deadline(&env, &node, script, "OnFailure", (timeout, grace)).await;
    assert!(
        ran >= timeout + grace,
        "SIGKILL only after the grace period: {ran:?}"
    );
    // Give the agent several restart backoffs (200 ms in tests) to prove it does nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = env.status(&st.id).await.expect("status");
    assert_eq!(
        (later.phase, later.restart_count, later.container_id),
        (Phase::Failed, 0, st.container_id)
    );
    node.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_on_failure_do_not_reset_the_deadline() {
    let env = Env::start().await;
    let node = env.node("dr", DriverChoice::Process).await;
    let id = id("default", "flaky", 0);
    // Each run fails after 0.5 s, well within the 2 s limit: only the first start counts.
    env.assign(
        &node.name,
        &id,
        spec(json!({
            "command": ["/bin/sh", "-c", "sleep 0.5; exit 1"],
            "restartPolicy": "OnFailure",
            "maxRestarts": 1000,
            "timeoutSeconds": 2,
            "terminationGracePeriodSeconds": 1,
        })),
    )
    .await;
    let st = env
        .wait_failed(&id, LIMIT, reasons::DEADLINE_EXCEEDED)
        .await;
    assert!(st.restart_count >= 1, "{st:#?}");
    node.agent.stop().await;
}

/// The real uid and gid of `pid`, from the `Uid:` and `Gid:` lines of `/proc/<pid>/status`.
fn uid_gid(pid: &str) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let first = |name: &str| -> u32 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("numeric id")
    };
    (first("Uid:"), first("Gid:"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_agent_refuses_root_tasks_with_a_clear_status_and_runs_user_nobody() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not running as root: nothing to refuse");
        return;
    }
    let env = Env::start().await;
    let name = unique("nr");
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = agent_config(&name, DriverChoice::Process, &state);
    config.allow_root_tasks = false;
    let agent = Running::start(env.store.clone(), env.keys.clone(), config).await;
    let sleeper = json!({"command": ["sleep", "3600"], "terminationGracePeriodSeconds": 1});

    let root = id("default", "as-root", 0);
    env.assign(&name, &root, spec(sleeper.clone())).await;
    let st = env
        .wait_failed(&root, LIMIT, reasons::RUN_AS_ROOT_REFUSED)
        .await;
    let message = st.message.unwrap_or_default();
    assert!(
        message.contains("task default/as-root")
            && message.contains("root")
            && message.contains("--allow-root-tasks"),
        "{message}"
    );
    assert_eq!(
        (st.restart_count, st.container_id),
        (0, None),
        "never started"
    );

    let mut as_nobody = sleeper.clone();
    as_nobody["user"] = json!("nobody");
    let nobody = id("default", "as-nobody", 0);
    env.assign(&name, &nobody, spec(as_nobody)).await;
    let st = env
        .wait_status(&nobody, LIMIT, "Running", |s| s.phase == Phase::Running)
        .await;
    let pid = st.container_id.expect("pid");
    assert_eq!(uid_gid(&pid), (65534, 65534));
    agent.stop().await;

    // The same root task on an agent started with --allow-root-tasks runs, as root.
    let name = unique("ar");
    let state = tempfile::tempdir().expect("tempdir");
    let config = agent_config(&name, DriverChoice::Process, &state);
    assert!(config.allow_root_tasks);
    let agent = Running::start(env.store.clone(), env.keys.clone(), config).await;
    let allowed = id("default", "root-allowed", 0);
    env.assign(&name, &allowed, spec(sleeper)).await;
    let st = env
        .wait_status(&allowed, LIMIT, "Running", |s| s.phase == Phase::Running)
        .await;
    assert_eq!(uid_gid(&st.container_id.expect("pid")), (0, 0));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_probe_runs_as_the_task_with_its_environment_not_as_the_agent() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not running as root: nothing to drop");
        return;
    }
    let env = Env::start().await;
    let node = env.node("xp", DriverChoice::Process).await;
    let probed = id("default", "probed", 0);
    // Healthy only when the probe runs as nobody, with the task's HOME and env.
    let check =
        "test \"$(id -u)\" = 65534 && test \"$HOME\" = /nonexistent && test \"$MARK\" = set";
    env.assign(
        &node.name,
        &probed,
        spec(json!({
            "command": ["sleep", "3600"],
            "user": "nobody",
            "env": {"MARK": "set"},
            "terminationGracePeriodSeconds": 1,
            "healthCheck": {"exec": {"command": ["sh", "-c", check]}, "periodSeconds": 1},
        })),
    )
    .await;
    let st = env
        .wait_status(&probed, LIMIT, "Healthy", |s| {
            s.health == drover_api::instance::Health::Healthy
        })
        .await;
    assert_eq!(st.restart_count, 0);
    node.agent.stop().await;
}
