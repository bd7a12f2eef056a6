//! Convergence: watch `assignments/<node>/`, and reconcile each instance (with
//! drover-runtime) until what runs matches what is assigned.
//!
//! Per instance (a [`Slot`]), the reconcile reads the assignment from the reflector cache and
//! the local [`Entry`], then takes one step: start what is assigned and not running (host ports
//! allocated and reported), restart or give up on what exited or turned unhealthy
//! ([`crate::restart`]), stop and fail a job past its `timeoutSeconds` ([`crate::deadline`]),
//! stop what is running but no longer assigned, stop (and report terminal) what the controller
//! asked to stop, adopt what the drivers recovered at start-up, and write the status (fenced,
//! [`crate::status`]).
//!
//! Exits and health changes arrive from small helper tasks (an exit waiter and a prober per
//! run) that set a flag on the entry and trigger the instance's reconcile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use drover_api::instance::{Instance, Phase, PortBinding};
use drover_api::keys::Keys;
use drover_runtime::{Action, Trigger};
use drover_store::reflector::Reader;
use drover_store::watcher::{watcher, Event};
use drover_store::Store;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::deadline::Deadline;
use crate::drivers::DriverSet;
pub(crate) use crate::fence::{InFlight, NodeFence};
use crate::local::{Entry, Records, Slot, StopReason};
use crate::metrics::Metrics;
use crate::ports::PortAllocator;
use crate::restart;
use crate::status::{self, Written};

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A reconcile step that must be retried (the runtime backs off per instance).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the status failed (etcd unreachable).
    #[error(transparent)]
    Status(#[from] status::Error),
    /// The driver failed in a way that may pass (daemon unavailable, I/O).
    #[error("driver: {0}")]
    Driver(#[from] crate::driver::Error),
    /// No host ports are left for the instance.
    #[error(transparent)]
    Ports(#[from] crate::ports::Error),
    /// The read that confirms an assignment before a start failed (etcd unreachable).
    #[error("confirming assignment {key} before starting: {source}")]
    Confirm {
        /// The assignment key.
        key: String,
        /// The store's error.
        #[source]
        source: drover_store::Error,
    },
}

/// Settings of an engine.
#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    pub backoff: restart::Backoff,
}

/// The shared state of one agent process's convergence (one or many nodes).
pub(crate) struct Engine {
    pub store: Store,
    pub keys: Keys,
    pub drivers: DriverSet,
    pub ports: PortAllocator,
    pub desired: Reader<Instance>,
    pub table: Mutex<HashMap<Slot, Entry>>,
    pub nodes: HashMap<Arc<str>, NodeFence>,
    pub trigger: OnceLock<Trigger<Slot>>,
    pub records: Records,
    pub config: EngineConfig,
    pub metrics: Metrics,
    /// Cancelled when the agent goes away (even by abort): ends every helper task.
    pub kill: CancellationToken,
    seq: AtomicU64,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        keys: Keys,
        drivers: DriverSet,
        ports: PortAllocator,
        desired: Reader<Instance>,
        nodes: impl IntoIterator<Item = Arc<str>>,
        records: Records,
        config: EngineConfig,
        metrics: Metrics,
        kill: CancellationToken,
    ) -> Self {
        Engine {
            store,
            keys,
            drivers,
            ports,
            desired,
            table: Mutex::default(),
            nodes: nodes
                .into_iter()
                .map(|n| (n, NodeFence::default()))
                .collect(),
            trigger: OnceLock::new(),
            records,
            config,
            metrics,
            kill,
            seq: AtomicU64::new(1),
        }
    }

    pub fn table(&self) -> MutexGuard<'_, HashMap<Slot, Entry>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_fenced(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|n| *n.fenced.borrow())
    }

    /// Asks for `slot` to be reconciled (no-op before the controller runs).
    pub fn poke(&self, slot: Slot, label: &'static str) {
        if let Some(t) = self.trigger.get() {
            let _ = t.trigger(slot, label);
        }
    }

    /// Every slot worth a look: assigned (in the cache) or known locally, optionally of one node.
    pub fn all_slots(&self, node: Option<&str>) -> Vec<Slot> {
        let mut slots: Vec<Slot> = self
            .desired
            .list()
            .iter()
            .filter_map(|v| self.slot_of_key(&v.key))
            .collect();
        slots.extend(self.table().keys().cloned());
        slots.sort_by(|a, b| (&*a.node, &a.id).cmp(&(&*b.node, &b.id)));
        slots.dedup();
        slots.retain(|s| node.is_none_or(|n| *s.node == *n));
        slots
    }

    /// The slot of an assignment key, when it is for one of our nodes.
    pub fn slot_of_key(&self, key: &str) -> Option<Slot> {
        let (node, id) = self.keys.parse_assignment_key(key)?;
        let (node, _) = self.nodes.get_key_value(node.as_str())?;
        Some(Slot {
            node: node.clone(),
            id,
        })
    }

    /// Reconciles every known slot (after re-registering, or at a re-list).
    pub fn poke_all(&self, node: Option<&str>, label: &'static str) {
        for slot in self.all_slots(node) {
            self.poke(slot, label);
        }
    }

    /// Number of instances running on `node` (all nodes with `None`).
    pub fn running(&self, node: Option<&str>) -> usize {
        self.table()
            .iter()
            .filter(|(s, e)| node.is_none_or(|n| *s.node == *n) && e.is_running())
            .count()
    }

    /// One reconcile step for `slot`.
    pub async fn reconcile(self: &Arc<Self>, slot: &Slot) -> Result<Action> {
        if self.is_fenced(&slot.node) || self.kill.is_cancelled() {
            return Ok(Action::await_change());
        }
        let key = self.keys.assignment(&slot.node, &slot.id);
        let Some(desired) = self.desired.get(&key) else {
            self.stop_and_forget(slot, StopReason::Unassigned).await?;
            return Ok(Action::await_change());
        };
        let replace = {
            let mut table = self.table();
            match table.get_mut(slot) {
                Some(e) if e.create_revision == desired.create_revision => false,
                Some(e)
                    if e.create_revision == 0
                        && e.meta.generation == desired.value.generation
                        && e.meta.attempt == desired.value.attempt =>
                {
                    tracing::info!("adopting the running instance for its assignment");
                    e.create_revision = desired.create_revision;
                    e.instance = Some(Arc::new(desired.value.clone()));
                    false
                }
                Some(_) => true,
                None => {
                    let kind = self.drivers.kind_for(&desired.value.spec);
                    let entry = Entry::new(
                        Arc::new(desired.value.clone()),
                        desired.create_revision,
                        kind,
                    );
                    table.insert(slot.clone(), entry);
                    false
                }
            }
        };
        if replace {
            tracing::info!(
                "assignment changed (new create revision or attempt); replacing the local copy"
            );
            self.stop_and_forget(slot, StopReason::Unassigned).await?;
            self.poke(slot.clone(), "replace");
            return Ok(Action::await_change());
        }
        if let Some(stop) = &desired.value.stop {
            self.stop_on_request(slot, &stop.reason).await?;
            self.publish(slot, &key).await?;
            return Ok(Action::await_change());
        }
        let action = self.step(slot).await?;
        self.publish(slot, &key).await?;
        Ok(action)
    }

    /// Moves the entry one step towards its assignment.
    async fn step(self: &Arc<Self>, slot: &Slot) -> Result<Action> {
        enum Todo {
            Nothing,
            Wait(Duration),
            Start,
            Ended(restart::Ended),
            StopUnhealthy,
            Probe,
            Expire(Duration),
        }
        let todo = {
            let table = self.table();
            let Some(e) = table.get(slot) else {
                return Ok(Action::await_change());
            };
            let wants_probe = e
                .instance
                .as_ref()
                .is_some_and(|i| i.spec.health_check.is_some())
                && e.kind != drover_api::task::DriverKind::Hollow;
            let expired = match e.deadline(tokio::time::Instant::now()) {
                Deadline::Exceeded(limit) => Some(limit),
                _ => None,
            };
            match (&e.run, expired) {
                _ if e.terminal => Todo::Nothing,
                // Waiting out a restart's backoff past the deadline: do not start again.
                (None, Some(limit)) => Todo::Expire(limit),
                (None, None) => match e.next_start {
                    Some(at) if at > tokio::time::Instant::now() => {
                        Todo::Wait(at - tokio::time::Instant::now())
                    }
                    _ => Todo::Start,
                },
                (Some(run), expired) => match (run.exited, expired) {
                    (Some(_), _) if run.unhealthy => Todo::Ended(restart::Ended::Unhealthy),
                    (Some((code, _)), _) => Todo::Ended(restart::Ended::Exited(code)),
                    (None, Some(limit)) => Todo::Expire(limit),
                    (None, None) if run.unhealthy => Todo::StopUnhealthy,
                    (None, None) if wants_probe && !run.probing => Todo::Probe,
                    (None, None) => Todo::Nothing,
                },
            }
        };
        let action = match todo {
            Todo::Nothing => Ok(Action::await_change()),
            Todo::Wait(d) => Ok(Action::requeue(d)),
            Todo::Start => {
                self.start(slot).await?;
                self.spawn_prober(slot);
                Ok(Action::await_change())
            }
            Todo::Probe => {
                self.spawn_prober(slot);
                Ok(Action::await_change())
            }
            Todo::StopUnhealthy => {
                tracing::info!("health check failed; stopping the instance");
                self.stop_run(slot).await?;
                self.poke(slot.clone(), "unhealthy");
                Ok(Action::await_change())
            }
            Todo::Ended(ended) => self.after_end(slot, ended).await,
            Todo::Expire(limit) => self.expire(slot, limit).await,
        }?;
        Ok(self.until_deadline(slot, action))
    }

    /// Decides restart / success / failure after a run ended.
    async fn after_end(self: &Arc<Self>, slot: &Slot, ended: restart::Ended) -> Result<Action> {
        let (driver, handle, next) = {
            let mut table = self.table();
            let Some(e) = table.get_mut(slot) else {
                return Ok(Action::await_change());
            };
            let Some(spec) = e.instance.as_ref().map(|i| &i.spec) else {
                return Ok(Action::await_change());
            };
            let next = restart::next(
                spec.restart_policy,
                ended,
                e.restart_count,
                spec.max_restarts,
                &self.config.backoff,
            );
            if let Some((code, finished)) = e.run.as_ref().and_then(|r| r.exited) {
                e.exit_code = code;
                e.finished_at = finished.or_else(|| Some(chrono::Utc::now()));
            }
            let handle = e.run.as_ref().map(|r| r.handle.clone());
            let expired = match e.deadline(tokio::time::Instant::now()) {
                Deadline::Exceeded(limit) => Some(limit),
                _ => None,
            };
            (self.drivers.get(e.kind).cloned(), handle, (next, expired))
        };
        let next = match next {
            // Past the deadline a job is not restarted: it failed for its deadline.
            (restart::Next::Restart { .. }, Some(limit)) => return self.expire(slot, limit).await,
            (next, _) => next,
        };
        match next {
            restart::Next::Restart { after, restart } => {
                tracing::info!(restart, ?after, ?ended, "restarting after backoff");
                self.metrics.restarts.inc();
                if let (Some(driver), Some(handle)) = (driver, handle) {
                    driver.destroy(&handle).await?;
                }
                let mut table = self.table();
                if let Some(e) = table.get_mut(slot) {
                    e.run = None;
                    e.restart_count = restart;
                    e.next_start = Some(tokio::time::Instant::now() + after);
                    e.phase = Phase::Starting;
                    e.reason = None;
                    e.message = Some(format!(
                        "{}; restart {restart} in {after:?}",
                        describe(ended)
                    ));
                }
                Ok(Action::requeue(after))
            }
            restart::Next::Terminal {
                phase,
                reason,
                message,
            } => {
                tracing::info!(%phase, ?reason, %message, "instance ended for good");
                let mut table = self.table();
                if let Some(e) = table.get_mut(slot) {
                    e.terminal = true;
                    e.phase = phase;
                    e.reason = reason.map(str::to_string);
                    e.message = Some(message);
                }
                Ok(Action::await_change())
            }
        }
    }

    /// Writes the entry's status if it changed since the last write.
    async fn publish(&self, slot: &Slot, key: &str) -> Result<()> {
        let (status, rev) = {
            let table = self.table();
            let Some(e) = table.get(slot) else {
                return Ok(());
            };
            let status = e.status();
            if e.written.as_ref().is_some_and(|w| status::same(w, &status))
                || e.create_revision == 0
            {
                return Ok(());
            }
            (status, e.create_revision)
        };
        match status::write(&self.store, &self.keys, key, rev, &status).await {
            Ok(Written::Ok { .. }) => {
                self.metrics.status_write("ok");
                if let Some(e) = self.table().get_mut(slot) {
                    e.written = Some(status);
                }
                Ok(())
            }
            Ok(Written::Stale) => {
                self.metrics.status_write("stale");
                // The assignment is gone or was placed anew: this copy is no longer ours, and
                // the cache that still shows it is behind. Stop it now rather than when the
                // watch catches up.
                if self.table().get(slot).is_some_and(Entry::is_running) {
                    tracing::warn!(
                        create_revision = rev,
                        "status write is stale: the assignment is gone; stopping the instance"
                    );
                }
                self.stop_and_forget(slot, StopReason::Unassigned).await
            }
            Err(e) => {
                self.metrics.status_write("error");
                Err(e.into())
            }
        }
    }
}

