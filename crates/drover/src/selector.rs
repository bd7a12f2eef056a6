//! Label selectors for `get -l`: kubectl's syntax (`k=v`, `k==v`, `k!=v`, `k`, `!k`,
//! `k in (a,b)`, `k notin (a)`, comma-separated and all required), parsed once and matched
//! against a label map.

use std::collections::BTreeMap;
use std::fmt;

use drover_api::names::{validate_label_key, validate_label_value};

/// Why a selector does not parse: always names the offending requirement, so the usage error
/// points at the part to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A requirement has no key (`=v`, `!`, an empty part between commas).
    #[error("selector {part:?}: a requirement needs a label key")]
    MissingKey {
        /// The requirement as written.
        part: String,
    },
    /// The key is not a valid label key.
    #[error("selector {part:?}: invalid label key {key:?}: {reason}")]
    BadKey {
        /// The requirement as written.
        part: String,
        /// The key.
        key: String,
        /// Why it is not valid.
        reason: String,
    },
    /// A value is not a valid label value.
    #[error("selector {part:?}: invalid label value {value:?}: {reason}")]
    BadValue {
        /// The requirement as written.
        part: String,
        /// The value.
        value: String,
        /// Why it is not valid.
        reason: String,
    },
    /// `in`/`notin` without a parenthesised list, or a parenthesis left open.
    #[error("selector {part:?}: expected a list in parentheses, as in `key in (a,b)`")]
    BadSet {
        /// The requirement as written.
        part: String,
    },
    /// Text that is none of the forms.
    #[error(
        "selector {part:?}: not a requirement (expected key=value, key!=value, key, !key, \
         key in (a,b) or key notin (a,b))"
    )]
    Unrecognised {
        /// The requirement as written.
        part: String,
    },
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` / `key==value`.
    Equals(String, String),
    /// `key!=value`: also true when the key is absent, as in kubectl.
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)`: also true when the key is absent.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    NotExists(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => labels.get(k).is_none_or(|v| !set.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, set) => write!(f, "{k} in ({})", set.join(",")),
            Requirement::NotIn(k, set) => write!(f, "{k} notin ({})", set.join(",")),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::NotExists(k) => write!(f, "!{k}"),
        }
    }
}

/// A parsed selector: every requirement must hold. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The requirements, in the order written.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Parses a selector.
    ///
    /// # Guarantees
    ///
    /// Never panics; every error names the requirement (the comma-separated part) that is
    /// wrong. Keys and values are checked with the rules `apply` holds labels to, so a selector
    /// that could never match a valid label is refused rather than silently matching nothing.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text)? {
            if part.trim().is_empty() && text.trim().is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part.trim())?);
        }
        Ok(Selector { requirements })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Splits at commas outside parentheses (`a in (x,y),b` is two requirements).
fn split_top_level(text: &str) -> Result<Vec<&str>, SelectorError> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or_else(|| SelectorError::BadSet {
                    part: text[start..].trim().to_string(),
                })?;
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError::BadSet {
            part: text[start..].trim().to_string(),
        });
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, SelectorError> {
    let owned = || part.to_string();
    if let Some(key) = part.strip_prefix('!') {
        if key.contains(['=', '(', ' ']) {
            return Err(SelectorError::Unrecognised { part: owned() });
        }
        return Ok(Requirement::NotExists(check_key(part, key.trim())?));
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(
            check_key(part, key.trim())?,
            check_value(part, value.trim())?,
        ));
    }
    if let Some((key, value)) = part.split_once('=') {
        // `==` is the same as `=`.
        let value = value.strip_prefix('=').unwrap_or(value);
        if value.contains('=') {
            return Err(SelectorError::Unrecognised { part: owned() });
        }
        return Ok(Requirement::Equals(
            check_key(part, key.trim())?,
            check_value(part, value.trim())?,
        ));
    }
    let mut words = part.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default().trim_start();
    if rest.is_empty() {
        if key.contains(['(', ')']) {
            return Err(SelectorError::Unrecognised { part: owned() });
        }
        return Ok(Requirement::Exists(check_key(part, key)?));
    }
    let (negated, list) = if let Some(list) = rest.strip_prefix("notin") {
        (true, list)
    } else if let Some(list) = rest.strip_prefix("in") {
        (false, list)
    } else {
        return Err(SelectorError::Unrecognised { part: owned() });
    };
    let key = check_key(part, key)?;
    let inner = list
        .trim()
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| SelectorError::BadSet { part: owned() })?;
    let values = inner
        .split(',')
        .map(|v| check_value(part, v.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if negated {
        Requirement::NotIn(key, values)
    } else {
        Requirement::In(key, values)
    })
}

