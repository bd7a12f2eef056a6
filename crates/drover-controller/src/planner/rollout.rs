//! Rollouts of services: which revision a service's copies should run (the target), how the
//! service planner may replace copies right now (rolling, canaries first, or holding), and how
//! the rollout record in the task state moves on — progress, the canary hold, pause, failure
//! on a health gate or a deadline, automatic revert, completion — with an event for each step.
//!
//! A revision is a copy template ([`TaskSpec::template`]): labels, replicas, priority and the
//! update settings are not part of it, so changing only those starts no rollout.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use drover_api::rollout::REVISION_HISTORY;
use drover_api::{
    EventKind, Health, Instance, InstanceStatus, Phase, RequestAction, RevisionRecord, Rollout,
    RolloutFailure, RolloutPhase, Task, TaskSpec,
};

use super::{NewRevision, Plan, Step, TaskStateWrite, Write};
use crate::snapshot::Snapshot;
use drover_api::records::{TaskRef, TaskStateRecord};

/// Rollout requests carried out per task and plan (the rest wait for the next plan).
const REQUESTS_PER_PLAN: usize = 64;

/// How copies may be replaced in this plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Replace older copies with the target's, within the budget.
    Rolling,
    /// Place at most this many copies of the target beside the older ones, and keep those.
    Canary(u32),
    /// Paused, awaiting promotion or failed: keep what runs; refill lost copies as they were.
    Hold,
}

/// The revision a service's copies should run, and how to get there.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// Its number.
    pub revision: u64,
    /// Its template hash.
    pub hash: String,
    /// The spec new copies of it are placed from.
    pub spec: TaskSpec,
    /// A record to create for it (its first sighting).
    pub new_record: Option<RevisionRecord>,
    /// The rollout record as requests left it, before this plan's observations.
    pub rollout: Rollout,
    /// Whether the record changed before observations (new rollout, a request carried out).
    pub changed: bool,
    /// Requests carried out (ids and mod revisions), deleted with the state write.
    pub requests: Vec<(String, i64)>,
    /// Events so far.
    pub events: Vec<(&'static str, String)>,
    /// How copies may be replaced.
    pub mode: Mode,
}

impl Target {
    /// Whether `i` runs the target revision. Copies placed before revisions existed carry
    /// none: their spec's template decides (hashed once, when the snapshot decoded them).
    pub fn is_current(&self, snapshot: &Snapshot, i: &Instance) -> bool {
        if i.revision != 0 {
            return i.revision == self.revision;
        }
        match snapshot.legacy_templates.get(&i.id) {
            Some(hash) => *hash == self.hash,
            None => i.spec.template_hash() == self.hash,
        }
    }

    /// The spec and revision copies of an older revision are placed from while the rollout
    /// holds or keeps older copies: any copy's of another revision, else the last stable
    /// revision's record.
    pub fn older(
        &self,
        snapshot: &Snapshot,
        task: &TaskRef,
        mine: &[&Instance],
    ) -> Option<(TaskSpec, u64)> {
        mine.iter()
            .find(|i| i.run.is_none() && !self.is_current(snapshot, i))
            .map(|i| (i.spec.clone(), i.revision))
            .or_else(|| {
                let stable = self
                    .rollout
                    .stable_revision
                    .filter(|s| *s != self.revision)?;
                records(snapshot, task)
                    .find(|r| r.revision == stable)
                    .map(|r| (r.spec.clone(), stable))
            })
    }
}

/// The task's revision records, decoded and not, as (number, hash, spec).
fn records<'a>(
    snapshot: &'a Snapshot,
    task: &TaskRef,
) -> impl Iterator<Item = &'a RevisionRecord> + 'a {
    snapshot
        .revisions
        .get(task)
        .into_iter()
        .flat_map(|m| m.values().map(|v| &v.value))
}

/// The lowest revision number not taken by a record (readable or not), the rollout record or
/// a copy.
fn next_number(
    snapshot: &Snapshot,
    task: &TaskRef,
    mine: &[&Instance],
    prev: Option<&Rollout>,
) -> u64 {
    let mut max = 0u64;
    for r in records(snapshot, task) {
        max = max.max(r.revision);
    }
    if let Some(m) = snapshot.opaque_revisions.get(task) {
        max = max.max(m.keys().next_back().copied().unwrap_or(0));
    }
    if let Some(p) = prev {
        max = max.max(p.revision).max(p.stable_revision.unwrap_or(0));
    }
    for i in mine {
        max = max.max(i.revision);
    }
    max.saturating_add(1)
}

