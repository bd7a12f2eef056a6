//! Name validation (DNS-1123 labels, label keys, env names) and the [`InstanceId`] type.
//!
//! Every name that ends up inside an etcd key is a DNS-1123 label: lowercase ASCII letters,
//! digits and `-`, starting and ending with a letter or digit, 1 to 63 characters. Such a name
//! can contain neither `/` nor `.`, so no key built from it can escape its prefix, and an
//! [`InstanceId`] can join names with `.` and still be split back unambiguously.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest DNS-1123 label (and label-key name part), in bytes.
pub const MAX_LABEL_LEN: usize = 63;
/// Longest DNS-1123 subdomain (used as the optional prefix of a label key), in bytes.
pub const MAX_SUBDOMAIN_LEN: usize = 253;

/// Why a name or an instance id is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than allowed.
    #[error("must be at most {max} characters (got {len})")]
    TooLong {
        /// Length of the name, in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name contains a character that is not allowed.
    #[error("invalid character {ch:?} at position {pos} ({allowed})")]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its 0-based character position.
        pos: usize,
        /// What is allowed, for the message.
        allowed: &'static str,
    },
    /// The name does not start with a letter or digit.
    #[error("must start with a {expected} (got {ch:?})")]
    BadStart {
        /// The first character.
        ch: char,
        /// What the first character must be.
        expected: &'static str,
    },
    /// The name does not end with a letter or digit.
    #[error("must end with a {expected} (got {ch:?})")]
    BadEnd {
        /// The last character.
        ch: char,
        /// What the last character must be.
        expected: &'static str,
    },
    /// The `prefix/` part of a label key is not a DNS-1123 subdomain.
    #[error("invalid prefix {prefix:?}: {reason}")]
    BadPrefix {
        /// The prefix before the `/`.
        prefix: String,
        /// Why it is invalid.
        reason: Box<NameError>,
    },
    /// An instance id string does not have the documented structure.
    #[error("invalid instance id {text:?}: {reason} (expected <namespace>.<task>.<slot> or <namespace>.<task>.r<run>.<slot>)")]
    InvalidInstanceId {
        /// The text that was parsed.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A numeric user or group id does not fit in 32 bits.
    #[error("numeric id {value} is out of range (at most {max})", max = u32::MAX)]
    IdOutOfRange {
        /// The id as written.
        value: String,
    },
}

const LABEL_ALLOWED: &str = "only lowercase letters, digits and '-' are allowed";
const ALNUM_LOWER: &str = "lowercase letter or digit";

/// Validates a DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
///
/// Used for task names, namespaces, node names and dependency references.
pub fn validate_label(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_LABEL_LEN {
        return Err(NameError::TooLong {
            len: name.len(),
            max: MAX_LABEL_LEN,
        });
    }
    for (pos, ch) in name.chars().enumerate() {
        if !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-') {
            return Err(NameError::InvalidChar {
                ch,
                pos,
                allowed: LABEL_ALLOWED,
            });
        }
    }
    check_ends(
        name,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
        ALNUM_LOWER,
    )
}

/// True when `name` is a valid DNS-1123 label (see [`validate_label`]).
pub fn is_valid_label(name: &str) -> bool {
    validate_label(name).is_ok()
}

fn check_ends(
    name: &str,
    ok: impl Fn(char) -> bool,
    expected: &'static str,
) -> Result<(), NameError> {
    if let Some(ch) = name.chars().next() {
        if !ok(ch) {
            return Err(NameError::BadStart { ch, expected });
        }
    }
    if let Some(ch) = name.chars().last() {
        if !ok(ch) {
            return Err(NameError::BadEnd { ch, expected });
        }
    }
    Ok(())
}

/// Validates a DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253 characters.
pub fn validate_subdomain(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_SUBDOMAIN_LEN {
        return Err(NameError::TooLong {
            len: name.len(),
            max: MAX_SUBDOMAIN_LEN,
        });
    }
    name.split('.').try_for_each(validate_label)
}

/// Validates a label (or node selector) key, Kubernetes style: an optional DNS-1123 subdomain
/// prefix and `/`, then a name of 1 to 63 characters of `[A-Za-z0-9._-]`, starting and ending
/// with a letter or digit (e.g. `app`, `drover.dev/zone`).
pub fn validate_label_key(key: &str) -> Result<(), NameError> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            validate_subdomain(prefix).map_err(|reason| NameError::BadPrefix {
                prefix: prefix.to_string(),
                reason: Box::new(reason),
            })?;
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    validate_label_value(name)
}

/// Validates a label value: empty, or at most 63 characters of `[A-Za-z0-9._-]` starting and
/// ending with a letter or digit.
pub fn validate_label_value(value: &str) -> Result<(), NameError> {
    if value.len() > MAX_LABEL_LEN {
        return Err(NameError::TooLong {
            len: value.len(),
            max: MAX_LABEL_LEN,
        });
    }
    for (pos, ch) in value.chars().enumerate() {
        if !(ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')) {
            return Err(NameError::InvalidChar {
                ch,
                pos,
                allowed: "only letters, digits, '-', '_' and '.' are allowed",
            });
        }
    }
    check_ends(value, |c| c.is_ascii_alphanumeric(), "letter or digit")
}

