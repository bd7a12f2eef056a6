//! `drover apply -f FILE|DIR|-`: validate every document first, then write the tasks that
//! changed in one fenced-by-revision transaction, reporting `created`, `configured` or
//! `unchanged` for each.

use drover_api::keys::Keys;
use drover_api::task::Task;
use drover_store::{Cmp, Op, Store, Txn};

use super::{connect, store_error};
use crate::cli::{ApplyArgs, Global};
use crate::exit::{CliError, CliResult};
use crate::input::{read_sources, Source};

/// How many times apply re-reads and retries when another writer changed a task under it.
const CONFLICT_RETRIES: usize = 3;

/// What apply does to one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Created,
    Configured,
    Unchanged,
}

impl Change {
    fn verb(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Configured => "configured",
            Change::Unchanged => "unchanged",
        }
    }
}

/// A task with what apply will do to it and the revision the decision was based on.
struct Planned {
    task: Task,
    change: Change,
    /// The stored copy's mod revision, 0 when absent: the write compares it.
    based_on: i64,
}

pub async fn run(global: &Global, args: ApplyArgs) -> CliResult {
    let sources = read_sources(&args.files)?;
    apply_sources(global, &sources, args.dry_run).await
}

/// Applies manifests already read (`drover up` passes its built-in example here).
pub async fn apply_sources(global: &Global, sources: &[Source], dry_run: bool) -> CliResult {
    let tasks = parse_checked(sources)?;
    let (store, keys) = connect(global).await?;
    apply_to(&store, &keys, sources, &tasks, dry_run)
        .await?
        .report();
    Ok(())
}

/// Parses and validates every document of `sources`, sizes included, writing nothing: a bad
/// manifest is refused before anything touches etcd.
pub fn parse_checked(sources: &[Source]) -> CliResult<Vec<Task>> {
    let tasks = drover_api::manifest::parse_many(sources)
        .map_err(|error| CliError::data(error.to_string()))?;
    if tasks.is_empty() {
        return Err(CliError::data("no task found in the given manifests"));
    }
    for task in &tasks {
        drover_api::task::check_size(task).map_err(|error| CliError::data(error.to_string()))?;
    }
    Ok(tasks)
}

/// What an apply did (or, dry, would do) to each task.
pub struct Applied {
    plan: Vec<Planned>,
    dry_run: bool,
}

impl Applied {
    /// Prints one `task/NAME created|configured|unchanged` line per task, as `drover apply`
    /// does.
    pub fn report(&self) {
        report(&self.plan, if self.dry_run { " (dry run)" } else { "" });
    }

    /// How many tasks were created or configured.
    pub fn changed(&self) -> usize {
        self.plan
            .iter()
            .filter(|p| p.change != Change::Unchanged)
            .count()
    }
}

/// Applies `tasks` (parsed from `sources` by [`parse_checked`]) through `store`: the code path
/// of `drover apply`, for callers that hold their own connection (`bench scale`). Prints
/// nothing; [`Applied::report`] does.
///
/// # Guarantees
///
/// As `drover apply`: dependency cycles are checked against the stored tasks first, and each
/// write compares the stored copy it was planned from, re-planning when another writer won.
pub async fn apply_to(
    store: &Store,
    keys: &Keys,
    sources: &[Source],
    tasks: &[Task],
    dry_run: bool,
) -> CliResult<Applied> {
    // Dependency cycles may close through tasks applied earlier: check against what is stored.
    // A stored value that does not decode (another client's) takes no part in the check and
    // never blocks an apply; applying the same name replaces it.
    let stored: Vec<Task> = store
        .list_checked::<Task>(&keys.tasks())
        .await
        .map_err(|error| store_error("listing stored tasks", error))?
        .items
        .into_iter()
        .map(|item| item.value)
        .collect();
    drover_api::manifest::parse_many_against(sources, &stored)
        .map_err(|error| CliError::data(error.to_string()))?;
    for attempt in 0..=CONFLICT_RETRIES {
        let plan = plan(store, keys, tasks).await?;
        if dry_run {
            return Ok(Applied { plan, dry_run });
        }
        match write(store, keys, &plan).await? {
            true => return Ok(Applied { plan, dry_run }),
            false if attempt < CONFLICT_RETRIES => {
                tracing::info!(attempt, "a task changed while applying; re-reading");
            }
            false => break,
        }
    }
    Err(CliError::failure(
        "another client kept changing these tasks while applying; nothing more was written \
         (an apply of over 64 changed tasks may have written its first batches), try again",
    ))
}

