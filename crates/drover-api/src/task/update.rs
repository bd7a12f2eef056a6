//! A service's update strategy (`spec.update`): its copy budget (`maxSurge`,
//! `maxUnavailable`), the health gate a new copy must pass (`minHealthySeconds`,
//! `healthyDeadlineSeconds`), the rollout's deadline, canaries and automatic revert.
//!
//! One budget covers every path that replaces copies: rollouts, drains, agent shutdowns and
//! replacements of failed copies.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of copies, absolute (`2`) or a share of `replicas` (`"25%"`), as in Kubernetes'
/// `maxSurge` and `maxUnavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Budget {
    /// So many copies.
    Count(u32),
    /// This percentage of `replicas` (0 to 100).
    Percent(u32),
}

impl Budget {
    /// The number of copies for `replicas`: a percentage rounded up (`round_up`, for surge)
    /// or down (for unavailability), as Kubernetes does.
    pub fn resolve(self, replicas: u32, round_up: bool) -> u32 {
        match self {
            Budget::Count(n) => n,
            Budget::Percent(p) => {
                let scaled = u64::from(replicas) * u64::from(p.min(100));
                let n = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Count(n) => write!(f, "{n}"),
            Budget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Budget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Budget::Count(n) => s.serialize_u32(*n),
            Budget::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => Ok(Budget::Count(n)),
            Raw::Text(t) => parse_percent(&t).map_err(serde::de::Error::custom),
        }
    }
}

fn parse_percent(text: &str) -> Result<Budget, String> {
    let bad = || format!("{text:?} is neither a number of copies nor a percentage like \"25%\"");
    let digits = text.trim().strip_suffix('%').ok_or_else(bad)?;
    let p: u32 = digits.trim().parse().map_err(|_| bad())?;
    if p > 100 {
        return Err(format!(
            "{text:?}: a percentage of replicas is at most 100%"
        ));
    }
    Ok(Budget::Percent(p))
}

/// How a service's copies are replaced: by a new revision (a rollout), off a draining node,
/// or after a failure. A copy counts as live until its process has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct UpdateStrategy {
    /// Copies allowed above `replicas` while copies are replaced, so a replacement starts
    /// before the copy it replaces stops. Default 1.
    pub max_surge: Budget,
    /// Copies of `replicas` that may be unavailable while copies are replaced. Default 0 when
    /// `maxSurge` allows a copy, else 1 (the old copy stops first); both 0 is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<Budget>,
    /// Seconds a new copy must be Running — with its health check passing, if it has one —
    /// before it counts as available. Default 10.
    pub min_healthy_seconds: u32,
    /// A new copy not available this many seconds after it was placed fails the rollout.
    /// Default 300.
    pub healthy_deadline_seconds: u32,
    /// A rollout that makes no progress (no new copy becomes available) for this many
    /// seconds fails. Default 600.
    pub progress_deadline_seconds: u32,
    /// New copies started first when a revision replaces another; the rollout then waits for
    /// `drover rollout promote`. Default 0 (no canary).
    pub canary: u32,
    /// A failed rollout restores the last revision that rolled out healthy. Default false.
    pub auto_revert: bool,
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        Self {
            max_surge: Budget::Count(1),
            max_unavailable: None,
            min_healthy_seconds: 10,
            healthy_deadline_seconds: 300,
            progress_deadline_seconds: 600,
            canary: 0,
            auto_revert: false,
        }
    }
}

/// The budget of one service, resolved for its `replicas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedBudget {
    /// Extra live copies allowed.
    pub surge: u32,
    /// Copies of `replicas` allowed to be unavailable.
    pub unavailable: u32,
}

impl UpdateStrategy {
    /// True for the default (nothing to write).
    pub fn is_default(&self) -> bool {
        *self == UpdateStrategy::default()
    }

    /// `maxSurge` and `maxUnavailable` for `replicas` copies. Should both resolve to 0 (a
    /// percentage of few replicas), one copy may be unavailable, so replacement can go on.
    pub fn budget(&self, replicas: u32) -> ResolvedBudget {
        let surge = self.max_surge.resolve(replicas, true);
        let unavailable = match self.max_unavailable {
            Some(b) => b.resolve(replicas, false),
            None => u32::from(surge == 0),
        };
        ResolvedBudget {
            surge,
            unavailable: if surge == 0 && unavailable == 0 {
                1
            } else {
                unavailable
            },
        }
    }

