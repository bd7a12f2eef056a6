//! Resource quantities: [`Cpu`] in millicores and [`Memory`] in bytes, Kubernetes notation.
//!
//! Both serialize as their canonical string (`"250m"`, `"2"`, `"64Mi"`), and both accept YAML
//! numbers as well as strings when deserializing (`cpu: 1`, `memory: 1000`).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a quantity string is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text is empty.
    #[error("empty {kind} quantity")]
    Empty {
        /// `"CPU"` or `"memory"`.
        kind: &'static str,
    },
    /// The text is a negative number.
    #[error("{kind} quantity {text:?} must not be negative")]
    Negative {
        /// `"CPU"` or `"memory"`.
        kind: &'static str,
        /// The offending text.
        text: String,
    },
    /// The value does not fit in 64 bits.
    #[error("{kind} quantity {text:?} is too large")]
    Overflow {
        /// `"CPU"` or `"memory"`.
        kind: &'static str,
        /// The offending text.
        text: String,
    },
    /// The number is followed by a suffix we do not know.
    #[error("unknown {kind} suffix {suffix:?} in {text:?} (expected {expected})")]
    UnknownSuffix {
        /// `"CPU"` or `"memory"`.
        kind: &'static str,
        /// The offending text.
        text: String,
        /// The unrecognised suffix.
        suffix: String,
        /// The accepted suffixes, for the message.
        expected: &'static str,
    },
    /// The value is finer than the unit (below 1 millicore, or a fraction of a byte).
    #[error("{kind} quantity {text:?} is finer than {unit}")]
    TooPrecise {
        /// `"CPU"` or `"memory"`.
        kind: &'static str,
        /// The offending text.
        text: String,
        /// The smallest unit.
        unit: &'static str,
    },
    /// The text is not a CPU quantity at all.
    #[error("invalid CPU quantity {text:?} (expected e.g. 250m or 1.5)")]
    InvalidCpu {
        /// The offending text.
        text: String,
    },
    /// The text is not a memory quantity at all.
    #[error("invalid memory quantity {text:?} (expected e.g. 64Mi, 1Gi or 512M)")]
    InvalidMemory {
        /// The offending text.
        text: String,
    },
}

/// A decimal number split at its first non-numeric character.
struct Decimal<'a> {
    int: &'a str,
    frac: &'a str,
    suffix: &'a str,
}

/// Splits `text` into `<digits>[.<digits>]<suffix>`; `None` when there is no number.
fn split_decimal(text: &str) -> Option<Decimal<'_>> {
    let end_int = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let int = &text[..end_int];
    let rest = &text[end_int..];
    let (frac, suffix) = match rest.strip_prefix('.') {
        Some(after) => {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        }
        None => ("", rest),
    };
    let has_dot = rest.starts_with('.');
    if int.is_empty() || (has_dot && frac.is_empty()) {
        return None;
    }
    Some(Decimal { int, frac, suffix })
}

/// `(int.frac) * multiplier`, exactly, or an error if it overflows or is not an integer.
fn scale(d: &Decimal<'_>, multiplier: u128) -> Result<u64, ScaleError> {
    let int: u128 = d.int.parse().map_err(|_| ScaleError::Overflow)?;
    let mut value = int.checked_mul(multiplier).ok_or(ScaleError::Overflow)?;
    if !d.frac.is_empty() {
        let digits = d.frac.trim_end_matches('0');
        if digits.len() > 30 {
            return Err(ScaleError::Fraction);
        }
        let frac: u128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| ScaleError::Overflow)?
        };
        let denom = 10u128.pow(u32::try_from(digits.len()).map_err(|_| ScaleError::Overflow)?);
        let num = frac.checked_mul(multiplier).ok_or(ScaleError::Overflow)?;
        if num % denom != 0 {
            return Err(ScaleError::Fraction);
        }
        value = value.checked_add(num / denom).ok_or(ScaleError::Overflow)?;
    }
    u64::try_from(value).map_err(|_| ScaleError::Overflow)
}

enum ScaleError {
    Overflow,
    Fraction,
}

fn precheck(kind: &'static str, text: &str) -> Result<(), QuantityError> {
    if text.is_empty() {
        return Err(QuantityError::Empty { kind });
    }
    if text.starts_with('-') {
        return Err(QuantityError::Negative {
            kind,
            text: text.to_string(),
        });
    }
    Ok(())
}

/// CPU in millicores: `"250m"` is 250, `"1"` is 1000, `"0.5"` is 500.
///
/// Canonical form: whole cores when exact (`"2"`), millicores otherwise (`"1500m"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu(pub u64);

impl Cpu {
    /// `n` millicores.
    pub const fn millis(n: u64) -> Self {
        Self(n)
    }

    /// `n` whole cores (saturating).
    pub const fn cores(n: u64) -> Self {
        Self(n.saturating_mul(1000))
    }

