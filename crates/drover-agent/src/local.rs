//! What the agent knows about the instances it runs: one [`Entry`] per instance in memory,
//! and [`StopRecord`]s, the local log of when instances were stopped and why (kept in memory
//! and appended to `<state_dir>/stops.jsonl`, so a test or an operator can compare a fenced
//! copy's stop time with its replacement's start time).

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use drover_api::instance::{Health, Instance, InstanceStatus, Phase, PortBinding};
use drover_api::names::InstanceId;
use drover_api::task::DriverKind;
use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::driver::{Handle, InstanceMeta};

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

/// The current run of an instance in the runtime.
#[derive(Debug)]
pub(crate) struct Run {
    pub handle: Handle,
    /// Distinguishes this run from earlier ones, so a late report of an old run is ignored.
    pub seq: u64,
    /// Set by the exit waiter: exit code and end time.
    pub exited: Option<(Option<i32>, Option<DateTime<Utc>>)>,
    /// Set by the prober when the failure threshold was reached.
    pub unhealthy: bool,
    /// Helper tasks (exit waiter, prober), aborted when the run is dropped.
    pub tasks: Vec<AbortHandle>,
    /// Whether a prober was started for this run.
    pub probing: bool,
}

impl Drop for Run {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Everything the agent tracks for one instance.
#[derive(Debug)]
pub(crate) struct Entry {
    pub meta: InstanceMeta,
    /// The assignment being run; `None` for an adopted instance not yet matched.
    pub instance: Option<Arc<Instance>>,
    /// Create revision of that assignment (0 until matched); status writes are fenced on it.
    pub create_revision: i64,
    pub kind: DriverKind,
    pub run: Option<Run>,
    pub ports: Vec<PortBinding>,
    pub restart_count: u32,
    pub phase: Phase,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    pub health: Health,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When the first run started; local restarts keep it, `timeoutSeconds` counts from it.
    pub first_started: Option<Instant>,
    /// A restart waits for its backoff until then.
    pub next_start: Option<Instant>,
    /// Succeeded or failed for good: never started again.
    pub terminal: bool,
    /// Stopped by self-fencing; dropped (and re-created from the assignment) on re-register.
    pub fenced: bool,
    /// The last status written, to skip identical rewrites.
    pub written: Option<InstanceStatus>,
}

impl Entry {
    /// A fresh entry for an assignment.
    pub fn new(instance: Arc<Instance>, create_revision: i64, kind: DriverKind) -> Self {
        let meta = InstanceMeta {
            instance: instance.id.clone(),
            node: instance.node.clone(),
            generation: instance.generation,
            attempt: instance.attempt,
        };
        Entry {
            instance: Some(instance),
            create_revision,
            ..Entry::unmatched(meta, kind)
        }
    }

    /// An entry for what a driver recovered, not yet matched to an assignment (create
    /// revision 0, no instance) and not started.
    pub fn unmatched(meta: InstanceMeta, kind: DriverKind) -> Self {
        Entry {
            meta,
            instance: None,
            create_revision: 0,
            kind,
            run: None,
            ports: Vec::new(),
            restart_count: 0,
            phase: Phase::Pending,
            reason: None,
            message: None,
            exit_code: None,
            health: Health::Unknown,
            started_at: None,
            finished_at: None,
            first_started: None,
            next_start: None,
            terminal: false,
            fenced: false,
            written: None,
        }
    }

    /// The status to report now.
    pub fn status(&self) -> InstanceStatus {
        InstanceStatus {
            id: self.meta.instance.clone(),
            node: self.meta.node.clone(),
            phase: self.phase,
            reason: self.reason.clone(),
            message: self.message.clone(),
            container_id: self.run.as_ref().map(|r| r.handle.id.clone()),
            restart_count: self.restart_count,
            exit_code: self.exit_code,
            health: self.health,
            ports: self.ports.clone(),
            generation: self.meta.generation,
            attempt: self.meta.attempt,
            started_at: self.started_at,
            finished_at: self.finished_at,
            updated_at: Utc::now(),
        }
    }

    /// Whether the runtime object is (as far as we know) still running.
    pub fn is_running(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.exited.is_none())
    }

    /// Where the run stands against `timeoutSeconds` at `now` (see [`crate::deadline`]).
    pub fn deadline(&self, now: Instant) -> crate::deadline::Deadline {
        match &self.instance {
            Some(i) => crate::deadline::check(&i.spec, self.first_started, now),
            None => crate::deadline::Deadline::None,
        }
    }

    /// The grace period from the spec (10 s for an adopted instance without assignment).
    pub fn grace(&self) -> std::time::Duration {
        let secs = self
            .instance
            .as_ref()
            .map_or(10, |i| i.spec.termination_grace_period_seconds);
        std::time::Duration::from_secs(u64::from(secs))
    }
}
