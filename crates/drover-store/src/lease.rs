//! Leases: grant, revoke, and a keep-alive loop that reports loss and the send time of the
//! last acknowledged ping.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{classify, Class, Error, Result};
use crate::pool::Idempotency;
use crate::store::Store;

/// An etcd lease id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub i64);

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// Why a kept-alive lease is considered gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseLost {
    /// etcd answered that the lease does not exist (revoked, or expired server-side).
    NotFound,
    /// No ping was acknowledged before `last_ack_sent_at + ttl`: the lease may have expired.
    Deadline,
}

impl Store {
    /// Grants a lease of `ttl` (rounded up to whole seconds, at least 1). Retried on transport
    /// errors (an extra lease from a retried grant just expires unused).
    ///
    /// # Caveats
    ///
    /// etcd raises TTLs below its minimum (about 1.5 × the election timeout, 2 s by default).
    pub async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        let mut backoff = self.backoff();
        let resp = self
            .inner
            .pool
            .call(
                "lease_grant",
                Idempotency::Idempotent,
                self.request_timeout(),
                &mut backoff,
                |mut c| async move { c.lease_grant(secs, None).await },
            )
            .await?;
        Ok(LeaseId(resp.id()))
    }

    /// Revokes a lease, deleting every key attached to it. A lease that is already gone is
    /// not an error.
    pub async fn revoke(&self, id: LeaseId) -> Result<()> {
        let mut backoff = self.backoff();
        let res = self
            .inner
            .pool
            .call(
                "lease_revoke",
                Idempotency::Idempotent,
                self.request_timeout(),
                &mut backoff,
                |mut c| async move { c.lease_revoke(id.0).await },
            )
            .await;
        match res {
            Ok(_) | Err(Error::LeaseNotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The remaining time to live of a lease as etcd sees it, `None` when it is gone.
    pub async fn lease_ttl(&self, id: LeaseId) -> Result<Option<Duration>> {
        let mut backoff = self.backoff();
        let resp = self
            .inner
            .pool
            .call(
                "lease_ttl",
                Idempotency::Idempotent,
                self.request_timeout(),
                &mut backoff,
                |mut c| async move { c.lease_time_to_live(id.0, None).await },
            )
            .await;
        match resp {
            Ok(r) if r.ttl() > 0 => Ok(Some(Duration::from_secs(r.ttl().unsigned_abs()))),
            Ok(_) | Err(Error::LeaseNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keeps lease `id` (granted with `ttl`) alive by pinging every `ttl / 3` from a background
    /// task, after one first acknowledged ping.
    ///
    /// # Guarantees
    ///
    /// - Returns only after a first ping was acknowledged, so
    ///   [`last_ack_sent_at`](KeepAlive::last_ack_sent_at) is real from the start; a lease that
    ///   is already gone is [`Error::LeaseNotFound`].
    /// - [`KeepAlive::lost`] resolves when etcd says the lease is gone (within one ping
    ///   interval of a revoke, plus a round trip), or when no ping was acknowledged before
    ///   `last_ack_sent_at + ttl`. Once lost, it stays lost and the loop ends.
    /// - Transport failures switch endpoints and retry until that deadline.
    ///
    /// # Caveats
    ///
    /// The server's expiry is at least `last_ack_sent_at + ttl` (the server renews when it
    /// receives the ping, after it was sent), so fencing decisions should count from
    /// `last_ack_sent_at`, not from when the reply arrived. Pass the TTL the lease was granted
    /// with; etcd may have raised a small one, which only makes the deadline conservative.
    pub async fn keep_alive(&self, id: LeaseId, ttl: Duration) -> Result<KeepAlive> {
        let interval = (ttl / 3).max(Duration::from_millis(100));
        // Try the live endpoints in turn until one acknowledges, within the request timeout.
        let give_up = Instant::now() + self.request_timeout();
        let mut backoff = self.backoff();
        let (sent, conn) = loop {
            let sent = Instant::now();
            let attempt = tokio::time::timeout_at(give_up, self.open_keeper(id)).await;
            match attempt {
                Ok(Ok(conn)) => break (sent, conn),
                Ok(Err(e @ Error::Unavailable { .. })) => match backoff.next_wait() {
                    Some(wait) if Instant::now() + wait < give_up => tokio::time::sleep(wait).await,
                    _ => return Err(e),
                },
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(Error::Unavailable {
                        op: "lease_keep_alive",
                        endpoint: self.inner.pool.pick().url,
                        reason: format!("no answer within {:?}", self.request_timeout()),
                    })
                }
            }
        };
        let shared = Arc::new(Shared {
            last_ack_sent_at: Mutex::new(sent),
        });
        let (lost_tx, lost_rx) = watch::channel(None);
        let task = tokio::spawn(keep_alive_loop(
            self.clone(),
            id,
            ttl,
            interval,
            Some(conn),
            shared.clone(),
            lost_tx,
        ));
        Ok(KeepAlive {
            id,
            ttl,
            interval,
            monitor: LeaseMonitor {
                shared,
                lost: lost_rx,
            },
            task,
        })
    }

    /// Opens a keep-alive stream on a live endpoint; etcd-client sends a first ping and waits
    /// for its answer.
    async fn open_keeper(&self, id: LeaseId) -> Result<(LeaseKeeper, LeaseKeepAliveStream)> {
        let p = self.inner.pool.pick();
        let mut client = p.client.clone();
        match client.lease_keep_alive(id.0).await {
            Ok(conn) => {
                self.inner.pool.mark_alive(p.index);
                Ok(conn)
            }
            Err(e) => match classify(&e) {
                Class::LeaseNotFound => Err(Error::LeaseNotFound { id: id.0 }),
                Class::EndpointDown => {
                    self.inner.pool.mark_dead(p.index, &e.to_string()).await;
                    Err(Error::Unavailable {
                        op: "lease_keep_alive",
                        endpoint: p.url,
                        reason: e.to_string(),
                    })
                }
                _ => Err(Error::Unavailable {
                    op: "lease_keep_alive",
                    endpoint: p.url,
                    reason: e.to_string(),
                }),
            },
        }
    }
}

struct Shared {
    last_ack_sent_at: Mutex<Instant>,
}

impl Shared {
    fn last(&self) -> Instant {
        *self
            .last_ack_sent_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn acked(&self, sent: Instant) {
        let mut last = self
            .last_ack_sent_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if sent > *last {
            *last = sent;
        }
    }
}

/// A running keep-alive loop. Dropping it (or [`stop`](Self::stop)) ends the loop; the lease
/// then expires on its own unless revoked.
pub struct KeepAlive {
    id: LeaseId,
    ttl: Duration,
    interval: Duration,
    monitor: LeaseMonitor,
    task: JoinHandle<()>,
}

impl KeepAlive {
    /// The lease kept alive.
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// The TTL the loop assumes.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Time between pings (`ttl / 3`).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When the last acknowledged ping was *sent* (see [`Store::keep_alive`]).
    pub fn last_ack_sent_at(&self) -> Instant {
        self.monitor.last_ack_sent_at()
    }

    /// `Some(reason)` once the lease is considered lost.
    pub fn is_lost(&self) -> Option<LeaseLost> {
        self.monitor.is_lost()
    }

    /// Resolves when the lease is lost (immediately if it already is).
    pub async fn lost(&self) -> LeaseLost {
        self.monitor.lost().await
    }

    /// A cloneable view of this loop's state, for tasks that must react to the loss.
    pub fn monitor(&self) -> LeaseMonitor {
        self.monitor.clone()
    }

    /// Ends the loop without revoking the lease.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepAlive")
            .field("id", &self.id)
            .field("ttl", &self.ttl)
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// A cloneable view of a [`KeepAlive`]: loss and the last acknowledged send time.
///
/// # Caveats
///
/// When the `KeepAlive` is dropped, the monitor's `lost()` never resolves by itself (nobody
/// pings any more); the lease still expires server-side.
#[derive(Clone)]
pub struct LeaseMonitor {
    shared: Arc<Shared>,
    lost: watch::Receiver<Option<LeaseLost>>,
}

impl LeaseMonitor {
    /// When the last acknowledged ping was sent.
    pub fn last_ack_sent_at(&self) -> Instant {
        self.shared.last()
    }

    /// `Some(reason)` once the lease is considered lost.
    pub fn is_lost(&self) -> Option<LeaseLost> {
        *self.lost.borrow()
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&self) -> LeaseLost {
        let mut rx = self.lost.clone();
        loop {
            if let Some(reason) = *rx.borrow_and_update() {
                return reason;
            }
            if rx.changed().await.is_err() {
                // The loop ended without a verdict (stopped): wait forever, as documented.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl std::fmt::Debug for LeaseMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseMonitor")
            .field("lost", &self.is_lost())
            .finish()
    }
}

async fn keep_alive_loop(
    store: Store,
    id: LeaseId,
    ttl: Duration,
    interval: Duration,
    mut conn: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    shared: Arc<Shared>,
    lost: watch::Sender<Option<LeaseLost>>,
) {
    let mut backoff = store.backoff();
    let mut next_ping = Instant::now() + interval;
    loop {
        let deadline = shared.last() + ttl;
        if Instant::now() >= deadline {
            tracing::warn!(lease = %id, "no keep-alive acknowledged within the TTL; lease lost");
            lost.send_replace(Some(LeaseLost::Deadline));
            return;
        }
        tokio::time::sleep_until(next_ping.min(deadline)).await;
        if Instant::now() >= deadline {
            continue;
        }
        let sent = Instant::now();
        let outcome = match conn.as_mut() {
            Some((keeper, stream)) => {
                let wait = store.request_timeout().min(deadline - sent);
                ping(keeper, stream, wait).await
            }
            // Opening sends a ping and waits for its answer; bounded by the lease deadline so
            // a hung connection attempt cannot delay reporting the loss.
            None => match tokio::time::timeout_at(deadline, store.open_keeper(id)).await {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    Ping::Acked
                }
                Ok(Err(Error::LeaseNotFound { .. })) => Ping::NotFound,
                Ok(Err(e)) => Ping::Failed(e.to_string()),
                Err(_) => Ping::Failed("reconnecting timed out at the lease deadline".into()),
            },
        };
        match outcome {
            Ping::Acked => {
                shared.acked(sent);
                backoff.reset();
                next_ping = sent + interval;
            }
            Ping::NotFound => {
                tracing::warn!(lease = %id, "lease not found on keep-alive; lease lost");
                lost.send_replace(Some(LeaseLost::NotFound));
                return;
            }
            Ping::Failed(reason) => {
                tracing::debug!(lease = %id, %reason, "keep-alive failed; reconnecting");
                conn = None;
                next_ping = Instant::now() + backoff.next_wait_forever().min(interval);
            }
        }
    }
}

enum Ping {
    Acked,
    NotFound,
    Failed(String),
}

async fn ping(keeper: &mut LeaseKeeper, stream: &mut LeaseKeepAliveStream, wait: Duration) -> Ping {
    let exchange = async {
        keeper.keep_alive().await?;
        stream.message().await
    };
    match tokio::time::timeout(wait, exchange).await {
        Ok(Ok(Some(resp))) if resp.ttl() > 0 => Ping::Acked,
        Ok(Ok(Some(_))) => Ping::NotFound,
        Ok(Ok(None)) => Ping::Failed("keep-alive stream closed".into()),
        Ok(Err(e)) => Ping::Failed(e.to_string()),
        Err(_) => Ping::Failed(format!("no keep-alive answer within {wait:?}")),
    }
}
