//! The agent's Prometheus metrics, registered into the caller's registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Label of [`Metrics::status_writes`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok`, `stale` (fenced out) or `error`.
    pub outcome: &'static str,
}

/// Counters of what the agent did. Cheap to clone (shared counters).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Local restarts of instances.
    pub restarts: Counter,
    /// Self-fencing episodes.
    pub fences: Counter,
    /// Status writes by outcome.
    pub status_writes: Family<Outcome, Counter>,
    /// Lease registrations (first and after a loss).
    pub registrations: Counter,
}

impl Metrics {
    /// Registers the families under `drover_agent_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let sub = registry.sub_registry_with_prefix("drover_agent");
        sub.register(
            "restarts",
            "Local restarts of instances",
            m.restarts.clone(),
        );
        sub.register(
            "fences",
            "Self-fencing episodes (lease not renewed in time)",
            m.fences.clone(),
        );
        sub.register(
            "status_writes",
            "Fenced status writes by outcome",
            m.status_writes.clone(),
        );
        sub.register(
            "registrations",
            "Node registrations with a new lease",
            m.registrations.clone(),
        );
        m
    }

    pub(crate) fn status_write(&self, outcome: &'static str) {
        self.status_writes.get_or_create(&Outcome { outcome }).inc();
    }
}