/// Validates an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn validate_env_name(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err(NameError::Empty);
    };
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(NameError::BadStart {
            ch: first,
            expected: "letter or '_'",
        });
    }
    for (pos, ch) in name.chars().enumerate() {
        if !(ch.is_ascii_alphanumeric() || ch == '_') {
            return Err(NameError::InvalidChar {
                ch,
                pos,
                allowed: "only letters, digits and '_' are allowed",
            });
        }
    }
    Ok(())
}

/// Longest user or group name [`validate_account`] accepts, in bytes (the usual `useradd` limit).
pub const MAX_ACCOUNT_LEN: usize = 32;

/// Validates a user or group as a task may name it (`spec.user`, `spec.group`): a decimal id
/// that fits in 32 bits, or a name of `[A-Za-z_][A-Za-z0-9_.-]*` with an optional trailing
/// `$` (Samba machine accounts), at most [`MAX_ACCOUNT_LEN`] bytes.
///
/// # Caveats
/// Only the syntax is checked: whether the account exists is a property of the node, checked
/// by the agent when it starts the instance.
pub fn validate_account(name: &str) -> Result<(), NameError> {
    let Some(first) = name.chars().next() else {
        return Err(NameError::Empty);
    };
    if name.len() > MAX_ACCOUNT_LEN {
        return Err(NameError::TooLong {
            len: name.len(),
            max: MAX_ACCOUNT_LEN,
        });
    }
    if first.is_ascii_digit() {
        if let Some((pos, ch)) = name.chars().enumerate().find(|(_, c)| !c.is_ascii_digit()) {
            return Err(NameError::InvalidChar {
                ch,
                pos,
                allowed: "a numeric id has digits only",
            });
        }
        return match name.parse::<u32>() {
            Ok(_) => Ok(()),
            Err(_) => Err(NameError::IdOutOfRange {
                value: name.to_string(),
            }),
        };
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(NameError::BadStart {
            ch: first,
            expected: "letter, '_' or digit (numeric id)",
        });
    }
    let last = name.chars().count() - 1;
    for (pos, ch) in name.chars().enumerate() {
        let ok = ch.is_ascii_alphanumeric()
            || matches!(ch, '_' | '.' | '-')
            || (ch == '$' && pos == last);
        if !ok {
            return Err(NameError::InvalidChar {
                ch,
                pos,
                allowed: "only letters, digits, '_', '.', '-' and a final '$' are allowed",
            });
        }
    }
    Ok(())
}

/// The identity of one instance (one copy) of a task.
///
/// String form (used in etcd keys, container names and the CLI):
///
/// - service instance: `<namespace>.<task>.<slot>`, e.g. `default.echo.0`
/// - job run instance: `<namespace>.<task>.r<run>.<slot>`, e.g. `default.backup.r12.0`
///
/// Namespaces and task names are DNS-1123 labels, which never contain `.`, so the string
/// splits back unambiguously even when a task name contains `-`. Numbers are written in
/// canonical decimal (no sign, no leading zeros), so each id has exactly one string form.
/// The id never contains `/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId {
    namespace: String,
    task: String,
    run: Option<u64>,
    slot: u32,
}

impl InstanceId {
    /// The id of slot `slot` of a service task.
    pub fn service(namespace: &str, task: &str, slot: u32) -> Result<Self, NameError> {
        Self::new(namespace, task, None, slot)
    }

    /// The id of slot `slot` of run `run` of a job task.
    pub fn job(namespace: &str, task: &str, run: u64, slot: u32) -> Result<Self, NameError> {
        Self::new(namespace, task, Some(run), slot)
    }

    /// Builds an id, validating the namespace and the task name.
    pub fn new(
        namespace: &str,
        task: &str,
        run: Option<u64>,
        slot: u32,
    ) -> Result<Self, NameError> {
        let text = || format_id(namespace, task, run, slot);
        validate_label(namespace).map_err(|e| NameError::InvalidInstanceId {
            text: text(),
            reason: format!("namespace {e}"),
        })?;
        validate_label(task).map_err(|e| NameError::InvalidInstanceId {
            text: text(),
            reason: format!("task name {e}"),
        })?;
        Ok(Self {
            namespace: namespace.to_string(),
            task: task.to_string(),
            run,
            slot,
        })
    }

    /// The task's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The task's name.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// The slot (replica index), 0-based.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The job run number, `None` for service instances.
    pub fn run(&self) -> Option<u64> {
        self.run
    }
}