fn describe(ended: restart::Ended) -> String {
    match ended {
        restart::Ended::Exited(Some(c)) => format!("exited with code {c}"),
        restart::Ended::Exited(None) => "exited".into(),
        restart::Ended::Unhealthy => "health check failed".into(),
    }
}

/// The reconcile function handed to the runtime: one span per reconcile with the instance.
pub(crate) async fn reconcile(slot: Slot, engine: Arc<Engine>) -> Result<Action> {
    let span = tracing::info_span!("reconcile", node = %slot.node, instance = %slot.id);
    engine.reconcile(&slot).instrument(span).await
}

/// The keys to reconcile, from a watch of `prefix` feeding the engine's reflector `writer`.
///
/// Keys are emitted only once the cache holds what they refer to: per change for `Apply` and
/// `Delete`, and for every assigned and every local instance at `InitDone` (a first list or a
/// re-list after compaction), so an instance is never judged unassigned from a half-built cache.
pub(crate) fn key_stream(
    engine: Arc<Engine>,
    writer: drover_store::reflector::Writer<Instance>,
    prefix: String,
) -> impl Stream<Item = Slot> + Send {
    let store = engine.store.clone();
    drover_store::reflector::reflector(writer, watcher::<Instance>(store, prefix)).flat_map(
        move |item| {
            let slots: Vec<Slot> = match item {
                Ok(Event::Apply(v)) => engine.slot_of_key(&v.key).into_iter().collect(),
                Ok(Event::Delete { key, .. }) => engine.slot_of_key(&key).into_iter().collect(),
                Ok(Event::InitDone { .. }) => engine.all_slots(None),
                Ok(Event::Init | Event::InitApply(_)) => Vec::new(),
                Err(e) => {
                    tracing::warn!(error = %e, "assignment watch error");
                    Vec::new()
                }
            };
            futures::stream::iter(slots)
        },
    )
}

/// Ports for the spec's `ports`, as bindings.
pub(crate) fn bindings(
    spec_ports: &[drover_api::task::PortSpec],
    host: &[u16],
) -> Vec<PortBinding> {
    spec_ports
        .iter()
        .zip(host)
        .map(|(p, h)| PortBinding {
            container_port: p.container_port,
            host_port: *h,
        })
        .collect()
}