    /// The value in millicores.
    pub const fn as_millis(self) -> u64 {
        self.0
    }
}

const CPU_SUFFIXES: &str = "no suffix for cores or 'm' for millicores";

impl FromStr for Cpu {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const KIND: &str = "CPU";
        precheck(KIND, text)?;
        let invalid = || QuantityError::InvalidCpu {
            text: text.to_string(),
        };
        let d = split_decimal(text).ok_or_else(invalid)?;
        let multiplier = match d.suffix {
            "" => 1000,
            "m" => 1,
            s if s.chars().all(|c| c.is_ascii_alphabetic()) => {
                return Err(QuantityError::UnknownSuffix {
                    kind: KIND,
                    text: text.to_string(),
                    suffix: s.to_string(),
                    expected: CPU_SUFFIXES,
                })
            }
            _ => return Err(invalid()),
        };
        scale(&d, multiplier).map(Cpu).map_err(|e| match e {
            ScaleError::Overflow => QuantityError::Overflow {
                kind: KIND,
                text: text.to_string(),
            },
            ScaleError::Fraction => QuantityError::TooPrecise {
                kind: KIND,
                text: text.to_string(),
                unit: "1m",
            },
        })
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

/// Memory in bytes: `"64Mi"`, `"1Gi"`, `"512Ki"`, `"1G"`, `"128M"`, `"1000"`, `"1.5Gi"`.
///
/// Binary suffixes `Ki Mi Gi Ti Pi Ei` (powers of 1024) and decimal suffixes `k`/`K M G T P E`
/// (powers of 1000). A fraction is allowed when the result is a whole number of bytes.
/// Canonical form: the shortest exact spelling, binary suffixes winning ties (`"64Mi"`,
/// `"128M"`, `"1536"` → `"1536"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Memory(pub u64);

const MEMORY_SUFFIXES: &str = "one of Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E, or none for bytes";

const BINARY: [(&str, u64); 6] = [
    ("Ei", 1 << 60),
    ("Pi", 1 << 50),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
];
const DECIMAL: [(&str, u64); 6] = [
    ("E", 1_000_000_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("T", 1_000_000_000_000),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("k", 1_000),
];

impl Memory {
    /// `n` bytes.
    pub const fn bytes(n: u64) -> Self {
        Self(n)
    }

    /// `n` MiB (saturating).
    pub const fn mebibytes(n: u64) -> Self {
        Self(n.saturating_mul(1 << 20))
    }

    /// The value in bytes.
    pub const fn as_bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Memory {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const KIND: &str = "memory";
        precheck(KIND, text)?;
        let invalid = || QuantityError::InvalidMemory {
            text: text.to_string(),
        };
        let d = split_decimal(text).ok_or_else(invalid)?;
        let multiplier = match d.suffix {
            "" => 1,
            "K" => 1000,
            s => match BINARY
                .iter()
                .chain(DECIMAL.iter())
                .find(|(name, _)| *name == s)
            {
                Some((_, m)) => *m,
                None if s.chars().all(|c| c.is_ascii_alphabetic()) => {
                    return Err(QuantityError::UnknownSuffix {
                        kind: KIND,
                        text: text.to_string(),
                        suffix: s.to_string(),
                        expected: MEMORY_SUFFIXES,
                    })
                }
                None => return Err(invalid()),
            },
        };
        scale(&d, u128::from(multiplier))
            .map(Memory)
            .map_err(|e| match e {
                ScaleError::Overflow => QuantityError::Overflow {
                    kind: KIND,
                    text: text.to_string(),
                },
                ScaleError::Fraction => QuantityError::TooPrecise {
                    kind: KIND,
                    text: text.to_string(),
                    unit: "1 byte",
                },
            })
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        let mut best = n.to_string();
        if n != 0 {
            let exact = |table: &[(&str, u64)]| {
                table
                    .iter()
                    .find(|(_, m)| n % m == 0)
                    .map(|(s, m)| format!("{}{s}", n / m))
            };
            for candidate in [exact(&BINARY), exact(&DECIMAL)].into_iter().flatten() {
                if candidate.len() < best.len() {
                    best = candidate;
                }
            }
        }
        f.write_str(&best)
    }
}

macro_rules! quantity_serde {
    ($ty:ident, $expecting:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                }
                deserializer.deserialize_any(V)
            }
        }
    };
}

