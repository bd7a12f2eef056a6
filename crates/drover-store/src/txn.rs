//! Our small transaction builder, fencing, and batched commits within etcd's op limit.

use std::ops::Range;

use etcd_client::{Compare, CompareOp, DeleteOptions, PutOptions, TxnOp};
use serde::Serialize;

use crate::codec::{encode, first_range_kv, prefix_end, put_options};
use crate::error::{Error, Result};
use crate::lease::LeaseId;
use crate::store::Store;

/// A condition a [`Txn`] checks before applying its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmp {
    /// The key exists.
    Exists(String),
    /// The key does not exist.
    Absent(String),
    /// The key's create revision equals the value (0 = absent).
    CreateRevision(String, i64),
    /// The key's mod revision equals the value (0 = absent).
    ModRevision(String, i64),
}

impl Cmp {
    /// About how many bytes this compare adds to a request (key plus protobuf framing).
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        let (Cmp::Exists(k) | Cmp::Absent(k) | Cmp::CreateRevision(k, _) | Cmp::ModRevision(k, _)) =
            self;
        k.len() + FRAMING_BYTES
    }

    fn to_etcd(&self) -> Compare {
        match self {
            Cmp::Exists(k) => Compare::version(k.as_str(), CompareOp::Greater, 0),
            Cmp::Absent(k) => Compare::version(k.as_str(), CompareOp::Equal, 0),
            Cmp::CreateRevision(k, r) => Compare::create_revision(k.as_str(), CompareOp::Equal, *r),
            Cmp::ModRevision(k, r) => Compare::mod_revision(k.as_str(), CompareOp::Equal, *r),
        }
    }
}

/// What a put does with the key's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutLease {
    /// No lease: the key lives until deleted (detaches a lease it had).
    None,
    /// Attach to this lease.
    Lease(LeaseId),
    /// Keep the lease the existing key has. The key must exist, or etcd fails the whole txn.
    Keep,
}

/// An operation a [`Txn`] applies when its compares hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write a value (already encoded as JSON, see [`Op::put`]).
    Put {
        /// The key.
        key: String,
        /// The encoded value.
        value: Vec<u8>,
        /// What happens to the key's lease.
        lease: PutLease,
    },
    /// Delete one key (a no-op when absent).
    Delete {
        /// The key.
        key: String,
    },
    /// Delete every key under a prefix.
    DeletePrefix {
        /// The prefix.
        prefix: String,
    },
}

/// A generous bound on the protobuf framing of one compare or operation (tags, lengths,
/// revisions, lease), so that byte budgets built from [`Op::encoded_len`] err on the safe side.
const FRAMING_BYTES: usize = 32;

impl Op {
    /// About how many bytes this operation adds to a request (key, value, framing).
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len() + FRAMING_BYTES,
            Op::Delete { key } => key.len() + FRAMING_BYTES,
            Op::DeletePrefix { prefix } => 2 * prefix.len() + FRAMING_BYTES,
        }
    }

    /// A put of `value` as JSON, attached to `lease` if given.
    pub fn put<T: Serialize>(
        key: impl Into<String>,
        value: &T,
        lease: Option<LeaseId>,
    ) -> Result<Op> {
        let key = key.into();
        let value = encode(&key, value)?;
        Ok(Op::Put {
            key,
            value,
            lease: lease.map_or(PutLease::None, PutLease::Lease),
        })
    }

    /// A put of `value` as JSON that keeps the existing key's lease.
    pub fn put_keep_lease<T: Serialize>(key: impl Into<String>, value: &T) -> Result<Op> {
        let key = key.into();
        let value = encode(&key, value)?;
        Ok(Op::Put {
            key,
            value,
            lease: PutLease::Keep,
        })
    }

    /// A delete of `key`.
    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete { key: key.into() }
    }

    fn to_etcd(&self) -> TxnOp {
        match self {
            Op::Put { key, value, lease } => {
                let opts = match lease {
                    PutLease::None => PutOptions::new(),
                    PutLease::Lease(id) => put_options(Some(*id)),
                    PutLease::Keep => PutOptions::new().with_ignore_lease(),
                };
                TxnOp::put(key.as_str(), value.clone(), Some(opts))
            }
            Op::Delete { key } => TxnOp::delete(key.as_str(), None),
            Op::DeletePrefix { prefix } => TxnOp::delete(
                prefix.as_str(),
                Some(DeleteOptions::new().with_range(prefix_end(prefix))),
            ),
        }
    }
}

