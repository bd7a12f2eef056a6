//! The store's Prometheus metrics: etcd request latency, retries and endpoint failovers, counted
//! where every store call goes through ([`crate::pool::Pool::call`]).
//!
//! Every [`crate::Store`] counts from the moment it connects; [`crate::Store::register_metrics`]
//! exports the counts under `store_*` in the caller's registry (the binaries' registry adds
//! `drover_`). Families (names as exported):
//! - `store_request_duration_seconds{op}` (histogram): one store call, from its first attempt
//!   to its answer, retries and their backoff included
//! - `store_request_errors_total{op}`: calls that ended in an error (a failed compare in a txn
//!   is an answer, not an error)
//! - `store_retries_total{op}`: attempts repeated after a transport failure or a transient
//!   refusal, and keep-alive pings moved to the next endpoint (`op="lease_keep_alive"`)
//! - `store_endpoint_failovers_total{endpoint}`: times an endpoint was marked dead, so calls
//!   moved to the next one; every configured endpoint from the start
//!
//! The `op` series of an operation appear with its first call (every process makes some at
//! once: `get`, `lease_grant`, ...).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The sub-registry the store's families go in.
pub const PREFIX: &str = "store";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

type HistogramFamily = Family<OpLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 250 µs .. ~8 s: a local etcd answers in about a millisecond; retries add seconds.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The store's metric families. Cheap to clone: clones share the same families.
#[derive(Clone, Debug)]
pub(crate) struct StoreMetrics {
    duration: HistogramFamily,
    errors: Family<OpLabels, Counter>,
    retries: Family<OpLabels, Counter>,
    failovers: Family<EndpointLabels, Counter>,
}

impl Default for StoreMetrics {
    /// Families registered nowhere yet: they count, and export once registered.
    fn default() -> Self {
        Self {
            duration: Family::new_with_constructor(duration_histogram),
            errors: Family::default(),
            retries: Family::default(),
            failovers: Family::default(),
        }
    }
}

impl StoreMetrics {
    /// Registers the families (shared with this value, so earlier counts show) under
    /// [`PREFIX`] in `registry`.
    ///
    /// # Caveats
    /// Once per registry: twice would export every family twice, which Prometheus rejects.
    pub(crate) fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix(PREFIX);
        sub.register(
            "request_duration_seconds",
            "One etcd request through the store, retries and backoff included, by operation",
            self.duration.clone(),
        );
        sub.register(
            "request_errors",
            "etcd requests through the store that ended in an error, by operation",
            self.errors.clone(),
        );
        sub.register(
            "retries",
            "etcd request attempts repeated after a transport failure or transient refusal, by operation",
            self.retries.clone(),
        );
        sub.register(
            "endpoint_failovers",
            "Times an etcd endpoint was marked dead and calls moved to the next, by endpoint",
            self.failovers.clone(),
        );
    }

    /// The endpoints' failover counters from the start, at zero.
    pub(crate) fn endpoints<'a>(&self, urls: impl IntoIterator<Item = &'a str>) {
        for endpoint in urls {
            let _ = self.failovers.get_or_create(&EndpointLabels {
                endpoint: endpoint.to_string(),
            });
        }
    }

    /// One call to `op` ended after `took`, with an error or not. The first call of an op
    /// also creates its error and retry counters, so each op used has all three series.
    pub(crate) fn finished(&self, op: &'static str, took: Duration, failed: bool) {
        let labels = OpLabels { op };
        self.duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        let errors = self.errors.get_or_create(&labels);
        if failed {
            errors.inc();
        }
        let _ = self.retries.get_or_create(&labels);
    }

    /// An attempt of `op` is about to be repeated.
    pub(crate) fn retried(&self, op: &'static str) {
        self.retries.get_or_create(&OpLabels { op }).inc();
    }

    /// `endpoint` was marked dead.
    pub(crate) fn failed_over(&self, endpoint: &str) {
        self.failovers
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn counts_before_registering_show_once_registered() {
        let metrics = StoreMetrics::default();
        metrics.finished("get", Duration::from_millis(2), false);
        metrics.finished("txn", Duration::from_millis(2), true);
        metrics.retried("get");
        metrics.failed_over("http://127.0.0.1:1");
        let mut registry = Registry::with_prefix("drover");
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encoding into a String cannot fail");
        for line in [
            r#"drover_store_request_duration_seconds_count{op="get"} 1"#,
            r#"drover_store_request_errors_total{op="txn"} 1"#,
            r#"drover_store_request_errors_total{op="get"} 0"#,
            r#"drover_store_retries_total{op="txn"} 0"#,
            r#"drover_store_retries_total{op="get"} 1"#,
            r#"drover_store_endpoint_failovers_total{endpoint="http://127.0.0.1:1"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
