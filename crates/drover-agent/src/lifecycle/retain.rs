//! Keeping a run's output before the driver destroys it ([`crate::retained`]), so it stays
//! readable after a restart, a finished job run or a stopped copy.

use std::collections::BTreeSet;
use std::time::Duration;

use drover_api::task::DriverKind;

use crate::converge::Engine;
use crate::driver::{Driver, Handle};
use crate::local::Slot;

/// How long reading an ended run's output may take. Keeping output is a courtesy: it must
/// not hold up a restart or a stop for long when the runtime is slow.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(10);

impl Engine {
    /// Copies the output of the run `handle` of `slot` into the retained store, then deletes
    /// what the retention bounds no longer allow.
    ///
    /// # Guarantees
    /// Never fails the caller: an error is logged and the destroy goes ahead (losing output
    /// is better than leaving a container behind). A run already retained (its output was
    /// kept by a restart, and the stop that follows finds the same handle) is not kept twice.
    ///
    /// # Caveats
    /// Not done for hollow instances (simulated, thousands per process), nor by self-fencing,
    /// which must be done within its deadline; the output of a run cut short that way is lost.
    /// Output longer than `max_bytes` keeps its last lines.
    pub(crate) async fn retain_output(&self, slot: &Slot, driver: &dyn Driver, handle: &Handle) {
        let Some(retained) = self.retained() else {
            return;
        };
        if driver.kind() == DriverKind::Hollow {
            return;
        }
        match retained.list(&slot.id).await {
            Ok(outputs) if outputs.last().is_some_and(|o| o.header.is_of(handle)) => return,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot list the retained output"),
        }
        let lines = driver.logs(handle, false, None);
        let (buf, error) = match tokio::time::timeout(CAPTURE_TIMEOUT, retained.capture(lines))
            .await
        {
            Ok(captured) => captured,
            Err(_) => {
                tracing::warn!(container = %handle.id, timeout = ?CAPTURE_TIMEOUT, "reading the output to retain timed out; nothing kept");
                return;
            }
        };
        if let Some(error) = error {
            // Keep what was read: a partial output explains more than none.
            tracing::warn!(%error, container = %handle.id, "reading the output to retain failed part way");
        }
        match retained.keep(&slot.node, driver.kind(), handle, buf).await {
            Ok(kept) => tracing::debug!(path = %kept.path.display(), "output retained"),
            Err(error) => tracing::warn!(%error, "cannot retain the output"),
        }
        let live: BTreeSet<String> = self
            .instances()
            .slots()
            .iter()
            .map(|s| s.id.to_string())
            .collect();
        if let Err(error) = retained.collect(live).await {
            tracing::warn!(%error, "cannot delete retained output beyond its bounds");
        }
    }
}
