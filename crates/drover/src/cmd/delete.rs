//! `drover delete task NAME` or `drover delete -f FILE`: removes task keys. The leader controller
//! sees the deletion and removes the task's instances.

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
        let deleted = store
            .delete(&key)
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
