//! Test harness: a scripted reconciler that records when each key runs and checks overlap.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_runtime::{Action, BackoffConfig, Metrics, Reconciler, ReconcilerConfig, Trigger};
use futures::Stream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The error every scripted failure returns.
#[derive(Debug, thiserror::Error)]
#[error("scripted failure")]
pub struct TestError;

/// What one reconcile call does.
pub struct Step {
    pub work: Duration,
    pub result: Result<Action, TestError>,
    pub panic: bool,
}

impl Step {
    pub fn ok(action: Action) -> Self {
        Self {
            work: Duration::ZERO,
            result: Ok(action),
            panic: false,
        }
    }
    pub fn err() -> Self {
        Self {
            work: Duration::ZERO,
            result: Err(TestError),
            panic: false,
        }
    }
    pub fn panic() -> Self {
        Self {
            panic: true,
            ..Self::ok(Action::await_change())
        }
    }
    pub fn taking(mut self, work: Duration) -> Self {
        self.work = work;
        self
    }
}

type Script = Box<dyn Fn(&str, usize) -> Step + Send + Sync>;

/// Shared context: records every start and end and tracks concurrency.
pub struct Recorder {
    t0: Instant,
    starts: Mutex<Vec<(String, Duration)>>,
    ends: Mutex<Vec<(String, Duration)>>,
    calls: Mutex<HashMap<String, usize>>,
    active: Mutex<HashSet<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    overlapped: AtomicBool,
    script: Script,
}

impl Recorder {
    /// `script(key, call)` decides what the `call`-th (1-based) reconcile of `key` does.
    pub fn new(script: impl Fn(&str, usize) -> Step + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            t0: Instant::now(),
            starts: Mutex::default(),
            ends: Mutex::default(),
            calls: Mutex::default(),
            active: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            overlapped: AtomicBool::new(false),
            script: Box::new(script),
        })
    }

    fn enter(&self, key: &str) -> usize {
        self.starts
            .lock()
            .unwrap()
            .push((key.to_owned(), self.t0.elapsed()));
        if !self.active.lock().unwrap().insert(key.to_owned()) {
            self.overlapped.store(true, Ordering::SeqCst);
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let mut calls = self.calls.lock().unwrap();
        let n = calls.entry(key.to_owned()).or_insert(0);
        *n += 1;
        *n
    }

    fn exit(&self, key: &str) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.active.lock().unwrap().remove(key);
        self.ends
            .lock()
            .unwrap()
            .push((key.to_owned(), self.t0.elapsed()));
    }

    /// Start times (since the recorder was made) of every reconcile of `key`.
    pub fn starts_of(&self, key: &str) -> Vec<Duration> {
        let starts = self.starts.lock().unwrap();
        starts
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, t)| *t)
            .collect()
    }

    pub fn ends_of(&self, key: &str) -> Vec<Duration> {
        let ends = self.ends.lock().unwrap();
        ends.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, t)| *t)
            .collect()
    }

    /// Every key in the order its reconciles started.
    pub fn start_order(&self) -> Vec<String> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn total_starts(&self) -> usize {
        self.starts.lock().unwrap().len()
    }

    pub fn total_ends(&self) -> usize {
        self.ends.lock().unwrap().len()
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn overlapped(&self) -> bool {
        self.overlapped.load(Ordering::SeqCst)
    }

    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }
}

pub async fn reconcile(key: String, rec: Arc<Recorder>) -> Result<Action, TestError> {
    let call = rec.enter(&key);
    let step = (rec.script)(&key, call);
    tokio::time::sleep(step.work).await;
    rec.exit(&key);
    assert!(!step.panic, "scripted panic");
    step.result
}

pub fn config(concurrency: usize) -> ReconcilerConfig {
    ReconcilerConfig {
        concurrency,
        backoff: BackoffConfig {
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
            jitter: false,
        },
        shutdown_grace: Duration::from_secs(30),
        ..ReconcilerConfig::new("test")
    }
}

/// A running controller under test.
pub struct Running {
    pub trigger: Trigger<String>,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<drover_runtime::Result<()>>,
}

impl Running {
    /// Cancels and waits (bounded) for `run` to return.
    pub async fn stop(self) -> drover_runtime::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(120), self.handle)
            .await
            .expect("controller did not stop in time")
            .expect("controller task panicked")
    }
}

pub fn start(
    config: ReconcilerConfig,
    rec: &Arc<Recorder>,
    stream: Option<Box<dyn Stream<Item = String> + Send + Unpin>>,
    metrics: Option<&Metrics>,
) -> Running {
    let mut controller = Reconciler::new(config, Arc::clone(rec), reconcile).unwrap();
    if let Some(stream) = stream {
        controller = controller.with_stream(stream);
    }
    if let Some(metrics) = metrics {
        controller = controller.with_metrics(metrics);
    }
    let trigger = controller.trigger();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(controller.run(shutdown.clone()));
    Running {
        trigger,
        shutdown,
        handle,
    }
}

/// Polls `cond` on paused time until it holds; panics after `within`.
pub async fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