    /// Problems with the strategy, as (field under `spec.update`, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let zero = |b: Budget| matches!(b, Budget::Count(0) | Budget::Percent(0));
        if zero(self.max_surge) && self.max_unavailable.is_some_and(zero) {
            out.push((
                "maxUnavailable",
                "maxSurge and maxUnavailable are both 0: no copy could ever be replaced \
                 (allow one extra copy or one unavailable copy)"
                    .to_string(),
            ));
        }
        if self.healthy_deadline_seconds == 0 {
            out.push(("healthyDeadlineSeconds", "must be at least 1".to_string()));
        } else if self.healthy_deadline_seconds <= self.min_healthy_seconds {
            out.push((
                "healthyDeadlineSeconds",
                format!(
                    "{} must exceed minHealthySeconds ({}): a copy could never become healthy in time",
                    self.healthy_deadline_seconds, self.min_healthy_seconds
                ),
            ));
        }
        if self.progress_deadline_seconds < self.healthy_deadline_seconds {
            out.push((
                "progressDeadlineSeconds",
                format!(
                    "{} is below healthyDeadlineSeconds ({}): the rollout would fail before a copy's own deadline",
                    self.progress_deadline_seconds, self.healthy_deadline_seconds
                ),
            ));
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn budgets_read_as_numbers_or_percentages() {
        let s: UpdateStrategy =
            serde_json::from_str(r#"{"maxSurge":"25%","maxUnavailable":0}"#).unwrap();
        assert_eq!(s.max_surge, Budget::Percent(25));
        assert_eq!(s.max_unavailable, Some(Budget::Count(0)));
        assert_eq!(
            serde_json::to_string(&s.max_surge).unwrap(),
            r#""25%""#,
            "written back as written"
        );
        for bad in [
            r#"{"maxSurge":"25"}"#,
            r#"{"maxSurge":"150%"}"#,
            r#"{"maxSurge":-1}"#,
        ] {
            assert!(
                serde_json::from_str::<UpdateStrategy>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_default_is_a_zero_downtime_roll_and_no_surge_means_stop_first() {
        let d = UpdateStrategy::default();
        assert_eq!(
            d.budget(4),
            ResolvedBudget {
                surge: 1,
                unavailable: 0
            }
        );
        let no_surge = UpdateStrategy {
            max_surge: Budget::Count(0),
            ..d
        };
        assert_eq!(no_surge.budget(4).unavailable, 1);
        assert!(no_surge.problems().is_empty());
        let stuck = UpdateStrategy {
            max_unavailable: Some(Budget::Count(0)),
            ..no_surge
        };
        assert_eq!(stuck.problems()[0].0, "maxUnavailable");
    }

    #[test]
    fn deadlines_must_leave_room_to_become_healthy() {
        let s = UpdateStrategy {
            min_healthy_seconds: 30,
            healthy_deadline_seconds: 30,
            progress_deadline_seconds: 20,
            ..UpdateStrategy::default()
        };
        let fields: Vec<_> = s.problems().into_iter().map(|p| p.0).collect();
        assert_eq!(
            fields,
            ["healthyDeadlineSeconds", "progressDeadlineSeconds"]
        );
    }

    proptest! {
        /// Whatever the percentages, some copy can always be replaced, and a percentage never
        /// exceeds the replicas it is a share of.
        #[test]
        fn a_resolved_budget_always_lets_a_copy_be_replaced(
            replicas in 0u32..2000,
            surge in 0u32..=100,
            unavailable in 0u32..=100,
        ) {
            let s = UpdateStrategy {
                max_surge: Budget::Percent(surge),
                max_unavailable: Some(Budget::Percent(unavailable)),
                ..UpdateStrategy::default()
            };
            let b = s.budget(replicas);
            prop_assert!(b.surge > 0 || b.unavailable > 0);
            prop_assert!(b.surge <= replicas.max(1));
            prop_assert!(b.unavailable <= replicas.max(1));
        }
    }
}
