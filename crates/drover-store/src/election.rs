//! Leader election on etcd keys, with fencing: the leader's key create revision guards every
//! write the leader makes.
//!
//! Candidates write `<prefix>/<lease id in hex>` bound to their lease; the oldest key (lowest
//! create revision) leads; each candidate waits for the deletion of the next-older key, like
//! etcd's own `concurrency.Election`, but built on the store's KV and watch calls so it gets
//! their retries and endpoint failover, and can be cancelled.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{GetOptions, SortOrder, SortTarget, TxnOp};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::codec::{
    decode, encode, first_range_kv, lease_error, prefix_end, put_options, raw_versioned,
};
use crate::error::{Error, Result};
use crate::lease::LeaseId;
use crate::store::Store;
use crate::txn::{Cmp, Fence};
use crate::watcher::{open_watch, watcher, Event, WatchMessage};

/// An election among the candidates under one prefix.
#[derive(Debug, Clone)]
pub struct Election {
    store: Store,
    prefix: String,
}

/// Who leads, as seen by [`Election::leader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo<V> {
    /// The leader's election key.
    pub key: String,
    /// The value the leader campaigned with.
    pub value: V,
    /// The key's create revision: together with `key`, the leader's fence.
    pub create_revision: i64,
}

impl Election {
    /// An election whose candidate keys live under `name_prefix` + `/`.
    pub fn new(store: Store, name_prefix: impl Into<String>) -> Election {
        let mut prefix: String = name_prefix.into();
        while prefix.ends_with('/') {
            prefix.pop();
        }
        prefix.push('/');
        Election { store, prefix }
    }

