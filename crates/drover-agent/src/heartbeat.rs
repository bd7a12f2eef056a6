//! Registration and heartbeat: the node key bound to a lease kept alive every TTL/6 (and
//! claimed only when no other agent holds the node name), fencing when keep-alives stop being
//! acknowledged or the first registration is late, and re-registration with a new lease once
//! etcd answers again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_api::keys::Keys;
use drover_api::node::Node;
use drover_store::{Cmp, KeepAlive, LeaseId, LeaseLost, Store, Txn};
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
    /// Another agent holds the node name: `nodes/<node>` is bound to a lease that is not this
    /// agent's (neither its current one nor the one its state dir recorded).
    #[error(
        "node name {node:?} is taken: nodes/{node} is bound to lease {other}, which is not this \
         agent's; is another agent running with --node {node}? Not registering (and running \
         nothing) until that lease is gone"
    )]
    Taken {
        /// The node.
        node: String,
        /// The lease the node key is bound to.
        other: LeaseId,
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
    /// Refused: another agent holds the node name on this lease ([`Error::Taken`]). Retrying.
    Refused(LeaseId),
}

/// Grants a lease of `ttl`, starts its keep-alive, then binds `nodes/<node>` to it, unless
/// another agent holds the node name.
///
/// `own`: leases this agent may take the node key over from — its previous registration in
/// this process, and the lease its state dir recorded (a restart of the same agent within the
/// TTL, as in a `--keep-running` upgrade).
///
/// `unconfirmed`: a registration whose binding txn was sent but whose reply was lost. Its lease
/// is still kept alive; this call first reads the node key back and, if the txn did land,
/// returns that registration instead of starting over. A binding txn that fails in transport
/// leaves its registration here, so the caller passes it to the next attempt.
///
/// # Guarantees
/// - When this returns `Ok`, a first keep-alive was acknowledged, so the keep-alive's
///   `last_ack_sent_at` is real, and the node key exists on the lease.
/// - The node key is written only if it is absent, bound to no lease, or bound to one of
///   `own`, checked and written in one txn (on its mod revision): two agents with the same node
///   name never both register; the second gets [`Error::Taken`].
/// - A lost reply never orphans the node key: while the outcome is unknown, the lease the key
///   may be bound to stays kept alive (in `unconfirmed`), so the node does not look dead to the
///   controller and this agent does not take its own registration for another agent's.
///
/// # Caveats
/// Two agents sharing one state dir look like one agent restarting and are not told apart.
/// A caller that drops `unconfirmed` (at shutdown) stops its keep-alive; the lease then
/// expires within its TTL.
pub async fn register(
    store: &Store,
    keys: &Keys,
    node: &Node,
    ttl: Duration,
    own: &[LeaseId],
    unconfirmed: &mut Option<Registration>,
) -> Result<Registration> {
    let err = |source| Error::Store {
        node: node.name.clone(),
        source,
    };
    let key = keys.node(&node.name);
    let current = store.get_raw(&key).await.map_err(err)?;
    let bound = current.as_ref().and_then(|v| v.lease);
    // Settle a registration whose reply was lost: it landed if the key is bound to its lease.
    let reuse = match unconfirmed.take() {
        Some(reg) if bound == Some(reg.lease) => {
            tracing::info!(node = %node.name, lease = %reg.lease, "the registration whose reply was lost had landed");
            return Ok(reg);
        }
        Some(reg) if reg.keep_alive.is_lost().is_none() => Some(reg),
        Some(reg) => {
            reg.keep_alive.stop();
            None
        }
        None => None,
    };
    let taken = |lease: Option<LeaseId>, mine: Option<LeaseId>| {
        lease
            .filter(|l| !own.contains(l) && Some(*l) != mine)
            .map(|other| Error::Taken {
                node: node.name.clone(),
                other,
            })
    };
    if let Some(e) = taken(bound, reuse.as_ref().map(|r| r.lease)) {
        if let Some(reg) = reuse {
            reg.keep_alive.stop();
            let _ = store.revoke(reg.lease).await;
        }
        return Err(e);
    }
    let reg = match reuse {
        Some(reg) => reg,
        None => {
            let lease = store.grant(ttl).await.map_err(err)?;
            let keep_alive = store.keep_alive(lease, ttl).await.map_err(err)?;
            Registration { lease, keep_alive }
        }
    };
    let lease = reg.lease;
    let txn = Txn::new()
        .when(Cmp::ModRevision(
            key.clone(),
            current.as_ref().map_or(0, |v| v.mod_revision),
        ))
        .put(key.clone(), node, Some(lease))
        .map_err(err)?;
    // From here until the outcome is known the registration lives in `unconfirmed`, so a
    // caller that drops this future mid-commit still holds the lease the key may be bound to.
    *unconfirmed = Some(reg);
    let outcome = match store.commit(txn, None).await {
        Ok(outcome) => outcome,
        // The txn may have landed: the next attempt reads the key back.
        Err(source) => return Err(err(source)),
    };
    let Some(Registration { lease, keep_alive }) = unconfirmed.take() else {
        return Err(Error::Taken {
            node: node.name.clone(),
            other: LeaseId(0),
        });
    };
    if !outcome.succeeded {
        // Someone wrote the key since we read it: give our lease back and look again later.
        keep_alive.stop();
        let _ = store.revoke(lease).await;
        let now = store.get_raw(&key).await.map_err(err)?;
        return Err(
            taken(now.and_then(|v| v.lease), None).unwrap_or(Error::Taken {
                node: node.name.clone(),
                other: LeaseId(0),
            }),
        );
    }
    Ok(Registration { lease, keep_alive })
}

