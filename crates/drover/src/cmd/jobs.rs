//! `drover trigger TASK`, `drover enable TASK` and `drover retry INSTANCE`: the verbs that start
//! work by hand. Each writes one request the leader acts on; none writes controller state
//! except `enable`, which clears the circuit breaker by compare-and-swap.

use chrono::Utc;
use drover_api::deadletter::DeadLetter;
use drover_api::keys::Keys;
use drover_api::names::InstanceId;
use drover_api::run::{RunCause, RunRecord, TriggerRequest};
use drover_api::task::{ConcurrencyPolicy, Mode, Task};
use drover_api::taskstate::TaskState;
use drover_store::{Cmp, CreateOutcome, Op, Store, Txn};

use super::{connect, store_error};
use crate::cli::{Global, RetryArgs, TaskArgs};
use crate::exit::{CliError, CliResult};

/// How often `enable` re-reads and retries when the controller wrote the state meanwhile.
const CAS_RETRIES: usize = 5;

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
    for _ in 0..CAS_RETRIES {
        // Read as JSON so fields this CLI does not know (the controller's) are kept.
        let Some(current) = store
            .get::<serde_json::Value>(&key)
            .await
            .map_err(|error| store_error("reading task state", error))?
        else {
            println!(
                "task/{} is enabled (it has never been suspended)",
                args.name
            );
            return Ok(());
        };
        // A state that does not decode is Invalid and holds its task; patching it could make
        // it decode with defaults and release the task as if it were new (reusing run numbers).
        if let Err(error) = serde_json::from_value::<TaskState>(current.value.clone()) {
            return Err(CliError::failure(format!(
                "{key} is Invalid ({error}); the task is held until it decodes: fix or delete \
                 the key with etcdctl first"
            )));
        }
        let mut value = current.value;
        let Some(fields) = value.as_object_mut() else {
            return Err(CliError::failure(format!("{key} does not hold an object")));
        };
        fields.insert("suspended".into(), false.into());
        fields.insert("suspendedReason".into(), serde_json::Value::Null);
        fields.insert("consecutiveFailures".into(), 0.into());
        let swapped = store
            .compare_and_swap(&key, current.mod_revision, &value)
            .await
            .map_err(|error| store_error("writing task state", error))?;
        if swapped {
            println!("task/{} enabled", args.name);
            return Ok(());
        }
    }
    Err(CliError::failure(format!(
        "the controller kept changing {key}; try again"
    )))
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
    let mut txn = Txn::new()
        .when(Cmp::ModRevision(key.clone(), letter.mod_revision))
        .delete(key.clone());
    if letter.value.run.is_some() {
        let (trigger_key, value) =
            trigger_request(&keys, id.namespace(), id.task(), RunCause::Retry);
        txn = txn
            .op(Op::put(trigger_key, &value, None)
                .map_err(|error| store_error("encoding", error))?);
    }
    let outcome = store
        .commit(txn, None)
        .await
        .map_err(|error| store_error("re-queueing", error))?;
    if !outcome.succeeded {
        return Err(CliError::failure(format!(
            "the dead letter for \"{id}\" changed meanwhile; look again with `drover get deadletters`"
        )));
    }
    println!("deadletter/{id} re-queued");
    Ok(())
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

/// A trigger key (ids sort in request order) and its value.
fn trigger_request(
    keys: &Keys,
    namespace: &str,
    task: &str,
    cause: RunCause,
) -> (String, TriggerRequest) {
    let now = Utc::now();
    let nanos = now.timestamp_nanos_opt().unwrap_or_default().max(0);
    let id = format!("{nanos:020}-{:08x}", rand::random::<u32>());
    let by = std::env::var("USER").unwrap_or_else(|_| "drover-cli".into());
    (
        keys.trigger(namespace, task, &id),
        TriggerRequest {
            requested_at: now,
            cause,
            by,
        },
    )
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
    let (key, value) = trigger_request(keys, namespace, task, cause);
    let id = key.rsplit('/').next().unwrap_or_default().to_string();
    match store.create(&key, &value, None).await {
        Ok(CreateOutcome::Created { .. }) => Ok(id),
        Ok(CreateOutcome::AlreadyExists { .. }) => {
            Err(CliError::failure("trigger id collision; try again"))
        }
        Err(error @ drover_store::Error::OutcomeUnknown { .. }) => {
            let stored = store
                .get_raw(&key)
                .await
                .map_err(|again| store_error("checking the trigger after a lost reply", again))?;
            match stored {
                Some(_) => Ok(id),
                None => Err(store_error("writing the trigger", error)),
            }
        }
        Err(error) => Err(store_error("writing the trigger", error)),
    }
}
