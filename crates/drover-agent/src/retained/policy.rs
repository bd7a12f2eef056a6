//! Which retained outputs to delete: a pure function of what is on disk and which instances
//! the agent still runs, so the bounds are tested without files or clocks.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// The retention bounds (see [`super::RetainConfig`] for the defaults and flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Outputs kept per instance, newest first (the current one of a finished instance
    /// counts).
    pub keep_per_instance: usize,
    /// Finished instances (no longer in the agent's table) whose outputs are kept, most
    /// recently ended first.
    pub keep_finished: usize,
    /// A finished instance's outputs are deleted once its newest one is older than this.
    pub max_age: Duration,
}

/// One retained output as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Its number within its instance; higher is newer.
    pub seq: u64,
    /// When it was written (the container or process had ended by then).
    pub written_at: DateTime<Utc>,
}

/// The retained outputs of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceOutputs {
    /// The instance id.
    pub instance: String,
    /// Its outputs, in any order.
    pub outputs: Vec<Kept>,
}

/// The outputs to delete, as `(instance, seq)`, given what is kept and which instances are
/// `live` (still in the agent's table).
///
/// # Guarantees
/// - Every instance keeps at most `keep_per_instance` outputs: its newest.
/// - A live instance loses only outputs beyond its newest `keep_per_instance`, whatever its
///   age: the `--previous` of a crash-looping service survives a long backoff.
/// - A finished instance whose newest output is older than `max_age` loses everything; of
///   the rest, only the `keep_finished` most recently written keep anything (ties go to the
///   smaller instance id, so the answer does not depend on input order).
pub fn to_delete(
    all: &[InstanceOutputs],
    live: &BTreeSet<String>,
    bounds: Bounds,
    now: DateTime<Utc>,
) -> Vec<(String, u64)> {
    let max_age = TimeDelta::from_std(bounds.max_age).unwrap_or(TimeDelta::MAX);
    let mut doomed = Vec::new();
    // (newest write, instance) of finished instances young enough to be kept.
    let mut finished: Vec<(DateTime<Utc>, &InstanceOutputs)> = Vec::new();
    for inst in all {
        let mut outputs: Vec<&Kept> = inst.outputs.iter().collect();
        outputs.sort_by_key(|k| std::cmp::Reverse(k.seq));
        let (keep, extra) = outputs.split_at(outputs.len().min(bounds.keep_per_instance));
        doomed.extend(extra.iter().map(|k| (inst.instance.clone(), k.seq)));
        if live.contains(&inst.instance) || keep.is_empty() {
            continue;
        }
        let newest = keep.iter().map(|k| k.written_at).max().unwrap_or(now);
        if now.signed_duration_since(newest) > max_age {
            doomed.extend(keep.iter().map(|k| (inst.instance.clone(), k.seq)));
        } else {
            finished.push((newest, inst));
        }
    }
    finished.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.instance.cmp(&b.1.instance)));
    for (_, inst) in finished.iter().skip(bounds.keep_finished) {
        let mut outputs: Vec<&Kept> = inst.outputs.iter().collect();
        outputs.sort_by_key(|k| std::cmp::Reverse(k.seq));
        doomed.extend(
            outputs
                .iter()
                .take(bounds.keep_per_instance)
                .map(|k| (inst.instance.clone(), k.seq)),
        );
    }
    doomed.sort();
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(secs)
    }

    fn inst(name: &str, seqs: &[(u64, i64)]) -> InstanceOutputs {
        InstanceOutputs {
            instance: name.into(),
            outputs: seqs
                .iter()
                .map(|&(seq, t)| Kept {
                    seq,
                    written_at: at(t),
                })
                .collect(),
        }
    }

    const BOUNDS: Bounds = Bounds {
        keep_per_instance: 3,
        keep_finished: 2,
        max_age: Duration::from_secs(100),
    };

    fn live(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_string()).collect()
    }

    #[test]
    fn a_live_instance_keeps_its_newest_three_however_old() {
        let all = [inst("a", &[(1, 0), (2, 1), (3, 2), (4, 3), (5, 4)])];
        let gone = to_delete(&all, &live(&["a"]), BOUNDS, at(10_000));
        assert_eq!(gone, [("a".to_string(), 1), ("a".to_string(), 2)]);
    }

    #[test]
    fn finished_instances_are_bounded_by_age_then_count() {
        let all = [
            inst("old", &[(1, 0)]),
            inst("b", &[(1, 950)]),
            inst("c", &[(1, 960), (2, 970)]),
            inst("d", &[(1, 980)]),
            inst("e", &[(1, 990)]),
        ];
        let gone = to_delete(&all, &live(&["e"]), BOUNDS, at(1_000));
        // `old` is past max_age; of b, c, d (e is live) the two newest, c and d, stay.
        assert_eq!(gone, [("b".to_string(), 1), ("old".to_string(), 1)]);
    }

    fn arb_all() -> impl Strategy<Value = (Vec<InstanceOutputs>, BTreeSet<String>)> {
        let one = (
            0u8..12,
            proptest::collection::btree_map(0u64..20, 0i64..2_000, 0..8),
            any::<bool>(),
        );
        proptest::collection::vec(one, 0..12).prop_map(|v| {
            let mut seen = BTreeSet::new();
            let mut all = Vec::new();
            let mut live = BTreeSet::new();
            for (name, outputs, is_live) in v {
                let name = format!("i{name}");
                if !seen.insert(name.clone()) {
                    continue;
                }
                if is_live {
                    live.insert(name.clone());
                }
                all.push(InstanceOutputs {
                    instance: name,
                    outputs: outputs
                        .into_iter()
                        .map(|(seq, t)| Kept {
                            seq,
                            written_at: at(t),
                        })
                        .collect(),
                });
            }
            (all, live)
        })
    }

    /// What is left after deleting `gone` from `all`.
    fn apply(all: &[InstanceOutputs], gone: &[(String, u64)]) -> Vec<InstanceOutputs> {
        all.iter()
            .map(|i| InstanceOutputs {
                instance: i.instance.clone(),
                outputs: i
                    .outputs
                    .iter()
                    .filter(|k| !gone.contains(&(i.instance.clone(), k.seq)))
                    .cloned()
                    .collect(),
            })
            .collect()
    }

    proptest! {
        #[test]
        fn the_bounds_hold_and_a_second_pass_deletes_nothing(
            (all, live) in arb_all(),
            keep_per_instance in 0usize..5,
            keep_finished in 0usize..5,
            max_age in 0u64..3_000,
            now in 0i64..3_000,
        ) {
            let bounds = Bounds { keep_per_instance, keep_finished, max_age: Duration::from_secs(max_age) };
            let now = at(now);
            let gone = to_delete(&all, &live, bounds, now);
            let left = apply(&all, &gone);
            for (before, after) in all.iter().zip(&left) {
                prop_assert!(after.outputs.len() <= keep_per_instance);
                if live.contains(&before.instance) {
                    // Exactly the newest `keep_per_instance` survive.
                    let mut seqs: Vec<u64> = before.outputs.iter().map(|k| k.seq).collect();
                    seqs.sort_unstable_by(|a, b| b.cmp(a));
                    seqs.truncate(keep_per_instance);
                    let mut kept: Vec<u64> = after.outputs.iter().map(|k| k.seq).collect();
                    kept.sort_unstable_by(|a, b| b.cmp(a));
                    prop_assert_eq!(kept, seqs);
                } else if let Some(newest) = after.outputs.iter().map(|k| k.written_at).max() {
                    prop_assert!(now.signed_duration_since(newest).to_std().unwrap_or_default() <= bounds.max_age);
                }
            }
            let finished_left = left
                .iter()
                .filter(|i| !live.contains(&i.instance) && !i.outputs.is_empty())
                .count();
            prop_assert!(finished_left <= keep_finished);
            prop_assert!(to_delete(&left, &live, bounds, now).is_empty());
        }
    }
}
