//! The agent's Prometheus metrics, registered into the caller's registry under [`PREFIX`]
//! (the binary's registry adds `drover_`, so the families read `drover_agent_restarts_total`).
//! Names, types and labels are listed in `docs/metrics.md`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The sub-registry the agent's families go in, the reconcile loop's included.
pub const PREFIX: &str = "agent";

/// The `outcome` label values of `agent_status_writes_total`.
const OUTCOMES: [&str; 3] = ["ok", "stale", "error"];

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
    /// Registers the families under `agent_*` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let sub = registry.sub_registry_with_prefix(PREFIX);
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
        // Every outcome from the start, so dashboards see zeros rather than no series.
        for outcome in OUTCOMES {
            let _ = m.status_writes.get_or_create(&Outcome { outcome });
        }
        m
    }

    pub(crate) fn status_write(&self, outcome: &'static str) {
        self.status_writes.get_or_create(&Outcome { outcome }).inc();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn families_read_drover_agent_in_the_binarys_registry() {
        let mut registry = Registry::with_prefix("drover");
        let m = Metrics::register(&mut registry);
        m.restarts.inc();
        m.status_write("ok");
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains("drover_agent_restarts_total 1"), "{text}");
        assert!(
            text.contains(r#"drover_agent_status_writes_total{outcome="ok"} 1"#),
            "{text}"
        );
        assert!(!text.contains("drover_drover"), "{text}");
    }
}
