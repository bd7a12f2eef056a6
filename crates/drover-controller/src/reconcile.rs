//! The leader's work while it leads: one watch over the whole prefix feeds a [`Snapshot`]; each
//! change schedules a reconcile of the single key [`Cluster`] through the runtime (so bursts
//! merge, failures back off and metrics and spans come for free); a reconcile plans from the
//! snapshot and commits the plan with the leader's fence.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use chrono::Utc;
use drover_api::Keys;
use drover_runtime::{Action, BackoffConfig};
use drover_store::{Fence, Store};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::commit::{self, CommitError};
use crate::config::ControllerConfig;
use crate::events::EventWriter;
use crate::leader::ControllerStatus;
use crate::metrics::Metrics;
use crate::mirror::Mirror;
#[cfg(test)]
use crate::mirror::Seen;
use crate::planner;

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
    /// The replica's mirror of etcd, kept across terms.
    pub(crate) mirror: Arc<Mirror>,
    /// The revision the snapshot must reach before the next plan (this leader's last write).
    min_revision: AtomicI64,
    /// Consecutive plans some step of which etcd refused (see [`REJECTED_REPLAN`]).
    refused_rounds: AtomicU32,
    fenced: CancellationToken,
    events: tokio::sync::Mutex<EventWriter>,
    /// When this term began.
    elected: Instant,
}

impl Term {
    pub(crate) fn new(
        store: Store,
        keys: Keys,
        config: ControllerConfig,
        fence: Fence,
        metrics: Metrics,
        status: watch::Sender<ControllerStatus>,
        mirror: Arc<Mirror>,
    ) -> Arc<Self> {
        let events = EventWriter::new(store.clone(), keys.clone(), config.event_ttl, &config.id);
        Arc::new(Self {
            store,
            keys,
            config,
            fence,
            metrics,
            status,
            mirror,
            min_revision: AtomicI64::new(0),
            refused_rounds: AtomicU32::new(0),
            fenced: CancellationToken::new(),
            events: tokio::sync::Mutex::new(events),
            elected: Instant::now(),
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
    // Start from etcd as of the election: the mirror may lag a little behind the previous
    // leader's last writes.
    if let Ok(revision) = term.store.prefix_revision(&term.keys.all()).await {
        term.min_revision.fetch_max(revision, Ordering::SeqCst);
    }
    let _leading = term.mirror.lead(runner.trigger());
    // The first plan need not wait for a change.
    let _ = runner.trigger().trigger(Cluster, "elected");
    let stop = cancel.child_token();
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

/// One plan-and-commit round over the whole cluster.
async fn reconcile(_key: Cluster, term: Arc<Term>) -> Result<Action, ReconcileError> {
    let want = term.min_revision.load(Ordering::SeqCst);
    let mut rx = term.mirror.revision.subscribe();
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
        .mirror
        .feed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .dirty_since
        .take();
    let planned = {
        let term = term.clone();
        // The blocking thread does not inherit the reconcile span: hand it over, so whatever
        // is logged while planning carries the controller, key and reason.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| plan_now(&term, now))).await
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
        let span = tracing::info_span!(
            "commit",
            revision = snapshot_revision,
            steps = plan.steps.len(),
            tasks = plan.taskstates.len(),
        );
        let committed =
            commit::commit_pipelined(&term.store, &term.keys, &term.fence, &plan, limits)
                .instrument(span)
                .await;
        match committed {
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
        crate::events::log(&plan.events);
        let mut events = term.events.lock().await;
        if let Err(error) = events.write(&plan.events, Some(&term.fence)).await {
            tracing::warn!(%error, count = plan.events.len(), "could not record events");
        }
    }
    let first = !term.status.borrow().synced;
    term.status.send_modify(|s| s.synced = true);
    if first {
        tracing::info!(
            revision = snapshot_revision,
            steps = plan.steps.len(),
            plan_ms = planning.as_millis(),
            since_elected_ms = term.elected.elapsed().as_millis(),
            "first plan of this term done"
        );
    }
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
    let mut state = term
        .mirror
        .planner
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let state = &mut *state;
    term.mirror.apply_queued(state);
    let snapshot = state.relist.live_mut();
    snapshot.revalidate();
    let undecodable = snapshot.undecodable_events(&term.keys, &mut state.reported, now);
    busy_for(term.config.slow_plan_for_tests);
    let plan = planner::plan(snapshot, now, &term.config);
    let took = started.elapsed();
    term.metrics.plan_duration.observe(took.as_secs_f64());
    term.mirror
        .feed
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
pub(crate) fn plan_spacing(
    debounce: Duration,
    not_before: Option<Instant>,
    now: Instant,
) -> Duration {
    not_before
        .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
        .max(debounce)
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
        let mut feed = term
            .mirror
            .feed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        feed.dirty_since = Some(feed.dirty_since.map_or(since, |d| d.min(since)));
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
