//! Instances: the assignment the controller writes for one copy of a task, and the status
//! the agent running it reports back.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::InstanceId;
use crate::task::TaskSpec;

/// Value of `assignments/<node>/<instance>`, written by the leader controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// The instance's identity.
    pub id: InstanceId,
    /// Task namespace.
    pub namespace: String,
    /// Task name.
    pub task: String,
    /// Replica index.
    pub slot: u32,
    /// Job run number; `None` for services.
    #[serde(default)]
    pub run: Option<u64>,
    /// Node it is assigned to.
    pub node: String,
    /// Task generation this assignment was made from.
    pub generation: u64,
    /// The revision of the task's copy template this runs (0: placed before revisions).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u64,
    /// Attempt number (1 for the first placement, bumped on each retry or reschedule).
    pub attempt: u32,
    /// The task spec, resolved: the agent runs exactly this.
    pub spec: TaskSpec,
    /// When the controller assigned it.
    pub assigned_at: DateTime<Utc>,
    /// Set by the controller to take the copy away from a live node. The assignment stays,
    /// and with it the copy's place in every count (replicas, surge, `blocks`, resources),
    /// until its agent reports a terminal phase: the process has exited. Only then is the
    /// assignment deleted. Absent in the common case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopRequest>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The controller's request that a copy stop (see [`Instance::stop`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopRequest {
    /// Why: `Drained`, `Outdated`, `ScaledDown`, `TaskDeleted`, `Preempted`, `RunFinished`...
    pub reason: String,
    /// When the controller asked.
    pub requested_at: DateTime<Utc>,
}

/// Lifecycle phase of an instance, as reported by its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Phase {
    /// Assigned, not started yet (e.g. pulling).
    #[default]
    Pending,
    /// Being started.
    Starting,
    /// Running.
    Running,
    /// Exited 0 (jobs).
    Succeeded,
    /// Failed for good (start error, exit, restarts exhausted, deadline).
    Failed,
    /// Being stopped (grace period).
    Stopping,
    /// Stopped on request.
    Stopped,
}

impl Phase {
    /// True when the instance will not change phase again by itself.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Stopped)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Pending => "Pending",
            Phase::Starting => "Starting",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Stopping => "Stopping",
            Phase::Stopped => "Stopped",
        })
    }
}

/// Result of the instance's health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Health {
    /// No health check, or no result yet.
    #[default]
    Unknown,
    /// The last probe succeeded.
    Healthy,
    /// `failureThreshold` probes failed in a row.
    Unhealthy,
}

/// A container port and the host port the agent bound it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortBinding {
    /// Port inside the container.
    pub container_port: u16,
    /// Port on the node.
    pub host_port: u16,
}

/// Well-known values of [`InstanceStatus::reason`].
pub mod reasons {
    /// The image does not exist locally and cannot be pulled.
    pub const IMAGE_NOT_FOUND: &str = "ImageNotFound";
    /// The runtime failed to start the instance.
    pub const START_ERROR: &str = "StartError";
    /// The task would run as root on an agent running as root, which was not started with
    /// `--allow-root-tasks`.
    pub const RUN_AS_ROOT_REFUSED: &str = "RunAsRootRefused";
    /// `spec.user` names a user the node does not have.
    pub const UNKNOWN_USER: &str = "UnknownUser";
    /// `spec.group` names a group the node does not have.
    pub const UNKNOWN_GROUP: &str = "UnknownGroup";
    /// `spec.workingDir` does not exist on the node, or is not a directory.
    pub const WORKING_DIR_NOT_FOUND: &str = "WorkingDirNotFound";
    /// The run exceeded `timeoutSeconds`.
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    /// The health check failed `failureThreshold` times.
    pub const UNHEALTHY: &str = "Unhealthy";
    /// Evicted for a higher-priority task.
    pub const PREEMPTED: &str = "Preempted";
    /// The process exited non-zero.
    pub const ERROR: &str = "Error";
    /// `maxRestarts` local restarts were used up.
    pub const CRASH_LOOP: &str = "CrashLoopBackOff";
    /// The agent lost its lease and stopped its instances.
    pub const LEASE_LOST: &str = "LeaseLost";
    /// The agent shut down (SIGTERM, `drover up` ending) and stopped the instance first.
    pub const AGENT_SHUTDOWN: &str = "AgentShutdown";
}

/// Value of `status/<node>/<instance>`, written by the agent running the instance (fenced on the
/// assignment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// The instance.
    pub id: InstanceId,
    /// Node reporting.
    pub node: String,
    /// Lifecycle phase.
    pub phase: Phase,
    /// Short CamelCase reason (see [`reasons`]).
    #[serde(default)]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default)]
    pub message: Option<String>,
    /// Runtime id (container id or pid).
    #[serde(default)]
    pub container_id: Option<String>,
    /// Local restarts so far.
    #[serde(default)]
    pub restart_count: u32,
    /// Exit code of the last exit.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Health check result.
    #[serde(default)]
    pub health: Health,
    /// Bound ports.
    #[serde(default)]
    pub ports: Vec<PortBinding>,
    /// Task generation the running instance was started from.
    pub generation: u64,
    /// Attempt of the assignment this status belongs to.
    pub attempt: u32,
    /// When the current process started.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// Since when the health check has passed without a failure in between (set while
    /// `health` is `Healthy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since: Option<DateTime<Utc>>,
    /// When it finished.
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// When this status was written.
    pub updated_at: DateTime<Utc>,
}

impl InstanceStatus {
    /// The STATUS column of `drover get instances`, kubectl style: the reason when set
    /// (`ImageNotFound`, `CrashLoopBackOff`), otherwise the phase, with `(unhealthy)` appended
    /// to a running instance that fails its health check.
    pub fn display_status(&self) -> String {
        match &self.reason {
            Some(reason) if !reason.is_empty() => reason.clone(),
            _ if self.phase == Phase::Running && self.health == Health::Unhealthy => {
                "Running (unhealthy)".to_string()
            }
            _ => self.phase.to_string(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn status() -> InstanceStatus {
        InstanceStatus {
            id: InstanceId::service("default", "echo", 0).unwrap(),
            node: "n1".into(),
            phase: Phase::Running,
            reason: None,
            message: None,
            container_id: None,
            restart_count: 0,
            exit_code: None,
            health: Health::Unknown,
            ports: vec![PortBinding {
                container_port: 7777,
                host_port: 31000,
            }],
            generation: 1,
            attempt: 1,
            started_at: None,
            healthy_since: None,
            finished_at: None,
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    #[test]
    fn display_status() {
        let mut s = status();
        assert_eq!(s.display_status(), "Running");
        s.health = Health::Unhealthy;
        assert_eq!(s.display_status(), "Running (unhealthy)");
        s.phase = Phase::Failed;
        s.reason = Some(reasons::IMAGE_NOT_FOUND.into());
        assert_eq!(s.display_status(), "ImageNotFound");
        assert!(s.phase.is_terminal());
        assert!(!Phase::Stopping.is_terminal());
    }

    #[test]
    fn status_json_round_trip() {
        let s = status();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"id\":\"default.echo.0\""), "{json}");
        assert!(json.contains("\"hostPort\":31000"), "{json}");
        assert_eq!(serde_json::from_str::<InstanceStatus>(&json).unwrap(), s);
    }
}