/// A leader's proof of leadership: the election key and the create revision it had when this
/// leader was elected. A write that carries it applies only while that key still exists with
/// that create revision, so a deposed leader can never write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fence {
    /// The leader's election key.
    pub key: String,
    /// Its create revision when elected.
    pub create_revision: i64,
}

impl Fence {
    /// The compare this fence adds to a transaction.
    pub fn cmp(&self) -> Cmp {
        Cmp::CreateRevision(self.key.clone(), self.create_revision)
    }
}

/// A transaction: if every compare holds, apply every op, atomically.
///
/// Built in one go and converted to etcd's txn once, so etcd-client's `when`/`and_then` (which
/// panic when called twice) are each called exactly once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// The compares, all of which must hold.
    pub cmps: Vec<Cmp>,
    /// The operations applied when they do.
    pub ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction (always succeeds, changes nothing).
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds a compare.
    pub fn when(mut self, cmp: Cmp) -> Txn {
        self.cmps.push(cmp);
        self
    }

    /// Adds an operation.
    pub fn op(mut self, op: Op) -> Txn {
        self.ops.push(op);
        self
    }

    /// Adds a JSON put.
    pub fn put<T: Serialize>(
        self,
        key: impl Into<String>,
        value: &T,
        lease: Option<LeaseId>,
    ) -> Result<Txn> {
        Ok(self.op(Op::put(key, value, lease)?))
    }

    /// Adds a delete.
    pub fn delete(self, key: impl Into<String>) -> Txn {
        self.op(Op::delete(key))
    }
}

/// The result of a committed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether the compares held and the ops were applied.
    pub succeeded: bool,
    /// The store revision after the txn (the revision of its writes when it succeeded).
    pub revision: i64,
}

/// The outcome of one chunk of [`Store::commit_batched`].
#[derive(Debug)]
pub struct ChunkOutcome {
    /// Which of the given ops the chunk held.
    pub ops: Range<usize>,
    /// The revision of the chunk's writes, or why it failed.
    pub result: Result<i64>,
}

impl Store {
    /// Commits `txn`, adding the fence's compare when given.
    ///
    /// # Guarantees
    ///
    /// - Atomic: all ops apply or none.
    /// - With a fence, a txn that fails because the fence no longer holds is
    ///   [`Error::Fenced`], never `Ok(succeeded: false)`: losing leadership is distinguishable
    ///   from losing an ordinary compare.
    /// - Sent at most once.
    ///
    /// # Caveats
    ///
    /// A transport failure is [`Error::OutcomeUnknown`]: the txn may have applied. Re-read the
    /// compared keys before retrying (a CAS txn is safe to retry only on a fresh read).
    /// etcd rejects a txn touching one key twice, and one with more than `max_txn_ops`
    /// compares or ops ([`Error::TooManyOps`], checked before sending).
    pub async fn commit(&self, txn: Txn, fence: Option<&Fence>) -> Result<TxnOutcome> {
        let max = self.inner.cfg.max_txn_ops;
        let n_cmps = txn.cmps.len() + usize::from(fence.is_some());
        // etcd checks compares, success ops and failure ops against the limit separately.
        let worst = n_cmps.max(txn.ops.len());
        if worst > max {
            return Err(Error::TooManyOps { ops: worst, max });
        }
        let mut compares: Vec<Compare> = Vec::with_capacity(n_cmps);
        if let Some(f) = fence {
            compares.push(f.cmp().to_etcd());
        }
        compares.extend(txn.cmps.iter().map(Cmp::to_etcd));
        let ops: Vec<TxnOp> = txn.ops.iter().map(Op::to_etcd).collect();
        let mut etcd_txn = etcd_client::Txn::new().when(compares).and_then(ops);
        if let Some(f) = fence {
            // On failure, read the fence key in the same txn to tell "fenced" from "lost a
            // compare" without a race.
            etcd_txn = etcd_txn.or_else(vec![TxnOp::get(f.key.as_str(), None)]);
        }
        let resp = self.raw_txn("commit", etcd_txn).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if !resp.succeeded() {
            if let Some(f) = fence {
                let actual = first_range_kv(&resp).map_or(0, |kv| kv.create_revision());
                if actual != f.create_revision {
                    return Err(Error::Fenced {
                        key: f.key.clone(),
                        expected_create_revision: f.create_revision,
                        actual_create_revision: actual,
                    });
                }
            }
        }
        Ok(TxnOutcome {
            succeeded: resp.succeeded(),
            revision,
        })
    }

