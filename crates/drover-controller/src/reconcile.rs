//! The leader's work while it leads: one watch over the whole prefix feeds a [`Snapshot`]; each
//! change schedules a reconcile of the single key [`Cluster`] through the runtime (so bursts
//! merge, failures back off and metrics and spans come for free); a reconcile plans from the
//! snapshot and commits the plan with the leader's fence.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use drover_api::Keys;
use drover_runtime::{Action, BackoffConfig, Trigger};
use drover_store::watcher::Event as WatchEvent;
use drover_store::{Fence, Relisting, Sink, Store, Versioned};
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::commit::{self, CommitError};
use crate::config::ControllerConfig;
use crate::events::EventWriter;
use crate::leader::ControllerStatus;
use crate::metrics::Metrics;
use crate::planner;
use crate::snapshot::{DecodeError, Snapshot};

/// Why a reconcile failed (the runtime retries it with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The snapshot did not reach the revision of this leader's last write in time.
    #[error("snapshot did not reach revision {want} within {waited:?}")]
    NotSynced {
        /// The revision the snapshot must reach.
        want: i64,
        /// How long the reconcile waited.
        waited: Duration,
    },
    /// Committing the plan failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The planner's thread panicked or was cancelled.
    #[error("the planner failed: {0}")]
    Planner(String),
}

impl ReconcileError {
    /// Whether the next attempt can succeed (everything but a lost fence).
    #[must_use]
    pub fn retryable(&self) -> bool {
        match self {
            ReconcileError::NotSynced { .. } | ReconcileError::Planner(_) => true,
            ReconcileError::Commit(e) => e.retryable(),
        }
    }
}

/// Why leading ended.
#[derive(Debug, thiserror::Error)]
pub enum LeadError {
    /// A write was fenced: another replica leads now.
    #[error("a write was fenced: leadership is lost")]
    Fenced,
    /// The reconcile runtime failed.
    #[error("reconcile runtime failed: {0}")]
    Runtime(#[from] drover_runtime::Error),
}

/// The one key the leader reconciles: the whole cluster, planned at once so placements of all
/// tasks compete fairly for capacity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Cluster;

impl fmt::Display for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cluster")
    }
}

/// What the watch hands the planner: items not yet applied to the snapshot. The watch task
/// only queues (a short lock, no decoding); the planner applies them on its blocking thread,
/// so a large burst never keeps the async reactor busy.
struct Feed {
    /// Watch items received and not yet applied, in order.
    queued: Vec<drover_store::Result<WatchEvent<serde_json::Value>>>,
    /// When the first change not yet planned for arrived.
    dirty_since: Option<Instant>,
    /// A change arriving now is planned for no earlier than this: the last plan's end plus
    /// its duration, so while changes stream in the planner is busy at most half the time
    /// and the watch, the commits, the agents and etcd keep the rest (see [`plan_spacing`]).
    not_before: Option<Instant>,
}

/// What only the planner touches, on its blocking thread (one plan at a time).
struct PlannerState {
    /// The snapshot, kept equal to etcd by the watch's items (a re-list swapped in whole).
    relist: Relisting<Snapshot>,
    /// Undecodable keys already reported as events, with the mod revision reported.
    reported: BTreeMap<String, i64>,
}

/// What one plan produced, handed back from the planner's thread.
struct Planned {
    plan: planner::Plan,
    /// How long applying the queued items and planning took.
    took: Duration,
    /// The revision of the snapshot it was made from.
    revision: i64,
    /// Events about undecodable keys not reported before.
    undecodable: Vec<drover_api::Event>,
}

