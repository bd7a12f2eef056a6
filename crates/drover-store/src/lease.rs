//! Leases: grant, revoke, and a keep-alive loop that reports loss and the send time of the
//! last acknowledged ping.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{classify, describe, Class, Error, Result};
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

    /// Keeps lease `id` (granted with `ttl`) alive by pinging every `ttl / 6` from a background
    /// task, after one first acknowledged ping.
    ///
    /// # Guarantees
    ///
    /// - Returns only after a first ping was acknowledged, so
    ///   [`last_ack_sent_at`](KeepAlive::last_ack_sent_at) is real from the start; a lease that
    ///   is already gone is [`Error::LeaseNotFound`].
    /// - A ping unanswered within `ttl / 12` (the answer wait) is given up and the next ping
    ///   goes to the next endpoint at once, without marking the silent one dead (during an etcd
    ///   election every member is silent for a while, and all are fine afterwards). Failures
    ///   move through the endpoints strictly in turn, ignoring the pool's cool-down marks, so
    ///   every member is tried again within one round. With a
    ///   quorum reachable, a silent or killed member therefore costs about one answer wait, and
    ///   an etcd election its own length: well inside the `ttl / 2` after which an agent fences.
    /// - [`KeepAlive::lost`] resolves when etcd says the lease is gone (within one ping
    ///   interval of a revoke, plus a round trip), or when no ping was acknowledged before
    ///   `last_ack_sent_at + ttl`. Once lost, it stays lost and the loop ends.
    ///
    /// # Caveats
    ///
    /// The server's expiry is at least `last_ack_sent_at + ttl` (the server renews when it
    /// receives the ping, after it was sent), so fencing decisions should count from
    /// `last_ack_sent_at`, not from when the reply arrived. Pass the TTL the lease was granted
    /// with; etcd may have raised a small one, which only makes the deadline conservative.
    /// An endpoint slower than the answer wait is treated as silent: the loop moves on to the
    /// next, which costs a stream, not the lease.
    pub async fn keep_alive(&self, id: LeaseId, ttl: Duration) -> Result<KeepAlive> {
        let cadence = Cadence::for_ttl(ttl);
        // Try the endpoints in turn until one acknowledges, within the request timeout.
        let give_up = Instant::now() + self.request_timeout();
        let mut backoff = self.backoff();
        let mut endpoint = self.inner.pool.pick().index;
        let (sent, conn) = loop {
            let sent = Instant::now();
            let wait = cadence
                .answer_wait
                .min(give_up.saturating_duration_since(sent));
            match self.open_keeper(id, endpoint, wait).await {
                Ok(conn) => break (sent, conn),
                Err(e @ Error::Unavailable { .. }) => {
                    endpoint = self.inner.pool.after(endpoint);
                    let pause = backoff.next_wait_forever().min(cadence.answer_wait);
                    if Instant::now() + pause >= give_up {
                        return Err(e);
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
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
            cadence,
            conn,
            shared.clone(),
            lost_tx,
        ));
        Ok(KeepAlive {
            id,
            ttl,
            interval: cadence.interval,
            monitor: LeaseMonitor {
                shared,
                lost: lost_rx,
            },
            task,
        })
    }

    /// Opens a keep-alive stream on endpoint `index`; etcd-client sends a first ping, whose
    /// answer must arrive within `wait`.
    async fn open_keeper(&self, id: LeaseId, index: usize, wait: Duration) -> Result<Keeper> {
        let p = self.inner.pool.at(index);
        let mut client = p.client.clone();
        let unavailable = |reason: String| Error::Unavailable {
            op: "lease_keep_alive",
            endpoint: p.url.clone(),
            reason,
        };
        match tokio::time::timeout(wait, client.lease_keep_alive(id.0)).await {
            Ok(Ok((keeper, stream))) => {
                self.inner.pool.mark_alive(p.index);
                Ok(Keeper {
                    endpoint: p.index,
                    keeper,
                    stream,
                })
            }
            Ok(Err(e)) => match classify(&e) {
                Class::LeaseNotFound => Err(Error::LeaseNotFound { id: id.0 }),
                Class::EndpointDown => {
                    self.inner.pool.mark_dead(p.index, &describe(&e)).await;
                    Err(unavailable(describe(&e)))
                }
                _ => Err(unavailable(describe(&e))),
            },
            // Silent, not failed: an election looks the same from here.
            Err(_) => Err(unavailable(format!("no keep-alive answer within {wait:?}"))),
        }
    }
}

/// When the keep-alive loop pings and how long it waits for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cadence {
    /// Between acknowledged pings: `ttl / 6`, at least 100 ms.
    interval: Duration,
    /// How long one ping may go unanswered before the next endpoint is tried: `ttl / 12`, at
    /// least 50 ms.
    answer_wait: Duration,
}

impl Cadence {
    fn for_ttl(ttl: Duration) -> Cadence {
        Cadence {
            interval: (ttl / 6).max(Duration::from_millis(100)),
            answer_wait: (ttl / 12).max(Duration::from_millis(50)),
        }
    }
}

