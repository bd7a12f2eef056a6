//! [`ControllerConfig`]: every setting of a controller replica, with documented defaults and
//! [`ControllerConfig::validate`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The replica id is empty or contains `/` (it is an etcd key segment).
    #[error("controller id {0:?} must be non-empty and contain no '/'")]
    BadId(String),
    /// The election lease TTL is below etcd's minimum useful value or not whole seconds.
    #[error("lease_ttl must be a whole number of seconds, at least 2 s (got {0:?})")]
    BadLeaseTtl(Duration),
    /// `reschedule_base_delay` is zero or larger than `reschedule_max_delay`.
    #[error("reschedule_base_delay ({base:?}) must be > 0 and <= reschedule_max_delay ({max:?})")]
    BadRescheduleDelay {
        /// The base delay.
        base: Duration,
        /// The cap.
        max: Duration,
    },
    /// The event TTL is not a whole number of seconds of at least 1 minute.
    #[error("event_ttl must be whole seconds and at least 60 s (got {0:?})")]
    BadEventTtl(Duration),
    /// A periodic interval, or the number of commit lanes, was zero.
    #[error("{0} must be greater than zero")]
    ZeroInterval(&'static str),
}

/// Settings of one controller replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// This replica's id: its `controllers/<id>` key and its name in the election. Default: the
    /// host name and process id, `<host>-<pid>`.
    pub id: String,
    /// TTL of the election lease. A crashed leader is replaced about this long after its last
    /// keep-alive. Default: 5 s.
    #[serde(with = "drover_api::duration::human")]
    pub lease_ttl: Duration,
    /// How many times an instance its agent reports `Failed` is moved to a new placement before
    /// it is dead-lettered. Default: 3.
    pub reschedule_limit: u32,
    /// Delay before the first reschedule of a failed instance, counted from its `finished_at`;
    /// doubles with each attempt. Default: 1 s.
    #[serde(with = "drover_api::duration::human")]
    pub reschedule_base_delay: Duration,
    /// Cap on the reschedule delay. Default: 5 min.
    #[serde(with = "drover_api::duration::human")]
    pub reschedule_max_delay: Duration,
    /// How long events stay in etcd (their lease TTL). Default: 1 h.
    #[serde(with = "drover_api::duration::human")]
    pub event_ttl: Duration,
    /// Full re-plan interval even when nothing changed, a safety net. Default: 60 s.
    #[serde(with = "drover_api::duration::human")]
    pub resync_interval: Duration,
    /// Pause after a failed campaign or a lost leadership before campaigning again. Default: 1 s.
    #[serde(with = "drover_api::duration::human")]
    pub campaign_backoff: Duration,
    /// How long the leader waits to merge a burst of changes into one plan. Default: 20 ms.
    #[serde(with = "drover_api::duration::human")]
    pub debounce: Duration,
    /// How long a reconcile waits for the snapshot to reach the revision it must see (this
    /// leader's last write, or past a conflicting change) before failing and backing off.
    /// Default: 10 s.
    #[serde(with = "drover_api::duration::human")]
    pub sync_wait: Duration,
    /// Fenced transactions the leader keeps in flight at once when it commits a plan (steps
    /// of one task stay in order on one lane). Default: 8.
    pub commit_lanes: usize,
    /// Test hook: every plan first keeps its thread busy this long, so a test can show that a
    /// planner slower than the election TTL does not cost the leader its lease. Zero (the
    /// default) outside such tests; not part of the configuration format.
    #[doc(hidden)]
    #[serde(skip)]
    pub slow_plan_for_tests: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().replace('/', "-"))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "controller".into());
        Self {
            id: format!("{host}-{}", std::process::id()),
            lease_ttl: Duration::from_secs(5),
            reschedule_limit: 3,
            reschedule_base_delay: Duration::from_secs(1),
            reschedule_max_delay: Duration::from_secs(300),
            event_ttl: Duration::from_secs(3600),
            resync_interval: Duration::from_secs(60),
            campaign_backoff: Duration::from_secs(1),
            debounce: Duration::from_millis(20),
            sync_wait: Duration::from_secs(10),
            commit_lanes: 8,
            slow_plan_for_tests: Duration::ZERO,
        }
    }
}

