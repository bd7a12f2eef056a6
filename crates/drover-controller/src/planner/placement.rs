//! Placement: runs the pure [`Scheduler`] over the wanted instances of every task at once (so
//! priorities compete across tasks), hands out fresh slots, pairs each replacement with the
//! removal it replaces, and records pending reasons, slot counters and events.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use drover_api::{EventKind, Instance, InstanceId, Mode, TaskSpec};

use super::jobs::{put_state, RunStart};
use super::service::{Removal, Want};
use super::{Plan, Reason, Step, TaskStateWrite, Write};
use crate::scheduler::{Capacity, Decision, NodeView, Request, Scheduler, Unavailable};
use crate::snapshot::Snapshot;
use drover_api::records::{TaskRef, TaskStateRecord};

/// Pending reasons this planner writes start with this, so it knows which ones to clear.
pub(super) const UNSCHEDULABLE: &str = "Unschedulable";
/// At most this many instance names are listed in one event message.
const EVENT_LIST_MAX: usize = 5;

fn demand(spec: &TaskSpec) -> Capacity {
    Capacity {
        cpu_millis: spec.resources.cpu.as_millis(),
        memory_bytes: spec.resources.memory.as_bytes(),
    }
}

/// The scheduler's view of the live nodes, counting every assignment that stays.
fn node_views(snapshot: &Snapshot, removed: &BTreeSet<&InstanceId>) -> Vec<NodeView> {
    let mut views: BTreeMap<&str, NodeView> = snapshot
        .nodes
        .iter()
        .map(|(name, node)| {
            let info = snapshot.nodeinfos.get(name).map(|i| &i.value);
            let unavailable = match info {
                _ if snapshot.opaque_nodeinfos.contains(name) => Some(Unavailable::RecordInvalid),
                Some(i) if i.draining => Some(Unavailable::Draining),
                Some(i) if i.cordoned => Some(Unavailable::Cordoned),
                _ => None,
            };
            let view = NodeView {
                name: name.clone(),
                capacity: Capacity {
                    cpu_millis: node.value.capacity.cpu.as_millis(),
                    memory_bytes: node.value.capacity.memory.as_bytes(),
                },
                allocated: Capacity::default(),
                labels: node.value.labels.clone(),
                drivers: node.value.drivers.iter().map(ToString::to_string).collect(),
                unavailable,
                task_counts: BTreeMap::new(),
            };
            (name.as_str(), view)
        })
        .collect();
    for a in snapshot.assignments.values() {
        if removed.contains(&a.value.id) {
            continue;
        }
        if let Some(view) = views.get_mut(a.value.node.as_str()) {
            view.allocated = view.allocated.saturating_add(demand(&a.value.spec));
            let task = TaskRef::new(&a.value.namespace, &a.value.task).to_string();
            *view.task_counts.entry(task).or_default() += 1;
        }
    }
    views.into_values().collect()
}

/// The first slot no earlier placement of each task can have used.
fn slot_floors(snapshot: &Snapshot) -> BTreeMap<TaskRef, u32> {
    let mut floors: BTreeMap<TaskRef, u32> = BTreeMap::new();
    let mut see = |id: &InstanceId| {
        let e = floors
            .entry(TaskRef::new(id.namespace(), id.task()))
            .or_default();
        *e = (*e).max(id.slot().saturating_add(1));
    };
    snapshot.assignments.keys().for_each(&mut see);
    snapshot.opaque_assignments.keys().for_each(&mut see);
    snapshot.statuses.keys().for_each(&mut see);
    snapshot.deadletters.keys().for_each(&mut see);
    for (task, state) in &snapshot.taskstates {
        let e = floors.entry(task.clone()).or_default();
        *e = (*e).max(state.value.next_slot);
    }
    floors
}

/// Per-task bookkeeping while materialising decisions.
#[derive(Default)]
struct TaskOutcome {
    next_slot: u32,
    placed: Vec<(InstanceId, String)>,
    pending_reason: Option<String>,
    steps: Vec<Step>,
    notes: BTreeMap<Reason, Vec<String>>,
}

