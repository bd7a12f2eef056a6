//! From the witness's records to findings, with no knowledge of Drover's own records.
//!
//! A *copy* is one process of one instance (instance, host, pid and the random copy token it
//! drew at start, since a restarted host reuses pids), live from its first report to
//! its last. Report intervals make every finding a lower bound: copies whose reports overlap
//! certainly ran at once; an overlap shorter than the report period can be missed, never
//! invented.
//!
//! - Services: an **overlap** is a copy that starts (first report) while the task's live copies,
//!   counting it, are more than the task allows (`replicas` plus its surge budget) — a
//!   replacement that started before the copy it replaces had ended. Copies that keep running
//!   while a scale-down or deletion stops them are not overlaps: nothing new started. A **gap**
//!   is an interval with fewer live copies than desired.
//! - Jobs: a unit of work (a run, with the retries that followed it) is **doubled** when two
//!   copies report it done, **overlapping** when two of its copies are live at once, and
//!   **lost** when it was expected but no copy reported it done.

use std::collections::{BTreeMap, BTreeSet};

use drover_api::names::InstanceId;

use crate::datagram::{Kind, Received};

/// One process of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// Its instance.
    pub instance: InstanceId,
    /// The host it ran on.
    pub host: String,
    /// Its pid there.
    pub pid: u32,
    /// The token it drew at start.
    pub copy: u64,
    /// Its first report.
    pub first_ms: i64,
    /// Its last report.
    pub last_ms: i64,
    /// Whether it reported its work done.
    pub done: bool,
}

impl Copy {
    /// `namespace/task`, the key findings are grouped by.
    pub fn task(&self) -> String {
        format!("{}/{}", self.instance.namespace(), self.instance.task())
    }
}

/// The copies in `records`, sorted by first report. Records whose instance is not a Drover
/// instance id are skipped (and counted in the second value), never guessed at.
pub fn copies(records: &[Received]) -> (Vec<Copy>, usize) {
    let mut by_process: BTreeMap<(String, String, u32, u64), Copy> = BTreeMap::new();
    let mut skipped = 0;
    for r in records {
        let d = &r.datagram;
        let Ok(instance) = d.instance.parse::<InstanceId>() else {
            skipped += 1;
            continue;
        };
        let copy = by_process
            .entry((d.instance.clone(), d.host.clone(), d.pid, d.copy))
            .or_insert_with(|| Copy {
                instance,
                host: d.host.clone(),
                pid: d.pid,
                copy: d.copy,
                first_ms: r.at_ms,
                last_ms: r.at_ms,
                done: false,
            });
        copy.first_ms = copy.first_ms.min(r.at_ms);
        copy.last_ms = copy.last_ms.max(r.at_ms);
        copy.done |= d.kind == Kind::Done;
    }
    let mut copies: Vec<Copy> = by_process.into_values().collect();
    copies.sort_by_key(|c| (c.first_ms, c.last_ms));
    (copies, skipped)
}

/// What a service task wanted from `from_ms` on: `desired` copies, at most `allowed` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    /// From when.
    pub from_ms: i64,
    /// `replicas` (0 once deleted).
    pub desired: u32,
    /// `replicas + maxSurge`.
    pub allowed: u32,
}

/// An interval in which the live count broke a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    /// Start.
    pub from_ms: i64,
    /// End.
    pub to_ms: i64,
    /// The most (overlap) or fewest (gap) copies live in it.
    pub live: u32,
    /// The bound it broke: allowed (overlap) or desired (gap).
    pub bound: u32,
}

impl Interval {
    /// Its length.
    pub fn millis(&self) -> i64 {
        self.to_ms - self.from_ms
    }
}

/// A service task's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceVerdict {
    /// Copies started while more than allowed were live, each until the count was back.
    pub overlaps: Vec<Interval>,
    /// Intervals with fewer live copies than desired.
    pub gaps: Vec<Interval>,
}

/// The bound in force at `t` (nothing desired before the first entry).
fn bound_at(timeline: &[Desired], t: i64) -> Desired {
    timeline
        .iter()
        .rev()
        .find(|d| d.from_ms <= t)
        .copied()
        .unwrap_or(Desired {
            from_ms: i64::MIN,
            desired: 0,
            allowed: 0,
        })
}

