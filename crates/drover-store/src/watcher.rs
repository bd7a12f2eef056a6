//! The watcher: list a prefix at a revision, then watch from the next one, as an explicit state
//! machine (after kube-runtime's `watcher.rs`), re-listing when the history it needs was
//! compacted and resuming after transport failures without losing an event.

use std::collections::VecDeque;

use etcd_client::{EventType, WatchOptions, WatchStream};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::backoff::Backoff;
use crate::codec::{decode, prefix_end, raw_versioned};
use crate::error::{classify, describe, Class, Error, Result};
use crate::pool::{AuthFailure, Picked};
use crate::store::{Store, Versioned};

/// What a watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<T> {
    /// A (re-)list starts: forget what you knew once `InitDone` arrives.
    Init,
    /// An object that exists at the listing's revision.
    InitApply(Versioned<T>),
    /// The listing is complete at `revision`; events from `revision + 1` follow.
    InitDone {
        /// The revision of the listing.
        revision: i64,
    },
    /// An object was created or changed.
    Apply(Versioned<T>),
    /// An object was deleted.
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the deletion.
        mod_revision: i64,
        /// The value before deletion, when etcd still had it and it decodes.
        prev: Option<Versioned<T>>,
    },
}

/// The watcher's states; [`step`] moves from one to the next.
enum State {
    /// Nothing known: the next step announces a (re-)list.
    Empty,
    /// Listing page by page at one revision (0 until the first page fixed it).
    InitListing {
        revision: i64,
        from: Vec<u8>,
        buffer: VecDeque<Versioned<Vec<u8>>>,
        done: bool,
    },
    /// Everything up to `revision` was reported; a watch from `revision + 1` must be opened.
    InitListed { revision: i64 },
    /// Watching; `revision` is the last one whose events were all queued or reported.
    Watching {
        conn: Box<WatchConn>,
        revision: i64,
        pending: VecDeque<etcd_client::Event>,
    },
}

struct Ctx {
    store: Store,
    prefix: String,
    backoff: Backoff,
}

/// Watches every key under `prefix`, yielding typed events.
///
/// # Guarantees
///
/// - Starts with `Init`, `InitApply` for each existing key, `InitDone { revision }`, then
///   `Apply`/`Delete` for every change after `revision`, in revision order.
/// - Never loses an event: after a transport failure, an etcd restart or a lost member it
///   backs off and resumes from the last revision it reported, on any live endpoint.
/// - When the revision it needs was compacted it re-lists, emitting `Init … InitDone` again;
///   a consumer that rebuilds its state at `InitDone` (see [`crate::reflector`]) ends correct.
/// - A value that does not decode is an `Err` item naming the key; the stream continues.
/// - The stream never ends; drop it to stop watching.
///
/// # Caveats
///
/// Transient failures are retried forever (with backoff) and only logged, not yielded.
/// A key whose new value fails to decode keeps its old value in a cache built from the stream.
pub fn watcher<T>(store: Store, prefix: impl Into<String>) -> WatchEvents<T>
where
    T: DeserializeOwned + Send + 'static,
{
    let backoff = store.backoff();
    let ctx = Ctx {
        store,
        prefix: prefix.into(),
        backoff,
    };
    futures::stream::unfold((ctx, State::Empty), |(mut ctx, state)| async move {
        let (item, next) = step(&mut ctx, state).await;
        Some((item, (ctx, next)))
    })
    .boxed()
}

/// The stream [`watcher()`] returns: endless, `Send`, `'static`.
pub type WatchEvents<T> = BoxStream<'static, Result<Event<T>>>;