pub(super) fn place(
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    removals: Vec<Removal>,
    wants: Vec<Want>,
    starts: Vec<RunStart>,
    plan: &mut Plan,
) {
    // Only a copy known gone frees its room; one still stopping holds it until it has exited.
    let removed: BTreeSet<&InstanceId> = removals
        .iter()
        .filter(|r| snapshot.copy_gone(&r.id, &r.node))
        .map(|r| &r.id)
        .collect();
    let mut scheduler = Scheduler::new(node_views(snapshot, &removed));
    let mut requests = Vec::with_capacity(wants.len());
    let mut req_tasks: Vec<(TaskRef, String)> = Vec::with_capacity(wants.len());
    let mut placeable = Vec::with_capacity(wants.len());
    for w in &wants {
        let Some(task) = snapshot.tasks.get(&w.task) else {
            continue;
        };
        let spec = w.spec.as_deref().unwrap_or(&task.value.spec);
        requests.push(Request {
            task: w.task.to_string(),
            name: format!("{}/{:010}", w.task, w.seq),
            priority: spec.priority,
            demand: demand(spec),
            node_selector: spec.node_selector.clone(),
            driver: spec.driver().to_string(),
            avoid_node: w.avoid_node.clone(),
        });
        req_tasks.push((w.task.clone(), format!("a new instance of {}", w.task)));
        placeable.push(w);
    }
    let services = requests.len();
    for start in &starts {
        let Some(task) = snapshot.tasks.get(&start.task) else {
            continue;
        };
        let spec = &task.value.spec;
        for slot in 0..start.replicas {
            requests.push(Request {
                task: start.task.to_string(),
                name: format!("{}/r{:020}/{slot:06}", start.task, start.record.run),
                priority: spec.priority,
                demand: demand(spec),
                node_selector: spec.node_selector.clone(),
                driver: spec.driver().to_string(),
                avoid_node: None,
            });
            let label = InstanceId::job(
                &start.task.namespace,
                &start.task.name,
                start.record.run,
                slot,
            )
            .map_or_else(|_| start.task.to_string(), |id| id.to_string());
            req_tasks.push((start.task.clone(), label));
        }
    }
    let mut decisions = scheduler.schedule_all(&requests);
    super::preempt::preempt(
        snapshot, now, &scheduler, &requests, &decisions, &req_tasks, &removed, plan,
    );
    let run_decisions = decisions.split_off(services.min(decisions.len()));
    place_runs(snapshot, now, starts, run_decisions, plan);

    let floors = slot_floors(snapshot);
    let mut outcomes: BTreeMap<TaskRef, TaskOutcome> = BTreeMap::new();
    let mut replacement: BTreeMap<InstanceId, Instance> = BTreeMap::new();
    for (w, decision) in placeable.into_iter().zip(decisions) {
        let out = outcomes
            .entry(w.task.clone())
            .or_insert_with(|| TaskOutcome {
                next_slot: floors.get(&w.task).copied().unwrap_or(0),
                ..TaskOutcome::default()
            });
        let node = match decision {
            Decision::Placed(node) => node,
            Decision::Unschedulable(why) => {
                plan.pending += 1;
                out.pending_reason.get_or_insert_with(|| why.to_string());
                continue;
            }
        };
        let Some(task) = snapshot.tasks.get(&w.task) else {
            continue;
        };
        let Ok(id) = InstanceId::service(&w.task.namespace, &w.task.name, out.next_slot) else {
            // Task keys are validated names, so this cannot happen; never place a bad id.
            out.pending_reason
                .get_or_insert_with(|| format!("{UNSCHEDULABLE}: invalid instance name"));
            continue;
        };
        out.next_slot = out.next_slot.saturating_add(1);
        let instance = Instance {
            id: id.clone(),
            namespace: w.task.namespace.clone(),
            task: w.task.name.clone(),
            slot: id.slot(),
            run: None,
            node: node.clone(),
            generation: task.value.metadata.generation,
            revision: w.revision,
            attempt: w.attempt,
            spec: w
                .spec
                .as_deref()
                .cloned()
                .unwrap_or_else(|| task.value.spec.clone()),
            assigned_at: now,
            stop: None,
        };
        plan.placed += 1;
        out.placed.push((id.clone(), node.clone()));
        match &w.replaces {
            Some(old) => {
                out.notes
                    .entry(w.why)
                    .or_default()
                    .push(format!("{old} -> {id} on {node}"));
                replacement.insert(old.clone(), instance);
            }
            None => out.steps.push(Step {
                task: Some(w.task.clone()),
                writes: vec![Write::Assign(Box::new(instance))],
            }),
        }
    }

    for r in removals {
        let task = TaskRef::new(r.id.namespace(), r.id.task());
        let out = outcomes.entry(task.clone()).or_insert_with(|| TaskOutcome {
            next_slot: floors.get(&task).copied().unwrap_or(0),
            ..TaskOutcome::default()
        });
        let mut writes = Vec::with_capacity(2);
        if let Some(letter) = r.dead_letter {
            writes.push(Write::DeadLetter(letter));
        }
        writes.push(Write::Unassign {
            id: r.id.clone(),
            node: r.node.clone(),
            mod_revision: r.mod_revision,
            reason: r.reason,
        });
        let step_task = match replacement.remove(&r.id) {
            Some(new) => {
                writes.push(Write::Assign(Box::new(new)));
                Some(task)
            }
            None => {
                let asked_before = snapshot
                    .assignments
                    .get(&r.id)
                    .is_some_and(|a| a.value.stop.is_some());
                if matches!(
                    r.reason,
                    Reason::Lost | Reason::Rescheduled | Reason::Drained
                ) && !asked_before
                {
                    let what = if r.reason == Reason::Drained {
                        "removed"
                    } else {
                        "awaiting a node"
                    };
                    out.notes
                        .entry(r.reason)
                        .or_default()
                        .push(format!("{} on {} {what}", r.id, r.node));
                }
                None
            }
        };
        out.steps.push(Step {
            task: step_task,
            writes,
        });
    }

    for (task_ref, out) in outcomes {
        finish_task(snapshot, now, &task_ref, out, plan);
    }
    // Services whose pending reason no longer holds (nothing wanted now) get it cleared.
    for (task_ref, state) in &snapshot.taskstates {
        let is_service = snapshot
            .tasks
            .get(task_ref)
            .is_some_and(|t| t.value.spec.mode() == Mode::Service);
        let ours = state
            .value
            .state
            .pending_reason
            .as_deref()
            .is_some_and(|r| r.starts_with(UNSCHEDULABLE));
        let planned_clear = plan
            .taskstates
            .get(task_ref)
            .is_none_or(|w| w.state.state.pending_reason.is_some());
        if is_service && ours && planned_clear {
            let wanted = wants.iter().any(|w| &w.task == task_ref);
            if !wanted {
                let mut next = plan
                    .taskstates
                    .get(task_ref)
                    .map_or_else(|| state.value.clone(), |w| w.state.clone());
                next.state.pending_reason = None;
                plan.taskstates.insert(
                    task_ref.clone(),
                    TaskStateWrite {
                        state: next,
                        mod_revision: state.mod_revision,
                    },
                );
            }
        }
    }
}

