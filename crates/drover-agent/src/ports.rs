//! Host-port allocation: the agent picks a free node port for every published container port
//! before it asks a driver to start the instance, and reports the binding in the status.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::{Mutex, PoisonError};

use drover_api::names::InstanceId;

/// The default dynamic range, as Nomad's (`20000..=32000`), below Linux's ephemeral range
/// (`32768..`) so outgoing connections never hold a port we hand out.
pub const DEFAULT_RANGE: RangeInclusive<u16> = 20000..=32000;

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Allocation failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not enough free ports are left in the range.
    #[error("no {wanted} free host ports left in {first}..={last}")]
    Exhausted {
        /// How many were asked for.
        wanted: usize,
        /// The range's first port.
        first: u16,
        /// The range's last port.
        last: u16,
    },
    /// A port to be reserved already belongs to another instance.
    #[error("host port {port} is already allocated to {owner}")]
    Conflict {
        /// The port.
        port: u16,
        /// Its current owner.
        owner: InstanceId,
    },
}

#[derive(Debug)]
struct State {
    /// Where the next search starts: round-robin, so a just-released port (whose old clients may
    /// still be connecting) is the last to be handed out again.
    next: u16,
    owners: BTreeMap<u16, InstanceId>,
}

/// Hands out host ports from a range, one owner per port.
#[derive(Debug)]
pub struct PortAllocator {
    range: RangeInclusive<u16>,
    state: Mutex<State>,
}

impl Default for PortAllocator {
    fn default() -> Self {
        Self::new(DEFAULT_RANGE)
    }
}

impl PortAllocator {
    /// An allocator over `range`.
    pub fn new(range: RangeInclusive<u16>) -> Self {
        PortAllocator {
            state: Mutex::new(State {
                next: *range.start(),
                owners: BTreeMap::new(),
            }),
            range,
        }
    }

    /// `count` ports for `instance`. Idempotent: an instance that already holds `count` ports
    /// gets the same ones back.
    ///
    /// # Guarantees
    /// Every port returned is owned by no other instance and could be bound for TCP on
    /// `0.0.0.0` when it was chosen.
    ///
    /// # Caveats
    /// Another program may take a port between this check and the container's start; the start
    /// then fails with a `StartError` and the agent allocates again. UDP is not probed.
    pub fn allocate(&self, instance: &InstanceId, count: usize) -> Result<Vec<u16>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let held: Vec<u16> = owned_by(&state.owners, instance);
        if held.len() == count {
            return Ok(held);
        }
        for port in held {
            state.owners.remove(&port);
        }
        let (first, last) = (*self.range.start(), *self.range.end());
        let size = usize::from(last - first) + 1;
        let mut picked = Vec::with_capacity(count);
        let mut port = state.next.clamp(first, last);
        for _ in 0..size {
            if picked.len() == count {
                break;
            }
            if !state.owners.contains_key(&port) && bindable(port) {
                picked.push(port);
            }
            port = if port == last { first } else { port + 1 };
        }
        if picked.len() < count {
            return Err(Error::Exhausted {
                wanted: count,
                first,
                last,
            });
        }
        state.next = port;
        for &p in &picked {
            state.owners.insert(p, instance.clone());
        }
        Ok(picked)
    }

    /// Records ports an adopted instance already uses (after an agent restart).
    pub fn reserve(&self, instance: &InstanceId, ports: &[u16]) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for port in ports {
            if let Some(owner) = state.owners.get(port).filter(|o| *o != instance) {
                return Err(Error::Conflict {
                    port: *port,
                    owner: owner.clone(),
                });
            }
        }
        for &port in ports {
            state.owners.insert(port, instance.clone());
        }
        Ok(())
    }

    /// Frees every port of `instance`.
    pub fn release(&self, instance: &InstanceId) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.owners.retain(|_, owner| owner != instance);
    }

    /// The ports `instance` holds, ascending.
    pub fn allocated(&self, instance: &InstanceId) -> Vec<u16> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        owned_by(&state.owners, instance)
    }
}

fn owned_by(owners: &BTreeMap<u16, InstanceId>, instance: &InstanceId) -> Vec<u16> {
    owners
        .iter()
        .filter(|(_, o)| *o == instance)
        .map(|(p, _)| *p)
        .collect()
}

fn bindable(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(slot: u32) -> InstanceId {
        InstanceId::service("default", "echo", slot).expect("valid id")
    }

    #[test]
    fn allocates_distinct_ports_and_is_idempotent() {
        let ports = PortAllocator::new(41000..=41010);
        let a = ports.allocate(&id(0), 2).expect("a");
        let b = ports.allocate(&id(1), 2).expect("b");
        assert!(a.iter().all(|p| !b.contains(p)));
        assert_eq!(ports.allocate(&id(0), 2).expect("again"), a);
        ports.release(&id(0));
        assert!(ports.allocated(&id(0)).is_empty());
    }

    #[test]
    fn exhaustion_and_conflicts_are_errors() {
        let ports = PortAllocator::new(41020..=41021);
        assert!(matches!(
            ports.allocate(&id(0), 3),
            Err(Error::Exhausted { wanted: 3, .. })
        ));
        let held = ports.allocate(&id(0), 1).expect("one");
        assert!(matches!(
            ports.reserve(&id(1), &held),
            Err(Error::Conflict { .. })
        ));
        ports
            .reserve(&id(0), &held)
            .expect("own ports reserve fine");
    }

    #[test]
    fn skips_ports_in_use() {
        let taken = std::net::TcpListener::bind(("0.0.0.0", 0)).expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let ports = PortAllocator::new(port..=port);
        assert!(ports.allocate(&id(0), 1).is_err());
    }
}
