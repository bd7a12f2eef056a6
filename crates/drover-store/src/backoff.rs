//! Exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryConfig;

/// Produces waits for successive retries: uniform in `[0, min(max, initial * 2^n)]`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    max_attempts: u32,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(cfg: &RetryConfig) -> Backoff {
        Backoff {
            initial: cfg.initial_backoff,
            max: cfg.max_backoff,
            max_attempts: cfg.max_attempts,
            attempt: 0,
        }
    }

    /// The wait before the next attempt, or `None` when the attempts are used up.
    pub(crate) fn next_wait(&mut self) -> Option<Duration> {
        self.attempt += 1;
        if self.attempt >= self.max_attempts {
            return None;
        }
        Some(self.jittered())
    }

    /// The next wait, never giving up (for loops that must keep going, like a watcher).
    pub(crate) fn next_wait_forever(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.jittered()
    }

    /// Back to the first, shortest wait.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    fn jittered(&self) -> Duration {
        let exp = self.attempt.saturating_sub(1).min(20);
        let bound = self.initial.saturating_mul(1u32 << exp).min(self.max);
        let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_and_stop() {
        let cfg = RetryConfig {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(25),
        };
        let mut b = Backoff::new(&cfg);
        let bounds = [10, 20, 25];
        for bound in bounds {
            let w = b.next_wait().expect("more attempts");
            assert!(w <= Duration::from_millis(bound), "{w:?} > {bound}ms");
        }
        assert!(b.next_wait().is_none());
        b.reset();
        assert!(b.next_wait().is_some());
        for _ in 0..100 {
            assert!(b.next_wait_forever() <= Duration::from_millis(25));
        }
    }
}
