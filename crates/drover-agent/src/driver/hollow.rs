//! The hollow driver: simulated instances for scale tests, scripted by `spec.hollow` like Nomad's
//! mock driver (`run_seconds`, `exit_code`, `start_error`).
//!
//! Hundreds of nodes with thousands of instances run in one process, so an instance is a small
//! struct and no task: its state is computed from its start time and its script whenever asked.
//! Time is `tokio::time`, so tests with paused time run scripts of minutes in microseconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use drover_api::names::InstanceId;

use super::{
    DriverKind, Error, Fingerprint, Handle, LogLine, LogStream, RecoveredInstance, Result,
    StartRequest, TaskState,
};

/// The exit code of a stopped hollow instance: 128 + SIGTERM, as a shell would report it.
pub const STOPPED_EXIT_CODE: i32 = 143;

/// One simulated instance (about 64 bytes).
#[derive(Debug, Clone, Copy)]
struct Sim {
    started: Instant,
    /// `None` runs until stopped.
    run_for: Option<Duration>,
    exit_code: i32,
    /// When and with which code `stop` ended it.
    stopped: Option<(Instant, i32)>,
}

struct Shared {
    sims: Mutex<HashMap<InstanceId, Sim>>,
    /// Woken on every stop and destroy; waiters re-check their own instance.
    changed: Notify,
    /// Maps `tokio::time::Instant` (which may be paused) to wall-clock time.
    epoch: (Instant, DateTime<Utc>),
}

/// Simulated instances. Cheap to clone; clones share the instances.
#[derive(Clone)]
pub struct HollowDriver {
    shared: Arc<Shared>,
}

impl Default for HollowDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl HollowDriver {
    /// An empty driver.
    pub fn new() -> Self {
        HollowDriver {
            shared: Arc::new(Shared {
                sims: Mutex::default(),
                changed: Notify::new(),
                epoch: (Instant::now(), Utc::now()),
            }),
        }
    }

    /// How many instances the driver currently holds (running or exited, until destroyed).
    pub fn len(&self) -> usize {
        self.sims().len()
    }