/// Turns placed runs into steps (record, trigger deletion, assignments, task state), or holds
/// them with an `Unschedulable` pending reason when any instance fits nowhere.
fn place_runs(
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    starts: Vec<RunStart>,
    decisions: Vec<Decision>,
    plan: &mut Plan,
) {
    let mut decisions = decisions.into_iter();
    for start in starts {
        let Some(task) = snapshot.tasks.get(&start.task) else {
            continue;
        };
        let old = snapshot.taskstates.get(&start.task);
        let (ns, name) = (start.task.namespace.as_str(), start.task.name.as_str());
        let run = start.record.run;
        let mut writes = vec![Write::PutRun {
            record: start.record.clone(),
            mod_revision: 0,
        }];
        writes.extend(start.writes);
        let mut nodes = Vec::new();
        let mut unschedulable = None;
        for slot in 0..start.replicas {
            let node = match decisions.next() {
                Some(Decision::Placed(node)) => node,
                Some(Decision::Unschedulable(why)) => {
                    unschedulable.get_or_insert_with(|| why.to_string());
                    continue;
                }
                None => {
                    unschedulable.get_or_insert_with(|| UNSCHEDULABLE.to_owned());
                    continue;
                }
            };
            let Ok(id) = InstanceId::job(ns, name, run, slot) else {
                unschedulable.get_or_insert_with(|| format!("{UNSCHEDULABLE}: invalid name"));
                continue;
            };
            nodes.push(format!("{id} on {node}"));
            writes.push(Write::Assign(Box::new(Instance {
                id,
                namespace: ns.to_owned(),
                task: name.to_owned(),
                slot,
                run: Some(run),
                node,
                generation: task.value.metadata.generation,
                revision: 0,
                attempt: start.record.attempt,
                spec: task.value.spec.clone(),
                assigned_at: now,
                stop: None,
            })));
        }
        if let Some(why) = unschedulable {
            plan.pending += usize::try_from(start.replicas).unwrap_or(usize::MAX);
            let mut held = start.held;
            if held.state.pending_reason.as_ref() != Some(&why) {
                plan.event(
                    now,
                    ns,
                    EventKind::Task,
                    name,
                    "FailedScheduling",
                    why.clone(),
                );
            }
            held.state.pending_reason = Some(why);
            put_state(plan, &start.task, old, held);
            continue;
        }
        plan.placed += nodes.len();
        plan.event(
            now,
            ns,
            EventKind::Task,
            name,
            "RunStarted",
            format!(
                "run {run} (attempt {}, cause {:?}) started: {}",
                start.record.attempt,
                start.record.cause,
                list(&nodes)
            ),
        );
        plan.steps.push(Step {
            task: Some(start.task.clone()),
            writes,
        });
        plan.taskstates.insert(
            start.task.clone(),
            TaskStateWrite {
                state: start.started,
                mod_revision: old.map_or(0, |s| s.mod_revision),
            },
        );
    }
}

