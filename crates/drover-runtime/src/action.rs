//! [`Action`]: what a reconciler asks the runner to do with a key once it has succeeded.

use std::time::Duration;

/// The outcome of a successful reconcile.
///
/// A reconciler that fails returns `Err` instead; the runner then retries after the key's backoff
/// (see [`crate::backoff`]), so `Action` only describes the happy path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile this key again after `after`, even if nothing changes in the meantime.
    ///
    /// Use it for time-driven work (a cron schedule, a deadline, a probe) and as a safety net for
    /// missed triggers. A trigger that arrives earlier still wins: the earliest request is kept.
    #[must_use]
    pub fn requeue(after: Duration) -> Self {
        Self {
            requeue_after: Some(after),
        }
    }

    /// Do nothing until the key is triggered again (by a trigger stream or a [`crate::Trigger`]).
    #[must_use]
    pub fn await_change() -> Self {
        Self {
            requeue_after: None,
        }
    }

    /// The requested delay before the next reconcile, if any.
    #[must_use]
    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_carry_the_delay() {
        assert_eq!(
            Action::requeue(Duration::from_secs(3)).requeue_after(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(Action::await_change().requeue_after(), None);
    }
}
