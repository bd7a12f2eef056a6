//! The fenced write path: turns a [`Plan`] into etcd transactions that carry the leader's
//! fence, each within etcd's operation limit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

use drover_api::Keys;
use drover_store::{Cmp, Fence, Op, Store, Txn};

use crate::planner::{Plan, Step, Write};
use crate::snapshot::StatusKey;
use drover_api::records::TaskRef;

/// Why a plan was not (fully) committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The fence no longer holds: this replica is not the leader and must stop writing.
    #[error("not the leader any more: {0}")]
    Fenced(#[source] drover_store::Error),
    /// A compare failed: a key under the prefix changed after the snapshot the plan was made
    /// from. Re-plan once the snapshot is newer than that one (and has reached `landed`).
    ///
    /// `revision` is etcd's global revision, which writes under other prefixes move too: a
    /// snapshot of this prefix may never reach it, so do not wait for it.
    #[error("state changed under the plan (store at revision {revision}); re-planning")]
    Conflict {
        /// The store revision the failed transaction saw (global, for logs only).
        revision: i64,
        /// The revision of the last transaction of this plan that landed (0 = none).
        landed: i64,
    },
    /// etcd failed; earlier transactions of the plan may have landed. When the failure is
    /// [`drover_store::Error::OutcomeUnknown`] the failed transaction itself may have landed.
    #[error("committing the plan failed: {0}")]
    Store(#[source] drover_store::Error),
}

impl CommitError {
    /// Whether planning again (after the snapshot catches up) can succeed.
    #[must_use]
    pub fn retryable(&self) -> bool {
        match self {
            CommitError::Fenced(_) => false,
            CommitError::Conflict { .. } => true,
            CommitError::Store(e) => e.retryable(),
        }
    }
}

/// What a commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// Transactions sent.
    pub txns: usize,
    /// The revision of the last write (0 when nothing was written).
    pub revision: i64,
    /// Steps etcd refused even when sent alone, in plan order: the rest of the plan landed.
    pub rejected: Vec<RejectedStep>,
}

/// A step of the plan that did not land, sent on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedStep {
    /// Its index in the plan's steps (standalone task-state steps follow them).
    pub index: usize,
    /// The task it belongs to, if any.
    pub task: Option<TaskRef>,
    /// Why: a failed compare (state changed, or a key holds a value the snapshot does not
    /// show) or etcd's refusal (e.g. a request over its size limit).
    pub reason: String,
}

/// One step's compares and operations, kept apart so a batch can be re-sent step by step.
struct Part {
    index: usize,
    task: Option<TaskRef>,
    cmps: Vec<Cmp>,
    ops: Vec<Op>,
}

/// The steps of one transaction under construction.
#[derive(Default)]
struct Batch {
    parts: Vec<Part>,
    /// Tasks whose state this batch writes.
    tasks: BTreeSet<TaskRef>,
}

impl Batch {
    fn cmps(&self) -> usize {
        self.parts.iter().map(|p| p.cmps.len()).sum()
    }
    fn ops(&self) -> usize {
        self.parts.iter().map(|p| p.ops.len()).sum()
    }
    fn bytes(&self) -> usize {
        self.parts.iter().map(Part::bytes).sum()
    }
}

impl Part {
    fn bytes(&self) -> usize {
        self.cmps.iter().map(Cmp::encoded_len).sum::<usize>()
            + self.ops.iter().map(Op::encoded_len).sum::<usize>()
    }
}

/// Room left in every request for the fence compare, gRPC framing and headers.
const REQUEST_HEADROOM: usize = 16 * 1024;

/// How one transaction ended.
enum Sent {
    Landed,
    /// A compare failed, or etcd refused the request (the reason).
    Refused(String),
}

fn encode_err(e: drover_store::Error) -> CommitError {
    CommitError::Store(e)
}

