//! Registration and heartbeat: the node key bound to a lease kept alive every TTL/3, fencing
//! when keep-alives stop being acknowledged, and re-registration with a new lease once etcd
//! answers again.

use std::sync::Arc;
use std::time::Duration;

use drover_api::keys::Keys;
use drover_api::node::Node;
use drover_store::{KeepAlive, LeaseId, LeaseLost, Store};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::converge::Engine;
use crate::fence::{self, Decision};

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Registering failed; the heartbeat loop retries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A lease grant, keep-alive or node put failed.
    #[error("registering node {node}: {source}")]
    Store {
        /// The node.
        node: String,
        /// The store's error.
        #[source]
        source: drover_store::Error,
    },
}

/// A live registration: the lease and its keep-alive loop.
#[derive(Debug)]
pub struct Registration {
    /// The lease the node key is bound to.
    pub lease: LeaseId,
    /// The keep-alive loop (dropping it stops keep-alives; the lease then expires).
    pub keep_alive: KeepAlive,
}

/// The heartbeat's state, published for readiness and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not registered yet (or re-registering after a loss).
    Registering,
    /// Registered with this lease.
    Registered(LeaseId),
    /// Fencing: keep-alives failed; instances are being (or were) stopped.
    Fenced,
}

/// Grants a lease of `ttl`, starts its keep-alive, then puts `nodes/<node>` bound to it.
///
/// # Guarantees
/// When this returns, a first keep-alive was acknowledged, so the keep-alive's
/// `last_ack_sent_at` is real, and the node key exists on the lease.
pub async fn register(
    store: &Store,
    keys: &Keys,
    node: &Node,
    ttl: Duration,
) -> Result<Registration> {
    let err = |source| Error::Store {
        node: node.name.clone(),
        source,
    };
    let lease = store.grant(ttl).await.map_err(err)?;
    let keep_alive = store.keep_alive(lease, ttl).await.map_err(err)?;
    store
        .put(&keys.node(&node.name), node, Some(lease))
        .await
        .map_err(err)?;
    Ok(Registration { lease, keep_alive })
}

/// Keeps `node` registered until `shutdown`, fencing on keep-alive failure.
///
/// Returns the live registration at shutdown (for the caller to revoke), if any.
pub(crate) async fn maintain(
    engine: Arc<Engine>,
    node: Node,
    ttl: Duration,
    margin: Duration,
    state: watch::Sender<State>,
    shutdown: CancellationToken,
) -> Option<Registration> {
    let name = node.name.clone();
    let mut retry = Duration::from_millis(200);
    loop {
        state.send_replace(State::Registering);
        let reg = tokio::select! {
            () = shutdown.cancelled() => return None,
            r = register(&engine.store, &engine.keys, &node, ttl) => r,
        };
        let reg = match reg {
            Ok(reg) => reg,
            Err(e) => {
                tracing::warn!(node = %name, error = %e, ?retry, "registration failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        retry = Duration::from_millis(200);
        engine.metrics.registrations.inc();
        tracing::info!(node = %name, lease = %reg.lease, ?ttl, "registered");
        state.send_replace(State::Registered(reg.lease));
        engine.unfence(&name).await;
        loop {
            let gone = reg.keep_alive.is_lost() == Some(LeaseLost::NotFound);
            match fence::decide(
                reg.keep_alive.last_ack_sent_at(),
                ttl,
                margin,
                gone,
                Instant::now(),
            ) {
                Decision::Healthy { recheck_at } => {
                    tokio::select! {
                        () = shutdown.cancelled() => return Some(reg),
                        () = tokio::time::sleep_until(recheck_at) => {}
                        _ = reg.keep_alive.lost() => {}
                    }
                }
                Decision::Fence { deadline, expiry } => {
                    state.send_replace(State::Fenced);
                    engine.fence(&name, deadline, expiry).await;
                    break;
                }
            }
        }
        // Wait until the old lease is surely lost (by its deadline at the latest) or etcd
        // acknowledges a keep-alive again, then start over with a new lease. The old lease is
        // not revoked: the new registration's put rebinds the node key.
        let fenced_at = reg.keep_alive.last_ack_sent_at();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                _ = reg.keep_alive.lost() => break,
                () = tokio::time::sleep(ttl / 10) => {
                    if reg.keep_alive.last_ack_sent_at() > fenced_at {
                        break;
                    }
                }
            }
        }
        drop(reg);
    }
}
