//! The status keys of one instance, and which of them the planner reads: an instance may have
//! one under its assigned node, one under another node (stray), and a legacy one from before
//! statuses moved under their node.

use std::sync::Arc;

use drover_api::instance::InstanceStatus;
use drover_store::Versioned;

/// Which key a status is under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatusKey {
    /// `status/<node>/<instance>`.
    Node(String),
    /// `status/<instance>`, from before statuses moved under their node.
    Legacy,
}

/// The status keys one instance has, each with its value (`None`: it does not decode), in key
/// order. Almost always one: a sorted `Vec` holds it in one small allocation, where a
/// `BTreeMap` allocates a node for eleven entries (about 4 KB per instance, 400 MB of a
/// leader at 100,000 instances).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeldStatuses(Vec<(StatusKey, Option<Arc<Versioned<InstanceStatus>>>)>);

impl HeldStatuses {
    fn position(&self, at: &StatusKey) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(at))
    }

    /// Puts `entry` under `at`, replacing what was there.
    pub fn insert(&mut self, at: StatusKey, entry: Option<Arc<Versioned<InstanceStatus>>>) {
        match self.position(&at) {
            Ok(i) => self.0[i].1 = entry,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (at, entry));
            }
        }
    }

    /// Removes `at`.
    pub fn remove(&mut self, at: &StatusKey) {
        if let Ok(i) = self.position(at) {
            self.0.remove(i);
            self.0.shrink_to_fit();
        }
    }

    /// The entry under `at`, if the instance has that key.
    pub fn get(&self, at: &StatusKey) -> Option<&Option<Arc<Versioned<InstanceStatus>>>> {
        self.position(at).ok().map(|i| &self.0[i].1)
    }

    /// Whether the instance has the key `at`.
    pub fn contains_key(&self, at: &StatusKey) -> bool {
        self.position(at).is_ok()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &StatusKey> + '_ {
        self.0.iter().map(|(k, _)| k)
    }

    /// The entries, in key order.
    pub fn values(&self) -> impl Iterator<Item = &Option<Arc<Versioned<InstanceStatus>>>> + '_ {
        self.0.iter().map(|(_, v)| v)
    }

    /// Keys and entries, in key order.
    pub fn iter(
        &self,
    ) -> impl Iterator<Item = (&StatusKey, &Option<Arc<Versioned<InstanceStatus>>>)> + '_ {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// The status the planner reads among `held` (every key of one instance), for an instance
/// assigned to `assigned` (see [`Snapshot::statuses`]).
pub(crate) fn pick_status<'a>(
    held: &'a HeldStatuses,
    assigned: Option<&str>,
) -> Option<(StatusKey, &'a Arc<Versioned<InstanceStatus>>)> {
    let decoded = |at: &StatusKey| {
        held.get(at)
            .and_then(Option::as_ref)
            .map(|s| (at.clone(), s))
    };
    match assigned {
        Some(node) => {
            let own = StatusKey::Node(node.to_string());
            if held.contains_key(&own) {
                // Undecodable: it says nothing, and nothing older stands in for it.
                decoded(&own)
            } else {
                decoded(&StatusKey::Legacy)
            }
        }
        None => {
            let mut nodes = held.keys().filter(|k| matches!(k, StatusKey::Node(_)));
            match (nodes.next(), nodes.next()) {
                (None, _) => decoded(&StatusKey::Legacy),
                (Some(only), None) => decoded(only),
                // Several nodes claim it: none of them is believed.
                (Some(_), Some(_)) => None,
            }
        }
    }
}
