//! [`InstanceTable`]: the entries of every instance an engine tracks, behind one lock that
//! is only ever held for a closure's length (never across an await).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use drover_api::names::InstanceId;
use drover_api::task::DriverKind;

use super::entry::Entry;
use crate::driver::Handle;
use crate::local::Slot;

/// The entries, one per slot.
#[derive(Debug, Default)]
pub(crate) struct InstanceTable {
    map: Mutex<HashMap<Slot, Entry>>,
}

impl InstanceTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<Slot, Entry>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `f` of the entry of `slot`, or of `None` when there is none.
    pub fn view<R>(&self, slot: &Slot, f: impl FnOnce(Option<&Entry>) -> R) -> R {
        f(self.lock().get(slot))
    }

    /// `f` of the entry of `slot`, if there is one.
    pub fn read<R>(&self, slot: &Slot, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        self.lock().get(slot).map(f)
    }

    /// Applies `f` to the entry of `slot`, if there is one.
    pub fn update<R>(&self, slot: &Slot, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        self.lock().get_mut(slot).map(f)
    }

    /// Adds (or replaces) the entry of `slot`.
    pub fn insert(&self, slot: Slot, entry: Entry) {
        self.lock().insert(slot, entry);
    }

    /// Removes the entry of `slot`; its run's helper tasks end with it.
    pub fn remove(&self, slot: &Slot) -> Option<Entry> {
        self.lock().remove(slot)
    }

    /// Whether `slot` has an entry.
    #[cfg(test)]
    pub fn contains(&self, slot: &Slot) -> bool {
        self.lock().contains_key(slot)
    }

    /// Whether there are no entries at all.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every slot with an entry.
    pub fn slots(&self) -> Vec<Slot> {
        self.lock().keys().cloned().collect()
    }

    /// The slots of `node` whose entry satisfies `f`.
    pub fn slots_where(&self, node: &str, f: impl Fn(&Entry) -> bool) -> Vec<Slot> {
        self.lock()
            .iter()
            .filter(|(s, e)| *s.node == *node && f(e))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Number of instances running on `node` (all nodes with `None`).
    pub fn running(&self, node: Option<&str>) -> usize {
        self.lock()
            .iter()
            .filter(|(s, e)| node.is_none_or(|n| *s.node == *n) && e.is_running())
            .count()
    }

    /// The driver and handle of the current or last run of instance `id` on `node`.
    pub fn run_of(&self, node: &str, id: &InstanceId) -> Option<(DriverKind, Handle)> {
        self.lock()
            .iter()
            .find(|(s, _)| s.id == *id && *s.node == *node)
            .and_then(|(_, e)| Some((e.kind(), e.handle()?.clone())))
    }
}
