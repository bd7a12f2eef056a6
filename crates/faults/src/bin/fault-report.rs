//! `fault-report FILE`: prints the reliability table of the figures the fault suite recorded
//! in FILE (see `drover_faults::report`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: fault-report FIGURES.jsonl");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("fault-report: reading {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match drover_faults::report::table(&text) {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fault-report: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
