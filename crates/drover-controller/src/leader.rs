//! The replica loop: campaign for leadership, lead (run the reconciler) while the fence holds,
//! stop at once when it does not, resign on shutdown. Each replica advertises itself under
//! `controllers/<id>` on its election lease.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use drover_api::Keys;
use drover_store::{Election, KeepAlive, Leadership, LeaseId, Store};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{ConfigError, ControllerConfig};
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::reconcile::{self, AbortOnDrop, Term};
use drover_api::records::ControllerInfo;

/// Bound on each shutdown-path etcd call (resign, revoke), so shutdown never hangs.
const SHUTDOWN_CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid controller config: {0}")]
    Config(#[from] ConfigError),
}

impl Error {
    /// Never: a bad configuration stays bad.
    #[must_use]
    pub fn retryable(&self) -> bool {
        false
    }
}

/// What `/healthz` and `/readyz` need to know, published on every change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControllerStatus {
    /// The replica holds a lease and is a candidate (or the leader).
    pub campaigning: bool,
    /// The replica leads.
    pub leader: bool,
    /// As leader: its snapshot is listed and its first plan committed.
    pub synced: bool,
}

impl ControllerStatus {
    /// Ready to serve its role: a standby is ready while it campaigns, a leader once synced.
    #[must_use]
    pub fn ready(&self) -> bool {
        self.campaigning && (!self.leader || self.synced)
    }
}

/// One controller replica.
#[derive(Debug)]
pub struct Controller {
    store: Store,
    keys: Keys,
    config: ControllerConfig,
    metrics: Metrics,
    status: watch::Sender<ControllerStatus>,
    /// The mirror of etcd every term plans from, kept while standing by too.
    mirror: Arc<Mirror>,
}

enum TermEnd {
    Shutdown,
    Lost,
}

impl Controller {
    /// Validates `config` and registers the metrics in `registry`.
    pub fn new(
        store: Store,
        keys: Keys,
        config: ControllerConfig,
        registry: &mut Registry,
    ) -> Result<Self, Error> {
        Self::with_metrics(store, keys, config, Metrics::register(registry))
    }

    /// Like [`Controller::new`] with already registered (or unregistered) metrics.
    pub fn with_metrics(
        store: Store,
        keys: Keys,
        config: ControllerConfig,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        config.validate()?;
        let mirror = Mirror::new(keys.clone(), config.debounce);
        Ok(Self {
            mirror,
            store,
            keys,
            config,
            metrics,
            status: watch::channel(ControllerStatus::default()).0,
        })
    }

    /// A live view of this replica's status (for `/readyz` and tests).
    #[must_use]
    pub fn status(&self) -> watch::Receiver<ControllerStatus> {
        self.status.subscribe()
    }

    /// What the web view of this replica reads ([`crate::web::serve`]): its mirror, id and role.
    #[must_use]
    pub fn web_source(&self) -> crate::web::WebSource {
        crate::web::WebSource::new(
            self.mirror.clone(),
            self.keys.clone(),
            self.config.id.clone(),
            self.status.subscribe(),
        )
    }

    /// Campaigns, leads and campaigns again until `shutdown` is cancelled.
    ///
    /// # Guarantees
    ///
    /// - Only while this replica is elected does it plan and write, and every write carries the
    ///   election fence: a paused or partitioned ex-leader's writes are rejected by etcd.
    /// - When leadership is lost (the key is gone, the lease cannot be renewed, or a write is
    ///   fenced) the reconciler is cancelled at once and the replica campaigns again.
    /// - On shutdown a leader resigns, so a standby takes over without waiting for the TTL, and
    ///   the replica's lease is revoked (its `controllers/<id>` key disappears).
    ///
    /// # Caveats
    ///
    /// etcd failures are retried forever (after `campaign_backoff`), so this returns only on
    /// shutdown. A replica paused longer than the lease TTL finds itself deposed on resuming.
    pub async fn run(self, shutdown: CancellationToken) {
        let election = Election::new(self.store.clone(), self.keys.election());
        let span = tracing::info_span!("controller", id = %self.config.id);
        let mirrored = shutdown.child_token();
        let _mirror = AbortOnDrop(tokio::spawn(
            self.mirror
                .clone()
                .run(self.store.clone(), mirrored.clone())
                .instrument(span.clone()),
        ));
        async {
            while !shutdown.is_cancelled() {
                match self.term(&election, &shutdown).await {
                    Ok(TermEnd::Shutdown) => break,
                    Ok(TermEnd::Lost) => {}
                    Err(error) => tracing::warn!(%error, "campaign failed; retrying"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.config.campaign_backoff) => {}
                }
            }
            self.status.send_replace(ControllerStatus::default());
            tracing::info!("controller stopped");
        }
        .instrument(span)
        .await;
    }

