//! Hollow nodes: many simulated nodes in one process for scale tests
//! (`drover agent --hollow-nodes N`).
//!
//! Each node asks of etcd what a real agent asks: its own lease with its keep-alive, its own
//! node key, its own watch of its own `assignments/<node>/` prefix feeding its own assignment
//! cache (so a re-list of one node swaps and reconciles that node alone), and its own fenced
//! status writes. Each node registers, heartbeats and self-fences on its own lease exactly like
//! a real agent.
//!
//! What still differs from as many real agents: all nodes share one etcd client (so all their
//! watches and keep-alives are streams of one HTTP/2 connection), one engine with one
//! reconcile loop (its concurrency bounds all nodes together) and one hollow driver; hollow
//! instances are never health-probed.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use drover_api::keys::Keys;
use drover_api::node::{Capacity, Node};
use drover_api::quantity::{Cpu, Memory};
use drover_store::Store;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::converge::{Engine, EngineConfig};
use crate::driver::hollow::HollowDriver;
use crate::drivers::DriverSet;
use crate::heartbeat::{self, State};
use crate::local::{Records, StopRecord};
use crate::ports::PortAllocator;
use crate::restart;
use crate::wiring::{Built, Setup, Wired};

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Hollow nodes could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The base name does not make valid node names.
    #[error("hollow node name {0:?} is not a DNS-1123 label")]
    BadName(String),
    /// The reconcile loop could not be built or did not drain.
    #[error(transparent)]
    Runtime(#[from] drover_runtime::Error),
}

/// Settings of a hollow-node run.
#[derive(Debug, Clone)]
pub struct HollowConfig {
    /// Nodes are named `<base_name>-<i>`, `i` in `0..count`.
    pub base_name: String,
    /// How many nodes.
    pub count: usize,
    /// Lease TTL of each node. Default 10 s.
    pub lease_ttl: Duration,
    /// Capacity each node advertises. Default 4 CPUs, 8 GiB.
    pub capacity: Capacity,
    /// Reconciles at once across all nodes. Default 64.
    pub concurrency: usize,
    /// Revoke the nodes' leases on shutdown (so the controller sees them gone at once).
    /// Default true.
    pub revoke_on_shutdown: bool,
}

impl HollowConfig {
    /// Defaults for `count` nodes named `<base_name>-<i>`.
    pub fn new(base_name: impl Into<String>, count: usize) -> Self {
        HollowConfig {
            base_name: base_name.into(),
            count,
            lease_ttl: Duration::from_secs(10),
            capacity: Capacity {
                cpu: Cpu::cores(4),
                memory: Memory::mebibytes(8192),
            },
            concurrency: 64,
            revoke_on_shutdown: true,
        }
    }

    /// The node names.
    pub fn names(&self) -> Vec<String> {
        (0..self.count)
            .map(|i| format!("{}-{i}", self.base_name))
            .collect()
    }
}

/// Runs `config.count` hollow nodes until `shutdown`; `ready` (if given) receives the number
/// of nodes registered so far whenever it changes. The nodes' metrics go into `registry`
/// before this awaits anything; a caller that serves that registry while the nodes run uses
/// [`HollowNodes::start`] and [`HollowNodes::run_until`] instead.
pub async fn run_hollow(
    store: Store,
    keys: Keys,
    config: HollowConfig,
    registry: &mut Registry,
    shutdown: CancellationToken,
    ready: Option<watch::Sender<usize>>,
) -> Result<()> {
    HollowNodes::start(store, keys, config, registry)?
        .run_until(shutdown, ready)
        .await;
    Ok(())
}

/// Started hollow nodes. Dropping it ends every task without cleanup (leases then expire).
pub struct HollowNodes {
    handle: HollowHandle,
    revoke_on_shutdown: bool,
    wired: Wired,
}

/// A cloneable view of running hollow nodes, per node: registration, assignment cache,
/// reconciles, instances.
#[derive(Clone)]
pub struct HollowHandle {
    engine: Arc<Engine>,
    states: Arc<[watch::Receiver<State>]>,
}

