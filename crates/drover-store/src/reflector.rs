//! The reflector: a local cache fed by a [`watcher`](crate::watcher()) stream, with one writer
//! and many readers (after kube-runtime's `reflector/store.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::store::Versioned;
use crate::watcher::Event;

/// The writer went away, so a reader's wait can never finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the reflector's writer was dropped")]
pub struct WriterDropped;

type Items<T> = BTreeMap<String, Arc<Versioned<T>>>;

struct Cache<T> {
    items: Items<T>,
    revision: i64,
}

/// Readiness, revision and listings so far, published to readers on every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    ready: bool,
    revision: i64,
    listings: u64,
}

/// The single writer of a cache: applies watcher events. Deliberately not `Clone`.
pub struct Writer<T> {
    cache: Arc<RwLock<Cache<T>>>,
    /// The state being rebuilt between `Init` and `InitDone`.
    buffer: Option<Items<T>>,
    progress: watch::Sender<Progress>,
}

/// A cheap, cloneable read handle on the cache.
pub struct Reader<T> {
    cache: Arc<RwLock<Cache<T>>>,
    progress: watch::Receiver<Progress>,
}

impl<T> Clone for Reader<T> {
    fn clone(&self) -> Self {
        Reader {
            cache: self.cache.clone(),
            progress: self.progress.clone(),
        }
    }
}

/// A new, empty, not-ready cache: its reader and its one writer.
pub fn store<T>() -> (Reader<T>, Writer<T>) {
    let cache = Arc::new(RwLock::new(Cache {
        items: BTreeMap::new(),
        revision: 0,
    }));
    let (tx, rx) = watch::channel(Progress {
        ready: false,
        revision: 0,
        listings: 0,
    });
    (
        Reader {
            cache: cache.clone(),
            progress: rx,
        },
        Writer {
            cache,
            buffer: None,
            progress: tx,
        },
    )
}

impl<T> Writer<T> {
    /// A reader of this writer's cache.
    pub fn reader(&self) -> Reader<T> {
        Reader {
            cache: self.cache.clone(),
            progress: self.progress.subscribe(),
        }
    }

    /// `key` holds a value that does not decode. During a (re-)list the key keeps, in the
    /// listing being built, what the cache held for it before (nothing if it held nothing);
    /// outside a listing the cache is left as it is, which keeps the previous value anyway.
    pub fn keep_undecodable(&mut self, key: &str) {
        let Some(buffer) = self.buffer.as_mut() else {
            return;
        };
        if let Some(previous) = read(&self.cache).items.get(key).cloned() {
            buffer.insert(key.to_string(), previous);
        }
    }

    /// Applies one event.
    ///
    /// # Guarantees
    ///
    /// A (re-)list is buffered from `Init` and swapped in whole at `InitDone`, so readers see
    /// either the old state or the new one, never a half-listed mix. The cache becomes ready
    /// at the first `InitDone`.
    pub fn apply(&mut self, event: &Event<T>)
    where
        T: Clone,
    {
        match event {
            Event::Init => self.buffer = Some(BTreeMap::new()),
            Event::InitApply(v) => {
                self.buffer
                    .get_or_insert_with(BTreeMap::new)
                    .insert(v.key.clone(), Arc::new(v.clone()));
            }
            Event::InitDone { revision } => {
                let items = self.buffer.take().unwrap_or_default();
                let mut cache = write(&self.cache);
                cache.items = items;
                cache.revision = *revision;
                drop(cache);
                self.progress.send_modify(|p| {
                    *p = Progress {
                        ready: true,
                        revision: *revision,
                        listings: p.listings + 1,
                    }
                });
            }
            Event::Apply(v) => {
                let mut cache = write(&self.cache);
                cache.items.insert(v.key.clone(), Arc::new(v.clone()));
                cache.revision = cache.revision.max(v.mod_revision);
                let revision = cache.revision;
                drop(cache);
                self.publish(revision);
            }
            Event::Delete {
                key, mod_revision, ..
            } => {
                let mut cache = write(&self.cache);
                cache.items.remove(key);
                cache.revision = cache.revision.max(*mod_revision);
                let revision = cache.revision;
                drop(cache);
                self.publish(revision);
            }
        }
    }

    fn publish(&self, revision: i64) {
        self.progress.send_modify(|p| {
            p.ready = true;
            p.revision = revision;
        });
    }
}

impl<T> Reader<T> {
    /// The object at `key`, if cached.
    pub fn get(&self, key: &str) -> Option<Arc<Versioned<T>>> {
        read(&self.cache).items.get(key).cloned()
    }

    /// Every cached object, sorted by key.
    pub fn list(&self) -> Vec<Arc<Versioned<T>>> {
        read(&self.cache).items.values().cloned().collect()
    }

    /// How many objects are cached.
    pub fn len(&self) -> usize {
        read(&self.cache).items.len()
    }

    /// Whether the cache holds no object.
    pub fn is_empty(&self) -> bool {
        read(&self.cache).items.is_empty()
    }

    /// The revision the cache reflects: the listing's, or the latest event's.
    pub fn revision(&self) -> i64 {
        read(&self.cache).revision
    }

    /// How many (re-)listings were swapped in so far: 1 after the first, one more per re-list.
    pub fn listings(&self) -> u64 {
        self.progress.borrow().listings
    }

    /// Whether the first listing was applied.
    pub fn is_ready(&self) -> bool {
        self.progress.borrow().ready
    }

