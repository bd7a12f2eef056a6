//! `drover man [--out-dir DIR]`: roff man pages generated from the command line itself, the
//! main page to stdout or one page per verb into a directory (for packagers' `man1/`).

use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, ManArgs};
use drover_cli::exit::{CliError, CliResult};

/// Prints the main page, or writes every page into `--out-dir`.
pub fn run(args: ManArgs) -> CliResult {
    match args.out_dir {
        None => super::write_stdout(&main_page()?, "man page"),
        Some(dir) => write_pages(&dir),
    }
}

/// The roff source of `drover(1)`.
pub fn main_page() -> CliResult<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|error| CliError::failure(format!("rendering the man page: {error}")))?;
    Ok(page)
}

/// Writes `drover.1` and a page for every visible verb and sub-verb into `dir`.
fn write_pages(dir: &Path) -> CliResult {
    std::fs::create_dir_all(dir)
        .map_err(|error| CliError::usage(format!("--out-dir {}: {error}", dir.display())))?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(|error| {
        CliError::failure(format!("writing man pages into {}: {error}", dir.display()))
    })?;
    tracing::info!(dir = %dir.display(), "wrote man pages");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_page_has_a_name_section_and_the_verbs() {
        let page = String::from_utf8(main_page().expect("renders")).expect("utf-8 page");
        assert!(page.contains(".SH NAME"), "{page}");
        for verb in ["apply", "rollout", "controller", "completion"] {
            assert!(page.contains(verb), "man page lacks {verb}");
        }
    }

    #[test]
    fn out_dir_gets_one_page_per_verb() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("man1");
        write_pages(&out).expect("writes pages");
        for page in ["drover.1", "drover-apply.1", "drover-rollout-status.1"] {
            assert!(out.join(page).is_file(), "no {page}");
        }
    }
}
