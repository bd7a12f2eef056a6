//! The agent's least-privilege rules through the real binary: `--address 0.0.0.0` needs
//! `--advertise-address` (and the node key publishes that), and the process driver neither
//! hands out root nor the agent's environment — read back from the real child in `/proc`.

mod common;

use std::time::Duration;

use common::{manifest, node_key, Cli, Daemon, Etcd};
use drover_api::instance::{reasons, InstanceStatus, Phase};
use drover_testkit::wait_for;

const WAIT: Duration = Duration::from_secs(60);

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The first status of `task` that satisfies `pred`.
async fn status_of(
    etcd: &Etcd,
    task: &str,
    what: &str,
    pred: impl Fn(&InstanceStatus) -> bool,
) -> InstanceStatus {
    wait_for(WAIT, Duration::from_millis(100), || async {
        etcd.store
            .list::<InstanceStatus>(&etcd.keys.statuses())
            .await
            .ok()?
            .items
            .into_iter()
            .map(|i| i.value)
            .find(|s| s.id.task() == task && pred(s))
    })
    .await
    .unwrap_or_else(|_| panic!("{task}: no status {what} within {WAIT:?}"))
}

/// The value of `field` (`Uid:`, `Gid:`) in `/proc/<pid>/status`: its first (real) id.
fn proc_id(pid: &str, field: &str) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{field} in {status}"))
}

/// The variable names of a NUL-separated environment (as in `/proc/<pid>/environ`).
fn environ_names(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=').map(|(k, _)| k.to_string())
        })
        .collect()
}

