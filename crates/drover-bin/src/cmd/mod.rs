//! The daemon verbs, one module each (`controller`, `agent`, `up`), and what they share;
//! `run` dispatches every verb, handing the client verbs to `drover-cli`.

mod agent;
mod controller;
mod daemon;
mod up;

use drover_cli::exit::CliResult;

use crate::cli::{Cli, Verb};

/// Runs the verb the command line names.
pub async fn run(cli: Cli) -> CliResult {
    let global = cli.global;
    match cli.command {
        Verb::Client(command) => drover_cli::cmd::run(&global, command).await,
        Verb::Up(args) => up::run(&global, args).await,
        Verb::Controller(args) => controller::run(&global, args).await,
        Verb::Agent(args) => agent::run(&global, *args).await,
    }
}