fn write_parts(keys: &Keys, w: &Write) -> Result<(Vec<Cmp>, Vec<Op>), CommitError> {
    Ok(match w {
        Write::Assign(i) => {
            let key = keys.assignment(&i.node, &i.id);
            (
                vec![Cmp::Absent(key.clone())],
                vec![Op::put(key, i, None).map_err(encode_err)?],
            )
        }
        Write::RequestStop {
            instance,
            mod_revision,
        } => {
            let key = keys.assignment(&instance.node, &instance.id);
            (
                vec![Cmp::ModRevision(key.clone(), *mod_revision)],
                vec![Op::put(key, instance, None).map_err(encode_err)?],
            )
        }
        Write::Unassign {
            id,
            node,
            mod_revision,
            ..
        } => {
            let key = keys.assignment(node, id);
            (
                vec![Cmp::ModRevision(key.clone(), *mod_revision)],
                vec![Op::delete(key), Op::delete(keys.status(node, id))],
            )
        }
        Write::NodeGone { node } => (vec![Cmp::Absent(keys.node(node))], Vec::new()),
        Write::StatusUnchanged {
            id,
            at,
            mod_revision,
        } => (
            vec![Cmp::ModRevision(status_key(keys, at, id), *mod_revision)],
            Vec::new(),
        ),
        Write::DeadLetter(d) => {
            let key = keys.deadletter(&d.letter.namespace, &d.letter.instance);
            (
                vec![Cmp::Absent(key.clone())],
                vec![Op::put(key, d, None).map_err(encode_err)?],
            )
        }
        Write::NodeState {
            state,
            mod_revision,
        } => {
            let key = keys.nodestate(&state.name);
            (
                vec![Cmp::ModRevision(key.clone(), *mod_revision)],
                vec![Op::put(key, state, None).map_err(encode_err)?],
            )
        }
        Write::DeleteStatus {
            id,
            at,
            mod_revision,
        } => {
            let key = status_key(keys, at, id);
            (
                vec![Cmp::ModRevision(key.clone(), *mod_revision)],
                vec![Op::delete(key)],
            )
        }
        Write::PutRun {
            record,
            mod_revision,
        } => {
            let key = keys.run(&record.namespace, &record.task, record.run);
            (
                vec![Cmp::ModRevision(key.clone(), *mod_revision)],
                vec![Op::put(key, record, None).map_err(encode_err)?],
            )
        }
        Write::DeleteRun {
            task,
            run,
            mod_revision,
        } => {
            let key = keys.run(&task.namespace, &task.name, *run);
            (
                vec![Cmp::ModRevision(key.clone(), *mod_revision)],
                vec![Op::delete(key)],
            )
        }
        Write::PutRevision(record) => {
            let key = keys.revision(
                &record.task.namespace,
                &record.task.name,
                record.record.revision,
            );
            (
                vec![Cmp::Absent(key.clone())],
                vec![Op::put(key, &record.record, None).map_err(encode_err)?],
            )
        }
        Write::DeleteRevision {
            task,
            revision,
            mod_revision,
        } => {
            let key = keys.revision(&task.namespace, &task.name, *revision);
            (
                vec![Cmp::ModRevision(key.clone(), *mod_revision)],
                vec![Op::delete(key)],
            )
        }
        Write::DeleteDeadLetter {
            namespace,
            instance,
            mod_revision,
        } => {
            let key = keys.deadletter(namespace, instance);
            (
                vec![Cmp::ModRevision(key.clone(), *mod_revision)],
                vec![Op::delete(key)],
            )
        }
        Write::DeleteRequest {
            task,
            id,
            mod_revision,
        } => {
            let key = keys.request(&task.namespace, &task.name, id);
            (
                vec![Cmp::ModRevision(key.clone(), *mod_revision)],
                vec![Op::delete(key)],
            )
        }
        Write::DeleteTrigger {
            task,
            id,
            mod_revision,
        } => {
            let key = keys.trigger(&task.namespace, &task.name, id);
            (
                vec![Cmp::ModRevision(key.clone(), *mod_revision)],
                vec![Op::delete(key)],
            )
        }
        Write::DeleteTaskState { task, mod_revision } => {
            let key = keys.taskstate(&task.namespace, &task.name);
            (
                vec![Cmp::ModRevision(key.clone(), *mod_revision)],
                vec![Op::delete(key)],
            )
        }
    })
}

/// The key of a status, under its node or (from before statuses moved there) the legacy one.
fn status_key(keys: &Keys, at: &StatusKey, id: &drover_api::InstanceId) -> String {
    match at {
        StatusKey::Node(node) => keys.status(node, id),
        StatusKey::Legacy => keys.legacy_status(id),
    }
}

