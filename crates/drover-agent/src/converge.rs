//! Convergence: watch `assignments/<node>/`, and reconcile each instance (with
//! drover-runtime) until what runs matches what is assigned.
//!
//! Every node an engine serves (one for a real agent, many for hollow nodes) has its own watch
//! of its own prefix feeding its own reflector cache ([`key_stream`]), so a re-list of one node
//! swaps that node's cache alone and reconciles that node's slots alone. The reconcile loop is
//! one per engine, shared by all its nodes.
//!
//! Per instance (a [`Slot`]), the reconcile reads the assignment from the reflector cache and
//! the local entry, asks the pure `crate::instance::decide` what to do, and carries it out: start what is assigned and not running (host ports
//! allocated and reported), restart or give up on what exited or turned unhealthy
//! ([`crate::restart`]), stop and fail a job past its `timeoutSeconds` ([`crate::deadline`]),
//! stop what is running but no longer assigned, stop (and report terminal) what the controller
//! asked to stop, adopt what the drivers recovered at start-up, and write the status (fenced,
//! [`crate::status`]).
//!
//! Exits and health changes arrive from small helper tasks (an exit waiter and a prober per
//! run) that move the entry's state and trigger the instance's reconcile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use drover_api::instance::{Instance, PortBinding};
use drover_api::keys::Keys;
use drover_runtime::{Action, Trigger};
use drover_store::reflector::Reader;
use drover_store::watcher::{watcher, Event};
use drover_store::Store;
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::drivers::DriverSet;
pub(crate) use crate::fence::{InFlight, NodeFence};
use crate::instance::{decide, until_deadline, Desired, Entry, InstanceTable, Step, Wanted};
use crate::local::{Records, Slot, StopReason};
use crate::metrics::Metrics;
use crate::ports::PortAllocator;
use crate::restart;
use crate::retained::Retained;
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
    /// Test only (the fault suite's checker must be able to fail): a fenced node keeps its
    /// running copies instead of stopping them. Never set in production.
    pub unsafe_keep_copies_when_fenced: bool,
}

/// What an engine is built from.
pub(crate) struct EngineParts {
    /// The etcd client.
    pub store: Store,
    /// The key schema.
    pub keys: Keys,
    /// The drivers of this agent.
    pub drivers: DriverSet,
    /// Host ports to hand out.
    pub ports: PortAllocator,
    /// The nodes served (one, or many hollow nodes), each with its own assignment cache.
    pub nodes: Vec<(Arc<str>, Reader<Instance>)>,
    /// The stop log.
    pub records: Records,
    /// Where removed runs' output is kept (`None`: not kept, as for hollow nodes).
    pub retained: Option<Arc<Retained>>,
    /// Settings.
    pub config: EngineConfig,
    /// The agent's metrics.
    pub metrics: Metrics,
    /// Cancelled when the agent goes away (even by abort): ends every helper task.
    pub kill: CancellationToken,
}

/// One node an engine serves.
pub(crate) struct Served {
    /// Its fencing state.
    fence: NodeFence,
    /// Its own assignment cache, fed by its own watch of `assignments/<node>/`.
    desired: Reader<Instance>,
    /// Reconciles of its slots so far.
    reconciles: AtomicU64,
}

/// The shared state of one agent process's convergence (one or many nodes).
pub(crate) struct Engine {
    store: Store,
    keys: Keys,
    drivers: DriverSet,
    ports: PortAllocator,
    instances: InstanceTable,
    nodes: HashMap<Arc<str>, Served>,
    trigger: OnceLock<Trigger<Slot>>,
    records: Records,
    retained: Option<Arc<Retained>>,
    config: EngineConfig,
    metrics: Metrics,
    kill: CancellationToken,
    seq: AtomicU64,
    /// The reads that confirm starts, grouped per node.
    confirms: Arc<crate::lifecycle::confirm::Reads>,
    /// The status writes, grouped per node.
    status_writes: Arc<crate::node_batch::Batcher<status::StatusWrite, drover_store::TxnOutcome>>,
}

impl Engine {
    /// An engine with no entries, every node fenced until it registers.
    pub fn new(parts: EngineParts) -> Self {
        let EngineParts {
            store,
            keys,
            drivers,
            ports,
            nodes,
            records,
            retained,
            config,
            metrics,
            kill,
        } = parts;
        Engine {
            confirms: crate::lifecycle::confirm::batcher(&store),
            status_writes: status::batcher(&store),
            store,
            keys,
            drivers,
            ports,
            instances: InstanceTable::default(),
            nodes: nodes
                .into_iter()
                .map(|(node, desired)| {
                    let served = Served {
                        fence: NodeFence::default(),
                        desired,
                        reconciles: AtomicU64::new(0),
                    };
                    (node, served)
                })
                .collect(),
            trigger: OnceLock::new(),
            records,
            retained,
            config,
            metrics,
            kill,
            seq: AtomicU64::new(1),
        }
    }

