//! Node lifecycle: a node is alive exactly while its lease-bound `nodes/<node>` key exists.
//! The planner records deaths (and returns) in `nodeinfo/<node>.deadSince`; the instances of a
//! dead node are replaced by the service planner.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use drover_api::{EventKind, NodeInfo};

use super::{Plan, Step, Write};
use crate::snapshot::Snapshot;

/// Namespace of node events (nodes belong to no namespace).
const NODE_EVENT_NAMESPACE: &str = "default";

pub(super) fn plan_nodes(snapshot: &Snapshot, now: DateTime<Utc>, plan: &mut Plan) {
    // A node whose record does not decode is known: writing a fresh record would compare it
    // absent and fail, and would overwrite what an operator may have meant.
    let mut known: BTreeSet<&str> = snapshot
        .opaque_nodeinfos
        .iter()
        .map(String::as_str)
        .collect();
    for (name, info) in &snapshot.nodeinfos {
        known.insert(name);
        let alive = snapshot.node_present(name);
        let mut next = info.value.clone();
        match (alive, info.value.dead_since) {
            (false, None) => {
                next.dead_since = Some(now);
                let n = snapshot.instances_on(name).count();
                plan.event(
                    now,
                    NODE_EVENT_NAMESPACE,
                    EventKind::Node,
                    name,
                    "NodeDead",
                    format!("node {name} lost its lease; {n} instance(s) to replace"),
                );
            }
            (true, Some(_)) => {
                next.dead_since = None;
                plan.event(
                    now,
                    NODE_EVENT_NAMESPACE,
                    EventKind::Node,
                    name,
                    "NodeReady",
                    format!("node {name} registered again"),
                );
            }
            _ => continue,
        }
        if next.name.is_empty() {
            next.name.clone_from(name);
        }
        plan.steps.push(Step {
            task: None,
            writes: vec![Write::NodeInfo {
                info: next,
                mod_revision: info.mod_revision,
            }],
        });
    }
    // A node that died before anyone wrote its nodeinfo still gets a record of its death.
    let orphaned: BTreeSet<&str> = snapshot
        .assignments
        .values()
        .map(|a| a.value.node.as_str())
        .filter(|n| !snapshot.node_present(n) && !known.contains(n))
        .collect();
    for name in orphaned {
        let n = snapshot.instances_on(name).count();
        plan.event(
            now,
            NODE_EVENT_NAMESPACE,
            EventKind::Node,
            name,
            "NodeDead",
            format!("node {name} is not registered; {n} instance(s) to replace"),
        );
        plan.steps.push(Step {
            task: None,
            writes: vec![Write::NodeInfo {
                info: NodeInfo {
                    name: name.to_owned(),
                    dead_since: Some(now),
                    ..NodeInfo::default()
                },
                mod_revision: 0,
            }],
        });
    }
}
