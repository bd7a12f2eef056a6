//! The `drover` binary: parses the command line, sets up logging, runs one verb and turns its
//! outcome into an exit code. The client verbs live in `drover-cli`; the daemons in `cmd/`.

mod cli;
mod cmd;
mod logging;

use drover_cli::exit;

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => exit_on_parse_error(error),
    };
    let daemon = matches!(cli.command, cli::Verb::Controller(_) | cli::Verb::Agent(_));
    // Logs go to stderr so that `-o json` output and generated scripts on stdout stay clean.
    logging::init(cli.verbose, daemon, cli.log_format);
    let code = match cmd::run(cli).await {
        Ok(()) => 0,
        Err(error) => {
            if !error.is_silent() {
                eprintln!("error: {error}");
            }
            error.exit_code()
        }
    };
    std::process::exit(code);
}

/// `--help` and `--version` print and exit 0; every other parse error (an unknown verb or flag, a
/// bad value) prints clap's message, with its "did you mean" suggestion, and exits 64
/// (`EX_USAGE`) as docs/cli.md promises, instead of clap's default 2.
fn exit_on_parse_error(mut error: clap::Error) -> ! {
    use clap::error::ErrorKind;
    suggest_nearest_verb(&mut error);
    let code = match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
        _ => exit::USAGE,
    };
    // `print` colours only where stderr/stdout is a terminal (clap's `ColorChoice::Auto`).
    let _ = error.print();
    std::process::exit(code);
}

/// clap suggests a verb only when it is very similar to the unknown one; an operator who typed
/// something else entirely still wants to be pointed at the closest verb that exists at that
/// level of the command line (top-level verbs, or a verb's own subcommands).
fn suggest_nearest_verb(error: &mut clap::Error) {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    if error.kind() != ErrorKind::InvalidSubcommand
        || error.get(ContextKind::SuggestedSubcommand).is_some()
    {
        return;
    }
    let Some(ContextValue::String(unknown)) = error.get(ContextKind::InvalidSubcommand) else {
        return;
    };
    let unknown = unknown.clone();
    let mut command = cli::Cli::command();
    for arg in std::env::args().skip(1) {
        if arg == unknown {
            break;
        }
        if let Some(sub) = command.find_subcommand(&arg) {
            command = sub.clone();
        }
    }
    let nearest = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_string())
        .filter(|name| name != "help")
        .map(|name| (strsim::jaro_winkler(&unknown, &name), name))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, name)) = nearest {
        error.insert(
            ContextKind::SuggestedSubcommand,
            ContextValue::Strings(vec![name]),
        );
    }
}
