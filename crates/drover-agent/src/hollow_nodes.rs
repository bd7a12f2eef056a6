//! Hollow nodes: many simulated nodes in one process for scale tests
//! (`drover agent --hollow-nodes N`).
//!
//! All nodes share one engine, one hollow driver and one assignment watch (over the common
//! prefix `assignments/<base>-`), so a node costs one lease with its keep-alive task, one node
//! key and the entries of its instances. Each node registers, heartbeats and self-fences on
//! its own lease exactly like a real agent; hollow instances are never health-probed.

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

use crate::converge::EngineConfig;
use crate::driver::hollow::HollowDriver;
use crate::drivers::DriverSet;
use crate::heartbeat::{self, State};
use crate::local::Records;
use crate::ports::PortAllocator;
use crate::restart;
use crate::wiring::{Built, Setup};

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
/// of nodes registered so far whenever it changes.
pub async fn run_hollow(
    store: Store,
    keys: Keys,
    config: HollowConfig,
    registry: &mut Registry,
    shutdown: CancellationToken,
    ready: Option<watch::Sender<usize>>,
) -> Result<()> {
    let names = config.names();
    if let Some(bad) = names.iter().find(|n| !drover_api::names::is_valid_label(n)) {
        return Err(Error::BadName(bad.clone()));
    }
    let started = tokio::time::Instant::now();
    let nodes: Vec<Arc<str>> = names.iter().map(|n| Arc::from(n.as_str())).collect();
    let built = Built::new(
        store,
        keys.clone(),
        Setup {
            drivers: DriverSet::hollow(HollowDriver::new()),
            ports: PortAllocator::default(),
            nodes,
            records: Records::new(None),
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
    let prefix = format!("{}{}-", keys.assignments(), config.base_name);
    let mut wired = built.run("hollow-agent", config.concurrency, prefix, registry)?;

    let margin = (config.lease_ttl / 10).max(Duration::from_secs(1));
    let states: Vec<_> = names
        .iter()
        .map(|name| {
            let record = Node {
                name: name.clone(),
                address: String::new(),
                capacity: config.capacity,
                labels: [("drover.dev/hollow".to_string(), "true".to_string())].into(),
                drivers: vec![drover_api::task::DriverKind::Hollow],
                version: env!("CARGO_PKG_VERSION").to_string(),
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
    let count_ready = || {
        states
            .iter()
            .filter(|s| matches!(*s.borrow(), State::Registered(_)))
            .count()
    };
    loop {
        if let Some(tx) = &ready {
            tx.send_if_modified(|n| {
                let now = count_ready();
                std::mem::replace(n, now) != now
            });
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    wired.stop_loop().await;
    let regs = wired.stop_heartbeats().await;
    if config.revoke_on_shutdown {
        let revokes = regs.into_iter().map(|reg| async {
            if let Err(e) = wired.revoke(reg).await {
                tracing::warn!(error = %e, "revoking a hollow node's lease");
            }
        });
        futures::future::join_all(revokes).await;
    }
    Ok(())
}
