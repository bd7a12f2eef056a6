//! `drover up`: a whole local cluster in one command. Uses the etcd at `--etcd` when one answers
//! there, otherwise starts `etcd` from PATH with its data under `--state-dir`; runs one
//! controller and one agent (docker where the daemon answers, processes otherwise) in this
//! process; applies the example manifest, waits until its instances run, lists them, and sends
//! the echo request to the first published port.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use drover_agent::{Agent, AgentConfig};
use drover_api::keys::Keys;
use drover_api::task::Task;
use drover_controller::{Controller, ControllerConfig};
use drover_store::Store;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::snapshot::Snapshot;
use super::{connect, get};
use crate::cli::{ApplyArgs, GetArgs, Global, Resource, UpArgs};
use crate::exit::{CliError, CliResult, UNAVAILABLE};
use crate::output::Format;

/// How long `up` gives the agent to stop its instances on the way out.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How long a freshly started etcd may take to answer.
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(20);

pub async fn run(global: &Global, args: UpArgs) -> CliResult {
    let mut etcd = match reachable(global).await {
        true => {
            eprintln!("using the etcd that answers at {}", global.etcd.join(","));
            None
        }
        false => Some(start_etcd(global, &args.state_dir).await?),
    };
    let shutdown = CancellationToken::new();
    let outcome = bring_up(global, &args, &shutdown).await;
    if outcome.is_ok() && !args.exit {
        eprintln!("drover is up; press Ctrl-C to stop");
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
    // The agent stops its instances within their grace periods and revokes its lease.
    tokio::time::sleep(SHUTDOWN_GRACE).await;
    if let Some(child) = etcd.as_mut() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    outcome
}

async fn bring_up(global: &Global, args: &UpArgs, shutdown: &CancellationToken) -> CliResult {
    let (store, keys) = connect(global).await?;
    let mut registry = Registry::default();
    let controller = Controller::new(
        store.clone(),
        keys.clone(),
        ControllerConfig::new("up-controller"),
        &mut registry,
    )
    .map_err(|error| CliError::failure(format!("controller: {error}")))?;
    tokio::spawn(controller.run(shutdown.clone()));
    let mut agent_config = AgentConfig::new(UP_NODE);
    agent_config.state_dir = args.state_dir.join("agent").join(UP_NODE);
    agent_config.publish_ip = "127.0.0.1".to_string();
    let agent = Agent::start(
        store.clone(),
        keys.clone(),
        agent_config,
        &mut registry,
        shutdown.clone(),
    )
    .await
    .map_err(|error| CliError::failure(format!("agent: {error}")))?;
    let handle = agent.handle();
    tokio::spawn(async move {
        if let Err(error) = agent.join().await {
            tracing::error!(%error, "agent stopped");
        }
    });
    tokio::time::timeout(READY_TIMEOUT, handle.wait_ready())
        .await
        .map_err(|_| CliError::failure("the local agent did not register in time"))?;
    eprintln!("controller and agent \"{UP_NODE}\" are running");

    super::apply::run(
        global,
        ApplyArgs {
            files: vec![args.file.clone()],
            dry_run: false,
        },
    )
    .await?;
    let tasks = drover_api::manifest::parse_many(&crate::input::read_sources(
        std::slice::from_ref(&args.file),
    )?)
    .map_err(|error| CliError::data(error.to_string()))?;
    let ports = wait_running(&store, &keys, &tasks).await?;
    get::run(global, list(Resource::Instances)).await?;
    if let Some(port) = ports.first() {
        let reply = echo(*port).await?;
        println!("\nPOST {ECHO_BODY} to 127.0.0.1:{port} answered: {reply}");
    }
    Ok(())
}

/// The node name of the agent `up` runs.
const UP_NODE: &str = "local";
/// How long `up` waits for the agent to register and the tasks to run.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// What `up` sends to the echo server.
const ECHO_BODY: &str = r#"{"Msg":"hi"}"#;

/// Waits until every instance of `tasks` runs; returns their published host ports.
async fn wait_running(store: &Store, keys: &Keys, tasks: &[Task]) -> CliResult<Vec<u16>> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let snapshot = Snapshot::read(store, keys).await?;
        let mut ports = Vec::new();
        let mut all = true;
        let mut problems = Vec::new();
        for task in tasks {
            let meta = &task.metadata;
            let views: Vec<_> = snapshot.instances_of(&meta.namespace, &meta.name).collect();
            let running = views.iter().filter(|v| v.is_running()).count();
            all &= running >= task.spec.replicas as usize;
            for view in views {
                if let Some(status) = &view.status {
                    ports.extend(status.ports.iter().map(|p| p.host_port));
                    if status.reason.is_some() {
                        problems.push(format!("{}: {}", status.id, status.display_status()));
                    }
                }
            }
        }
        if all {
            return Ok(ports);
        }
        if tokio::time::Instant::now() > deadline {
            let detail = if problems.is_empty() {
                String::new()
            } else {
                format!(": {}", problems.join("; "))
            };
            return Err(CliError::failure(format!(
                "the tasks did not reach Running within {READY_TIMEOUT:?}{detail}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// POSTs the echo body to the published port and returns the reply's body.
async fn echo(port: u16) -> CliResult<String> {
    let fail =
        |error: std::io::Error| CliError::failure(format!("echo request to port {port}: {error}"));
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(fail)?;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ECHO_BODY}",
        ECHO_BODY.len()
    );
    stream.write_all(request.as_bytes()).await.map_err(fail)?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .map_err(|_| CliError::failure(format!("echo request to port {port} timed out")))?
    .map_err(fail)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or(response))
}

fn list(resource: Resource) -> GetArgs {
    GetArgs {
        resource,
        name: None,
        namespace: "default".to_string(),
        all_namespaces: false,
        output: Format::Table,
        watch: false,
    }
}

/// Whether etcd already answers at the configured endpoints.
async fn reachable(global: &Global) -> bool {
    let mut config = drover_store::StoreConfig::new(global.etcd.iter().map(String::as_str));
    config.connect_timeout = Duration::from_secs(2);
    drover_store::Store::connect(config).await.is_ok()
}

/// Starts etcd on the first configured endpoint's port, its data under `state_dir/etcd`.
async fn start_etcd(global: &Global, state_dir: &Path) -> CliResult<Child> {
    let endpoint = global.etcd.first().cloned().unwrap_or_default();
    let url = if endpoint.contains("://") {
        endpoint.clone()
    } else {
        format!("http://{endpoint}")
    };
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .ok_or_else(|| CliError::usage(format!("--etcd {endpoint}: cannot tell the port")))?;
    let peer_port = port.checked_add(1).unwrap_or(2380);
    let data_dir = state_dir.join("etcd");
    std::fs::create_dir_all(state_dir)
        .map_err(|error| CliError::failure(format!("{}: {error}", state_dir.display())))?;
    let log = std::fs::File::create(state_dir.join("etcd.log"))
        .map_err(|error| CliError::failure(format!("{}: {error}", state_dir.display())))?;
    eprintln!("starting etcd at {url} (data in {})", data_dir.display());
    let child = Command::new("etcd")
        .arg("--name=drover-up")
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg("--logger=zap")
        .arg("--log-level=warn")
        .arg(format!("--listen-client-urls=http://127.0.0.1:{port}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{port}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
        ))
        .arg(format!(
            "--initial-cluster=drover-up=http://127.0.0.1:{peer_port}"
        ))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| {
            CliError::new(
                UNAVAILABLE,
                format!("cannot start etcd ({error}); run hack/install-deps.sh to install it"),
            )
        })?;
    let deadline = tokio::time::Instant::now() + ETCD_START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if reachable(global).await {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(CliError::new(
        UNAVAILABLE,
        format!(
            "etcd did not answer at {url} within {ETCD_START_TIMEOUT:?}; see {}",
            state_dir.join("etcd.log").display()
        ),
    ))
}
