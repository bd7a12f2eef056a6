//! The replica's mirror of etcd: one watch over the whole prefix, kept by every replica,
//! leader or standby, so that a new leader plans from a snapshot it already holds instead of
//! listing the whole prefix (200,000 keys at 100,000 instances) after its election.
//!
//! The watch task only queues items (a short lock; a value is checked to be JSON and kept as
//! its text, never built into a tree, so 100,000 queued assignments cost about their bytes)
//! and publishes the revision they reach; whoever holds the [`PlannerState`] applies them on a
//! blocking thread: the leader's planner before each plan, and a background applier every so
//! often (a standby's; a leader's for what no plan is due for, such as events).

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use drover_api::Keys;
use drover_runtime::Trigger;
use drover_store::watcher::Event as WatchEvent;
use drover_store::{Relisting, Sink, Store, Versioned};
use futures::{FutureExt, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::reconcile::{plan_spacing, Cluster};
use crate::snapshot::{DecodeError, Snapshot};
use crate::web::notice::{Notice, Part};
use crate::web::recent::RecentEvents;

/// A standby applies its queue once it holds this many items...
const STANDBY_APPLY_ITEMS: usize = 4096;
/// ...or this long after it last did.
const STANDBY_APPLY_EVERY: Duration = Duration::from_secs(1);

/// One replica's mirror of the prefix, shared by all its terms of leadership.
pub(crate) struct Mirror {
    keys: Keys,
    debounce: Duration,
    /// What the watch queued and when changes arrived.
    pub(crate) feed: Mutex<Feed>,
    /// The snapshot; only a planner or the standby applier locks it, on a blocking thread.
    pub(crate) planner: Arc<Mutex<PlannerState>>,
    /// The revision of everything the watch has queued, once a first listing is complete
    /// (0 before): the snapshot reaches it as soon as the queue is applied.
    pub(crate) revision: watch::Sender<i64>,
    /// The leading term's trigger; none while standing by.
    trigger: Mutex<Option<Trigger<Cluster>>>,
    /// Set while a standby's background apply runs.
    applying: AtomicBool,
    /// What the snapshot reached, part by part, once applied: the web view's change notices.
    pub(crate) notice: watch::Sender<Notice>,
}

impl Mirror {
    /// An empty mirror; [`Mirror::run`] fills it.
    pub(crate) fn new(keys: Keys, debounce: Duration) -> Arc<Self> {
        Arc::new(Mirror {
            keys,
            debounce,
            feed: Mutex::new(Feed {
                queued: Vec::new(),
                dirty_since: None,
                not_before: None,
                applied_at: Instant::now(),
            }),
            planner: Arc::new(Mutex::new(PlannerState {
                relist: Relisting::new(Snapshot::default()),
                reported: BTreeMap::new(),
                events: RecentEvents::default(),
            })),
            revision: watch::channel(0).0,
            trigger: Mutex::new(None),
            applying: AtomicBool::new(false),
            notice: watch::channel(Notice::default()).0,
        })
    }

    /// Routes changes to `trigger` (a term's reconciler) until the guard is dropped.
    pub(crate) fn lead(self: &Arc<Self>, trigger: Trigger<Cluster>) -> Leading {
        *self.trigger.lock().unwrap_or_else(PoisonError::into_inner) = Some(trigger);
        Leading(self.clone())
    }

    /// Keeps the mirror equal to etcd until `stop`.
    pub(crate) async fn run(self: Arc<Self>, store: Store, stop: CancellationToken) {
        let mut stream = pin!(drover_store::watcher::<Box<RawValue>>(
            store,
            self.keys.all()
        ));
        let mut seen = Seen::default();
        // A standby applies what is queued at least this often, even when nothing more comes.
        let mut tick = tokio::time::interval(STANDBY_APPLY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => return,
                item = stream.next() => item,
                _ = tick.tick() => {
                    // A leader's plans apply the queue; what no plan is due for (events,
                    // controller keys) is applied here within a second too, so that the web
                    // view shows it.
                    if !self.queue_is_empty() && (!self.leading() || self.applied_long_ago()) {
                        self.apply_in_background();
                    }
                    continue;
                }
            };
            let Some(first) = first else { return };
            // Everything already buffered belongs to the same watch response, so the revision
            // is published only between whole revisions (never half a transaction).
            let mut batch = vec![first];
            while let Some(Some(item)) = stream.next().now_or_never() {
                batch.push(item);
            }
            // Every item is tracked (no short-circuit): each one moves the revision.
            let mut relevant = false;
            for item in &batch {
                relevant |= seen.track(&self.keys, item);
            }
            let (delay, queued, applied_at) = {
                let mut feed = self.feed.lock().unwrap_or_else(PoisonError::into_inner);
                feed.queued.extend(batch);
                if relevant {
                    feed.dirty_since.get_or_insert_with(Instant::now);
                }
                (
                    plan_spacing(self.debounce, feed.not_before, Instant::now()),
                    feed.queued.len(),
                    feed.applied_at,
                )
            };
            let Some(rev) = seen.published() else {
                continue;
            };
            self.revision.send_replace(rev);
            let trigger = self
                .trigger
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            match trigger {
                // A stopped reconciler is a term ending: its guard clears the trigger.
                Some(trigger) if relevant => {
                    let _ = trigger.trigger_after(Cluster, delay, "watch");
                }
                Some(_) => {}
                None if queued >= STANDBY_APPLY_ITEMS
                    || applied_at.elapsed() >= STANDBY_APPLY_EVERY =>
                {
                    self.apply_in_background();
                }
                None => {}
            }
        }
    }

    fn leading(&self) -> bool {
        self.trigger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn applied_long_ago(&self) -> bool {
        self.feed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .applied_at
            .elapsed()
            >= STANDBY_APPLY_EVERY
    }

    fn queue_is_empty(&self) -> bool {
        self.feed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queued
            .is_empty()
    }

    /// A standby applies its queue on a blocking thread (one apply at a time), so the queue
    /// stays short and the snapshot current for the moment it is elected.
    fn apply_in_background(self: &Arc<Self>) {
        if self.applying.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            {
                let mut state = me.planner.lock().unwrap_or_else(PoisonError::into_inner);
                me.apply_queued(&mut state);
            }
            me.applying.store(false, Ordering::SeqCst);
        });
    }
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("revision", &*self.revision.borrow())
            .finish_non_exhaustive()
    }
}