/// Commits `plan` as fenced transactions of at most `max_ops` compares and operations each,
/// and at most `max_bytes` (etcd's `--max-request-bytes`) each, less headroom, one at a time:
/// [`commit_pipelined`] with one lane.
pub async fn commit(
    store: &Store,
    keys: &Keys,
    fence: &Fence,
    plan: &Plan,
    max_ops: usize,
    max_bytes: usize,
) -> Result<Committed, CommitError> {
    commit_pipelined(store, keys, fence, plan, Limits::new(max_ops, max_bytes, 1)).await
}

/// The limits of one commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Compares, and operations, per transaction (etcd's `--max-txn-ops`).
    pub max_ops: usize,
    /// Bytes per request (etcd's `--max-request-bytes`).
    pub max_bytes: usize,
    /// Transactions in flight at once (at least 1).
    pub lanes: usize,
}

impl Limits {
    /// The limits, with `lanes` raised to at least 1.
    #[must_use]
    pub fn new(max_ops: usize, max_bytes: usize, lanes: usize) -> Self {
        Limits {
            max_ops,
            max_bytes,
            lanes: lanes.max(1),
        }
    }
}

/// Commits `plan` as fenced transactions within `limits`, up to `limits.lanes` of them in
/// flight at once.
///
/// # Guarantees
///
/// - Every transaction carries `fence`: once this replica is deposed nothing more lands, and
///   the call returns [`CommitError::Fenced`].
/// - A [`Step`] is never split: a dead node's assignment and its replacement, or a dead letter
///   and the removal it records, land together or not at all.
/// - A transaction that creates instances of a task compares that task's state's mod revision
///   (chained from one transaction to the next), so a plan made from a stale snapshot cannot
///   create a second set of instances; the first such transaction of a lane also writes the
///   state, so no instance lands without it, and later ones only compare it.
/// - Each run of plain placements in a lane is ordered by node, so each transaction reaches
///   few nodes' watches (see [`group_placements_by_node`]).
/// - Steps are dealt to lanes, every step of one task to the same lane (so that chain holds);
///   each lane sends its transactions in plan order, one at a time, and the lanes run at once.
///   Steps of different lanes are independent: each carries every compare it relies on.
/// - A transaction that etcd refuses (a failed compare, or a request it will not take, such as
///   one over its size limit) is sent again step by step: a step that fails alone is reported
///   in [`Committed::rejected`] and skipped, and the rest of the plan still lands. So one
///   poisoned key or one oversized step stalls only itself, never the cluster.
/// - At the first transport error or fence failure no lane sends anything more; the
///   transactions already in flight finish.
///
/// # Caveats
///
/// The plan as a whole is not atomic: after an error, earlier transactions have landed. The
/// caller re-plans from a snapshot at least as new as the landed revision, which is safe
/// because the planner is level-triggered; rejected steps are planned again then. A refused
/// step is not an error of the commit: the caller decides when to plan again (waiting for a
/// newer revision would wait forever when the refusal is permanent and the cluster quiet).
pub async fn commit_pipelined(
    store: &Store,
    keys: &Keys,
    fence: &Fence,
    plan: &Plan,
    limits: Limits,
) -> Result<Committed, CommitError> {
    let standalone: Vec<Step> = {
        let with_steps: BTreeSet<&TaskRef> =
            plan.steps.iter().filter_map(|s| s.task.as_ref()).collect();
        plan.taskstates
            .keys()
            .filter(|t| !with_steps.contains(t))
            .map(|t| Step {
                task: Some(t.clone()),
                writes: Vec::new(),
            })
            .collect()
    };
    let lanes = deal(plan.steps.iter().chain(&standalone), limits.lanes);
    let ctx = Ctx {
        store,
        keys,
        fence,
        plan,
        stop: AtomicBool::new(false),
    };
    let results = futures::future::join_all(
        lanes
            .into_iter()
            .map(|lane| commit_lane(&ctx, lane, limits)),
    )
    .await;
    let mut done = Committed::default();
    let mut failure: Option<CommitError> = None;
    for result in results {
        match result {
            Ok(lane) => {
                done.txns += lane.txns;
                done.revision = done.revision.max(lane.revision);
                done.rejected.extend(lane.rejected);
            }
            // A lost fence says more than a transport error: keep it.
            Err(e) => {
                if failure
                    .as_ref()
                    .is_none_or(|f| !matches!(f, CommitError::Fenced(_)))
                {
                    failure = Some(e);
                }
            }
        }
    }
    if let Some(failure) = failure {
        return Err(failure);
    }
    done.rejected.sort_by_key(|r| r.index);
    Ok(done)
}