/// Advances the state machine until it has an item to yield.
///
/// Listing, opening a watch and marking an endpoint dead are boxed: a watcher lives as long as
/// what it feeds (one per hollow node), so its pending step should be no larger than the wait
/// for the next watch message.
async fn step<T: DeserializeOwned>(ctx: &mut Ctx, mut state: State) -> (Result<Event<T>>, State) {
    loop {
        state = match state {
            State::Empty => {
                let next = State::InitListing {
                    revision: 0,
                    from: ctx.prefix.clone().into_bytes(),
                    buffer: VecDeque::new(),
                    done: false,
                };
                return (Ok(Event::Init), next);
            }
            State::InitListing {
                revision,
                from,
                mut buffer,
                done,
            } => {
                if let Some(raw) = buffer.pop_front() {
                    let item = decode(raw).map(Event::InitApply);
                    let next = State::InitListing {
                        revision,
                        from,
                        buffer,
                        done,
                    };
                    return (item, next);
                }
                if done {
                    return (
                        Ok(Event::InitDone { revision }),
                        State::InitListed { revision },
                    );
                }
                match Box::pin(ctx.store.list_page(&ctx.prefix, &from, revision)).await {
                    Ok(page) => {
                        ctx.backoff.reset();
                        State::InitListing {
                            revision: page.revision,
                            done: page.next.is_none(),
                            from: page.next.unwrap_or_default(),
                            buffer: page.items.into(),
                        }
                    }
                    Err(Error::Compacted { .. }) => {
                        tracing::info!(prefix = %ctx.prefix, revision, "listing revision compacted; re-listing");
                        State::Empty
                    }
                    Err(error) => {
                        let wait = ctx.backoff.next_wait_forever();
                        tracing::warn!(prefix = %ctx.prefix, %error, ?wait, "list failed; retrying");
                        tokio::time::sleep(wait).await;
                        State::InitListing {
                            revision,
                            from,
                            buffer,
                            done,
                        }
                    }
                }
            }
            State::InitListed { revision } => {
                let end = prefix_end(&ctx.prefix);
                match Box::pin(open_watch(&ctx.store, &ctx.prefix, Some(end), revision + 1)).await {
                    Ok(conn) => State::Watching {
                        conn: Box::new(conn),
                        revision,
                        pending: VecDeque::new(),
                    },
                    Err(error) => {
                        let wait = ctx.backoff.next_wait_forever();
                        tracing::warn!(prefix = %ctx.prefix, %error, ?wait, "watch failed to open; retrying");
                        tokio::time::sleep(wait).await;
                        State::InitListed { revision }
                    }
                }
            }
            State::Watching {
                mut conn,
                mut revision,
                mut pending,
            } => {
                if let Some(ev) = pending.pop_front() {
                    // A key that is not UTF-8 is outside every schema: passed over, like in
                    // a listing, instead of surfacing as an error for the whole watch.
                    if ev
                        .kv()
                        .is_some_and(|kv| std::str::from_utf8(kv.key()).is_err())
                    {
                        tracing::warn!(prefix = %ctx.prefix, "skipping a change of a key that is not UTF-8");
                        state = State::Watching {
                            conn,
                            revision,
                            pending,
                        };
                        continue;
                    }
                    let item = convert(&ev);
                    let next = State::Watching {
                        conn,
                        revision,
                        pending,
                    };
                    return (item, next);
                }
                match conn.next().await {
                    WatchMessage::Events(events) => {
                        ctx.backoff.reset();
                        // A revision's events always arrive in one response, so after queueing
                        // them all, the watch may resume after the last one.
                        if let Some(rev) = events
                            .last()
                            .and_then(|e| e.kv())
                            .map(|kv| kv.mod_revision())
                        {
                            revision = rev;
                        }
                        pending.extend(events);
                        State::Watching {
                            conn,
                            revision,
                            pending,
                        }
                    }
                    WatchMessage::Compacted(compact_revision) => {
                        tracing::info!(prefix = %ctx.prefix, revision, compact_revision, "watch revision compacted; re-listing");
                        State::Empty
                    }
                    WatchMessage::Broken(reason) => {
                        let wait = ctx.backoff.next_wait_forever();
                        tracing::warn!(prefix = %ctx.prefix, %reason, revision, ?wait, "watch broke; resuming");
                        Box::pin(conn.fail(&ctx.store, &reason)).await;
                        tokio::time::sleep(wait).await;
                        State::InitListed { revision }
                    }
                    WatchMessage::Denied(reason) => {
                        // The member is fine; the client's token may have expired (after a
                        // failover to a member it last used long ago). A fresh one fixes that;
                        // a role without read access keeps being denied, warned each time.
                        let wait = ctx.backoff.next_wait_forever();
                        tracing::warn!(prefix = %ctx.prefix, %reason, revision, ?wait, "watch denied; refreshing the auth token and resuming");
                        Box::pin(conn.refresh_token(&ctx.store)).await;
                        tokio::time::sleep(wait).await;
                        State::InitListed { revision }
                    }
                }
            }
        };
    }
}

fn convert<T: DeserializeOwned>(ev: &etcd_client::Event) -> Result<Event<T>> {
    let Some(kv) = ev.kv() else {
        return Err(Error::Rejected {
            op: "watch",
            reason: "event without a key-value".into(),
        });
    };
    match ev.event_type() {
        EventType::Put => raw_versioned(kv.clone()).and_then(decode).map(Event::Apply),
        EventType::Delete => {
            let key = raw_versioned(kv.clone())?.key;
            let prev = ev
                .prev_kv()
                .map(|p| raw_versioned(p.clone()).and_then(decode));
            let prev = match prev {
                Some(Ok(v)) => Some(v),
                Some(Err(error)) => {
                    tracing::warn!(%key, %error, "previous value of a deleted key does not decode");
                    None
                }
                None => None,
            };
            Ok(Event::Delete {
                key,
                mod_revision: kv.mod_revision(),
                prev,
            })
        }
    }
}

