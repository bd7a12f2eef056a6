//! Shared helpers for the driver integration tests: request builders, unique names, bounded waits.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use drover_agent::driver::{InstanceMeta, StartRequest};
use drover_api::instance::PortBinding;
use drover_api::names::InstanceId;
use drover_api::task::TaskSpec;

/// Every await in these tests is bounded by this unless it says otherwise.
pub const LIMIT: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test (not hanging it) after `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `limit`.
pub async fn poll<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(limit, what, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// A name unique to this test process and call, usable as a DNS label (namespace, node).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A task spec from its manifest JSON (`spec:` of a Task), so tests read like manifests.
pub fn spec(json: serde_json::Value) -> TaskSpec {
    serde_json::from_value(json).expect("valid task spec")
}

/// A start request for slot `slot` of task `task` in `namespace` on `node`.
pub fn request(node: &str, namespace: &str, slot: u32, spec: TaskSpec) -> StartRequest {
    StartRequest {
        meta: InstanceMeta {
            instance: InstanceId::service(namespace, "t", slot).expect("valid instance id"),
            node: node.to_string(),
            generation: 1,
            attempt: 0,
        },
        spec,
        ports: Vec::new(),
    }
}

/// Publishes `container_port` on `host_port`.
pub fn bind(container_port: u16, host_port: u16) -> PortBinding {
    PortBinding {
        container_port,
        host_port,
    }
}