/// Decides, from the stored copies, what happens to each task.
async fn plan(store: &Store, keys: &Keys, tasks: &[Task]) -> CliResult<Vec<Planned>> {
    let mut plan = Vec::with_capacity(tasks.len());
    for task in tasks {
        let key = keys.task(&task.metadata.namespace, &task.metadata.name);
        let raw = store
            .get_raw(&key)
            .await
            .map_err(|error| store_error(&format!("reading {key}"), error))?;
        let mut task = task.clone();
        // A generation past anything the bad value may have carried: etcd's per-key version
        // counts every write since the key was created, so it is at least any generation an
        // apply gave it (instances started from it must not look current).
        let stored = raw.map(|raw| match serde_json::from_slice::<Task>(&raw.value) {
            Ok(value) => Ok(raw.map(|_| value)),
            Err(_) => Err((
                raw.mod_revision,
                foreign_generation(&raw.value).max(u64::try_from(raw.version).unwrap_or(0)),
            )),
        });
        let (change, based_on) = match stored {
            None => {
                task.metadata.generation = 1;
                (Change::Created, 0)
            }
            // An invalid stored value is replaced, its generation (if it has one) surpassed so
            // that nothing started from it is mistaken for the new spec.
            Some(Err((mod_revision, generation))) => {
                task.metadata.generation = generation + 1;
                (Change::Configured, mod_revision)
            }
            Some(Ok(stored)) => {
                task.metadata.generation = stored.value.metadata.generation;
                if task == stored.value {
                    (Change::Unchanged, stored.mod_revision)
                } else {
                    task.metadata.generation = stored.value.metadata.generation + 1;
                    (Change::Configured, stored.mod_revision)
                }
            }
        };
        plan.push(Planned {
            task,
            change,
            based_on,
        });
    }
    Ok(plan)
}

/// `metadata.generation` of a stored value that does not decode as a task, 0 if it has none.
fn foreign_generation(bytes: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| {
            v.pointer("/metadata/generation")
                .and_then(serde_json::Value::as_u64)
        })
        .unwrap_or(0)
}

/// Tasks per transaction: each needs one compare and one put, and etcd accepts at most 128
/// operations per transaction by default.
const TASKS_PER_TXN: usize = 64;

/// Writes every changed task in transactions that require each stored copy to be as read.
/// Returns false when another writer got there first.
///
/// # Guarantees
///
/// Up to 64 changed tasks are written atomically: all or none. Nothing is written before every
/// document has been validated.
///
/// # Caveats
///
/// A larger apply is written in chunks of 64; when a concurrent writer wins on a later chunk the
/// earlier ones stay written, and the retry re-plans (they then read as `unchanged`).
async fn write(store: &Store, keys: &Keys, plan: &[Planned]) -> CliResult<bool> {
    let mut chunks: Vec<Vec<(Cmp, Op)>> = vec![Vec::new()];
    let byte_budget = store.config().max_request_bytes.saturating_sub(16 * 1024);
    for planned in plan.iter().filter(|p| p.change != Change::Unchanged) {
        let meta = &planned.task.metadata;
        let key = keys.task(&meta.namespace, &meta.name);
        let cmp = Cmp::ModRevision(key.clone(), planned.based_on);
        let op = Op::put(key.clone(), &planned.task, None)
            .map_err(|error| store_error(&format!("encoding {key}"), error))?;
        let Some(last) = chunks.last_mut() else {
            continue;
        };
        let bytes: usize = last
            .iter()
            .map(|(c, o)| c.encoded_len() + o.encoded_len())
            .sum();
        if !last.is_empty()
            && (last.len() >= TASKS_PER_TXN
                || bytes + cmp.encoded_len() + op.encoded_len() > byte_budget)
        {
            chunks.push(Vec::new());
        }
        if let Some(last) = chunks.last_mut() {
            last.push((cmp, op));
        }
    }
    for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
        let mut txn = Txn::new();
        for (cmp, op) in chunk {
            txn = txn.when(cmp).op(op);
        }
        let outcome = store
            .commit(txn, None)
            .await
            .map_err(|error| store_error("writing tasks", error))?;
        if !outcome.succeeded {
            return Ok(false);
        }
    }
    Ok(true)
}

fn report(plan: &[Planned], suffix: &str) {
    for planned in plan {
        let meta = &planned.task.metadata;
        let namespace = if meta.namespace == "default" {
            String::new()
        } else {
            format!(" -n {}", meta.namespace)
        };
        println!(
            "task/{}{namespace} {}{suffix}",
            meta.name,
            planned.change.verb()
        );
    }
}