#[tokio::test]
async fn an_agent_bound_to_every_interface_without_an_advertise_address_refuses_to_start() {
    // Nothing is contacted: the agent refuses before it connects to etcd.
    let cli = Cli::new(vec!["http://127.0.0.1:1".into()]);
    for address in ["0.0.0.0:7400", "[::]:7400"] {
        let out = cli
            .run(&[
                "agent",
                "--node",
                "n1",
                "--driver",
                "hollow",
                "--address",
                address,
            ])
            .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(
            stderr.contains("--advertise-address") && stderr.contains(address),
            "{stderr}"
        );
    }
    // Nor may the advertised address itself be unspecified.
    let out = cli
        .run(&[
            "agent",
            "--node",
            "n1",
            "--address",
            "0.0.0.0:7400",
            "--advertise-address",
            "0.0.0.0",
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--advertise-address") && stderr.contains("unspecified"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_node_key_advertises_the_advertise_address_else_the_bound_one() {
    let etcd = Etcd::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = |node: &str| state.path().join(node).display().to_string();
    let port = free_port();
    let address = format!("0.0.0.0:{port}");
    let _wide = Daemon::start(
        &etcd.cli,
        &[
            "agent",
            "--node",
            "wide",
            "--driver",
            "hollow",
            "--address",
            &address,
            "--advertise-address",
            "127.0.0.1",
            "--state-dir",
            &state_dir("wide"),
        ],
    );
    let node = node_key(&etcd, "wide").await;
    assert_eq!(
        node.address,
        format!("127.0.0.1:{port}"),
        "host, bound port"
    );
    let _named = Daemon::start(
        &etcd.cli,
        &[
            "agent",
            "--node",
            "named",
            "--driver",
            "hollow",
            "--address",
            "0.0.0.0:0",
            "--advertise-address",
            "Agent-2.Example.com:7443",
            "--state-dir",
            &state_dir("named"),
        ],
    );
    assert_eq!(
        node_key(&etcd, "named").await.address,
        "agent-2.example.com:7443"
    );
    // Bound to loopback without --advertise-address: the bound address, as before.
    let _local = Daemon::start(
        &etcd.cli,
        &[
            "agent",
            "--node",
            "local",
            "--driver",
            "hollow",
            "--state-dir",
            &state_dir("local"),
        ],
    );
    let local: std::net::SocketAddr = node_key(&etcd, "local")
        .await
        .address
        .parse()
        .expect("a socket address");
    assert!(local.ip().is_loopback() && local.port() != 0, "{local}");
}

#[tokio::test]
async fn process_tasks_run_as_their_user_without_the_agents_environment_and_root_is_refused() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not running as root: nothing to refuse");
        return;
    }
    let etcd = Etcd::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    let secret = format!("DROVER_TEST_AGENT_SECRET_{:x}", rand::random::<u32>());
    let _controller = Daemon::start(&etcd.cli, &["controller", "--id", "c", "--lease-ttl", "2s"]);
    let mut agent = Daemon::start_with_env(
        &etcd.cli,
        &[
            "agent",
            "--node",
            "a",
            "--driver",
            "process",
            "--state-dir",
            state.path().to_str().expect("utf-8"),
        ],
        &[(secret.as_str(), "must-not-leak")],
    );
    // The task copies its own /proc/self/environ out: a root without CAP_SYS_PTRACE (as in a
    // container) may not read another user's environ, but every process may read its own.
    let out = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        out.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let copy = out.path().join("environ");
    let doc = format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: as-nobody\nspec:\n  \
               command: [sh, -c, \"cp /proc/self/environ {}; exec sleep 3600\"]\n  user: nobody\n  env: {{GREETING: hi}}\n  \
               terminationGracePeriodSeconds: 1\n---\n\
               apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: as-root\nspec:\n  \
               command: [sleep, \"3600\"]\n  terminationGracePeriodSeconds: 1\n",
        copy.display()
    );
    let (_dir, path) = manifest(&doc);
    etcd.cli
        .ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;

    let st = status_of(&etcd, "as-nobody", "Running", |s| s.phase == Phase::Running).await;
    let pid = st.container_id.expect("pid");
    assert_eq!(
        (proc_id(&pid, "Uid:"), proc_id(&pid, "Gid:")),
        (65534, 65534),
        "the real child runs as nobody"
    );
    let raw = wait_for(WAIT, Duration::from_millis(50), || async {
        std::fs::read(&copy).ok().filter(|raw| !raw.is_empty())
    })
    .await
    .expect("the task's copy of its environment");
    let names = environ_names(&raw);
    assert!(
        !names.contains(&secret) && !names.iter().any(|n| n == "RUST_LOG"),
        "the agent's environment leaked into the task: {names:?}"
    );
    assert!(names.iter().any(|n| n == "GREETING"), "{names:?}");
    assert!(names.iter().any(|n| n == "DROVER_INSTANCE"), "{names:?}");

    let st = status_of(&etcd, "as-root", "RunAsRootRefused", |s| {
        s.reason.as_deref() == Some(reasons::RUN_AS_ROOT_REFUSED)
    })
    .await;
    assert_eq!(st.phase, Phase::Failed);
    let message = st.message.unwrap_or_default();
    assert!(
        message.contains("task default/as-root") && message.contains("--allow-root-tasks"),
        "{message}"
    );
    assert!(st.container_id.is_none(), "nothing was started");
    assert!(!agent.log_text().contains("panicked"));
    // SIGTERM stops the instances (a SIGKILLed agent would leave them running).
    agent.signal("TERM");
    assert!(agent.wait_exit(WAIT).await.is_some());
}

#[tokio::test]
async fn with_allow_root_tasks_a_root_agent_runs_a_task_as_root() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not running as root: nothing to allow");
        return;
    }
    let etcd = Etcd::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    let _controller = Daemon::start(&etcd.cli, &["controller", "--id", "c", "--lease-ttl", "2s"]);
    let mut agent = Daemon::start(
        &etcd.cli,
        &[
            "agent",
            "--node",
            "a",
            "--driver",
            "process",
            "--allow-root-tasks",
            "--state-dir",
            state.path().to_str().expect("utf-8"),
        ],
    );
    let doc = "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: as-root\nspec:\n  \
               command: [sleep, \"3600\"]\n  terminationGracePeriodSeconds: 1\n";
    let (_dir, path) = manifest(doc);
    etcd.cli
        .ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let st = status_of(&etcd, "as-root", "Running", |s| s.phase == Phase::Running).await;
    assert_eq!(proc_id(&st.container_id.expect("pid"), "Uid:"), 0);
    agent.signal("TERM");
    assert!(agent.wait_exit(WAIT).await.is_some());
}
