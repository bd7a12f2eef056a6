//! The [`Store`] handle: connecting, and typed reads and single-key writes with revisions.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, GetResponse, PutOptions, SortOrder, SortTarget,
    TxnOp, TxnOpResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::codec::{
    decode, encode, first_range_kv, lease_error, prefix_end, put_options, raw_versioned,
};
use crate::config::StoreConfig;
use crate::error::{describe, Error, Result};
use crate::lease::LeaseId;
use crate::pool::{AuthFailure, Idempotency, Picked, Pool};
use crate::write_log::{txn_wrote, WriteLog};

/// A value with the etcd metadata that came with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// The full key.
    pub key: String,
    /// The decoded value.
    pub value: T,
    /// The revision that created the key (stays fixed until it is deleted).
    pub create_revision: i64,
    /// The revision of the last write to the key: what compare-and-swap compares.
    pub mod_revision: i64,
    /// Writes since creation, starting at 1.
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

impl<T> Versioned<T> {
    /// The same metadata with another value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Versioned<U> {
        Versioned {
            key: self.key,
            value: f(self.value),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// Everything under a prefix at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing<T> {
    /// The store revision the listing is a consistent snapshot of; watch from `revision + 1`.
    pub revision: i64,
    /// The items, sorted by key.
    pub items: Vec<Versioned<T>>,
}

/// A listing whose values were decoded one by one (see [`Store::list_checked`]).
#[derive(Debug, Clone)]
pub struct Checked<T> {
    /// The store revision the listing is a consistent snapshot of.
    pub revision: i64,
    /// The values that decoded, sorted by key.
    pub items: Vec<Versioned<T>>,
    /// The keys whose values did not, sorted by key.
    pub invalid: Vec<InvalidValue>,
}

/// A key whose value does not decode as the type its key says it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue {
    /// The key.
    pub key: String,
    /// Its mod revision.
    pub mod_revision: i64,
    /// Why it does not decode.
    pub error: String,
}

/// The result of [`Store::create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The key was absent and now holds the value, written at `revision`.
    Created {
        /// The revision of the write (the key's create and mod revision).
        revision: i64,
    },
    /// The key already existed; nothing was written.
    AlreadyExists {
        /// The existing key's mod revision.
        mod_revision: i64,
    },
}

/// How often [`probe`] asks an endpoint that closed the connection.
const PROBE_ATTEMPTS: usize = 4;
/// The pause between [`probe`]'s attempts to authenticate during an etcd election.
const AUTH_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Endpoint `index`'s answer at connect: its status within `timeout`, then (with a user)
/// authenticating, retried within `auth_timeout` while the member is electing a leader.
///
/// # Caveats
///
/// A TLS connection that etcd closes right after the handshake (it refused the client
/// certificate; under TLS 1.3 the client already counts the handshake done) shows first as
/// "connection closed" or "broken pipe". Asking again usually gets etcd's alert itself
/// ("received fatal alert: BadCertificate"), which says what is wrong; when it does not, the
/// reason says what to check.
async fn probe(
    pool: &Pool,
    index: usize,
    timeout: Duration,
    auth_timeout: Duration,
    tls: bool,
) -> Result<(), AuthFailure> {
    let p = pool.at(index);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut reason = String::new();
    for _ in 0..PROBE_ATTEMPTS {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut client = p.client.clone();
        match tokio::time::timeout(left, client.status()).await {
            Ok(Ok(_)) => return authenticate_soon(pool, &p, auth_timeout).await,
            Ok(Err(e)) => reason = describe(&e),
            Err(_) => return Err(AuthFailure::Down(format!("no answer within {timeout:?}"))),
        }
        if !closed_at_once(&reason) {
            break;
        }
    }
    if tls && closed_at_once(&reason) {
        reason.push_str(
            " (over TLS this is often etcd refusing the client certificate: check \
             --etcd-certfile and --etcd-keyfile, and that etcd trusts their CA)",
        );
    }
    Err(AuthFailure::Down(reason))
}

/// Whether a failure looks like a connection the server dropped right after accepting it.
fn closed_at_once(reason: &str) -> bool {
    ["connection closed", "broken pipe", "connection reset"]
        .iter()
        .any(|needle| reason.contains(needle))
}

