//! The reconcile key of an instance on this node ([`Slot`]) and [`StopRecord`]s, the local
//! log of when instances were stopped and why (kept in memory and appended to
//! `<state_dir>/stops.jsonl`, so a test or an operator can compare a fenced copy's stop time
//! with its replacement's start time). Each instance's local state is in `crate::instance`.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use drover_api::names::InstanceId;
use serde::{Deserialize, Serialize};

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Local record keeping failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Appending to the stop log failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The reconcile key: one instance on one node. Instance ids are unique per placement, the
/// node is carried so one engine can serve many hollow nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slot {
    /// The node it is assigned to.
    pub node: Arc<str>,
    /// The instance.
    pub id: InstanceId,
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.id)
    }
}

/// Why an instance was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// Self-fencing: keep-alives were not acknowledged.
    Fenced,
    /// Its assignment was removed (or re-created for a new placement).
    Unassigned,
    /// The agent shut down.
    Shutdown,
    /// The controller asked for it (drain, update, scale-down, deletion, preemption).
    Requested,
}

/// When and why an instance was stopped. `stopped_at` is taken after the runtime confirmed the
/// instance gone, so the real end was no later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopRecord {
    /// The instance.
    pub instance: InstanceId,
    /// The node that ran it.
    pub node: String,
    /// Why.
    pub reason: StopReason,
    /// When the stopped run had started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the stop began (SIGTERM).
    pub stop_began_at: DateTime<Utc>,
    /// When the runtime confirmed it gone.
    pub stopped_at: DateTime<Utc>,
    /// Fencing only: the stop deadline (`last acked send + ttl - margin`).
    pub deadline: Option<DateTime<Utc>>,
    /// Fencing only: the earliest the server can have expired the lease (`sent + ttl`).
    pub lease_expiry_earliest: Option<DateTime<Utc>>,
    /// Whether the runtime confirmed the stop (false: stop and kill failed; see logs).
    pub confirmed: bool,
}

/// The stop log: in memory (last 10 000) and, with a directory, appended to `stops.jsonl`.
#[derive(Debug)]
pub struct Records {
    file: Option<PathBuf>,
    mem: Mutex<Vec<StopRecord>>,
}

const KEEP: usize = 10_000;

impl Records {
    /// A log kept in `dir/stops.jsonl` (and memory), or memory only.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Records {
            file: dir.map(|d| d.join("stops.jsonl")),
            mem: Mutex::default(),
        }
    }

    /// Appends a record.
    pub async fn add(&self, record: StopRecord) -> Result<()> {
        {
            let mut mem = self.mem.lock().unwrap_or_else(PoisonError::into_inner);
            if mem.len() >= KEEP {
                mem.remove(0);
            }
            mem.push(record.clone());
        }
        let Some(path) = &self.file else {
            return Ok(());
        };
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| io(e.into()))?;
        line.push(b'\n');
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io)?;
        }
        use tokio::io::AsyncWriteExt;
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(io)?;
        f.write_all(&line).await.map_err(io)?;
        f.flush().await.map_err(io)
    }

    /// Every record in memory, oldest first.
    pub fn list(&self) -> Vec<StopRecord> {
        self.mem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the records of a stop log file (for tests and tools in another process).
    pub fn read_file(path: &std::path::Path) -> std::io::Result<Vec<StopRecord>> {
        let text = std::fs::read_to_string(path)?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}
