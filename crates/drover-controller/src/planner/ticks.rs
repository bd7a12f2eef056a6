//! Schedule arithmetic for scheduled tasks: the first tick, and after an outage the last
//! missed tick and the one after it (so at most one catch-up run starts).

use chrono::{DateTime, TimeDelta, Utc};
use drover_api::TaskSpec;

/// Cron ticks enumerated at most when catching up after a long outage.
const MAX_TICKS: usize = 10_000;

/// The first tick strictly after `now`.
pub(super) fn first_tick(spec: &TaskSpec, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Some(every) = spec.every {
        let d = TimeDelta::from_std(std::time::Duration::from(every)).ok()?;
        return Some(now + d);
    }
    spec.cron_schedule()?.ok()?.next_after(now)
}

/// From a due tick `next <= now`: the last tick at or before `now`, and the first after it.
pub(super) fn ticks(
    spec: &TaskSpec,
    next: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
    if let Some(every) = spec.every {
        let Ok(d) = TimeDelta::from_std(std::time::Duration::from(every)) else {
            return (next, None);
        };
        let (Some(step), Some(behind)) = (d.num_nanoseconds(), (now - next).num_nanoseconds())
        else {
            return (next, first_tick(spec, now));
        };
        if step <= 0 {
            return (next, None);
        }
        let last = next + TimeDelta::nanoseconds(behind / step * step);
        return (last, Some(last + d));
    }
    let Some(Ok(schedule)) = spec.cron_schedule() else {
        return (next, None);
    };
    let mut last = next;
    for _ in 0..MAX_TICKS {
        match schedule.next_after(last) {
            Some(t) if t <= now => last = t,
            other => return (last, other),
        }
    }
    (last, schedule.next_after(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 15, h, m, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
    }

    #[test]
    fn cron_catch_up_finds_the_last_missed_tick_in_its_time_zone() {
        let spec = TaskSpec {
            // 09:00 in Berlin is 08:00 UTC in January.
            schedule: Some("0 9 * * *".into()),
            time_zone: Some("Europe/Berlin".into()),
            ..TaskSpec::default()
        };
        assert_eq!(first_tick(&spec, utc(7, 0)), Some(utc(8, 0)));
        let jan16 = utc(8, 0) + TimeDelta::days(1);
        let (last, next) = ticks(&spec, utc(8, 0), jan16 + TimeDelta::days(2));
        assert_eq!(last, jan16 + TimeDelta::days(2));
        assert_eq!(next, Some(jan16 + TimeDelta::days(3)));
    }

    #[test]
    fn every_catch_up_is_one_tick_whatever_the_outage() {
        let spec = TaskSpec {
            every: Some(drover_api::HumanDuration::from_std(
                std::time::Duration::from_secs(60),
            )),
            ..TaskSpec::default()
        };
        let (last, next) = ticks(&spec, utc(8, 0), utc(8, 30) + TimeDelta::seconds(10));
        assert_eq!((last, next), (utc(8, 30), Some(utc(8, 31))));
    }
}