quantity_serde!(Cpu, "a CPU quantity such as 250m or 1.5");
quantity_serde!(Memory, "a memory quantity such as 64Mi or 1Gi");

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses() {
        for (text, millis) in [
            ("250m", 250),
            ("1", 1000),
            ("0.5", 500),
            ("2", 2000),
            ("1.5", 1500),
            ("0.001", 1),
            ("0", 0),
            ("1.250", 1250),
            ("1000m", 1000),
        ] {
            assert_eq!(text.parse::<Cpu>(), Ok(Cpu(millis)), "{text}");
        }
    }

    #[test]
    fn cpu_rejects() {
        assert_eq!("".parse::<Cpu>(), Err(QuantityError::Empty { kind: "CPU" }));
        assert!(matches!(
            "-1".parse::<Cpu>(),
            Err(QuantityError::Negative { .. })
        ));
        assert!(matches!(
            "0.0001".parse::<Cpu>(),
            Err(QuantityError::TooPrecise { .. })
        ));
        assert!(matches!(
            "1.5m".parse::<Cpu>(),
            Err(QuantityError::TooPrecise { .. })
        ));
        assert!(matches!(
            "2k".parse::<Cpu>(),
            Err(QuantityError::UnknownSuffix { .. })
        ));
        assert!(matches!(
            "99999999999999999999".parse::<Cpu>(),
            Err(QuantityError::Overflow { .. })
        ));
        assert!(matches!(
            "18446744073709551615".parse::<Cpu>(),
            Err(QuantityError::Overflow { .. })
        ));
        for bad in ["abc", "m", ".5", "1.", "1 m", " 1", "1e3x", "+1", "1..2"] {
            assert!(bad.parse::<Cpu>().is_err(), "{bad}");
        }
        let msg = "abc".parse::<Cpu>().unwrap_err().to_string();
        assert_eq!(
            msg,
            "invalid CPU quantity \"abc\" (expected e.g. 250m or 1.5)"
        );
    }

    #[test]
    fn cpu_display_is_canonical() {
        assert_eq!(Cpu(2000).to_string(), "2");
        assert_eq!(Cpu(250).to_string(), "250m");
        assert_eq!(Cpu(1500).to_string(), "1500m");
        assert_eq!(Cpu(0).to_string(), "0");
    }

    #[test]
    fn memory_parses() {
        for (text, bytes) in [
            ("64Mi", 64 << 20),
            ("1Gi", 1 << 30),
            ("512Ki", 512 << 10),
            ("1G", 1_000_000_000),
            ("1000", 1000),
            ("128M", 128_000_000),
            ("1k", 1000),
            ("1K", 1000),
            ("1.5Gi", 3 << 29),
            ("0", 0),
            ("15Ei", 15 << 60),
        ] {
            assert_eq!(text.parse::<Memory>(), Ok(Memory(bytes)), "{text}");
        }
    }

    #[test]
    fn memory_rejects() {
        assert!(matches!(
            "".parse::<Memory>(),
            Err(QuantityError::Empty { .. })
        ));
        assert!(matches!(
            "-1Mi".parse::<Memory>(),
            Err(QuantityError::Negative { .. })
        ));
        assert!(matches!(
            "16Ei".parse::<Memory>(),
            Err(QuantityError::Overflow { .. })
        ));
        assert!(matches!(
            "1Xi".parse::<Memory>(),
            Err(QuantityError::UnknownSuffix { .. })
        ));
        assert!(matches!(
            "1mb".parse::<Memory>(),
            Err(QuantityError::UnknownSuffix { .. })
        ));
        assert!(matches!(
            "0.5".parse::<Memory>(),
            Err(QuantityError::TooPrecise { .. })
        ));
        for bad in ["Mi", "abc", "1 Mi", "1.Mi", "1Mi!"] {
            assert!(bad.parse::<Memory>().is_err(), "{bad}");
        }
        let msg = "1Xi".parse::<Memory>().unwrap_err().to_string();
        assert!(msg.contains("\"Xi\"") && msg.contains("\"1Xi\""), "{msg}");
    }

    #[test]
    fn memory_display_round_trips() {
        assert_eq!(Memory(64 << 20).to_string(), "64Mi");
        assert_eq!(Memory(128_000_000).to_string(), "128M");
        assert_eq!(Memory(1000).to_string(), "1k");
        assert_eq!(Memory(1536).to_string(), "1536");
        assert_eq!(Memory(0).to_string(), "0");
        for n in [
            0,
            1,
            999,
            1024,
            1_000_000,
            3 << 29,
            u64::MAX,
            u64::MAX - 1,
            1 << 63,
        ] {
            let m = Memory(n);
            assert_eq!(m.to_string().parse::<Memory>(), Ok(m), "{n}");
        }
    }

    #[test]
    fn serde_forms() {
        assert_eq!(serde_json::to_string(&Cpu(250)).unwrap(), "\"250m\"");
        assert_eq!(serde_json::from_str::<Cpu>("1").unwrap(), Cpu(1000));
        assert_eq!(serde_json::from_str::<Cpu>("0.5").unwrap(), Cpu(500));
        assert_eq!(
            serde_json::from_str::<Memory>("\"64Mi\"").unwrap(),
            Memory(64 << 20)
        );
        assert_eq!(
            serde_json::from_str::<Memory>("1000").unwrap(),
            Memory(1000)
        );
        assert!(serde_json::from_str::<Memory>("-1").is_err());
        assert!(serde_json::from_str::<Cpu>("true").is_err());
    }
}