    /// Waits until the first listing was applied.
    pub async fn wait_until_ready(&self) -> Result<(), WriterDropped> {
        let mut rx = self.progress.clone();
        rx.wait_for(|p| p.ready)
            .await
            .map(|_| ())
            .map_err(|_| WriterDropped)
    }

    /// Waits until the cache reflects at least `revision`.
    ///
    /// # Caveats
    ///
    /// Only events under the watched prefix move the revision: wait for the revision of a
    /// write under that prefix.
    pub async fn wait_until_revision(&self, revision: i64) -> Result<(), WriterDropped> {
        let mut rx = self.progress.clone();
        rx.wait_for(|p| p.ready && p.revision >= revision)
            .await
            .map(|_| ())
            .map_err(|_| WriterDropped)
    }
}

/// Feeds every successful event of `stream` into `writer`, passing all items through.
///
/// # Guarantees
///
/// A value that does not decode never reads as absent: on the live watch the cache keeps the
/// key's previous value, and during a (re-)list the key keeps what the cache held for it
/// before ([`Writer::keep_undecodable`]), so a foreign write met by a re-list cannot make a
/// reader conclude the key is gone (an agent would stop the copy it runs for it).
pub fn reflector<T, S>(mut writer: Writer<T>, stream: S) -> impl Stream<Item = S::Item>
where
    T: Clone,
    S: Stream<Item = crate::Result<Event<T>>>,
{
    stream.map(move |item| {
        match &item {
            Ok(event) => writer.apply(event),
            Err(crate::Error::Decode { key, .. }) => writer.keep_undecodable(key),
            Err(_) => {}
        }
        item
    })
}

fn read<T>(lock: &RwLock<Cache<T>>) -> RwLockReadGuard<'_, Cache<T>> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<Cache<T>>) -> RwLockWriteGuard<'_, Cache<T>> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(key: &str, value: u32, rev: i64) -> Versioned<u32> {
        Versioned {
            key: key.into(),
            value,
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: None,
        }
    }

    #[test]
    fn relist_is_swapped_in_whole() {
        let (reader, mut writer) = store::<u32>();
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(v("/a", 1, 2)));
        assert!(!reader.is_ready());
        assert_eq!(reader.len(), 0, "nothing visible before InitDone");
        writer.apply(&Event::InitDone { revision: 5 });
        assert!(reader.is_ready());
        assert_eq!(reader.revision(), 5);
        assert_eq!(reader.listings(), 1);
        assert_eq!(reader.get("/a").map(|x| x.value), Some(1));

        writer.apply(&Event::Apply(v("/b", 2, 6)));
        writer.apply(&Event::Delete {
            key: "/a".into(),
            mod_revision: 7,
            prev: None,
        });
        assert_eq!(reader.revision(), 7);
        assert_eq!(
            reader
                .list()
                .iter()
                .map(|x| x.key.clone())
                .collect::<Vec<_>>(),
            ["/b"]
        );

        // A re-list keeps the old state visible until it completes.
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(v("/c", 3, 9)));
        assert!(reader.get("/b").is_some());
        assert_eq!(
            reader.listings(),
            1,
            "a re-list counts once it is swapped in"
        );
        writer.apply(&Event::InitDone { revision: 10 });
        assert_eq!(reader.listings(), 2);
        assert!(reader.get("/b").is_none());
        assert!(reader.get("/c").is_some());
    }

    fn undecodable(key: &str) -> crate::Error {
        let source = serde_json::from_str::<u32>("{not json").expect_err("not json");
        crate::Error::Decode {
            key: key.into(),
            mod_revision: 9,
            source,
        }
    }

    #[tokio::test]
    async fn a_relist_keeps_what_the_cache_held_for_a_key_whose_new_value_does_not_decode() {
        use futures::StreamExt;
        let (reader, writer) = store::<u32>();
        // First listing: /a and /b decode. Then a foreign writer overwrites /a with bytes
        // that do not decode, and a re-list (after a compaction, say) meets them.
        let items: Vec<crate::Result<Event<u32>>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(v("/a", 1, 2))),
            Ok(Event::InitApply(v("/b", 2, 3))),
            Ok(Event::InitDone { revision: 3 }),
            Ok(Event::Init),
            Err(undecodable("/a")),
            Err(undecodable("/never-held")),
            Ok(Event::InitApply(v("/b", 2, 3))),
            Ok(Event::InitDone { revision: 9 }),
        ];
        let passed: Vec<_> = reflector(writer, futures::stream::iter(items))
            .collect()
            .await;
        assert_eq!(passed.len(), 9, "every item passes through");
        assert_eq!(reader.listings(), 2);
        assert_eq!(
            reader.get("/a").map(|x| x.value),
            Some(1),
            "a value that does not decode must not read as absent: that would stop its copy"
        );
        assert!(reader.get("/never-held").is_none(), "nothing is made up");
        assert_eq!(reader.get("/b").map(|x| x.value), Some(2));
    }

    #[tokio::test]
    async fn waits_for_readiness_and_revision() {
        let (reader, mut writer) = store::<u32>();
        let r = reader.clone();
        let waiter = tokio::spawn(async move { r.wait_until_revision(3).await });
        writer.apply(&Event::Init);
        writer.apply(&Event::InitDone { revision: 1 });
        reader.wait_until_ready().await.expect("ready");
        assert!(!waiter.is_finished());
        writer.apply(&Event::Apply(v("/x", 1, 3)));
        waiter.await.expect("join").expect("revision reached");
        drop(writer);
        assert_eq!(reader.wait_until_revision(100).await, Err(WriterDropped));
    }
}
