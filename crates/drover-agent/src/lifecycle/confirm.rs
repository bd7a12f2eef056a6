//! The reads that confirm a start, grouped per node: a node's confirms that wait on one in
//! flight go together in one read-only transaction ([`crate::node_batch`]).

use std::sync::Arc;

use drover_store::{Store, Versioned};
use futures::FutureExt;

use crate::node_batch::Batcher;

/// The keys one confirm reads, and what it found under each (in order; `None`: absent).
pub(crate) type Reads = Batcher<Vec<String>, Vec<Option<Versioned<Vec<u8>>>>>;

/// The confirm reads of `store`'s nodes: one linearizable read-only txn per batch, of at most
/// `max_txn_ops` keys.
pub(crate) fn batcher(store: &Store) -> Arc<Reads> {
    let max_keys = store.config().max_txn_ops.max(1);
    let sender = store.clone();
    Batcher::new(
        Box::new(move |reads: Vec<Vec<String>>| {
            let store = sender.clone();
            async move {
                let keys: Vec<&str> = reads.iter().flatten().map(String::as_str).collect();
                let mut found = store.get_raw_each(&keys).await.ok()?.into_iter();
                Some(
                    reads
                        .iter()
                        .map(|r| found.by_ref().take(r.len()).collect())
                        .collect(),
                )
            }
            .boxed()
        }),
        Box::new(move |batch: &[Vec<String>], next: &Vec<String>| {
            batch.iter().map(Vec::len).sum::<usize>() + next.len() <= max_keys
        }),
    )
}
