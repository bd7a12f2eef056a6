//! [`decide`]: what the engine does next for one instance, as a pure function of the local
//! [`Entry`], what is [`Desired`] and the time now. No I/O, no clock, no lock: the engine
//! reads the inputs, calls it, and carries the [`Step`] out.

use std::time::Duration;

use drover_api::instance::Phase;
use drover_runtime::Action;
use tokio::time::Instant;

use super::entry::Entry;
use super::state::State;
use crate::deadline::Deadline;
use crate::local::StopReason;
use crate::restart::{self, Backoff, Ended};

/// What should be, for one slot (plain data, read by the engine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Desired {
    /// The slot's node is fencing itself (or has not registered yet).
    pub node_fenced: bool,
    /// The agent is going away.
    pub shutting_down: bool,
    /// The assignment in the cache, if any.
    pub assignment: Option<Wanted>,
}

/// The parts of an assignment that [`decide`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// Its create revision: a new one is a new placement.
    pub create_revision: i64,
    /// The task generation it runs.
    pub generation: u64,
    /// The attempt number.
    pub attempt: u32,
    /// The controller's stop request, with its reason.
    pub stop: Option<String>,
}

/// What to do next for one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Touch nothing and write nothing: the node is fenced or the agent is going away.
    Hold,
    /// Stop whatever runs, remove it and forget the entry (`Unassigned`: the assignment is
    /// gone; `Fenced`: a copy fencing stopped, on a node that registered again). With
    /// `again`, reconcile the slot once more afterwards (to start a fresh copy).
    Forget {
        /// Why, for the stop record.
        reason: StopReason,
        /// Reconcile again afterwards.
        again: bool,
    },
    /// No local entry: make one for the assignment, then decide again.
    Track,
    /// A recovered entry matches the assignment (same generation and attempt): adopt it,
    /// then decide again.
    Adopt,
    /// Stop the copy on the controller's request and report it terminal.
    StopOnRequest {
        /// The request's reason.
        reason: String,
    },
    /// Nothing to do: report the status and wait for a change.
    Idle,
    /// A restart waits for its backoff: come back after this long.
    Wait(Duration),
    /// Start a run (and its prober).
    Start,
    /// Attach a prober to the running run.
    Probe,
    /// The health check failed: stop the run, then judge its end.
    StopUnhealthy,
    /// The run ended and is restarted: destroy it, and start again after `after`.
    Restart {
        /// The backoff.
        after: Duration,
        /// The new restart count.
        restart: u32,
        /// How the run ended.
        ended: Ended,
    },
    /// The run ended for good.
    Finish {
        /// `Succeeded` or `Failed`.
        phase: Phase,
        /// The status reason.
        reason: Option<&'static str>,
        /// The status message.
        message: String,
    },
    /// The run lasted past `timeoutSeconds` (this limit): stop it and fail it for good.
    Expire(Duration),
}

/// Decides the next step for one slot.
///
/// # Guarantees
/// - A fenced node or an agent going away gets [`Step::Hold`]: nothing starts, nothing is
///   written.
/// - An unassigned slot is forgotten; an entry for another placement (create revision,
///   generation or attempt) is forgotten before anything new starts for the slot, so a copy
///   ends before its replacement starts.
/// - [`Step::Start`] only when no run is alive, no stop is requested, the entry is not
///   terminal or fenced, and no restart backoff is pending at `now`.
/// - A terminal entry is never started or restarted; a restart follows
///   [`restart::next`] (policy, `maxRestarts`, backoff), and none past `timeoutSeconds`.
pub(crate) fn decide(
    entry: Option<&Entry>,
    desired: &Desired,
    backoff: &Backoff,
    now: Instant,
) -> Step {
    if desired.node_fenced || desired.shutting_down {
        return Step::Hold;
    }
    let Some(wanted) = &desired.assignment else {
        return Step::Forget {
            reason: StopReason::Unassigned,
            again: false,
        };
    };
    let Some(e) = entry else {
        return Step::Track;
    };
    match e.create_revision() {
        Some(rev) if rev == wanted.create_revision => {}
        None if e.meta().generation == wanted.generation && e.meta().attempt == wanted.attempt => {
            return Step::Adopt;
        }
        _ => {
            return Step::Forget {
                reason: StopReason::Unassigned,
                again: true,
            }
        }
    }
    if matches!(e.state(), State::Fenced { .. }) {
        // Fencing's copies are forgotten when the node registers again; one still here
        // (the node re-registered meanwhile) is dropped now and the slot converged afresh.
        return Step::Forget {
            reason: StopReason::Fenced,
            again: true,
        };
    }
    if let Some(reason) = &wanted.stop {
        return match e.state() {
            State::Terminal { .. } => Step::Idle,
            _ => Step::StopOnRequest {
                reason: reason.clone(),
            },
        };
    }
    let expired = match e.deadline(now) {
        Deadline::Exceeded(limit) => Some(limit),
        _ => None,
    };
    match (e.state(), expired) {
        (State::Terminal { .. } | State::Fenced { .. }, _) => Step::Idle,
        // Waiting out a restart's backoff past the deadline: do not start again.
        (State::Pending | State::Backoff { .. }, Some(limit)) => Step::Expire(limit),
        (State::Backoff { until }, None) if *until > now => Step::Wait(*until - now),
        (State::Pending | State::Backoff { .. }, None) => Step::Start,
        (
            State::Exited {
                exit, unhealthy, ..
            },
            expired,
        ) => {
            let ended = if *unhealthy {
                Ended::Unhealthy
            } else {
                Ended::Exited(exit.code)
            };
            after_end(e, ended, expired, backoff)
        }
        (State::Running { .. } | State::Probing { .. } | State::Unhealthy { .. }, Some(limit)) => {
            Step::Expire(limit)
        }
        (State::Unhealthy { .. }, None) => Step::StopUnhealthy,
        (State::Running { .. }, None) if e.wants_probe() => Step::Probe,
        (State::Running { .. } | State::Probing { .. }, None) => Step::Idle,
    }
}

/// Restart, or success or failure, after a run ended.
fn after_end(e: &Entry, ended: Ended, expired: Option<Duration>, backoff: &Backoff) -> Step {
    let Some(spec) = e.instance().map(|i| &i.spec) else {
        return Step::Idle;
    };
    let next = restart::next(
        spec.restart_policy,
        ended,
        e.restart_count(),
        spec.max_restarts,
        backoff,
    );
    match (next, expired) {
        // Past the deadline a job is not restarted: it failed for its deadline.
        (restart::Next::Restart { .. }, Some(limit)) => Step::Expire(limit),
        (restart::Next::Restart { after, restart }, None) => Step::Restart {
            after,
            restart,
            ended,
        },
        (
            restart::Next::Terminal {
                phase,
                reason,
                message,
            },
            _,
        ) => Step::Finish {
            phase,
            reason,
            message,
        },
    }
}

/// `action`, but back no later than the deadline of a run that has one (at `now`).
pub(crate) fn until_deadline(entry: Option<&Entry>, action: Action, now: Instant) -> Action {
    let left = match entry {
        Some(e) if !matches!(e.state(), State::Terminal { .. }) => match e.deadline(now) {
            Deadline::In(left) => left,
            Deadline::Exceeded(_) => Duration::ZERO,
            Deadline::None => return action,
        },
        _ => return action,
    };
    match action.requeue_after() {
        Some(after) if after <= left => action,
        _ => Action::requeue(left),
    }
}
