//! Cron schedules: 5-field expressions evaluated in an IANA time zone.
//!
//! Fields are `minute hour day-of-month month day-of-week` with the usual Vixie-cron syntax
//! (`*`, lists `1,15`, ranges `1-5`, steps `*/15` and `10-50/20`, names `MON` and `JAN`,
//! `@hourly`/`@daily`/`@weekly`/`@monthly`/`@yearly`). As in Vixie cron, when both
//! day-of-month and day-of-week are restricted a day matching either one fires. Seconds and
//! years (6- and 7-field forms) are rejected: Drover schedules at minute granularity.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// Why a schedule or a time zone is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression is empty.
    #[error(
        "empty cron expression (expected 5 fields: minute hour day-of-month month day-of-week)"
    )]
    Empty,
    /// The expression does not have exactly 5 fields.
    #[error("cron expression {expr:?} has {count} fields, expected 5 (minute hour day-of-month month day-of-week){hint}")]
    FieldCount {
        /// The expression.
        expr: String,
        /// How many whitespace-separated fields it has.
        count: usize,
        /// Extra advice for the common 6/7-field forms.
        hint: &'static str,
    },
    /// One field is invalid.
    #[error("cron expression {expr:?}: invalid {field} field {text:?}: {reason}")]
    InvalidField {
        /// The expression.
        expr: String,
        /// Which field (`"minute"`, `"hour"`, ...).
        field: &'static str,
        /// The field's text.
        text: String,
        /// What the cron parser said.
        reason: String,
    },
    /// The expression is invalid as a whole (e.g. an unknown `@nickname`).
    #[error("invalid cron expression {expr:?}: {reason}")]
    Invalid {
        /// The expression.
        expr: String,
        /// What the cron parser said.
        reason: String,
    },
    /// The time zone is not a known IANA name.
    #[error("unknown time zone {name:?} (expected an IANA name such as UTC or Europe/Berlin)")]
    UnknownTimeZone {
        /// The name given.
        name: String,
    },
}

const FIELDS: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
const RANGES: [&str; 5] = ["0-59", "0-23", "1-31", "1-12 or JAN-DEC", "0-7 or SUN-SAT"];

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
}

/// Parses an IANA time zone name (`UTC`, `Europe/Berlin`).
pub fn parse_time_zone(name: &str) -> Result<Tz, ScheduleError> {
    Tz::from_str(name).map_err(|_| ScheduleError::UnknownTimeZone {
        name: name.to_string(),
    })
}

/// Validates a 5-field cron expression, naming the bad field when there is one.
pub fn parse_cron(expr: &str) -> Result<Cron, ScheduleError> {
    let trimmed = expr.trim();
    if trimmed.is_empty() {
        return Err(ScheduleError::Empty);
    }
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    if !trimmed.starts_with('@') && fields.len() != 5 {
        let hint = match fields.len() {
            6 => "; a seconds field is not supported",
            7 => "; seconds and year fields are not supported",
            _ => "",
        };
        return Err(ScheduleError::FieldCount {
            expr: expr.to_string(),
            count: fields.len(),
            hint,
        });
    }
    let invalid = |reason: String| ScheduleError::Invalid {
        expr: expr.to_string(),
        reason,
    };
    if trimmed.starts_with('@') {
        return parser().parse(trimmed).map_err(|e| invalid(e.to_string()));
    }
    parser().parse(trimmed).map_err(|whole| {
        // Find the culprit by parsing each field alone, the others left as `*`.
        for (i, text) in fields.iter().enumerate() {
            let mut probe = ["*"; 5];
            probe[i] = text;
            if let Err(e) = parser().parse(&probe.join(" ")) {
                return ScheduleError::InvalidField {
                    expr: expr.to_string(),
                    field: FIELDS[i],
                    text: (*text).to_string(),
                    reason: format!("{e} (allowed: {}, with * , - and /)", RANGES[i]),
                };
            }
        }
        invalid(whole.to_string())
    })
}

/// A parsed cron schedule in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
    tz: Tz,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr && self.tz == other.tz
    }
}

