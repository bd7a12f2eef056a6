//! `drover trigger TASK`, `drover enable TASK` and `drover retry INSTANCE`: the verbs that start
//! work by hand. Each writes one request the leader acts on (`triggers/` for runs,
//! `requests/` for the rest) and none writes a key the leader owns; `enable` and `retry` wait
//! until the leader has carried theirs out.

use chrono::Utc;
use drover_api::deadletter::DeadLetter;
use drover_api::keys::Keys;
use drover_api::names::InstanceId;
use drover_api::request::{RequestAction, TaskRequest};
use drover_api::run::{RunCause, RunRecord, TriggerRequest};
use drover_api::task::{ConcurrencyPolicy, Mode, Task};
use drover_api::taskstate::TaskState;
use drover_store::{CreateOutcome, Store};

use super::{connect, store_error};
use crate::cli::{Global, RetryArgs, TaskArgs};
use crate::exit::{CliError, CliResult};

/// How long `enable` and `retry` wait for the leader to carry out their request.
const REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How often they look.
const REQUEST_POLL: std::time::Duration = std::time::Duration::from_millis(100);

pub async fn trigger(global: &Global, args: TaskArgs) -> CliResult {
    let (store, keys) = connect(global).await?;
    let task = read_task(&store, &keys, &args).await?;
    if task.spec.mode() == Mode::Service {
        return Err(CliError::failure(format!(
            "task \"{}\" is a service (restartPolicy Always): it runs continuously; \
             trigger starts runs of jobs, scheduled and manual tasks",
            args.name
        )));
    }
    let state = store
        .get::<TaskState>(&keys.taskstate(&args.namespace, &args.name))
        .await
        .map_err(|error| store_error("reading task state", error))?;
    if state.as_ref().is_some_and(|s| s.value.suspended) {
        return Err(CliError::failure(format!(
            "task \"{}\" is suspended by its circuit breaker; `drover enable {}` resumes it",
            args.name, args.name
        )));
    }
    if task.spec.concurrency_policy == ConcurrencyPolicy::Forbid {
        let runs = store
            .list_checked::<RunRecord>(&keys.runs_of(&args.namespace, &args.name))
            .await
            .map_err(|error| store_error("listing runs", error))?;
        // A run record that does not decode may be a run still going: refuse rather than
        // risk a second live run.
        if let Some(bad) = runs.invalid.first() {
            return Err(CliError::failure(format!(
                "task \"{}\": run record {} does not decode ({}); concurrencyPolicy Forbid \
                 refuses another run while a run's state is unknown",
                args.name, bad.key, bad.error
            )));
        }
        if let Some(going) = runs.items.iter().find(|r| r.value.finished_at.is_none()) {
            return Err(CliError::failure(format!(
                "task \"{}\" has run {} going (started {}); concurrencyPolicy Forbid refuses \
                 another run until it ends",
                args.name, going.value.run, going.value.started_at
            )));
        }
    }
    let id = request(
        &store,
        &keys,
        &args.namespace,
        &args.name,
        RunCause::Trigger,
    )
    .await?;
    println!("task/{} triggered (request {id})", args.name);
    Ok(())
}

pub async fn enable(global: &Global, args: TaskArgs) -> CliResult {
    let (store, keys) = connect(global).await?;
    read_task(&store, &keys, &args).await?;
    let key = keys.taskstate(&args.namespace, &args.name);
    let state = store
        .get_raw(&key)
        .await
        .map_err(|error| store_error("reading task state", error))?;
    // A state that does not decode is Invalid and holds its task until it decodes.
    let state = match state.map(|v| serde_json::from_slice::<TaskState>(&v.value)) {
        None => None,
        Some(Ok(state)) => Some(state),
        Some(Err(error)) => {
            return Err(CliError::failure(format!(
                "{key} is Invalid ({error}); the task is held until it decodes: fix or delete \
                 the key with etcdctl first"
            )))
        }
    };
    let was_suspended = state.is_some_and(|s| s.suspended);
    let request = submit(
        &store,
        &keys,
        &args.namespace,
        &args.name,
        RequestAction::Enable,
    )
    .await?;
    consumed(&store, &request).await?;
    if was_suspended {
        println!("task/{} enabled", args.name);
    } else {
        println!(
            "task/{} is enabled (it was not suspended; its failure count is reset)",
            args.name
        );
    }
    Ok(())
}

