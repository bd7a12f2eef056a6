//! Enforcing `timeoutSeconds` on the engine: stop and fail a job past its deadline. The rule
//! is in [`crate::deadline`]; coming back no later than the deadline is
//! `crate::instance::until_deadline`.

use std::time::Duration;

use drover_runtime::Action;

use crate::converge::{Engine, Result};
use crate::local::Slot;

impl Engine {
    /// Stops a job that ran past `timeoutSeconds` (with its grace period) and fails it for
    /// good with reason `DeadlineExceeded`: it is not restarted.
    pub(crate) async fn expire(&self, slot: &Slot, limit: Duration) -> Result<Action> {
        tracing::info!(?limit, "timeoutSeconds exceeded; stopping the instance");
        self.stop_run(slot).await?;
        self.instances().update(slot, |e| e.expired(limit));
        Ok(Action::await_change())
    }
}
