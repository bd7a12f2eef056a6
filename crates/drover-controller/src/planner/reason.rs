//! Why the planner takes a copy away: one enum instead of string labels, so every match over
//! reasons is exhaustive. Stored as its name in a stop request ([`drover_api::StopRequest`]),
//! whose reason stays a string on the wire so that a newer controller's reason still decodes.

use std::fmt;

/// Why an assignment goes (or a replacement is wanted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Its node died.
    Lost,
    /// It failed and is placed again elsewhere.
    Rescheduled,
    /// It failed past the reschedule limit.
    DeadLettered,
    /// It runs an older generation of its task.
    Outdated,
    /// Its task wants fewer replicas.
    ScaledDown,
    /// Its node is being drained.
    Drained,
    /// Its task was deleted.
    TaskDeleted,
    /// A higher-priority instance needs its room.
    Preempted,
    /// Its job run has finished.
    RunFinished,
    /// A new replica (wanted only, never removed).
    Scale,
    /// A stop request whose reason this version does not know.
    Other,
}

impl Reason {
    /// Every reason, for parsing.
    const ALL: [Reason; 11] = [
        Reason::Lost,
        Reason::Rescheduled,
        Reason::DeadLettered,
        Reason::Outdated,
        Reason::ScaledDown,
        Reason::Drained,
        Reason::TaskDeleted,
        Reason::Preempted,
        Reason::RunFinished,
        Reason::Scale,
        Reason::Other,
    ];

    /// The name, as events and stop requests spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Lost => "Lost",
            Reason::Rescheduled => "Rescheduled",
            Reason::DeadLettered => "DeadLettered",
            Reason::Outdated => "Outdated",
            Reason::ScaledDown => "ScaledDown",
            Reason::Drained => "Drained",
            Reason::TaskDeleted => "TaskDeleted",
            Reason::Preempted => "Preempted",
            Reason::RunFinished => "RunFinished",
            Reason::Scale => "Scale",
            Reason::Other => "Stopped",
        }
    }

    /// The reason a stop request names; [`Reason::Other`] for one this version does not know.
    #[must_use]
    pub fn parse(name: &str) -> Reason {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .unwrap_or(Reason::Other)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_and_a_foreign_one_is_other() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), r);
        }
        assert_eq!(
            Reason::parse("Evicted by a newer controller"),
            Reason::Other
        );
    }
}
