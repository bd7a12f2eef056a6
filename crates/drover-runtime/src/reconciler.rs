//! The [`Reconciler`] builder: configuration, trigger inputs and the [`Trigger`] handle.
//!
//! A controller turns "something about key K may have changed" into calls of an async reconcile
//! function, with the guarantees listed on [`Reconciler::run_until`]. The loop itself lives in
//! the private `runner` module; this module only gathers its inputs.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use std::{error::Error as StdError, fmt::Display};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::action::Action;
use crate::backoff::{self, BackoffConfig};
use crate::metrics::Metrics;
use crate::runner::Runner;

/// Errors from building, triggering or running a controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The controller name was empty; it labels spans and metrics, so it must say something.
    #[error("controller name must not be empty")]
    EmptyName,
    /// `concurrency` was zero, so nothing could ever run.
    #[error("controller {name}: concurrency must be at least 1")]
    ZeroConcurrency {
        /// The controller's name.
        name: &'static str,
    },
    /// The backoff settings were rejected.
    #[error("controller {name}: invalid backoff")]
    Backoff {
        /// The controller's name.
        name: &'static str,
        /// Why the backoff settings were rejected.
        #[source]
        source: backoff::Error,
    },
    /// A [`Trigger`] was used after its controller stopped (or before it was ever run and after
    /// it was dropped); the request went nowhere.
    #[error("controller has stopped; trigger ignored")]
    Stopped,
    /// Shutdown waited `grace` for in-flight reconciles and then aborted the rest.
    #[error("controller {name}: {aborted} reconcile(s) still running after {grace:?}; aborted")]
    ShutdownTimedOut {
        /// The controller's name.
        name: &'static str,
        /// How many reconciles were aborted.
        aborted: usize,
        /// The grace period that ran out.
        grace: Duration,
    },
}

impl Error {
    /// Whether trying the same thing again could succeed. Nothing here can: each variant is a
    /// programming or configuration error, or a controller that is gone for good.
    #[must_use]
    pub fn retryable(&self) -> bool {
        false
    }
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed stream of keys, the shape trigger inputs are stored in.
pub type KeyStream<K> = BoxStream<'static, K>;

/// A stream of batches of keys, as the runner takes its inputs ([`Reconciler::with_batches`]).
pub(crate) type KeyBatches<K> = BoxStream<'static, Vec<K>>;

/// Reconciler settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcilerConfig {
    /// Labels tracing spans and metrics (`controller="<name>"`). No default.
    pub name: &'static str,
    /// Most reconciles running at once, across all keys. Default: 8.
    pub concurrency: usize,
    /// Retry delays after failed reconciles. Default: [`BackoffConfig::default`].
    pub backoff: BackoffConfig,
    /// How long shutdown waits for in-flight reconciles before aborting them. Default: 30 s.
    pub shutdown_grace: Duration,
}

impl ReconcilerConfig {
    /// The defaults documented on each field, for a controller called `name`.
    #[must_use]
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            concurrency: 8,
            backoff: BackoffConfig::default(),
            shutdown_grace: Duration::from_secs(30),
        }
    }

    /// Rejects settings the runner cannot honour.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::EmptyName);
        }
        if self.concurrency == 0 {
            return Err(Error::ZeroConcurrency { name: self.name });
        }
        self.backoff.validate().map_err(|source| Error::Backoff {
            name: self.name,
            source,
        })
    }
}

/// A request sent through a [`Trigger`].
#[derive(Debug)]
pub(crate) struct TriggerRequest<K> {
    pub(crate) key: K,
    pub(crate) at: Instant,
    pub(crate) label: &'static str,
}

/// A cloneable handle that asks a controller to reconcile a key, from any task or thread.
///
/// Obtained from [`Reconciler::trigger`]. Calls never block; requests merge in the controller's
/// queue like any other.
#[derive(Debug)]
pub struct Trigger<K> {
    tx: mpsc::UnboundedSender<TriggerRequest<K>>,
}

impl<K> Clone for Trigger<K> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<K> Trigger<K> {
    /// Reconcile `key` as soon as possible; `label` (bounded, e.g. `"node-dead"`) shows in the
    /// reconcile span as `reason=trigger(<label>)`.
    ///
    /// # Caveats
    /// A key backing off after a failure is not retried early; the trigger merges into the
    /// pending retry.
    pub fn trigger(&self, key: K, label: &'static str) -> Result<()> {
        self.trigger_at(key, Instant::now(), label)
    }

    /// Reconcile `key` after `delay` (or earlier, if something else asks for it sooner).
    pub fn trigger_after(&self, key: K, delay: Duration, label: &'static str) -> Result<()> {
        self.trigger_at(key, Instant::now() + delay, label)
    }

    fn trigger_at(&self, key: K, at: Instant, label: &'static str) -> Result<()> {
        self.tx
            .send(TriggerRequest { key, at, label })
            .map_err(|_| Error::Stopped)
    }
}

