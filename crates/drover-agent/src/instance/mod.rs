//! One instance on this node as a state machine: its [`State`] (an enum, per-state data in
//! the variants), the [`Entry`] that holds it with the status it reports, the pure
//! [`decide`] that says what the engine does next, and the [`InstanceTable`] of all entries.

mod decide;
mod entry;
#[cfg(test)]
mod proptests;
mod state;
mod table;

pub(crate) use decide::{decide, until_deadline, Desired, Step, Wanted};
pub(crate) use entry::Entry;
pub(crate) use state::{Exit, Run, State};
pub(crate) use table::InstanceTable;
