//! Fenced status writes: `status/<node>/<instance>` changes only while the assignment the agent acts
//! on still exists with the create revision the agent saw. A node's writes that wait on one in
//! flight go together in one request ([`crate::node_batch`]).

use std::sync::Arc;

use drover_api::instance::InstanceStatus;
use drover_api::keys::Keys;
use drover_store::{Cmp, Op, Store, Txn, TxnOutcome};
use futures::FutureExt;

use crate::node_batch::Batcher;

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A status write that failed for a reason other than fencing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// etcd did not take the write (unreachable, rejected, outcome unknown); retry later.
    #[error("writing status of {instance}: {source}")]
    Store {
        /// The instance.
        instance: String,
        /// The store's error.
        #[source]
        source: drover_store::Error,
    },
}

impl Error {
    /// Whether retrying may succeed (etcd was unreachable).
    pub fn retryable(&self) -> bool {
        match self {
            Error::Store { source, .. } => source.retryable(),
        }
    }
}

/// The outcome of a fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The status was written at this revision.
    Ok {
        /// The revision of the write.
        revision: i64,
    },
    /// The assignment is gone or was re-created: this agent no longer owns the instance, and
    /// nothing was written.
    Stale,
}

/// Writes `status` for the assignment at `assignment_key` created at `create_revision`.
///
/// # Guarantees
/// One etcd txn: `if create_revision(assignment) == create_revision then put status`. An agent
/// that lost the instance (assignment deleted, or deleted and re-created for a new placement,
/// which gives it a new create revision) cannot change the status: the write is
/// [`Written::Stale`], which is logged at debug level and is not an error.
///
/// # Caveats
/// A write that fails in transport is an error whose outcome is unknown; the caller rewrites
/// the whole status later (writes are idempotent, level-triggered).
pub async fn write(
    store: &Store,
    keys: &Keys,
    assignment_key: &str,
    create_revision: i64,
    status: &InstanceStatus,
) -> Result<Written> {
    let write = StatusWrite::new(keys, assignment_key, create_revision, status)?;
    let outcome = store
        .commit(write.txn, None)
        .await
        .map_err(|source| store_error(status, source))?;
    Ok(written(outcome, assignment_key, create_revision, status))
}

/// [`write`], in one request with whatever else of the node's status writes waits on one in
/// flight ([`crate::node_batch`]); each write is its own nested txn, applied or refused by its
/// own compare, with the same guarantees. When a batch fails as a whole, each of its writes
/// is sent again alone, for its own outcome or error.
pub(crate) async fn write_batched(
    writes: &Arc<Batcher<StatusWrite, TxnOutcome>>,
    store: &Store,
    keys: &Keys,
    assignment_key: &str,
    create_revision: i64,
    status: &InstanceStatus,
) -> Result<Written> {
    let write = StatusWrite::new(keys, assignment_key, create_revision, status)?;
    let node: Arc<str> = Arc::from(status.node.as_str());
    let outcome = match writes.submit(&node, write.clone()).await {
        Some(outcome) => outcome,
        None => store
            .commit(write.txn, None)
            .await
            .map_err(|source| store_error(status, source))?,
    };
    Ok(written(outcome, assignment_key, create_revision, status))
}

fn store_error(status: &InstanceStatus, source: drover_store::Error) -> Error {
    Error::Store {
        instance: status.id.to_string(),
        source,
    }
}

fn written(
    outcome: TxnOutcome,
    assignment_key: &str,
    create_revision: i64,
    status: &InstanceStatus,
) -> Written {
    if outcome.succeeded {
        Written::Ok {
            revision: outcome.revision,
        }
    } else {
        tracing::debug!(
            instance = %status.id,
            assignment = assignment_key,
            create_revision,
            "status write rejected: the assignment is gone or re-created (stale agent)"
        );
        Written::Stale
    }
}

/// One status write in a node's batch: its txn, and the key it writes (no batch writes one key
/// twice, which etcd refuses).
#[derive(Debug, Clone)]
pub(crate) struct StatusWrite {
    status_key: String,
    txn: Txn,
}

impl StatusWrite {
    fn new(
        keys: &Keys,
        assignment_key: &str,
        create_revision: i64,
        status: &InstanceStatus,
    ) -> Result<StatusWrite> {
        let status_key = keys.status(&status.node, &status.id);
        let txn = Txn::new()
            .when(Cmp::CreateRevision(
                assignment_key.to_string(),
                create_revision,
            ))
            .put(status_key.clone(), status, None)
            .map_err(|source| store_error(status, source))?;
        Ok(StatusWrite { status_key, txn })
    }

    fn encoded_len(&self) -> usize {
        self.txn.cmps.iter().map(Cmp::encoded_len).sum::<usize>()
            + self.txn.ops.iter().map(Op::encoded_len).sum::<usize>()
    }
}

/// The status writes of `store`'s nodes, grouped per node within `store`'s limits.
pub(crate) fn batcher(store: &Store) -> Arc<Batcher<StatusWrite, TxnOutcome>> {
    let cfg = store.config();
    // A nested txn of one compare and one put fits while the outer one leaves it an op.
    let max_writes = (cfg.max_txn_ops / 2).max(1);
    let max_bytes = cfg.max_request_bytes / 2;
    let sender = store.clone();
    Batcher::new(
        Box::new(move |writes: Vec<StatusWrite>| {
            let store = sender.clone();
            async move {
                let txns: Vec<Txn> = writes.into_iter().map(|w| w.txn).collect();
                store.commit_each(&txns).await.ok()
            }
            .boxed()
        }),
        Box::new(move |batch: &[StatusWrite], next: &StatusWrite| {
            batch.len() < max_writes
                && batch.iter().all(|w| w.status_key != next.status_key)
                && batch.iter().map(StatusWrite::encoded_len).sum::<usize>() + next.encoded_len()
                    <= max_bytes
        }),
    )
}

/// Whether two statuses say the same thing (everything but `updated_at`), so unchanged
/// statuses are not rewritten.
pub fn same(a: &InstanceStatus, b: &InstanceStatus) -> bool {
    let mut b = b.clone();
    b.updated_at = a.updated_at;
    *a == b
}
