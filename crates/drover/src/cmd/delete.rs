//! `drover delete task NAME` or `drover delete -f FILE`: removes task keys. The leader controller
//! sees the deletion and removes the task's instances.

use drover_store::Store;

use super::{connect, store_error};
use crate::cli::{DeleteArgs, Global};
use crate::exit::{CliError, CliResult};
use crate::input::read_sources;

pub async fn run(global: &Global, args: DeleteArgs) -> CliResult {
    let targets = targets(&args)?;
    let (store, keys) = connect(global).await?;
    let mut missing = Vec::new();
    for (namespace, name) in &targets {
        let key = keys.task(namespace, name);
        let deleted = delete_task(&store, &key)
            .await
            .map_err(|error| store_error(&format!("deleting {key}"), error))?;
        if deleted {
            println!("task/{name} deleted");
        } else {
            missing.push(format!(
                "task \"{name}\" not found in namespace \"{namespace}\""
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CliError::failure(missing.join("\n")))
    }
}

/// How often a delete re-reads when the task changed under it.
const DELETE_RETRIES: usize = 5;

/// Deletes the task at `key`; returns false when there was none.
///
/// # Guarantees
///
/// A reply lost in transport is settled by reading the key again, so a delete that did land is
/// reported as done rather than as "not found" (a blind retry would find nothing to delete).
async fn delete_task(store: &Store, key: &str) -> drover_store::Result<bool> {
    let mut last = None;
    for _ in 0..DELETE_RETRIES {
        let Some(current) = store.get_raw(key).await? else {
            return Ok(last.is_some());
        };
        match store.delete_if(key, current.mod_revision).await {
            Ok(true) => return Ok(true),
            // Changed meanwhile (e.g. re-applied): read again and delete the new value.
            Ok(false) => {}
            Err(error @ drover_store::Error::OutcomeUnknown { .. }) => last = Some(error),
            Err(error) => return Err(error),
        }
    }
    match last {
        Some(error) => Err(error),
        None => Ok(false),
    }
}

/// The (namespace, name) pairs to delete, from the command line or from manifests.
fn targets(args: &DeleteArgs) -> CliResult<Vec<(String, String)>> {
    match (args.target.as_slice(), args.files.is_empty()) {
        ([kind, name], true) if is_task_kind(kind) => {
            drover_api::names::validate_label(name)
                .map_err(|error| CliError::data(format!("task name \"{name}\": {error}")))?;
            Ok(vec![(args.namespace.clone(), name.clone())])
        }
        ([kind, _], true) => Err(CliError::usage(format!(
            "cannot delete \"{kind}\": only tasks can be deleted (drover delete task NAME)"
        ))),
        ([], false) => {
            let sources = read_sources(&args.files)?;
            let tasks = drover_api::manifest::parse_many(&sources)
                .map_err(|error| CliError::data(error.to_string()))?;
            Ok(tasks
                .into_iter()
                .map(|t| (t.metadata.namespace, t.metadata.name))
                .collect())
        }
        _ => Err(CliError::usage(
            "usage: drover delete task NAME, or drover delete -f FILE",
        )),
    }
}

fn is_task_kind(kind: &str) -> bool {
    matches!(kind, "task" | "tasks")
}