pub async fn retry(global: &Global, args: RetryArgs) -> CliResult {
    let id: InstanceId = args
        .instance
        .parse()
        .map_err(|error| CliError::data(format!("instance \"{}\": {error}", args.instance)))?;
    let (store, keys) = connect(global).await?;
    let key = keys.deadletter(id.namespace(), &id);
    let letter = store
        .get::<DeadLetter>(&key)
        .await
        .map_err(|error| store_error("reading the dead letter", error))?
        .ok_or_else(|| CliError::failure(format!("no dead letter for instance \"{id}\"")))?;
    if letter.value.run.is_some() {
        let state = store
            .get::<TaskState>(&keys.taskstate(id.namespace(), id.task()))
            .await
            .map_err(|error| store_error("reading task state", error))?;
        if state.is_some_and(|s| s.value.suspended) {
            return Err(CliError::failure(format!(
                "task \"{}\" is suspended by its circuit breaker; `drover enable {}` first, \
                 then retry",
                id.task(),
                id.task()
            )));
        }
    }
    let action = RequestAction::Retry {
        instance: id.clone(),
    };
    let request = submit(&store, &keys, id.namespace(), id.task(), action).await?;
    consumed(&store, &request).await?;
    let left = store
        .get_raw(&key)
        .await
        .map_err(|error| store_error("reading the dead letter", error))?;
    if left.is_some() {
        return Err(CliError::failure(format!(
            "the leader refused to retry \"{id}\" (a run is still going, say); \
             `drover describe task {}` shows why",
            id.task()
        )));
    }
    println!("deadletter/{id} re-queued");
    Ok(())
}

/// Writes a request about `task` for the leader to carry out; returns its key.
///
/// # Guarantees
/// A reply lost in transport is settled by reading the key back, so the caller never sees a
/// failure for a request that was stored.
pub(super) async fn submit(
    store: &Store,
    keys: &Keys,
    namespace: &str,
    task: &str,
    action: RequestAction,
) -> CliResult<String> {
    let id = request_id();
    let key = keys.request(namespace, task, &id);
    let value = TaskRequest {
        action,
        requested_at: Utc::now(),
        by: requester(),
    };
    create_settled(store, &key, &value, "the request").await?;
    Ok(key)
}

/// Waits until the leader has carried out (and deleted) the request at `key`.
pub(super) async fn consumed(store: &Store, key: &str) -> CliResult {
    let deadline = tokio::time::Instant::now() + REQUEST_WAIT;
    loop {
        let left = store
            .get_raw(key)
            .await
            .map_err(|error| store_error("waiting for the leader", error))?;
        if left.is_none() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::failure(format!(
                "no leader carried out {key} within {REQUEST_WAIT:?}; it stays pending and is \
                 carried out once a controller leads (`drover get controllers`)"
            )));
        }
        tokio::time::sleep(REQUEST_POLL).await;
    }
}

async fn read_task(store: &Store, keys: &Keys, args: &TaskArgs) -> CliResult<Task> {
    Ok(store
        .get::<Task>(&keys.task(&args.namespace, &args.name))
        .await
        .map_err(|error| store_error("reading the task", error))?
        .ok_or_else(|| {
            CliError::failure(format!(
                "task \"{}\" not found in namespace \"{}\"",
                args.name, args.namespace
            ))
        })?
        .value)
}

/// A request id: ids sort in request order, and two CLIs never pick the same one.
fn request_id() -> String {
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default().max(0);
    format!("{nanos:020}-{:08x}", rand::random::<u32>())
}

/// Who is asking, for the leader's events.
fn requester() -> String {
    std::env::var("USER").unwrap_or_else(|_| "drover-cli".into())
}

/// Writes a trigger request; returns its id.
///
/// # Guarantees
///
/// A reply lost in transport is settled by reading the key back, so the caller never sees a
/// failure for a request that was stored (retrying would request a second run).
async fn request(
    store: &Store,
    keys: &Keys,
    namespace: &str,
    task: &str,
    cause: RunCause,
) -> CliResult<String> {
    let id = request_id();
    let value = TriggerRequest {
        requested_at: Utc::now(),
        cause,
        by: requester(),
    };
    create_settled(
        store,
        &keys.trigger(namespace, task, &id),
        &value,
        "the trigger",
    )
    .await?;
    Ok(id)
}

/// Creates `key` (absent before); a reply lost in transport is settled by reading it back.
async fn create_settled<T: serde::Serialize>(
    store: &Store,
    key: &str,
    value: &T,
    what: &str,
) -> CliResult {
    match store.create(key, value, None).await {
        Ok(CreateOutcome::Created { .. }) => Ok(()),
        Ok(CreateOutcome::AlreadyExists { .. }) => Err(CliError::failure(format!(
            "{what}: id collision; try again"
        ))),
        Err(error @ drover_store::Error::OutcomeUnknown { .. }) => {
            let stored = store.get_raw(key).await.map_err(|again| {
                store_error(&format!("checking {what} after a lost reply"), again)
            })?;
            match stored {
                Some(_) => Ok(()),
                None => Err(store_error(&format!("writing {what}"), error)),
            }
        }
        Err(error) => Err(store_error(&format!("writing {what}"), error)),
    }
}
