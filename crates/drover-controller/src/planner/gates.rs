//! Gates on starting a run: `dependsOn` (every dependency's latest run Succeeded and none is
//! running) and `blocks` (two tasks that block each other never have instances at once).
//!
//! Pure functions of the snapshot plus the tasks this plan already starts, so that within one
//! plan two mutually blocking tasks are never both started: tasks are considered in priority
//! order, then by name, and each started task joins [`Gates::starting`].

use std::collections::{BTreeMap, BTreeSet};

use drover_api::{RunOutcome, Task};

use crate::snapshot::Snapshot;
use drover_api::records::TaskRef;

/// What the gates read: the snapshot, the tasks that are busy in it, and the tasks this plan
/// starts.
pub(super) struct Gates<'a> {
    snapshot: &'a Snapshot,
    /// Tasks with an assignment or a run record without `finished_at`.
    busy: BTreeSet<TaskRef>,
    /// Per task with assignments, the `blocks` its copies run with (their spec may be older
    /// than the task's, or the task deleted).
    copies_block: BTreeMap<TaskRef, BTreeSet<&'a str>>,
    /// Tasks a run of which this plan starts.
    pub(super) starting: BTreeSet<TaskRef>,
}

impl<'a> Gates<'a> {
    /// Gates over `snapshot`, with nothing started yet.
    pub(super) fn new(snapshot: &'a Snapshot) -> Self {
        let mut busy: BTreeSet<TaskRef> = snapshot
            .assignments
            .keys()
            .map(|id| TaskRef::new(id.namespace(), id.task()))
            .collect();
        let mut copies_block: BTreeMap<TaskRef, BTreeSet<&'a str>> = BTreeMap::new();
        for a in snapshot.assignments.values() {
            if !a.value.spec.blocks.is_empty() {
                copies_block
                    .entry(TaskRef::new(&a.value.namespace, &a.value.task))
                    .or_default()
                    .extend(a.value.spec.blocks.iter().map(String::as_str));
            }
        }
        for (task, runs) in &snapshot.runs {
            if runs.values().any(|r| r.value.finished_at.is_none()) {
                busy.insert(task.clone());
            }
        }
        Self {
            snapshot,
            busy,
            copies_block,
            starting: BTreeSet::new(),
        }
    }

    fn running(&self, task: &TaskRef) -> bool {
        self.busy.contains(task) || self.starting.contains(task)
    }

    /// `Ok` when a run of `task` may start now, otherwise the pending reason.
    ///
    /// # Guarantees
    ///
    /// - Every task in `dependsOn` exists, is not running or starting, and its latest finished
    ///   run (its task state's `lastOutcome`) Succeeded.
    /// - No task that `task` blocks, or that blocks `task`, has instances (a copy stopping
    ///   counts: its assignment stays until the process exited, even once its task is deleted),
    ///   a run going, or a run starting in this plan.
    pub(super) fn check(&self, task_ref: &TaskRef, task: &Task) -> Result<(), String> {
        for dep in &task.spec.depends_on {
            let d = TaskRef::new(&task_ref.namespace, dep);
            if !self.snapshot.tasks.contains_key(&d) {
                return Err(format!("waiting for dependency {dep}: no such task"));
            }
            if self.running(&d) {
                return Err(format!("waiting for dependency {dep}: it is running"));
            }
            let outcome = self
                .snapshot
                .taskstates
                .get(&d)
                .and_then(|s| s.value.state.last_outcome);
            match outcome {
                Some(RunOutcome::Succeeded) => {}
                Some(o) => return Err(format!("waiting for dependency {dep}: its last run {o}")),
                None => return Err(format!("waiting for dependency {dep}: it has not run yet")),
            }
        }
        // Every task with a copy that may be live, including a deleted task whose copies are
        // still stopping: its `blocks` come from the spec its assignments carry.
        for other_ref in self.busy.iter().chain(&self.starting) {
            if other_ref == task_ref || other_ref.namespace != task_ref.namespace {
                continue;
            }
            // The current spec, and the spec its live copies run (it may have changed since).
            let other_blocks = self
                .snapshot
                .tasks
                .get(other_ref)
                .is_some_and(|other| other.value.spec.blocks.contains(&task_ref.name))
                || self
                    .copies_block
                    .get(other_ref)
                    .is_some_and(|b| b.contains(task_ref.name.as_str()));
            if task.spec.blocks.contains(&other_ref.name) || other_blocks {
                return Err(format!("Blocked by {}", other_ref.name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_api::records::TaskStateRecord;
    use drover_api::{TaskSpec, TaskState};
    use drover_store::Versioned;

    fn versioned<T>(key: &str, value: T) -> Versioned<T> {
        Versioned {
            key: key.into(),
            value,
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: None,
        }
    }

    fn task(name: &str, f: impl FnOnce(&mut TaskSpec)) -> (TaskRef, Versioned<Task>) {
        let mut spec = TaskSpec::default();
        f(&mut spec);
        (
            TaskRef::new("default", name),
            versioned(name, Task::new("default", name, spec)),
        )
    }

    fn outcome(s: &mut Snapshot, name: &str, o: RunOutcome) {
        let state = TaskStateRecord {
            state: TaskState {
                last_outcome: Some(o),
                ..TaskState::default()
            },
            ..TaskStateRecord::default()
        };
        s.taskstates
            .insert(TaskRef::new("default", name), versioned(name, state));
    }

    #[test]
    fn depends_on_waits_for_a_success_and_says_why() {
        let mut s = Snapshot::default();
        let (f, ft) = task("fetch", |_| {});
        let (p, pt) = task("process", |sp| sp.depends_on = vec!["fetch".into()]);
        s.tasks.insert(f.clone(), ft);
        s.tasks.insert(p.clone(), pt.clone());
        let check = |s: &Snapshot| Gates::new(s).check(&p, &pt.value);
        assert_eq!(
            check(&s),
            Err("waiting for dependency fetch: it has not run yet".into())
        );
        outcome(&mut s, "fetch", RunOutcome::Failed);
        assert_eq!(
            check(&s),
            Err("waiting for dependency fetch: its last run Failed".into())
        );
        outcome(&mut s, "fetch", RunOutcome::Succeeded);
        assert_eq!(check(&s), Ok(()));
        let mut g = Gates::new(&s);
        g.starting.insert(f);
        assert_eq!(
            g.check(&p, &pt.value),
            Err("waiting for dependency fetch: it is running".into())
        );
    }

    #[test]
    fn blocks_is_symmetric_and_counts_runs_starting_in_the_plan() {
        let mut s = Snapshot::default();
        let (a, at) = task("import", |sp| sp.blocks = vec!["cleanup".into()]);
        let (b, bt) = task("cleanup", |_| {});
        s.tasks.insert(a.clone(), at.clone());
        s.tasks.insert(b.clone(), bt.clone());
        let mut g = Gates::new(&s);
        assert_eq!(g.check(&a, &at.value), Ok(()));
        g.starting.insert(a.clone());
        assert_eq!(g.check(&b, &bt.value), Err("Blocked by import".into()));
        let mut g = Gates::new(&s);
        g.starting.insert(b);
        assert_eq!(g.check(&a, &at.value), Err("Blocked by cleanup".into()));
    }
}
