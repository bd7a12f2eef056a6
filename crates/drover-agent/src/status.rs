//! Fenced status writes: `status/<node>/<instance>` changes only while the assignment the agent acts
//! on still exists with the create revision the agent saw.

use drover_api::instance::InstanceStatus;
use drover_api::keys::Keys;
use drover_store::{Cmp, Store, Txn};

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
    let err = |source| Error::Store {
        instance: status.id.to_string(),
        source,
    };
    let txn = Txn::new()
        .when(Cmp::CreateRevision(
            assignment_key.to_string(),
            create_revision,
        ))
        .put(keys.status(&status.node, &status.id), status, None)
        .map_err(err)?;
    let outcome = store.commit(txn, None).await.map_err(err)?;
    if outcome.succeeded {
        Ok(Written::Ok {
            revision: outcome.revision,
        })
    } else {
        tracing::debug!(
            instance = %status.id,
            assignment = assignment_key,
            create_revision,
            "status write rejected: the assignment is gone or re-created (stale agent)"
        );
        Ok(Written::Stale)
    }
}

/// Whether two statuses say the same thing (everything but `updated_at`), so unchanged
/// statuses are not rewritten.
pub fn same(a: &InstanceStatus, b: &InstanceStatus) -> bool {
    let mut b = b.clone();
    b.updated_at = a.updated_at;
    *a == b
}
