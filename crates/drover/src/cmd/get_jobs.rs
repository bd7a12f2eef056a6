//! `drover get runs TASK` and `drover get deadletters`: the run history of a job, scheduled or
//! triggered task, and the instances that exhausted their retries.

use chrono::{DateTime, Utc};
use drover_api::deadletter::DeadLetter;
use drover_api::keys::Keys;
use drover_api::run::RunRecord;
use drover_store::Store;

use super::snapshot::{list_valid, InvalidEntry, InvalidKind};
use crate::cli::GetArgs;
use crate::exit::{CliError, CliResult};
use crate::output::{age, Table};

/// The table for runs.
pub fn run_table() -> Table {
    Table::new(vec![
        "RUN", "CAUSE", "ATTEMPT", "STARTED", "DURATION", "OUTCOME", "EXIT",
    ])
}

/// One run's row.
pub fn run_row(run: &RunRecord, now: DateTime<Utc>) -> Vec<String> {
    let end = run.finished_at.unwrap_or(now);
    let seconds = (end - run.started_at).num_milliseconds().max(0) as f64 / 1000.0;
    vec![
        run.run.to_string(),
        format!("{:?}", run.cause).to_lowercase(),
        run.attempt.to_string(),
        format!("{} ago", age(Some(run.started_at), now)),
        format!("{seconds:.1}s"),
        run.outcome
            .map(|o| o.to_string())
            .unwrap_or_else(|| "Running".into()),
        run.exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
    ]
}

/// The table for dead letters.
pub fn deadletter_table() -> Table {
    Table::new(vec![
        "INSTANCE",
        "TASK",
        "RUN",
        "ATTEMPTS",
        "EXIT",
        "AGE",
        "LAST ERROR",
    ])
}

/// One dead letter's row.
pub fn deadletter_row(letter: &DeadLetter, now: DateTime<Utc>) -> Vec<String> {
    vec![
        letter.instance.to_string(),
        letter.task.clone(),
        letter
            .run
            .map(|r| r.to_string())
            .unwrap_or_else(|| "-".into()),
        letter.attempts.to_string(),
        letter
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
        age(Some(letter.time), now),
        letter.last_error.clone(),
    ]
}

/// The runs of the task `args.name`, oldest first.
pub async fn runs(
    store: &Store,
    keys: &Keys,
    args: &GetArgs,
    invalid: &mut Vec<InvalidEntry>,
) -> CliResult<Vec<RunRecord>> {
    let Some(task) = args.name.as_deref() else {
        return Err(CliError::usage("usage: drover get runs TASK"));
    };
    let prefix = keys.runs_of(&args.namespace, task);
    let runs = list_valid::<RunRecord>(store, &prefix, "runs", InvalidKind::Run, invalid).await?;
    Ok(runs.into_iter().map(|item| item.value).collect())
}

/// The dead letters in scope (`-n` or `-A`, optionally of one task).
pub async fn deadletters(
    store: &Store,
    keys: &Keys,
    args: &GetArgs,
    invalid: &mut Vec<InvalidEntry>,
) -> CliResult<Vec<DeadLetter>> {
    let prefix = keys.deadletters();
    let letters = list_valid::<DeadLetter>(
        store,
        &prefix,
        "dead letters",
        InvalidKind::DeadLetter,
        invalid,
    )
    .await?;
    Ok(letters
        .into_iter()
        .map(|item| item.value)
        .filter(|d| args.all_namespaces || d.namespace == args.namespace)
        .filter(|d| args.name.as_deref().is_none_or(|t| t == d.task))
        .collect())
}
