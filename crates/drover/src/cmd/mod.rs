//! One module per verb; `run` dispatches to them. Shared here: connecting to etcd with a clear
//! error for people when it cannot be reached.

pub mod apply;
mod bench;
mod bench_failover;
mod bench_scale;
mod bootstrap;
mod delete;
mod describe;
mod describe_node;
mod diff;
pub mod get;
mod get_events;
mod get_jobs;
mod get_view;
mod jobs;
mod logs;
mod node;
mod node_admin;
mod objects;
mod rollout;
mod rows;
pub mod snapshot;

use drover_api::keys::Keys;
use drover_store::{Store, StoreConfig};

use crate::cli::{AdminVerb, BenchKind, Command, Global};
use crate::exit::{CliError, CliResult, UNAVAILABLE};

/// Runs the client verb the command line names.
pub async fn run(global: &Global, command: Command) -> CliResult {
    match command {
        Command::Apply(args) => apply::run(global, args).await,
        Command::Get(args) => get::run(global, args).await,
        Command::Describe(args) => describe::run(global, args).await,
        Command::Diff(args) => diff::run(global, args).await,
        Command::Delete(args) => delete::run(global, args).await,
        Command::Bench(args) => match args.what {
            BenchKind::Store => bench::run(global, args).await,
            BenchKind::Failover => bench_failover::run(global, args).await,
            BenchKind::Scale => bench_scale::run(global, args).await,
        },
        Command::Logs(args) => logs::run(global, args).await,
        Command::Cordon(args) => node::cordon(global, args, true).await,
        Command::Uncordon(args) => node::cordon(global, args, false).await,
        Command::Drain(args) => node::drain(global, args).await,
        Command::Trigger(args) => jobs::trigger(global, args).await,
        Command::Enable(args) => jobs::enable(global, args).await,
        Command::Retry(args) => jobs::retry(global, args).await,
        Command::Rollout(args) => rollout::run(global, args).await,
        Command::Admin(args) => match args.verb {
            AdminVerb::Bootstrap(args) => bootstrap::run(global, args).await,
        },
    }
}

/// The store config the global options describe: endpoints, TLS, the etcd user, the write
/// log. Bad combinations are usage errors naming the flags.
pub fn store_config(global: &Global) -> CliResult<StoreConfig> {
    let mut config = StoreConfig::new(global.endpoints());
    config.write_log.clone_from(&global.write_log);
    global.access.apply(&mut config).map_err(CliError::usage)?;
    config
        .validate()
        .map_err(|error| CliError::usage(format!("etcd connection: {error}")))?;
    Ok(config)
}

/// Connects to etcd as the global options say, and builds the key schema for the prefix.
///
/// An unreachable etcd is reported in one line naming the endpoints and how to start one,
/// with exit code 69 (`EX_UNAVAILABLE`). A TLS or password file that cannot be used, and a
/// user etcd refuses, are configuration errors (64).
pub async fn connect(global: &Global) -> CliResult<(Store, Keys)> {
    let config = store_config(global)?;
    let tls = config.tls.is_enabled();
    let store = Store::connect(config).await.map_err(|error| match error {
        drover_store::Error::WriteLog { .. } => CliError::usage(format!("--write-log: {error}")),
        drover_store::Error::Credentials { .. } | drover_store::Error::AuthFailed { .. } => {
            CliError::usage(error.to_string())
        }
        error if tls => CliError::new(
            UNAVAILABLE,
            format!(
                "{error}\nhint: check that --etcd names etcd's https:// client URLs, that \
                 --etcd-cafile is the CA that signed etcd's certificate, and that etcd \
                 trusts the CA of --etcd-certfile"
            ),
        ),
        error => CliError::new(
            UNAVAILABLE,
            format!(
                "{error}\nhint: start a local etcd with `hack/etcd.sh start`, or point --etcd \
                 (or DROVER_ETCD) at a running one"
            ),
        ),
    })?;
    Ok((store, Keys::new(&global.prefix)))
}

/// Maps a store failure during a verb to a CLI error, keeping etcd outages distinguishable.
pub fn store_error(context: &str, error: drover_store::Error) -> CliError {
    let code = if error.retryable() {
        UNAVAILABLE
    } else {
        crate::exit::FAILURE
    };
    CliError::new(code, format!("{context}: {error}"))
}
