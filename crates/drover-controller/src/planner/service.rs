//! Services (`restartPolicy: Always`): keep `replicas` instances of the current generation on
//! live nodes, replace what a dead node or a new generation took away, escalate instances their
//! agent reports `Failed` (reschedule with exponential delay, then dead-letter), and move
//! instances off draining nodes — all within one copy budget: live copies (a copy is live
//! until its process has exited, stopping copies included) never exceed `replicas +
//! update.maxSurge`.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use drover_api::{DeadLetter, EventKind, Instance, InstanceId, Phase, Task};

use super::reason::Reason;
use super::{Plan, Step, Write};
use crate::config::ControllerConfig;
use crate::snapshot::{Snapshot, StatusKey};
use drover_api::records::{DeadLetterRecord, TaskRef};

/// An assignment to delete (with its status), and why.
#[derive(Debug, Clone)]
pub(super) struct Removal {
    pub(super) id: InstanceId,
    pub(super) node: String,
    pub(super) mod_revision: i64,
    pub(super) reason: Reason,
    /// Written in the same step when the instance gave up for good.
    pub(super) dead_letter: Option<DeadLetterRecord>,
}

impl Removal {
    pub(super) fn plain(snapshot: &Snapshot, i: &Instance, reason: Reason) -> Removal {
        Removal {
            id: i.id.clone(),
            node: i.node.clone(),
            mod_revision: snapshot
                .assignments
                .get(&i.id)
                .map_or(0, |a| a.mod_revision),
            reason,
            dead_letter: None,
        }
    }
}

/// An instance that should exist and needs a node.
#[derive(Debug, Clone)]
pub(super) struct Want {
    pub(super) task: TaskRef,
    /// Order among the task's wants (replacements first).
    pub(super) seq: u32,
    pub(super) attempt: u32,
    pub(super) avoid_node: Option<String>,
    /// The removal this replaces: both land in one step.
    pub(super) replaces: Option<InstanceId>,
    /// Why it is wanted: `Lost`, `Rescheduled` or `Scale`.
    pub(super) why: Reason,
}

/// Where a task's planning puts its results.
pub(super) struct Out<'a> {
    pub(super) plan: &'a mut Plan,
    pub(super) removals: &'a mut Vec<Removal>,
    pub(super) wants: &'a mut Vec<Want>,
    /// Dead letters of services, counted by task and generation ([`dead_letter_counts`]).
    pub(super) dead_letters: &'a BTreeMap<(TaskRef, u64), usize>,
}

/// Dead letters of service instances (no run), counted by the task and generation their
/// letters name: one pass over all letters per plan, not one per service.
pub(super) fn dead_letter_counts(snapshot: &Snapshot) -> BTreeMap<(TaskRef, u64), usize> {
    let mut counts: BTreeMap<(TaskRef, u64), usize> = BTreeMap::new();
    for d in snapshot.deadletters.values() {
        if d.value.letter.run.is_none() {
            let task = TaskRef::new(&d.value.letter.namespace, &d.value.letter.task);
            *counts.entry((task, d.value.generation)).or_default() += 1;
        }
    }
    counts
}

/// The entries of `map` whose ids are service instances of `task`: a range of the map (ids
/// order by namespace, task, run, slot, and service ids have no run), so a lookup costs
/// O(log n + k), not a scan. Names that cannot form an id fall back to every entry (the
/// caller filters anyway).
pub(super) fn service_ids_of<'m, V>(
    map: &'m BTreeMap<InstanceId, V>,
    task: &TaskRef,
) -> Box<dyn Iterator<Item = (&'m InstanceId, &'m V)> + 'm> {
    match (
        InstanceId::service(&task.namespace, &task.name, 0),
        InstanceId::service(&task.namespace, &task.name, u32::MAX),
    ) {
        (Ok(first), Ok(last)) => Box::new(map.range(first..=last)),
        _ => Box::new(map.iter()),
    }
}

fn phase(snapshot: &Snapshot, id: &InstanceId) -> Option<Phase> {
    snapshot.statuses.get(id).map(|s| s.value.phase)
}

fn running(snapshot: &Snapshot, i: &Instance) -> bool {
    phase(snapshot, &i.id) == Some(Phase::Running)
}