fn format_id(namespace: &str, task: &str, run: Option<u64>, slot: u32) -> String {
    match run {
        Some(run) => format!("{namespace}.{task}.r{run}.{slot}"),
        None => format!("{namespace}.{task}.{slot}"),
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_id(&self.namespace, &self.task, self.run, self.slot))
    }
}

/// Parses a canonical unsigned decimal number: digits only, no leading zeros.
fn parse_canonical<T: FromStr>(s: &str) -> Option<T> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

impl FromStr for InstanceId {
    type Err = NameError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| NameError::InvalidInstanceId {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = text.split('.').collect();
        let (namespace, task, run, slot) = match parts.as_slice() {
            [ns, task, slot] => (*ns, *task, None, *slot),
            [ns, task, run, slot] => {
                let run = run
                    .strip_prefix('r')
                    .and_then(parse_canonical::<u64>)
                    .ok_or_else(|| bad("the run must be written r<number>"))?;
                (*ns, *task, Some(run), *slot)
            }
            _ => return Err(bad("wrong number of '.'-separated parts")),
        };
        let slot = parse_canonical::<u32>(slot).ok_or_else(|| bad("the slot must be a number"))?;
        let id = Self::new(namespace, task, run, slot)?;
        Ok(id)
    }
}

impl Serialize for InstanceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for InstanceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "echo", "my-task-2", "0", &"a".repeat(63)] {
            assert!(is_valid_label(ok), "{ok}");
        }
        assert_eq!(validate_label(""), Err(NameError::Empty));
        assert!(matches!(
            validate_label(&"a".repeat(64)),
            Err(NameError::TooLong { len: 64, .. })
        ));
        assert!(matches!(
            validate_label("Echo"),
            Err(NameError::InvalidChar {
                ch: 'E',
                pos: 0,
                ..
            })
        ));
        assert!(matches!(
            validate_label("a/b"),
            Err(NameError::InvalidChar { ch: '/', .. })
        ));
        assert!(matches!(
            validate_label("a.b"),
            Err(NameError::InvalidChar { ch: '.', .. })
        ));
        assert!(matches!(
            validate_label("-a"),
            Err(NameError::BadStart { ch: '-', .. })
        ));
        assert!(matches!(
            validate_label("a-"),
            Err(NameError::BadEnd { ch: '-', .. })
        ));
        let msg = validate_label("a_b").unwrap_err().to_string();
        assert!(msg.contains("'_'") && msg.contains("lowercase"), "{msg}");
    }

    #[test]
    fn label_keys_and_values() {
        for ok in ["app", "drover.dev/zone", "App_Name.v1", "a"] {
            assert!(validate_label_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/app", "Drover.dev/zone", "a/", "-x", "a b", "x/y/z"] {
            assert!(validate_label_key(bad).is_err(), "{bad}");
        }
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("v1.2_3").is_ok());
        assert!(validate_label_value("has space").is_err());
    }

    #[test]
    fn accounts() {
        for ok in [
            "nobody",
            "0",
            "65534",
            "_svc",
            "www-data",
            "a.b",
            "host$",
            "4294967295",
        ] {
            assert!(validate_account(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "a b",
            "1x",
            "4294967296",
            "a$b",
            "root:root",
            &"a".repeat(33),
        ] {
            assert!(validate_account(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_names() {
        for ok in ["PORT", "_x", "a1_B"] {
            assert!(validate_env_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A=B", "A B"] {
            assert!(validate_env_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instance_ids_round_trip() {
        let svc = InstanceId::service("default", "my-echo-2", 3).unwrap();
        assert_eq!(svc.to_string(), "default.my-echo-2.3");
        assert_eq!(svc.to_string().parse::<InstanceId>().unwrap(), svc);
        let job = InstanceId::job("prod", "backup-1", 12, 0).unwrap();
        assert_eq!(job.to_string(), "prod.backup-1.r12.0");
        let back: InstanceId = job.to_string().parse().unwrap();
        assert_eq!(back, job);
        assert_eq!(
            (back.namespace(), back.task(), back.run(), back.slot()),
            ("prod", "backup-1", Some(12), 0)
        );
        let json = serde_json::to_string(&job).unwrap();
        assert_eq!(json, "\"prod.backup-1.r12.0\"");
        assert_eq!(serde_json::from_str::<InstanceId>(&json).unwrap(), job);
    }

    #[test]
    fn instance_id_rejections() {
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c",
            "a.b.01",
            "a.b.+1",
            "a.b.-1",
            "A.b.0",
            "a.b.x1.0",
            "a.b.r.0",
            "a.b.r01.0",
            "a.b.r1.0.0",
            "a/b.c.0",
            "a..0",
            "a.b.99999999999",
        ] {
            assert!(bad.parse::<InstanceId>().is_err(), "{bad}");
        }
        assert!(InstanceId::service("ns", "Bad", 0).is_err());
        let msg = "x".parse::<InstanceId>().unwrap_err().to_string();
        assert!(msg.contains("\"x\""), "{msg}");
    }
}
