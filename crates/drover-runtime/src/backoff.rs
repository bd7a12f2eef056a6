//! Per-key exponential backoff after failed reconciles: pure arithmetic, no clocks.
//!
//! The runner counts consecutive failures per key and asks [`BackoffConfig::delay_with_jitter`]
//! how long to wait; a success forgets the count. Keeping the math here, free of time and I/O,
//! lets it be tested exhaustively in microseconds.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// Errors from validating a [`BackoffConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// `base` was zero: every retry would fire at once, which is a hot loop, not a backoff.
    #[error("backoff base must be greater than zero")]
    ZeroBase,
    /// `max` was below `base`, so the first delay would already exceed the cap.
    #[error("backoff max ({max:?}) must be at least base ({base:?})")]
    MaxBelowBase {
        /// The configured first delay.
        base: Duration,
        /// The configured cap.
        max: Duration,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long to wait before retrying a key whose reconcile failed.
///
/// The n-th consecutive failure waits `base * 2^(n-1)`, capped at `max`. With `jitter` on, the
/// delay is scaled by a random factor in `[0.5, 1.0]` so that many keys failing together (say,
/// while etcd is down) do not retry in lockstep; jitter never pushes a delay above `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay after the first failure. Default: 500 ms.
    pub base: Duration,
    /// Upper bound for any delay. Default: 60 s.
    pub max: Duration,
    /// Randomise delays (see above). Default: on. Turn it off in tests that assert exact timing.
    pub jitter: bool,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
            jitter: true,
        }
    }
}

impl BackoffConfig {
    /// Checks that the settings describe a real backoff.
    pub fn validate(&self) -> Result<()> {
        if self.base.is_zero() {
            return Err(Error::ZeroBase);
        }
        if self.max < self.base {
            return Err(Error::MaxBelowBase {
                base: self.base,
                max: self.max,
            });
        }
        Ok(())
    }

    /// The un-jittered delay after `failures` consecutive failures (zero for no failure).
    ///
    /// # Guarantees
    /// Monotonic in `failures`, never above `max`, and free of overflow for any `failures`.
    #[must_use]
    pub fn delay(&self, failures: u32) -> Duration {
        let Some(exponent) = failures.checked_sub(1) else {
            return Duration::ZERO;
        };
        let factor = 1u32.checked_shl(exponent).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// [`Self::delay`] with jitter applied when enabled; `sample` is a uniform draw from `[0, 1)`.
    ///
    /// Taking the random sample as an argument keeps this function pure.
    #[must_use]
    pub fn delay_with_jitter(&self, failures: u32, sample: f64) -> Duration {
        let delay = self.delay(failures);
        if !self.jitter {
            return delay;
        }
        let sample = if sample.is_finite() {
            sample.clamp(0.0, 1.0)
        } else {
            1.0
        };
        delay.mul_f64(0.5 + 0.5 * sample).min(self.max)
    }
}

/// A cheap source of jitter samples that needs no RNG crate.
///
/// `RandomState` is seeded randomly per instance; hashing a counter with it yields well-spread
/// values. Jitter needs spread, not cryptographic quality.
#[derive(Debug, Default)]
pub(crate) struct JitterSource {
    state: RandomState,
    counter: u64,
}

impl JitterSource {
    /// A uniform sample from `[0, 1)`.
    pub(crate) fn sample(&mut self) -> f64 {
        self.counter = self.counter.wrapping_add(1);
        let bits = self.state.hash_one(self.counter) >> 11;
        // 53 significant bits convert to f64 exactly.
        bits as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(base_ms: u64, max_ms: u64) -> BackoffConfig {
        BackoffConfig {
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(max_ms),
            jitter: false,
        }
    }

    #[test]
    fn doubles_from_base_up_to_max() {
        let c = cfg(100, 1_000);
        let delays: Vec<u64> = (0..8).map(|n| c.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1_000, 1_000, 1_000]);
    }

    #[test]
    fn huge_failure_counts_saturate_at_max() {
        let c = cfg(100, 5_000);
        for n in [31, 32, 33, 64, 1_000, u32::MAX] {
            assert_eq!(c.delay(n), Duration::from_millis(5_000), "failures = {n}");
        }
        let big = BackoffConfig {
            base: Duration::from_secs(u64::MAX / 4),
            max: Duration::MAX,
            jitter: false,
        };
        assert_eq!(big.delay(40), Duration::MAX);
    }

    #[test]
    fn monotonic() {
        let c = cfg(7, 100_000);
        for n in 0..200 {
            assert!(c.delay(n) <= c.delay(n + 1));
        }
    }

    #[test]
    fn jitter_off_ignores_the_sample() {
        let c = cfg(100, 1_000);
        assert_eq!(c.delay_with_jitter(3, 0.0), Duration::from_millis(400));
        assert_eq!(c.delay_with_jitter(3, 0.99), Duration::from_millis(400));
    }

    #[test]
    fn jitter_scales_between_half_and_full() {
        let c = BackoffConfig {
            jitter: true,
            ..cfg(100, 1_000)
        };
        assert_eq!(c.delay_with_jitter(3, 0.0), Duration::from_millis(200));
        assert_eq!(c.delay_with_jitter(3, 0.5), Duration::from_millis(300));
        assert!(c.delay_with_jitter(3, 0.999_999) <= Duration::from_millis(400));
        assert!(c.delay_with_jitter(10, 0.999_999) <= c.max);
        // Out-of-range samples are clamped rather than trusted.
        assert_eq!(c.delay_with_jitter(3, 7.0), Duration::from_millis(400));
        assert_eq!(c.delay_with_jitter(3, f64::NAN), Duration::from_millis(400));
        assert_eq!(c.delay_with_jitter(3, -1.0), Duration::from_millis(200));
    }

    #[test]
    fn jitter_source_is_uniform_enough() {
        let mut j = JitterSource::default();
        let samples: Vec<f64> = (0..1_000).map(|_| j.sample()).collect();
        assert!(samples.iter().all(|s| (0.0..1.0).contains(s)));
        let low = samples.iter().filter(|s| **s < 0.5).count();
        assert!((300..700).contains(&low), "{low} of 1000 below 0.5");
    }

    #[test]
    fn validate_rejects_nonsense() {
        assert_eq!(cfg(0, 10).validate(), Err(Error::ZeroBase));
        assert!(matches!(
            cfg(10, 5).validate(),
            Err(Error::MaxBelowBase { .. })
        ));
        assert_eq!(cfg(10, 10).validate(), Ok(()));
        assert_eq!(BackoffConfig::default().validate(), Ok(()));
    }
}
