//! The fenced write path: turns a [`Plan`] into etcd transactions that carry the leader's
//! fence, each within etcd's operation limit.

use std::collections::{BTreeMap, BTreeSet};

use drover_api::Keys;
use drover_store::{Cmp, Fence, Op, Store, Txn};

use crate::planner::{Plan, Step, Write};
use crate::records::TaskRef;

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    /// Transactions sent.
    pub txns: usize,
    /// The revision of the last write (0 when nothing was written).
    pub revision: i64,
}

/// Compares and operations of one transaction under construction.
#[derive(Default)]
struct Batch {
    cmps: Vec<Cmp>,
    ops: Vec<Op>,
    /// Tasks whose state this batch writes.
    tasks: BTreeSet<TaskRef>,
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
        Write::Unassign {
            id,
            node,
            mod_revision,
        } => {
            let key = keys.assignment(node, id);
            (
                vec![Cmp::ModRevision(key.clone(), *mod_revision)],
                vec![Op::delete(key), Op::delete(keys.status(id))],
            )
        }
        Write::NodeGone { node } => (vec![Cmp::Absent(keys.node(node))], Vec::new()),
        Write::DeadLetter(d) => {
            let key = keys.deadletter(&d.letter.namespace, &d.letter.instance);
            (
                vec![Cmp::Absent(key.clone())],
                vec![Op::put(key, d, None).map_err(encode_err)?],
            )
        }
        Write::NodeInfo { info, mod_revision } => {
            let key = keys.nodeinfo(&info.name);
            (
                vec![Cmp::ModRevision(key.clone(), *mod_revision)],
                vec![Op::put(key, info, None).map_err(encode_err)?],
            )
        }
        Write::DeleteStatus { id, mod_revision } => {
            let key = keys.status(id);
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

/// Commits `plan` as fenced transactions of at most `max_ops` compares and operations each.
///
/// # Guarantees
///
/// - Every transaction carries `fence`: once this replica is deposed nothing more lands, and
///   the call returns [`CommitError::Fenced`].
/// - A [`Step`] is never split: a dead node's assignment and its replacement, or a dead letter
///   and the removal it records, land together or not at all.
/// - A transaction that creates instances of a task also writes that task's state, comparing
///   its mod revision (chained from one transaction to the next), so a plan made from a stale
///   snapshot cannot create a second set of instances.
/// - Transactions are sent in plan order and stop at the first failure.
///
/// # Caveats
///
/// The plan as a whole is not atomic: after an error, earlier transactions have landed. The
/// caller re-plans from a snapshot at least as new as the error's revision (see
/// [`CommitError::Conflict`]), which is safe because the planner is level-triggered.
pub async fn commit(
    store: &Store,
    keys: &Keys,
    fence: &Fence,
    plan: &Plan,
    max_ops: usize,
) -> Result<Committed, CommitError> {
    // One compare of every transaction is the fence.
    let budget = max_ops.saturating_sub(1).max(4);
    let mut expected: BTreeMap<TaskRef, i64> = plan
        .taskstates
        .iter()
        .map(|(t, w)| (t.clone(), w.mod_revision))
        .collect();
    let mut done = Committed::default();
    let mut batch = Batch::default();

    let standalone: Vec<Step> = plan
        .taskstates
        .keys()
        .filter(|t| !plan.steps.iter().any(|s| s.task.as_ref() == Some(*t)))
        .map(|t| Step {
            task: Some(t.clone()),
            writes: Vec::new(),
        })
        .collect();
    for step in plan.steps.iter().chain(&standalone) {
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
        let fits = |b: &Batch| {
            let tasks = b.tasks.len() + usize::from(tracked.is_some_and(|t| !b.tasks.contains(t)));
            b.ops.len() + ops.len() + tasks <= budget && b.cmps.len() + cmps.len() + tasks <= budget
        };
        if !fits(&batch) {
            flush(
                store,
                keys,
                fence,
                plan,
                &mut batch,
                &mut expected,
                &mut done,
            )
            .await?;
        }
        // After a flush the task's state must be written again, in the new batch.
        if let Some(t) = tracked {
            batch.tasks.insert(t.clone());
        }
        batch.cmps.extend(cmps);
        batch.ops.extend(ops);
    }
    flush(
        store,
        keys,
        fence,
        plan,
        &mut batch,
        &mut expected,
        &mut done,
    )
    .await?;
    Ok(done)
}

async fn flush(
    store: &Store,
    keys: &Keys,
    fence: &Fence,
    plan: &Plan,
    batch: &mut Batch,
    expected: &mut BTreeMap<TaskRef, i64>,
    done: &mut Committed,
) -> Result<(), CommitError> {
    let Batch {
        mut cmps,
        mut ops,
        tasks,
    } = std::mem::take(batch);
    for t in &tasks {
        let Some(w) = plan.taskstates.get(t) else {
            continue;
        };
        let key = keys.taskstate(&t.namespace, &t.name);
        cmps.push(Cmp::ModRevision(
            key.clone(),
            expected.get(t).copied().unwrap_or(0),
        ));
        ops.push(Op::put(key, &w.state, None).map_err(encode_err)?);
    }
    if ops.is_empty() {
        return Ok(());
    }
    let outcome = store
        .commit(Txn { cmps, ops }, Some(fence))
        .await
        .map_err(|e| match e {
            e @ drover_store::Error::Fenced { .. } => CommitError::Fenced(e),
            e => CommitError::Store(e),
        })?;
    done.txns += 1;
    if !outcome.succeeded {
        return Err(CommitError::Conflict {
            revision: outcome.revision,
            landed: done.revision,
        });
    }
    done.revision = outcome.revision;
    for t in tasks {
        expected.insert(t, outcome.revision);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_gone_compares_the_node_key_absent_and_writes_nothing() {
        let keys = Keys::new("/t");
        let (cmps, ops) = write_parts(&keys, &Write::NodeGone { node: "n2".into() })
            .expect("no encoding involved");
        assert_eq!(cmps, vec![Cmp::Absent(keys.node("n2"))]);
        assert!(ops.is_empty());
    }
}
