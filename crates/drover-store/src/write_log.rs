//! An optional local record of this process's etcd writes: one JSON line per request that
//! created a revision (`{"revision":R,"op":"txn"}`), appended to a file the operator names.
//!
//! Every etcd revision is made by exactly one request, so the lines of all processes' logs,
//! joined with a watch of the prefix on the revision, say which process wrote each key. That is
//! how the one-writer-per-key rule is checked end to end, and how an operator answers "who
//! wrote this?" after the fact.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use etcd_client::{TxnOpResponse, TxnResponse};

use crate::error::{Error, Result};

/// The open log file.
#[derive(Debug)]
pub(crate) struct WriteLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl WriteLog {
    /// Opens `path` for appending, creating it if absent.
    pub(crate) fn open(path: &Path) -> Result<WriteLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::WriteLog {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(WriteLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Appends one line for a request that created `revision`.
    ///
    /// # Caveats
    ///
    /// A failed append is logged and otherwise ignored: the write it describes has happened,
    /// and a debugging aid must not fail it. The append is a small blocking write to the page
    /// cache, done while holding a mutex, which is why this is for audits and tests, not for
    /// every production deployment.
    pub(crate) fn record(&self, op: &'static str, revision: i64) {
        let line = format!("{{\"revision\":{revision},\"op\":\"{op}\"}}\n");
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(error) = file.write_all(line.as_bytes()) {
            tracing::warn!(path = %self.path.display(), %error, "appending to the write log failed");
        }
    }
}

/// Whether a txn changed anything: a put ran, or a delete removed a key. A txn whose taken
/// branch only read, or only deleted absent keys, leaves the revision where it was.
pub(crate) fn txn_wrote(response: &TxnResponse) -> bool {
    response.op_responses().iter().any(|op| match op {
        TxnOpResponse::Put(_) => true,
        TxnOpResponse::Delete(delete) => delete.deleted() > 0,
        TxnOpResponse::Txn(inner) => txn_wrote(inner),
        TxnOpResponse::Get(_) => false,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn appends_one_json_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writes.jsonl");
        let log = WriteLog::open(&path).unwrap();
        log.record("put", 7);
        log.record("txn", 9);
        let again = WriteLog::open(&path).unwrap();
        again.record("delete", 12);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["revision"], 7);
        assert_eq!(lines[2]["op"], "delete");
    }

    #[test]
    fn an_unwritable_path_is_an_error_naming_it() {
        let error = WriteLog::open(Path::new("/nonexistent-dir/w.jsonl")).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent-dir/w.jsonl"),
            "{error}"
        );
    }
}