fn list(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(EVENT_LIST_MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > EVENT_LIST_MAX {
        s.push_str(&format!(" and {} more", items.len() - EVENT_LIST_MAX));
    }
    s
}

/// Task state (slot counter, pending reason), steps and events of one task.
fn finish_task(
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    task_ref: &TaskRef,
    out: TaskOutcome,
    plan: &mut Plan,
) {
    let (ns, name) = (task_ref.namespace.as_str(), task_ref.name.as_str());
    let old = snapshot.taskstates.get(task_ref);
    let is_service = snapshot
        .tasks
        .get(task_ref)
        .is_some_and(|t| t.value.spec.mode() == Mode::Service);
    if is_service {
        // Start from what this plan already decided (the rollout record), else the stored.
        let mut next: TaskStateRecord = plan
            .taskstates
            .get(task_ref)
            .map(|w| w.state.clone())
            .or_else(|| old.map(|s| s.value.clone()))
            .unwrap_or_default();
        next.next_slot = next.next_slot.max(out.next_slot);
        let old_reason = next.state.pending_reason.clone();
        next.state.pending_reason = out.pending_reason.clone();
        if let Some(reason) = &out.pending_reason {
            if old_reason.as_ref() != Some(reason) {
                plan.event(
                    now,
                    ns,
                    EventKind::Task,
                    name,
                    "FailedScheduling",
                    reason.clone(),
                );
            }
        }
        if old.map(|s| &s.value) != Some(&next) {
            plan.taskstates.insert(
                task_ref.clone(),
                TaskStateWrite {
                    state: next,
                    mod_revision: old.map_or(0, |s| s.mod_revision),
                },
            );
        }
    }
    if !out.placed.is_empty() {
        let items: Vec<String> = out
            .placed
            .iter()
            .map(|(id, n)| format!("{id} on {n}"))
            .collect();
        plan.event(
            now,
            ns,
            EventKind::Task,
            name,
            "Scheduled",
            format!("placed {} instance(s): {}", items.len(), list(&items)),
        );
    }
    for (why, items) in &out.notes {
        let (reason, text) = match *why {
            Reason::Lost => ("InstancesReplaced", "replaced instance(s) of dead nodes"),
            Reason::Rescheduled => ("Rescheduled", "rescheduled failed instance(s)"),
            Reason::Drained => ("Drained", "moved instance(s) off draining nodes"),
            // No summary event: each of these has its own (or none is useful).
            Reason::DeadLettered
            | Reason::Outdated
            | Reason::ScaledDown
            | Reason::TaskDeleted
            | Reason::Preempted
            | Reason::RunFinished
            | Reason::Scale
            | Reason::Other => continue,
        };
        plan.event(
            now,
            ns,
            EventKind::Task,
            name,
            reason,
            format!("{text}: {}", list(items)),
        );
    }
    plan.steps.extend(out.steps);
}
