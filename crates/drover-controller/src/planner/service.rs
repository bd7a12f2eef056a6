//! Services (`restartPolicy: Always`): keep `replicas` instances of the target revision (see
//! [`super::rollout`]) on live nodes, replace what a dead node or a new revision took away,
//! escalate instances their agent reports `Failed` (reschedule with exponential delay, then
//! dead-letter), and move instances off draining nodes — all within one copy budget: live
//! copies (a copy is live until its process has exited, stopping copies included) never exceed
//! `replicas + update.maxSurge`, and available copies never drop below `replicas -
//! update.maxUnavailable` because of a replacement.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use drover_api::{DeadLetter, EventKind, Instance, InstanceId, Phase, Task};

use super::reason::Reason;
use super::rollout;
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
    /// The spec to place it from (a revision's), instead of the task's.
    pub(super) spec: Option<Box<drover_api::TaskSpec>>,
    /// The revision that spec is (0: unknown).
    pub(super) revision: u64,
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

/// Plans one service task. `mine` are the task's assignments, in instance-id order.
///
/// # Guarantees
///
/// - Live copies (a copy is live until its agent reports its process gone) never exceed
///   `replicas + maxSurge`, whatever moves them: a rollout, a drain, a failure, a lost node.
/// - A copy that is available (healthy for `minHealthySeconds`) is asked to stop only while
///   at least `replicas - maxUnavailable` others are available.
/// - While the rollout holds (paused, awaiting promotion, failed) no copy is replaced by the
///   new revision; lost and failed copies are replaced as they were.
pub(super) fn plan_service(
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    config: &ControllerConfig,
    task_ref: &TaskRef,
    task: &Task,
    mine: &[&Instance],
    out: &mut Out<'_>,
) {
    let mut target = rollout::target(snapshot, now, task_ref, task, mine);
    let mode = target.mode;
    let min_healthy = task.spec.update.min_healthy_seconds;
    let is_available = |i: &Instance| rollout::available(snapshot, now, i, min_healthy);
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

    let mut seen = rollout::Observed {
        judge: target.rollout.from_revision.is_some(),
        ..rollout::Observed::default()
    };
    let failed = target.rollout.phase == drover_api::RolloutPhase::Failed;
    // What older copies are placed from while holding: a copy's of another revision, else the
    // stable revision's record.
    let older = target.older(snapshot, task_ref, mine);
    let mut current_ids: BTreeSet<&InstanceId> = BTreeSet::new();
    // Copies going away that may still be live: stop requested, or being requested now.
    let mut departing = 0usize;
    // Copies of the target on live nodes that stay; copies of other revisions that stay (until
    // the rollout replaces them); copies on draining nodes (replaced, whatever their
    // revision); copies to replace one for one (lost, or failed and rescheduled).
    let mut new_live: Vec<&Instance> = Vec::new();
    let mut old_live: Vec<&Instance> = Vec::new();
    let mut moving: Vec<&Instance> = Vec::new();
    let mut replace: Vec<(&Instance, Reason)> = Vec::new();
    for &i in mine.iter().filter(|i| i.run.is_none()) {
        let current = target.is_current(snapshot, i);
        if current {
            current_ids.insert(&i.id);
        }
        if let Some(stop) = &i.stop {
            // Already asked to stop: deleted once gone, counted until then.
            let reason = Reason::parse(&stop.reason);
            let live = depart(snapshot, out, i, reason);
            departing += live;
            if !current {
                seen.others += u32::try_from(live).unwrap_or(0);
            }
            continue;
        }
        if !snapshot.node_present(&i.node) {
            replace.push((i, Reason::Lost));
            continue;
        }
        if phase(snapshot, &i.id) == Some(Phase::Failed) {
            if current {
                seen.target_copy(snapshot, now, task, i);
            }
            if !current && mode != rollout::Mode::Hold {
                // Gone already; the rollout fills its place with the target.
                departing += depart(snapshot, out, i, Reason::Outdated);
                continue;
            }
            if current && failed && older.is_some() {
                // A copy of the revision that failed is not tried again: an older copy
                // takes its place.
                departing += depart(snapshot, out, i, Reason::Outdated);
                continue;
            }
            // A dead letter of a copy of the target names the task's generation, so it holds
            // its slot for as long as the template stays (a change to replicas or priority
            // alone keeps the copy, and so must keep its letter).
            let stamp = if current { generation } else { i.generation };
            match escalate(snapshot, now, config, task_ref, i, stamp, out) {
                Escalation::Reschedule => replace.push((i, Reason::Rescheduled)),
                Escalation::Wait if current => new_live.push(i),
                Escalation::Wait => old_live.push(i),
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
            moving.push(i);
        } else if current {
            seen.target_copy(snapshot, now, task, i);
            new_live.push(i);
        } else {
            old_live.push(i);
        }
    }
    seen.desired = u32::try_from(desired).unwrap_or(u32::MAX);
    seen.others += u32::try_from(
        old_live.len()
            + moving
                .iter()
                .filter(|i| !current_ids.contains(&i.id))
                .count(),
    )
    .unwrap_or(u32::MAX);

    // How many copies of the target this plan may aim for, and how many older copies must
    // stay (a canary replaces only so many).
    let (new_cap, old_floor) = match mode {
        rollout::Mode::Rolling => (desired, 0),
        rollout::Mode::Canary(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX).min(desired);
            (n, desired - n)
        }
        rollout::Mode::Hold => (new_live.len().min(desired), desired),
    };

    // Scale down first: it frees budget. Copies of the target beyond what is aimed for, then
    // (holding) other revisions beyond what is wanted; unavailable copies and the newest
    // slots first.
    let by_keep = |i: &&Instance| (is_available(i), std::cmp::Reverse(i.slot));
    if new_live.len() > desired {
        new_live.sort_by_key(by_keep);
        let excess = new_live.len() - desired;
        for i in new_live.drain(..excess) {
            departing += depart(snapshot, out, i, Reason::ScaledDown);
        }
    }
    let budget = task.spec.update.budget(task.spec.replicas);
    // Holding keeps what runs. Paused or awaiting promotion, the surge copies of the new
    // revision stay (the rollout goes on from there); only copies beyond `replicas +
    // maxSurge` (fewer replicas wanted) go, older revisions first. A failed rollout settles
    // back to `replicas` copies: unavailable ones go first, then those of the failed revision.
    let failed = target.rollout.phase == drover_api::RolloutPhase::Failed;
    let held_cap = if failed {
        desired
    } else {
        desired.saturating_add(usize::try_from(budget.surge).unwrap_or(0))
    };
    if mode == rollout::Mode::Hold && new_live.len() + old_live.len() > held_cap {
        let mut all: Vec<(&Instance, bool)> = new_live
            .iter()
            .map(|i| (*i, true))
            .chain(old_live.iter().map(|i| (*i, false)))
            .collect();
        all.sort_by_key(|(i, new)| {
            (
                is_available(i),
                // Failed: the failed revision's copies go first; else the older ones.
                *new != failed,
                std::cmp::Reverse(i.slot),
            )
        });
        let excess = all.len() - held_cap;
        let gone: BTreeSet<&InstanceId> = all[..excess].iter().map(|(i, _)| &i.id).collect();
        for (i, _) in &all[..excess] {
            departing += depart(snapshot, out, i, Reason::ScaledDown);
        }
        new_live.retain(|i| !gone.contains(&i.id));
        old_live.retain(|i| !gone.contains(&i.id));
    }
    // The copy budget: every copy that may be live, whatever its revision or fate, counts.
    let cap = desired.saturating_add(usize::try_from(budget.surge).unwrap_or(0));
    let occupied = new_live.len() + old_live.len() + moving.len() + departing + opaque.len();
    let room = cap.saturating_add(opaque.len()).saturating_sub(occupied);

    // New copies: the target's up to what is aimed for; the rest (holding, or a canary
    // keeping older copies) as the copies they stand in for.
    let stays = new_live.len()
        + match mode {
            rollout::Mode::Rolling => 0,
            rollout::Mode::Canary(_) => old_live.len().min(old_floor),
            rollout::Mode::Hold => old_live.len(),
        };
    let mut deficit = desired.saturating_sub(stays).min(room);
    let mut new_count = new_live.len();
    let mut placing = 0u32;
    let mut seq = 0u32;
    let mut want = |out: &mut Out<'_>, attempt, avoid, replaces, why, like: Option<&Instance>| {
        let of_target = match like {
            _ if mode == rollout::Mode::Rolling => true,
            // A failed revision's copy is replaced by an older one when there is one.
            Some(i) if current_ids.contains(&i.id) => !failed || older.is_none(),
            _ if new_count < new_cap => true,
            _ => false,
        };
        let like = like.filter(|i| !current_ids.contains(&i.id));
        let (spec, revision) = match (of_target, like, &older) {
            (false, Some(i), _) => (Some(Box::new(i.spec.clone())), i.revision),
            (false, None, Some((spec, revision))) => (Some(Box::new(spec.clone())), *revision),
            _ => {
                new_count += 1;
                placing += 1;
                (Some(Box::new(target.spec.clone())), target.revision)
            }
        };
        out.wants.push(Want {
            task: task_ref.clone(),
            seq,
            attempt,
            avoid_node: avoid,
            replaces,
            why,
            spec,
            revision,
        });
        seq += 1;
    };

    // Replacements first, carrying the attempt (a failure bumps it; a lost node does not).
    for (i, why) in replace {
        let removal = Removal::plain(snapshot, i, why);
        if deficit > 0 {
            let (attempt, avoid) = if why == Reason::Rescheduled {
                (i.attempt.saturating_add(1), Some(i.node.clone()))
            } else {
                (i.attempt, None)
            };
            let like = (mode == rollout::Mode::Hold).then_some(i);
            want(out, attempt, avoid, Some(i.id.clone()), why, like);
            deficit -= 1;
        }
        out.removals.push(removal);
    }
    for (id, a) in opaque_lost {
        if deficit > 0 {
            want(out, 1, None, Some(id.clone()), Reason::Lost, None);
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
        want(out, 1, None, None, Reason::Scale, None);
    }
    seen.placing = placing;

    // Copies to stop: off draining nodes always; of older revisions unless holding (and a
    // canary keeps `old_floor` of them). Unavailable ones first, since they cost no
    // availability; available ones only while `replicas - maxUnavailable` stay available.
    let mut candidates: Vec<(&Instance, Reason)> =
        moving.iter().map(|i| (*i, Reason::Drained)).collect();
    let old_removable = if mode == rollout::Mode::Hold {
        0
    } else {
        old_live.len().saturating_sub(old_floor)
    };
    candidates.extend(old_live.iter().map(|i| (*i, Reason::Outdated)));
    candidates.sort_by_key(|(i, _)| (is_available(i), i.slot));
    let total = new_live.len() + old_live.len() + moving.len();
    // A replacement that fits nowhere while the copies it would replace hold their room (one
    // small node, say) would wait forever: unless the task forbids unavailability outright
    // (`maxUnavailable` written), one copy may then stop first.
    let stuck = departing == 0
        && task.spec.update.max_unavailable.is_none()
        && unschedulable(snapshot, task_ref);
    let unavailable = if stuck {
        budget.unavailable.max(1)
    } else {
        budget.unavailable
    };
    let min_available = desired.saturating_sub(usize::try_from(unavailable).unwrap_or(0));
    let new_available = new_live.iter().filter(|i| is_available(i)).count();
    let all_available = new_available
        + old_live.iter().filter(|i| is_available(i)).count()
        + moving.iter().filter(|i| is_available(i)).count();
    let mut scale_down = total
        .saturating_sub(min_available)
        .saturating_sub(new_live.len() - new_available);
    let mut spare_available = all_available.saturating_sub(min_available);
    let mut old_left = old_removable;
    for (i, reason) in candidates {
        if scale_down == 0 {
            break;
        }
        if reason == Reason::Outdated && old_left == 0 {
            continue;
        }
        let up = is_available(i);
        if up {
            if spare_available == 0 {
                continue;
            }
            spare_available -= 1;
        }
        if reason == Reason::Outdated {
            old_left -= 1;
            target.events.push((
                "RolloutStep",
                format!(
                    "stopping {} on {} (revision {}) for revision {}",
                    i.id, i.node, i.revision, target.revision
                ),
            ));
        }
        scale_down -= 1;
        depart(snapshot, out, i, reason);
    }
    rollout::finish(snapshot, now, task_ref, task, target, seen, out.plan);
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

enum Escalation {
    Reschedule,
    Wait,
    DeadLettered,
}

/// Decides what happens to an instance its agent reports `Failed`.
#[allow(clippy::too_many_arguments)]
fn escalate(
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    config: &ControllerConfig,
    task_ref: &TaskRef,
    i: &Instance,
    generation: u64,
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
            generation,
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
