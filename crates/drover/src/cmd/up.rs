//! `drover up`: a whole local cluster in one command. Uses the etcd at `--etcd` when one answers
//! there, otherwise starts `etcd` from PATH with its data under `--state-dir`; then applies the
//! example manifest and shows what runs.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::get;
use crate::cli::{ApplyArgs, GetArgs, Global, Resource, UpArgs};
use crate::exit::{CliError, CliResult, UNAVAILABLE};
use crate::output::Format;

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
    let outcome = bring_up(global, &args).await;
    if outcome.is_ok() && !args.exit {
        eprintln!("drover is up; press Ctrl-C to stop");
        let _ = tokio::signal::ctrl_c().await;
    }
    if let Some(child) = etcd.as_mut() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    outcome
}

async fn bring_up(global: &Global, args: &UpArgs) -> CliResult {
    super::apply::run(
        global,
        ApplyArgs { files: vec![args.file.clone()], dry_run: false },
    )
    .await?;
    get::run(global, list(Resource::Tasks)).await
}

fn list(resource: Resource) -> GetArgs {
    GetArgs {
        resource,
        name: None,
        namespace: "default".to_string(),
        all_namespaces: true,
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
    let url = if endpoint.contains("://") { endpoint.clone() } else { format!("http://{endpoint}") };
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
        .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"))
        .arg(format!("--initial-cluster=drover-up=http://127.0.0.1:{peer_port}"))
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