/// How a node keeps its registration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The lease TTL.
    pub ttl: Duration,
    /// The self-fencing margin (see [`crate::fence`]).
    pub margin: Duration,
    /// When the agent process started. Until the first registration the clock of
    /// [`crate::fence::decide`] counts from here, as if a keep-alive had been acknowledged then.
    pub started: Instant,
    /// Where the node's lease is recorded across restarts (`<state_dir>/lease`), so a restarted
    /// agent may take its node key back while its previous lease lives ([`register`]'s `own`).
    /// `None` for hollow nodes.
    pub lease_file: Option<PathBuf>,
}

/// Keeps `node` registered until `shutdown`, fencing on keep-alive failure.
///
/// # Guarantees
/// - The node starts fenced: nothing new starts until the first registration succeeded.
/// - If that has not happened by `started + ttl/2`, what the agent adopted is fenced exactly
///   as after lost keep-alives, with the deadline `started + ttl - margin`.
///
/// # Caveats
/// Before its first registration the agent cannot know when the previous agent's lease was
/// last renewed; counting from process start is exact only for a restart (such as a
/// `--keep-running` upgrade) that follows the previous agent's last acknowledged keep-alive
/// immediately. A previous agent that was gone for a while may have left a lease that expired
/// before this process started; its instances were then already running unfenced and this
/// only bounds how much longer they run.
///
/// Returns the live registration at shutdown (for the caller to revoke), if any — also one
/// whose binding txn's outcome was still unknown.
///
/// The steps that are not waits (registering, fencing, unfencing) are boxed: this future lives
/// as long as its node, once per hollow node, so it should be no larger than its idle wait.
pub(crate) async fn maintain(
    engine: Arc<Engine>,
    node: Node,
    settings: Settings,
    state: watch::Sender<State>,
    shutdown: CancellationToken,
) -> Option<Registration> {
    let Settings {
        ttl,
        margin,
        started,
        lease_file,
    } = settings;
    // Leases whose node key this agent may take over: see `register`.
    let mut own: Vec<LeaseId> = lease_file
        .as_deref()
        .and_then(read_lease)
        .into_iter()
        .collect();
    let name = node.name.clone();
    let mut retry = Duration::from_millis(200);
    // A registration whose binding reply was lost, kept alive until a read settles it.
    let mut unconfirmed: Option<Registration> = None;
    // Until the first registration: when adopted instances must be fenced.
    let mut first_fence_at = Some(started + ttl / 2);
    loop {
        if first_fence_at.is_some_and(|at| Instant::now() >= at) {
            first_fence_at = None;
            if let Decision::Fence { deadline, expiry } =
                fence::decide(started, ttl, margin, false, Instant::now())
            {
                tracing::error!(node = %name, "not registered within TTL/2 of starting");
                state.send_replace(State::Fenced);
                Box::pin(engine.fence(&name, deadline, expiry)).await;
            }
        }
        state.send_replace(State::Registering);
        let wake = first_fence_at.unwrap_or_else(|| Instant::now() + ttl * 1000);
        let reg = tokio::select! {
            () = shutdown.cancelled() => return unconfirmed.take(),
            r = Box::pin(register(engine.store(), engine.keys(), &node, ttl, &own, &mut unconfirmed)) => r,
            () = tokio::time::sleep_until(wake) => continue,
        };
        let reg = match reg {
            Ok(reg) => reg,
            Err(e) => {
                if let Some(reg) = &unconfirmed {
                    // Should this attempt be cancelled midway, the next may still rebind it.
                    if !own.contains(&reg.lease) {
                        own.push(reg.lease);
                    }
                }
                if let Error::Taken { other, .. } = e {
                    state.send_replace(State::Refused(other));
                    tracing::error!(node = %name, error = %e, ?retry, "registration refused; retrying");
                } else {
                    tracing::warn!(node = %name, error = %e, ?retry, "registration failed; retrying");
                }
                tokio::select! {
                    () = shutdown.cancelled() => return unconfirmed.take(),
                    () = tokio::time::sleep(retry) => {}
                    () = tokio::time::sleep_until(wake) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        first_fence_at = None;
        own = vec![reg.lease];
        if let Some(path) = &lease_file {
            if let Err(e) = Box::pin(write_lease(path, reg.lease)).await {
                tracing::warn!(node = %name, path = %path.display(), error = %e, "cannot record the lease; a restart within the TTL will be refused until it expires");
            }
        }
        retry = Duration::from_millis(200);
        engine.metrics().registrations.inc();
        tracing::info!(node = %name, lease = %reg.lease, ?ttl, "registered");
        state.send_replace(State::Registered(reg.lease));
        Box::pin(engine.unfence(&name)).await;
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
                    Box::pin(engine.fence(&name, deadline, expiry)).await;
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

/// The lease recorded in `path`, if it holds one.
fn read_lease(path: &Path) -> Option<LeaseId> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok().map(LeaseId)
}

/// Records `lease` in `path` (written aside, then renamed into place).
async fn write_lease(path: &Path, lease: LeaseId) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::write(&tmp, format!("{}\n", lease.0)).await?;
    tokio::fs::rename(&tmp, path).await
}
