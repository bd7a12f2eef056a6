//! The reconcile loop: inputs → [`WorkQueue`] → bounded set of spawned reconciles → outcomes.
//!
//! One task owns all state (queue, backoff counters, running set), so there are no locks: inputs,
//! finished reconciles and queue deadlines are all events handled one at a time in `run`.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use crate::action::Action;
use crate::backoff::{BackoffConfig, JitterSource};
use crate::metrics::{Metrics, ReconcilerMetrics};
use crate::queue::{Reason, WorkQueue};
use crate::reconciler::{Error, KeyBatches, ReconcilerConfig, Result, TriggerRequest};

/// How many already-ready inputs one wake-up takes before dispatching, so that a burst of
/// requests merges in the queue without starving the other events.
const BATCH: usize = 256;

/// What a spawned reconcile hands back: its result and how long it took.
type Outcome<E> = (std::result::Result<Action, E>, Duration);

/// Consecutive failures of one key and when its retry is due.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    retry_at: Instant,
}

/// One thing the loop reacts to.
enum Event<K, E> {
    Shutdown,
    Finished(std::result::Result<(Id, Outcome<E>), JoinError>),
    Input(Option<Vec<K>>),
    Triggered(Option<TriggerRequest<K>>),
    Due,
}

/// The state of a running controller; see [`crate::Reconciler::run_until`] for its guarantees.
pub(crate) struct Runner<K, C, F, E> {
    name: &'static str,
    concurrency: usize,
    backoff: BackoffConfig,
    shutdown_grace: Duration,
    ctx: Arc<C>,
    reconcile: F,
    queue: WorkQueue<K>,
    failures: HashMap<K, Failures>,
    jitter: JitterSource,
    tasks: JoinSet<Outcome<E>>,
    /// The key and span of each spawned reconcile, by task id.
    running: HashMap<Id, (K, tracing::Span)>,
    metrics: ReconcilerMetrics,
}

