//! The records the leader controller writes beyond the API's own types — its extensions of
//! `TaskState` and `DeadLetter`, and the `controllers/<id>` advertisement — here so that every
//! reader (the CLI, tests, other tools) decodes them with the writer's own types.
//!
//! The extensions are `#[serde(flatten)]` wrappers, so every other reader decodes the plain API
//! type from the same JSON and simply ignores the extra fields.

use std::fmt;

use crate::{DeadLetter, TaskState};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `(namespace, name)` of a task.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskRef {
    /// The task's namespace.
    pub namespace: String,
    /// The task's name.
    pub name: String,
}

impl TaskRef {
    /// A reference to `namespace/name`.
    #[must_use]
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Value of `taskstate/<ns>/<name>` as the controller reads and writes it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStateRecord {
    /// The API's task state.
    #[serde(flatten)]
    pub state: TaskState,
    /// The lowest slot number never handed out for this task. Slots only grow, so every
    /// placement gets an instance id no earlier placement had, even after scaling to zero.
    #[serde(default)]
    pub next_slot: u32,
    /// The task generation whose `Apply` run has started (plain jobs run once per generation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_generation: Option<u64>,
    /// The copy template ([`crate::task::TaskSpec::template_hash`]) of that run: a new
    /// generation that changes only labels, priority or the like does not run the job again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_template: Option<String>,
}

/// Value of `deadletter/<ns>/<instance>` as the controller writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterRecord {
    /// The API's dead letter.
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// The task generation the instance ran: a dead letter stops its slot from being refilled
    /// only while the task keeps that generation (re-applying a changed task starts afresh).
    #[serde(default)]
    pub generation: u64,
}

/// Value of `controllers/<id>`: one replica advertising itself on its lease, for
/// `drover get controllers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerInfo {
    /// The replica id.
    pub id: String,
    /// Whether it leads now.
    pub leader: bool,
    /// Since when it has been in its current role.
    pub since: DateTime<Utc>,
    /// The crate version.
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InstanceId;

    #[test]
    fn extensions_decode_as_the_plain_api_types() {
        let rec = TaskStateRecord {
            state: TaskState {
                pending_reason: Some("Unschedulable".into()),
                ..TaskState::default()
            },
            next_slot: 7,
            run_generation: Some(2),
            run_template: Some("00ff".into()),
        };
        let json = serde_json::to_string(&rec).expect("encodes");
        assert!(json.contains("\"nextSlot\":7"), "{json}");
        let plain: TaskState = serde_json::from_str(&json).expect("plain decode");
        assert_eq!(plain, rec.state);
        assert_eq!(
            serde_json::from_str::<TaskStateRecord>(&json).expect("decodes"),
            rec
        );

        let id = InstanceId::service("default", "web", 3).expect("valid id");
        let dl = DeadLetterRecord {
            letter: DeadLetter {
                instance: id,
                namespace: "default".into(),
                task: "web".into(),
                run: None,
                attempts: 4,
                last_error: "CrashLoopBackOff".into(),
                exit_code: Some(1),
                time: DateTime::<Utc>::UNIX_EPOCH,
            },
            generation: 2,
        };
        let json = serde_json::to_string(&dl).expect("encodes");
        let plain: DeadLetter = serde_json::from_str(&json).expect("plain decode");
        assert_eq!(plain, dl.letter);
        assert_eq!(
            serde_json::from_str::<DeadLetterRecord>(&json).expect("decodes"),
            dl
        );
    }
}