/// The spec copies of `revision` run: its record's, else a copy's that runs it.
fn spec_of(
    snapshot: &Snapshot,
    task: &TaskRef,
    mine: &[&Instance],
    revision: u64,
) -> Option<TaskSpec> {
    records(snapshot, task)
        .find(|r| r.revision == revision)
        .map(|r| r.spec.clone())
        .or_else(|| {
            mine.iter()
                .find(|i| i.revision == revision)
                .map(|i| i.spec.clone())
        })
}

/// Decides the target revision and this plan's mode from the task, its rollout record and
/// the task's pending rollout requests.
pub(super) fn target(
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    task_ref: &TaskRef,
    task: &Task,
    mine: &[&Instance],
) -> Target {
    let prev = snapshot
        .taskstates
        .get(task_ref)
        .and_then(|s| s.value.state.rollout.as_ref());
    let spec_hash = task.spec.template_hash();
    let mut events = Vec::new();

    // An automatic revert stands while the spec is the one that failed.
    let reverted = prev.filter(|p| p.reverted_hash.as_deref() == Some(spec_hash.as_str()));
    let (revision, hash, spec, new_record) = match reverted
        .and_then(|p| spec_of(snapshot, task_ref, mine, p.revision).map(|s| (p, s)))
    {
        Some((p, spec)) => (p.revision, p.template_hash.clone(), spec, None),
        None => match records(snapshot, task_ref).find(|r| r.template_hash == spec_hash) {
            Some(r) => (r.revision, spec_hash, task.spec.clone(), None),
            None => {
                // No readable record of this template: its number is the rollout record's or
                // a copy's when either knows the template (a record lost, deleted by another
                // client or unreadable restarts nothing), else a new one.
                let known = prev
                    .filter(|p| p.template_hash == spec_hash)
                    .map(|p| p.revision)
                    .or_else(|| {
                        mine.iter()
                            .find(|i| i.revision != 0 && i.spec.template_hash() == spec_hash)
                            .map(|i| i.revision)
                    });
                let n = known.unwrap_or_else(|| next_number(snapshot, task_ref, mine, prev));
                // Rewritten only where no key is (an unreadable one is left alone).
                let taken = snapshot
                    .opaque_revisions
                    .get(task_ref)
                    .is_some_and(|m| m.contains_key(&n));
                let record = (!taken).then(|| RevisionRecord {
                    revision: n,
                    template_hash: spec_hash.clone(),
                    spec: task.spec.clone(),
                    generation: task.metadata.generation,
                    created_at: now,
                });
                (n, spec_hash, task.spec.clone(), record)
            }
        },
    };

    let mut changed = false;
    let mut rollout = match prev {
        Some(p) if p.revision == revision && p.template_hash == hash => {
            let mut r = p.clone();
            if r.reverted_hash.is_some() && reverted.is_none() {
                // The spec moved on from the template that failed (to this very revision).
                r.reverted_hash = None;
                changed = true;
            }
            r
        }
        _ => {
            changed = true;
            let stable = prev.and_then(|p| {
                if p.phase == RolloutPhase::Complete {
                    Some(p.revision)
                } else {
                    p.stable_revision
                }
            });
            let from = prev.map(|p| p.revision);
            if let Some(f) = from {
                events.push((
                    "RolloutStarted",
                    format!("rolling out revision {revision} (from revision {f})"),
                ));
            }
            Rollout {
                revision,
                template_hash: hash.clone(),
                from_revision: from,
                phase: RolloutPhase::Progressing,
                paused: prev.is_some_and(|p| p.paused),
                promoted: false,
                steps: prev.map_or(0, |p| p.steps),
                updated: 0,
                available: 0,
                started_at: now,
                progressed_at: now,
                stable_revision: stable,
                reverted_hash: None,
                // The last failure stays on record (`rollout history` shows it).
                failure: prev.and_then(|p| p.failure.clone()),
            }
        }
    };

    // Pause, resume and promote, in request order; at most [`REQUESTS_PER_PLAN`] in one plan,
    // so the step deleting them stays inside etcd's limit on operations per transaction.
    let mut requests = Vec::new();
    for (id, request) in snapshot.requests.get(task_ref).into_iter().flatten() {
        if requests.len() >= REQUESTS_PER_PLAN {
            break;
        }
        let by = &request.value.by;
        let done = match &request.value.action {
            RequestAction::Pause => {
                if !rollout.paused {
                    rollout.paused = true;
                    events.push(("RolloutPaused", format!("paused by {by}")));
                }
                true
            }
            RequestAction::Resume => {
                if rollout.paused {
                    rollout.paused = false;
                    rollout.progressed_at = now;
                    events.push(("RolloutResumed", format!("resumed by {by}")));
                }
                true
            }
            RequestAction::Promote { revision: wanted } => {
                if *wanted == rollout.revision && !rollout.promoted {
                    rollout.promoted = true;
                    rollout.progressed_at = now;
                    events.push((
                        "RolloutPromoted",
                        format!("canaries of revision {wanted} promoted by {by}"),
                    ));
                } else {
                    events.push((
                        "PromoteIgnored",
                        format!(
                            "promote of revision {wanted} by {by} ignored: revision {} is rolling out{}",
                            rollout.revision,
                            if rollout.promoted { " and was promoted already" } else { "" }
                        ),
                    ));
                }
                true
            }
            RequestAction::Enable | RequestAction::Retry { .. } => false,
        };
        if done {
            requests.push((id.clone(), request.mod_revision));
            changed = true;
        }
    }

    let desired = task.spec.replicas;
    let canaries = canary_count(task, &rollout, desired);
    let mode = if rollout.phase == RolloutPhase::Failed
        || rollout.phase == RolloutPhase::AwaitingPromotion && !rollout.promoted
        || rollout.paused && rollout.phase != RolloutPhase::Complete
    {
        Mode::Hold
    } else if canaries > 0 {
        Mode::Canary(canaries)
    } else {
        Mode::Rolling
    };
    Target {
        revision,
        hash,
        spec,
        new_record,
        rollout,
        changed,
        requests,
        events,
        mode,
    }
}

