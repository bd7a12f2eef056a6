//! Where tracing is set up for every process: records go to stderr, as text for people or as
//! one JSON object per line (`--log-format json`) for log pipelines.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. Daemons log at info by default, other verbs only errors;
/// `-v` raises the level and `RUST_LOG` overrides it.
///
/// # Guarantees
///
/// With [`LogFormat::Json`] every line on stderr written through tracing is one JSON object
/// with `timestamp`, `level`, `target` and `fields`, plus `span` (the innermost span, with its
/// fields) and `spans` (every span from the root in), so a record logged while reconciling a
/// task or converging an instance carries that task's or instance's name.
///
/// # Caveats
///
/// Lines not written through tracing (the final `error: ...` before a non-zero exit, clap's
/// usage errors) stay plain text: they are the CLI's contract with people and scripts.
pub fn init(verbose: u8, daemon: bool, format: LogFormat) {
    let default = match (verbose, daemon) {
        (0, true) => "info",
        (0, false) => "error",
        (1, _) => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            // No colour codes inside JSON strings, whatever stderr is.
            .with_ansi(false)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
