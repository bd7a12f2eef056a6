//! The daemons' admin endpoint, end to end: each loop exports its metrics under its own name
//! (`drover_controller_*`, `drover_agent_*`), and `/healthz`, `/readyz` and HEAD answer. The
//! full list of names is checked against docs/metrics.md in `metrics_names.rs`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Cli, Daemon};
use drover_testkit::{free_port, wait_for, EtcdServer};

async fn scrape(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let reply = drover_runtime::http::get(addr, path, Duration::from_secs(5))
        .await
        .ok()?;
    Some((
        reply.status,
        String::from_utf8_lossy(&reply.body).into_owned(),
    ))
}

/// Waits until `/readyz` is 200 and `/metrics` has every family of `expected`; returns the
/// family names.
async fn families(addr: SocketAddr, daemon: &Daemon, expected: &[&str]) -> Vec<String> {
    wait_for(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            if scrape(addr, "/readyz").await?.0 != 200 {
                return None;
            }
            let (status, text) = scrape(addr, "/metrics?probe=1").await?;
            let names = family_names(&text);
            (status == 200 && expected.iter().all(|f| names.iter().any(|n| n == f)))
                .then_some(names)
        },
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{addr} ready with {expected:?} within 30 s; log:\n{}",
            daemon.log_text()
        )
    })
}

fn family_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn each_daemon_exports_its_loops_under_its_own_name() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let controller_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let agent_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let controller_metrics = controller_addr.to_string();
    let agent_metrics = agent_addr.to_string();
    let state = tempfile::tempdir().expect("tempdir");
    let controller = Daemon::start(
        &cli,
        &[
            "controller",
            "--id",
            "c1",
            "--metrics-addr",
            &controller_metrics,
        ],
    );
    let agent = Daemon::start(
        &cli,
        &[
            "agent",
            "--node",
            "n0",
            "--driver",
            "process",
            // Tests run as root; their tasks set no spec.user.
            "--allow-root-tasks",
            "--state-dir",
            state.path().to_str().expect("utf-8"),
            "--metrics-addr",
            &agent_metrics,
        ],
    );

    families(
        controller_addr,
        &controller,
        &[
            "drover_controller_is_leader",
            "drover_controller_reconciles",
            "drover_controller_queue_depth",
        ],
    )
    .await;
    let names = families(
        agent_addr,
        &agent,
        &[
            "drover_agent_registrations",
            "drover_agent_reconciles",
            "drover_agent_queue_depth",
        ],
    )
    .await;
    assert!(
        names.iter().all(|n| n.starts_with("drover_agent_")
            || n.starts_with("drover_store_")
            || n == "drover_build_info"),
        "the agent exports its own, the store's and the build's families only: {names:?}"
    );

    for addr in [controller_addr, agent_addr] {
        assert_eq!(scrape(addr, "/healthz").await.expect("healthz").0, 200);
        assert_eq!(scrape(addr, "/nope").await.expect("404").0, 404);
    }
}