    /// Becomes a candidate with `value` (JSON) bound to `lease`, and waits until elected.
    ///
    /// # Guarantees
    ///
    /// - Returns only when this candidate's key is the oldest under the prefix: every older
    ///   candidate's key was deleted (resigned or its lease expired).
    /// - Cancel-safe: dropping the future before it completes deletes the candidate key (in a
    ///   spawned task), so an abandoned campaign never becomes a ghost leader.
    /// - Campaigning again with the same lease reuses the existing key (and its place in line).
    ///
    /// # Caveats
    ///
    /// The caller must keep `lease` alive (see [`Store::keep_alive`]) and treat the loss of
    /// either the keep-alive or the [`Leadership`] as the end of its leadership. If the lease
    /// ends while waiting, this returns [`Error::Fenced`] (the candidate key is gone).
    pub async fn campaign<V: Serialize>(&self, value: &V, lease: LeaseId) -> Result<Leadership> {
        let key = format!("{}{:x}", self.prefix, lease.0);
        let bytes = encode(&key, value)?;
        let txn = etcd_client::Txn::new()
            .when(vec![etcd_client::Compare::version(
                key.as_str(),
                etcd_client::CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(
                key.as_str(),
                bytes,
                Some(put_options(Some(lease))),
            )])
            .or_else(vec![TxnOp::get(key.as_str(), None)]);
        let mut guard = CandidateGuard {
            store: self.store.clone(),
            key: key.clone(),
            create_revision: None,
        };
        let resp = self
            .store
            .raw_txn("campaign", txn)
            .await
            .map_err(|e| lease_error(e, Some(lease)))?;
        let my_rev = if resp.succeeded() {
            resp.header().map_or(0, |h| h.revision())
        } else {
            first_range_kv(&resp).map_or(0, |kv| kv.create_revision())
        };
        guard.create_revision = Some(my_rev);
        self.wait_for_turn(&key, my_rev).await?;
        guard.create_revision = None; // elected: keep the key
        let fence = Fence {
            key,
            create_revision: my_rev,
        };
        Ok(Leadership::start(self.store.clone(), fence))
    }

    /// Waits until no key older than `my_rev` remains under the prefix.
    async fn wait_for_turn(&self, key: &str, my_rev: i64) -> Result<()> {
        let mut backoff = self.store.backoff();
        loop {
            let opts = GetOptions::new()
                .with_range(prefix_end(&self.prefix))
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_max_create_revision(my_rev - 1)
                .with_limit(1);
            let resp = self.store.range("campaign", &self.prefix, opts).await?;
            let header_rev = resp.header().map_or(0, |h| h.revision());
            let Some(pred) = resp.kvs().first() else {
                // Nobody older: elected, provided our own key still stands.
                return match self.store.get_raw(key).await? {
                    Some(v) if v.create_revision == my_rev => Ok(()),
                    other => Err(Error::Fenced {
                        key: key.to_owned(),
                        expected_create_revision: my_rev,
                        actual_create_revision: other.map_or(0, |v| v.create_revision),
                    }),
                };
            };
            let pred_key = raw_versioned(pred.clone())?.key;
            let mut conn = match open_watch(&self.store, &pred_key, None, header_rev + 1).await {
                Ok(c) => c,
                Err(error) => {
                    tracing::debug!(%error, "campaign watch failed; retrying");
                    tokio::time::sleep(backoff.next_wait_forever()).await;
                    continue;
                }
            };
            loop {
                match conn.next().await {
                    WatchMessage::Events(evs) => {
                        if evs
                            .iter()
                            .any(|e| e.event_type() == etcd_client::EventType::Delete)
                        {
                            break;
                        }
                    }
                    WatchMessage::Compacted(_) => break,
                    WatchMessage::Broken(reason) => {
                        conn.fail(&self.store, &reason).await;
                        tokio::time::sleep(backoff.next_wait_forever()).await;
                        break;
                    }
                    WatchMessage::Denied(reason) => {
                        tracing::debug!(%reason, "campaign watch denied; refreshing the token");
                        conn.refresh_token(&self.store).await;
                        tokio::time::sleep(backoff.next_wait_forever()).await;
                        break;
                    }
                }
            }
        }
    }

    /// The current leader, if any.
    pub async fn leader<V: DeserializeOwned>(&self) -> Result<Option<LeaderInfo<V>>> {
        let opts = GetOptions::new()
            .with_range(prefix_end(&self.prefix))
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let resp = self.store.range("leader", &self.prefix, opts).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let v = decode::<V>(raw_versioned(kv.clone())?)?;
        Ok(Some(LeaderInfo {
            key: v.key,
            value: v.value,
            create_revision: v.create_revision,
        }))
    }

    /// A stream of leader changes: the leader (or `None`) once the candidates are listed, then
    /// again every time leadership moves.
    ///
    /// # Guarantees
    ///
    /// Built on the [`watcher`]: it resumes and re-lists on its own and never ends. Values that
    /// do not decode are yielded as `Err` items.
    pub fn observe<V>(&self) -> BoxStream<'static, Result<Option<LeaderInfo<V>>>>
    where
        V: DeserializeOwned + Clone + Send + 'static,
    {
        let events = watcher::<V>(self.store.clone(), self.prefix.clone());
        let mut listing: Option<BTreeMap<i64, LeaderInfo<V>>> = None;
        let mut candidates: BTreeMap<i64, LeaderInfo<V>> = BTreeMap::new();
        let mut last: Option<Option<(String, i64)>> = None;
        events
            .filter_map(move |item| {
                let out = match item {
                    Err(e) => Some(Err(e)),
                    Ok(event) => {
                        let settled = match event {
                            Event::Init => {
                                listing = Some(BTreeMap::new());
                                false
                            }
                            Event::InitApply(v) => {
                                let info = info(v);
                                listing
                                    .get_or_insert_with(BTreeMap::new)
                                    .insert(info.create_revision, info);
                                false
                            }
                            Event::InitDone { .. } => {
                                candidates = listing.take().unwrap_or_default();
                                true
                            }
                            Event::Apply(v) => {
                                let info = info(v);
                                candidates.insert(info.create_revision, info);
                                true
                            }
                            Event::Delete { key, .. } => {
                                candidates.retain(|_, c| c.key != key);
                                true
                            }
                        };
                        let leader = candidates.values().next().cloned();
                        let id = leader.as_ref().map(|l| (l.key.clone(), l.create_revision));
                        if settled && last.as_ref() != Some(&id) {
                            last = Some(id);
                            Some(Ok(leader))
                        } else {
                            None
                        }
                    }
                };
                futures::future::ready(out)
            })
            .boxed()
    }
}

fn info<V>(v: crate::Versioned<V>) -> LeaderInfo<V> {
    LeaderInfo {
        key: v.key,
        value: v.value,
        create_revision: v.create_revision,
    }
}

/// Deletes an abandoned candidate key when a campaign is dropped before being elected.
struct CandidateGuard {
    store: Store,
    key: String,
    create_revision: Option<i64>,
}

impl Drop for CandidateGuard {
    fn drop(&mut self) {
        let Some(rev) = self.create_revision else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let key = std::mem::take(&mut self.key);
        handle.spawn(async move {
            let txn = crate::Txn::new().when(Cmp::CreateRevision(key.clone(), rev)).delete(key.clone());
            if let Err(error) = store.commit(txn, None).await {
                tracing::warn!(%key, %error, "could not withdraw an abandoned candidacy; it ends with its lease");
            }
        });
    }
}

/// Being the leader. Carries the [`Fence`] to pass to every write.
///
/// Dropping it stops watching but does not resign: the key stays until the lease ends.
pub struct Leadership {
    store: Store,
    fence: Fence,
    lost: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Leadership {
    fn start(store: Store, fence: Fence) -> Leadership {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(monitor(store.clone(), fence.clone(), tx));
        Leadership {
            store,
            fence,
            lost: rx,
            task,
        }
    }

    /// The fence for [`Store::commit`] and [`Store::commit_batched`].
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Whether the leader key is known to be gone.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the leader key is deleted or replaced (resigned elsewhere, lease expired).
    ///
    /// # Caveats
    ///
    /// This watches the key; when etcd is unreachable it cannot tell. Combine it with the
    /// lease's [`KeepAlive::lost`](crate::KeepAlive::lost) to also stop when renewals fail.
    /// Fenced writes stay safe either way.
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Gives up leadership by deleting the leader key (only if it is still this leader's).
    ///
    /// # Guarantees
    ///
    /// Once this returns `Ok`, every write carrying this fence fails with [`Error::Fenced`],
    /// and the next candidate can be elected.
    pub async fn resign(self) -> Result<()> {
        let txn = crate::Txn::new()
            .when(self.fence.cmp())
            .delete(self.fence.key.clone());
        let mut backoff = self.store.backoff();
        loop {
            match self.store.commit(txn.clone(), None).await {
                Ok(_) => return Ok(()),
                // Deleting under the same compare twice is harmless: retry on unknown outcome.
                Err(e @ Error::OutcomeUnknown { .. }) => match backoff.next_wait() {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("fence", &self.fence)
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// Watches the leader key until it is deleted or re-created, then reports the loss.
async fn monitor(store: Store, fence: Fence, lost: watch::Sender<bool>) {
    let mut backoff = store.backoff();
    loop {
        // Re-check from scratch after every (re)connect, so a missed delete cannot hide.
        let current = match store
            .range("leader_monitor", &fence.key, GetOptions::new())
            .await
        {
            Ok(resp) => resp,
            Err(error) => {
                tracing::debug!(%error, "leader monitor read failed; retrying");
                tokio::time::sleep(backoff.next_wait_forever().max(Duration::from_millis(10)))
                    .await;
                continue;
            }
        };
        let header_rev = current.header().map_or(0, |h| h.revision());
        let still = current
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == fence.create_revision);
        if !still {
            tracing::warn!(key = %fence.key, "leader key gone; leadership lost");
            lost.send_replace(true);
            return;
        }
        let Ok(mut conn) = open_watch(&store, &fence.key, None, header_rev + 1).await else {
            tokio::time::sleep(backoff.next_wait_forever()).await;
            continue;
        };
        loop {
            match conn.next().await {
                WatchMessage::Events(evs) => {
                    backoff.reset();
                    if evs
                        .iter()
                        .any(|e| e.event_type() == etcd_client::EventType::Delete)
                    {
                        tracing::warn!(key = %fence.key, "leader key deleted; leadership lost");
                        lost.send_replace(true);
                        return;
                    }
                }
                WatchMessage::Compacted(_) => break,
                WatchMessage::Broken(reason) => {
                    conn.fail(&store, &reason).await;
                    tokio::time::sleep(backoff.next_wait_forever()).await;
                    break;
                }
                WatchMessage::Denied(reason) => {
                    tracing::debug!(%reason, "leader key watch denied; refreshing the token");
                    conn.refresh_token(&store).await;
                    tokio::time::sleep(backoff.next_wait_forever()).await;
                    break;
                }
            }
        }
    }
}
