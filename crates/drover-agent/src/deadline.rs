//! `spec.timeoutSeconds`: the deadline of a job's run. Pure functions of the spec, the run's
//! first start and the time now, so the rule is tested with paused time.

use std::time::Duration;

use drover_api::task::{Mode, RestartPolicy, TaskSpec};
use tokio::time::Instant;

/// Where an instance stands against its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// No deadline: a service, no `timeoutSeconds`, or not started yet.
    None,
    /// The deadline is this far away.
    In(Duration),
    /// The run has lasted `timeoutSeconds` (this limit) or longer.
    Exceeded(Duration),
}

/// The run-time limit of `spec`: `timeoutSeconds` for a job (any mode but a service, restart
/// policy `OnFailure` or `Never`), `None` otherwise.
pub fn limit(spec: &TaskSpec) -> Option<Duration> {
    let job = spec.mode() != Mode::Service && spec.restart_policy != RestartPolicy::Always;
    spec.timeout_seconds
        .filter(|_| job)
        .map(Duration::from_secs)
}

/// Checks the run of `spec` that first started at `first_start` against its deadline at `now`.
///
/// # Guarantees
/// - The deadline is `first_start + timeoutSeconds`: local restarts (under `OnFailure`) do not
///   move it, because the caller keeps the first start across them.
/// - `Exceeded` from the deadline on (inclusive), `In(left)` with `left > 0` before it.
///
/// # Caveats
/// `first_start` is the agent's own record. After an agent restart the adopted run's start
/// is used, and runs before it are not counted.
pub fn check(spec: &TaskSpec, first_start: Option<Instant>, now: Instant) -> Deadline {
    let (Some(limit), Some(start)) = (limit(spec), first_start) else {
        return Deadline::None;
    };
    let ran = now.saturating_duration_since(start);
    match limit.checked_sub(ran) {
        Some(left) if !left.is_zero() => Deadline::In(left),
        _ => Deadline::Exceeded(limit),
    }
}

/// The status message of an instance stopped for its deadline.
pub fn message(limit: Duration) -> String {
    format!("ran longer than timeoutSeconds ({}s)", limit.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(policy: RestartPolicy, timeout: Option<u64>) -> TaskSpec {
        TaskSpec {
            command: vec!["/bin/true".into()],
            restart_policy: policy,
            timeout_seconds: timeout,
            ..TaskSpec::default()
        }
    }

    #[test]
    fn only_jobs_with_a_timeout_have_a_limit() {
        let two = Some(Duration::from_secs(2));
        assert_eq!(limit(&job(RestartPolicy::Never, Some(2))), two);
        assert_eq!(limit(&job(RestartPolicy::OnFailure, Some(2))), two);
        assert_eq!(limit(&job(RestartPolicy::Never, None)), None);
        // A service never has one (validation rejects it; the agent ignores it anyway).
        assert_eq!(limit(&job(RestartPolicy::Always, Some(2))), None);
    }

    #[tokio::test(start_paused = true)]
    async fn counts_from_the_first_start() {
        let spec = job(RestartPolicy::OnFailure, Some(2));
        let start = Instant::now();
        assert_eq!(
            check(&spec, Some(start), Instant::now()),
            Deadline::In(Duration::from_secs(2))
        );
        tokio::time::advance(Duration::from_millis(1500)).await;
        // A restart now keeps `start` as the first start: half a second is left.
        assert_eq!(
            check(&spec, Some(start), Instant::now()),
            Deadline::In(Duration::from_millis(500))
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            check(&spec, Some(start), Instant::now()),
            Deadline::Exceeded(Duration::from_secs(2))
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            check(&spec, Some(start), Instant::now()),
            Deadline::Exceeded(Duration::from_secs(2))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_before_the_first_start_or_without_a_limit() {
        let now = Instant::now();
        let spec = job(RestartPolicy::Never, Some(2));
        assert_eq!(check(&spec, None, now), Deadline::None);
        let service = job(RestartPolicy::Always, Some(2));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(check(&service, Some(now), Instant::now()), Deadline::None);
        let unbounded = job(RestartPolicy::Never, None);
        assert_eq!(check(&unbounded, Some(now), Instant::now()), Deadline::None);
    }

    #[test]
    fn message_names_the_limit() {
        assert_eq!(
            message(Duration::from_secs(2)),
            "ran longer than timeoutSeconds (2s)"
        );
    }
}
