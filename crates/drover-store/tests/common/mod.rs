//! Shared helpers for the store's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use drover_store::{Store, StoreConfig};

/// The bound on any single await in these tests.
pub const T: Duration = Duration::from_secs(10);
/// Poll interval for `wait_for`.
pub const POLL: Duration = Duration::from_millis(20);

/// Awaits `fut` with the test bound, panicking with `what` on timeout.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(T, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {T:?}: {what}"),
    }
}

/// A config with test-sized timeouts.
pub fn config(endpoints: Vec<String>) -> StoreConfig {
    StoreConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(1),
        dead_endpoint_cooldown: Duration::from_secs(2),
        ..StoreConfig::new(endpoints)
    }
}

pub async fn connect(endpoints: Vec<String>) -> Store {
    drover_testkit::init_tracing();
    within("connect", Store::connect(config(endpoints)))
        .await
        .expect("connect")
}
