//! Counting keys and looking after the server: the member's status (database size), history
//! compaction and defragmentation. Benchmarks and operators use these; the daemons do not.

use etcd_client::{CompactionOptions, GetOptions};

use crate::codec::prefix_end;
use crate::error::Result;
use crate::pool::Idempotency;
use crate::store::Store;

/// How many keys a prefix holds, and at which revision that was true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// Keys under the prefix.
    pub count: i64,
    /// The store revision the count was taken at (etcd's global revision, not the prefix's).
    pub revision: i64,
}

/// The database of the member that answered [`Store::db_size`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbSize {
    /// Bytes of the backend file on disk (etcd's `dbSize`).
    pub total: i64,
    /// Bytes of it in use; the rest is free pages a compaction left, reused by later writes
    /// (etcd's `dbSizeInUse`).
    pub in_use: i64,
    /// The member's backend quota (`--quota-backend-bytes`; 0 means etcd's default).
    pub quota: i64,
}

impl Store {
    /// Counts the keys under `prefix` without fetching them (a count-only range request).
    ///
    /// # Guarantees
    ///
    /// Linearizable; retried like every read.
    pub async fn count(&self, prefix: &str) -> Result<Counted> {
        let opts = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_count_only();
        let resp = self.range("count", prefix, opts).await?;
        Ok(Counted {
            count: resp.count(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    /// The database size reported by one member (the endpoint calls go to now).
    pub async fn db_size(&self) -> Result<DbSize> {
        let mut backoff = self.backoff();
        let resp = self
            .inner
            .pool
            .call(
                "status",
                Idempotency::Idempotent,
                self.request_timeout(),
                &mut backoff,
                |mut c| async move { c.status().await },
            )
            .await?;
        Ok(DbSize {
            total: resp.db_size(),
            in_use: resp.raft_used_db_size(),
            quota: resp.db_size_quota(),
        })
    }

    /// Compacts the history of the whole key space up to `revision`, waiting until the
    /// backend has physically dropped it (so freed pages are reusable when this returns).
    ///
    /// # Caveats
    ///
    /// This affects every client of the etcd, not only Drover's prefix: a watch that still
    /// needs an older revision is cancelled with `compact_revision` and has to re-list. A
    /// revision that is already compacted is [`Error::Compacted`](crate::Error::Compacted).
    pub async fn compact(&self, revision: i64) -> Result<()> {
        let mut backoff = self.backoff();
        self.inner
            .pool
            .call(
                "compact",
                Idempotency::Idempotent,
                self.request_timeout(),
                &mut backoff,
                |mut c| async move {
                    c.compact(revision, Some(CompactionOptions::new().with_physical()))
                        .await
                },
            )
            .await
            .map(|_| ())
    }

    /// Defragments the member that answers, giving the free pages of its backend file back to
    /// the file system, so [`db_size`](Self::db_size) shrinks to what is in use.
    ///
    /// # Caveats
    ///
    /// The member serves no other request while it defragments (milliseconds for a small
    /// database, seconds for gigabytes): use it on an etcd of your own, not a busy cluster.
    pub async fn defragment(&self) -> Result<()> {
        let mut backoff = self.backoff();
        self.inner
            .pool
            .call(
                "defragment",
                Idempotency::Idempotent,
                self.request_timeout(),
                &mut backoff,
                |mut c| async move { c.defragment().await },
            )
            .await
            .map(|_| ())
    }
}