/// Authenticates `p`, retrying while the member answers "not now" (an election), for at most
/// `within`.
async fn authenticate_soon(pool: &Pool, p: &Picked, within: Duration) -> Result<(), AuthFailure> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match pool.authenticate(p).await {
            Err(AuthFailure::Transient(reason)) => {
                if tokio::time::Instant::now() + AUTH_RETRY_PAUSE >= deadline {
                    return Err(AuthFailure::Transient(reason));
                }
                tokio::time::sleep(AUTH_RETRY_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// A cheap, cloneable handle to etcd. Values are JSON; keys are UTF-8 strings.
///
/// The store knows nothing about Drover's resource types: every typed call is generic over
/// `T: Serialize` / `T: DeserializeOwned`.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: StoreConfig,
    pub(crate) pool: Pool,
    write_log: Option<WriteLog>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("endpoints", &self.inner.pool.urls())
            .finish()
    }
}

impl Store {
    /// Validates `cfg`, reads its TLS and password files, and connects, checking that at
    /// least one endpoint answers (and, with a user, accepts it).
    ///
    /// # Guarantees
    ///
    /// Returns within about `cfg.connect_timeout` (plus, with a user, one `request_timeout`
    /// to authenticate, retried while etcd elects a leader).
    /// When no endpoint answers, the error is [`Error::Unreachable`] naming every endpoint and
    /// the last reason (a TLS handshake etcd or this client refused shows there). Endpoints
    /// that did not answer start out marked dead, so the first calls go to one that did. A
    /// file that cannot be used is [`Error::Credentials`]; a user etcd refuses is
    /// [`Error::AuthFailed`].
    pub async fn connect(cfg: StoreConfig) -> Result<Store> {
        cfg.validate()?;
        let write_log = cfg.write_log.as_deref().map(WriteLog::open).transpose()?;
        let pool = Pool::new(&cfg).await?;
        let tls = cfg.tls.is_enabled();
        let probes = (0..pool.len()).map(|i| {
            let pool = &pool;
            let (timeout, auth_timeout) = (cfg.connect_timeout, cfg.request_timeout);
            async move { (i, probe(pool, i, timeout, auth_timeout, tls).await) }
        });
        let results = futures::future::join_all(probes).await;
        let mut live = 0;
        let mut last = String::new();
        for (i, res) in results {
            match res {
                Ok(()) => live += 1,
                Err(AuthFailure::Refused(error)) => return Err(error),
                Err(AuthFailure::Down(reason) | AuthFailure::Transient(reason)) => {
                    pool.mark_dead(i, &reason).await;
                    last = reason;
                }
            }
        }
        if live == 0 {
            return Err(Error::Unreachable {
                endpoints: pool.urls().join(","),
                timeout: cfg.connect_timeout,
                reason: last,
            });
        }
        Ok(Store {
            inner: Arc::new(Inner {
                cfg,
                pool,
                write_log,
            }),
        })
    }

    /// The config this store was built with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    /// Exports this store's request latency, retries and endpoint failovers as `store_*`
    /// families in `registry` (see [`crate::metrics`]). Clones of a store share the counts.
    ///
    /// # Caveats
    /// Once per registry, even for several clones of one store: twice would export every
    /// family twice, which Prometheus rejects.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.pool.metrics.register(registry);
    }

    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(&self.inner.cfg.retry)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.cfg.request_timeout
    }

    /// A range request with retries (idempotent).
    pub(crate) async fn range(
        &self,
        op: &'static str,
        key: impl AsRef<[u8]>,
        opts: GetOptions,
    ) -> Result<GetResponse> {
        let key = key.as_ref();
        let mut backoff = self.backoff();
        let limit = self.inner.cfg.max_response_bytes;
        self.inner
            .pool
            .call(
                op,
                Idempotency::Idempotent,
                self.request_timeout(),
                &mut backoff,
                |c| {
                    let opts = opts.clone();
                    let key = key.to_vec();
                    // A page of large values can exceed gRPC's 4 MiB default decode limit.
                    let mut kv = c.kv_client().max_decoding_message_size(limit);
                    async move { kv.get(key, Some(opts)).await }
                },
            )
            .await
    }

    /// Reads one key as raw bytes.
    pub async fn get_raw(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>> {
        let mut resp = self.range("get", key, GetOptions::new()).await?;
        resp.take_kvs()
            .into_iter()
            .next()
            .map(raw_versioned)
            .transpose()
    }

    /// Reads several keys at once, as raw bytes: `result[i]` is `keys[i]`'s value, if any.
    ///
    /// # Guarantees
    ///
    /// Linearizable, and every key is read at one revision: one read-only transaction, so etcd
    /// pays for one read, not one per key. On etcd 3.4 every read request copies the server's
    /// uncommitted write buffer (twice: for the read and for the response header), which under
    /// a stream of writes costs more than the read itself.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] if a stored key is not UTF-8; etcd's errors, retried as any read.
    pub async fn get_raw_each(&self, keys: &[&str]) -> Result<Vec<Option<Versioned<Vec<u8>>>>> {
        let reads: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(*k, None)).collect();
        let txn = etcd_client::Txn::new().and_then(reads);
        let response = self
            .send_txn("get each", Idempotency::Idempotent, txn)
            .await?;
        let replies = response.op_responses();
        let answered = replies.len();
        // A missing reply must never read as "absent": that could start or stop work.
        let odd = || Error::Rejected {
            op: "get each",
            reason: format!(
                "etcd answered {} reads with {answered} replies, not all of them reads",
                keys.len()
            ),
        };
        if answered != keys.len() {
            return Err(odd());
        }
        let mut found: Vec<Option<Versioned<Vec<u8>>>> = Vec::with_capacity(keys.len());
        for reply in replies {
            let TxnOpResponse::Get(get) = reply else {
                return Err(odd());
            };
            found.push(get.kvs().first().cloned().map(raw_versioned).transpose()?);
        }
        Ok(found)
    }

    /// Reads one key and decodes its JSON value.
    ///
    /// # Guarantees
    ///
    /// Linearizable read. A value that does not decode is [`Error::Decode`] naming the key.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Versioned<T>>> {
        self.get_raw(key).await?.map(decode).transpose()
    }

    /// Lists every key under `prefix` as raw bytes, at one revision.
    ///
    /// # Guarantees
    ///
    /// The listing is one consistent snapshot: pages after the first are read at the first
    /// page's revision. If that revision gets compacted while paging, the listing starts over
    /// at a fresh revision (so it never fails for that reason, but may take longer).
    pub async fn list_raw(&self, prefix: &str) -> Result<Listing<Vec<u8>>> {
        loop {
            match self.list_raw_once(prefix).await {
                Err(Error::Compacted { .. }) => continue,
                other => return other,
            }
        }
    }

    async fn list_raw_once(&self, prefix: &str) -> Result<Listing<Vec<u8>>> {
        let mut items = Vec::new();
        let mut revision = 0;
        let mut from = prefix.as_bytes().to_vec();
        loop {
            let page = self.list_page(prefix, &from, revision).await?;
            revision = page.revision;
            items.extend(page.items);
            match page.next {
                Some(next) => from = next,
                None => return Ok(Listing { revision, items }),
            }
        }
    }

    /// One page of a prefix listing starting at key `from` (inclusive), at `revision`
    /// (0 = current). `next` is where the next page starts, if there is one.
    pub(crate) async fn list_page(&self, prefix: &str, from: &[u8], revision: i64) -> Result<Page> {
        let limit = i64::try_from(self.inner.cfg.page_size).unwrap_or(i64::MAX);
        let opts = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_limit(limit)
            .with_revision(revision);
        let mut resp = self.range("list", from, opts).await.map_err(|e| match e {
            Error::Compacted { .. } => crate::error::compacted(revision),
            e => e,
        })?;
        let rev = resp.header().map_or(revision, |h| h.revision());
        let rev = if revision > 0 { revision } else { rev };
        let more = resp.more();
        let kvs = resp.take_kvs();
        // The next page starts just after the last key of this one, by its bytes: a key that
        // is not UTF-8 is skipped below, but paging must still move past it.
        let next = match kvs.last() {
            Some(last) if more => {
                let mut key = last.key().to_vec();
                key.push(0);
                Some(key)
            }
            _ => None,
        };
        let items = kvs.into_iter().filter_map(utf8_or_skip).collect();
        Ok(Page {
            revision: rev,
            items,
            next,
        })
    }

    /// The highest mod revision of any key under `prefix` (0 when it is empty): a revision a
    /// watcher of that prefix is sure to reach, unlike the store's global revision, which
    /// writes under other prefixes of the same etcd keep moving ahead.
    pub async fn prefix_revision(&self, prefix: &str) -> Result<i64> {
        let opts = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_limit(1)
            .with_keys_only()
            .with_sort(SortTarget::Mod, SortOrder::Descend);
        let resp = self.range("prefix revision", prefix, opts).await?;
        Ok(resp
            .kvs()
            .first()
            .map_or(0, etcd_client::KeyValue::mod_revision))
    }

    /// Lists every key under `prefix` and decodes the values.
    ///
    /// # Guarantees
    ///
    /// As [`list_raw`](Self::list_raw); the first value that does not decode fails the whole
    /// call with [`Error::Decode`] naming its key.
    pub async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Listing<T>> {
        let raw = self.list_raw(prefix).await?;
        Ok(Listing {
            revision: raw.revision,
            items: raw
                .items
                .into_iter()
                .map(decode)
                .collect::<Result<Vec<_>>>()?,
        })
    }

    /// Lists every key under `prefix`, decoding each value on its own: a value that does not
    /// decode (written by another client, or by a newer Drover) is returned in
    /// [`Checked::invalid`] with its error instead of failing the listing.
    ///
    /// # Guarantees
    ///
    /// As [`list_raw`](Self::list_raw): one consistent snapshot. Every key under the prefix is
    /// in exactly one of `items` and `invalid`, so nothing reads as absent because it is bad.
    pub async fn list_checked<T: DeserializeOwned>(&self, prefix: &str) -> Result<Checked<T>> {
        let raw = self.list_raw(prefix).await?;
        let mut checked = Checked {
            revision: raw.revision,
            items: Vec::with_capacity(raw.items.len()),
            invalid: Vec::new(),
        };
        for item in raw.items {
            let (key, mod_revision) = (item.key.clone(), item.mod_revision);
            match decode(item) {
                Ok(value) => checked.items.push(value),
                Err(error) => checked.invalid.push(InvalidValue {
                    key,
                    mod_revision,
                    error: match error {
                        Error::Decode { source, .. } => source.to_string(),
                        other => other.to_string(),
                    },
                }),
            }
        }
        Ok(checked)
    }

    /// Writes raw bytes unconditionally, attached to `lease` if given. Returns the revision.
    ///
    /// # Caveats
    ///
    /// Without a lease this detaches any lease the key had. Retried on transport errors:
    /// writing the same whole value twice is harmless, but a retry may land after a concurrent
    /// writer's value; use [`compare_and_swap`](Self::compare_and_swap) when that matters.
    pub async fn put_raw(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64> {
        let mut backoff = self.backoff();
        let opts = put_options(lease);
        let resp = self
            .inner
            .pool
            .call(
                "put",
                Idempotency::Idempotent,
                self.request_timeout(),
                &mut backoff,
                |mut c| {
                    let (key, value, opts) = (key.to_owned(), value.clone(), opts.clone());
                    async move { c.put(key, value, Some(opts)).await }
                },
            )
            .await
            .map_err(|e| lease_error(e, lease))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        self.wrote("put", revision);
        Ok(revision)
    }

    /// Writes `value` as JSON unconditionally (see [`put_raw`](Self::put_raw)).
    pub async fn put<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        lease: Option<LeaseId>,
    ) -> Result<i64> {
        self.put_raw(key, encode(key, value)?, lease).await
    }

    /// Writes `value` only if `key` does not exist (compare `version == 0`).
    ///
    /// # Guarantees
    ///
    /// Of any number of concurrent creators exactly one gets `Created`.
    ///
    /// # Caveats
    ///
    /// A transport failure yields [`Error::OutcomeUnknown`]: read the key to learn whether
    /// this call created it.
    pub async fn create<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        lease: Option<LeaseId>,
    ) -> Result<CreateOutcome> {
        let bytes = encode(key, value)?;
        let txn = etcd_client::Txn::new()
            .when(vec![Compare::version(key, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(key, bytes, Some(put_options(lease)))])
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = self
            .raw_txn("create", txn)
            .await
            .map_err(|e| lease_error(e, lease))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            return Ok(CreateOutcome::Created { revision });
        }
        let mod_revision = first_range_kv(&resp).map_or(0, |kv| kv.mod_revision());
        Ok(CreateOutcome::AlreadyExists { mod_revision })
    }

    /// Replaces the value of `key` if its mod revision is still `expected_mod_revision`,
    /// keeping the key's lease. Returns `false` when another write got there first.
    ///
    /// # Guarantees
    ///
    /// Of writers racing with the same expected revision, at most one gets `true`.
    ///
    /// # Caveats
    ///
    /// `expected_mod_revision` must be that of an existing key (use [`create`](Self::create)
    /// for absent keys). A transport failure yields [`Error::OutcomeUnknown`]: re-read, then
    /// decide. The same holds for every txn.
    pub async fn compare_and_swap<T: Serialize>(
        &self,
        key: &str,
        expected_mod_revision: i64,
        value: &T,
    ) -> Result<bool> {
        let bytes = encode(key, value)?;
        let txn = etcd_client::Txn::new()
            .when(vec![Compare::mod_revision(
                key,
                CompareOp::Equal,
                expected_mod_revision,
            )])
            .and_then(vec![TxnOp::put(
                key,
                bytes,
                Some(PutOptions::new().with_ignore_lease()),
            )]);
        Ok(self.raw_txn("compare_and_swap", txn).await?.succeeded())
    }

    /// Deletes `key`. Returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self
            .delete_range("delete", key, DeleteOptions::new())
            .await?
            > 0)
    }

    /// Deletes every key under `prefix`. Returns how many there were.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64> {
        let opts = DeleteOptions::new().with_range(prefix_end(prefix));
        self.delete_range("delete_prefix", prefix, opts).await
    }

    async fn delete_range(&self, op: &'static str, key: &str, opts: DeleteOptions) -> Result<i64> {
        let mut backoff = self.backoff();
        let resp = self
            .inner
            .pool
            .call(
                op,
                Idempotency::Idempotent,
                self.request_timeout(),
                &mut backoff,
                |mut c| {
                    let (key, opts) = (key.to_owned(), opts.clone());
                    async move { c.delete(key, Some(opts)).await }
                },
            )
            .await?;
        if resp.deleted() > 0 {
            self.wrote(op, resp.header().map_or(0, |h| h.revision()));
        }
        Ok(resp.deleted())
    }

    /// Deletes `key` only if its mod revision is still `mod_revision`. Returns whether it did.
    pub async fn delete_if(&self, key: &str, mod_revision: i64) -> Result<bool> {
        let txn = etcd_client::Txn::new()
            .when(vec![Compare::mod_revision(
                key,
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then(vec![TxnOp::delete(key, None)]);
        Ok(self.raw_txn("delete_if", txn).await?.succeeded())
    }

    /// Sends one txn, at most once.
    pub(crate) async fn raw_txn(
        &self,
        op: &'static str,
        txn: etcd_client::Txn,
    ) -> Result<etcd_client::TxnResponse> {
        let response = self.send_txn(op, Idempotency::Once, txn).await?;
        if txn_wrote(&response) {
            self.wrote(op, response.header().map_or(0, |h| h.revision()));
        }
        Ok(response)
    }

    /// Sends one txn through the pool: retried when `idempotency` allows it (a read-only txn),
    /// at most once otherwise.
    async fn send_txn(
        &self,
        op: &'static str,
        idempotency: Idempotency,
        txn: etcd_client::Txn,
    ) -> Result<etcd_client::TxnResponse> {
        let mut backoff = self.backoff();
        let limit = self.inner.cfg.max_response_bytes;
        self.inner
            .pool
            .call(op, idempotency, self.request_timeout(), &mut backoff, |c| {
                let txn = txn.clone();
                // A txn of reads (a node's batched confirms) can exceed gRPC's 4 MiB
                // default decode limit, as a page of a listing can.
                let mut kv = c.kv_client().max_decoding_message_size(limit);
                async move { kv.txn(txn).await }
            })
            .await
    }

    /// Notes in the write log, if there is one, that this process created `revision`.
    fn wrote(&self, op: &'static str, revision: i64) {
        if let Some(log) = &self.inner.write_log {
            log.record(op, revision);
        }
    }
}

/// One page of a listing.
pub(crate) struct Page {
    pub revision: i64,
    pub items: Vec<Versioned<Vec<u8>>>,
    /// The key the next page starts at, as bytes.
    pub next: Option<Vec<u8>>,
}

/// A key Drover can name: keys that are not UTF-8 (only a foreign client writes those) are
/// outside every schema, so a listing or a watch passes over them, with a warning, instead of
/// failing for all the keys around them.
pub(crate) fn utf8_or_skip(kv: etcd_client::KeyValue) -> Option<Versioned<Vec<u8>>> {
    match raw_versioned(kv) {
        Ok(item) => Some(item),
        Err(error) => {
            tracing::warn!(%error, "skipping a key that is not UTF-8");
            None
        }
    }
}