impl HollowNodes {
    /// Runs the started nodes until `shutdown`, then stops them (see [`HollowNodes::stop`]);
    /// `ready` (if given) receives the number of nodes registered whenever it changes.
    pub async fn run_until(self, shutdown: CancellationToken, ready: Option<watch::Sender<usize>>) {
        let handle = self.handle();
        loop {
            if let Some(tx) = &ready {
                tx.send_if_modified(|n| {
                    let now = handle.registered();
                    std::mem::replace(n, now) != now
                });
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        self.stop().await;
    }

    /// Validates the node names, builds the engine and starts every node's watch, the shared
    /// reconcile loop and every node's heartbeat. Returns at once.
    pub fn start(
        store: Store,
        keys: Keys,
        config: HollowConfig,
        registry: &mut Registry,
    ) -> Result<HollowNodes> {
        let names = config.names();
        if let Some(bad) = names.iter().find(|n| !drover_api::names::is_valid_label(n)) {
            return Err(Error::BadName(bad.clone()));
        }
        let started = tokio::time::Instant::now();
        let nodes: Vec<Arc<str>> = names.iter().map(|n| Arc::from(n.as_str())).collect();
        let built = Built::new(
            store,
            keys,
            Setup {
                drivers: DriverSet::hollow(HollowDriver::new()),
                ports: PortAllocator::default(),
                nodes,
                records: Records::new(None),
                // Simulated instances have no output worth keeping.
                retained: None,
                config: EngineConfig {
                    backoff: restart::Backoff {
                        initial: Duration::from_secs(1),
                        max: Duration::from_secs(30),
                    },
                    unsafe_keep_copies_when_fenced: false,
                },
            },
            registry,
        );
        let mut wired = built.run("hollow-agent", config.concurrency, registry)?;

        let margin = (config.lease_ttl / 10).max(Duration::from_secs(1));
        let states: Arc<[_]> = names
            .iter()
            .map(|name| {
                let record = Node {
                    name: name.clone(),
                    address: String::new(),
                    capacity: config.capacity,
                    labels: [("drover.dev/hollow".to_string(), "true".to_string())].into(),
                    drivers: vec![drover_api::task::DriverKind::Hollow],
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    tls: false,
                    started_at: Utc::now(),
                };
                wired.heartbeat(
                    record,
                    heartbeat::Settings {
                        ttl: config.lease_ttl,
                        margin,
                        started,
                        lease_file: None,
                    },
                )
            })
            .collect();
        Ok(HollowNodes {
            handle: HollowHandle {
                engine: wired.engine().clone(),
                states,
            },
            revoke_on_shutdown: config.revoke_on_shutdown,
            wired,
        })
    }

    /// A handle for readiness checks and tests.
    pub fn handle(&self) -> HollowHandle {
        self.handle.clone()
    }

    /// Stops the reconcile loop and the heartbeats, then revokes the leases (unless
    /// `revoke_on_shutdown` is off). Hollow instances are simulated: nothing needs stopping.
    pub async fn stop(mut self) {
        self.wired.stop_loop().await;
        let regs = self.wired.stop_heartbeats().await;
        if self.revoke_on_shutdown {
            let wired = &self.wired;
            let revokes = regs.into_iter().map(|reg| async move {
                if let Err(e) = wired.revoke(reg).await {
                    tracing::warn!(error = %e, "revoking a hollow node's lease");
                }
            });
            futures::future::join_all(revokes).await;
        }
    }
}

impl HollowHandle {
    /// How many nodes are registered now.
    pub fn registered(&self) -> usize {
        self.states
            .iter()
            .filter(|s| matches!(*s.borrow(), State::Registered(_)))
            .count()
    }

    /// Whether the nodes' assignments have had their first listing.
    pub fn is_listed(&self) -> bool {
        self.engine.is_listed()
    }

    /// Whether every node is registered and has its first assignment listing.
    pub fn is_ready(&self) -> bool {
        self.registered() == self.states.len() && self.engine.is_listed()
    }

    /// How many listings `node`'s assignment cache has had: 1, plus one per re-list.
    pub fn listings(&self, node: &str) -> Option<u64> {
        self.engine.listings(node)
    }

    /// How many assignments `node`'s cache holds.
    pub fn assigned(&self, node: &str) -> Option<usize> {
        self.engine.assigned(node)
    }

    /// How many reconciles of `node`'s instances have started.
    pub fn reconciles(&self, node: &str) -> Option<u64> {
        self.engine.reconciles(node)
    }

    /// Instances running on `node`.
    pub fn running(&self, node: &str) -> usize {
        self.engine.running(Some(node))
    }

    /// Every stop recorded on any node, oldest first.
    pub fn stop_records(&self) -> Vec<StopRecord> {
        self.engine.records().list()
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of_val;

    use drover_api::instance::Instance;

    use super::*;
    use crate::converge;
    use crate::lifecycle::tests::{rig, NODE};

    // Sizes in the test build when these were set: 1,272, 120 and 1,048 bytes; before the
    // heartbeat's and the watcher's non-waiting steps were boxed, 15,344 and 11,168.
    /// Bytes a node's heartbeat task holds (its future lives in the task for the node's life).
    const HEARTBEAT_MAX: usize = 2048;
    /// Bytes of a node's key stream outside its boxed watcher (boxed by the reconcile loop).
    const KEY_STREAM_MAX: usize = 256;
    /// Bytes of a node's watcher state machine (boxed), pending step included.
    const WATCHER_MAX: usize = 2048;

    /// A hollow node's per-node futures are what its memory mostly is, times thousands of nodes:
    /// their sizes are fixed at compile time, and this keeps them from growing unnoticed.
    #[tokio::test]
    async fn the_per_node_futures_stay_small() {
        let rig = rig().await;
        let record = Node {
            name: NODE.to_string(),
            address: String::new(),
            capacity: HollowConfig::new("n", 1).capacity,
            labels: Default::default(),
            drivers: vec![drover_api::task::DriverKind::Hollow],
            version: "test".into(),
            tls: false,
            started_at: Utc::now(),
        };
        let settings = heartbeat::Settings {
            ttl: Duration::from_secs(10),
            margin: Duration::from_secs(1),
            started: tokio::time::Instant::now(),
            lease_file: None,
        };
        let (tx, _rx) = watch::channel(State::Registering);
        let beat = heartbeat::maintain(
            rig.engine.clone(),
            record,
            settings,
            tx,
            CancellationToken::new(),
        );
        let watcher =
            drover_store::watcher::<Instance>(rig.store.clone(), rig.keys.node_assignments(NODE));
        let keys = converge::key_stream(rig.engine.clone(), Arc::from(NODE), rig.writer);
        let sizes = [
            ("heartbeat", size_of_val(&beat), HEARTBEAT_MAX),
            ("key stream", size_of_val(&keys), KEY_STREAM_MAX),
            ("watcher", size_of_val(&*watcher), WATCHER_MAX),
        ];
        for (what, size, max) in sizes {
            eprintln!("{what}: {size} bytes (at most {max})");
            assert!(
                size <= max,
                "a node's {what} future grew to {size} bytes (at most {max})"
            );
        }
    }
}