fn check_key(part: &str, key: &str) -> Result<String, SelectorError> {
    if key.is_empty() {
        return Err(SelectorError::MissingKey {
            part: part.to_string(),
        });
    }
    validate_label_key(key).map_err(|error| SelectorError::BadKey {
        part: part.to_string(),
        key: key.to_string(),
        reason: error.to_string(),
    })?;
    Ok(key.to_string())
}

fn check_value(part: &str, value: &str) -> Result<String, SelectorError> {
    validate_label_value(value).map_err(|error| SelectorError::BadValue {
        part: part.to_string(),
        value: value.to_string(),
        reason: error.to_string(),
    })?;
    Ok(value.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_form_parses_and_matches_as_kubectl() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app in (web,db)", true),
            ("app in (db)", false),
            ("missing in (x)", false),
            ("app notin (db)", true),
            ("app notin (web, db)", false),
            ("missing notin (x)", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("app in (a,web),tier", true),
            (" app = web ", true),
            ("", true),
            ("example.com/role=x", false),
        ];
        for (text, expected) in cases {
            let selector = Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(selector.matches(&l), expected, "{text}");
        }
    }

    #[test]
    fn errors_name_the_offending_part() {
        let cases = [
            ("app=web,=x", "\"=x\""),
            ("app=web,tier in front", "\"tier in front\""),
            ("a in (x", "a in (x"),
            ("a)", "a)"),
            ("Bad Key=x", "\"Bad Key=x\""),
            ("app=not valid!", "\"app=not valid!\""),
            ("a=b=c", "\"a=b=c\""),
            ("app=web,,tier", "\"\""),
            ("!a=b", "\"!a=b\""),
        ];
        for (text, part) in cases {
            let error = Selector::parse(text).expect_err(text).to_string();
            assert!(error.contains(part), "{text}: {error}");
        }
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9]{0,5}"
    }

    fn requirement() -> impl Strategy<Value = Requirement> {
        let value = "[a-z0-9]{0,4}";
        let set = proptest::collection::vec("[a-z0-9]{1,4}", 1..3);
        prop_oneof![
            (key(), value).prop_map(|(k, v)| Requirement::Equals(k, v)),
            (key(), value).prop_map(|(k, v)| Requirement::NotEquals(k, v)),
            (key(), set.clone()).prop_map(|(k, s)| Requirement::In(k, s)),
            (key(), set).prop_map(|(k, s)| Requirement::NotIn(k, s)),
            key().prop_map(Requirement::Exists),
            key().prop_map(Requirement::NotExists),
        ]
    }

    proptest! {
        /// What a selector prints parses back to the same requirements.
        #[test]
        fn display_round_trips(reqs in proptest::collection::vec(requirement(), 1..4)) {
            let selector = Selector { requirements: reqs };
            let text = selector.to_string();
            prop_assert_eq!(Selector::parse(&text).unwrap(), selector);
        }

        /// Arbitrary text never panics the parser.
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,40}") {
            let _ = Selector::parse(&text);
        }

        /// `k!=v` is the negation of `k=v`, and `notin` of `in`, whatever the labels.
        #[test]
        fn negations_are_complements(
            k in key(), v in "[a-z]{1,2}",
            present in proptest::option::of("[a-z]{1,2}"),
        ) {
            let l: BTreeMap<String, String> =
                present.into_iter().map(|p| (k.clone(), p)).collect();
            let eq = Requirement::Equals(k.clone(), v.clone()).matches(&l);
            let ne = Requirement::NotEquals(k.clone(), v.clone()).matches(&l);
            let is_in = Requirement::In(k.clone(), vec![v.clone()]).matches(&l);
            let notin = Requirement::NotIn(k, vec![v]).matches(&l);
            prop_assert_ne!(eq, ne);
            prop_assert_ne!(is_in, notin);
            prop_assert_eq!(eq, is_in);
        }
    }
}