    /// Commits `ops` in chunks of at most `max_txn_ops`, each chunk its own txn carrying the
    /// fence (if any). Stops at the first chunk that fails.
    ///
    /// # Guarantees
    ///
    /// Every chunk is atomic and fenced; the returned list has one entry per attempted chunk,
    /// in order, and only the last can be an error. Chunks after a failure are not attempted.
    ///
    /// # Caveats
    ///
    /// The batch as a whole is not atomic: a failure (or a lost fence) midway leaves the earlier
    /// chunks applied. Callers must be level-triggered (re-read and converge) for that reason.
    pub async fn commit_batched(&self, ops: Vec<Op>, fence: Option<&Fence>) -> Vec<ChunkOutcome> {
        let chunk = self.inner.cfg.max_txn_ops;
        let mut out = Vec::new();
        let mut start = 0;
        let mut rest = ops;
        while !rest.is_empty() {
            let tail = rest.split_off(chunk.min(rest.len()));
            let len = rest.len();
            let txn = Txn {
                cmps: Vec::new(),
                ops: rest,
            };
            let result = self.commit(txn, fence).await.map(|o| o.revision);
            let failed = result.is_err();
            out.push(ChunkOutcome {
                ops: start..start + len,
                result,
            });
            if failed {
                break;
            }
            start += len;
            rest = tail;
        }
        out
    }

    /// Commits independent transactions in one request (etcd's nested transactions): each
    /// applies, or not, by its own compares, as if sent alone.
    ///
    /// # Guarantees
    ///
    /// - One outcome per transaction, in order; `succeeded` is that transaction's own.
    /// - Those that apply share one revision, the returned one.
    /// - Sent at most once.
    ///
    /// # Caveats
    ///
    /// A transport failure is [`Error::OutcomeUnknown`] for all of them. etcd counts a nested
    /// transaction's compares and ops against what the outer one leaves of `max_txn_ops`
    /// ([`Error::TooManyOps`], checked before sending), and rejects the request when two of
    /// them write one key.
    pub async fn commit_each(&self, txns: &[Txn]) -> Result<Vec<TxnOutcome>> {
        let max = self.inner.cfg.max_txn_ops;
        let outer = txns.len();
        let inner = txns
            .iter()
            .map(|t| t.cmps.len().max(t.ops.len()))
            .max()
            .unwrap_or(0);
        if outer > max || inner > max - outer {
            return Err(Error::TooManyOps {
                ops: outer + inner,
                max,
            });
        }
        let nested: Vec<TxnOp> = txns
            .iter()
            .map(|t| {
                let compares: Vec<Compare> = t.cmps.iter().map(Cmp::to_etcd).collect();
                let ops: Vec<TxnOp> = t.ops.iter().map(Op::to_etcd).collect();
                TxnOp::txn(etcd_client::Txn::new().when(compares).and_then(ops))
            })
            .collect();
        let resp = self
            .raw_txn("commit each", etcd_client::Txn::new().and_then(nested))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let replies = resp.op_responses();
        if replies.len() != outer {
            return Err(Error::Rejected {
                op: "commit each",
                reason: format!(
                    "etcd answered {outer} transactions with {} replies",
                    replies.len()
                ),
            });
        }
        replies
            .iter()
            .map(|reply| match reply {
                etcd_client::TxnOpResponse::Txn(t) => Ok(TxnOutcome {
                    succeeded: t.succeeded(),
                    revision,
                }),
                _ => Err(Error::Rejected {
                    op: "commit each",
                    reason: "etcd answered a nested transaction with another kind of reply"
                        .to_string(),
                }),
            })
            .collect()
    }
}
