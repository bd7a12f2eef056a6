//! Dead letters: instances that exhausted their retries, kept with their last error.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::InstanceId;

/// Value of `deadletter/<ns>/<instance>`, written by the leader controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The instance that gave up.
    pub instance: InstanceId,
    /// Its task's namespace.
    pub namespace: String,
    /// Its task's name.
    pub task: String,
    /// The job run, for job instances.
    #[serde(default)]
    pub run: Option<u64>,
    /// Attempts made, the first one included.
    pub attempts: u32,
    /// The last error (status reason and message).
    pub last_error: String,
    /// The last exit code, if the process ran.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// When it was dead-lettered.
    pub time: DateTime<Utc>,
}
