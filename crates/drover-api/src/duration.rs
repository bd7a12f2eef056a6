//! Human-readable durations (`"30s"`, `"5m"`, `"1h30m"`, `"500ms"`): the one duration encoding
//! of manifests (`every:`, timeouts), command-line flags and config structs ([`human`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a duration string is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is empty.
    #[error("empty duration (expected e.g. 30s, 5m or 1h30m)")]
    Empty,
    /// A number has no unit after it.
    #[error("duration {text:?} needs a unit after {number} (one of d, h, m, s, ms)")]
    MissingUnit {
        /// The offending text.
        text: String,
        /// The number without a unit.
        number: String,
    },
    /// A unit is not one of d, h, m, s, ms.
    #[error("unknown unit {unit:?} in duration {text:?} (expected d, h, m, s or ms)")]
    UnknownUnit {
        /// The offending text.
        text: String,
        /// The unknown unit.
        unit: String,
    },
    /// Units must appear largest first, each at most once (`1h30m`, not `30m1h`).
    #[error("units in duration {text:?} must go from largest to smallest, each at most once")]
    UnitOrder {
        /// The offending text.
        text: String,
    },
    /// Something other than `<number><unit>` pairs.
    #[error("invalid duration {text:?} (expected e.g. 30s, 5m, 1h30m or 500ms)")]
    Invalid {
        /// The offending text.
        text: String,
    },
    /// The duration does not fit.
    #[error("duration {text:?} is too large")]
    Overflow {
        /// The offending text.
        text: String,
    },
}

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// A duration written as `<number><unit>` pairs, largest unit first: `d`, `h`, `m`, `s`, `ms`.
///
/// Millisecond precision. Canonical form (Display and serialization) uses `h`, `m`, `s` and
/// `ms` (`"1d"` is written back as `"24h"`); zero is `"0s"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(Duration);

impl HumanDuration {
    /// Wraps a `std` duration (sub-millisecond precision is dropped).
    pub fn from_std(d: Duration) -> Self {
        let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self(Duration::from_millis(millis))
    }

    /// `n` seconds.
    pub const fn from_secs(n: u64) -> Self {
        Self(Duration::from_secs(n))
    }

    /// The `std` duration.
    pub const fn as_std(self) -> Duration {
        self.0
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(DurationError::Empty);
        }
        let mut total: u64 = 0;
        let mut rest = text;
        let mut last_unit: Option<usize> = None;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(DurationError::Invalid {
                    text: text.to_string(),
                });
            }
            let number = &rest[..digits];
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            if unit.is_empty() {
                return Err(if rest.is_empty() {
                    DurationError::MissingUnit {
                        text: text.to_string(),
                        number: number.to_string(),
                    }
                } else {
                    DurationError::Invalid {
                        text: text.to_string(),
                    }
                });
            }
            let Some(index) = UNITS.iter().position(|(u, _)| *u == unit) else {
                return Err(DurationError::UnknownUnit {
                    text: text.to_string(),
                    unit: unit.to_string(),
                });
            };
            if last_unit.is_some_and(|last| index <= last) {
                return Err(DurationError::UnitOrder {
                    text: text.to_string(),
                });
            }
            last_unit = Some(index);
            let overflow = || DurationError::Overflow {
                text: text.to_string(),
            };
            let n: u64 = number.parse().map_err(|_| overflow())?;
            let millis = n.checked_mul(UNITS[index].1).ok_or_else(overflow)?;
            total = total.checked_add(millis).ok_or_else(overflow)?;
        }
        Ok(Self(Duration::from_millis(total)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut millis = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if millis == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in &UNITS[1..] {
            if millis >= *size {
                write!(f, "{}{unit}", millis / size)?;
                millis %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s, 5m or 1h30m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                self.visit_str(&v.to_string())
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Serde for a plain `std::time::Duration` field in the human form (`"250ms"`, `"5s"`): the
/// one duration encoding every config struct uses (`#[serde(with = "drover_api::duration::human")]`).
pub mod human {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::HumanDuration;

    /// Writes `d` as its canonical human form (sub-millisecond precision is dropped).
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        HumanDuration::from_std(*d).serialize(s)
    }

    /// Reads a human duration such as `"30s"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        HumanDuration::deserialize(d).map(HumanDuration::as_std)
    }

    /// The same for an `Option<Duration>` field (`null` or absent is `None`).
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        use super::HumanDuration;

        /// Writes `Some(d)` as its human form, `None` as null.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            d.map(HumanDuration::from_std).serialize(s)
        }

        /// Reads an optional human duration.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<HumanDuration>::deserialize(d).map(|d| d.map(HumanDuration::as_std))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        for (text, millis) in [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("1d", 86_400_000),
            ("1h1m1s1ms", 3_661_001),
            ("0s", 0),
            ("90s", 90_000),
        ] {
            assert_eq!(
                text.parse::<HumanDuration>().map(|d| d.as_std()),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects() {
        assert_eq!("".parse::<HumanDuration>(), Err(DurationError::Empty));
        assert!(matches!(
            "30".parse::<HumanDuration>(),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            "3w".parse::<HumanDuration>(),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "30m1h".parse::<HumanDuration>(),
            Err(DurationError::UnitOrder { .. })
        ));
        assert!(matches!(
            "1m1m".parse::<HumanDuration>(),
            Err(DurationError::UnitOrder { .. })
        ));
        assert!(matches!(
            "99999999999999999999d".parse::<HumanDuration>(),
            Err(DurationError::Overflow { .. })
        ));
        for bad in ["-1s", "1.5h", "s", " 1s", "1s ", "1 s"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["30s", "5m", "1h30m", "500ms", "24h", "1h1m1s1ms", "0s"] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert_eq!("1d".parse::<HumanDuration>().unwrap().to_string(), "24h");
        assert_eq!(
            serde_json::to_string(&HumanDuration::from_secs(90)).unwrap(),
            "\"1m30s\""
        );
        assert_eq!(
            serde_json::from_str::<HumanDuration>("\"2m\"").unwrap(),
            HumanDuration::from_secs(120)
        );
    }

    #[test]
    fn config_fields_use_the_human_form() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Config {
            #[serde(with = "human")]
            every: Duration,
            #[serde(default, with = "human::option")]
            margin: Option<Duration>,
        }
        let c = Config {
            every: Duration::from_millis(1500),
            margin: None,
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"every":"1s500ms","margin":null}"#);
        assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), c);
        let c: Config = serde_json::from_str(r#"{"every":"5m","margin":"250ms"}"#).unwrap();
        assert_eq!(c.margin, Some(Duration::from_millis(250)));
        assert!(serde_json::from_str::<Config>(r#"{"every":"5 parsecs"}"#).is_err());
    }
}
