//! Prometheus metrics for reconcile loops, registered into a caller-supplied registry.
//!
//! One [`Metrics`] value owns the metric families; every [`Reconciler`](crate::Reconciler) of one
//! component shares it and writes under its own `reconciler` label. The families carry no
//! component name: each component registers them into a sub-registry named for itself, so the
//! controller's loops export `drover_controller_reconciles_total` and the agent's
//! `drover_agent_reconciles_total`. Register once per sub-registry: registering twice would
//! expose each family twice, which Prometheus rejects.
//!
//! Families (names as registered, after the caller's prefix):
//! - `reconciles_total{reconciler, result="ok"|"error"}`
//! - `reconcile_duration_seconds{reconciler}` (histogram)
//! - `queue_depth{reconciler}`: keys waiting, due or not, including held ones
//! - `in_flight{reconciler}`: reconciles running now
//! - `requeues_total{reconciler, reason="watch"|"trigger"|"requeue"|"backoff"}`: every request
//!   to (re)schedule a key, before de-duplication

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::queue::Reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcilerLabels {
    reconciler: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    reconciler: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reconciler: &'static str,
    reason: &'static str,
}

type HistogramFamily = Family<ReconcilerLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 ms .. ~33 s: reconciles are etcd round trips, occasionally a Docker call.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The reconcile-loop metric families. Cheap to clone: clones share the same families.
#[derive(Clone, Debug)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    duration: HistogramFamily,
    queue_depth: Family<ReconcilerLabels, Gauge>,
    in_flight: Family<ReconcilerLabels, Gauge>,
    requeues: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    /// Families that are not registered anywhere: counting works, nothing is exported.
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            queue_depth: Family::default(),
            in_flight: Family::default(),
            requeues: Family::default(),
        }
    }
}

impl Metrics {
    /// Creates the families and registers them in `registry`.
    ///
    /// # Caveats
    /// Call it once per registry and share the result (clone it) between reconcilers.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "reconciles",
            "Reconciles finished, by reconciler and result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, by reconciler",
            metrics.duration.clone(),
        );
        registry.register(
            "queue_depth",
            "Keys waiting to be reconciled, due or not, by reconciler",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "in_flight",
            "Reconciles running now, by reconciler",
            metrics.in_flight.clone(),
        );
        registry.register(
            "requeues",
            "Requests to schedule a key, before de-duplication, by reconciler and reason",
            metrics.requeues.clone(),
        );
        metrics
    }

    /// The handles one reconciler writes to, resolved once for its name.
    pub(crate) fn for_reconciler(&self, name: &'static str) -> ReconcilerMetrics {
        let labels = ReconcilerLabels { reconciler: name };
        // Every reason from the start, so dashboards see zeros rather than no series.
        for reason in Reason::LABELS {
            let _ = self.requeues.get_or_create(&ReasonLabels {
                reconciler: name,
                reason,
            });
        }
        ReconcilerMetrics {
            name,
            ok: self.reconciles.get_or_create_owned(&ResultLabels {
                reconciler: name,
                result: "ok",
            }),
            error: self.reconciles.get_or_create_owned(&ResultLabels {
                reconciler: name,
                result: "error",
            }),
            duration: self.duration.get_or_create_owned(&labels),
            queue_depth: self.queue_depth.get_or_create_owned(&labels),
            in_flight: self.in_flight.get_or_create_owned(&labels),
            requeues: self.requeues.clone(),
        }
    }
}

/// Per-reconciler handles; the runner updates these.
#[derive(Clone, Debug)]
pub(crate) struct ReconcilerMetrics {
    name: &'static str,
    ok: Counter,
    error: Counter,
    duration: Histogram,
    queue_depth: Gauge,
    in_flight: Gauge,
    requeues: Family<ReasonLabels, Counter>,
}

impl ReconcilerMetrics {
    pub(crate) fn reconciled(&self, ok: bool, took: Duration) {
        if ok { &self.ok } else { &self.error }.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub(crate) fn scheduled(&self, reason: Reason) {
        self.requeues
            .get_or_create(&ReasonLabels {
                reconciler: self.name,
                reason: reason.as_str(),
            })
            .inc();
    }

    pub(crate) fn set_queue_depth(&self, depth: usize) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    pub(crate) fn set_in_flight(&self, running: usize) {
        self.in_flight
            .set(i64::try_from(running).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn registers_families_and_labels_by_reconciler() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let a = metrics.for_reconciler("tasks");
        let b = metrics.for_reconciler("nodes");
        a.reconciled(true, Duration::from_millis(3));
        a.reconciled(false, Duration::from_millis(3));
        b.reconciled(true, Duration::from_millis(3));
        a.scheduled(Reason::Backoff);
        a.set_queue_depth(4);
        b.set_in_flight(2);

        let mut text = String::new();
        encode(&mut text, &registry).expect("encoding into a String cannot fail");
        for line in [
            r#"reconciles_total{reconciler="tasks",result="ok"} 1"#,
            r#"reconciles_total{reconciler="tasks",result="error"} 1"#,
            r#"reconciles_total{reconciler="nodes",result="ok"} 1"#,
            r#"reconcile_duration_seconds_count{reconciler="tasks"} 2"#,
            r#"queue_depth{reconciler="tasks"} 4"#,
            r#"in_flight{reconciler="nodes"} 2"#,
            r#"requeues_total{reconciler="tasks",reason="backoff"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert_eq!(text.matches("# TYPE reconciles counter").count(), 1);
    }
}
