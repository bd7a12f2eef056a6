//! An agent's `/readyz` follows its lease, end to end on a real etcd: 503 while it is not
//! registered (its node name held by another agent's live lease), 200 once registered, 503
//! while it is fenced after being cut off from etcd, and 200 again once it has re-registered.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Cli, Daemon};
use drover_testkit::{free_port, wait_for, EtcdServer, TcpProxy};

/// Bound on each state change the test waits for (a few lease TTLs).
const WITHIN: Duration = Duration::from_secs(60);
/// Polled often: the fenced state lasts from TTL/2 to about TTL after the cut.
const POLL: Duration = Duration::from_millis(50);

async fn readyz(addr: SocketAddr) -> Option<(u16, String)> {
    let reply = drover_runtime::http::get(addr, "/readyz", Duration::from_secs(2))
        .await
        .ok()?;
    Some((
        reply.status,
        String::from_utf8_lossy(&reply.body).into_owned(),
    ))
}

/// Waits for a `/readyz` answer with `status` whose body contains `says`; returns the body.
async fn wait_readyz(addr: SocketAddr, status: u16, says: &str, agent: &Daemon) -> String {
    let found = wait_for(WITHIN, POLL, || async {
        let (got, body) = readyz(addr).await?;
        (got == status && body.contains(says)).then_some(body)
    })
    .await;
    match found {
        Ok(body) => body,
        Err(_) => panic!(
            "/readyz {status} saying {says:?} within {WITHIN:?}; last answer {:?}; log:\n{}",
            readyz(addr).await,
            agent.log_text()
        ),
    }
}

/// The value of the unlabelled sample `name` in the agent's `/metrics`.
async fn sample(addr: SocketAddr, name: &str) -> f64 {
    let reply = drover_runtime::http::get(addr, "/metrics", Duration::from_secs(5))
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(&reply.body);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

fn agent_args<'a>(state: &'a tempfile::TempDir, ttl: &'a str, metrics: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "agent",
        "--node",
        "n0",
        "--driver",
        "process",
        // Tests run as root; their tasks set no spec.user.
        "--allow-root-tasks",
        "--lease-ttl",
        ttl,
        "--state-dir",
        state.path().to_str().expect("utf-8"),
    ];
    if !metrics.is_empty() {
        args.extend(["--metrics-addr", metrics]);
    }
    args
}

#[tokio::test]
async fn readyz_is_503_unregistered_and_fenced_and_200_once_registered() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let proxy = TcpProxy::start(server.client_addr()).await;
    let cut_cli = Cli {
        endpoints: vec![proxy.url()],
        prefix: cli.prefix.clone(),
        access: Vec::new(),
    };

    // Another agent holds the node name: ours stays unregistered (refused) while that lease lives.
    let holder_state = tempfile::tempdir().expect("tempdir");
    let mut holder = Daemon::start(&cli, &agent_args(&holder_state, "3s", ""));
    let store = drover_store::Store::connect(drover_store::StoreConfig::new(server.endpoints()))
        .await
        .expect("store");
    let keys = drover_api::keys::Keys::new(&cli.prefix);
    wait_for(WITHIN, POLL, || async {
        store
            .get_raw(&keys.node("n0"))
            .await
            .ok()
            .flatten()
            .map(|_| ())
    })
    .await
    .expect("the first agent registers n0");

    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = addr.to_string();
    let state = tempfile::tempdir().expect("tempdir");
    let agent = Daemon::start(&cut_cli, &agent_args(&state, "6s", &metrics));
    wait_readyz(addr, 503, "refused", &agent).await;

    // The holder dies without revoking; once its lease expires ours registers.
    holder.kill().await;
    wait_readyz(addr, 200, "ready", &agent).await;

    // Cut off from etcd, the agent fences itself at TTL/2: not ready. (It may have fenced
    // already: unregistered at TTL/2 after its start, it fences what it adopted.)
    let fences_before = sample(addr, "drover_agent_fences_total").await;
    proxy.cut();
    let fenced = wait_readyz(addr, 503, "fenced", &agent).await;
    eprintln!("while cut off: {fenced}");
    proxy.restore();
    wait_readyz(addr, 200, "ready", &agent).await;
    // With a new lease: the second registration, and one more fence, are counted.
    assert_eq!(sample(addr, "drover_agent_registrations_total").await, 2.0);
    assert_eq!(
        sample(addr, "drover_agent_fences_total").await,
        fences_before + 1.0
    );
}
