//! Nodes: the live registration an agent keeps on its lease, and the durable node record.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::quantity::{Cpu, Memory};
use crate::task::DriverKind;

/// Allocatable capacity of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// CPU the scheduler may hand out.
    pub cpu: Cpu,
    /// Memory the scheduler may hand out.
    pub memory: Memory,
}

/// Value of `nodes/<node>`: written by the agent and bound to its lease, so it disappears when
/// the agent stops keeping the lease alive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// DNS-1123 label; the agent's `--node`.
    pub name: String,
    /// The agent's gRPC endpoint, `host:port`.
    pub address: String,
    /// What the scheduler may place here.
    pub capacity: Capacity,
    /// Labels matched by `spec.nodeSelector`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Drivers this agent can run (fingerprinted at start).
    #[serde(default)]
    pub drivers: Vec<DriverKind>,
    /// Agent version.
    #[serde(default)]
    pub version: String,
    /// The gRPC service at `address` is TLS with client certificates required (`drover logs`
    /// then dials `https://` and verifies the agent's certificate). Absent (false) in records
    /// of agents before it, and of agents serving plaintext.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// When this agent process registered.
    pub started_at: DateTime<Utc>,
}

/// Value of `nodeinfo/<node>`: the durable record that outlives the lease.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// No new instances are placed here (`drover cordon`).
    #[serde(default)]
    pub cordoned: bool,
    /// Instances are being moved away (`drover drain`); implies cordoned.
    #[serde(default)]
    pub draining: bool,
    /// Last time the node was seen alive.
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
    /// Read only, from records of versions before `nodestate/`: when the leader then recorded
    /// the node dead. The leader seeds the node's state from it once; the next operator write
    /// drops it.
    #[serde(default, rename = "deadSince", skip_serializing)]
    pub legacy_dead_since: Option<DateTime<Utc>>,
}

impl NodeInfo {
    /// May the scheduler place new instances on this node (as far as operators are concerned)?
    pub fn schedulable(&self) -> bool {
        !self.cordoned && !self.draining
    }
}

/// Value of `nodestate/<node>`: what the leader knows of the node's life, written only by the
/// leader (operators' intent is [`NodeInfo`], written only by operators). Older records kept
/// `deadSince` in `nodeinfo`; it is ignored there and dropped by the next operator write.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// The node's name.
    pub name: String,
    /// When the leader saw the node's lease end; `None` once it registered again.
    #[serde(default)]
    pub dead_since: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_false_in_old_records_and_written_only_when_true() {
        let old = r#"{"name":"n1","address":"10.0.0.5:7400","capacity":{"cpu":"1000m","memory":"64Mi"},"startedAt":"2024-01-01T00:00:00Z"}"#;
        let node: Node = serde_json::from_str(old).expect("an old record decodes");
        assert!(!node.tls);
        let plain = serde_json::to_string(&node).expect("encode");
        assert!(!plain.contains("tls"), "{plain}");
        let mut tls = node;
        tls.tls = true;
        let json = serde_json::to_string(&tls).expect("encode");
        assert!(json.contains(r#""tls":true"#), "{json}");
        let back: Node = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, tls);
    }
}
