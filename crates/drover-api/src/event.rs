//! Events: short human-readable records shown by `drover describe`, stored on a TTL lease.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which kind of object an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// A Task.
    Task,
    /// A Node.
    Node,
    /// An instance of a task.
    Instance,
}

/// Value of `events/<ns>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// When it happened.
    pub time: DateTime<Utc>,
    /// Namespace of the object (nodes use the default namespace).
    pub namespace: String,
    /// Kind of the object.
    pub kind: EventKind,
    /// Name of the object (task name, node name or instance id).
    pub name: String,
    /// Short CamelCase reason, e.g. `Scheduled`, `Preempted`, `NodeDead`.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// Who reported it, e.g. `controller` or `agent/node-1`.
    pub source: String,
}
