//! `drover rollout status|history|undo|pause|resume|promote TASK`: watch and steer a service's
//! rollout. `status` waits like kubectl's and exits non-zero when the rollout fails; `undo`
//! applies an earlier revision's template to the task (a user write, like `apply`); pause,
//! resume and promote are requests the leader carries out into the rollout record it owns.

use std::time::Duration;

use chrono::Utc;
use drover_api::keys::Keys;
use drover_api::request::RequestAction;
use drover_api::task::{Mode, Task, TaskSpec};
use drover_api::taskstate::TaskState;
use drover_api::{RevisionRecord, Rollout, RolloutPhase};
use drover_store::{Store, Versioned};

use super::jobs::{consumed, submit};
use super::{connect, store_error};
use crate::cli::{
    Global, RolloutArgs, RolloutHistoryArgs, RolloutStatusArgs, RolloutUndoArgs, RolloutVerb,
    TaskArgs,
};
use crate::exit::{CliError, CliResult};
use crate::output::{Format, Table};

/// How often `rollout status` looks again.
const POLL: Duration = Duration::from_millis(250);

/// Runs one rollout verb.
pub async fn run(global: &Global, args: RolloutArgs) -> CliResult {
    match args.verb {
        RolloutVerb::Status(a) => status(global, a).await,
        RolloutVerb::History(a) => history(global, a).await,
        RolloutVerb::Undo(a) => undo(global, a).await,
        RolloutVerb::Pause(a) => request(global, a, Steer::Pause).await,
        RolloutVerb::Resume(a) => request(global, a, Steer::Resume).await,
        RolloutVerb::Promote(a) => request(global, a, Steer::Promote).await,
    }
}

/// The task, which must be a service.
async fn service(store: &Store, keys: &Keys, args: &TaskArgs) -> CliResult<Versioned<Task>> {
    let task = store
        .get::<Task>(&keys.task(&args.namespace, &args.name))
        .await
        .map_err(|error| store_error("reading the task", error))?
        .ok_or_else(|| {
            CliError::failure(format!(
                "task \"{}\" not found in namespace \"{}\"",
                args.name, args.namespace
            ))
        })?;
    if task.value.spec.mode() != Mode::Service {
        return Err(CliError::failure(format!(
            "task \"{}\" runs to completion ({}); rollouts are for services (restartPolicy Always)",
            args.name,
            task.value.spec.mode()
        )));
    }
    Ok(task)
}

/// The rollout record, if the leader has written one. A task state that does not decode is
/// an error naming its key, never "no rollout".
async fn rollout_of(store: &Store, keys: &Keys, args: &TaskArgs) -> CliResult<Option<Rollout>> {
    let key = keys.taskstate(&args.namespace, &args.name);
    let raw = store
        .get_raw(&key)
        .await
        .map_err(|error| store_error("reading the task state", error))?;
    match raw.map(|v| serde_json::from_slice::<TaskState>(&v.value)) {
        None => Ok(None),
        Some(Ok(state)) => Ok(state.rollout),
        Some(Err(error)) => Err(CliError::failure(format!(
            "{key} is Invalid ({error}); the task is held until it decodes"
        ))),
    }
}

/// Where the rollout of the task's current spec stands, in the words `status` prints.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The leader has not seen this spec yet.
    Waiting(String),
    /// Still going.
    Going(String),
    /// Done: exit 0.
    Done(String),
    /// Failed or reverted: exit 1.
    Failed(String),
}

/// Judges `rollout` against the spec the task has now (pure).
fn verdict(task: &Task, rollout: Option<&Rollout>) -> Verdict {
    let hash = task.spec.template_hash();
    let Some(r) = rollout else {
        return Verdict::Waiting("waiting for the controller to record a rollout".into());
    };
    let replicas = task.spec.replicas;
    if r.reverted_hash.as_deref() == Some(hash.as_str()) {
        let why = r.failure.as_ref().map_or_else(
            || "it failed".to_string(),
            |f| {
                format!(
                    "revision {} failed: {}: {}",
                    f.revision, f.reason, f.message
                )
            },
        );
        return Verdict::Failed(format!(
            "rollout failed and was reverted to revision {}: {why}",
            r.revision
        ));
    }
    if r.template_hash != hash {
        return Verdict::Waiting(format!(
            "waiting for the controller to see generation {} (revision {} is {})",
            task.metadata.generation, r.revision, r.phase
        ));
    }
    match r.phase {
        RolloutPhase::Complete => Verdict::Done(format!(
            "revision {} successfully rolled out ({replicas} of {replicas} copies)",
            r.revision
        )),
        RolloutPhase::Failed => Verdict::Failed(match &r.failure {
            Some(f) => format!("revision {} failed: {}: {}", r.revision, f.reason, f.message),
            None => format!("revision {} failed", r.revision),
        }),
        RolloutPhase::Paused => Verdict::Failed(format!(
            "revision {} is paused ({} of {replicas} copies updated): `drover rollout resume` goes on",
            r.revision, r.updated
        )),
        RolloutPhase::AwaitingPromotion => Verdict::Going(format!(
            "revision {}: {} canary copies available, waiting for `drover rollout promote`",
            r.revision, r.available
        )),
        RolloutPhase::Progressing => Verdict::Going(format!(
            "waiting for revision {}: {} of {replicas} copies updated, {} available",
            r.revision, r.updated, r.available
        )),
    }
}