/// Plans one service task. `mine` are the task's assignments, in instance-id order.
pub(super) fn plan_service(
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    config: &ControllerConfig,
    task_ref: &TaskRef,
    task: &Task,
    mine: &[&Instance],
    out: &mut Out<'_>,
) {
    let generation = task.metadata.generation;
    let dead_lettered = out
        .dead_letters
        .get(&(task_ref.clone(), generation))
        .copied()
        .unwrap_or(0);
    // An assignment that does not decode still holds its slot on a live node (never scale up
    // around it); on a dead node it is replaced like any other (by key and mod revision).
    let (opaque, opaque_lost): (Vec<_>, Vec<_>) =
        service_ids_of(&snapshot.opaque_assignments, task_ref)
            .filter(|(id, _)| {
                id.run().is_none()
                    && id.namespace() == task_ref.namespace
                    && id.task() == task_ref.name
            })
            .partition(|(_, a)| snapshot.node_present(&a.node));
    let mut desired = usize::try_from(task.spec.replicas)
        .unwrap_or(usize::MAX)
        .saturating_sub(dead_lettered)
        .saturating_sub(opaque.len());

    // Copies going away that may still be live: stop requested, or being requested now.
    let mut departing = 0usize;

    // Classify. `live` count towards `desired`; `moving` (on a draining node, or of an older
    // generation) are replaced, within the budget, before or after they go.
    let mut live: Vec<&Instance> = Vec::new();
    let mut moving: Vec<(&Instance, Reason)> = Vec::new();
    let mut replace: Vec<(&Instance, Reason)> = Vec::new();
    for &i in mine.iter().filter(|i| i.run.is_none()) {
        if let Some(stop) = &i.stop {
            // Already asked to stop: deleted once gone, counted until then.
            let reason = Reason::parse(&stop.reason);
            departing += depart(snapshot, out, i, reason);
            continue;
        }
        if i.generation != generation {
            if snapshot.copy_gone(&i.id, &i.node) {
                depart(snapshot, out, i, Reason::Outdated);
            } else {
                moving.push((i, Reason::Outdated));
            }
            continue;
        }
        if !snapshot.node_present(&i.node) {
            replace.push((i, Reason::Lost));
            continue;
        }
        if phase(snapshot, &i.id) == Some(Phase::Failed) {
            match escalate(snapshot, now, config, task_ref, i, out) {
                Escalation::Reschedule => replace.push((i, Reason::Rescheduled)),
                Escalation::Wait => live.push(i),
                // Its slot is not refilled while the task keeps this generation.
                Escalation::DeadLettered => desired = desired.saturating_sub(1),
            }
            continue;
        }
        let is_draining = snapshot
            .nodeinfos
            .get(&i.node)
            .is_some_and(|n| n.value.draining);
        if is_draining {
            moving.push((i, Reason::Drained));
        } else {
            live.push(i);
        }
    }

    let mut seq = 0u32;
    let mut want = |out: &mut Out<'_>, attempt, avoid: Option<String>, replaces, why| {
        out.wants.push(Want {
            task: task_ref.clone(),
            seq,
            attempt,
            avoid_node: avoid,
            replaces,
            why,
        });
        seq += 1;
    };

    // Scale down first: it frees budget. Drop instances that are not running first, then the
    // newest slots.
    if live.len() > desired {
        live.sort_by_key(|i| (running(snapshot, i), std::cmp::Reverse(i.slot)));
        let excess = live.len() - desired;
        for i in live.drain(..excess) {
            departing += depart(snapshot, out, i, Reason::ScaledDown);
        }
    }
    // The copy budget: every copy that may be live, whatever its generation or fate, counts.
    let cap = desired.saturating_add(usize::try_from(task.spec.update.max_surge).unwrap_or(0));
    // Room for new copies under the budget (opaque assignments hold theirs).
    let occupied = live.len() + moving.len() + departing + opaque.len();
    let room = cap.saturating_add(opaque.len()).saturating_sub(occupied);

    // Replacements first, carrying the attempt (a failure bumps it; a lost node does not).
    let mut deficit = desired.saturating_sub(live.len()).min(room);
    for (i, why) in replace {
        let removal = Removal::plain(snapshot, i, why);
        if deficit > 0 {
            let (attempt, avoid) = if why == Reason::Rescheduled {
                (i.attempt.saturating_add(1), Some(i.node.clone()))
            } else {
                (i.attempt, None)
            };
            want(out, attempt, avoid, Some(i.id.clone()), why);
            deficit -= 1;
        }
        out.removals.push(removal);
    }
    for (id, a) in opaque_lost {
        if deficit > 0 {
            want(out, 1, None, Some(id.clone()), Reason::Lost);
            deficit -= 1;
        }
        out.removals.push(Removal {
            id: id.clone(),
            node: a.node.clone(),
            mod_revision: a.mod_revision,
            reason: Reason::Lost,
            dead_letter: None,
        });
    }
    for _ in 0..deficit {
        want(out, 1, None, None, Reason::Scale);
    }

    // Moving copies (drain, new generation). With surge room, replacement first: a moving
    // copy goes once enough current copies exist elsewhere, and (if it runs) only while the
    // Running count stays at or above `desired`. Without room (no surge, or all of it spent),
    // stop first: one copy at a time, once every other copy runs, so the gap is one copy for
    // as long as it takes to stop and replace.
    if moving.is_empty() {
        return;
    }
    let running_live = live.iter().filter(|i| running(snapshot, i)).count();
    let running_moving = moving.iter().filter(|(i, _)| running(snapshot, i)).count();
    moving.sort_by_key(|(i, _)| (running(snapshot, i), i.slot));
    if live.len() >= desired {
        let mut allowance = (running_live + running_moving).saturating_sub(desired);
        for (i, reason) in moving {
            if running(snapshot, i) {
                if allowance == 0 {
                    continue;
                }
                allowance -= 1;
            }
            depart(snapshot, out, i, reason);
        }
        return;
    }
    let no_room = occupied + deficit >= cap.saturating_add(opaque.len());
    let settled = departing == 0 && running_live == live.len() && wanted_none(out, task_ref);
    // A replacement that fits nowhere while the copies it would replace hold their room
    // (one small node, say) would wait forever: then stop first, one copy at a time.
    let stuck = departing == 0 && unschedulable(snapshot, task_ref);
    if (no_room && settled) || stuck {
        if let Some((i, reason)) = moving.first() {
            depart(snapshot, out, i, *reason);
        }
    }
}

