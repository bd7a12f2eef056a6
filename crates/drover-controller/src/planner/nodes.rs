//! Node lifecycle: a node is alive exactly while its lease-bound `nodes/<node>` key exists.
//! The planner records deaths (and returns) in `nodestate/<node>.deadSince`, a key only the
//! leader writes; the instances of a dead node are replaced by the service planner.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use drover_api::{EventKind, NodeState};

use super::{Plan, Step, Write};
use crate::snapshot::Snapshot;

/// Namespace of node events (nodes belong to no namespace).
const NODE_EVENT_NAMESPACE: &str = "default";

/// Records the death of every known node whose lease is gone, and the return of every node
/// recorded dead that registered again. A node is known by its state record, its operator
/// record (`nodeinfo`) or an assignment on it.
pub(super) fn plan_nodes(snapshot: &Snapshot, now: DateTime<Utc>, plan: &mut Plan) {
    for (name, state) in &snapshot.nodestates {
        let alive = snapshot.node_present(name);
        let next = match (alive, state.value.dead_since) {
            (false, None) => {
                dead_event(snapshot, now, name, "lost its lease", plan);
                Some(now)
            }
            (true, Some(_)) => {
                plan.event(
                    now,
                    NODE_EVENT_NAMESPACE,
                    EventKind::Node,
                    name,
                    "NodeReady",
                    format!("node {name} registered again"),
                );
                None
            }
            _ => continue,
        };
        plan.steps.push(Step {
            task: None,
            writes: vec![Write::NodeState {
                state: NodeState {
                    name: name.clone(),
                    dead_since: next,
                },
                mod_revision: state.mod_revision,
            }],
        });
    }
    // A node that died before its death was ever recorded gets a record now. One whose
    // record does not decode is known: writing a fresh record would compare it absent and
    // fail, and would overwrite what another writer meant.
    let recorded: BTreeSet<&str> = snapshot
        .nodestates
        .keys()
        .chain(&snapshot.opaque_nodestates)
        .map(String::as_str)
        .collect();
    let unrecorded: BTreeSet<&str> = snapshot
        .assignments
        .values()
        .map(|a| a.value.node.as_str())
        .chain(snapshot.nodeinfos.keys().map(String::as_str))
        .filter(|n| !snapshot.node_present(n) && !recorded.contains(n))
        .collect();
    for name in unrecorded {
        // A death an older leader already recorded (in `nodeinfo`) keeps its time, unannounced.
        let legacy = snapshot
            .nodeinfos
            .get(name)
            .and_then(|i| i.value.legacy_dead_since);
        if legacy.is_none() {
            dead_event(snapshot, now, name, "is not registered", plan);
        }
        plan.steps.push(Step {
            task: None,
            writes: vec![Write::NodeState {
                state: NodeState {
                    name: name.to_owned(),
                    dead_since: Some(legacy.unwrap_or(now)),
                },
                mod_revision: 0,
            }],
        });
    }
}

fn dead_event(snapshot: &Snapshot, now: DateTime<Utc>, name: &str, why: &str, plan: &mut Plan) {
    let n = snapshot.instances_on(name).count();
    plan.event(
        now,
        NODE_EVENT_NAMESPACE,
        EventKind::Node,
        name,
        "NodeDead",
        format!("node {name} {why}; {n} instance(s) to replace"),
    );
}
