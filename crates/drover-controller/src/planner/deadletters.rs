//! Bounded dead letters: a letter goes when its task is deleted or its generation is another
//! one (the letter described a spec that no longer runs), and a job keeps only its
//! newest `historyLimit` letters, like its run records.

use std::collections::BTreeMap;

use drover_api::{InstanceId, Mode};
use drover_store::Versioned;

use super::{Plan, Step, Write};
use crate::snapshot::Snapshot;
use drover_api::records::{DeadLetterRecord, TaskRef};

/// Deletes the dead letters that no longer describe anything (see the module doc).
///
/// # Guarantees
/// - A letter of the task's current generation is kept for services: it is what stops the
///   slot from being refilled.
/// - A letter whose task key exists but does not decode is kept: its generation is unknown.
/// - Every deletion compares the letter's mod revision.
pub(super) fn trim(snapshot: &Snapshot, plan: &mut Plan) {
    let mut jobs: BTreeMap<TaskRef, Vec<(&InstanceId, &Versioned<DeadLetterRecord>)>> =
        BTreeMap::new();
    // A letter a pending `drover retry` names is the retry's to consume.
    let retried: std::collections::BTreeSet<&InstanceId> = snapshot
        .requests
        .values()
        .flat_map(BTreeMap::values)
        .filter_map(|r| match &r.value.action {
            drover_api::RequestAction::Retry { instance } => Some(instance),
            drover_api::RequestAction::Enable
            | drover_api::RequestAction::Pause
            | drover_api::RequestAction::Resume
            | drover_api::RequestAction::Promote { .. } => None,
        })
        .collect();
    for (id, d) in &snapshot.deadletters {
        if retried.contains(id) {
            continue;
        }
        let task = TaskRef::new(&d.value.letter.namespace, &d.value.letter.task);
        let current = match snapshot.tasks.get(&task) {
            Some(t) => t,
            None if snapshot.task_exists(&task) => continue,
            None => {
                delete(plan, id, d);
                continue;
            }
        };
        // Not `<`: a task deleted and re-created between two snapshots starts again at
        // generation 1, and a letter of its old life must not come back to life later.
        if d.value.generation != current.value.metadata.generation {
            delete(plan, id, d);
        } else if current.value.spec.mode() != Mode::Service {
            jobs.entry(task).or_default().push((id, d));
        }
    }
    for (task, mut letters) in jobs {
        let keep = snapshot
            .tasks
            .get(&task)
            .map_or(0, |t| t.value.spec.history_limit as usize);
        if letters.len() <= keep {
            continue;
        }
        // Oldest first; ties by id, so every leader trims the same ones.
        letters.sort_by(|a, b| (a.1.value.letter.time, a.0).cmp(&(b.1.value.letter.time, b.0)));
        let excess = letters.len() - keep;
        for (id, d) in letters.into_iter().take(excess) {
            delete(plan, id, d);
        }
    }
}

fn delete(plan: &mut Plan, id: &InstanceId, d: &Versioned<DeadLetterRecord>) {
    plan.steps.push(Step {
        task: None,
        writes: vec![Write::DeleteDeadLetter {
            namespace: d.value.letter.namespace.clone(),
            instance: id.clone(),
            mod_revision: d.mod_revision,
        }],
    });
}

#[cfg(test)]
mod tests {
    use drover_api::{DeadLetter, RestartPolicy};

    use super::super::plan;
    use super::super::sim::{at, Sim};
    use super::*;

    fn letter(sim: &mut Sim, task: &str, id: InstanceId, generation: u64, t: i64) {
        let rev = sim.bump();
        let record = DeadLetterRecord {
            letter: DeadLetter {
                instance: id.clone(),
                namespace: "default".into(),
                task: task.into(),
                run: id.run(),
                attempts: 3,
                last_error: "Error".into(),
                exit_code: Some(1),
                time: at(t),
            },
            generation,
        };
        sim.s.deadletters.insert(
            id,
            Versioned {
                key: String::new(),
                value: record,
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease: None,
            },
        );
    }

    fn deleted(p: &Plan) -> Vec<String> {
        p.steps
            .iter()
            .flat_map(|s| &s.writes)
            .filter_map(|w| match w {
                Write::DeleteDeadLetter { instance, .. } => Some(instance.to_string()),
                _ => None,
            })
            .collect()
    }

    fn service_id(task: &str, slot: u32) -> InstanceId {
        InstanceId::service("default", task, slot).expect("id")
    }

    #[test]
    fn letters_of_deleted_tasks_and_old_generations_go_current_ones_stay() {
        let mut sim = Sim::new();
        sim.node("n1", 4000, &[]);
        sim.task("web", 2, |_| {});
        sim.task("web", 2, |_| {}); // generation 2
        letter(&mut sim, "web", service_id("web", 0), 1, 0);
        letter(&mut sim, "web", service_id("web", 1), 2, 0);
        letter(&mut sim, "gone", service_id("gone", 0), 1, 0);
        let p = plan(&sim.s, at(10), &sim.config);
        let mut got = deleted(&p);
        got.sort();
        assert_eq!(
            got,
            vec![
                service_id("gone", 0).to_string(),
                service_id("web", 0).to_string()
            ]
        );
        sim.apply(&p);
        assert_eq!(
            sim.s.deadletters.len(),
            1,
            "the current generation's letter holds its slot"
        );
    }

    #[test]
    fn a_letter_of_a_task_deleted_and_recreated_unseen_goes() {
        let mut sim = Sim::new();
        sim.task("web", 1, |_| {}); // generation 1 again, after a delete nobody saw
        letter(&mut sim, "web", service_id("web", 0), 4, 0);
        let p = plan(&sim.s, at(10), &sim.config);
        assert_eq!(deleted(&p), vec![service_id("web", 0).to_string()]);
    }

    #[test]
    fn a_job_keeps_its_newest_history_limit_letters() {
        let mut sim = Sim::new();
        sim.node("n1", 4000, &[]);
        sim.task("batch", 1, |s| {
            s.restart_policy = RestartPolicy::Never;
            s.history_limit = 2;
        });
        let ids: Vec<InstanceId> = (1..=4)
            .map(|run| InstanceId::job("default", "batch", run, 0).expect("id"))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            letter(&mut sim, "batch", id.clone(), 1, i as i64);
        }
        let mut got = deleted(&plan(&sim.s, at(10), &sim.config));
        got.sort();
        assert_eq!(got, vec![ids[0].to_string(), ids[1].to_string()]);
    }
}
