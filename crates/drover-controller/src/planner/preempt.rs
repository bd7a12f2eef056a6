//! Preemption: a pending instance of a task with `preemption: true` that fits nowhere may evict
//! lower-priority instances from one node, choosing the node that needs the fewest victims.
//!
//! The victims are removed (fenced `Unassign`s) in this plan and the preemptor stays pending;
//! the next plan places it, first because it has the higher priority. Evicted service
//! instances are re-placed like any missing replica; an evicted job instance fails its run.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use drover_api::{EventKind, Instance, InstanceId};
use drover_store::Versioned;

use super::{Plan, Reason, Step, Write};
use crate::scheduler::{Capacity, Decision, NodeView, Request, Scheduler};
use crate::snapshot::Snapshot;
use drover_api::records::TaskRef;

/// A lower-priority instance that could make room.
struct Candidate<'a> {
    id: &'a InstanceId,
    priority: u8,
    demand: Capacity,
    mod_revision: i64,
}

fn demand_of(spec: &drover_api::TaskSpec) -> Capacity {
    Capacity {
        cpu_millis: spec.resources.cpu.as_millis(),
        memory_bytes: spec.resources.memory.as_bytes(),
    }
}

/// The fewest victims on `node` that let `req` fit, if any.
fn victims_on<'a>(
    node: &NodeView,
    req: &Request,
    mut candidates: Vec<Candidate<'a>>,
) -> Option<Vec<Candidate<'a>>> {
    // Largest first gives the fewest victims; among equals, the lowest priority goes first.
    candidates.sort_by(|a, b| {
        (b.demand.cpu_millis, b.demand.memory_bytes)
            .cmp(&(a.demand.cpu_millis, a.demand.memory_bytes))
            .then(a.priority.cmp(&b.priority))
            .then(a.id.cmp(b.id))
    });
    let mut view = node.clone();
    let mut chosen = Vec::new();
    for c in candidates {
        if Scheduler::reject(&view, req).is_none() {
            break;
        }
        view.allocated = view.allocated.saturating_sub(c.demand);
        chosen.push(c);
    }
    (Scheduler::reject(&view, req).is_none() && !chosen.is_empty()).then_some(chosen)
}

/// Evicts lower-priority instances for pending requests of preempting tasks.
///
/// # Guarantees
///
/// - Only instances of strictly lower priority are evicted, only on a node where the request
///   then fits, and never for a request the scheduler placed.
/// - Each eviction is a fenced `Unassign` (compare: the assignment's mod revision) with a
///   `Preempted` event on both tasks naming both instances.
#[allow(clippy::too_many_arguments)]
pub(super) fn preempt(
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    scheduler: &Scheduler,
    requests: &[Request],
    decisions: &[Decision],
    req_tasks: &[(TaskRef, String)],
    removed: &BTreeSet<&InstanceId>,
    plan: &mut Plan,
) {
    let preempts = |(decision, (task, _)): (&Decision, &(TaskRef, String))| {
        matches!(decision, Decision::Unschedulable(_))
            && snapshot
                .tasks
                .get(task)
                .is_some_and(|t| t.value.spec.preemption)
    };
    // The views and indexes below cost O(nodes + assignments): built only when some request
    // could evict.
    if !decisions.iter().zip(req_tasks).any(preempts) {
        return;
    }
    let mut views: BTreeMap<String, NodeView> = scheduler.nodes().clone();
    let mut by_node: BTreeMap<&str, Vec<&Versioned<Instance>>> = BTreeMap::new();
    for a in snapshot.assignments.values() {
        by_node.entry(a.value.node.as_str()).or_default().push(a);
    }
    let mut evicted: BTreeSet<InstanceId> = BTreeSet::new();
    // Room that copies already asked to stop will free, per node: a request that fits in it
    // waits for them instead of evicting more.
    let mut leaving: BTreeMap<&str, Capacity> = BTreeMap::new();
    for a in snapshot.assignments.values() {
        if a.value.stop.is_some() && !removed.contains(&a.value.id) {
            let room = leaving.entry(a.value.node.as_str()).or_default();
            *room = room.saturating_add(demand_of(&a.value.spec));
        }
    }
    for ((req, decision), (task, label)) in requests.iter().zip(decisions).zip(req_tasks) {
        if !matches!(decision, Decision::Unschedulable(_)) {
            continue;
        }
        if !snapshot
            .tasks
            .get(task)
            .is_some_and(|t| t.value.spec.preemption)
        {
            continue;
        }
        let waiting = views.iter().find_map(|(name, view)| {
            let room = leaving.get(name.as_str()).copied()?;
            let mut after = view.clone();
            after.allocated = after.allocated.saturating_sub(room);
            Scheduler::reject(&after, req)
                .is_none()
                .then(|| name.clone())
        });
        if let Some(name) = waiting {
            if let Some(room) = leaving.get_mut(name.as_str()) {
                *room = room.saturating_sub(req.demand);
            }
            continue;
        }
        let mut best: Option<(usize, String, Vec<Candidate<'_>>)> = None;
        for (name, view) in &views {
            let mut free = view.clone();
            free.allocated = Capacity::default();
            if Scheduler::reject(&free, req).is_some() {
                continue; // cordoned, draining, wrong driver or labels, or too small anyway
            }
            let candidates: Vec<Candidate<'_>> = by_node
                .get(name.as_str())
                .into_iter()
                .flatten()
                .filter(|a| {
                    a.value.stop.is_none()
                        && !removed.contains(&a.value.id)
                        && !evicted.contains(&a.value.id)
                })
                .filter(|a| a.value.spec.priority < req.priority)
                .map(|a| Candidate {
                    id: &a.value.id,
                    priority: a.value.spec.priority,
                    demand: demand_of(&a.value.spec),
                    mod_revision: a.mod_revision,
                })
                .collect();
            if let Some(v) = victims_on(view, req, candidates) {
                if best.as_ref().is_none_or(|(n, _, _)| v.len() < *n) {
                    best = Some((v.len(), name.clone(), v));
                }
            }
        }
        let Some((_, node, victims)) = best else {
            continue;
        };
        if let Some(view) = views.get_mut(&node) {
            for v in &victims {
                view.allocated = view.allocated.saturating_sub(v.demand);
            }
            // Reserve the room for this request so no other preemptor counts on it.
            view.allocated = view.allocated.saturating_add(req.demand);
        }
        for v in victims {
            evicted.insert(v.id.clone());
            plan.steps.push(Step {
                task: None,
                writes: vec![Write::Unassign {
                    id: v.id.clone(),
                    node: node.clone(),
                    mod_revision: v.mod_revision,
                    reason: Reason::Preempted,
                }],
            });
            let message = format!(
                "instance {} (priority {}) on node {node} preempted for {label} (priority {})",
                v.id, v.priority, req.priority
            );
            for (ns, name) in [
                (v.id.namespace(), v.id.task()),
                (task.namespace.as_str(), task.name.as_str()),
            ] {
                plan.event(now, ns, EventKind::Task, name, "Preempted", message.clone());
            }
        }
    }
}