/// Deals the steps (with their plan indexes) to at most `lanes` lanes, round robin by first
/// appearance: every step of one task in the lane of its first, steps of no task each in turn.
fn deal<'a>(steps: impl Iterator<Item = &'a Step>, lanes: usize) -> Vec<Vec<(usize, &'a Step)>> {
    let lanes = lanes.max(1);
    let mut out: Vec<Vec<(usize, &Step)>> = vec![Vec::new(); lanes];
    let mut of_task: BTreeMap<&TaskRef, usize> = BTreeMap::new();
    let mut next = 0;
    for (index, step) in steps.enumerate() {
        let lane = match &step.task {
            Some(task) => *of_task.entry(task).or_insert_with(|| {
                next += 1;
                (next - 1) % lanes
            }),
            None => {
                next += 1;
                (next - 1) % lanes
            }
        };
        out[lane].push((index, step));
    }
    out.retain(|lane| !lane.is_empty());
    for lane in &mut out {
        group_placements_by_node(lane);
    }
    out
}

/// The node a step places one instance on, when that is all the step does.
fn placement_node(step: &Step) -> Option<&str> {
    match step.writes.as_slice() {
        [Write::Assign(i)] => Some(i.node.as_str()),
        _ => None,
    }
}

/// Orders each run of consecutive placements in a lane by node (stably), so that one
/// transaction carries several instances of each of a few nodes instead of one instance of
/// each of a hundred: every node whose assignments a transaction touches is one watch response
/// etcd sends (and on etcd 3.4 one copy of its write buffer), and one wake-up of that node's
/// agent. Any other step keeps its place: placements move only among the placements between
/// two other steps, never past one (a task's new revision record, written before its first
/// placements, still lands before them).
fn group_placements_by_node(lane: &mut [(usize, &Step)]) {
    for run in lane
        .chunk_by_mut(|(_, a), (_, b)| placement_node(a).is_some() && placement_node(b).is_some())
    {
        if run.len() > 1 {
            run.sort_by(|(_, a), (_, b)| placement_node(a).cmp(&placement_node(b)));
        }
    }
}

/// Commits one lane's steps in order, batched within `limits`.
async fn commit_lane(
    ctx: &Ctx<'_>,
    steps: Vec<(usize, &Step)>,
    limits: Limits,
) -> Result<Committed, CommitError> {
    let (plan, keys) = (ctx.plan, ctx.keys);
    // One compare of every transaction is the fence.
    let budget = limits.max_ops.saturating_sub(1).max(4);
    let byte_budget = limits.max_bytes.saturating_sub(REQUEST_HEADROOM);
    let mut chain = Chain::default();
    // The encoded size of the state of each task the lane writes.
    let mut sizes: BTreeMap<TaskRef, usize> = BTreeMap::new();
    let mut done = Committed::default();
    let mut batch = Batch::default();
    for (index, step) in steps {
        let mut cmps = Vec::new();
        let mut ops = Vec::new();
        for w in &step.writes {
            let (c, o) = write_parts(keys, w)?;
            cmps.extend(c);
            ops.extend(o);
        }
        // A batch holds, besides its steps, one compare and one put of the state of every task
        // it creates instances for; count those, including the one this step would add, so no
        // transaction grows past the limit (a flush empties the batch's task set too).
        let tracked = step
            .task
            .as_ref()
            .filter(|t| plan.taskstates.contains_key(*t));
        if let Some(t) = tracked {
            if !chain.expected.contains_key(t) {
                let revision = plan.taskstates.get(t).map_or(0, |w| w.mod_revision);
                chain.expected.insert(t.clone(), revision);
                sizes.insert(t.clone(), state_bytes(keys, plan, t));
            }
        }
        let step_bytes = cmps.iter().map(Cmp::encoded_len).sum::<usize>()
            + ops.iter().map(Op::encoded_len).sum::<usize>();
        let fits = |b: &Batch| {
            let new_task = tracked.filter(|t| !b.tasks.contains(*t));
            let tasks = b.tasks.len() + usize::from(new_task.is_some());
            let states: usize = b
                .tasks
                .iter()
                .chain(new_task)
                .map(|t| sizes.get(t).copied().unwrap_or(0))
                .sum();
            b.ops() + ops.len() + tasks <= budget
                && b.cmps() + cmps.len() + tasks <= budget
                && b.bytes() + step_bytes + states <= byte_budget
        };
        if !fits(&batch) {
            if ctx.stop.load(Ordering::SeqCst) {
                return Ok(done);
            }
            flush(ctx, &mut batch, &mut chain, &mut done).await?;
        }
        // After a flush the task's state must be written again, in the new batch.
        if let Some(t) = tracked {
            batch.tasks.insert(t.clone());
        }
        batch.parts.push(Part {
            index,
            task: step.task.clone(),
            cmps,
            ops,
        });
    }
    if !ctx.stop.load(Ordering::SeqCst) {
        flush(ctx, &mut batch, &mut chain, &mut done).await?;
    }
    Ok(done)
}

