//! Drover's controller: HA leader election with fencing, the pure scheduler and planner, node
//! lifecycle, failure escalation and dead letters, drains, and everything that is not
//! a service: jobs, scheduled and triggered runs, retries, the circuit breaker, `dependsOn` and
//! `blocks` gates, and priority preemption.
//!
//! - [`Controller`]: one replica. [`Controller::run`] campaigns through etcd's election, and
//!   while elected plans from a watched snapshot and commits fenced transactions; it resigns on
//!   shutdown. [`Controller::status`] feeds `/healthz` and `/readyz`.
//! - [`scheduler`] (filter → score → pick) and [`planner`] (`plan(&Snapshot, now) -> Plan`) are
//!   pure and property-tested; [`commit`] is the fenced write path.
//! - [`Metrics`]: every family, registered into the caller's Prometheus registry.
//! - [`web`]: the read-only live web view any replica can serve from its mirror.

pub mod commit;
pub mod config;
pub mod events;
mod held_statuses;
mod leader;
pub mod metrics;
mod mirror;
pub mod planner;
mod reconcile;
pub mod scheduler;
pub mod snapshot;
pub mod web;

pub use config::{ConfigError, ControllerConfig};
pub use leader::{Controller, ControllerStatus, Error};
pub use metrics::Metrics;
pub use planner::{plan, Plan, Step, TaskStateWrite, Write};
pub use reconcile::{LeadError, ReconcileError};
pub use snapshot::Snapshot;

/// Runs one controller replica until `shutdown` is cancelled: [`Controller::with_metrics`]
/// followed by [`Controller::run`].
pub async fn run(
    store: drover_store::Store,
    keys: drover_api::Keys,
    config: ControllerConfig,
    metrics: Metrics,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), Error> {
    Controller::with_metrics(store, keys, config, metrics)?
        .run(shutdown)
        .await;
    Ok(())
}
