//! The store's metrics against a real etcd: a call that meets a dead endpoint counts a
//! failover of that endpoint and a retry of its op, and every call is timed.

mod common;

use common::{connect, within};
use drover_testkit::{unique_prefix, EtcdServer, TcpProxy};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// The value of the sample `line_start` (name and labels, exactly as encoded).
fn value(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn a_dead_endpoint_counts_a_failover_and_a_retry() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let proxy = TcpProxy::start(etcd.client_addr()).await;
    // The proxy first: calls prefer it until it fails.
    let store = connect(vec![proxy.url(), etcd.endpoints()[0].clone()]).await;
    let mut registry = Registry::with_prefix("drover");
    store.register_metrics(&mut registry);
    let key = format!("{}/k", unique_prefix());
    within("get", store.get_raw(&key))
        .await
        .expect("get through the proxy");

    proxy.cut();
    within("get", store.get_raw(&key))
        .await
        .expect("get fails over to the direct endpoint");

    let mut text = String::new();
    encode(&mut text, &registry).expect("encoding into a String cannot fail");
    let failovers = |endpoint: &str| {
        value(
            &text,
            &format!(r#"drover_store_endpoint_failovers_total{{endpoint="{endpoint}"}}"#),
        )
    };
    assert_eq!(failovers(&proxy.url()), Some(1.0), "{text}");
    assert_eq!(failovers(&etcd.endpoints()[0]), Some(0.0), "{text}");
    assert!(
        value(&text, r#"drover_store_retries_total{op="get"}"#) >= Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"drover_store_request_duration_seconds_count{op="get"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"drover_store_request_errors_total{op="get"}"#),
        Some(0.0),
        "{text}"
    );
}