/// Judges one service task's copies against its desired timeline, up to `end_ms`. Copies
/// report every `period_ms`: for gaps a copy counts as live until one period after its last
/// report (it was not missing before that); for overlaps only up to its last report, so both
/// findings stay lower bounds.
pub fn judge_service(
    copies: &[&Copy],
    timeline: &[Desired],
    period_ms: i64,
    end_ms: i64,
) -> ServiceVerdict {
    // Events: a copy's first report, just after its last (and a period later); bound changes.
    let mut points: BTreeSet<i64> = timeline.iter().map(|d| d.from_ms).collect();
    for c in copies {
        points.insert(c.first_ms);
        points.insert(c.last_ms + 1);
        points.insert(c.last_ms + period_ms + 1);
    }
    points.insert(end_ms);
    let count = |t: i64, slack: i64| {
        u32::try_from(
            copies
                .iter()
                .filter(|c| c.first_ms <= t && t <= c.last_ms + slack)
                .count(),
        )
        .unwrap_or(u32::MAX)
    };
    let starts: BTreeSet<i64> = copies.iter().map(|c| c.first_ms).collect();
    let mut verdict = ServiceVerdict::default();
    let mut overlap: Option<Interval> = None;
    let mut gap: Option<Interval> = None;
    let points: Vec<i64> = points.into_iter().filter(|t| *t <= end_ms).collect();
    for (i, &t) in points.iter().enumerate() {
        let next = points.get(i + 1).copied().unwrap_or(end_ms);
        let live = count(t, 0);
        let present = count(t, period_ms);
        let bound = bound_at(timeline, t);
        // Overlap: opened only by a start above the bound, closed when the count is back.
        match &mut overlap {
            Some(o) if live > bound.allowed => {
                o.live = o.live.max(live);
            }
            Some(o) => {
                o.to_ms = t;
                verdict.overlaps.push(*o);
                overlap = None;
            }
            None if live > bound.allowed && starts.contains(&t) => {
                overlap = Some(Interval {
                    from_ms: t,
                    to_ms: next,
                    live,
                    bound: bound.allowed,
                });
            }
            None => {}
        }
        match &mut gap {
            Some(g) if present < bound.desired => g.live = g.live.min(present),
            Some(g) => {
                g.to_ms = t;
                verdict.gaps.push(*g);
                gap = None;
            }
            None if present < bound.desired => {
                gap = Some(Interval {
                    from_ms: t,
                    to_ms: next,
                    live: present,
                    bound: bound.desired,
                });
            }
            None => {}
        }
    }
    for mut open in [overlap.map(|o| (o, true)), gap.map(|g| (g, false))]
        .into_iter()
        .flatten()
    {
        open.0.to_ms = end_ms;
        if open.1 {
            verdict.overlaps.push(open.0);
        } else {
            verdict.gaps.push(open.0);
        }
    }
    verdict
}

/// One unit of a job's work: the run instances (`namespace.task.run.slot`) that together must
/// do it once — a run and the retries that followed it. Named by its first instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work {
    /// The run instances, first the original run's.
    pub instances: Vec<String>,
}

impl Work {
    /// One run, no retries.
    pub fn run(instance: impl Into<String>) -> Work {
        Work {
            instances: vec![instance.into()],
        }
    }

    fn name(&self) -> String {
        self.instances.first().cloned().unwrap_or_default()
    }
}

/// A job task's findings, by unit of work (its first run instance).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobVerdict {
    /// Work two or more copies reported done.
    pub doubled: Vec<String>,
    /// Work with two copies live at once (of one run, or of a run and its retry).
    pub overlapping: Vec<String>,
    /// Work no copy reported done.
    pub lost: Vec<String>,
}

/// Judges job copies against the units of work that must have been done: each exactly once
/// (one copy reporting done, over the run and its retries), one copy at a time.
pub fn judge_jobs(copies: &[&Copy], work: &[Work]) -> JobVerdict {
    let mut verdict = JobVerdict::default();
    for unit in work {
        let mine: Vec<&&Copy> = copies
            .iter()
            .filter(|c| unit.instances.contains(&c.instance.to_string()))
            .collect();
        match mine.iter().filter(|c| c.done).count() {
            0 => verdict.lost.push(unit.name()),
            1 => {}
            _ => verdict.doubled.push(unit.name()),
        }
        let overlapping = mine.iter().enumerate().any(|(i, a)| {
            mine[i + 1..]
                .iter()
                .any(|b| a.first_ms <= b.last_ms && b.first_ms <= a.last_ms)
        });
        if overlapping {
            verdict.overlapping.push(unit.name());
        }
    }
    verdict
}