    /// The etcd client.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The reads that confirm starts, grouped per node.
    pub(crate) fn confirms(&self) -> &Arc<crate::lifecycle::confirm::Reads> {
        &self.confirms
    }

    /// The key schema.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The drivers.
    pub fn drivers(&self) -> &DriverSet {
        &self.drivers
    }

    /// The host port allocator.
    pub fn ports(&self) -> &PortAllocator {
        &self.ports
    }

    /// The local entries.
    pub fn instances(&self) -> &InstanceTable {
        &self.instances
    }

    /// The stop log.
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// The retained output of removed runs, where this engine keeps it.
    pub fn retained(&self) -> Option<&Arc<Retained>> {
        self.retained.as_ref()
    }

    /// The agent's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the test-only switch that keeps copies running on a fenced node is set.
    pub(crate) fn unsafe_keeps_copies_when_fenced(&self) -> bool {
        self.config.unsafe_keep_copies_when_fenced
    }

    /// The token that ends every helper task.
    pub fn kill(&self) -> &CancellationToken {
        &self.kill
    }

    /// The fencing state of `node`, if this engine serves it.
    pub fn node(&self, node: &str) -> Option<&NodeFence> {
        self.nodes.get(node).map(|n| &n.fence)
    }

    /// Whether every node's assignment cache has its first listing.
    pub fn is_listed(&self) -> bool {
        self.nodes.values().all(|n| n.desired.is_ready())
    }

    /// How many listings `node`'s assignment cache has had (1 + its re-lists).
    pub fn listings(&self, node: &str) -> Option<u64> {
        self.nodes.get(node).map(|n| n.desired.listings())
    }

    /// How many assignments `node`'s cache holds.
    pub fn assigned(&self, node: &str) -> Option<usize> {
        self.nodes.get(node).map(|n| n.desired.len())
    }

    /// How many reconciles of `node`'s slots have started.
    pub fn reconciles(&self, node: &str) -> Option<u64> {
        self.nodes
            .get(node)
            .map(|n| n.reconciles.load(Ordering::Relaxed))
    }

