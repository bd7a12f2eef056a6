//! Agents as real processes next to a real controller process: adoption after SIGKILL (one
//! container per assigned instance), self-fencing when cut off from etcd (the old copy stops
//! before its replacement starts elsewhere).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{manifest, Cli, Daemon};
use drover_api::instance::{Instance, InstanceStatus, Phase};
use drover_api::keys::Keys;
use drover_store::{Store, StoreConfig};
use drover_testkit::{wait_for, EtcdServer, TcpProxy};

async fn store_for(endpoints: Vec<String>) -> Store {
    Store::connect(StoreConfig::new(endpoints))
        .await
        .expect("store")
}

async fn statuses(store: &Store, keys: &Keys, task: &str) -> Vec<InstanceStatus> {
    store
        .list::<InstanceStatus>(&keys.statuses())
        .await
        .expect("list statuses")
        .items
        .into_iter()
        .map(|i| i.value)
        .filter(|s| s.id.task() == task)
        .collect()
}

async fn assignments(store: &Store, keys: &Keys, task: &str) -> Vec<Instance> {
    store
        .list::<Instance>(&keys.assignments())
        .await
        .expect("list assignments")
        .items
        .into_iter()
        .map(|i| i.value)
        .filter(|a| a.task == task)
        .collect()
}

/// Waits until `count` instances of `task` are Running; returns their statuses.
async fn running(
    store: &Store,
    keys: &Keys,
    task: &str,
    count: usize,
    within: Duration,
) -> Vec<InstanceStatus> {
    wait_for(within, Duration::from_millis(100), || async {
        let all = statuses(store, keys, task).await;
        let up: Vec<InstanceStatus> = all
            .into_iter()
            .filter(|s| s.phase == Phase::Running)
            .collect();
        (up.len() == count).then_some(up)
    })
    .await
    .unwrap_or_else(|_| panic!("{count} instances of {task} not Running within {within:?}"))
}

fn docker_ps(node: &str) -> BTreeSet<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=dev.drover.node={node}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn docker_rm_node(node: &str) {
    for id in docker_ps(node) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &id])
            .output();
    }
}

struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        docker_rm_node(&self.0);
    }
}

#[tokio::test]
async fn a_sigkilled_agent_adopts_its_containers_on_restart() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let store = store_for(server.endpoints()).await;
    let keys = Keys::new(&cli.prefix);
    let node = format!("adopt-{:x}", rand::random::<u32>());
    let _cleanup = Cleanup(node.clone());
    let state = tempfile::tempdir().expect("tempdir");
    let agent_args = [
        "agent",
        "--node",
        &node,
        "--driver",
        "docker",
        "--publish-ip",
        "127.0.0.1",
        "--lease-ttl",
        "10s",
        "--state-dir",
        state.path().to_str().expect("utf-8"),
    ];
    let _controller = Daemon::start(&cli, &["controller", "--id", "c", "--lease-ttl", "2s"]);
    let mut agent = Daemon::start(&cli, &agent_args);
    let doc = "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: web\nspec:\n  image: drover/echo-server:latest\n  ports: [{containerPort: 7777}]\n  replicas: 2\n  resources: {cpu: 50m, memory: 16Mi}\n";
    let (_dir, path) = manifest(doc);
    cli.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let before = running(&store, &keys, "web", 2, Duration::from_secs(60)).await;
    let containers_before = docker_ps(&node);
    assert_eq!(containers_before.len(), 2, "one container per instance");
    // `drover logs` reaches the container's output through the agent's gRPC stream.
    // Running comes before the server's first line is written: poll, bounded.
    let id = before[0].id.to_string();
    let logs = wait_for(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || async {
            let out = cli.ok(&["logs", &id, "--tail", "20"]).await;
            out.contains("echo-server listening on port 7777")
                .then_some(out)
        },
    )
    .await;
    assert!(
        logs.is_ok(),
        "drover logs never showed the server's first line"
    );

    agent.kill().await;
    let mut agent = Daemon::start(&cli, &agent_args);
    // The restarted agent reports the instances Running again, from the same containers.
    wait_for(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let now = statuses(&store, &keys, "web").await;
            let ok = now.len() == 2
                && now.iter().all(|s| s.phase == Phase::Running)
                && now.iter().any(|s| {
                    s.updated_at > before.iter().map(|b| b.updated_at).max().expect("two")
                });
            ok.then_some(())
        },
    )
    .await
    .expect("the restarted agent reports its instances");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let containers_after = docker_ps(&node);
    assert_eq!(
        containers_after, containers_before,
        "adopted, neither duplicated nor replaced"
    );
    assert_eq!(assignments(&store, &keys, "web").await.len(), 2);
    let log = agent.log_text();
    assert!(!log.contains("panicked"), "{log}");
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(60)).await.is_some());
    assert!(docker_ps(&node).is_empty(), "SIGTERM stops the instances");
}

