//! The controller's Prometheus metrics, registered into a caller-supplied registry together
//! with the reconcile runtime's own families.
//!
//! Families (a prefix given by the caller's sub-registry comes first):
//! - `controller_is_leader`: 1 while this replica leads
//! - `controller_pending_instances`: instances that should exist but fit no node
//! - `controller_scheduling_latency_seconds`: from the first change seen to the commit of the
//!   placements it caused
//! - `controller_plan_duration_seconds`: time spent in the pure planner
//! - `controller_commits_total{result}`: plan commits by result (`ok`, `partial`, `conflict`,
//!   `fenced`, `error`), every result exported from the start
//! - the runtime's reconcile-loop families under this component's name:
//!   `controller_reconciles_total{reconciler}`, `controller_reconcile_duration_seconds`,
//!   `controller_queue_depth`, `controller_in_flight`, `controller_requeues_total`

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `result` label values of `controller_commits_total`.
const COMMIT_RESULTS: [&str; 5] = ["ok", "partial", "conflict", "fenced", "error"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Metric handles. Cheap to clone; clones share the families.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub(crate) is_leader: Gauge,
    pub(crate) pending: Gauge,
    pub(crate) scheduling_latency: Histogram,
    pub(crate) plan_duration: Histogram,
    commits: Family<ResultLabels, Counter>,
    pub(crate) runtime: drover_runtime::Metrics,
}

impl Default for Metrics {
    /// Handles registered nowhere: they count, nothing is exported.
    fn default() -> Self {
        Self {
            is_leader: Gauge::default(),
            pending: Gauge::default(),
            // 1 ms .. ~65 s.
            scheduling_latency: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 50 µs .. ~1.6 s.
            plan_duration: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            commits: Family::default(),
            runtime: drover_runtime::Metrics::default(),
        }
    }
}

impl Metrics {
    /// Creates every family (the runtime's included) and registers it in `registry`.
    ///
    /// # Caveats
    ///
    /// Call once per registry: it registers the runtime's families too, so do not also call
    /// `drover_runtime::Metrics::register` on the same registry.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            runtime: drover_runtime::Metrics::register(
                registry.sub_registry_with_prefix("controller"),
            ),
            ..Self::default()
        };
        registry.register(
            "controller_is_leader",
            "1 while this controller replica leads",
            m.is_leader.clone(),
        );
        registry.register(
            "controller_pending_instances",
            "Instances that should exist but fit no node",
            m.pending.clone(),
        );
        registry.register(
            "controller_scheduling_latency_seconds",
            "From the first change seen to the commit of the placements it caused",
            m.scheduling_latency.clone(),
        );
        registry.register(
            "controller_plan_duration_seconds",
            "Time spent computing one plan",
            m.plan_duration.clone(),
        );
        registry.register(
            "controller_commits",
            "Plan commits by result",
            m.commits.clone(),
        );
        // Every result from the start, so dashboards see zeros rather than no series.
        for result in COMMIT_RESULTS {
            let _ = m.commits.get_or_create(&ResultLabels { result });
        }
        m
    }

    pub(crate) fn commit(&self, result: &'static str) {
        debug_assert!(
            COMMIT_RESULTS.contains(&result),
            "undocumented result {result}"
        );
        self.commits.get_or_create(&ResultLabels { result }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn registers_every_family() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.is_leader.set(1);
        m.commit("ok");
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        for needle in [
            "controller_is_leader 1",
            "controller_pending_instances",
            "controller_scheduling_latency_seconds",
            "controller_commits_total{result=\"ok\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
    }
}
