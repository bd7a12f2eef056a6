//! Revisions and rollouts of services: `revisions/<ns>/<task>/<n>` (the copy templates a
//! service has run, numbered) and the rollout record kept in the task state.
//!
//! Both are written only by the leader controller. A user changes what runs by applying a
//! task; `drover rollout undo` applies an earlier revision's template; pause, resume and
//! promote are requests (`requests/`), which the leader carries out into the rollout record.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::task::TaskSpec;

/// Revisions kept per task besides the one rolling out and the last stable one.
pub const REVISION_HISTORY: usize = 10;

/// Value of `revisions/<ns>/<task>/<n>`: one copy template a service has rolled out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    /// Its number: 1 for the first template of the task, then one more per new template (a
    /// template seen before keeps its number).
    pub revision: u64,
    /// [`TaskSpec::template_hash`] of `spec`.
    pub template_hash: String,
    /// The whole spec of the task when this revision was first seen (its template is what
    /// matters; the other fields are kept so `rollout history` can show them).
    pub spec: TaskSpec,
    /// The task generation it was first seen in.
    pub generation: u64,
    /// When the leader first saw it.
    pub created_at: DateTime<Utc>,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RolloutPhase {
    /// Copies of the revision are being placed and older ones stopped.
    Progressing,
    /// `drover rollout pause`: no copy is replaced for the revision until resumed.
    Paused,
    /// The canaries are available: waiting for `drover rollout promote`.
    AwaitingPromotion,
    /// Every copy runs the revision and is available.
    Complete,
    /// The revision did not become healthy in time; nothing more is replaced for it.
    Failed,
}

impl RolloutPhase {
    /// Whether the rollout places no more copies of its revision by itself.
    pub fn holds(self) -> bool {
        matches!(
            self,
            RolloutPhase::Paused | RolloutPhase::AwaitingPromotion | RolloutPhase::Failed
        )
    }
}

impl std::fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::Paused => "Paused",
            RolloutPhase::AwaitingPromotion => "AwaitingPromotion",
            RolloutPhase::Complete => "Complete",
            RolloutPhase::Failed => "Failed",
        })
    }
}

/// Why a rollout failed (`reason` is CamelCase, `message` names the copy and what it said).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutFailure {
    /// The revision that failed.
    pub revision: u64,
    /// `InstanceFailed`, `Unhealthy`, `HealthyDeadlineExceeded`, `ProgressDeadlineExceeded`.
    pub reason: String,
    /// Which copy, and what its agent reported.
    pub message: String,
    /// When the leader decided.
    pub at: DateTime<Utc>,
}

/// The rollout of a service, in its task state (`taskstate/<ns>/<name>`, key `rollout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// The revision being rolled out (or rolled out, when complete).
    pub revision: u64,
    /// Its template hash.
    pub template_hash: String,
    /// The revision that was running when this rollout began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_revision: Option<u64>,
    /// Where it stands.
    pub phase: RolloutPhase,
    /// Paused by `drover rollout pause` (kept across revisions until resumed).
    #[serde(default)]
    pub paused: bool,
    /// `drover rollout promote` released this revision's canaries.
    #[serde(default)]
    pub promoted: bool,
    /// Rollout steps taken (a copy placed or asked to stop), numbered in the events.
    #[serde(default)]
    pub steps: u64,
    /// Copies of the revision placed so far and available so far (at the last plan).
    #[serde(default)]
    pub updated: u32,
    /// Available copies of the revision.
    #[serde(default)]
    pub available: u32,
    /// When it began.
    pub started_at: DateTime<Utc>,
    /// When it last made progress (a copy of the revision became available); the progress
    /// deadline counts from here.
    pub progressed_at: DateTime<Utc>,
    /// The last revision that rolled out completely and healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<u64>,
    /// Set when this rollout is an automatic revert: the template that failed. The task's spec
    /// still has it; it is not tried again until the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted_hash: Option<String>,
    /// The last failure, kept after a revert so `rollout status` can say why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<RolloutFailure>,
}

impl Rollout {
    /// A one-line summary for `get` and `describe`.
    pub fn summary(&self) -> String {
        let mut s = format!("revision {} {}", self.revision, self.phase);
        if self.paused && self.phase != RolloutPhase::Paused {
            s.push_str(" (paused)");
        }
        if let Some(f) = self
            .failure
            .as_ref()
            .filter(|_| self.reverted_hash.is_some() || self.phase == RolloutPhase::Failed)
        {
            if self.reverted_hash.is_some() {
                s.push_str(&format!(
                    ", reverted from revision {}: {}",
                    f.revision, f.reason
                ));
            } else {
                s.push_str(&format!(": {}", f.reason));
            }
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_reads_as_the_leader_writes_it() {
        let r = Rollout {
            revision: 3,
            template_hash: "00ff".into(),
            from_revision: Some(2),
            phase: RolloutPhase::Progressing,
            paused: false,
            promoted: false,
            steps: 4,
            updated: 2,
            available: 1,
            started_at: DateTime::<Utc>::UNIX_EPOCH,
            progressed_at: DateTime::<Utc>::UNIX_EPOCH,
            stable_revision: Some(2),
            reverted_hash: None,
            failure: None,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""phase":"Progressing""#), "{json}");
        assert_eq!(serde_json::from_str::<Rollout>(&json).unwrap(), r);
        assert!(RolloutPhase::Failed.holds() && !RolloutPhase::Progressing.holds());
    }
}
