//! Keeping any state current from a watch. A [`Sink`] is what a [`watcher`](crate::watcher())
//! of a prefix feeds (the leader's snapshot, the CLI's cluster view); [`Relisting`] feeds it,
//! building each (re-)list into a fresh sink that is swapped in whole at `InitDone`, so the
//! state is never half-listed (the reflector's rule, for any state).

use crate::error::Error;
use crate::store::Versioned;
use crate::watcher::Event;

/// State kept current from the events of one watch.
pub trait Sink {
    /// What the watch decodes values as.
    type Value;
    /// What every call needs besides the event (the key schema, say).
    type Context;

    /// An empty state of the same kind, for a (re-)list to be built in.
    fn fresh(&self, cx: &Self::Context) -> Self;
    /// A key was listed, created or changed.
    fn apply(&mut self, cx: &Self::Context, item: Versioned<Self::Value>);
    /// A key was deleted at `revision`.
    fn delete(&mut self, cx: &Self::Context, key: &str, revision: i64);
    /// The bytes under `key`, written at `revision`, are not JSON at all.
    fn not_json(&mut self, cx: &Self::Context, key: &str, revision: i64, error: serde_json::Error);
    /// A (re-)list is complete at `revision`.
    fn listed(&mut self, cx: &Self::Context, revision: i64);
}

/// What one fed event did to the live state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fed {
    /// Nothing visible yet (a re-list in progress, a transient watch failure).
    Nothing,
    /// A (re-)list was swapped in.
    Listed,
    /// `key` changed (`deleted`: it is gone).
    Changed {
        /// The key.
        key: String,
        /// Whether it was deleted.
        deleted: bool,
    },
}

/// Feeds watch events into a sink, re-lists buffered and swapped in whole.
#[derive(Debug)]
pub struct Relisting<S> {
    live: S,
    staging: Option<S>,
    listed: bool,
}

impl<S: Sink> Relisting<S> {
    /// Starts from `empty`, not yet listed.
    pub fn new(empty: S) -> Self {
        Relisting {
            live: empty,
            staging: None,
            listed: false,
        }
    }

    /// The live state: the last complete listing plus every change after it.
    pub fn live(&self) -> &S {
        &self.live
    }

    /// The live state, to be changed in place (say, revalidated).
    pub fn live_mut(&mut self) -> &mut S {
        &mut self.live
    }

    /// Whether a first listing has been swapped in.
    pub fn is_listed(&self) -> bool {
        self.listed
    }

    /// Applies one item of the watch.
    ///
    /// # Guarantees
    ///
    /// Between `Init` and `InitDone` everything goes into a fresh state; the live one changes
    /// only at `InitDone`, when the fresh one replaces it whole. A value that is not JSON is
    /// handed to the sink like any other value, never dropped.
    ///
    /// # Errors
    ///
    /// A watch failure that is not retryable, as the watcher yields it; retryable ones (the
    /// watcher already retries them) are [`Fed::Nothing`].
    pub fn feed(
        &mut self,
        cx: &S::Context,
        item: crate::Result<Event<S::Value>>,
    ) -> Result<Fed, Error> {
        let fed = match item {
            Ok(Event::Init) => {
                self.staging = Some(self.live.fresh(cx));
                Fed::Nothing
            }
            Ok(Event::InitApply(item)) => {
                self.listing(cx).apply(cx, item);
                Fed::Nothing
            }
            Ok(Event::InitDone { revision }) => {
                let mut listed = match self.staging.take() {
                    Some(listed) => listed,
                    None => self.live.fresh(cx),
                };
                listed.listed(cx, revision);
                self.live = listed;
                self.listed = true;
                Fed::Listed
            }
            Ok(Event::Apply(item)) => {
                let key = item.key.clone();
                self.live.apply(cx, item);
                Fed::Changed {
                    key,
                    deleted: false,
                }
            }
            Ok(Event::Delete {
                key, mod_revision, ..
            }) => {
                self.live.delete(cx, &key, mod_revision);
                Fed::Changed { key, deleted: true }
            }
            Err(Error::Decode {
                key,
                mod_revision,
                source,
            }) => match self.staging.as_mut() {
                Some(staging) => {
                    staging.not_json(cx, &key, mod_revision, source);
                    Fed::Nothing
                }
                None => {
                    self.live.not_json(cx, &key, mod_revision, source);
                    Fed::Changed {
                        key,
                        deleted: false,
                    }
                }
            },
            Err(error) if error.retryable() => Fed::Nothing,
            Err(error) => return Err(error),
        };
        Ok(fed)
    }

    /// The state a listing goes into: the fresh one (made if `Init` was missed).
    fn listing(&mut self, cx: &S::Context) -> &mut S {
        let live = &self.live;
        self.staging.get_or_insert_with(|| live.fresh(cx))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A sink that records values as strings, `!` for bytes that are not JSON.
    #[derive(Debug, Default, PartialEq)]
    struct Map(BTreeMap<String, String>, i64);

    impl Sink for Map {
        type Value = u32;
        type Context = ();
        fn fresh(&self, (): &()) -> Self {
            Map::default()
        }
        fn apply(&mut self, (): &(), item: Versioned<u32>) {
            self.0.insert(item.key, item.value.to_string());
        }
        fn delete(&mut self, (): &(), key: &str, _: i64) {
            self.0.remove(key);
        }
        fn not_json(&mut self, (): &(), key: &str, _: i64, _: serde_json::Error) {
            self.0.insert(key.to_string(), "!".into());
        }
        fn listed(&mut self, (): &(), revision: i64) {
            self.1 = revision;
        }
    }

    fn v(key: &str, value: u32) -> crate::Result<Event<u32>> {
        Ok(Event::InitApply(Versioned {
            key: key.into(),
            value,
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: None,
        }))
    }

    fn not_json(key: &str) -> crate::Result<Event<u32>> {
        let source = serde_json::from_slice::<u32>(b"x").unwrap_err();
        Err(Error::Decode {
            key: key.into(),
            mod_revision: 2,
            source,
        })
    }

    #[test]
    fn a_relist_is_swapped_in_whole_and_values_that_are_not_json_are_kept() {
        let mut r = Relisting::new(Map::default());
        r.feed(&(), Ok(Event::Init)).unwrap();
        r.feed(&(), v("/a", 1)).unwrap();
        assert!(!r.is_listed());
        r.feed(&(), not_json("/b")).unwrap();
        assert_eq!(
            r.feed(&(), Ok(Event::InitDone { revision: 3 })).unwrap(),
            Fed::Listed
        );
        assert_eq!(r.live().0.len(), 2);
        assert_eq!(r.live().0["/b"], "!");

        // A re-list: the live state stays whole until its InitDone.
        r.feed(&(), Ok(Event::Init)).unwrap();
        r.feed(&(), v("/c", 3)).unwrap();
        assert_eq!(r.live().0.len(), 2, "not half-listed");
        r.feed(&(), Ok(Event::InitDone { revision: 9 })).unwrap();
        assert_eq!(
            r.live(),
            &Map([("/c".to_string(), "3".to_string())].into(), 9)
        );

        let fed = r
            .feed(
                &(),
                Ok(Event::Delete {
                    key: "/c".into(),
                    mod_revision: 10,
                    prev: None,
                }),
            )
            .unwrap();
        assert_eq!(
            fed,
            Fed::Changed {
                key: "/c".into(),
                deleted: true
            }
        );
        assert!(r.live().0.is_empty());
    }
}