/// Everything one term of leadership shares.
pub(crate) struct Term {
    pub(crate) store: Store,
    pub(crate) keys: Keys,
    pub(crate) config: ControllerConfig,
    pub(crate) fence: Fence,
    pub(crate) metrics: Metrics,
    pub(crate) status: watch::Sender<ControllerStatus>,
    feed: Mutex<Feed>,
    planner: Arc<Mutex<PlannerState>>,
    /// The revision of everything the watch has queued, once a first listing is complete
    /// (0 before): the snapshot reaches it as soon as the planner applies the queue.
    revision: watch::Sender<i64>,
    /// The revision the snapshot must reach before the next plan (this leader's last write).
    min_revision: AtomicI64,
    /// Consecutive plans some step of which etcd refused (see [`REJECTED_REPLAN`]).
    refused_rounds: AtomicU32,
    fenced: CancellationToken,
    events: tokio::sync::Mutex<EventWriter>,
}

impl Term {
    pub(crate) fn new(
        store: Store,
        keys: Keys,
        config: ControllerConfig,
        fence: Fence,
        metrics: Metrics,
        status: watch::Sender<ControllerStatus>,
    ) -> Arc<Self> {
        let events = EventWriter::new(store.clone(), keys.clone(), config.event_ttl, &config.id);
        Arc::new(Self {
            store,
            keys,
            config,
            fence,
            metrics,
            status,
            feed: Mutex::new(Feed {
                queued: Vec::new(),
                dirty_since: None,
                not_before: None,
            }),
            planner: Arc::new(Mutex::new(PlannerState {
                relist: Relisting::new(Snapshot::default()),
                reported: BTreeMap::new(),
            })),
            revision: watch::channel(0).0,
            min_revision: AtomicI64::new(0),
            refused_rounds: AtomicU32::new(0),
            fenced: CancellationToken::new(),
            events: tokio::sync::Mutex::new(events),
        })
    }
}

/// Leads until `cancel` fires or a write is fenced.
pub(crate) async fn lead(term: Arc<Term>, cancel: CancellationToken) -> Result<(), LeadError> {
    let mut cfg = drover_runtime::ReconcilerConfig::new("drover-controller");
    cfg.concurrency = 1;
    cfg.shutdown_grace = Duration::from_secs(1);
    // Capped at 1 s, so a commit that failed while etcd was away is retried within a second
    // of etcd answering again.
    cfg.backoff = BackoffConfig {
        base: Duration::from_millis(200),
        max: Duration::from_secs(1),
        jitter: true,
    };
    let runner = drover_runtime::Reconciler::new(cfg, term.clone(), reconcile)?
        .with_metrics(&term.metrics.runtime);
    let trigger = runner.trigger();
    let stop = cancel.child_token();
    let _watch = AbortOnDrop(tokio::spawn(
        watch_cache(term.clone(), trigger, stop.clone()).in_current_span(),
    ));
    let result = tokio::select! {
        r = runner.run(stop.clone()) => r.map_err(LeadError::from),
        () = term.fenced.cancelled() => Err(LeadError::Fenced),
    };
    stop.cancel();
    result
}

/// Aborts a spawned task when dropped, so that dropping the future that owns it (a crash
/// simulated by aborting `run`, or losing leadership) never leaves a writer behind.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Queues the watch's items for the planner, publishing the revision they reach only at
/// revision boundaries, and triggers a plan when one of them can change it.
async fn watch_cache(term: Arc<Term>, trigger: Trigger<Cluster>, stop: CancellationToken) {
    let mut stream = pin!(drover_store::watcher::<serde_json::Value>(
        term.store.clone(),
        term.keys.all()
    ));
    let mut seen = Seen::default();
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            item = stream.next() => item,
        };
        let Some(first) = first else { return };
        // Everything already buffered belongs to the same watch response, so the revision is
        // published only between whole revisions (never half a transaction).
        let mut batch = vec![first];
        while let Some(Some(item)) = stream.next().now_or_never() {
            batch.push(item);
        }
        // Every item is tracked (no short-circuit): each one moves the revision.
        let mut relevant = false;
        for item in &batch {
            relevant |= seen.track(&term.keys, item);
        }
        let delay = {
            let mut feed = term.feed.lock().unwrap_or_else(PoisonError::into_inner);
            feed.queued.extend(batch);
            if relevant {
                feed.dirty_since.get_or_insert_with(Instant::now);
            }
            plan_spacing(term.config.debounce, feed.not_before, Instant::now())
        };
        if let Some(rev) = seen.published() {
            term.revision.send_replace(rev);
            if relevant && trigger.trigger_after(Cluster, delay, "watch").is_err() {
                return;
            }
        }
    }
}

