//! [`RecentEvents`]: the newest events under the prefix, at most [`RECENT_EVENTS`] of them,
//! kept from the mirror's watch for the web view (the planner's snapshot ignores events).
//! A re-list is built aside and swapped in whole, like every other reader of the watch.

use std::collections::{BTreeMap, HashMap};

use drover_api::keys::Key;
use drover_api::{Event, Keys};
use drover_store::watcher::Event as WatchEvent;

/// How many events the view keeps: enough for a page of recent history, bounded whatever
/// the number of events in etcd.
pub const RECENT_EVENTS: usize = 500;

/// One kept event: a decoded one, or the key's decode error (shown as Invalid).
#[derive(Debug, Clone, PartialEq)]
pub enum Kept {
    /// A decoded event.
    Event(Event),
    /// A value under `events/` that does not decode.
    Invalid(String),
}

/// The newest events by mod revision.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    by_revision: BTreeMap<(i64, String), Kept>,
    revision_of: HashMap<String, i64>,
}

impl Ring {
    fn insert(&mut self, key: &str, revision: i64, kept: Kept) {
        self.remove(key);
        self.revision_of.insert(key.to_string(), revision);
        self.by_revision.insert((revision, key.to_string()), kept);
        while self.by_revision.len() > RECENT_EVENTS {
            if let Some(((_, old), _)) = self.by_revision.pop_first() {
                self.revision_of.remove(&old);
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(rev) = self.revision_of.remove(key) {
            self.by_revision.remove(&(rev, key.to_string()));
        }
    }

    /// How many are kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_revision.len()
    }

    /// Whether none is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_revision.is_empty()
    }

    /// Newest first, with their keys.
    pub fn newest_first(&self) -> impl Iterator<Item = (&str, &Kept)> + '_ {
        self.by_revision
            .iter()
            .rev()
            .map(|((_, key), kept)| (key.as_str(), kept))
    }
}

/// The ring, and the one being built while a (re-)list runs.
#[derive(Debug, Default)]
pub struct RecentEvents {
    live: Ring,
    listing: Option<Ring>,
}

impl RecentEvents {
    /// What the view shows.
    #[must_use]
    pub fn live(&self) -> &Ring {
        &self.live
    }

    /// Takes in one watch item (every kind; only `events/` keys are kept).
    pub fn observe(
        &mut self,
        keys: &Keys,
        item: &drover_store::Result<WatchEvent<Box<serde_json::value::RawValue>>>,
    ) {
        let is_event = |key: &str| matches!(keys.parse(key), Some(Key::Event { .. }));
        match item {
            Ok(WatchEvent::Init) => self.listing = Some(Ring::default()),
            Ok(WatchEvent::InitDone { .. }) => {
                if let Some(ring) = self.listing.take() {
                    self.live = ring;
                }
            }
            Ok(WatchEvent::InitApply(v) | WatchEvent::Apply(v)) if is_event(&v.key) => {
                let kept = match serde_json::from_str::<Event>(v.value.get()) {
                    Ok(event) => Kept::Event(event),
                    Err(error) => Kept::Invalid(error.to_string()),
                };
                let listing = matches!(item, Ok(WatchEvent::InitApply(_)));
                self.target(listing).insert(&v.key, v.mod_revision, kept);
            }
            Ok(WatchEvent::Delete { key, .. }) if is_event(key) => self.live.remove(key),
            Err(drover_store::Error::Decode {
                key,
                mod_revision,
                source,
                ..
            }) if is_event(key) => {
                let listing = self.listing.is_some();
                self.target(listing)
                    .insert(key, *mod_revision, Kept::Invalid(source.to_string()));
            }
            _ => {}
        }
    }

    fn target(&mut self, listing: bool) -> &mut Ring {
        match (&mut self.listing, listing) {
            (Some(ring), true) => ring,
            _ => &mut self.live,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_store::Versioned;

    fn item(
        key: &str,
        rev: i64,
        value: serde_json::Value,
    ) -> Versioned<Box<serde_json::value::RawValue>> {
        Versioned {
            key: key.into(),
            value: serde_json::value::to_raw_value(&value).expect("JSON"),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: None,
        }
    }

    fn event(reason: &str) -> serde_json::Value {
        serde_json::json!({"time": "2026-01-01T00:00:00Z", "namespace": "default", "kind": "Task",
            "name": "web", "reason": reason, "message": "m", "source": "controller"})
    }

    #[test]
    fn keeps_the_newest_bounded_and_shows_bad_values_as_invalid() {
        let k = Keys::new("/drover");
        let mut r = RecentEvents::default();
        for i in 0..(RECENT_EVENTS as i64 + 20) {
            let key = format!("/drover/events/default/e{i:05}");
            r.observe(
                &k,
                &Ok(WatchEvent::Apply(item(&key, i + 1, event("Scheduled")))),
            );
        }
        assert_eq!(r.live().len(), RECENT_EVENTS);
        let bad = item("/drover/events/default/zz", 10_000, serde_json::json!([1]));
        r.observe(&k, &Ok(WatchEvent::Apply(bad)));
        let (key, first) = r.live().newest_first().next().expect("one");
        assert_eq!(key, "/drover/events/default/zz");
        assert!(matches!(first, Kept::Invalid(_)));
        let key = key.to_string();
        // Other keys are not events.
        r.observe(
            &k,
            &Ok(WatchEvent::Apply(item(
                "/drover/nodes/n1",
                20_000,
                event("x"),
            ))),
        );
        assert_eq!(
            r.live().newest_first().next().map(|(k, _)| k),
            Some(key.as_str())
        );
    }

    #[test]
    fn a_relist_is_swapped_in_whole_and_deletes_remove() {
        let k = Keys::new("/drover");
        let mut r = RecentEvents::default();
        r.observe(
            &k,
            &Ok(WatchEvent::Apply(item(
                "/drover/events/default/a",
                1,
                event("A"),
            ))),
        );
        r.observe(&k, &Ok(WatchEvent::Init));
        r.observe(
            &k,
            &Ok(WatchEvent::InitApply(item(
                "/drover/events/default/b",
                5,
                event("B"),
            ))),
        );
        // Until the listing is done the old ring is shown.
        assert_eq!(
            r.live().newest_first().next().map(|(k, _)| k),
            Some("/drover/events/default/a")
        );
        r.observe(&k, &Ok(WatchEvent::InitDone { revision: 5 }));
        assert_eq!(r.live().len(), 1);
        assert_eq!(
            r.live().newest_first().next().map(|(k, _)| k),
            Some("/drover/events/default/b")
        );
        r.observe(
            &k,
            &Ok(WatchEvent::Delete {
                key: "/drover/events/default/b".into(),
                mod_revision: 6,
                prev: None,
            }),
        );
        assert!(r.live().is_empty());
    }
}