/// Removes `i` for `reason`; 1 when its copy may still be live (it then departs under a stop
/// request and keeps its place in the budget), else 0.
fn depart(snapshot: &Snapshot, out: &mut Out<'_>, i: &Instance, reason: Reason) -> usize {
    out.removals.push(Removal::plain(snapshot, i, reason));
    usize::from(!snapshot.copy_gone(&i.id, &i.node))
}

/// Whether the last plan could not place a copy of the task (its pending reason says so).
fn unschedulable(snapshot: &Snapshot, task_ref: &TaskRef) -> bool {
    snapshot
        .taskstates
        .get(task_ref)
        .and_then(|s| s.value.state.pending_reason.as_deref())
        .is_some_and(|r| r.starts_with(super::placement::UNSCHEDULABLE))
}

/// Whether this plan wants no new copy of the task (nothing is being placed for it).
fn wanted_none(out: &Out<'_>, task_ref: &TaskRef) -> bool {
    !out.wants.iter().any(|w| &w.task == task_ref)
}

enum Escalation {
    Reschedule,
    Wait,
    DeadLettered,
}

/// Decides what happens to an instance its agent reports `Failed`.
fn escalate(
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    config: &ControllerConfig,
    task_ref: &TaskRef,
    i: &Instance,
    out: &mut Out<'_>,
) -> Escalation {
    let Some(status) = snapshot.statuses.get(&i.id).map(|s| &s.value) else {
        return Escalation::Wait;
    };
    // Attempts are 1-based: attempt `limit + 1` is the last one allowed.
    if i.attempt > config.reschedule_limit {
        let last_error = match (&status.reason, &status.message) {
            (Some(r), Some(m)) => format!("{r}: {m}"),
            (Some(r), None) => r.clone(),
            (None, Some(m)) => m.clone(),
            (None, None) => "Failed".into(),
        };
        let letter = DeadLetterRecord {
            letter: DeadLetter {
                instance: i.id.clone(),
                namespace: task_ref.namespace.clone(),
                task: task_ref.name.clone(),
                run: None,
                attempts: i.attempt,
                last_error: last_error.clone(),
                exit_code: status.exit_code,
                time: now,
            },
            generation: i.generation,
        };
        out.plan.event(
            now,
            &task_ref.namespace,
            EventKind::Task,
            &task_ref.name,
            Reason::DeadLettered.as_str(),
            format!(
                "instance {} failed {} time(s) on its last node {} ({last_error}); dead-lettered",
                i.id, i.attempt, i.node
            ),
        );
        let mut removal = Removal::plain(snapshot, i, Reason::DeadLettered);
        removal.dead_letter = Some(letter);
        out.removals.push(removal);
        return Escalation::DeadLettered;
    }
    let since = status.finished_at.unwrap_or(status.updated_at);
    let delay = config.reschedule_delay(i.attempt.saturating_sub(1));
    let due = since + TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX);
    if now >= due {
        Escalation::Reschedule
    } else {
        out.plan.requeue_no_later_than(due);
        Escalation::Wait
    }
}

/// Deletes statuses of service instances that have no assignment (their assignment was removed
/// by something other than this controller), every key of each, and statuses under a node the
/// instance is not assigned to.
pub(super) fn orphan_statuses(snapshot: &Snapshot, plan: &mut Plan) {
    for id in snapshot.status_keys.keys() {
        if id.run().is_none()
            && !snapshot.assignments.contains_key(id)
            && !snapshot.opaque_assignments.contains_key(id)
        {
            for (at, mod_revision) in snapshot.status_keys_of(id) {
                plan.steps.push(delete_status(id, at, mod_revision));
            }
        }
    }
    for (id, at, mod_revision) in snapshot.stray_statuses() {
        plan.steps.push(delete_status(id, at, mod_revision));
    }
}

fn delete_status(id: &InstanceId, at: StatusKey, mod_revision: i64) -> Step {
    Step {
        task: None,
        writes: vec![Write::DeleteStatus {
            id: id.clone(),
            at,
            mod_revision,
        }],
    }
}

/// Deletes the legacy statuses (`status/<instance>`) of instances whose agent has written a
/// status under its node: the migration to per-node statuses, one key at a time.
pub(super) fn superseded_legacy_statuses(snapshot: &Snapshot, plan: &mut Plan) {
    for (id, mod_revision) in snapshot.superseded_legacy_statuses() {
        plan.steps
            .push(delete_status(id, StatusKey::Legacy, mod_revision));
    }
}