/// What the watch task knows of the items it queued: whether a first listing completed, and
/// the revision the snapshot will have once they are applied (the rules of
/// [`Relisting`] and [`Snapshot`]: a listing counts at its `InitDone`, every later change
/// moves the revision, whatever its key).
#[derive(Debug, Default)]
struct Seen {
    listed: bool,
    listing: bool,
    revision: i64,
}

impl Seen {
    /// Takes in one item; true when it can change a plan.
    fn track(
        &mut self,
        keys: &Keys,
        item: &drover_store::Result<WatchEvent<serde_json::Value>>,
    ) -> bool {
        let (key, revision) = match item {
            Ok(WatchEvent::Init) => {
                self.listing = true;
                return false;
            }
            Ok(WatchEvent::InitApply(_)) => return false,
            Ok(WatchEvent::InitDone { revision }) => {
                self.listing = false;
                self.listed = true;
                self.revision = *revision;
                return true;
            }
            Ok(WatchEvent::Apply(item)) => (item.key.as_str(), item.mod_revision),
            Ok(WatchEvent::Delete {
                key, mod_revision, ..
            }) => (key.as_str(), *mod_revision),
            Err(drover_store::Error::Decode {
                key, mod_revision, ..
            }) if !self.listing => (key.as_str(), *mod_revision),
            Err(_) => return false,
        };
        self.revision = self.revision.max(revision);
        crate::snapshot::plans_from(keys, key)
    }

    /// The revision to publish, once listed.
    fn published(&self) -> Option<i64> {
        self.listed.then_some(self.revision)
    }
}

fn apply(
    keys: &Keys,
    relist: &mut Relisting<Snapshot>,
    item: drover_store::Result<WatchEvent<serde_json::Value>>,
) {
    if let Err(error) = relist.feed(keys, item) {
        tracing::warn!(%error, "watch error");
    }
}

/// The leader's snapshot is what its watch of the whole prefix keeps current.
impl Sink for Snapshot {
    type Value = serde_json::Value;
    type Context = Keys;

    fn fresh(&self, _: &Keys) -> Self {
        Snapshot::default()
    }

    fn apply(&mut self, keys: &Keys, item: Versioned<serde_json::Value>) {
        if let Err(error) = Snapshot::apply(self, keys, item) {
            warn_undecodable(&error);
        }
    }

    fn delete(&mut self, keys: &Keys, key: &str, revision: i64) {
        self.remove(keys, key, revision);
    }

    fn not_json(&mut self, keys: &Keys, key: &str, revision: i64, error: serde_json::Error) {
        if let Some(error) = self.apply_not_json(keys, key, revision, error) {
            warn_undecodable(&error);
        }
    }

    fn listed(&mut self, _: &Keys, revision: i64) {
        self.revision = revision;
    }
}

fn warn_undecodable(error: &DecodeError) {
    tracing::warn!(
        key = %error.key,
        %error,
        "a value does not decode: kept as undecodable (nodes stay alive, assignments keep their slots)"
    );
}

