//! `drover completion bash|zsh|fish`: a shell completion script generated from the whole
//! command line (client verbs and daemons), so it can never drift from the flags clap parses.

use clap::CommandFactory;
use clap_complete::Shell as Generator;

use crate::cli::{Cli, CompletionArgs, Shell};
use drover_cli::exit::CliResult;

/// Prints the script for `args.shell` to stdout.
pub fn run(args: CompletionArgs) -> CliResult {
    // Generated into memory first: clap_complete panics when its writer fails.
    super::write_stdout(&script(args.shell), "completion script")
}

/// The completion script for `shell`.
pub fn script(shell: Shell) -> Vec<u8> {
    let generator = match shell {
        Shell::Bash => Generator::Bash,
        Shell::Zsh => Generator::Zsh,
        Shell::Fish => Generator::Fish,
    };
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut command, "drover", &mut script);
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_verbs() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(script(shell)).expect("utf-8 script");
            for verb in ["apply", "rollout", "controller", "agent", "completion"] {
                assert!(text.contains(verb), "{shell:?} script lacks {verb}");
            }
        }
    }
}