/// A reconcile loop over keys of type `K`, with shared context `C` and reconcile function `F`.
///
/// ```no_run
/// use std::{convert::Infallible, sync::Arc, time::Duration};
/// use drover_runtime::{Action, Reconciler, ReconcilerConfig, Metrics};
/// use tokio_util::sync::CancellationToken;
///
/// struct Ctx { /* store handles, config, ... */ }
///
/// async fn reconcile(task: String, _ctx: Arc<Ctx>) -> Result<Action, Infallible> {
///     println!("converging {task}");
///     Ok(Action::requeue(Duration::from_secs(300)))
/// }
///
/// # async fn wire(changes: impl futures::Stream<Item = String> + Send + 'static)
/// #     -> Result<(), drover_runtime::Error> {
/// let mut registry = prometheus_client::registry::Registry::default();
/// let metrics = Metrics::register(&mut registry);
/// let controller = Reconciler::new(ReconcilerConfig::new("tasks"), Arc::new(Ctx {}), reconcile)?
///     .with_stream(changes)
///     .with_metrics(&metrics);
/// let trigger = controller.trigger();
/// trigger.trigger("default/echo".to_string(), "cli")?;
/// let shutdown = CancellationToken::new();
/// controller.run(shutdown.clone()).await
/// # }
/// ```
pub struct Reconciler<K, C, F> {
    config: ReconcilerConfig,
    ctx: Arc<C>,
    reconcile: F,
    streams: Vec<KeyBatches<K>>,
    metrics: Metrics,
    trigger_tx: mpsc::UnboundedSender<TriggerRequest<K>>,
    trigger_rx: mpsc::UnboundedReceiver<TriggerRequest<K>>,
}

impl<K, C, F, Fut, E> Reconciler<K, C, F>
where
    K: Clone + Eq + Hash + Display + Send + Sync + 'static,
    C: Send + Sync + 'static,
    F: Fn(K, Arc<C>) -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<Action, E>> + Send + 'static,
    E: StdError + Send + 'static,
{
    /// A controller that calls `reconcile(key, ctx)`; add inputs with [`Self::with_stream`] and
    /// [`Self::trigger`], then [`Self::run`] it.
    pub fn new(config: ReconcilerConfig, ctx: Arc<C>, reconcile: F) -> Result<Self> {
        config.validate()?;
        let (trigger_tx, trigger_rx) = mpsc::unbounded_channel();
        Ok(Self {
            config,
            ctx,
            reconcile,
            streams: Vec::new(),
            metrics: Metrics::default(),
            trigger_tx,
            trigger_rx,
        })
    }

    /// Adds a stream of keys to reconcile (typically mapped from a watcher). Each item schedules
    /// its key at once with `reason=watch`. A stream that ends is simply no longer polled.
    #[must_use]
    pub fn with_stream(mut self, keys: impl Stream<Item = K> + Send + 'static) -> Self {
        self.streams.push(keys.map(|key| vec![key]).boxed());
        self
    }

    /// Adds a stream of batches of keys: a batch's keys are scheduled together, in order, with
    /// `reason=watch`. Keys from several streams interleave item by item; the keys of one batch
    /// (one watch response of one prefix, say) stay next to each other in the queue, so their
    /// reconciles run at about the same time and can share their requests.
    #[must_use]
    pub fn with_batches(mut self, batches: impl Stream<Item = Vec<K>> + Send + 'static) -> Self {
        self.streams.push(batches.boxed());
        self
    }

    /// Reports into `metrics` (see [`Metrics::register`]) under `controller="<name>"`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = metrics.clone();
        self
    }

    /// A handle that schedules keys from anywhere; it may be cloned and kept after `run` starts.
    #[must_use]
    pub fn trigger(&self) -> Trigger<K> {
        Trigger {
            tx: self.trigger_tx.clone(),
        }
    }

    /// [`Self::run_until`] the token is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        self.run_until(shutdown.cancelled_owned()).await
    }

    /// Runs the reconcile loop until `shutdown` completes, then drains.
    ///
    /// # Guarantees
    /// - One key is never reconciled twice at once; requests arriving meanwhile are merged and
    ///   run once after it finishes.
    /// - At most `concurrency` reconciles run at once.
    /// - `Ok(Action::requeue(d))` runs the key again after `d`; `Ok(Action::await_change())`
    ///   waits for the next trigger.
    /// - `Err` (or a panic) runs the key again after its backoff, which doubles per consecutive
    ///   failure up to the max and resets on success. Triggers do not cut a backoff short.
    /// - On shutdown no new reconcile starts; in-flight ones get `shutdown_grace` to finish.
    ///
    /// # Caveats
    /// The controller keeps running when every input has ended: requeues still fire. Only
    /// `shutdown` stops it. Returns [`Error::ShutdownTimedOut`] if reconciles had to be aborted.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let Self {
            config,
            ctx,
            reconcile,
            streams,
            metrics,
            trigger_tx,
            trigger_rx,
        } = self;
        // Only outside handles keep the channel open from here on.
        drop(trigger_tx);
        Runner::new(config, ctx, reconcile, &metrics)
            .run(streams, trigger_rx, shutdown)
            .await
    }
}
