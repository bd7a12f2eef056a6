//! Value of `requests/<ns>/<task>/<id>`: an operator's request about a task that the leader
//! carries out and then deletes, so the records the leader owns (task state, dead letters)
//! keep exactly one writer. Run requests have their own key kind (`triggers/`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::InstanceId;

/// What the operator asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum RequestAction {
    /// `drover enable`: clear the circuit breaker (suspension and the failure count).
    Enable,
    /// `drover retry`: drop this instance's dead letter; a job runs again (cause `retry`), a
    /// service's slot is refilled.
    Retry {
        /// The dead-lettered instance.
        instance: InstanceId,
    },
    /// `drover rollout pause`: replace no more copies for a new revision until resumed.
    Pause,
    /// `drover rollout resume`: go on with the rollout.
    Resume,
    /// `drover rollout promote`: the canaries of this revision are good, roll out the rest.
    Promote {
        /// The revision whose canaries are promoted (a promote meant for an older revision
        /// does nothing).
        revision: u64,
    },
}

/// A request about one task, consumed by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRequest {
    /// What to do.
    #[serde(flatten)]
    pub action: RequestAction,
    /// When it was requested.
    pub requested_at: DateTime<Utc>,
    /// Who asked (user or tool), for events.
    pub by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_an_operator_would_write_them() -> Result<(), serde_json::Error> {
        let enable: TaskRequest = serde_json::from_str(
            r#"{"action":"enable","requestedAt":"2026-01-01T00:00:00Z","by":"ops"}"#,
        )?;
        assert_eq!(enable.action, RequestAction::Enable);
        let retry = TaskRequest {
            action: RequestAction::Retry {
                instance: InstanceId::service("default", "web", 0)
                    .map_err(serde::de::Error::custom)?,
            },
            requested_at: DateTime::<Utc>::UNIX_EPOCH,
            by: "ops".into(),
        };
        let json = serde_json::to_string(&retry)?;
        assert!(json.contains(r#""action":"retry""#), "{json}");
        assert_eq!(serde_json::from_str::<TaskRequest>(&json)?, retry);
        assert!(serde_json::from_str::<TaskRequest>(r#"{"action":"explode"}"#).is_err());
        Ok(())
    }
}
