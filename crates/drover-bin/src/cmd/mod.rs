//! The daemon verbs, one module each (`controller`, `agent`, `up`), and what they share; the
//! verbs that need the whole command line (`completion`, `man`); `run` dispatches every verb,
//! handing the client verbs to `drover-cli`.

mod agent;
mod completion;
mod controller;
mod daemon;
mod man;
mod up;

use std::io::Write;

use drover_cli::exit::{CliError, CliResult};

use crate::cli::{Cli, Verb};

/// Runs the verb the command line names.
pub async fn run(cli: Cli) -> CliResult {
    let global = cli.global;
    match cli.command {
        Verb::Client(command) => drover_cli::cmd::run(&global, command).await,
        Verb::Up(args) => up::run(&global, args).await,
        Verb::Controller(args) => controller::run(&global, args).await,
        Verb::Agent(args) => agent::run(&global, *args).await,
        Verb::Completion(args) => completion::run(args),
        Verb::Man(args) => man::run(args),
    }
}

/// Writes generated text (`completion`, `man`) to stdout in one piece. A reader that stopped
/// early (`drover man | head`) is not a failure of ours, so a broken pipe ends quietly.
fn write_stdout(bytes: &[u8], what: &str) -> CliResult {
    match std::io::stdout().lock().write_all(bytes) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::failure(
            format!("writing the {what} to stdout: {error}"),
        )),
        _ => Ok(()),
    }
}
