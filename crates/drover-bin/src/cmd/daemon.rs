//! What the daemons (`controller`, `agent`, `up`) share: the process's one Prometheus
//! registry, the admin endpoint, and a shutdown token cancelled by SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use drover_cli::exit::{CliError, CliResult};
use drover_runtime::admin::{self, Readiness};
use drover_store::Store;

/// How often [`polled_readiness`] looks again.
const READINESS_POLL: Duration = Duration::from_millis(100);

/// The process's one registry (`drover_*`, with `drover_build_info`), with `store`'s
/// request metrics in it. Register every component of the process into this one.
pub fn process_registry(store: &Store) -> Registry {
    let mut registry = drover_runtime::process_registry(env!("CARGO_PKG_VERSION"));
    store.register_metrics(&mut registry);
    registry
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CliResult<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())
        .map_err(|error| CliError::failure(format!("cannot handle SIGTERM: {error}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|error| CliError::failure(format!("cannot handle SIGINT: {error}")))?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        cancel.cancel();
    });
    Ok(token)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` when given; returns the bound address.
pub async fn serve_admin(
    addr: Option<SocketAddr>,
    registry: Registry,
    ready: Readiness,
    shutdown: CancellationToken,
) -> CliResult<Option<SocketAddr>> {
    let Some(addr) = addr else { return Ok(None) };
    let bound = admin::serve(addr, Arc::new(registry), ready, shutdown)
        .await
        .map_err(|error| CliError::usage(format!("--metrics-addr {addr}: {error}")))?;
    tracing::info!(%bound, "serving /metrics, /healthz and /readyz");
    Ok(Some(bound))
}

/// A readiness channel fed by `update` whenever `source` changes.
pub fn readiness<T, F>(mut source: watch::Receiver<T>, update: F) -> Readiness
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> Result<(), String> + Send + 'static,
{
    let (tx, rx) = watch::channel(update(&source.borrow()));
    tokio::spawn(async move {
        while source.changed().await.is_ok() {
            let state = update(&source.borrow());
            if tx.send(state).is_err() {
                break;
            }
        }
    });
    rx
}

/// A readiness channel that follows `check`, looked at every [`READINESS_POLL`] until
/// `shutdown`: for states that change without a channel of their own to watch.
pub fn polled_readiness<F>(check: F, shutdown: CancellationToken) -> Readiness
where
    F: Fn() -> Result<(), String> + Send + 'static,
{
    let (tx, rx) = watch::channel(check());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(READINESS_POLL) => {}
            }
            let state = check();
            tx.send_if_modified(|old| {
                let changed = *old != state;
                *old = state;
                changed
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}