    /// Whether the driver holds no instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// See [`super::Driver::start`]: fails with `StartError` when the script says so.
    pub async fn start(&self, req: &StartRequest) -> Result<Handle> {
        let script = req.spec.hollow.clone().unwrap_or_default();
        if let Some(message) = script.start_error {
            return Err(Error::StartError { message });
        }
        let now = Instant::now();
        let instance = &req.meta.instance;
        let mut sims = self.sims();
        if let Some(sim) = sims.get(instance) {
            if state_of(sim, now, self.shared.epoch).is_running() {
                return Ok(self.handle(instance, sim));
            }
        }
        let sim = Sim {
            started: now,
            run_for: script
                .run_seconds
                .map(|s| Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)),
            exit_code: script.exit_code,
            stopped: None,
        };
        sims.insert(instance.clone(), sim);
        Ok(self.handle(instance, &sim))
    }

    /// See [`super::Driver::inspect`].
    pub fn inspect(&self, handle: &Handle) -> TaskState {
        self.sims()
            .get(&handle.instance)
            .map_or(TaskState::NotFound, |sim| {
                state_of(sim, Instant::now(), self.shared.epoch)
            })
    }

    /// See [`super::Driver::wait`].
    pub async fn wait(&self, handle: &Handle) -> TaskState {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            // Registered before looking, so a stop between the look and the await is not missed.
            notified.as_mut().enable();
            let (state, deadline) = match self.sims().get(&handle.instance) {
                None => (TaskState::NotFound, None),
                Some(sim) => (
                    state_of(sim, Instant::now(), self.shared.epoch),
                    sim.run_for.map(|d| sim.started + d),
                ),
            };
            if !state.is_running() {
                return state;
            }
            match deadline {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// See [`super::Driver::stop`].
    ///
    /// # Guarantees
    /// A running instance is `Exited { code: 143 }` when this returns; the grace period is not
    /// waited (a simulated workload obeys SIGTERM at once).
    ///
    /// # Caveats
    /// Stopping an unknown or exited instance is a no-op.
    pub fn stop(&self, handle: &Handle, _grace: Duration) {
        let now = Instant::now();
        if let Some(sim) = self.sims().get_mut(&handle.instance) {
            if state_of(sim, now, self.shared.epoch).is_running() {
                sim.stopped = Some((now, STOPPED_EXIT_CODE));
            }
        }
        self.shared.changed.notify_waiters();
    }

    /// See [`super::Driver::destroy`].
    pub fn destroy(&self, handle: &Handle) {
        self.sims().remove(&handle.instance);
        self.shared.changed.notify_waiters();
    }

    /// See [`super::Driver::logs`]: a start line, and an exit line once it has exited (with
    /// `follow`, the stream waits for the exit).
    pub fn logs(
        &self,
        handle: &Handle,
        follow: bool,
        tail: Option<usize>,
    ) -> BoxStream<'static, Result<LogLine>> {
        let driver = self.clone();
        let handle = handle.clone();
        async move {
            let started = LogLine {
                stream: LogStream::Stdout,
                line: format!("hollow instance {} started", handle.instance),
                time: None,
            };
            let mut state = driver.inspect(&handle);
            if state == TaskState::NotFound {
                return vec![Err(Error::NotFound { id: handle.id })];
            }
            if follow && state.is_running() {
                state = driver.wait(&handle).await;
            }
            let mut lines = vec![started];
            if let TaskState::Exited { code, .. } = state {
                lines.push(LogLine {
                    stream: LogStream::Stdout,
                    line: format!(
                        "hollow instance {} exited with code {code:?}",
                        handle.instance
                    ),
                    time: None,
                });
            }
            let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
            lines.into_iter().skip(skip).map(Ok).collect()
        }
        .map(futures::stream::iter)
        .flatten_stream()
        .boxed()
    }

    fn sims(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Sim>> {
        self.shared
            .sims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn handle(&self, instance: &InstanceId, sim: &Sim) -> Handle {
        Handle {
            instance: instance.clone(),
            id: instance.to_string(),
            started_at: wall(sim.started, self.shared.epoch),
        }
    }
}

fn wall(at: Instant, (mono, wall): (Instant, DateTime<Utc>)) -> DateTime<Utc> {
    let since = at.saturating_duration_since(mono);
    wall + chrono::Duration::from_std(since).unwrap_or_default()
}

fn state_of(sim: &Sim, now: Instant, epoch: (Instant, DateTime<Utc>)) -> TaskState {
    if let Some((at, code)) = sim.stopped {
        return TaskState::Exited {
            code: Some(code),
            finished_at: Some(wall(at, epoch)),
        };
    }
    match sim.run_for.map(|d| sim.started + d) {
        Some(end) if now >= end => TaskState::Exited {
            code: Some(sim.exit_code),
            finished_at: Some(wall(end, epoch)),
        },
        _ => TaskState::Running,
    }
}

impl super::Driver for HollowDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Hollow
    }
    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint> {
        futures::future::ready(Fingerprint {
            kind: DriverKind::Hollow,
            healthy: true,
            detail: "simulated instances".into(),
        })
        .boxed()
    }
    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, Result<Handle>> {
        HollowDriver::start(self, req).boxed()
    }
    fn inspect<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<TaskState>> {
        futures::future::ready(Ok(HollowDriver::inspect(self, handle))).boxed()
    }
    fn wait<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<TaskState>> {
        HollowDriver::wait(self, handle).map(Ok).boxed()
    }
    fn stop<'a>(&'a self, handle: &'a Handle, grace: Duration) -> BoxFuture<'a, Result<()>> {
        HollowDriver::stop(self, handle, grace);
        futures::future::ready(Ok(())).boxed()
    }
    fn destroy<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<()>> {
        HollowDriver::destroy(self, handle);
        futures::future::ready(Ok(())).boxed()
    }
    fn logs(
        &self,
        handle: &Handle,
        follow: bool,
        tail: Option<usize>,
    ) -> BoxStream<'static, Result<LogLine>> {
        HollowDriver::logs(self, handle, follow, tail)
    }
    /// Nothing survives a restart: hollow instances live in the agent's memory.
    fn recover<'a>(&'a self, _node: &'a str) -> BoxFuture<'a, Result<Vec<RecoveredInstance>>> {
        futures::future::ready(Ok(Vec::new())).boxed()
    }
}
