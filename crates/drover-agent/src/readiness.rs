//! What an agent's `/readyz` answers: ready only while its node is registered on a live lease
//! and its assignment cache has been listed; why not, otherwise.

use drover_store::LeaseId;

use crate::heartbeat::State;

/// Why an agent is not ready. The `Display` text is what `/readyz` answers with its 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Not registered yet, or re-registering with a new lease after fencing itself.
    #[error("not registered (registering a lease with etcd)")]
    Registering,
    /// Keep-alives were not acknowledged in time: the node fenced itself and runs nothing.
    #[error("fenced: the node's lease was not renewed in time; instances stopped")]
    Fenced,
    /// Another agent holds the node name on this lease.
    #[error("refused: the node name is held by another agent's lease {0}")]
    Refused(LeaseId),
    /// Registered, but the first listing of its assignments has not arrived yet.
    #[error("registered, assignments not listed yet")]
    NotListed,
}

/// Readiness from the heartbeat's `state` and whether the assignment cache was `listed`.
pub fn readiness(state: State, listed: bool) -> Result<(), NotReady> {
    match state {
        State::Registered(_) if listed => Ok(()),
        State::Registered(_) => Err(NotReady::NotListed),
        State::Registering => Err(NotReady::Registering),
        State::Fenced => Err(NotReady::Fenced),
        State::Refused(lease) => Err(NotReady::Refused(lease)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_while_registered_and_listed() {
        let lease = LeaseId(7);
        assert_eq!(readiness(State::Registered(lease), true), Ok(()));
        assert_eq!(
            readiness(State::Registered(lease), false),
            Err(NotReady::NotListed)
        );
        for (state, why) in [
            (State::Registering, NotReady::Registering),
            (State::Fenced, NotReady::Fenced),
            (State::Refused(lease), NotReady::Refused(lease)),
        ] {
            assert_eq!(readiness(state, true), Err(why));
        }
    }
}