impl ControllerConfig {
    /// The defaults, with replica id `id`.
    #[must_use]
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            ..Self::default()
        }
    }

    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id.is_empty() || self.id.contains('/') {
            return Err(ConfigError::BadId(self.id.clone()));
        }
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl.subsec_nanos() != 0 {
            return Err(ConfigError::BadLeaseTtl(self.lease_ttl));
        }
        if self.reschedule_base_delay.is_zero()
            || self.reschedule_base_delay > self.reschedule_max_delay
        {
            return Err(ConfigError::BadRescheduleDelay {
                base: self.reschedule_base_delay,
                max: self.reschedule_max_delay,
            });
        }
        if self.event_ttl < Duration::from_secs(60) || self.event_ttl.subsec_nanos() != 0 {
            return Err(ConfigError::BadEventTtl(self.event_ttl));
        }
        if self.commit_lanes == 0 {
            return Err(ConfigError::ZeroInterval("commit_lanes"));
        }
        for (name, d) in [
            ("resync_interval", self.resync_interval),
            ("campaign_backoff", self.campaign_backoff),
            ("sync_wait", self.sync_wait),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroInterval(name));
            }
        }
        Ok(())
    }

    /// The delay before reschedule number `attempt + 1` of a failed instance:
    /// `reschedule_base_delay * 2^attempt`, capped at `reschedule_max_delay`.
    #[must_use]
    pub fn reschedule_delay(&self, attempt: u32) -> Duration {
        // The runtime's one exponential backoff; its first failure waits `base`.
        drover_runtime::BackoffConfig {
            base: self.reschedule_base_delay,
            max: self.reschedule_max_delay,
            jitter: false,
        }
        .delay(attempt.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = ControllerConfig::new("c1");
        c.validate().expect("defaults are valid");
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert_eq!(c.reschedule_limit, 3);
        assert!(ControllerConfig::default().validate().is_ok());
    }

    #[test]
    fn rejects_bad_values() {
        let bad = |f: fn(&mut ControllerConfig)| {
            let mut c = ControllerConfig::new("c1");
            f(&mut c);
            c.validate().expect_err("must be rejected")
        };
        assert!(matches!(
            bad(|c| c.id = "a/b".into()),
            ConfigError::BadId(_)
        ));
        assert!(matches!(
            bad(|c| c.lease_ttl = Duration::from_millis(1500)),
            ConfigError::BadLeaseTtl(_)
        ));
        assert!(matches!(
            bad(|c| c.reschedule_base_delay = Duration::ZERO),
            ConfigError::BadRescheduleDelay { .. }
        ));
        assert!(matches!(
            bad(|c| c.event_ttl = Duration::from_secs(5)),
            ConfigError::BadEventTtl(_)
        ));
        assert!(matches!(
            bad(|c| c.resync_interval = Duration::ZERO),
            ConfigError::ZeroInterval(_)
        ));
    }

    #[test]
    fn reschedule_delay_doubles_and_caps() {
        let c = ControllerConfig::new("c1");
        assert_eq!(c.reschedule_delay(0), Duration::from_secs(1));
        assert_eq!(c.reschedule_delay(3), Duration::from_secs(8));
        assert_eq!(c.reschedule_delay(40), Duration::from_secs(300));
    }

    #[test]
    fn serde_uses_human_durations() {
        let c: ControllerConfig =
            serde_json::from_str(r#"{"id":"x","lease_ttl":"3s","debounce":"50ms"}"#)
                .expect("parses");
        assert_eq!(c.lease_ttl, Duration::from_secs(3));
        assert_eq!(c.debounce, Duration::from_millis(50));
        assert_eq!(c.reschedule_limit, 3);
    }
}
