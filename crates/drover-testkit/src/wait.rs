//! Polling helpers, unique key prefixes and test logging.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// A [`wait_for`] condition did not hold before its deadline.
#[derive(Debug, Clone, thiserror::Error)]
#[error("condition not met within {after:?}")]
pub struct TimedOut {
    /// How long the helper waited.
    pub after: Duration,
}

/// Polls `check` every `poll_interval` until it returns `Some`, or fails after `timeout`.
///
/// # Guarantees
///
/// `check` runs at least once, even with a zero timeout; a check that is still running when the
/// deadline passes is abandoned, so the helper returns within about `timeout`.
///
/// # Caveats
///
/// Uses tokio's clock, so under `start_paused = true` the timeout is virtual time.
pub async fn wait_for<T, F, Fut>(
    timeout: Duration,
    poll_interval: Duration,
    mut check: F,
) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(_) => return Err(TimedOut { after: timeout }),
        }
        if Instant::now() + poll_interval > deadline {
            // One last look exactly at the deadline, so a slow poll interval cannot hide success.
            tokio::time::sleep_until(deadline).await;
            return match check().await {
                Some(value) => Ok(value),
                None => Err(TimedOut { after: timeout }),
            };
        }
        tokio::time::sleep(poll_interval).await;
    }
}

/// Returns a fresh key prefix `/drover-test-<16 hex digits>` so tests sharing an etcd never
/// see each other's keys.
pub fn unique_prefix() -> String {
    format!("/drover-test-{:016x}", rand::random::<u64>())
}

/// Installs a `tracing` subscriber writing to the test harness's captured output, filtered by
/// `RUST_LOG` (default `warn`). Safe to call from every test; only the first call installs it.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn wait_for_returns_value_once_ready() {
        let calls = AtomicU32::new(0);
        let got = wait_for(
            Duration::from_secs(5),
            Duration::from_millis(100),
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                (n >= 3).then_some(n)
            },
        )
        .await;
        assert_eq!(got.expect("should succeed"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_times_out() {
        let start = Instant::now();
        let got: Result<(), _> = wait_for(
            Duration::from_secs(2),
            Duration::from_millis(300),
            || async { None },
        )
        .await;
        assert_eq!(
            got.expect_err("must time out").after,
            Duration::from_secs(2)
        );
        assert!(start.elapsed() >= Duration::from_secs(2));
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn prefixes_are_unique() {
        let a = unique_prefix();
        let b = unique_prefix();
        assert!(a.starts_with("/drover-test-"));
        assert_ne!(a, b);
    }
}