/// Canaries this rollout places before waiting for a promote: none for a first deployment,
/// a revert or once promoted; never more than the surge budget lets run beside the old copies.
fn canary_count(task: &Task, rollout: &Rollout, desired: u32) -> u32 {
    let update = &task.spec.update;
    if update.canary == 0
        || rollout.promoted
        || rollout.from_revision.is_none()
        || rollout.reverted_hash.is_some()
        || rollout.phase == RolloutPhase::Complete
    {
        return 0;
    }
    let surge = update.budget(desired).surge;
    update.canary.min(desired).min(surge.max(1))
}

/// Since when `status` shows its copy healthy (Running, and passing its health check if it has
/// one); `None` when it is not.
fn healthy_since(spec: &TaskSpec, status: &InstanceStatus) -> Option<DateTime<Utc>> {
    if status.phase != Phase::Running {
        return None;
    }
    let started = status.started_at.unwrap_or(status.updated_at);
    if spec.health_check.is_none() {
        return Some(started);
    }
    // An older agent reports no `healthySince`: then the start is the best bound it gives.
    (status.health == Health::Healthy).then(|| status.healthy_since.unwrap_or(started))
}

/// When `i` counts as available (healthy for `minHealthySeconds`), given its status; `None`
/// while it is not healthy at all.
pub(super) fn available_at(
    snapshot: &Snapshot,
    i: &Instance,
    min_healthy_seconds: u32,
) -> Option<DateTime<Utc>> {
    if i.stop.is_some() {
        return None;
    }
    let status = snapshot.statuses.get(&i.id).map(|s| &s.value)?;
    let since = healthy_since(&i.spec, status)?;
    Some(since + TimeDelta::seconds(i64::from(min_healthy_seconds)))
}

/// Whether `i` is available now.
pub(super) fn available(snapshot: &Snapshot, now: DateTime<Utc>, i: &Instance, min: u32) -> bool {
    available_at(snapshot, i, min).is_some_and(|at| at <= now)
}