/// One plan-and-commit round over the whole cluster.
async fn reconcile(_key: Cluster, term: Arc<Term>) -> Result<Action, ReconcileError> {
    let want = term.min_revision.load(Ordering::SeqCst);
    let mut rx = term.revision.subscribe();
    let waited = Instant::now();
    let synced = tokio::time::timeout(term.config.sync_wait, rx.wait_for(|r| *r > 0 && *r >= want))
        .await
        .is_ok_and(|r| r.is_ok());
    if !synced {
        return Err(ReconcileError::NotSynced {
            want,
            waited: waited.elapsed(),
        });
    }
    let now = Utc::now();
    let dirty_since = term
        .feed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .dirty_since
        .take();
    let planned = {
        let term = term.clone();
        tokio::task::spawn_blocking(move || plan_now(&term, now)).await
    };
    let Planned {
        plan,
        took: planning,
        revision: snapshot_revision,
        undecodable,
    } = match planned {
        Ok(planned) => planned,
        Err(error) => {
            restore_dirty(&term, dirty_since);
            return Err(ReconcileError::Planner(error.to_string()));
        }
    };
    if !undecodable.is_empty() {
        let mut events = term.events.lock().await;
        if let Err(error) = events.write(&undecodable, Some(&term.fence)).await {
            tracing::warn!(%error, count = undecodable.len(), "could not record events");
        }
    }
    term.metrics
        .pending
        .set(i64::try_from(plan.pending).unwrap_or(i64::MAX));

    let mut rejected = false;
    if !plan.is_empty() {
        let limits = commit::Limits::new(
            term.store.config().max_txn_ops,
            term.store.config().max_request_bytes,
            term.config.commit_lanes,
        );
        let committing = Instant::now();
        match commit::commit_pipelined(&term.store, &term.keys, &term.fence, &plan, limits).await {
            Ok(done) => {
                if done.rejected.is_empty() {
                    term.metrics.commit("ok");
                } else {
                    // The rest landed; the refused steps are planned again from a newer
                    // snapshot (our own writes' events bring one at once).
                    term.metrics.commit("partial");
                    rejected = true;
                    tracing::warn!(
                        rejected = done.rejected.len(),
                        first = %done.rejected[0].reason,
                        "some plan steps were refused and skipped"
                    );
                }
                term.min_revision.fetch_max(done.revision, Ordering::SeqCst);
                if plan.placed > 0 {
                    if let Some(since) = dirty_since {
                        term.metrics
                            .scheduling_latency
                            .observe(since.elapsed().as_secs_f64());
                    }
                }
                tracing::info!(
                    revision = snapshot_revision,
                    steps = plan.steps.len(),
                    placed = plan.placed,
                    pending = plan.pending,
                    txns = done.txns,
                    plan_ms = planning.as_millis(),
                    commit_ms = committing.elapsed().as_millis(),
                    "plan committed"
                );
            }
            Err(CommitError::Conflict { revision, landed }) => {
                term.metrics.commit("conflict");
                // Not `revision`: that is etcd's global revision, and with other prefixes on
                // the same etcd the snapshot (which moves only with events under ours) may not
                // reach it for a long time. The failed compare proves a key under our prefix
                // changed after the snapshot, so its event brings the snapshot past
                // `snapshot.revision`; our own transactions that landed must be seen too.
                // (drover-store's watcher requests no progress notifications, which would
                // otherwise let the snapshot follow the global revision.)
                let want = conflict_wait_target(snapshot_revision, landed);
                term.min_revision.fetch_max(want, Ordering::SeqCst);
                tracing::debug!(revision, "plan conflicted with a newer change; re-planning");
                restore_dirty(&term, dirty_since);
                return Ok(Action::requeue(
                    term.config.debounce.max(Duration::from_millis(10)),
                ));
            }
            Err(CommitError::Fenced(e)) => {
                term.metrics.commit("fenced");
                term.fenced.cancel();
                return Err(CommitError::Fenced(e).into());
            }
            Err(CommitError::Store(e)) => {
                term.metrics.commit("error");
                // The failed txn may have landed: do not plan again before the snapshot has seen
                // the newest write under our prefix. Not the store's global revision: with
                // other tenants writing elsewhere on the same etcd, a snapshot of our prefix
                // never reaches it, and the leader stalled until one of our keys changed.
                // (Were the landed txn deletes only, re-planning early is still safe: every
                // write compares what it was planned from.)
                if let Ok(revision) = term.store.prefix_revision(&term.keys.all()).await {
                    term.min_revision.fetch_max(revision, Ordering::SeqCst);
                }
                restore_dirty(&term, dirty_since);
                return Err(CommitError::Store(e).into());
            }
        }
        let mut events = term.events.lock().await;
        if let Err(error) = events.write(&plan.events, Some(&term.fence)).await {
            tracing::warn!(%error, count = plan.events.len(), "could not record events");
        }
    }
    term.status.send_modify(|s| s.synced = true);
    let resync = term.config.resync_interval;
    let mut after = plan.requeue_at.map_or(resync, |at| {
        (at - now).to_std().unwrap_or(Duration::ZERO).min(resync)
    });
    if rejected {
        // Refused steps are planned again from whatever the watch has brought by then: at
        // once after a real conflict (its event arrives within milliseconds), then less often
        // while the refusals repeat, so a permanent one (a poisoned key) neither spins nor
        // stalls the time-driven work (cron ticks, deadlines) of the rest of the plan.
        let rounds = term.refused_rounds.fetch_add(1, Ordering::SeqCst).min(10);
        let base = term.config.debounce.max(Duration::from_millis(10));
        after = after.min((base * 2u32.pow(rounds)).min(REJECTED_REPLAN));
    } else {
        term.refused_rounds.store(0, Ordering::SeqCst);
    }
    Ok(Action::requeue(after))
}