/// The encoded size of a task's state write, to count it in a batch's byte budget.
fn state_bytes(keys: &Keys, plan: &Plan, t: &TaskRef) -> usize {
    let len = plan
        .taskstates
        .get(t)
        .and_then(|w| serde_json::to_vec(&w.state).ok())
        .map_or(0, |v| v.len());
    len + keys.taskstate(&t.namespace, &t.name).len() * 2 + 64
}

/// Sends the batch as one transaction; if etcd refuses it and it holds several steps, sends
/// each step alone, recording those refused alone in `done.rejected`.
async fn flush(
    ctx: &Ctx<'_>,
    batch: &mut Batch,
    chain: &mut Chain,
    done: &mut Committed,
) -> Result<(), CommitError> {
    let Batch { parts, tasks } = std::mem::take(batch);
    let reason = match ctx.send(&parts, &tasks, chain, done).await? {
        Sent::Landed => return Ok(()),
        Sent::Refused(reason) => reason,
    };
    if parts.len() <= 1 {
        done.rejected
            .extend(parts.into_iter().map(|p| RejectedStep {
                index: p.index,
                task: p.task,
                reason: reason.clone(),
            }));
        return Ok(());
    }
    for part in parts {
        let own: BTreeSet<TaskRef> = part
            .task
            .iter()
            .filter(|t| tasks.contains(*t))
            .cloned()
            .collect();
        let one = std::slice::from_ref(&part);
        if let Sent::Refused(reason) = ctx.send(one, &own, chain, done).await? {
            tracing::warn!(
                step = part.index,
                task = ?part.task,
                %reason,
                "a plan step was refused on its own; the rest of the plan goes on"
            );
            done.rejected.push(RejectedStep {
                index: part.index,
                task: part.task,
                reason,
            });
        }
    }
    Ok(())
}

/// One lane's chain of task-state compares.
#[derive(Default)]
struct Chain {
    /// The mod revision each task's state must have in the next transaction.
    expected: BTreeMap<TaskRef, i64>,
    /// Tasks whose state a landed transaction of the lane has written: later transactions
    /// only compare it (it stays at that revision, since only the leader writes it).
    written: BTreeSet<TaskRef>,
}

/// What every transaction of one commit shares.
struct Ctx<'a> {
    store: &'a Store,
    keys: &'a Keys,
    fence: &'a Fence,
    plan: &'a Plan,
    /// Set at the first error of any lane: no lane sends anything more.
    stop: AtomicBool,
}

