//! What happens after an instance exits or turns unhealthy: restart (with exponential
//! backoff), or report it Succeeded or Failed. Pure functions of the spec and the history.

use std::time::Duration;

use drover_api::instance::{reasons, Phase};
use drover_api::task::RestartPolicy;

/// Why the instance's current run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The process exited by itself (or was killed from outside) with this code, when known.
    Exited(Option<i32>),
    /// The health check failed `failureThreshold` times in a row; the agent stopped it.
    Unhealthy,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Start it again after `after`; this is restart number `restart` (1-based).
    Restart {
        /// The backoff delay.
        after: Duration,
        /// The new restart count.
        restart: u32,
    },
    /// Done for good, with this phase and reason (`None` for a clean success).
    Terminal {
        /// `Succeeded` or `Failed`.
        phase: Phase,
        /// The status reason.
        reason: Option<&'static str>,
        /// A human-readable message.
        message: String,
    },
}

/// Restart settings shared by all instances of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
}

impl Backoff {
    /// `initial × 2^(restart-1)`, capped at `max` (the runtime's one exponential backoff).
    pub fn delay(&self, restart: u32) -> Duration {
        drover_runtime::BackoffConfig {
            base: self.initial,
            max: self.max,
            jitter: false,
        }
        .delay(restart.max(1))
    }
}

/// Decides the next step after a run ended.
///
/// # Guarantees
/// - `Always` restarts after any end, `OnFailure` after a non-zero (or unknown) exit or an
///   unhealthy verdict, `Never` never.
/// - At most `max_restarts` restarts: when `restarts_so_far == max_restarts` and a restart
///   would be needed, the instance is `Failed` with reason `Unhealthy` (health check) or
///   `CrashLoopBackOff` (exits), so its restart count equals the limit.
/// - An exit 0 the policy does not restart is `Succeeded`; a service (`Always`) that used up
///   its restarts is `Failed` whatever its exit code.
pub fn next(
    policy: RestartPolicy,
    ended: Ended,
    restarts_so_far: u32,
    max_restarts: u32,
    backoff: &Backoff,
) -> Next {
    let clean = ended == Ended::Exited(Some(0));
    let wants_restart = match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !clean,
        RestartPolicy::Never => false,
    };
    let what = describe(ended);
    if wants_restart && restarts_so_far < max_restarts {
        let restart = restarts_so_far + 1;
        return Next::Restart {
            after: backoff.delay(restart),
            restart,
        };
    }
    if clean && !wants_restart {
        return Next::Terminal {
            phase: Phase::Succeeded,
            reason: None,
            message: what,
        };
    }
    let reason = match (ended, wants_restart) {
        (Ended::Unhealthy, _) => reasons::UNHEALTHY,
        (Ended::Exited(_), true) => reasons::CRASH_LOOP,
        (Ended::Exited(_), false) => reasons::ERROR,
    };
    let message = if wants_restart {
        format!("{what}; gave up after {restarts_so_far} restart(s) (maxRestarts {max_restarts})")
    } else {
        what
    };
    Next::Terminal {
        phase: Phase::Failed,
        reason: Some(reason),
        message,
    }
}

fn describe(ended: Ended) -> String {
    match ended {
        Ended::Exited(Some(code)) => format!("exited with code {code}"),
        Ended::Exited(None) => "exited (code unknown)".to_string(),
        Ended::Unhealthy => "health check failed".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(10),
    };

    #[test]
    fn backoff_doubles_and_caps() {
        let d: Vec<u64> = (1..=6).map(|r| B.delay(r).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 10, 10]);
        assert_eq!(B.delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn policies() {
        use RestartPolicy::*;
        let restart = |p, e, n| matches!(next(p, e, n, 3, &B), Next::Restart { .. });
        assert!(restart(Always, Ended::Exited(Some(0)), 0));
        assert!(restart(Always, Ended::Exited(Some(137)), 2));
        assert!(restart(OnFailure, Ended::Exited(Some(1)), 0));
        assert!(restart(OnFailure, Ended::Exited(None), 0));
        assert!(!restart(OnFailure, Ended::Exited(Some(0)), 0));
        assert!(!restart(Never, Ended::Exited(Some(1)), 0));
        assert!(!restart(Never, Ended::Unhealthy, 0));
        assert_eq!(
            next(OnFailure, Ended::Exited(Some(0)), 0, 3, &B),
            Next::Terminal {
                phase: Phase::Succeeded,
                reason: None,
                message: "exited with code 0".into()
            }
        );
    }

    #[test]
    fn gives_up_after_max_restarts() {
        let n = next(RestartPolicy::Always, Ended::Unhealthy, 2, 2, &B);
        assert!(matches!(
            n,
            Next::Terminal {
                phase: Phase::Failed,
                reason: Some("Unhealthy"),
                ..
            }
        ));
        let n = next(RestartPolicy::Always, Ended::Exited(Some(3)), 3, 3, &B);
        assert!(matches!(
            n,
            Next::Terminal {
                phase: Phase::Failed,
                reason: Some("CrashLoopBackOff"),
                ..
            }
        ));
        let n = next(RestartPolicy::Never, Ended::Exited(Some(3)), 0, 3, &B);
        assert!(matches!(
            n,
            Next::Terminal {
                phase: Phase::Failed,
                reason: Some("Error"),
                ..
            }
        ));
        assert_eq!(
            next(RestartPolicy::Always, Ended::Exited(Some(1)), 1, 2, &B),
            Next::Restart {
                after: Duration::from_secs(2),
                restart: 2
            }
        );
    }
}
