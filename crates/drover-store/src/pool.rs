//! Endpoint failover: one etcd client per endpoint, dead endpoints avoided for a cool-down, and
//! the retry loop every store call goes through. Every client gets the same connection
//! settings: TLS, and the etcd user it authenticates as.
//!
//! etcd-client balances over its endpoints but never drops a dead one, so a killed member keeps
//! receiving a share of requests. Here each endpoint has its own client; calls stick to one
//! live endpoint and move on when it fails in transport.
//!
//! With a user configured, each client authenticates before its first call, not when it is
//! built: etcd-client's `connect` with a user must reach the member, and a member that is down
//! when a process starts (or when its client is replaced) must not stop the others from
//! being used. The token is then kept by etcd-client, which also re-authenticates once when a
//! unary call meets an expired token (`with_auto_token_refresh`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::StoreConfig;
use crate::error::{classify, describe, Class, Error, Result};
use crate::metrics::StoreMetrics;
use crate::security::{self, Credentials};

/// One endpoint with its client and health mark.
struct Endpoint {
    url: String,
    state: Mutex<EndpointState>,
    /// Held while the client authenticates, so concurrent first calls authenticate once.
    auth: tokio::sync::Mutex<()>,
}

struct EndpointState {
    client: Client,
    dead_until: Option<Instant>,
    /// Bumped whenever `client` is replaced.
    generation: u64,
    /// Whether `client` holds a token (always true without a user).
    authenticated: bool,
}

/// The clients of all endpoints.
pub(crate) struct Pool {
    endpoints: Vec<Endpoint>,
    preferred: AtomicUsize,
    options: ConnectOptions,
    cooldown: Duration,
    user: Option<Credentials>,
    auth_timeout: Duration,
    /// Latency, retries and failovers of every call made through this pool.
    pub(crate) metrics: StoreMetrics,
}

/// A client picked for one attempt, and where it points.
#[derive(Clone)]
pub(crate) struct Picked {
    pub index: usize,
    pub url: String,
    pub client: Client,
    generation: u64,
    authenticated: bool,
}

/// Why a client could not authenticate.
#[derive(Debug)]
pub(crate) enum AuthFailure {
    /// etcd refused the user (wrong password, unknown user): retrying will not help.
    Refused(Error),
    /// The member did not answer: try another endpoint.
    Down(String),
    /// The member answered that it cannot now (authenticating is a raft request, refused
    /// during an election with "leader changed"): try again shortly.
    Transient(String),
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
    /// Reads the TLS and password files and builds the clients. Nothing is dialled yet
    /// (connections are lazy, and so is authentication: see [`Pool::authenticate`]).
    pub(crate) async fn new(cfg: &StoreConfig) -> Result<Pool> {
        let loaded = security::load(&cfg.tls, cfg.user.as_ref())?;
        let options = connect_options(cfg, &loaded);
        let urls = cfg.urls()?;
        if loaded.user.is_some() && urls.iter().any(|u| u.starts_with("http://")) {
            tracing::warn!("the etcd password is sent over plain http; use https:// endpoints");
        }
        let mut endpoints = Vec::new();
        for url in urls {
            let client = build_client(&url, &options).await?;
            endpoints.push(Endpoint {
                url,
                state: Mutex::new(EndpointState {
                    client,
                    dead_until: None,
                    generation: 0,
                    authenticated: loaded.user.is_none(),
                }),
                auth: tokio::sync::Mutex::new(()),
            });
        }
        let metrics = StoreMetrics::default();
        metrics.endpoints(endpoints.iter().map(|e| e.url.as_str()));
        Ok(Pool {
            endpoints,
            preferred: AtomicUsize::new(0),
            options,
            cooldown: cfg.dead_endpoint_cooldown,
            user: loaded.user,
            auth_timeout: cfg.request_timeout,
            metrics,
        })
    }