/// The `p` quantile (0..=1) of `values`, nearest rank; `None` when empty.
pub fn quantile(values: &[i64], p: f64) -> Option<i64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let last = sorted.len().checked_sub(1)?;
    let rank = (p.clamp(0.0, 1.0) * last as f64).round();
    // `rank` is in 0..=last, so the conversion cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    sorted.get(rank as usize).copied()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::datagram::Datagram;

    fn rec(at_ms: i64, kind: Kind, instance: &str, host: &str, pid: u32) -> Received {
        Received {
            at_ms,
            datagram: Datagram {
                kind,
                instance: instance.into(),
                host: host.into(),
                pid,
                copy: u64::from(pid),
                seq: 0,
            },
        }
    }

    /// Reports every 100 ms from `from` to `to` inclusive.
    fn alive(from: i64, to: i64, instance: &str, host: &str, pid: u32) -> Vec<Received> {
        (from..=to)
            .step_by(100)
            .map(|t| rec(t, Kind::Alive, instance, host, pid))
            .collect()
    }

    fn steady(desired: u32, allowed: u32) -> Vec<Desired> {
        vec![Desired {
            from_ms: 0,
            desired,
            allowed,
        }]
    }

    #[test]
    fn a_replacement_started_before_its_predecessor_ended_is_an_overlap() {
        let mut records = alive(0, 2000, "default.web.0", "a", 10);
        // The node is cut off; its copy keeps running to 2000 while a replacement starts at 1500.
        records.extend(alive(1500, 4000, "default.web.0", "b", 20));
        let (copies, skipped) = copies(&records);
        assert_eq!((copies.len(), skipped), (2, 0));
        let refs: Vec<&Copy> = copies.iter().collect();
        let v = judge_service(&refs, &steady(1, 1), 100, 4000);
        assert_eq!(v.overlaps.len(), 1, "{v:?}");
        assert_eq!((v.overlaps[0].from_ms, v.overlaps[0].to_ms), (1500, 2001));
        assert_eq!(v.overlaps[0].live, 2);
        assert!(v.gaps.is_empty(), "{v:?}");
    }

    #[test]
    fn a_replacement_after_its_predecessor_is_a_gap_not_an_overlap() {
        let mut records = alive(0, 2000, "default.web.0", "a", 10);
        records.extend(alive(3000, 4000, "default.web.0", "b", 20));
        let (copies, _) = copies(&records);
        let refs: Vec<&Copy> = copies.iter().collect();
        let v = judge_service(&refs, &steady(1, 1), 100, 4000);
        assert!(v.overlaps.is_empty(), "{v:?}");
        assert_eq!(v.gaps.len(), 1, "{v:?}");
        // Missing from one period after its last report until the replacement's first.
        assert_eq!((v.gaps[0].from_ms, v.gaps[0].to_ms), (2101, 3000));
        assert_eq!(v.gaps[0].millis(), 899);
    }

    #[test]
    fn a_restarted_host_reusing_a_pid_runs_a_new_copy() {
        // The host restarts with a fresh pid namespace: the new copy gets pid 11 again.
        let mut records = alive(0, 2000, "default.web.0", "a", 11);
        let mut again = alive(3000, 4000, "default.web.0", "a", 11);
        for r in &mut again {
            r.datagram.copy = 0xbeef;
        }
        records.extend(again);
        let (copies, _) = copies(&records);
        assert_eq!(copies.len(), 2, "{copies:?}");
        assert_eq!((copies[1].first_ms, copies[1].copy), (3000, 0xbeef));
        let refs: Vec<&Copy> = copies.iter().collect();
        let v = judge_service(&refs, &steady(1, 1), 100, 4000);
        assert_eq!(v.gaps.len(), 1, "{v:?}");
        assert_eq!((v.gaps[0].from_ms, v.gaps[0].to_ms), (2101, 3000));
    }

    #[test]
    fn reports_a_period_apart_leave_no_gap_at_the_end() {
        // Two copies reporting out of phase; the judgement ends at the later one's last report.
        let mut records = alive(0, 1000, "default.web.0", "a", 1);
        records.extend(alive(50, 1050, "default.web.1", "b", 2));
        let (copies, _) = copies(&records);
        let refs: Vec<&Copy> = copies.iter().collect();
        let v = judge_service(&refs, &steady(2, 2), 100, 1050);
        assert_eq!(v.gaps.len(), 1, "only the start: {v:?}");
        assert_eq!((v.gaps[0].from_ms, v.gaps[0].to_ms), (0, 50));
    }

    #[test]
    fn copies_stopping_after_a_scale_down_are_no_overlap_and_surge_is_allowed() {
        let mut records = alive(0, 3000, "default.web.0", "a", 1);
        records.extend(alive(0, 3000, "default.web.1", "a", 2));
        // A surge copy while one is replaced: 3 live with allowed 3.
        records.extend(alive(1000, 3000, "default.web.2", "b", 3));
        let (copies, _) = copies(&records);
        let refs: Vec<&Copy> = copies.iter().collect();
        let timeline = vec![
            Desired {
                from_ms: 0,
                desired: 2,
                allowed: 3,
            },
            // Scaled to 1 at 2000: two copies keep running while they stop.
            Desired {
                from_ms: 2000,
                desired: 1,
                allowed: 1,
            },
        ];
        let v = judge_service(&refs, &timeline, 100, 3000);
        assert!(v.overlaps.is_empty(), "{v:?}");
        assert!(v.gaps.is_empty(), "{v:?}");
    }

    #[test]
    fn a_job_run_done_twice_overlapping_or_never_is_reported() {
        let mut records = alive(0, 500, "default.batch.r1.0", "a", 1);
        records.push(rec(600, Kind::Done, "default.batch.r1.0", "a", 1));
        records.extend(alive(300, 700, "default.batch.r1.0", "b", 2));
        records.push(rec(800, Kind::Done, "default.batch.r1.0", "b", 2));
        records.extend(alive(0, 500, "default.batch.r2.0", "a", 3));
        records.push(rec(900, Kind::Alive, "not an id", "a", 4));
        let (copies, skipped) = copies(&records);
        assert_eq!(skipped, 1);
        let refs: Vec<&Copy> = copies.iter().collect();
        let work = vec![
            Work::run("default.batch.r1.0"),
            Work::run("default.batch.r2.0"),
            Work::run("default.batch.r3.0"),
        ];
        let v = judge_jobs(&refs, &work);
        assert_eq!(v.doubled, vec!["default.batch.r1.0"]);
        assert_eq!(v.overlapping, vec!["default.batch.r1.0"]);
        assert_eq!(v.lost, vec!["default.batch.r2.0", "default.batch.r3.0"]);
    }

    #[test]
    fn a_retry_completes_its_run_and_must_not_overlap_it() {
        // Run 1's node died mid-work; its retry, run 2, did the work.
        let mut records = alive(0, 500, "default.batch.r1.0", "a", 1);
        records.extend(alive(2000, 2500, "default.batch.r2.0", "b", 2));
        records.push(rec(2600, Kind::Done, "default.batch.r2.0", "b", 2));
        // Run 3's retry, run 4, started while run 3's copy was still live, and both finished.
        records.extend(alive(3000, 3500, "default.batch.r3.0", "a", 3));
        records.push(rec(3600, Kind::Done, "default.batch.r3.0", "a", 3));
        records.extend(alive(3400, 3700, "default.batch.r4.0", "b", 4));
        records.push(rec(3800, Kind::Done, "default.batch.r4.0", "b", 4));
        let (copies, _) = copies(&records);
        let refs: Vec<&Copy> = copies.iter().collect();
        let retried = |a: &str, b: &str| Work {
            instances: vec![a.to_string(), b.to_string()],
        };
        let work = vec![
            retried("default.batch.r1.0", "default.batch.r2.0"),
            retried("default.batch.r3.0", "default.batch.r4.0"),
        ];
        let v = judge_jobs(&refs, &work);
        assert!(v.lost.is_empty(), "{v:?}");
        assert_eq!(v.doubled, vec!["default.batch.r3.0"]);
        assert_eq!(v.overlapping, vec!["default.batch.r3.0"]);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[5, 1, 3], 0.5), Some(3));
        assert_eq!(quantile(&[5, 1, 3], 1.0), Some(5));
        assert_eq!(quantile(&[5, 1, 3], 0.0), Some(1));
    }
}
