//! The CLI's error type and the exit codes it maps to (BSD `sysexits` where one fits), so that
//! scripts can tell bad input from an unreachable etcd.

use std::fmt;

/// Exit code for bad command-line usage or configuration (`EX_USAGE`).
pub const USAGE: i32 = 64;
/// Exit code for input that is wrong, such as an invalid manifest (`EX_DATAERR`).
pub const DATA: i32 = 65;
/// Exit code when etcd cannot be reached (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: i32 = 69;
/// Exit code for every other failure.
pub const FAILURE: i32 = 1;

/// A failed verb: a message for people and the exit code for scripts.
#[derive(Debug)]
pub struct CliError {
    message: String,
    code: i32,
}

impl CliError {
    /// An error with an explicit exit code.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code,
        }
    }

    /// Input the user gave is wrong (a manifest, a name, a flag's value).
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(DATA, message)
    }

    /// Bad usage or configuration.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    /// Any other failure.
    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(FAILURE, message)
    }

    /// An outcome that is not success but needs no message: `diff` exits 1 when it printed a
    /// difference, as `diff(1)` and kubectl do.
    pub fn silent(code: i32) -> Self {
        Self::new(code, "")
    }

    /// Whether there is nothing to print (see [`CliError::silent`]).
    pub fn is_silent(&self) -> bool {
        self.message.is_empty()
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        self.code
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// Result of a CLI verb.
pub type CliResult<T = ()> = Result<T, CliError>;