#[tokio::test]
async fn a_cut_off_agent_stops_its_copy_before_the_replacement_starts() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let store = store_for(server.endpoints()).await;
    let keys = Keys::new(&cli.prefix);
    let proxy = TcpProxy::start(server.client_addr()).await;
    let cut_cli = Cli {
        endpoints: vec![proxy.url()],
        prefix: cli.prefix.clone(),
        access: Vec::new(),
    };
    let state_a = tempfile::tempdir().expect("tempdir");
    let state_b = tempfile::tempdir().expect("tempdir");
    let _controller = Daemon::start(&cli, &["controller", "--id", "c", "--lease-ttl", "2s"]);
    let _a = Daemon::start(
        &cut_cli,
        &[
            "agent",
            "--node",
            "a",
            "--driver",
            "process",
            // Tests run as root; their tasks set no spec.user.
            "--allow-root-tasks",
            "--lease-ttl",
            "3s",
            "--state-dir",
            state_a.path().to_str().expect("utf-8"),
        ],
    );
    let doc = "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: solo\nspec:\n  command: [sh, -c, \"echo solo started; exec sleep 3600\"]\n  terminationGracePeriodSeconds: 30\n";
    let (_dir, path) = manifest(doc);
    cli.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let first = running(&store, &keys, "solo", 1, Duration::from_secs(30)).await;
    assert_eq!(first[0].node, "a");
    let id = first[0].id.to_string();
    let logs = wait_for(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || async {
            let out = cli.run(&["logs", &id]).await;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.contains("solo started").then_some(text)
        },
    )
    .await
    .expect("drover logs shows the process's output");
    assert!(logs.contains("solo started"));
    let _b = Daemon::start(
        &cli,
        &[
            "agent",
            "--node",
            "b",
            "--driver",
            "process",
            // Tests run as root; their tasks set no spec.user.
            "--allow-root-tasks",
            "--lease-ttl",
            "3s",
            "--state-dir",
            state_b.path().to_str().expect("utf-8"),
        ],
    );
    wait_for(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            store
                .get_raw(&keys.node("b"))
                .await
                .ok()
                .flatten()
                .map(|_| ())
        },
    )
    .await
    .expect("b registers");

    proxy.cut();
    let replacement = wait_for(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            statuses(&store, &keys, "solo")
                .await
                .into_iter()
                .find(|s| s.node == "b" && s.phase == Phase::Running)
        },
    )
    .await
    .expect("the replacement runs on b");
    let stops = std::fs::read_to_string(state_a.path().join("stops.jsonl")).expect("a's stop log");
    let stop: serde_json::Value = serde_json::from_str(
        stops
            .lines()
            .find(|l| l.contains("Fenced"))
            .expect("a fenced stop record"),
    )
    .expect("json");
    let stopped_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(stop["stoppedAt"].clone()).expect("stoppedAt");
    let started_at = replacement.started_at.expect("replacement start time");
    eprintln!("old copy stopped at {stopped_at}, replacement started at {started_at}");
    assert!(
        stopped_at < started_at,
        "the old copy outlived the start of its replacement"
    );
    if let Some(expiry) = stop["leaseExpiryEarliest"].as_str() {
        let expiry: chrono::DateTime<chrono::Utc> = expiry.parse().expect("time");
        assert!(
            stopped_at < expiry,
            "stopped before the lease could have expired"
        );
    }
}