    /// Connects the engine to its reconcile loop (once; later calls are ignored).
    pub fn set_trigger(&self, trigger: Trigger<Slot>) {
        let _ = self.trigger.set(trigger);
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_fenced(&self, node: &str) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|n| *n.fence.fenced.borrow())
    }

    /// Asks for `slot` to be reconciled (no-op before the controller runs).
    pub fn poke(&self, slot: Slot, label: &'static str) {
        if let Some(t) = self.trigger.get() {
            let _ = t.trigger(slot, label);
        }
    }

    /// Every slot worth a look: assigned (in its node's cache) or known locally, optionally of
    /// one node (then only that node's cache and entries are read).
    pub fn all_slots(&self, node: Option<&str>) -> Vec<Slot> {
        let mut slots: Vec<Slot> = match node {
            Some(n) => {
                let Some((name, served)) = self.nodes.get_key_value(n) else {
                    return Vec::new();
                };
                let mut slots = self.assigned_slots(name, served);
                slots.extend(self.instances.slots_where(n, |_| true));
                slots
            }
            None => {
                let mut slots: Vec<Slot> = self
                    .nodes
                    .iter()
                    .flat_map(|(name, served)| self.assigned_slots(name, served))
                    .collect();
                slots.extend(self.instances.slots());
                slots
            }
        };
        slots.sort_by(|a, b| (&*a.node, &a.id).cmp(&(&*b.node, &b.id)));
        slots.dedup();
        slots
    }

    /// The slots in `served`'s cache that are `node`'s (all of them, given its watch's prefix).
    fn assigned_slots(&self, node: &Arc<str>, served: &Served) -> Vec<Slot> {
        served
            .desired
            .list()
            .iter()
            .filter_map(|v| self.slot_of_key(&v.key))
            .filter(|s| s.node == *node)
            .collect()
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
        self.instances.running(node)
    }

    /// One reconcile step for `slot`: reads the assignment and the local entry, asks
    /// [`decide`] what to do, carries that out and writes the status.
    ///
    /// # Guarantees
    /// - One copy at a time: a local copy of an earlier placement (another create revision,
    ///   generation or attempt) is stopped and forgotten before the new one can start, and a
    ///   start is confirmed against etcd first ([`Self::start`]), so a stale cache never
    ///   starts what etcd no longer assigns.
    /// - While its node is fenced (or the agent is going away) nothing is started, stopped or
    ///   written for the slot; fencing itself stops what runs.
    /// - A stop request stops the copy within its grace period and reports it terminal only
    ///   once the driver confirmed it gone; it is never started again.
    /// - Every status write is fenced on the assignment's create revision; a stale write
    ///   (the assignment is gone) stops the copy at once.
    /// - A final status (Succeeded, Failed, Stopped) is written once the copy ended for good
    ///   and is not followed by a start of the same copy.
    ///
    /// # Caveats
    /// - The runtime never runs it twice at once for a slot, but fencing, shutdown and the
    ///   exit waiter and prober act on the entry concurrently; each step re-reads the entry
    ///   under the table lock and acts on what it finds.
    /// - A failed status write returns an error and the runtime retries with backoff; until
    ///   then etcd shows the previous status.
    /// - The restart backoff lives in memory: an agent restart forgets it (an adopted copy
    ///   keeps its restart count from the previous status only).
    pub async fn reconcile(self: &Arc<Self>, slot: &Slot) -> Result<Action> {
        let key = self.keys.assignment(&slot.node, &slot.id);
        let served = self.nodes.get(&*slot.node);
        if let Some(served) = served {
            served.reconciles.fetch_add(1, Ordering::Relaxed);
        }
        let assigned = served.and_then(|n| n.desired.get(&key));
        let desired = Desired {
            node_fenced: self.is_fenced(&slot.node),
            shutting_down: self.kill.is_cancelled(),
            assignment: assigned.as_ref().map(|v| Wanted {
                create_revision: v.create_revision,
                generation: v.value.generation,
                attempt: v.value.attempt,
                stop: v.value.stop.as_ref().map(|s| s.reason.clone()),
            }),
        };
        loop {
            let step = self.instances.view(slot, |e| {
                decide(e, &desired, &self.config.backoff, Instant::now())
            });
            let action = match (step, &assigned) {
                (Step::Hold, _) => return Ok(Action::await_change()),
                (Step::Forget { reason, again }, _) => {
                    match (reason, again) {
                        (StopReason::Fenced, _) => tracing::info!(
                            "forgetting a copy self-fencing stopped; converging afresh"
                        ),
                        (_, true) => tracing::info!(
                            "assignment changed (new create revision or attempt); replacing the local copy"
                        ),
                        (_, false) => {}
                    }
                    self.stop_and_forget(slot, reason).await?;
                    if again {
                        self.poke(slot.clone(), "replace");
                    }
                    return Ok(Action::await_change());
                }
                (Step::Track, Some(v)) => {
                    let kind = self.drivers.kind_for(&v.value.spec);
                    let entry = Entry::new(Arc::new(v.value.clone()), v.create_revision, kind);
                    self.instances.insert(slot.clone(), entry);
                    continue;
                }
                (Step::Adopt, Some(v)) => {
                    tracing::info!("adopting the running instance for its assignment");
                    let instance = Arc::new(v.value.clone());
                    self.instances
                        .update(slot, |e| e.adopt(instance, v.create_revision));
                    continue;
                }
                (Step::Track | Step::Adopt, None) => return Ok(Action::await_change()),
                (Step::StopOnRequest { reason }, _) => {
                    self.stop_on_request(slot, &reason).await?;
                    Action::await_change()
                }
                (step, _) => {
                    let action = self.carry_out(slot, step).await?;
                    self.instances
                        .view(slot, |e| until_deadline(e, action, Instant::now()))
                }
            };
            self.publish(slot, &key).await?;
            return Ok(action);
        }
    }

    /// Carries out a step that moves the entry towards its assignment.
    async fn carry_out(self: &Arc<Self>, slot: &Slot, step: Step) -> Result<Action> {
        match step {
            Step::Wait(d) => Ok(Action::requeue(d)),
            Step::Start => {
                self.start(slot).await?;
                self.spawn_prober(slot);
                Ok(Action::await_change())
            }
            Step::Probe => {
                self.spawn_prober(slot);
                Ok(Action::await_change())
            }
            Step::StopUnhealthy => {
                tracing::info!("health check failed; stopping the instance");
                self.stop_run(slot).await?;
                self.poke(slot.clone(), "unhealthy");
                Ok(Action::await_change())
            }
            Step::Restart {
                after,
                restart,
                ended,
            } => self.restart(slot, after, restart, ended).await,
            Step::Finish {
                phase,
                reason,
                message,
            } => {
                tracing::info!(%phase, ?reason, %message, "instance ended for good");
                self.instances
                    .update(slot, |e| e.finish(phase, reason, message));
                Ok(Action::await_change())
            }
            Step::Expire(limit) => self.expire(slot, limit).await,
            Step::Idle
            | Step::Hold
            | Step::Forget { .. }
            | Step::Track
            | Step::Adopt
            | Step::StopOnRequest { .. } => Ok(Action::await_change()),
        }
    }

    /// Destroys the ended run and schedules restart number `restart` after `after`.
    async fn restart(
        &self,
        slot: &Slot,
        after: Duration,
        restart: u32,
        ended: restart::Ended,
    ) -> Result<Action> {
        tracing::info!(restart, ?after, ?ended, "restarting after backoff");
        self.metrics.restarts.inc();
        let run = self.instances.read(slot, |e| {
            (self.drivers.get(e.kind()).cloned(), e.handle().cloned())
        });
        if let Some((Some(driver), Some(handle))) = run {
            self.retain_output(slot, driver.as_ref(), &handle).await;
            driver.destroy(&handle).await?;
        }
        let message = format!("{}; restart {restart} in {after:?}", describe(ended));
        self.instances.update(slot, |e| {
            e.restart_after(Instant::now() + after, restart, message);
        });
        Ok(Action::requeue(after))
    }

    /// Writes the entry's status if it changed since the last write.
    async fn publish(&self, slot: &Slot, key: &str) -> Result<()> {
        let Some((status, rev)) = self.instances.read(slot, Entry::unwritten).flatten() else {
            return Ok(());
        };
        let written = status::write_batched(
            &self.status_writes,
            &self.store,
            &self.keys,
            key,
            rev,
            &status,
        )
        .await;
        match written {
            Ok(Written::Ok { .. }) => {
                self.metrics.status_write("ok");
                self.instances.update(slot, |e| e.written(status));
                Ok(())
            }
            Ok(Written::Stale) => {
                self.metrics.status_write("stale");
                // The assignment is gone or was placed anew: this copy is no longer ours, and
                // the cache that still shows it is behind. Stop it now rather than when the
                // watch catches up.
                if self.instances.read(slot, Entry::is_running) == Some(true) {
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
    let span = tracing::info_span!(
        "reconcile",
        node = %slot.node,
        task = slot.id.task(),
        instance = %slot.id
    );
    engine.reconcile(&slot).instrument(span).await
}

/// The keys of `node` to reconcile, from its own watch of `assignments/<node>/` feeding its
/// own reflector `writer` (the cache the engine was built with for `node`).
///
/// # Guarantees
/// - Keys are emitted only once the cache holds what they refer to: per change for `Apply` and
///   `Delete`, and for every assigned and every local instance *of this node* at `InitDone` (a
///   first list or a re-list after compaction), so an instance is never judged unassigned from
///   a half-built cache, and a re-list of one node reconciles no other node's slots.
/// - Only keys of `node` are emitted.
///
/// # Caveats
/// A value that does not decode is logged with its key and skipped: the cache keeps the key's
/// previous value, if any, on the watch and through a re-list alike
/// ([`drover_store::reflector::reflector`]); it affects no other key and no other node. A key
/// the cache never held a good value for (the first listing after an agent restart) is not
/// assigned as far as this agent knows, so a copy adopted for it is stopped.
pub(crate) fn key_stream(
    engine: Arc<Engine>,
    node: Arc<str>,
    writer: drover_store::reflector::Writer<Instance>,
) -> impl Stream<Item = Vec<Slot>> + Send {
    let store = engine.store().clone();
    let prefix = engine.keys().node_assignments(&node);
    // Whatever of the node's events is ready comes as one batch (a watch response carries the
    // leader's transaction for this node whole), so the node's slots are queued together and
    // their starts share their etcd requests (`crate::node_batch`).
    drover_store::reflector::reflector(writer, watcher::<Instance>(store, prefix))
        .ready_chunks(EVENTS_PER_BATCH)
        .filter_map(move |items| {
            let mut slots: Vec<Slot> = Vec::new();
            for item in items {
                match item {
                    Ok(Event::Apply(v)) => slots.extend(engine.slot_of_key(&v.key)),
                    Ok(Event::Delete { key, .. }) => slots.extend(engine.slot_of_key(&key)),
                    Ok(Event::InitDone { .. }) => slots.extend(engine.all_slots(Some(&node))),
                    Ok(Event::Init | Event::InitApply(_)) => {}
                    Err(e) => tracing::warn!(node = %node, error = %e, "assignment watch error"),
                }
            }
            slots.retain(|s| s.node == node);
            futures::future::ready((!slots.is_empty()).then_some(slots))
        })
}

/// At most this many of a node's ready watch events go into one batch of slots.
const EVENTS_PER_BATCH: usize = 256;

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
