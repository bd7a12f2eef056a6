//! Enforcing `timeoutSeconds` on the engine: stop and fail a job past its deadline, and come
//! back to a running job no later than its deadline. The rule is in [`crate::deadline`].

use std::time::Duration;

use drover_api::instance::{reasons, Phase};
use drover_runtime::Action;

use crate::converge::{Engine, Result};
use crate::deadline::{self, Deadline};
use crate::local::Slot;

impl Engine {
    /// Stops a job that ran past `timeoutSeconds` (with its grace period) and fails it for
    /// good with reason `DeadlineExceeded`: it is not restarted.
    pub(crate) async fn expire(&self, slot: &Slot, limit: Duration) -> Result<Action> {
        tracing::info!(?limit, "timeoutSeconds exceeded; stopping the instance");
        self.stop_run(slot).await?;
        let mut table = self.table();
        if let Some(e) = table.get_mut(slot) {
            if let Some((code, finished)) = e.run.as_ref().and_then(|r| r.exited) {
                e.exit_code = code;
                e.finished_at = finished.or_else(|| Some(chrono::Utc::now()));
            }
            e.terminal = true;
            e.phase = Phase::Failed;
            e.reason = Some(reasons::DEADLINE_EXCEEDED.to_string());
            e.message = Some(deadline::message(limit));
        }
        Ok(Action::await_change())
    }

    /// `action`, but back no later than the deadline of a run that has one.
    pub(crate) fn until_deadline(&self, slot: &Slot, action: Action) -> Action {
        let table = self.table();
        let left = match table.get(slot) {
            Some(e) if !e.terminal => match e.deadline(tokio::time::Instant::now()) {
                Deadline::In(left) => left,
                Deadline::Exceeded(_) => Duration::ZERO,
                Deadline::None => return action,
            },
            _ => return action,
        };
        match action.requeue_after() {
            Some(after) if after <= left => action,
            _ => Action::requeue(left),
        }
    }
}