impl Schedule {
    /// Parses `expr` (5 fields) evaluated in `time_zone` (IANA name, default UTC).
    pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let tz = time_zone
            .map(parse_time_zone)
            .transpose()?
            .unwrap_or(Tz::UTC);
        let cron = parse_cron(expr)?;
        Ok(Self {
            expr: expr.to_string(),
            cron,
            tz,
        })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expr
    }

    /// The time zone the expression is evaluated in.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The first fire time strictly after `after`.
    ///
    /// # Guarantees
    ///
    /// The result is strictly later than `after`, so feeding each result back in enumerates
    /// every fire time once.
    ///
    /// # Caveats
    ///
    /// Wall-clock times are matched in the schedule's time zone, so a daily `0 9 * * *` in
    /// `Europe/Berlin` fires at 08:00 UTC in winter and 07:00 UTC in summer. Across a DST
    /// change, a time that does not exist locally or exists twice is resolved by the cron
    /// library (croner). Returns `None` when no fire time can be found (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        let next = next.with_timezone(&Utc);
        (next > after).then_some(next)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn every_five_minutes() {
        let s = Schedule::parse("*/5 * * * *", None).unwrap();
        assert_eq!(
            s.next_after(utc(2024, 1, 1, 10, 2)),
            Some(utc(2024, 1, 1, 10, 5))
        );
        // Strictly after: on a fire time, the next one.
        assert_eq!(
            s.next_after(utc(2024, 1, 1, 10, 5)),
            Some(utc(2024, 1, 1, 10, 10))
        );
        assert_eq!(
            s.next_after(utc(2024, 12, 31, 23, 58)),
            Some(utc(2025, 1, 1, 0, 0))
        );
    }

    #[test]
    fn step_range_and_list() {
        // Minutes 10,30,50 (range with step), hours 9 and 17 (list), Monday to Friday (range).
        let s = Schedule::parse("10-50/20 9,17 * * 1-5", None).unwrap();
        // 2024-06-07 is a Friday.
        assert_eq!(
            s.next_after(utc(2024, 6, 7, 9, 10)),
            Some(utc(2024, 6, 7, 9, 30))
        );
        assert_eq!(
            s.next_after(utc(2024, 6, 7, 9, 50)),
            Some(utc(2024, 6, 7, 17, 10))
        );
        // After Friday's last run comes Monday 2024-06-10 09:10.
        assert_eq!(
            s.next_after(utc(2024, 6, 7, 17, 50)),
            Some(utc(2024, 6, 10, 9, 10))
        );
        // Names and nicknames.
        let s = Schedule::parse("0 12 1 JAN,JUL *", None).unwrap();
        assert_eq!(
            s.next_after(utc(2024, 2, 1, 0, 0)),
            Some(utc(2024, 7, 1, 12, 0))
        );
        let s = Schedule::parse("@daily", None).unwrap();
        assert_eq!(
            s.next_after(utc(2024, 2, 1, 0, 0)),
            Some(utc(2024, 2, 2, 0, 0))
        );
    }

    #[test]
    fn time_zone_across_dst() {
        // Europe/Berlin switches from CET (+1) to CEST (+2) on 2024-03-31.
        let s = Schedule::parse("0 9 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            s.next_after(utc(2024, 3, 30, 7, 0)),
            Some(utc(2024, 3, 30, 8, 0))
        );
        assert_eq!(
            s.next_after(utc(2024, 3, 30, 8, 0)),
            Some(utc(2024, 3, 31, 7, 0))
        );
        // And back to CET on 2024-10-27.
        assert_eq!(
            s.next_after(utc(2024, 10, 26, 7, 0)),
            Some(utc(2024, 10, 27, 8, 0))
        );
        assert_eq!(s.time_zone(), chrono_tz::Europe::Berlin);
    }

    #[test]
    fn impossible_date_has_no_next() {
        let s = Schedule::parse("0 0 30 2 *", None).unwrap();
        assert_eq!(s.next_after(utc(2024, 1, 1, 0, 0)), None);
    }

    #[test]
    fn rejections_name_the_problem() {
        assert_eq!(parse_cron(""), Err(ScheduleError::Empty));
        let e = parse_cron("0 */5 * * * *").unwrap_err();
        assert!(
            matches!(e, ScheduleError::FieldCount { count: 6, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("seconds"), "{e}");
        let e = parse_cron("0 0 * * * * 2024").unwrap_err();
        assert!(
            matches!(e, ScheduleError::FieldCount { count: 7, .. }),
            "{e}"
        );
        assert!(matches!(
            parse_cron("* * *"),
            Err(ScheduleError::FieldCount { count: 3, .. })
        ));
        let e = parse_cron("61 * * * *").unwrap_err();
        assert!(
            matches!(
                e,
                ScheduleError::InvalidField {
                    field: "minute",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse_cron("0 25 * * *").unwrap_err();
        assert!(
            matches!(e, ScheduleError::InvalidField { field: "hour", .. }),
            "{e}"
        );
        let e = parse_cron("0 0 * 13 *").unwrap_err();
        assert!(
            matches!(e, ScheduleError::InvalidField { field: "month", ref text, .. } if text == "13"),
            "{e}"
        );
        let e = parse_cron("0 0 * * funday").unwrap_err();
        assert!(e.to_string().contains("day-of-week"), "{e}");
        assert!(parse_cron("@reboot").is_err());
        let e = Schedule::parse("* * * * *", Some("Mars/Olympus")).unwrap_err();
        assert_eq!(
            e,
            ScheduleError::UnknownTimeZone {
                name: "Mars/Olympus".into()
            }
        );
    }
}
