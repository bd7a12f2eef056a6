//! The states of one instance on this node, as an enum: each variant carries the data that
//! state has (the run, its exit, the backoff deadline), so no contradictory combination of
//! "exited", "unhealthy", "probing", "terminal" and "fenced" can be built.

use chrono::{DateTime, Utc};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::driver::Handle;

/// One run of an instance in the runtime, with the helper tasks watching it.
#[derive(Debug)]
pub(crate) struct Run {
    handle: Handle,
    /// Distinguishes this run from earlier ones, so a late report of an old run is ignored.
    seq: u64,
    /// Helper tasks (exit waiter, prober), aborted when the run is dropped.
    tasks: Vec<AbortHandle>,
}

impl Run {
    /// A run of `handle`, numbered `seq`, with no helper tasks yet.
    pub fn new(handle: Handle, seq: u64) -> Self {
        Run {
            handle,
            seq,
            tasks: Vec::new(),
        }
    }

    /// The driver's handle of the run.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The run's number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Ties a helper task to the run: it is aborted when the run is dropped.
    pub fn attach(&mut self, task: AbortHandle) {
        self.tasks.push(task);
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How a run ended, as far as the runtime told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exit {
    /// The exit code, when known.
    pub code: Option<i32>,
    /// When it ended, when known.
    pub finished: Option<DateTime<Utc>>,
}

/// Where one instance stands locally.
#[derive(Debug)]
pub(crate) enum State {
    /// Nothing runs: a fresh assignment, or a start that failed and will be retried.
    Pending,
    /// Nothing runs: the last run was destroyed and the restart waits for its backoff.
    Backoff {
        /// The restart may start from then on.
        until: Instant,
    },
    /// Running, no prober attached (none is wanted, or it is not attached yet).
    Running {
        /// The run.
        run: Run,
    },
    /// Running with a prober attached whose last verdict was not Unhealthy.
    Probing {
        /// The run.
        run: Run,
    },
    /// Running, and the prober reached its failure threshold: it is to be stopped.
    Unhealthy {
        /// The run.
        run: Run,
    },
    /// The run ended (by itself, or stopped by the agent) and nobody decided what next.
    Exited {
        /// The ended run (kept for its container id and its destroy).
        run: Run,
        /// How it ended.
        exit: Exit,
        /// The prober's last verdict was Unhealthy: the end counts as a failed health check.
        unhealthy: bool,
    },
    /// Stopped by self-fencing; forgotten (and re-created from the assignment) on
    /// re-registration.
    Fenced {
        /// The stopped run, if there was one.
        last: Option<(Run, Exit)>,
    },
    /// Succeeded, failed, or stopped on request, for good: never started again.
    Terminal {
        /// The ended run, if there was one.
        last: Option<(Run, Exit)>,
    },
}

impl State {
    /// The current or last run, in any state that has one.
    pub fn run(&self) -> Option<&Run> {
        match self {
            State::Pending | State::Backoff { .. } => None,
            State::Running { run }
            | State::Probing { run }
            | State::Unhealthy { run }
            | State::Exited { run, .. } => Some(run),
            State::Fenced { last } | State::Terminal { last } => last.as_ref().map(|(r, _)| r),
        }
    }

    /// The run, mutably (to attach helper tasks).
    pub fn run_mut(&mut self) -> Option<&mut Run> {
        match self {
            State::Pending | State::Backoff { .. } => None,
            State::Running { run }
            | State::Probing { run }
            | State::Unhealthy { run }
            | State::Exited { run, .. } => Some(run),
            State::Fenced { last } | State::Terminal { last } => last.as_mut().map(|(r, _)| r),
        }
    }

    /// How the run ended, once it did.
    pub fn exit(&self) -> Option<Exit> {
        match self {
            State::Exited { exit, .. } => Some(*exit),
            State::Fenced { last } | State::Terminal { last } => last.as_ref().map(|(_, x)| *x),
            _ => None,
        }
    }

    /// Whether the runtime object is (as far as we know) still running.
    pub fn is_running(&self) -> bool {
        matches!(
            self,
            State::Running { .. } | State::Probing { .. } | State::Unhealthy { .. }
        )
    }

    /// A run that still needs its prober.
    pub fn unprobed(&self) -> Option<&Run> {
        match self {
            State::Running { run } => Some(run),
            _ => None,
        }
    }

    /// The run `seq` exited with `exit` (exit waiter, or a stop that confirmed it). A report
    /// for another run, or for one already known ended, changes nothing.
    pub fn exited(&mut self, seq: u64, exit: Exit) {
        if !self.is_running() || self.run().is_none_or(|r| r.seq != seq) {
            return;
        }
        let unhealthy = matches!(self, State::Unhealthy { .. });
        if let Some((run, _)) = self.take_last(exit) {
            *self = State::Exited {
                run,
                exit,
                unhealthy,
            };
        }
    }

    /// The prober of run `seq` says whether it is unhealthy. Returns whether the report was
    /// for the current run.
    pub fn health(&mut self, seq: u64, unhealthy: bool) -> bool {
        if self.run().is_none_or(|r| r.seq != seq) {
            return false;
        }
        let state = std::mem::replace(self, State::Pending);
        *self = match state {
            State::Running { run } | State::Probing { run } | State::Unhealthy { run } => {
                if unhealthy {
                    State::Unhealthy { run }
                } else {
                    State::Probing { run }
                }
            }
            State::Exited { run, exit, .. } => State::Exited {
                run,
                exit,
                unhealthy,
            },
            other => other,
        };
        true
    }

    /// A prober was attached to the run: it needs no other.
    pub fn probing(&mut self) {
        let state = std::mem::replace(self, State::Pending);
        *self = match state {
            State::Running { run } => State::Probing { run },
            other => other,
        };
    }

    /// Leaves the state as `Pending` and returns the run with how it ended. A run still
    /// marked running here was just stopped by the caller (or is being fenced) and its exit
    /// not yet seen: it ends with `if_running`.
    pub fn take_last(&mut self, if_running: Exit) -> Option<(Run, Exit)> {
        match std::mem::replace(self, State::Pending) {
            State::Pending | State::Backoff { .. } => None,
            State::Running { run } | State::Probing { run } | State::Unhealthy { run } => {
                Some((run, if_running))
            }
            State::Exited { run, exit, .. } => Some((run, exit)),
            State::Fenced { last } | State::Terminal { last } => last,
        }
    }
}
