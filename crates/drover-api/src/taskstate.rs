//! Controller-owned state of a task: circuit breaker, run counters and the next due time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Value of `taskstate/<ns>/<name>`, written only by the leader controller (users write the
/// Task; `drover enable` asks the controller to clear `suspended`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskState {
    /// The circuit breaker tripped (`maxConsecutiveFailures`): no new runs until enabled.
    #[serde(default)]
    pub suspended: bool,
    /// Why it is suspended.
    #[serde(default)]
    pub suspended_reason: Option<String>,
    /// Failed runs in a row; reset by a success.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Number of the latest run started.
    #[serde(default)]
    pub last_run: Option<u64>,
    /// Outcome of the latest finished run.
    #[serde(default)]
    pub last_outcome: Option<crate::run::RunOutcome>,
    /// When the next scheduled run is due.
    #[serde(default)]
    pub next_run_at: Option<DateTime<Utc>>,
    /// Why a due run is waiting (e.g. a dependency has not succeeded, a blocker runs).
    #[serde(default)]
    pub pending_reason: Option<String>,
    /// A service's rollout: the revision it runs or moves to, and how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::Rollout>,
}
