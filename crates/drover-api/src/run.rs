//! Job run records, one per run of a job, scheduled or triggered task.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunOutcome {
    /// Every instance exited 0.
    Succeeded,
    /// An instance failed after its retries.
    Failed,
    /// The run exceeded `timeoutSeconds`.
    DeadlineExceeded,
    /// Stopped by the user, by `concurrencyPolicy: Replace` or by deleting the task.
    Cancelled,
}

impl RunOutcome {
    /// True only for [`RunOutcome::Succeeded`].
    pub fn is_success(self) -> bool {
        self == RunOutcome::Succeeded
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunOutcome::Succeeded => "Succeeded",
            RunOutcome::Failed => "Failed",
            RunOutcome::DeadlineExceeded => "DeadlineExceeded",
            RunOutcome::Cancelled => "Cancelled",
        })
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunCause {
    /// The cron schedule or `every` interval came due.
    Schedule,
    /// `drover trigger`.
    Trigger,
    /// `drover apply` of a plain job (new generation).
    Apply,
    /// A retry of a failed run (`maxRetries`).
    Retry,
}

/// Value of `runs/<ns>/<task>/<run>`, written by the leader controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// Task name.
    pub task: String,
    /// Task namespace.
    pub namespace: String,
    /// Run number, increasing per task.
    pub run: u64,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When it finished; `None` while running.
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// How it ended; `None` while running.
    #[serde(default)]
    pub outcome: Option<RunOutcome>,
    /// Exit code of the (last) failing or finishing instance.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Attempt number, 1 for the first try.
    pub attempt: u32,
    /// What started it.
    pub cause: RunCause,
    /// Which node ran each of the run's instances (instance id → node), written when the run
    /// finishes, so `drover logs task/NAME --run N` can find the agents that retained the
    /// output after the instances' assignments and statuses are gone. Empty while running (the
    /// assignments say it then) and in records written before it existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, String>,
}

/// Value of `triggers/<ns>/<task>/<id>`: a request for one run, written by `drover trigger`
/// (cause [`RunCause::Trigger`]) or `drover retry` (cause [`RunCause::Retry`]).
///
/// The id is the request time in zero-padded nanoseconds plus a random suffix, so ids sort in
/// request order. The leader consumes a request by deleting its key in the fenced transaction
/// that starts the run, or deletes it with a `TriggerRefused` event when it cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerRequest {
    /// When it was requested.
    pub requested_at: DateTime<Utc>,
    /// Why: [`RunCause::Trigger`] or [`RunCause::Retry`].
    pub cause: RunCause,
    /// Who asked (user or tool), for events.
    pub by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_request_is_camel_case() -> Result<(), serde_json::Error> {
        let t = TriggerRequest {
            requested_at: DateTime::<Utc>::UNIX_EPOCH,
            cause: RunCause::Retry,
            by: "alice".into(),
        };
        let json = serde_json::to_string(&t)?;
        assert!(json.contains("\"requestedAt\""), "{json}");
        assert!(json.contains("\"cause\":\"retry\""), "{json}");
        assert_eq!(serde_json::from_str::<TriggerRequest>(&json)?, t);
        Ok(())
    }
}