/// Applies what the watch queued to the snapshot and plans from it: CPU-bound, so it runs on
/// a blocking thread, never on the reactor that keeps the election lease alive.
fn plan_now(term: &Term, now: chrono::DateTime<Utc>) -> Planned {
    let started = Instant::now();
    let mut state = term.planner.lock().unwrap_or_else(PoisonError::into_inner);
    let state = &mut *state;
    apply_queued(term, state);
    let snapshot = state.relist.live_mut();
    snapshot.revalidate();
    let undecodable = snapshot.undecodable_events(&term.keys, &mut state.reported, now);
    busy_for(term.config.slow_plan_for_tests);
    let plan = planner::plan(snapshot, now, &term.config);
    let took = started.elapsed();
    term.metrics.plan_duration.observe(took.as_secs_f64());
    term.feed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .not_before = Some(Instant::now() + took);
    Planned {
        plan,
        took,
        revision: snapshot.revision,
        undecodable,
    }
}

/// How long to wait before planning for a change that arrives at `now`: the debounce, or
/// longer while the last plan's end plus its duration (`not_before`) lies ahead. A plan of
/// 100,000 instances takes a good fraction of a second; planning again at once for every
/// status an agent writes would keep a core busy with plans and starve what keeps the cluster
/// alive (etcd, agents' keep-alives on the same machine). The delay adapts: a small cluster
/// still plans within the debounce.
fn plan_spacing(debounce: Duration, not_before: Option<Instant>, now: Instant) -> Duration {
    not_before
        .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
        .max(debounce)
}

/// Applies every item the watch queued to the snapshot, in order.
fn apply_queued(term: &Term, state: &mut PlannerState) {
    let queued = std::mem::take(
        &mut term
            .feed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queued,
    );
    for item in queued {
        apply(&term.keys, &mut state.relist, item);
    }
}

/// Keeps this thread busy for `d` (the slow-planner test hook; zero returns at once).
fn busy_for(d: Duration) {
    let until = std::time::Instant::now() + d;
    while std::time::Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// How soon a plan some of whose steps etcd refused is made again.
const REJECTED_REPLAN: Duration = Duration::from_secs(1);

/// The revision the snapshot must reach before re-planning after a conflict: newer than the
/// snapshot the conflicting plan was made from, and at least the plan's own last landed write.
fn conflict_wait_target(snapshot_revision: i64, landed: i64) -> i64 {
    snapshot_revision.saturating_add(1).max(landed)
}

fn restore_dirty(term: &Term, since: Option<Instant>) {
    if let Some(since) = since {
        let mut feed = term.feed.lock().unwrap_or_else(PoisonError::into_inner);
        feed.dirty_since = Some(feed.dirty_since.map_or(since, |d| d.min(since)));
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