/// While held, the mirror's changes trigger the term's reconciler; dropped when the term ends.
pub(crate) struct Leading(Arc<Mirror>);

impl Drop for Leading {
    fn drop(&mut self) {
        *self
            .0
            .trigger
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// What the watch hands the planner: items not yet applied to the snapshot. The watch task
/// only queues (a short lock, no decoding); the planner applies them on its blocking thread,
/// so a large burst never keeps the async reactor busy.
pub(crate) struct Feed {
    /// Watch items received and not yet applied, in order.
    pub(crate) queued: Vec<drover_store::Result<WatchEvent<Box<RawValue>>>>,
    /// When the first change not yet planned for arrived.
    pub(crate) dirty_since: Option<Instant>,
    /// A change arriving now is planned for no earlier than this: the last plan's end plus
    /// its duration, so while changes stream in the planner is busy at most half the time
    /// and the watch, the commits, the agents and etcd keep the rest (see [`crate::reconcile`]).
    pub(crate) not_before: Option<Instant>,
    /// When a standby last applied the queue (a leader's plans apply it).
    applied_at: Instant,
}

/// What only the planner touches, on its blocking thread (one plan at a time).
pub(crate) struct PlannerState {
    /// The snapshot, kept equal to etcd by the watch's items (a re-list swapped in whole).
    pub(crate) relist: Relisting<Snapshot>,
    /// Undecodable keys already reported as events, with the mod revision reported.
    pub(crate) reported: BTreeMap<String, i64>,
    /// The newest events, for the web view (the snapshot ignores events).
    pub(crate) events: RecentEvents,
}

/// What the watch task knows of the items it queued: whether a first listing completed, and
/// the revision the snapshot will have once they are applied (the rules of
/// [`Relisting`] and [`Snapshot`]: a listing counts at its `InitDone`, every later change
/// moves the revision, whatever its key).
#[derive(Debug, Default)]
pub(crate) struct Seen {
    listed: bool,
    listing: bool,
    revision: i64,
}

impl Seen {
    /// Takes in one item; true when it can change a plan.
    pub(crate) fn track(
        &mut self,
        keys: &Keys,
        item: &drover_store::Result<WatchEvent<Box<RawValue>>>,
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
    pub(crate) fn published(&self) -> Option<i64> {
        self.listed.then_some(self.revision)
    }
}

fn apply(
    keys: &Keys,
    relist: &mut Relisting<Snapshot>,
    item: drover_store::Result<WatchEvent<Box<RawValue>>>,
) {
    if let Err(error) = relist.feed(keys, item) {
        tracing::warn!(%error, "watch error");
    }
}

/// The leader's snapshot is what its watch of the whole prefix keeps current.
impl Sink for Snapshot {
    type Value = Box<RawValue>;
    type Context = Keys;

    fn fresh(&self, _: &Keys) -> Self {
        Snapshot::default()
    }

    fn apply(&mut self, keys: &Keys, item: Versioned<Box<RawValue>>) {
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

impl Mirror {
    pub(crate) fn apply_queued(&self, state: &mut PlannerState) {
        let queued = {
            let mut feed = self.feed.lock().unwrap_or_else(PoisonError::into_inner);
            feed.applied_at = Instant::now();
            std::mem::take(&mut feed.queued)
        };
        let mut notice = *self.notice.borrow();
        for item in queued {
            let part = notice.observe(&self.keys, &item);
            if part == Some(Part::Events)
                || matches!(item, Ok(WatchEvent::Init | WatchEvent::InitDone { .. }))
            {
                state.events.observe(&self.keys, &item);
            }
            apply(&self.keys, &mut state.relist, item);
        }
        self.notice.send_if_modified(|current| {
            let merged = current.merge(notice);
            let changed = merged != *current;
            *current = merged;
            changed
        });
    }
}