/// What the service planner saw of the target's copies.
#[derive(Debug, Default)]
pub(super) struct Observed {
    /// Copies wanted (`replicas` less dead letters and unreadable assignments).
    pub desired: u32,
    /// Copies of the target on live nodes, not stopping.
    pub updated: u32,
    /// Of those, available.
    pub available: u32,
    /// Copies of other revisions still there (stopping ones included).
    pub others: u32,
    /// A copy of the target that failed its health gate: (reason, message).
    pub failure: Option<(&'static str, String)>,
    /// The earliest time a copy becomes available or misses its deadline.
    pub next_check: Option<DateTime<Utc>>,
    /// New copies of the target this plan wants placed.
    pub placing: u32,
    /// Whether the target's copies are judged (health gate, deadlines): not in a first
    /// deployment, where nothing older would take their place.
    pub judge: bool,
}

impl Observed {
    /// Looks at one copy of the target: is it available, has it failed, when to look again.
    pub fn target_copy(
        &mut self,
        snapshot: &Snapshot,
        now: DateTime<Utc>,
        task: &Task,
        i: &Instance,
    ) {
        let update = &task.spec.update;
        self.updated += 1;
        let status = snapshot.statuses.get(&i.id).map(|s| &s.value);
        match available_at(snapshot, i, update.min_healthy_seconds) {
            Some(at) if at <= now => {
                self.available += 1;
                return;
            }
            Some(at) => self.check_at(at),
            None => {}
        }
        if !self.judge || self.failure.is_some() {
            return;
        }
        let what = |s: &InstanceStatus| {
            let mut m = String::new();
            if let Some(r) = &s.reason {
                m.push_str(r);
            }
            if let Some(text) = &s.message {
                if !m.is_empty() {
                    m.push_str(": ");
                }
                m.push_str(text);
            }
            m
        };
        if let Some(s) = status {
            if s.phase == Phase::Failed {
                self.failure = Some((
                    "InstanceFailed",
                    format!("instance {} on {} failed: {}", i.id, i.node, what(s)),
                ));
                return;
            }
            if s.health == Health::Unhealthy {
                self.failure = Some((
                    "Unhealthy",
                    format!(
                        "instance {} on {} failed its health check: {}",
                        i.id,
                        i.node,
                        s.message.as_deref().unwrap_or("unhealthy")
                    ),
                ));
                return;
            }
        }
        let deadline =
            i.assigned_at + TimeDelta::seconds(i64::from(update.healthy_deadline_seconds));
        if now >= deadline {
            self.failure = Some((
                "HealthyDeadlineExceeded",
                format!(
                    "instance {} on {} was not healthy for {}s within {}s of being placed ({})",
                    i.id,
                    i.node,
                    update.min_healthy_seconds,
                    update.healthy_deadline_seconds,
                    status.map_or_else(|| "no status".to_string(), InstanceStatus::display_status)
                ),
            ));
        } else {
            self.check_at(deadline);
        }
    }