/// An open etcd watch and the endpoint it runs on.
pub(crate) struct WatchConn {
    stream: WatchStream,
    picked: Picked,
}

/// What one read from a watch gave.
pub(crate) enum WatchMessage {
    /// Events (possibly none, e.g. the `created` notice).
    Events(Vec<etcd_client::Event>),
    /// The start revision was compacted; etcd reports the oldest revision left.
    Compacted(i64),
    /// The watch ended or failed; resume elsewhere.
    Broken(String),
    /// etcd canceled the watch at creation for its auth: the token this client holds expired
    /// ("invalid auth token"; etcd checks it when a watch is created, not on an open stream),
    /// or the user's role may not read the range ("permission denied").
    Denied(String),
}

impl WatchConn {
    /// The next message.
    pub(crate) async fn next(&mut self) -> WatchMessage {
        match self.stream.message().await {
            Ok(Some(resp)) if resp.canceled() => {
                let reason = format!("watch canceled: {}", resp.cancel_reason());
                if resp.compact_revision() > 0 {
                    WatchMessage::Compacted(resp.compact_revision())
                } else if is_denial(resp.cancel_reason()) {
                    WatchMessage::Denied(reason)
                } else {
                    WatchMessage::Broken(reason)
                }
            }
            Ok(Some(resp)) => WatchMessage::Events(resp.events().to_vec()),
            Ok(None) => WatchMessage::Broken("watch stream closed".into()),
            Err(e) if is_denial(&describe(&e)) => WatchMessage::Denied(describe(&e)),
            Err(e) => WatchMessage::Broken(describe(&e)),
        }
    }

    /// Marks the endpoint dead after the watch broke in transport.
    pub(crate) async fn fail(&self, store: &Store, reason: &str) {
        store.inner.pool.mark_dead(self.picked.index, reason).await;
    }

    /// Fetches a fresh auth token for the endpoint's client after a denial.
    pub(crate) async fn refresh_token(&self, store: &Store) {
        store.inner.pool.refresh_token(&self.picked).await;
    }
}

/// Whether etcd's reason for ending a watch is about auth: "permission denied" when the
/// stream's token no longer names a user, "invalid auth token" on some versions.
fn is_denial(reason: &str) -> bool {
    reason.contains("permission denied") || reason.contains("invalid auth token")
}

/// Opens a watch on `key` (up to `range_end` if given) from `start_revision`, with previous
/// values, on a live endpoint.
pub(crate) async fn open_watch(
    store: &Store,
    key: &str,
    range_end: Option<Vec<u8>>,
    start_revision: i64,
) -> Result<WatchConn> {
    let p = store.inner.pool.pick();
    match store.inner.pool.authenticate(&p).await {
        Ok(()) => {}
        Err(AuthFailure::Refused(error)) => return Err(error),
        Err(AuthFailure::Down(reason)) => {
            store.inner.pool.mark_dead(p.index, &reason).await;
            return Err(Error::Unavailable {
                op: "watch",
                endpoint: p.url,
                reason,
            });
        }
        Err(AuthFailure::Transient(reason)) => {
            return Err(Error::Unavailable {
                op: "watch",
                endpoint: p.url,
                reason,
            })
        }
    }
    let mut opts = WatchOptions::new()
        .with_start_revision(start_revision)
        .with_prev_key();
    if let Some(end) = range_end {
        opts = opts.with_range(end);
    }
    // One watch response carries a whole transaction's events, which can exceed gRPC's 4 MiB
    // default decode limit when specs are large.
    let mut client = p
        .client
        .watch_client()
        .max_decoding_message_size(store.config().max_response_bytes);
    let timeout = store.request_timeout();
    let res = tokio::time::timeout(timeout, client.watch(key, Some(opts))).await;
    let reason = match res {
        Ok(Ok(stream)) => {
            store.inner.pool.mark_alive(p.index);
            tracing::debug!(endpoint = %p.url, key, start_revision, "watch opened");
            return Ok(WatchConn { stream, picked: p });
        }
        Ok(Err(e)) => {
            if classify(&e) == Class::EndpointDown {
                store.inner.pool.mark_dead(p.index, &describe(&e)).await;
            }
            describe(&e)
        }
        Err(_) => {
            let reason = format!("no answer within {timeout:?}");
            store.inner.pool.mark_dead(p.index, &reason).await;
            reason
        }
    };
    Err(Error::Unavailable {
        op: "watch",
        endpoint: p.url,
        reason,
    })
}
