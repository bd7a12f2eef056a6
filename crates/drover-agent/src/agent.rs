//! The agent as a whole: [`run`] (what `drover agent` calls) and [`Agent`], which starts the
//! pieces — drivers, adoption, registration/heartbeat with self-fencing, the assignment watch
//! and reconcile loop, the gRPC service — and shuts them down in order.

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::Utc;
use drover_api::keys::Keys;
use drover_api::node::Node;
use drover_store::{LeaseId, Store};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::converge::{Engine, EngineConfig};
use crate::drivers::DriverSet;
use crate::heartbeat::{self, State};
use crate::local::{Records, StopRecord};
use crate::ports::PortAllocator;
use crate::readiness::{self, NotReady};
use crate::retained::Retained;
use crate::wiring::{Built, Setup, Wired};
use crate::{grpc, restart};

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the agent could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid (exit 64 at the binary).
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// A driver could not be set up.
    #[error(transparent)]
    Drivers(#[from] crate::drivers::Error),
    /// The gRPC TLS files cannot be used (exit 64 at the binary).
    #[error(transparent)]
    Tls(#[from] crate::grpc_tls::Error),
    /// The gRPC address could not be bound.
    #[error("binding the gRPC address {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The retained-output directory cannot be created.
    #[error("retained output under {}: {source}", dir.display())]
    Retained {
        /// The directory (`<state_dir>/retained`).
        dir: std::path::PathBuf,
        /// What failed.
        #[source]
        source: crate::retained::Error,
    },
    /// The reconcile loop could not be built or did not drain.
    #[error(transparent)]
    Runtime(#[from] drover_runtime::Error),
    /// The gRPC server failed.
    #[error(transparent)]
    Grpc(#[from] grpc::Error),
    /// Revoking the lease at shutdown failed (the lease then expires after its TTL).
    #[error("revoking the lease at shutdown: {0}")]
    Revoke(#[source] drover_store::Error),
}

/// Runs the agent until `shutdown` is cancelled, then shuts down gracefully: the lease is
/// revoked (so the controller reschedules at once) and instances are stopped within their
/// grace periods — or, with `keep_running_on_shutdown`, left running with the lease not
/// revoked, for an upgraded agent to adopt.
pub async fn run(
    store: Store,
    keys: Keys,
    config: AgentConfig,
    registry: &mut Registry,
    shutdown: CancellationToken,
) -> Result<()> {
    Agent::start(store, keys, config, registry, shutdown)
        .await?
        .join()
        .await
}

/// A started agent. Dropping it (or aborting the task that awaits [`Agent::join`]) ends every
/// task it started without any cleanup — the in-process equivalent of SIGKILL: instances keep
/// running and the lease expires on its own.
pub struct Agent {
    handle: AgentHandle,
    config: AgentConfig,
    shutdown: CancellationToken,
    wired: Wired,
    grpc: JoinHandle<grpc::Result<()>>,
}

/// A cloneable view of a running agent: readiness, address, lease, stop records.
#[derive(Clone)]
pub struct AgentHandle {
    node: String,
    address: SocketAddr,
    state: watch::Receiver<State>,
    engine: Arc<Engine>,
}

impl AgentHandle {
    /// The node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The bound gRPC address (also published in the node key).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Ready: registered, and the assignment cache has its first listing.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// Ready now, or why not (what `/readyz` answers). Not ready while fenced or
    /// re-registering after a lost lease, whatever it was before.
    pub fn readiness(&self) -> Result<(), NotReady> {
        readiness::readiness(*self.state.borrow(), self.engine.is_listed())
    }

    /// The heartbeat's state as it changes (registering, registered, fenced, refused).
    pub fn state_changes(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// The heartbeat's state.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// The current lease, when registered.
    pub fn lease(&self) -> Option<LeaseId> {
        match *self.state.borrow() {
            State::Registered(l) => Some(l),
            _ => None,
        }
    }

    /// Waits until [`Self::is_ready`].
    pub async fn wait_ready(&self) {
        let mut rx = self.state.clone();
        loop {
            if self.is_ready() {
                return;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
        }
    }

    /// Every stop this agent recorded (fencing, unassignment, shutdown), oldest first.
    pub fn stop_records(&self) -> Vec<StopRecord> {
        self.engine.records().list()
    }

    /// Instances running now.
    pub fn running(&self) -> usize {
        self.engine.running(None)
    }
}

impl Agent {
    /// Validates the config, builds the drivers, adopts surviving instances, binds the gRPC
    /// address and starts heartbeat, reconcile loop and gRPC server. Returns at once; the
    /// agent becomes ready (see [`AgentHandle::is_ready`]) when registered and listed.
    pub async fn start(
        store: Store,
        keys: Keys,
        config: AgentConfig,
        registry: &mut Registry,
        shutdown: CancellationToken,
    ) -> Result<Agent> {
        config.validate()?;
        let tls_files = config.grpc_tls()?;
        let server = crate::grpc_tls::server(tls_files.as_ref())?;
        let started = tokio::time::Instant::now();
        std::fs::create_dir_all(&config.state_dir).ok();
        let drivers = DriverSet::new(
            config.driver,
            &config.state_dir,
            &config.publish_ip,
            config.allow_root_tasks,
        )
        .await?;
        let listener = tokio::net::TcpListener::bind(config.address)
            .await
            .map_err(|source| Error::Bind {
                address: config.address,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| Error::Bind {
            address: config.address,
            source,
        })?;
        if tls_files.is_none() && !address.ip().is_loopback() {
            tracing::warn!(
                %address,
                "the gRPC service (Logs, Ping) listens beyond loopback without TLS: anyone who \
                 reaches it can read instance logs; give --tls-cert-file, --tls-key-file and \
                 --client-ca-file"
            );
        }
        let node: Arc<str> = Arc::from(config.node.as_str());
        let retained_dir = config.state_dir.join("retained");
        let retained = Arc::new(Retained::open(retained_dir.clone(), config.logs).map_err(
            |source| Error::Retained {
                dir: retained_dir,
                source,
            },
        )?);
        let built = Built::new(
            store,
            keys,
            Setup {
                drivers: drivers.clone(),
                ports: PortAllocator::new(config.port_range.clone()),
                nodes: vec![node.clone()],
                records: Records::new(Some(config.state_dir.clone())),
                retained: Some(retained.clone()),
                config: EngineConfig {
                    backoff: restart::Backoff {
                        initial: config.restart_backoff,
                        max: config.restart_backoff_max,
                    },
                    unsafe_keep_copies_when_fenced: config.unsafe_keep_copies_when_fenced,
                },
            },
            registry,
        );
        // Bounded, so fencing before the first registration is not delayed.
        built
            .engine()
            .adopt(&node, started + config.lease_ttl / 4)
            .await;
        let mut wired = built.run("agent", config.concurrency, registry)?;
        let engine = wired.engine().clone();

        let record = Node {
            name: config.node.clone(),
            address: crate::advertise::advertised(config.advertise_address.as_ref(), address),
            capacity: config.effective_capacity(),
            labels: config.labels.clone(),
            drivers: drivers.kinds(),
            version: config.version.clone(),
            tls: tls_files.is_some(),
            started_at: Utc::now(),
        };
        let state_rx = wired.heartbeat(
            record,
            heartbeat::Settings {
                ttl: config.lease_ttl,
                margin: config.fence_margin(),
                started,
                lease_file: Some(config.state_dir.join("lease")),
            },
        );
        let grpc = tokio::spawn(grpc::serve(
            server,
            listener,
            engine.clone(),
            node.clone(),
            config.version.clone(),
            wired.child_token(),
        ));
        tokio::spawn(collect_retained(
            engine.clone(),
            retained,
            wired.child_token(),
        ));
        tracing::info!(node = %node, %address, tls = tls_files.is_some(), drivers = ?drivers.kinds(), "agent started");
        Ok(Agent {
            handle: AgentHandle {
                node: config.node.clone(),
                address,
                state: state_rx,
                engine: engine.clone(),
            },
            config,
            shutdown,
            wired,
            grpc,
        })
    }

    /// A handle for readiness checks and tests.
    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// Runs until the shutdown token, then shuts down (see [`run`]).
    pub async fn join(self) -> Result<()> {
        let Agent {
            config,
            shutdown,
            mut wired,
            grpc,
            ..
        } = self;
        tokio::select! {
            () = shutdown.cancelled() => {}
            r = grpc => {
                if let Ok(Err(e)) = r {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            }
        }
        tracing::info!(node = %config.node, keep_running = config.keep_running_on_shutdown, "agent shutting down");
        wired.stop_loop().await;
        // Copies stop first, while the heartbeat still holds the lease; the lease goes last.
        // Revoking first would let the controller start replacements while the old copies are
        // still inside their grace periods: two live copies (promise 6).
        if !config.keep_running_on_shutdown {
            wired.engine().stop_all(&config.node).await;
        }
        let regs = wired.stop_heartbeats().await;
        if config.keep_running_on_shutdown {
            tracing::info!("leaving instances running and the lease unrevoked for the next agent");
            return Ok(());
        }
        for reg in regs {
            wired.revoke(reg).await.map_err(Error::Revoke)?;
        }
        Ok(())
    }
}

/// How often retained output is checked against the age bound; writes check the other bounds
/// as they happen.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Deletes retained output beyond its bounds every [`COLLECT_EVERY`], until `stop`. Not at
/// once: right after start the table does not hold every assigned instance yet, and an
/// instance missing from it would count as finished.
async fn collect_retained(engine: Arc<Engine>, retained: Arc<Retained>, stop: CancellationToken) {
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + COLLECT_EVERY, COLLECT_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let live = engine
            .instances()
            .slots()
            .iter()
            .map(|s| s.id.to_string())
            .collect();
        match retained.collect(live).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retained output beyond its bounds deleted"),
            Err(error) => tracing::warn!(%error, "cannot delete retained output beyond its bounds"),
        }
    }
}