impl Ctx<'_> {
    /// One fenced transaction: the parts' compares and operations, plus the compare of the
    /// state of every task in `tasks` (chained through `chain`) and its put, the first time a
    /// transaction of the lane creates instances of that task.
    async fn send(
        &self,
        parts: &[Part],
        tasks: &BTreeSet<TaskRef>,
        chain: &mut Chain,
        done: &mut Committed,
    ) -> Result<Sent, CommitError> {
        let mut cmps: Vec<Cmp> = parts.iter().flat_map(|p| p.cmps.iter().cloned()).collect();
        let mut ops: Vec<Op> = parts.iter().flat_map(|p| p.ops.iter().cloned()).collect();
        let mut putting = Vec::new();
        for t in tasks {
            let Some(w) = self.plan.taskstates.get(t) else {
                continue;
            };
            let key = self.keys.taskstate(&t.namespace, &t.name);
            cmps.push(Cmp::ModRevision(
                key.clone(),
                chain.expected.get(t).copied().unwrap_or(0),
            ));
            if !chain.written.contains(t) {
                ops.push(Op::put(key, &w.state, None).map_err(encode_err)?);
                putting.push(t);
            }
        }
        if ops.is_empty() {
            return Ok(Sent::Landed);
        }
        let outcome = self.store.commit(Txn { cmps, ops }, Some(self.fence)).await;
        done.txns += 1;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            // etcd answered and refused this request (too large, invalid): a smaller grouping
            // of the same steps may pass, so it is not the whole plan's failure.
            Err(e @ drover_store::Error::Rejected { .. }) => {
                return Ok(Sent::Refused(e.to_string()))
            }
            Err(e) => {
                self.stop.store(true, Ordering::SeqCst);
                return Err(match e {
                    e @ drover_store::Error::Fenced { .. } => CommitError::Fenced(e),
                    e => CommitError::Store(e),
                });
            }
        };
        if !outcome.succeeded {
            return Ok(Sent::Refused(format!(
                "a compare failed (store at revision {})",
                outcome.revision
            )));
        }
        done.revision = outcome.revision;
        // The compares of the next transaction: what this one wrote.
        for t in putting {
            chain.expected.insert(t.clone(), outcome.revision);
            chain.written.insert(t.clone());
        }
        Ok(Sent::Landed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placing(task: &str, slot: u32, node: &str) -> Step {
        let i = drover_api::Instance {
            id: drover_api::InstanceId::service("default", task, slot).expect("id"),
            namespace: "default".into(),
            task: task.into(),
            slot,
            run: None,
            node: node.into(),
            generation: 1,
            revision: 0,
            attempt: 0,
            spec: drover_api::TaskSpec::default(),
            assigned_at: chrono::Utc::now(),
            stop: None,
        };
        Step {
            task: Some(TaskRef::new("default", task)),
            writes: vec![Write::Assign(Box::new(i))],
        }
    }

    fn nodes_of<'a>(lane: &[(usize, &'a Step)]) -> Vec<&'a str> {
        lane.iter()
            .map(|(_, s)| placement_node(s).unwrap_or("-"))
            .collect()
    }

    fn gone(node: &str) -> Step {
        Step {
            task: None,
            writes: vec![Write::NodeGone { node: node.into() }],
        }
    }

    #[test]
    fn a_lanes_placements_are_ordered_by_node_and_never_pass_another_step() {
        let steps = [
            placing("a", 0, "n2"),
            placing("a", 1, "n1"),
            placing("b", 0, "n2"),
            placing("b", 1, "n1"),
        ];
        let mut lane: Vec<(usize, &Step)> = steps.iter().enumerate().collect();
        group_placements_by_node(&mut lane);
        assert_eq!(nodes_of(&lane), ["n1", "n1", "n2", "n2"]);
        // Stable: within a node, plan order.
        assert_eq!(
            lane.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [1, 3, 0, 2]
        );

        // Another step splits the lane: each side is grouped on its own.
        let mixed = [
            placing("a", 0, "n2"),
            gone("n9"),
            placing("a", 1, "n1"),
            placing("a", 2, "n2"),
            placing("a", 3, "n1"),
        ];
        let mut lane: Vec<(usize, &Step)> = mixed.iter().enumerate().collect();
        group_placements_by_node(&mut lane);
        assert_eq!(nodes_of(&lane), ["n2", "-", "n1", "n1", "n2"]);
        assert_eq!(
            lane.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [0, 1, 2, 4, 3]
        );
    }

    /// A new task's first plan writes its revision record (a step of its own) before its
    /// placements, and lanes hold a dozen tasks: those steps must not turn the grouping off
    /// (at 100,000 instances they did, and every transaction reached a hundred nodes).
    #[test]
    fn a_lane_that_starts_with_other_steps_still_groups_its_placements() {
        let mut steps = vec![gone("r1"), gone("r2")];
        for slot in 0..6 {
            steps.push(placing("a", slot, &format!("n{}", slot % 3)));
        }
        let dealt = deal(steps.iter(), 1);
        assert_eq!(
            nodes_of(&dealt[0]),
            ["-", "-", "n0", "n0", "n1", "n1", "n2", "n2"]
        );
    }

    #[test]
    fn node_gone_compares_the_node_key_absent_and_writes_nothing() {
        let keys = Keys::new("/t");
        let (cmps, ops) = write_parts(&keys, &Write::NodeGone { node: "n2".into() })
            .expect("no encoding involved");
        assert_eq!(cmps, vec![Cmp::Absent(keys.node("n2"))]);
        assert!(ops.is_empty());
    }
}