async fn status(global: &Global, args: RolloutStatusArgs) -> CliResult {
    let (store, keys) = connect(global).await?;
    let deadline = args
        .timeout
        .map(|t| tokio::time::Instant::now() + Duration::from(t));
    let mut last = None;
    loop {
        let task = service(&store, &keys, &args.task).await?;
        let rollout = rollout_of(&store, &keys, &args.task).await?;
        let v = verdict(&task.value, rollout.as_ref());
        match v {
            Verdict::Done(text) => {
                println!("task/{}: {text}", args.task.name);
                return Ok(());
            }
            Verdict::Failed(text) => {
                return Err(CliError::failure(format!(
                    "task/{}: {text}",
                    args.task.name
                )));
            }
            Verdict::Waiting(ref text) | Verdict::Going(ref text) => {
                if last.as_ref() != Some(text) {
                    println!("task/{}: {text}", args.task.name);
                    last = Some(text.clone());
                }
                if !args.watch {
                    return Ok(());
                }
            }
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Err(CliError::failure(format!(
                "task/{}: timed out waiting for the rollout ({})",
                args.task.name,
                last.unwrap_or_default()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The task's revision records, oldest first; records that do not decode are reported by key.
async fn revisions(
    store: &Store,
    keys: &Keys,
    args: &TaskArgs,
) -> CliResult<Vec<Versioned<RevisionRecord>>> {
    let listed = store
        .list_checked::<RevisionRecord>(&keys.revisions_of(&args.namespace, &args.name))
        .await
        .map_err(|error| store_error("listing revisions", error))?;
    for bad in &listed.invalid {
        eprintln!("warning: {} is Invalid: {}", bad.key, bad.error);
    }
    Ok(listed.items)
}

/// What changed in `spec` against `before`, in a few words (`image`, `env`, ...).
fn change_summary(before: Option<&TaskSpec>, spec: &TaskSpec) -> String {
    let Some(before) = before else {
        return "first revision".into();
    };
    let (a, b) = (
        serde_json::to_value(before.template()).unwrap_or_default(),
        serde_json::to_value(spec.template()).unwrap_or_default(),
    );
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return String::new();
    };
    let mut fields: Vec<&str> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    fields.dedup();
    fields.join(", ")
}

async fn history(global: &Global, args: RolloutHistoryArgs) -> CliResult {
    let (store, keys) = connect(global).await?;
    let task = service(&store, &keys, &args.task).await?;
    let rollout = rollout_of(&store, &keys, &args.task).await?;
    let records = revisions(&store, &keys, &args.task).await?;
    if let Some(n) = args.revision {
        let r = records
            .iter()
            .find(|r| r.value.revision == n)
            .ok_or_else(|| no_revision(&args.task.name, n, &records))?;
        print!("{}", crate::output::to_yaml(&[&r.value])?);
        return Ok(());
    }
    match args.output {
        Format::Json => {
            let items: Vec<&RevisionRecord> = records.iter().map(|r| &r.value).collect();
            print!("{}", crate::output::to_json(&items)?);
            return Ok(());
        }
        Format::Yaml => {
            let items: Vec<&RevisionRecord> = records.iter().map(|r| &r.value).collect();
            print!("{}", crate::output::to_yaml(&items)?);
            return Ok(());
        }
        _ => {}
    }
    let spec_hash = task.value.spec.template_hash();
    let mut table = Table::new(vec!["REVISION", "CREATED", "GENERATION", "STATE", "CHANGE"]);
    let now = Utc::now();
    let mut previous: Option<&TaskSpec> = None;
    for r in &records {
        let v = &r.value;
        let mut state = Vec::new();
        if let Some(ro) = &rollout {
            if ro.revision == v.revision {
                state.push(format!("running ({})", ro.phase));
            }
            if ro.stable_revision == Some(v.revision) && ro.revision != v.revision {
                state.push("stable".to_string());
            }
            if ro
                .failure
                .as_ref()
                .is_some_and(|f| f.revision == v.revision)
            {
                state.push(format!(
                    "failed: {}",
                    ro.failure.as_ref().map_or("", |f| f.reason.as_str())
                ));
            }
        }
        if v.template_hash == spec_hash {
            state.push("in spec".to_string());
        }
        table.row(vec![
            v.revision.to_string(),
            crate::output::age(Some(v.created_at), now),
            v.generation.to_string(),
            state.join(", "),
            change_summary(previous, &v.spec),
        ]);
        previous = Some(&v.spec);
    }
    if table.is_empty() {
        println!("no revisions recorded for task/{} yet", args.task.name);
    } else {
        print!("{}", table.render());
    }
    Ok(())
}

fn no_revision(task: &str, n: u64, records: &[Versioned<RevisionRecord>]) -> CliError {
    let known: Vec<String> = records
        .iter()
        .map(|r| r.value.revision.to_string())
        .collect();
    CliError::failure(format!(
        "task \"{task}\" has no revision {n} (kept: {})",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    ))
}

/// The task with `revision`'s template and everything else (replicas, priority, update
/// strategy, labels) as it is now (pure).
fn restored(task: &Task, revision: &TaskSpec) -> Task {
    let now = &task.spec;
    let mut out = task.clone();
    out.spec = TaskSpec {
        replicas: now.replicas,
        priority: now.priority,
        preemption: now.preemption,
        update: now.update,
        history_limit: now.history_limit,
        max_consecutive_failures: now.max_consecutive_failures,
        depends_on: now.depends_on.clone(),
        blocks: now.blocks.clone(),
        ..revision.clone()
    };
    out.metadata.generation = task.metadata.generation.saturating_add(1);
    out
}

async fn undo(global: &Global, args: RolloutUndoArgs) -> CliResult {
    let (store, keys) = connect(global).await?;
    let task = service(&store, &keys, &args.task).await?;
    let rollout = rollout_of(&store, &keys, &args.task).await?;
    let records = revisions(&store, &keys, &args.task).await?;
    let spec_hash = task.value.spec.template_hash();
    let current = records
        .iter()
        .find(|r| r.value.template_hash == spec_hash)
        .map(|r| r.value.revision);
    let to = match args.to_revision {
        Some(n) => n,
        None => {
            // The last stable revision if the spec has moved off it, else the one before.
            let stable = rollout
                .as_ref()
                .and_then(|r| r.stable_revision)
                .filter(|s| Some(*s) != current);
            stable
                .or_else(|| {
                    records
                        .iter()
                        .map(|r| r.value.revision)
                        .filter(|n| current.is_none_or(|c| *n < c))
                        .max()
                })
                .ok_or_else(|| {
                    CliError::failure(format!(
                        "task \"{}\" has no earlier revision to go back to",
                        args.task.name
                    ))
                })?
        }
    };
    let record = records
        .iter()
        .find(|r| r.value.revision == to)
        .ok_or_else(|| no_revision(&args.task.name, to, &records))?;
    if record.value.template_hash == spec_hash {
        println!(
            "task/{} already runs the template of revision {to}: nothing to undo",
            args.task.name
        );
        return Ok(());
    }
    let next = restored(&task.value, &record.value.spec);
    let problems = next.validate();
    if !problems.is_empty() {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(CliError::data(format!(
            "revision {to} with the task's current settings is not valid: {}",
            text.join("; ")
        )));
    }
    drover_api::task::check_size(&next).map_err(|error| CliError::data(error.to_string()))?;
    let key = keys.task(&args.task.namespace, &args.task.name);
    let written = store
        .compare_and_swap(&key, task.mod_revision, &next)
        .await
        .map_err(|error| store_error("writing the task", error))?;
    if !written {
        return Err(CliError::failure(format!(
            "task \"{}\" changed while undoing; nothing was written, try again",
            args.task.name
        )));
    }
    println!("task/{} rolled back to revision {to}", args.task.name);
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Steer {
    Pause,
    Resume,
    Promote,
}

async fn request(global: &Global, args: TaskArgs, steer: Steer) -> CliResult {
    let (store, keys) = connect(global).await?;
    service(&store, &keys, &args).await?;
    let rollout = rollout_of(&store, &keys, &args).await?;
    let action = match steer {
        Steer::Pause => RequestAction::Pause,
        Steer::Resume => RequestAction::Resume,
        Steer::Promote => {
            let r = rollout.as_ref().ok_or_else(|| {
                CliError::failure(format!("task \"{}\" has no rollout to promote", args.name))
            })?;
            if r.phase != RolloutPhase::AwaitingPromotion {
                return Err(CliError::failure(format!(
                    "task \"{}\": revision {} is {}, not awaiting promotion",
                    args.name, r.revision, r.phase
                )));
            }
            RequestAction::Promote {
                revision: r.revision,
            }
        }
    };
    let key = submit(&store, &keys, &args.namespace, &args.name, action).await?;
    consumed(&store, &key).await?;
    let after = rollout_of(&store, &keys, &args).await?;
    let words = match steer {
        Steer::Pause => "paused",
        Steer::Resume => "resumed",
        Steer::Promote => "promoted",
    };
    println!(
        "task/{} {words}{}",
        args.name,
        after.map_or_else(String::new, |r| format!(
            " (revision {} {})",
            r.revision, r.phase
        ))
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn task() -> Task {
        let mut t = Task::new(
            "default",
            "web",
            TaskSpec {
                command: vec!["/bin/web".into()],
                replicas: 4,
                ..TaskSpec::default()
            },
        );
        t.metadata.generation = 3;
        t
    }

    fn rollout(t: &Task, phase: RolloutPhase) -> Rollout {
        Rollout {
            revision: 2,
            template_hash: t.spec.template_hash(),
            from_revision: Some(1),
            phase,
            paused: false,
            promoted: false,
            steps: 0,
            updated: 1,
            available: 1,
            started_at: DateTime::<Utc>::UNIX_EPOCH,
            progressed_at: DateTime::<Utc>::UNIX_EPOCH,
            stable_revision: Some(1),
            reverted_hash: None,
            failure: None,
        }
    }

    #[test]
    fn status_waits_until_complete_and_fails_on_a_failure_or_a_revert() {
        let t = task();
        assert!(matches!(verdict(&t, None), Verdict::Waiting(_)));
        assert!(matches!(
            verdict(&t, Some(&rollout(&t, RolloutPhase::Progressing))),
            Verdict::Going(_)
        ));
        assert!(matches!(
            verdict(&t, Some(&rollout(&t, RolloutPhase::Complete))),
            Verdict::Done(_)
        ));
        let mut failed = rollout(&t, RolloutPhase::Failed);
        failed.failure = Some(drover_api::RolloutFailure {
            revision: 2,
            reason: "Unhealthy".into(),
            message: "instance default.web.5 on n1 failed its health check".into(),
            at: DateTime::<Utc>::UNIX_EPOCH,
        });
        match verdict(&t, Some(&failed)) {
            Verdict::Failed(text) => assert!(text.contains("Unhealthy"), "{text}"),
            other => panic!("{other:?}"),
        }
        // Reverted: the record runs revision 1, the spec still has the failed template.
        let mut reverted = failed.clone();
        reverted.phase = RolloutPhase::Complete;
        reverted.revision = 1;
        reverted.template_hash = "other".into();
        reverted.reverted_hash = Some(t.spec.template_hash());
        match verdict(&t, Some(&reverted)) {
            Verdict::Failed(text) => {
                assert!(text.contains("reverted to revision 1"), "{text}");
                assert!(text.contains("Unhealthy"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        // A record of another template: the leader has not caught up.
        let mut stale = rollout(&t, RolloutPhase::Complete);
        stale.template_hash = "older".into();
        assert!(matches!(verdict(&t, Some(&stale)), Verdict::Waiting(_)));
    }

    #[test]
    fn undo_restores_the_template_and_keeps_the_current_settings() {
        let mut now = task();
        now.spec.replicas = 7;
        now.spec.priority = 80;
        now.spec.env.insert("V".into(), "3".into());
        let mut old = task().spec;
        old.env.insert("V".into(), "1".into());
        old.replicas = 2;
        let back = restored(&now, &old);
        assert_eq!(back.spec.template_hash(), old.template_hash());
        assert_eq!((back.spec.replicas, back.spec.priority), (7, 80));
        assert_eq!(back.metadata.generation, now.metadata.generation + 1);
        assert_eq!(back.metadata.labels, now.metadata.labels);
    }

    #[test]
    fn history_names_the_fields_that_changed() {
        let a = task().spec;
        let mut b = a.clone();
        b.env.insert("V".into(), "2".into());
        b.replicas = 9;
        assert_eq!(change_summary(Some(&a), &b), "env");
        assert_eq!(change_summary(None, &b), "first revision");
    }
}