    fn info(&self, leader: bool) -> ControllerInfo {
        ControllerInfo {
            id: self.config.id.clone(),
            leader,
            since: Utc::now(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    async fn advertise(&self, lease: LeaseId, leader: bool) -> drover_store::Result<()> {
        let key = self.keys.controller(&self.config.id);
        self.store
            .put(&key, &self.info(leader), Some(lease))
            .await
            .map(|_| ())
    }

    async fn revoke(&self, keepalive: KeepAlive) {
        let id = keepalive.id();
        keepalive.stop();
        match tokio::time::timeout(SHUTDOWN_CALL_TIMEOUT, self.store.revoke(id)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "lease revoke failed; it expires by itself"),
            Err(_) => tracing::debug!("lease revoke timed out; it expires by itself"),
        }
    }

    /// One lease: campaign, then lead until the leadership ends.
    async fn term(
        &self,
        election: &Election,
        shutdown: &CancellationToken,
    ) -> drover_store::Result<TermEnd> {
        let lease = self.store.grant(self.config.lease_ttl).await?;
        let keepalive = match self.store.keep_alive(lease, self.config.lease_ttl).await {
            Ok(k) => k,
            Err(e) => {
                let _ = tokio::time::timeout(SHUTDOWN_CALL_TIMEOUT, self.store.revoke(lease)).await;
                return Err(e);
            }
        };
        if let Err(e) = self.advertise(lease, false).await {
            self.revoke(keepalive).await;
            return Err(e);
        }
        self.status.send_replace(ControllerStatus {
            campaigning: true,
            ..ControllerStatus::default()
        });
        tracing::debug!(lease = %lease, "campaigning");
        let leadership = tokio::select! {
            r = election.campaign(&self.config.id, lease) => match r {
                Ok(l) => l,
                Err(e) => {
                    self.revoke(keepalive).await;
                    return Err(e);
                }
            },
            lost = keepalive.lost() => {
                tracing::warn!(?lost, "election lease lost while campaigning");
                self.revoke(keepalive).await;
                return Ok(TermEnd::Lost);
            }
            () = shutdown.cancelled() => {
                self.revoke(keepalive).await;
                return Ok(TermEnd::Shutdown);
            }
        };
        let end = self.lead(leadership, &keepalive, lease, shutdown).await;
        self.revoke(keepalive).await;
        Ok(end)
    }

    async fn lead(
        &self,
        leadership: Leadership,
        keepalive: &KeepAlive,
        lease: LeaseId,
        shutdown: &CancellationToken,
    ) -> TermEnd {
        let fence = leadership.fence().clone();
        tracing::info!(fence_revision = fence.create_revision, "elected leader");
        self.metrics.is_leader.set(1);
        self.status.send_replace(ControllerStatus {
            campaigning: true,
            leader: true,
            synced: false,
        });
        if let Err(error) = self.advertise(lease, true).await {
            tracing::warn!(%error, "could not advertise leadership");
        }
        let term = Term::new(
            self.store.clone(),
            self.keys.clone(),
            self.config.clone(),
            fence,
            self.metrics.clone(),
            self.status.clone(),
            self.mirror.clone(),
        );
        let cancel = CancellationToken::new();
        let mut work = AbortOnDrop(tokio::spawn(
            reconcile::lead(term, cancel.clone()).in_current_span(),
        ));
        let end = tokio::select! {
            () = leadership.lost() => {
                tracing::warn!("leader key gone; stepping down");
                TermEnd::Lost
            }
            lost = keepalive.lost() => {
                tracing::warn!(?lost, "election lease lost; stepping down");
                TermEnd::Lost
            }
            r = &mut work.0 => {
                match r {
                    Ok(Err(error)) => tracing::warn!(%error, "stepping down"),
                    Ok(Ok(())) => tracing::warn!("reconciler ended; stepping down"),
                    Err(error) => tracing::error!(%error, "reconciler task failed; stepping down"),
                }
                TermEnd::Lost
            }
            () = shutdown.cancelled() => TermEnd::Shutdown,
        };
        // Stop writing at once: no in-flight plan is allowed to finish.
        cancel.cancel();
        drop(work);
        self.metrics.is_leader.set(0);
        self.metrics.pending.set(0);
        self.status.send_replace(ControllerStatus::default());
        if matches!(end, TermEnd::Shutdown) {
            match tokio::time::timeout(SHUTDOWN_CALL_TIMEOUT, leadership.resign()).await {
                Ok(Ok(())) => tracing::info!("resigned leadership"),
                Ok(Err(error)) => tracing::warn!(%error, "resign failed; the lease revoke ends it"),
                Err(_) => tracing::warn!("resign timed out; the lease revoke ends it"),
            }
        }
        end
    }
}