/// An open keep-alive stream and the endpoint it runs through.
struct Keeper {
    endpoint: usize,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
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

    /// Time between acknowledged pings (`ttl / 6`).
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

/// The loop of one kept-alive lease. Its pings and reopenings are boxed: the loop lives as long
/// as the lease (one per node, thousands for hollow nodes), so between pings it should hold
/// little more than its sleep.
async fn keep_alive_loop(
    store: Store,
    id: LeaseId,
    ttl: Duration,
    cadence: Cadence,
    conn: Keeper,
    shared: Arc<Shared>,
    lost: watch::Sender<Option<LeaseLost>>,
) {
    let mut backoff = store.backoff();
    let mut endpoint = conn.endpoint;
    let mut conn = Some(conn);
    let mut next_ping = Instant::now() + cadence.interval;
    loop {
        let deadline = shared.last() + ttl;
        if Instant::now() >= deadline {
            tracing::warn!(lease = %id, "no keep-alive acknowledged within the TTL; lease lost");
            lost.send_replace(Some(LeaseLost::Deadline));
            return;
        }
        tokio::time::sleep_until(next_ping.min(deadline)).await;
        let sent = Instant::now();
        if sent >= deadline {
            continue;
        }
        // Never wait past the lease deadline, so a hung answer cannot delay reporting the loss.
        let wait = cadence.answer_wait.min(deadline - sent);
        let outcome = match conn.as_mut() {
            Some(k) => Box::pin(ping(&mut k.keeper, &mut k.stream, wait)).await,
            // Opening sends a ping and waits for its answer.
            None => match Box::pin(store.open_keeper(id, endpoint, wait)).await {
                Ok(k) => {
                    conn = Some(k);
                    Ping::Acked
                }
                Err(Error::LeaseNotFound { .. }) => Ping::NotFound,
                Err(e) => Ping::Failed(e.to_string()),
            },
        };
        match outcome {
            Ping::Acked => {
                shared.acked(sent);
                backoff.reset();
                next_ping = sent + cadence.interval;
            }
            Ping::NotFound => {
                tracing::warn!(lease = %id, "lease not found on keep-alive; lease lost");
                lost.send_replace(Some(LeaseLost::NotFound));
                return;
            }
            Ping::Failed(reason) => {
                store.inner.pool.metrics.retried("lease_keep_alive");
                let from = store.inner.pool.at(endpoint).url;
                endpoint = store.inner.pool.after(endpoint);
                tracing::debug!(
                    lease = %id, %from, to = %store.inner.pool.at(endpoint).url, %reason,
                    "keep-alive failed; trying the next endpoint"
                );
                conn = None;
                next_ping = Instant::now() + backoff.next_wait_forever().min(cadence.answer_wait);
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
        Ok(Err(e)) => Ping::Failed(describe(&e)),
        Err(_) => Ping::Failed(format!("no keep-alive answer within {wait:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes a keep-alive task holds for its lease's life (one per node; thousands of hollow
    /// nodes): its future's size is fixed at compile time, and this keeps it from growing.
    /// 888 in the test build when set, 14,240 before its ping and reopening were boxed.
    const KEEP_ALIVE_LOOP_MAX: usize = 1536;

    #[tokio::test]
    async fn the_keep_alive_loop_stays_small() {
        let etcd = drover_testkit::EtcdServer::start().await;
        let store = Store::connect(crate::StoreConfig::new(etcd.endpoints()))
            .await
            .expect("connect");
        let ttl = Duration::from_secs(10);
        let id = store.grant(ttl).await.expect("grant");
        let conn = store
            .open_keeper(id, 0, Duration::from_secs(5))
            .await
            .expect("keeper");
        let shared = Arc::new(Shared {
            last_ack_sent_at: Mutex::new(Instant::now()),
        });
        let (lost, _rx) = watch::channel(None);
        let task = keep_alive_loop(store, id, ttl, Cadence::for_ttl(ttl), conn, shared, lost);
        let size = std::mem::size_of_val(&task);
        eprintln!("keep-alive loop: {size} bytes (at most {KEEP_ALIVE_LOOP_MAX})");
        assert!(size <= KEEP_ALIVE_LOOP_MAX, "{size} bytes");
    }

    #[test]
    fn a_cadence_leaves_several_answer_waits_before_an_agent_fences() {
        for secs in [2u64, 3, 4, 10, 30, 120] {
            let ttl = Duration::from_secs(secs);
            let c = Cadence::for_ttl(ttl);
            // From the last acknowledged send: the next ping, then at least four more tries
            // (one per endpoint of a 3-member cluster, and one more) before TTL/2.
            assert!(c.interval + 4 * c.answer_wait <= ttl / 2, "{ttl:?}: {c:?}");
            assert!(c.answer_wait < c.interval, "{ttl:?}: {c:?}");
        }
    }
}
