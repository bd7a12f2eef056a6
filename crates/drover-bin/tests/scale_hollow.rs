//! Scale: one `drover agent --hollow-nodes 300` process registers 300 simulated nodes and runs
//! the 3,000 instances the controller process schedules onto them. Prints the time it took and
//! the agent process's resident memory (recorded in docs/benchmarks.md).

mod common;

use std::time::{Duration, Instant};

use common::{manifest, Daemon};
use drover_api::instance::{InstanceStatus, Phase};
use drover_testkit::wait_for;

const NODES: usize = 300;
const TASKS: usize = 3;
const REPLICAS: usize = 1000;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test]
async fn three_hundred_hollow_nodes_run_three_thousand_instances() {
    let common::Etcd {
        server: _server,
        cli,
        store,
        keys,
    } = common::Etcd::start().await;
    let _controller = Daemon::start(&cli, &["controller", "--id", "scale", "--lease-ttl", "5s"]);
    let agent = Daemon::start(
        &cli,
        &[
            "agent",
            "--hollow-nodes",
            &NODES.to_string(),
            "--node",
            "hollow",
            "--lease-ttl",
            "15s",
        ],
    );
    let started = Instant::now();
    wait_for(
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let nodes = store.list_raw(&keys.nodes()).await.ok()?.items.len();
            (nodes == NODES).then_some(())
        },
    )
    .await
    .expect("all hollow nodes register");
    let registered = started.elapsed();

    let docs: Vec<String> = (0..TASKS)
        .map(|i| {
            format!(
                "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: load-{i}\nspec:\n  command: [simulated]\n  replicas: {REPLICAS}\n  resources: {{cpu: 10m, memory: 1Mi}}\n"
            )
        })
        .collect();
    let (_dir, path) = manifest(&docs.join("---\n"));
    let applied = Instant::now();
    cli.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let total = TASKS * REPLICAS;
    wait_for(
        Duration::from_secs(240),
        Duration::from_millis(500),
        || async {
            let statuses = store.list::<InstanceStatus>(&keys.statuses()).await.ok()?;
            let running = statuses
                .items
                .iter()
                .filter(|s| s.value.phase == Phase::Running)
                .count();
            (running == total).then_some(())
        },
    )
    .await
    .unwrap_or_else(|_| panic!("{total} hollow instances not Running in time"));
    let converged = applied.elapsed();
    let assignments = store
        .list_raw(&keys.assignments())
        .await
        .expect("list")
        .items
        .len();
    assert_eq!(assignments, total, "exactly one assignment per instance");
    let rss = rss_kib(agent.pid()).expect("agent RSS");
    eprintln!(
        "hollow scale: {NODES} nodes registered in {registered:?}; {total} instances Running {converged:?} after apply; agent RSS {} MiB",
        rss / 1024
    );
}