    /// Authenticates `p`'s client as the configured user unless it already did (a no-op
    /// without a user).
    ///
    /// # Guarantees
    ///
    /// - Concurrent callers on one endpoint authenticate once.
    /// - Bounded by the request timeout; a member that does not answer is
    ///   [`AuthFailure::Down`], one in an election [`AuthFailure::Transient`], and nothing
    ///   else was sent to it.
    /// - An etcd whose auth is off answers "authentication is not enabled": that counts as
    ///   done (requests need no token then), with a warning.
    ///
    /// # Caveats
    ///
    /// Lease keep-alive streams are opened without this: etcd does not check tokens on
    /// `LeaseKeepAlive`, and an extra authentication (a raft round and a bcrypt check on
    /// the server) would slow the keep-alive's failover to another member.
    pub(crate) async fn authenticate(&self, p: &Picked) -> Result<(), AuthFailure> {
        let Some(user) = &self.user else {
            return Ok(());
        };
        if p.authenticated {
            return Ok(());
        }
        // Boxed: every store call awaits this; the slow path's future (an authenticate
        // request) need not take room in each of theirs.
        Box::pin(self.authenticate_now(p, user)).await
    }

    /// [`authenticate`](Self::authenticate)'s slow path: one at a time per endpoint, unless a
    /// concurrent caller has done it meanwhile.
    async fn authenticate_now(&self, p: &Picked, user: &Credentials) -> Result<(), AuthFailure> {
        let e = &self.endpoints[p.index];
        let _one_at_a_time = e.auth.lock().await;
        {
            let st = lock(&e.state);
            if st.generation == p.generation && st.authenticated {
                return Ok(());
            }
        }
        let mut client = p.client.clone();
        let creds = Some((user.name.clone(), user.password.clone()));
        match tokio::time::timeout(self.auth_timeout, client.update_user(creds)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) if describe(&err).contains("authentication is not enabled") => {
                tracing::warn!(endpoint = %p.url, user = %user.name, "etcd's auth is off; sending requests without a user");
            }
            Ok(Err(err)) => {
                return Err(match classify(&err) {
                    Class::EndpointDown => AuthFailure::Down(describe(&err)),
                    Class::Transient => AuthFailure::Transient(describe(&err)),
                    _ => AuthFailure::Refused(Error::AuthFailed {
                        user: user.name.clone(),
                        endpoint: p.url.clone(),
                        reason: describe(&err),
                    }),
                })
            }
            Err(_) => {
                return Err(AuthFailure::Down(format!(
                    "no answer to authenticate within {:?}",
                    self.auth_timeout
                )))
            }
        }
        let mut st = lock(&e.state);
        if st.generation == p.generation {
            st.authenticated = true;
        }
        Ok(())
    }

    /// The token of `p`'s client was refused (expired): fetch a new one. Best effort; a
    /// failure shows in the next call.
    pub(crate) async fn refresh_token(&self, p: &Picked) {
        if self.user.is_none() {
            return;
        }
        let refresh = p.client.refresh_token();
        match tokio::time::timeout(self.auth_timeout, refresh).await {
            Ok(Ok(())) => tracing::debug!(endpoint = %p.url, "etcd auth token refreshed"),
            Ok(Err(err)) => {
                tracing::warn!(endpoint = %p.url, error = %describe(&err), "refreshing the etcd auth token failed");
            }
            Err(_) => tracing::warn!(endpoint = %p.url, "refreshing the etcd auth token timed out"),
        }
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
            generation: st.generation,
            authenticated: st.authenticated,
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
        self.metrics.failed_over(&e.url);
        let fresh = build_client(&e.url, &self.options).await.ok();
        {
            let mut st = lock(&e.state);
            st.dead_until = Some(Instant::now() + self.cooldown);
            if let Some(c) = fresh {
                st.client = c;
                st.generation += 1;
                st.authenticated = self.user.is_none();
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
    ///   becomes [`Error::OutcomeUnknown`]. Failing to authenticate first sends nothing, so
    ///   that is retried for every call.
    /// - Compaction, a missing lease, rejections and a refused user are returned at once,
    ///   never retried.
    /// - Every call is timed into `store_request_duration_seconds{op}` (retries included), and
    ///   each repeated attempt counts in `store_retries_total{op}` (see [`crate::metrics`]).
    pub(crate) async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        idem: Idempotency,
        timeout: Duration,
        backoff: &mut Backoff,
        f: F,
    ) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let result = self.attempts(op, idem, timeout, backoff, f).await;
        self.metrics
            .finished(op, started.elapsed(), result.is_err());
        result
    }

    /// [`call`](Self::call)'s retry loop, untimed.
    async fn attempts<T, F, Fut>(
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
            let sent = match self.authenticate(&p).await {
                Err(AuthFailure::Refused(error)) => return Err(error),
                Err(AuthFailure::Down(reason)) => Err((Class::EndpointDown, reason)),
                Err(AuthFailure::Transient(reason)) => Err((Class::Transient, reason)),
                Ok(()) => match tokio::time::timeout(timeout, f(p.client.clone())).await {
                    Ok(Ok(v)) => {
                        self.mark_alive(p.index);
                        return Ok(v);
                    }
                    Ok(Err(e)) => Ok((classify(&e), describe(&e))),
                    Err(_) => Ok((Class::EndpointDown, format!("no answer within {timeout:?}"))),
                },
            };
            // `Err`: authenticating failed, so the call itself was never sent.
            let (class, reason, was_sent) = match sent {
                Ok((class, reason)) => (class, reason, true),
                Err((class, reason)) => (class, reason, false),
            };
            match class {
                Class::Compacted => return Err(crate::error::compacted(0)),
                Class::LeaseNotFound => return Err(Error::LeaseNotFound { id: 0 }),
                Class::Rejected => return Err(Error::Rejected { op, reason }),
                Class::EndpointDown => self.mark_dead(p.index, &reason).await,
                Class::Transient => {}
            }
            if idem == Idempotency::Once && was_sent {
                return Err(Error::OutcomeUnknown {
                    op,
                    endpoint: p.url,
                    reason,
                });
            }
            match backoff.next_wait() {
                Some(wait) => {
                    tracing::debug!(op, endpoint = %p.url, %reason, ?wait, "retrying etcd call");
                    self.metrics.retried(op);
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

/// The options of every client: timeouts, HTTP/2 keep-alive, TLS. The user is not among
/// them: [`Pool::authenticate`] adds it.
fn connect_options(cfg: &StoreConfig, loaded: &security::Loaded) -> ConnectOptions {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(cfg.connect_timeout)
        .with_keep_alive(cfg.keepalive_interval, cfg.keepalive_timeout)
        .with_keep_alive_while_idle(true)
        // A member cut off from the quorum refuses instead of serving stale watches.
        .with_require_leader(true)
        // Simple tokens expire after `--auth-token-ttl` (5 min) without use: a unary call
        // that meets an expired one re-authenticates and is sent again, once.
        .with_auto_token_refresh(loaded.user.is_some());
    if let Some(tls) = &loaded.tls {
        options = options.with_tls(tls.clone());
    }
    options
}

/// An etcd-client [`Client`] of its own (its own connection to each endpoint, balanced by
/// etcd-client) with `cfg`'s TLS and user: for measuring bare etcd next to the store, as
/// `drover bench` does.
///
/// # Caveats
///
/// None of the store's failover or retries; with a user it authenticates while connecting,
/// so every endpoint must answer then.
pub async fn bare_client(cfg: &StoreConfig) -> Result<Client> {
    cfg.validate()?;
    let loaded = security::load(&cfg.tls, cfg.user.as_ref())?;
    let mut options = connect_options(cfg, &loaded);
    if let Some(user) = &loaded.user {
        options = options.with_user(user.name.clone(), user.password.clone());
    }
    Client::connect(cfg.urls()?, Some(options))
        .await
        .map_err(|e| Error::Unreachable {
            endpoints: cfg.endpoints.join(","),
            timeout: cfg.connect_timeout,
            reason: describe(&e),
        })
}

async fn build_client(url: &str, options: &ConnectOptions) -> Result<Client> {
    Client::connect([url], Some(options.clone()))
        .await
        .map_err(|e| Error::InvalidConfig(format!("endpoints: {url}: {}", describe(&e))))
}

/// Locks a mutex, ignoring poisoning: the guarded state is always left consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
