//! The `drover` binary: parses the command line, sets up logging, runs one verb and turns its
//! outcome into an exit code. Everything else lives in `cmd/` (one module per verb).

mod admin;
mod cli;
mod cmd;
mod exit;
mod input;
mod output;

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = cli::Cli::parse();
    let daemon = matches!(
        cli.command,
        cli::Command::Controller(_) | cli::Command::Agent(_)
    );
    init_tracing(cli.verbose, daemon);
    let code = match cmd::run(cli).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    };
    std::process::exit(code);
}

/// Logs go to stderr so that `-o json` output on stdout stays machine-readable. Daemons log at
/// info by default, other verbs only errors; `-v` raises the level and `RUST_LOG` overrides it.
fn init_tracing(verbose: u8, daemon: bool) {
    let default = match (verbose, daemon) {
        (0, true) => "info",
        (0, false) => "error",
        (1, _) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
