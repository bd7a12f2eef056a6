//! Endpoint failover: one etcd client per endpoint, dead endpoints avoided for a cool-down, and
//! the retry loop every store call goes through.
//!
//! etcd-client balances over its endpoints but never drops a dead one, so a killed member keeps
//! receiving a share of requests. Here each endpoint has its own client; calls stick to one
//! live endpoint and move on when it fails in transport.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::StoreConfig;
use crate::error::{classify, Class, Error, Result};

/// One endpoint with its client and health mark.
struct Endpoint {
    url: String,
    state: Mutex<EndpointState>,
}

struct EndpointState {
    client: Client,
    dead_until: Option<Instant>,
}

/// The clients of all endpoints.
pub(crate) struct Pool {
    endpoints: Vec<Endpoint>,
    preferred: AtomicUsize,
    options: ConnectOptions,
    cooldown: Duration,
}

/// A client picked for one attempt, and where it points.
#[derive(Clone)]
pub(crate) struct Picked {
    pub index: usize,
    pub url: String,
    pub client: Client,
}

/// Whether a call may be repeated after a transport failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotency {
    /// Repeating it is harmless (reads, whole-value puts, deletes, lease calls).
    Idempotent,
    /// It may have been applied (txns): transport failures become `OutcomeUnknown`.
    Once,
}

impl Pool {
    /// Builds the clients. Nothing is dialled yet (connections are lazy).
    pub(crate) async fn new(cfg: &StoreConfig) -> Result<Pool> {
        let options = ConnectOptions::new()
            .with_connect_timeout(cfg.connect_timeout)
            .with_keep_alive(cfg.keepalive_interval, cfg.keepalive_timeout)
            .with_keep_alive_while_idle(true)
            // A member cut off from the quorum refuses instead of serving stale watches.
            .with_require_leader(true);
        let mut endpoints = Vec::new();
        for url in cfg.urls()? {
            let client = build_client(&url, &options).await?;
            endpoints.push(Endpoint {
                url,
                state: Mutex::new(EndpointState {
                    client,
                    dead_until: None,
                }),
            });
        }
        Ok(Pool {
            endpoints,
            preferred: AtomicUsize::new(0),
            options,
            cooldown: cfg.dead_endpoint_cooldown,
        })
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.url.clone()).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// The client of endpoint `index`, whatever its health.
    pub(crate) fn at(&self, index: usize) -> Picked {
        let e = &self.endpoints[index];
        let st = lock(&e.state);
        Picked {
            index,
            url: e.url.clone(),
            client: st.client.clone(),
        }
    }

    /// The preferred endpoint if live, else the next live one, else the one whose cool-down
    /// ends first (a cool-down is a preference, never a ban).
    pub(crate) fn pick(&self) -> Picked {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let now = Instant::now();
        let mut soonest: Option<(usize, Instant)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let dead_until = lock(&self.endpoints[i].state).dead_until;
            match dead_until {
                Some(t) if t > now => {
                    if soonest.is_none_or(|(_, s)| t < s) {
                        soonest = Some((i, t));
                    }
                }
                _ => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return self.at(i);
                }
            }
        }
        self.at(soonest.map_or(start, |(i, _)| i))
    }

    /// The endpoint after `index`, in order and whatever its health: a keep-alive loop that
    /// follows the cool-down marks can be stranded on the one member it found silent while
    /// the others are marked for answering "no leader" during an election.
    pub(crate) fn after(&self, index: usize) -> usize {
        (index + 1) % self.endpoints.len()
    }

    /// Marks endpoint `index` dead for the cool-down, replaces its client (so the next use
    /// dials afresh) and moves the preference to the next endpoint.
    pub(crate) async fn mark_dead(&self, index: usize, reason: &str) {
        let e = &self.endpoints[index];
        tracing::warn!(endpoint = %e.url, %reason, "etcd endpoint failed; avoiding it for a while");
        let fresh = build_client(&e.url, &self.options).await.ok();
        {
            let mut st = lock(&e.state);
            st.dead_until = Some(Instant::now() + self.cooldown);
            if let Some(c) = fresh {
                st.client = c;
            }
        }
        let n = self.endpoints.len();
        let _ = self.preferred.compare_exchange(
            index,
            (index + 1) % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Clears the dead mark after a success.
    pub(crate) fn mark_alive(&self, index: usize) {
        lock(&self.endpoints[index].state).dead_until = None;
    }

    /// Runs `f` against a picked endpoint, bounded by `timeout` per attempt, retrying
    /// idempotent calls on transport failures with backoff, over the live endpoints.
    ///
    /// # Guarantees
    ///
    /// - An `Idempotency::Once` call is sent at most once; a transport failure or timeout
    ///   becomes [`Error::OutcomeUnknown`].
    /// - Compaction, a missing lease and rejections are returned at once, never retried.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        idem: Idempotency,
        timeout: Duration,
        backoff: &mut Backoff,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        loop {
            let p = self.pick();
            let (class, reason) = match tokio::time::timeout(timeout, f(p.client.clone())).await {
                Ok(Ok(v)) => {
                    self.mark_alive(p.index);
                    return Ok(v);
                }
                Ok(Err(e)) => (classify(&e), e.to_string()),
                Err(_) => (Class::EndpointDown, format!("no answer within {timeout:?}")),
            };
            match class {
                Class::Compacted => return Err(crate::error::compacted(0)),
                Class::LeaseNotFound => return Err(Error::LeaseNotFound { id: 0 }),
                Class::Rejected => return Err(Error::Rejected { op, reason }),
                Class::EndpointDown => self.mark_dead(p.index, &reason).await,
                Class::Transient => {}
            }
            if idem == Idempotency::Once {
                return Err(Error::OutcomeUnknown {
                    op,
                    endpoint: p.url,
                    reason,
                });
            }
            match backoff.next_wait() {
                Some(wait) => {
                    tracing::debug!(op, endpoint = %p.url, %reason, ?wait, "retrying etcd call");
                    tokio::time::sleep(wait).await;
                }
                None => {
                    return Err(Error::Unavailable {
                        op,
                        endpoint: p.url,
                        reason,
                    })
                }
            }
        }
    }
}

async fn build_client(url: &str, options: &ConnectOptions) -> Result<Client> {
    Client::connect([url], Some(options.clone()))
        .await
        .map_err(|e| Error::InvalidConfig(format!("endpoints: {url}: {e}")))
}

/// Locks a mutex, ignoring poisoning: the guarded state is always left consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
