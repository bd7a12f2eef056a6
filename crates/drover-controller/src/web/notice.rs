//! [`Notice`]: what the web view's change stream tells a browser — the revision each part of
//! the view last changed at. A notice is a value, not a diff, so any number of them merge into
//! the newest one and a client that missed some loses nothing: it re-fetches what moved.

use drover_api::keys::Key;
use drover_api::Keys;
use drover_store::watcher::Event as WatchEvent;
use serde::Serialize;

/// The parts of the view a change can touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `nodes/`, `nodeinfo/`, `nodestate/`.
    Nodes,
    /// `tasks/`, `taskstate/`, `runs/`, `deadletter/`, `revisions/`, `triggers/`, `requests/`.
    Tasks,
    /// `assignments/`, `status/`.
    Instances,
    /// `events/`.
    Events,
}

/// Which part of the view `key` belongs to; `None` for keys the view does not show
/// (controller advertisements, election keys, keys outside the schema).
#[must_use]
pub fn part_of(keys: &Keys, key: &str) -> Option<Part> {
    Some(match keys.parse(key)? {
        Key::Node(_) | Key::NodeInfo(_) | Key::NodeState(_) => Part::Nodes,
        Key::Task { .. }
        | Key::TaskState { .. }
        | Key::Run { .. }
        | Key::DeadLetter { .. }
        | Key::Revision { .. }
        | Key::Trigger { .. }
        | Key::Request { .. } => Part::Tasks,
        Key::Assignment { .. } | Key::Status { .. } | Key::LegacyStatus(_) => Part::Instances,
        Key::Event { .. } => Part::Events,
        Key::Controller(_) => return None,
    })
}

/// The revision at which each part of the view last changed, and the revision the view has
/// reached. All zero before the first listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Notice {
    /// The revision the view's data reflects.
    pub revision: i64,
    /// Last change to nodes.
    pub nodes: i64,
    /// Last change to tasks, their state, runs or dead letters.
    pub tasks: i64,
    /// Last change to assignments or statuses.
    pub instances: i64,
    /// Last change to events.
    pub events: i64,
}

impl Notice {
    /// Records a change to `part` at `revision`.
    pub fn touch(&mut self, part: Part, revision: i64) {
        let slot = match part {
            Part::Nodes => &mut self.nodes,
            Part::Tasks => &mut self.tasks,
            Part::Instances => &mut self.instances,
            Part::Events => &mut self.events,
        };
        *slot = (*slot).max(revision);
        self.revision = self.revision.max(revision);
    }

    /// Takes in one watch item and says which part it touched. A finished (re-)listing
    /// touches every part (anything may have changed while the watch was away); it and the
    /// listing's items return `None`.
    pub fn observe(
        &mut self,
        keys: &Keys,
        item: &drover_store::Result<WatchEvent<Box<serde_json::value::RawValue>>>,
    ) -> Option<Part> {
        let (key, revision) = match item {
            Ok(WatchEvent::InitDone { revision }) => {
                for part in [Part::Nodes, Part::Tasks, Part::Instances, Part::Events] {
                    self.touch(part, *revision);
                }
                return None;
            }
            Ok(WatchEvent::Init) => return None,
            Ok(WatchEvent::InitApply(v)) => return part_of(keys, &v.key),
            Ok(WatchEvent::Apply(v)) => (v.key.as_str(), v.mod_revision),
            Ok(WatchEvent::Delete {
                key, mod_revision, ..
            }) => (key.as_str(), *mod_revision),
            Err(drover_store::Error::Decode {
                key, mod_revision, ..
            }) => (key.as_str(), *mod_revision),
            Err(_) => return None,
        };
        let part = part_of(keys, key);
        match part {
            Some(part) => self.touch(part, revision),
            None => self.revision = self.revision.max(revision),
        }
        part
    }

    /// The newest of `self` and `other`, part by part: merging notices loses no change.
    #[must_use]
    pub fn merge(self, other: Notice) -> Notice {
        Notice {
            revision: self.revision.max(other.revision),
            nodes: self.nodes.max(other.nodes),
            tasks: self.tasks.max(other.tasks),
            instances: self.instances.max(other.instances),
            events: self.events.max(other.events),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_store::Versioned;
    use proptest::prelude::*;

    fn put(
        key: &str,
        rev: i64,
    ) -> drover_store::Result<WatchEvent<Box<serde_json::value::RawValue>>> {
        Ok(WatchEvent::Apply(Versioned {
            key: key.into(),
            value: serde_json::value::to_raw_value(&serde_json::json!({})).expect("JSON"),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: None,
        }))
    }

    #[test]
    fn keys_land_in_their_part() {
        let k = Keys::new("/drover");
        assert_eq!(part_of(&k, "/drover/nodes/n1"), Some(Part::Nodes));
        assert_eq!(part_of(&k, "/drover/nodeinfo/n1"), Some(Part::Nodes));
        assert_eq!(part_of(&k, "/drover/tasks/default/web"), Some(Part::Tasks));
        assert_eq!(
            part_of(&k, "/drover/status/n1/default.web.0"),
            Some(Part::Instances)
        );
        assert_eq!(part_of(&k, "/drover/events/default/x1"), Some(Part::Events));
        assert_eq!(part_of(&k, "/drover/controllers/c0"), None);
        assert_eq!(part_of(&k, "/elsewhere/nodes/n1"), None);
    }

    #[test]
    fn observe_touches_the_part_and_listing_touches_all() {
        let k = Keys::new("/drover");
        let mut n = Notice::default();
        n.observe(&k, &put("/drover/nodes/n1", 5));
        assert_eq!((n.revision, n.nodes, n.tasks), (5, 5, 0));
        n.observe(&k, &put("/drover/controllers/c0", 7));
        assert_eq!((n.revision, n.nodes), (7, 5));
        n.observe(&k, &Ok(WatchEvent::InitDone { revision: 9 }));
        assert_eq!(
            n,
            Notice {
                revision: 9,
                nodes: 9,
                tasks: 9,
                instances: 9,
                events: 9
            }
        );
    }

    fn notice() -> impl Strategy<Value = Notice> {
        (0..100i64, 0..100i64, 0..100i64, 0..100i64).prop_map(|(a, b, c, d)| Notice {
            revision: a.max(b).max(c).max(d),
            nodes: a,
            tasks: b,
            instances: c,
            events: d,
        })
    }

    proptest! {
        /// Merging is order-free and never moves a part backwards, so a client that sees only
        /// the last of many coalesced notices re-fetches every part that changed.
        #[test]
        fn merge_is_commutative_and_monotone(a in notice(), b in notice(), c in notice()) {
            prop_assert_eq!(a.merge(b), b.merge(a));
            prop_assert_eq!(a.merge(b).merge(c), a.merge(b.merge(c)));
            let m = a.merge(b);
            prop_assert!(m.nodes >= a.nodes && m.tasks >= a.tasks);
            prop_assert!(m.instances >= b.instances && m.events >= b.events);
        }
    }
}
