//! The start-up and shut-down wiring a real agent ([`crate::agent`]) and a hollow-node
//! process ([`crate::hollow_nodes`]) share: the engine with one assignment cache per node, the
//! reconcile loop fed by one watch per node (of its own `assignments/<node>/`), one heartbeat
//! per node, and stopping them in order. A real agent is the case of one node.

use std::sync::Arc;

use drover_api::instance::Instance;
use drover_api::keys::Keys;
use drover_api::node::Node;
use drover_runtime::{Reconciler, ReconcilerConfig};
use drover_store::reflector::Writer;
use drover_store::{LeaseId, Store};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::converge::{self, Engine, EngineConfig, EngineParts};
use crate::drivers::DriverSet;
use crate::heartbeat::{self, Registration, State};
use crate::local::Records;
use crate::metrics::{self, Metrics};
use crate::ports::PortAllocator;
use crate::retained::Retained;

/// What differs between an agent's engine and a hollow-node engine.
pub(crate) struct Setup {
    /// The drivers.
    pub drivers: DriverSet,
    /// Host ports to hand out.
    pub ports: PortAllocator,
    /// The nodes served.
    pub nodes: Vec<Arc<str>>,
    /// The stop log.
    pub records: Records,
    /// Where removed runs' output is kept, if anywhere.
    pub retained: Option<Arc<Retained>>,
    /// Engine settings.
    pub config: EngineConfig,
}

/// An engine whose reconcile loop is not running yet (adoption happens in between).
pub(crate) struct Built {
    engine: Arc<Engine>,
    /// Each node's cache writer, for its watch.
    writers: Vec<(Arc<str>, Writer<Instance>)>,
    kill: CancellationToken,
}

impl Built {
    /// Builds the engine with an empty assignment cache per node; registers the agent's
    /// metrics.
    pub fn new(store: Store, keys: Keys, setup: Setup, registry: &mut Registry) -> Self {
        let kill = CancellationToken::new();
        let (nodes, writers) = setup
            .nodes
            .into_iter()
            .map(|node| {
                let (reader, writer) = drover_store::reflector::store();
                ((node.clone(), reader), (node, writer))
            })
            .unzip();
        let engine = Arc::new(Engine::new(EngineParts {
            store,
            keys,
            drivers: setup.drivers,
            ports: setup.ports,
            nodes,
            records: setup.records,
            retained: setup.retained,
            config: setup.config,
            metrics: Metrics::register(registry),
            kill: kill.clone(),
        }));
        Built {
            engine,
            writers,
            kill,
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Starts the reconcile loop `name` (at most `concurrency` reconciles at once, across all
    /// nodes), fed by each node's own watch of `assignments/<node>/`.
    pub fn run(
        self,
        name: &'static str,
        concurrency: usize,
        registry: &mut Registry,
    ) -> drover_runtime::Result<Wired> {
        let Built {
            engine,
            writers,
            kill,
        } = self;
        let mut cc = ReconcilerConfig::new(name);
        cc.concurrency = concurrency;
        let mut reconciler = Reconciler::new(cc, engine.clone(), converge::reconcile)?
            // Under the agent's own name: `drover_agent_reconciles_total`, not the controller's.
            .with_metrics(&drover_runtime::Metrics::register(
                registry.sub_registry_with_prefix(metrics::PREFIX),
            ));
        for (node, writer) in writers {
            reconciler =
                reconciler.with_batches(converge::key_stream(engine.clone(), node, writer));
        }
        engine.set_trigger(reconciler.trigger());
        let loop_stop = kill.child_token();
        let reconciler = tokio::spawn(reconciler.run(loop_stop.clone()));
        Ok(Wired {
            engine,
            heartbeat_stop: kill.child_token(),
            kill: kill.clone(),
            loop_stop,
            reconciler: Some(reconciler),
            beats: Vec::new(),
            _kill: kill.drop_guard(),
        })
    }
}

/// A running engine with its reconcile loop and heartbeats. Dropping it ends every task
/// without cleanup (the in-process equivalent of SIGKILL).
pub(crate) struct Wired {
    engine: Arc<Engine>,
    kill: CancellationToken,
    loop_stop: CancellationToken,
    reconciler: Option<JoinHandle<drover_runtime::Result<()>>>,
    heartbeat_stop: CancellationToken,
    beats: Vec<JoinHandle<Option<Registration>>>,
    _kill: DropGuard,
}

impl Wired {
    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// A token cancelled when the agent goes away, for other tasks it starts.
    pub fn child_token(&self) -> CancellationToken {
        self.kill.child_token()
    }

    /// Starts registering and heartbeating `record`'s node (see [`heartbeat::maintain`]);
    /// returns its state.
    pub fn heartbeat(
        &mut self,
        record: Node,
        settings: heartbeat::Settings,
    ) -> watch::Receiver<State> {
        let (tx, rx) = watch::channel(State::Registering);
        self.beats.push(tokio::spawn(heartbeat::maintain(
            self.engine.clone(),
            record,
            settings,
            tx,
            self.heartbeat_stop.clone(),
        )));
        rx
    }

    /// Stops the reconcile loop and waits for it to drain (once).
    pub async fn stop_loop(&mut self) {
        self.loop_stop.cancel();
        if let Some(reconciler) = self.reconciler.take() {
            if let Ok(Err(e)) = reconciler.await {
                tracing::warn!(error = %e, "reconcile loop did not drain");
            }
        }
    }

    /// Stops the heartbeats; returns the live registrations (for the caller to revoke).
    pub async fn stop_heartbeats(&mut self) -> Vec<Registration> {
        self.heartbeat_stop.cancel();
        futures::future::join_all(std::mem::take(&mut self.beats))
            .await
            .into_iter()
            .filter_map(|r| r.ok().flatten())
            .collect()
    }

    /// Revokes a registration's lease (the controller then sees the node gone at once).
    pub async fn revoke(&self, reg: Registration) -> Result<(), drover_store::Error> {
        let lease: LeaseId = reg.lease;
        drop(reg);
        self.engine.store().revoke(lease).await
    }
}
