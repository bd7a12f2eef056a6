//! `drover up`: a whole local cluster in one command. Uses the etcd at `--etcd` when one answers
//! there, otherwise starts `etcd` from PATH with its data under `--state-dir`; runs one
//! controller and one agent (docker where the daemon answers, processes otherwise) in this
//! process; serves their metrics (one registry) with `/healthz` and `/readyz` on
//! `--metrics-addr` and prints where; applies the example manifest, waits until its instances
//! run, lists them, and sends the echo request to the first published port.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use drover_agent::{Agent, AgentConfig, AgentHandle};
use drover_api::keys::Keys;
use drover_api::task::Task;
use drover_controller::{Controller, ControllerConfig};
use drover_store::Store;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::daemon::{polled_readiness, process_registry, serve_admin};
use crate::cli::UpArgs;
use drover_cli::cli::{GetArgs, Global, Resource};
use drover_cli::cmd::snapshot;
use drover_cli::cmd::{connect, get, store_config};
use drover_cli::exit::{CliError, CliResult, UNAVAILABLE};
use drover_cli::input::Source;

/// How long `up` waits, on the way out, for the agent to stop its instances (each within its
/// own grace period) and for the controller to resign. A bound, not a sleep: `up` goes on as
/// soon as both have finished.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a freshly started etcd may take to answer.
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(20);

/// The manifest `up` applies without `-f`: built into the binary, so `up` runs from any
/// directory, not only a checkout.
const EXAMPLE: &str = include_str!("../../../../manifests/examples/echo.yaml");
/// The name errors give the built-in example.
const EXAMPLE_NAME: &str = "<built-in manifests/examples/echo.yaml>";

/// The background parts `up` started in this process, so it can wait for each to finish.
#[derive(Default)]
struct Running {
    controller: Option<tokio::task::JoinHandle<()>>,
    agent: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Waits until the agent has stopped its instances and released its lease, then until the
    /// controller has resigned; bounded by [`SHUTDOWN_TIMEOUT`].
    async fn finish(self) {
        let wait = async {
            if let Some(agent) = self.agent {
                let _ = agent.await;
            }
            if let Some(controller) = self.controller {
                let _ = controller.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, wait).await.is_err() {
            eprintln!("the agent or controller did not stop within {SHUTDOWN_TIMEOUT:?}");
        }
    }
}

pub async fn run(global: &Global, args: UpArgs) -> CliResult {
    // Bad input is refused before anything is started.
    let sources = match &args.file {
        Some(path) => drover_cli::input::read_sources(std::slice::from_ref(path))?,
        None => vec![(EXAMPLE_NAME.to_string(), EXAMPLE.to_string())],
    };
    let tasks = drover_api::manifest::parse_many(&sources)
        .map_err(|error| CliError::data(error.to_string()))?;
    check_images(&tasks).await?;
    let mut etcd = match reachable(global).await? {
        true => {
            eprintln!(
                "using the etcd that answers at {}",
                global.endpoints().join(",")
            );
            None
        }
        false if global.access.is_set() => {
            return Err(CliError::new(
                UNAVAILABLE,
                format!(
                    "no etcd answers at {} with the TLS or user flags given, and `drover up` \
                     starts only a plain local etcd; start a TLS one with \
                     `hack/etcd.sh start --tls` and pass the flags it prints",
                    global.endpoints().join(",")
                ),
            ))
        }
        false => Some(start_etcd(global, &args.state_dir).await?),
    };
    let shutdown = CancellationToken::new();
    let mut running = Running::default();
    let outcome = tokio::select! {
        outcome = bring_up(global, &args, &sources, &tasks, &shutdown, &mut running) => outcome,
        () = interrupted() => Err(CliError::failure("interrupted")),
    };
    if outcome.is_ok() && !args.exit {
        eprintln!("drover is up; press Ctrl-C to stop");
        interrupted().await;
    }
    eprintln!("stopping the agent, the controller and etcd");
    shutdown.cancel();
    running.finish().await;
    if let Some(child) = etcd.as_mut() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    outcome
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Where Docker answers, every image the tasks name must be in the local engine: no registry
/// is reachable, so a missing one would only end as ImageNotFound after the wait.
async fn check_images(tasks: &[Task]) -> CliResult {
    let Ok(docker) = drover_agent::driver::docker::DockerDriver::connect().await else {
        return Ok(());
    };
    for task in tasks {
        let Some(image) = &task.spec.image else {
            continue;
        };
        match docker.has_image(image).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(CliError::failure(format!(
                    "task {}: image {image} is not in the local Docker engine, and Drover never \
                     pulls; build it with hack/build-images.sh in a Drover checkout \
                     (hack/up.sh does that for you)",
                    task.metadata.name
                )))
            }
            Err(error) => {
                return Err(CliError::failure(format!(
                    "task {}: cannot inspect image {image}: {error}",
                    task.metadata.name
                )))
            }
        }
    }
    Ok(())
}