    fn check_at(&mut self, at: DateTime<Utc>) {
        self.next_check = Some(self.next_check.map_or(at, |t| t.min(at)));
    }
}

/// Moves the rollout record on from what the service planner observed, and writes it (with
/// the new revision record and the carried-out requests, in one step), the events and the
/// pruning of old revisions.
pub(super) fn finish(
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    task_ref: &TaskRef,
    task: &Task,
    target: Target,
    seen: Observed,
    plan: &mut Plan,
) {
    let Target {
        new_record,
        mut rollout,
        mut changed,
        requests,
        mut events,
        ..
    } = target;
    let update = &task.spec.update;
    let desired = seen.desired;

    // A first deployment (nothing ran before) replaces nothing: it is not paced, has no
    // progress deadline and no progress events (the placements have theirs), so placing
    // thousands of services writes no more than before.
    let first = rollout.from_revision.is_none();
    let complete = seen.updated >= desired && seen.available >= desired && seen.others == 0;
    if rollout.phase == RolloutPhase::Failed && complete && rollout.reverted_hash.is_none() {
        // It got there after all (copies became healthy late): the failure stays on record.
        rollout.phase = RolloutPhase::Progressing;
        changed = true;
    }
    let open = !matches!(rollout.phase, RolloutPhase::Complete | RolloutPhase::Failed);
    // Counts are the rollout's progress: once it has ended they stay as it left them, so a
    // steady service's copies coming and going write nothing here.
    if open && !first && (seen.updated != rollout.updated || seen.available != rollout.available) {
        if seen.available > rollout.available {
            rollout.progressed_at = now;
        }
        rollout.updated = seen.updated;
        rollout.available = seen.available;
        changed = true;
        {
            events.push((
                "RolloutProgress",
                format!(
                    "revision {}: {} of {desired} copies updated, {} available, {} of other revisions",
                    rollout.revision, seen.updated, seen.available, seen.others
                ),
            ));
        }
    }

    if open {
        let progress_deadline =
            rollout.progressed_at + TimeDelta::seconds(i64::from(update.progress_deadline_seconds));
        let failure = seen.failure.or_else(|| {
            // A plan that places copies of the target is progress in the making: the
            // deadline is judged by the plans that see how they fared.
            // (Unless the last plan could not place them either: then nothing is in the
            // making.)
            let unschedulable = snapshot
                .taskstates
                .get(task_ref)
                .and_then(|s| s.value.state.pending_reason.as_deref())
                .is_some_and(|r| r.starts_with(super::placement::UNSCHEDULABLE));
            let counting = rollout.phase == RolloutPhase::Progressing
                && !rollout.paused
                && !first
                && (seen.placing == 0 || unschedulable);
            (counting && !complete && now >= progress_deadline).then(|| {
                (
                    "ProgressDeadlineExceeded",
                    format!(
                        "no copy of revision {} became available in {}s ({} of {desired} updated, {} available)",
                        rollout.revision,
                        update.progress_deadline_seconds,
                        seen.updated,
                        seen.available
                    ),
                )
            })
        });
        if let Some((reason, message)) = failure {
            let failed = RolloutFailure {
                revision: rollout.revision,
                reason: reason.to_string(),
                message: message.clone(),
                at: now,
            };
            events.push((
                "RolloutFailed",
                format!("revision {}: {reason}: {message}", rollout.revision),
            ));
            changed = true;
            match rollout
                .stable_revision
                .filter(|s| update.auto_revert && *s != rollout.revision)
            {
                Some(stable) => {
                    let failed_hash = rollout.template_hash.clone();
                    let stable_hash = records(snapshot, task_ref)
                        .find(|r| r.revision == stable)
                        .map(|r| r.template_hash.clone());
                    match stable_hash {
                        Some(stable_hash) => {
                            events.push((
                                "RolloutReverted",
                                format!(
                                    "restoring revision {stable}, the last that rolled out healthy"
                                ),
                            ));
                            rollout = Rollout {
                                revision: stable,
                                template_hash: stable_hash,
                                from_revision: Some(rollout.revision),
                                phase: RolloutPhase::Progressing,
                                paused: false,
                                promoted: false,
                                steps: rollout.steps,
                                updated: 0,
                                available: 0,
                                started_at: now,
                                progressed_at: now,
                                stable_revision: Some(stable),
                                reverted_hash: Some(failed_hash),
                                failure: Some(failed),
                            };
                        }
                        None => {
                            events.push((
                                "RevertImpossible",
                                format!("revision {stable} has no readable record: holding"),
                            ));
                            rollout.phase = RolloutPhase::Failed;
                            rollout.failure = Some(failed);
                        }
                    }
                }
                None => {
                    rollout.phase = RolloutPhase::Failed;
                    rollout.failure = Some(failed);
                }
            }
        } else {
            let phase = if complete {
                RolloutPhase::Complete
            } else if rollout.paused {
                RolloutPhase::Paused
            } else if rollout.phase == RolloutPhase::AwaitingPromotion && !rollout.promoted
                || matches!(canary_mode(task, &rollout, desired), Some(n) if seen.available >= n)
            {
                RolloutPhase::AwaitingPromotion
            } else {
                RolloutPhase::Progressing
            };
            if phase != rollout.phase {
                changed = true;
                match phase {
                    RolloutPhase::Complete if first => {
                        rollout.stable_revision = Some(rollout.revision);
                        rollout.updated = seen.updated;
                        rollout.available = seen.available;
                    }
                    RolloutPhase::Complete => {
                        rollout.stable_revision = Some(rollout.revision);
                        events.push((
                            "RolloutComplete",
                            format!(
                                "revision {}: all {desired} copies updated and available",
                                rollout.revision
                            ),
                        ));
                    }
                    RolloutPhase::AwaitingPromotion => events.push((
                        "CanariesReady",
                        format!(
                            "revision {}: {} canary copies available; `drover rollout promote {}` rolls out the rest",
                            rollout.revision, seen.available, task_ref.name
                        ),
                    )),
                    RolloutPhase::Progressing | RolloutPhase::Paused | RolloutPhase::Failed => {}
                }
                rollout.phase = phase;
            }
            if rollout.phase == RolloutPhase::Progressing && !complete && !first {
                let mut at = progress_deadline;
                if let Some(t) = seen.next_check {
                    at = at.min(t);
                }
                plan.requeue_no_later_than(at);
            }
        }
    }
    if let Some(t) = seen.next_check {
        plan.requeue_no_later_than(t);
    }

    for (reason, message) in events {
        rollout.steps = rollout.steps.saturating_add(1);
        plan.event(
            now,
            &task_ref.namespace,
            EventKind::Task,
            &task_ref.name,
            reason,
            format!("step {}: {message}", rollout.steps),
        );
        changed = true;
    }

    prune(snapshot, task_ref, &rollout, new_record.as_ref(), plan);
    if !changed && new_record.is_none() && requests.is_empty() {
        return;
    }
    let old = snapshot.taskstates.get(task_ref);
    let mut next: TaskStateRecord = plan
        .taskstates
        .get(task_ref)
        .map(|w| w.state.clone())
        .or_else(|| old.map(|s| s.value.clone()))
        .unwrap_or_default();
    next.state.rollout = Some(rollout);
    plan.taskstates.insert(
        task_ref.clone(),
        TaskStateWrite {
            state: next,
            mod_revision: old.map_or(0, |s| s.mod_revision),
        },
    );
    let mut writes: Vec<Write> = requests
        .into_iter()
        .map(|(id, mod_revision)| Write::DeleteRequest {
            task: task_ref.clone(),
            id,
            mod_revision,
        })
        .collect();
    if let Some(record) = new_record {
        writes.push(Write::PutRevision(Box::new(NewRevision {
            task: task_ref.clone(),
            record,
        })));
    }
    if !writes.is_empty() {
        plan.steps.push(Step {
            task: Some(task_ref.clone()),
            writes,
        });
    }
}

/// The canary count while the rollout still waits on canaries.
fn canary_mode(task: &Task, rollout: &Rollout, desired: u32) -> Option<u32> {
    let n = canary_count(task, rollout, desired);
    (n > 0).then_some(n)
}

/// Deletes revision records beyond the newest [`REVISION_HISTORY`], never the target's or the
/// last stable one.
fn prune(
    snapshot: &Snapshot,
    task_ref: &TaskRef,
    rollout: &Rollout,
    new_record: Option<&RevisionRecord>,
    plan: &mut Plan,
) {
    let mut numbers: BTreeMap<u64, i64> = snapshot
        .revisions
        .get(task_ref)
        .map(|m| m.iter().map(|(n, v)| (*n, v.mod_revision)).collect())
        .unwrap_or_default();
    if let Some(m) = snapshot.opaque_revisions.get(task_ref) {
        numbers.extend(m.iter().map(|(n, r)| (*n, *r)));
    }
    let kept_new = usize::from(new_record.is_some());
    let total = numbers.len() + kept_new;
    if total <= REVISION_HISTORY {
        return;
    }
    let mut excess = total - REVISION_HISTORY;
    for (n, mod_revision) in numbers {
        if excess == 0 {
            break;
        }
        if n == rollout.revision || Some(n) == rollout.stable_revision {
            continue;
        }
        plan.steps.push(Step {
            task: None,
            writes: vec![Write::DeleteRevision {
                task: task_ref.clone(),
                revision: n,
                mod_revision,
            }],
        });
        excess -= 1;
    }
}

/// Deletes the revisions of deleted tasks.
pub(super) fn orphan_revisions(snapshot: &Snapshot, plan: &mut Plan) {
    let readable = snapshot
        .revisions
        .iter()
        .flat_map(|(t, m)| m.iter().map(move |(n, v)| (t, *n, v.mod_revision)));
    let opaque = snapshot
        .opaque_revisions
        .iter()
        .flat_map(|(t, m)| m.iter().map(move |(n, r)| (t, *n, *r)));
    for (task, revision, mod_revision) in readable.chain(opaque) {
        if !snapshot.task_exists(task) {
            plan.steps.push(Step {
                task: None,
                writes: vec![Write::DeleteRevision {
                    task: task.clone(),
                    revision,
                    mod_revision,
                }],
            });
        }
    }
}
