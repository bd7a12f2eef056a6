//! Prometheus metrics for controllers, registered into a caller-supplied registry.
//!
//! One [`Metrics`] value owns the metric families; every controller in the process shares it and
//! writes under its own `controller` label. Register once per registry: registering twice would
//! expose each family twice, which Prometheus rejects.
//!
//! Families (names as registered; a prefix given by the caller's sub-registry comes first):
//! - `controller_reconciles_total{controller, result="ok"|"error"}`
//! - `controller_reconcile_duration_seconds{controller}` (histogram)
//! - `controller_queue_depth{controller}`: keys waiting, due or not, including held ones
//! - `controller_in_flight{controller}`: reconciles running now
//! - `controller_requeues_total{controller, reason="watch"|"trigger"|"requeue"|"backoff"}`: every
//!   request to (re)schedule a key, before de-duplication

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::queue::Reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    controller: &'static str,
    reason: &'static str,
}

type HistogramFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 ms .. ~33 s: reconciles are etcd round trips, occasionally a Docker call.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The controller metric families. Cheap to clone: clones share the same families.
#[derive(Clone, Debug)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    duration: HistogramFamily,
    queue_depth: Family<ControllerLabels, Gauge>,
    in_flight: Family<ControllerLabels, Gauge>,
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
    /// Call it once per registry and share the result (clone it) between controllers.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "controller_reconciles",
            "Reconciles finished, by controller and result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "controller_reconcile_duration_seconds",
            "Time spent in one reconcile, by controller",
            metrics.duration.clone(),
        );
        registry.register(
            "controller_queue_depth",
            "Keys waiting to be reconciled, due or not, by controller",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "controller_in_flight",
            "Reconciles running now, by controller",
            metrics.in_flight.clone(),
        );
        registry.register(
            "controller_requeues",
            "Requests to schedule a key, before de-duplication, by controller and reason",
            metrics.requeues.clone(),
        );
        metrics
    }

    /// The handles one controller writes to, resolved once for its name.
    pub(crate) fn for_controller(&self, name: &'static str) -> ControllerMetrics {
        let labels = ControllerLabels { controller: name };
        ControllerMetrics {
            name,
            ok: self.reconciles.get_or_create_owned(&ResultLabels {
                controller: name,
                result: "ok",
            }),
            error: self.reconciles.get_or_create_owned(&ResultLabels {
                controller: name,
                result: "error",
            }),
            duration: self.duration.get_or_create_owned(&labels),
            queue_depth: self.queue_depth.get_or_create_owned(&labels),
            in_flight: self.in_flight.get_or_create_owned(&labels),
            requeues: self.requeues.clone(),
        }
    }
}

/// Per-controller handles; the runner updates these.
#[derive(Clone, Debug)]
pub(crate) struct ControllerMetrics {
    name: &'static str,
    ok: Counter,
    error: Counter,
    duration: Histogram,
    queue_depth: Gauge,
    in_flight: Gauge,
    requeues: Family<ReasonLabels, Counter>,
}

impl ControllerMetrics {
    pub(crate) fn reconciled(&self, ok: bool, took: Duration) {
        if ok { &self.ok } else { &self.error }.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub(crate) fn scheduled(&self, reason: Reason) {
        self.requeues
            .get_or_create(&ReasonLabels {
                controller: self.name,
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
    fn registers_families_and_labels_by_controller() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let a = metrics.for_controller("tasks");
        let b = metrics.for_controller("nodes");
        a.reconciled(true, Duration::from_millis(3));
        a.reconciled(false, Duration::from_millis(3));
        b.reconciled(true, Duration::from_millis(3));
        a.scheduled(Reason::Backoff);
        a.set_queue_depth(4);
        b.set_in_flight(2);

        let mut text = String::new();
        encode(&mut text, &registry).expect("encoding into a String cannot fail");
        for line in [
            r#"controller_reconciles_total{controller="tasks",result="ok"} 1"#,
            r#"controller_reconciles_total{controller="tasks",result="error"} 1"#,
            r#"controller_reconciles_total{controller="nodes",result="ok"} 1"#,
            r#"controller_reconcile_duration_seconds_count{controller="tasks"} 2"#,
            r#"controller_queue_depth{controller="tasks"} 4"#,
            r#"controller_in_flight{controller="nodes"} 2"#,
            r#"controller_requeues_total{controller="tasks",reason="backoff"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE controller_reconciles counter").count(),
            1
        );
    }
}