async fn bring_up(
    global: &Global,
    args: &UpArgs,
    sources: &[Source],
    tasks: &[Task],
    shutdown: &CancellationToken,
    running: &mut Running,
) -> CliResult {
    let (store, keys) = connect(global).await?;
    let mut registry = process_registry(&store);
    let controller = Controller::new(
        store.clone(),
        keys.clone(),
        ControllerConfig::new("up-controller"),
        &mut registry,
    )
    .map_err(|error| CliError::failure(format!("controller: {error}")))?;
    if !args.no_web {
        // The view is a convenience: a taken port costs the view, not the cluster.
        match drover_controller::web::serve(
            args.web_addr,
            controller.web_source(),
            shutdown.clone(),
        )
        .await
        {
            Ok(bound) => eprintln!("web view: http://{bound}/"),
            Err(error) => eprintln!(
                "no web view: {error} (--web-addr to pick another, --no-web to turn it off)"
            ),
        }
    }
    let controller_status = controller.status();
    running.controller = Some(tokio::spawn(controller.run(shutdown.clone())));
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
    running.agent = Some(tokio::spawn(async move {
        if let Err(error) = agent.join().await {
            tracing::error!(%error, "agent stopped");
        }
    }));
    let watched = handle.clone();
    let ready = polled_readiness(
        move || {
            if !controller_status.borrow().ready() {
                return Err("controller: not leading and synced yet".to_string());
            }
            watched
                .readiness()
                .map_err(|why| format!("agent {UP_NODE}: {why}"))
        },
        shutdown.clone(),
    );
    let served = serve_admin(Some(args.metrics_addr), registry, ready, shutdown.clone()).await?;
    if let Some(bound) = served {
        eprintln!("metrics at http://{bound}/metrics (health: /healthz, readiness: /readyz)");
    }
    tokio::time::timeout(READY_TIMEOUT, handle.wait_ready())
        .await
        .map_err(|_| CliError::failure("the local agent did not register in time"))?;
    eprintln!("controller and agent \"{UP_NODE}\" are running");

    drover_cli::cmd::apply::apply_sources(global, sources, false).await?;
    let ports = wait_running(&store, &keys, tasks, &handle).await?;
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
///
/// A status key may still say Running from an earlier `up` that was killed before it could
/// write the final status, so the local agent must also be running that many copies itself.
async fn wait_running(
    store: &Store,
    keys: &Keys,
    tasks: &[Task],
    agent: &AgentHandle,
) -> CliResult<Vec<u16>> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let desired: usize = tasks.iter().map(|t| t.spec.replicas as usize).sum();
    loop {
        let snapshot = snapshot::read(store, keys).await?;
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
        if all && agent.running() >= desired {
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

/// How long `up` keeps sending the echo request while the workload, already Running, may not
/// listen yet (Docker's proxy accepts on the published port and closes the connection until
/// the server inside answers).
const ECHO_TIMEOUT: Duration = Duration::from_secs(20);

/// POSTs the echo body to the published port and returns the reply's body, retrying while the
/// connection is refused or closed without an answer, for at most [`ECHO_TIMEOUT`].
async fn echo(port: u16) -> CliResult<String> {
    use drover_runtime::http::{self, Error};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + ECHO_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let sent = http::post(addr, "/", "application/json", ECHO_BODY, left).await;
        match sent {
            Ok(reply) => return Ok(String::from_utf8_lossy(&reply.body).into_owned()),
            Err(Error::Connect(_) | Error::Protocol(_)) if !left.is_zero() => {
                tokio::time::sleep(Duration::from_millis(200).min(left)).await;
            }
            Err(error) => {
                return Err(CliError::failure(format!(
                    "echo request to port {port}: {error}"
                )))
            }
        }
    }
}

fn list(resource: Resource) -> GetArgs {
    GetArgs::new(resource)
}

/// Whether etcd already answers at the configured endpoints, reached as the global flags say
/// (TLS, user). Flags that do not fit together are an error, not "unreachable".
async fn reachable(global: &Global) -> CliResult<bool> {
    let mut config = store_config(global)?;
    config.connect_timeout = Duration::from_secs(2);
    Ok(drover_store::Store::connect(config).await.is_ok())
}

/// Starts etcd on the first configured endpoint's port, its data under `state_dir/etcd`.
async fn start_etcd(global: &Global, state_dir: &Path) -> CliResult<Child> {
    let endpoint = global.endpoints().first().cloned().unwrap_or_default();
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
        .args(drover_store::ETCD_SERVER_FLAGS)
        // History stays bounded on a cluster left running: compact what is over an hour old.
        .arg("--auto-compaction-mode=periodic")
        .arg("--auto-compaction-retention=1h")
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
        if reachable(global).await? {
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