impl<K, C, F, Fut, E> Runner<K, C, F, E>
where
    K: Clone + Eq + Hash + Display + Send + Sync + 'static,
    C: Send + Sync + 'static,
    F: Fn(K, Arc<C>) -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<Action, E>> + Send + 'static,
    E: StdError + Send + 'static,
{
    pub(crate) fn new(
        config: ReconcilerConfig,
        ctx: Arc<C>,
        reconcile: F,
        metrics: &Metrics,
    ) -> Self {
        Self {
            name: config.name,
            concurrency: config.concurrency,
            backoff: config.backoff,
            shutdown_grace: config.shutdown_grace,
            ctx,
            reconcile,
            queue: WorkQueue::new(),
            failures: HashMap::new(),
            jitter: JitterSource::default(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
            metrics: metrics.for_reconciler(config.name),
        }
    }

    pub(crate) async fn run(
        mut self,
        streams: Vec<KeyBatches<K>>,
        mut triggers: mpsc::UnboundedReceiver<TriggerRequest<K>>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let mut inputs_open = !streams.is_empty();
        let mut inputs = stream::select_all(streams);
        let mut triggers_open = true;
        let mut shutdown = std::pin::pin!(shutdown);
        tracing::debug!(controller = self.name, "controller started");

        loop {
            // A shutdown that is already signalled wins over starting more work. `shutdown` is
            // never polled again once it is ready: both places that see it ready break.
            if futures::poll!(shutdown.as_mut()).is_ready() {
                break;
            }
            self.dispatch();
            self.metrics.set_queue_depth(self.queue.depth());
            self.metrics.set_in_flight(self.tasks.len());
            let wake_at = if self.tasks.len() < self.concurrency {
                self.queue.next_deadline()
            } else {
                None
            };

            // Biased: shutdown first, then freed slots. Inputs cannot starve the queue: due keys
            // are dispatched at the top of every iteration, whichever event woke us.
            let event = tokio::select! {
                biased;
                () = &mut shutdown => Event::Shutdown,
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    Event::Finished(done)
                }
                request = triggers.recv(), if triggers_open => Event::Triggered(request),
                key = inputs.next(), if inputs_open => Event::Input(key),
                () = sleep_until_opt(wake_at), if wake_at.is_some() => Event::Due,
            };

            match event {
                Event::Shutdown => break,
                Event::Finished(done) => self.finished(done),
                Event::Input(Some(keys)) => {
                    for key in keys {
                        self.request(key, Instant::now(), Reason::Watch);
                    }
                    // Take whatever else is ready before dispatching, so a burst merges.
                    for _ in 0..BATCH {
                        match inputs.next().now_or_never() {
                            Some(Some(keys)) => {
                                for key in keys {
                                    self.request(key, Instant::now(), Reason::Watch);
                                }
                            }
                            Some(None) | None => break,
                        }
                    }
                }
                Event::Input(None) => {
                    inputs_open = false;
                    tracing::warn!(controller = self.name, "all trigger streams ended");
                }
                Event::Triggered(Some(first)) => {
                    self.triggered(first);
                    for _ in 0..BATCH {
                        match triggers.try_recv() {
                            Ok(request) => self.triggered(request),
                            Err(_) => break,
                        }
                    }
                }
                Event::Triggered(None) => triggers_open = false,
                Event::Due => {}
            }
        }
        self.drain().await
    }

    /// Starts every due key while there is a free slot.
    fn dispatch(&mut self) {
        let now = Instant::now();
        while self.tasks.len() < self.concurrency {
            let Some((key, reason)) = self.queue.pop_ready(now) else {
                break;
            };
            let attempt = self.failures.get(&key).map_or(0, |f| f.count) + 1;
            let span = tracing::info_span!(
                "reconcile",
                controller = self.name,
                key = %key,
                reason = %reason,
                attempt,
            );
            let fut = (self.reconcile)(key.clone(), Arc::clone(&self.ctx));
            let handle = self.tasks.spawn(
                async move {
                    let started = Instant::now();
                    let result = fut.await;
                    (result, started.elapsed())
                }
                .instrument(span.clone()),
            );
            self.running.insert(handle.id(), (key, span));
        }
    }

    fn triggered(&mut self, request: TriggerRequest<K>) {
        let TriggerRequest { key, at, label } = request;
        self.request(key, at, Reason::Trigger(label));
    }

    /// A trigger (from a stream or a handle): schedule, but never ahead of a pending backoff.
    fn request(&mut self, key: K, at: Instant, reason: Reason) {
        let at = match self.failures.get(&key) {
            Some(f) => at.max(f.retry_at),
            None => at,
        };
        self.schedule(key, at, reason);
    }

    fn schedule(&mut self, key: K, at: Instant, reason: Reason) {
        self.metrics.scheduled(reason);
        self.queue.schedule(key, at, reason);
    }

    /// Records a finished reconcile and decides when its key runs next.
    fn finished(&mut self, done: std::result::Result<(Id, Outcome<E>), JoinError>) {
        let (id, outcome) = match done {
            Ok((id, outcome)) => (id, Some(outcome)),
            Err(join_error) => (join_error.id(), None),
        };
        let Some((key, span)) = self.running.remove(&id) else {
            return;
        };
        let now = Instant::now();
        match outcome {
            Some((Ok(action), took)) => {
                self.metrics.reconciled(true, took);
                self.failures.remove(&key);
                self.queue.finish(&key, None);
                tracing::debug!(parent: &span, ?took, requeue_after = ?action.requeue_after(), "reconciled");
                if let Some(after) = action.requeue_after() {
                    self.schedule(key, now + after, Reason::Requeue);
                }
            }
            Some((Err(error), took)) => {
                self.metrics.reconciled(false, took);
                let retry_in = self.record_failure(&key, now);
                tracing::warn!(parent: &span, %error, ?retry_in, "reconcile failed");
            }
            None => {
                // The task panicked (it is only aborted during drain, which does not get here).
                self.metrics.reconciled(false, Duration::ZERO);
                let retry_in = self.record_failure(&key, now);
                tracing::error!(parent: &span, ?retry_in, "reconcile panicked");
            }
        }
    }

    /// Bumps the key's failure count and schedules its retry; returns the delay.
    fn record_failure(&mut self, key: &K, now: Instant) -> Duration {
        let count = self
            .failures
            .get(key)
            .map_or(1, |f| f.count.saturating_add(1));
        let delay = self.backoff.delay_with_jitter(count, self.jitter.sample());
        let retry_at = now + delay;
        self.failures
            .insert(key.clone(), Failures { count, retry_at });
        self.queue.finish(key, Some(retry_at));
        self.schedule(key.clone(), retry_at, Reason::Backoff);
        delay
    }

    /// Shutdown: start nothing new, give in-flight reconciles `shutdown_grace`, abort the rest.
    async fn drain(mut self) -> Result<()> {
        let in_flight = self.tasks.len();
        tracing::info!(
            controller = self.name,
            in_flight,
            "controller shutting down"
        );
        let deadline = Instant::now() + self.shutdown_grace;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(done)) => self.record_drained(done),
                Ok(None) => break,
                Err(_elapsed) => {
                    let aborted = self.tasks.len();
                    self.tasks.shutdown().await;
                    self.metrics.set_in_flight(0);
                    return Err(Error::ShutdownTimedOut {
                        name: self.name,
                        aborted,
                        grace: self.shutdown_grace,
                    });
                }
            }
        }
        self.metrics.set_in_flight(0);
        tracing::info!(controller = self.name, "controller stopped");
        Ok(())
    }

    fn record_drained(&mut self, done: std::result::Result<(Id, Outcome<E>), JoinError>) {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(join_error) => join_error.id(),
        };
        let span = self.running.remove(&id).map(|(_, span)| span);
        match done {
            Ok((_, (Ok(_), took))) => self.metrics.reconciled(true, took),
            Ok((_, (Err(error), took))) => {
                self.metrics.reconciled(false, took);
                if let Some(span) = span {
                    tracing::warn!(parent: &span, %error, "reconcile failed during shutdown");
                }
            }
            Err(_) => self.metrics.reconciled(false, Duration::ZERO),
        }
        self.metrics.set_in_flight(self.tasks.len());
    }
}

/// Sleeps until `at`; pending forever for `None` (the select branch is disabled then anyway).
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
