//! The process driver's state dir: a pid file and a log per instance, so a restarted agent can
//! find what it started and tell it from a process that merely reuses the pid.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use drover_api::names::InstanceId;
use serde::{Deserialize, Serialize};

use super::procfs::read_stat;
use crate::driver::{Error, Handle, InstanceMeta, Result};

/// What the pid file records: enough to find the process again and to be sure it is still the
/// same process (pids are reused; the start time in clock ticks since boot is not).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PidFile {
    pub(super) pid: u32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub(super) start_ticks: u64,
    pub(super) started_at: DateTime<Utc>,
    pub(super) command: Vec<String>,
    pub(super) meta: InstanceMeta,
}

impl PidFile {
    /// Whether the recorded process is still alive (not a zombie) and still the same process.
    pub(super) fn is_alive(&self) -> bool {
        read_stat(self.pid).is_some_and(|s| s.state != 'Z' && s.start_ticks == self.start_ticks)
    }

    pub(super) fn handle(&self) -> Handle {
        Handle {
            instance: self.meta.instance.clone(),
            id: self.pid.to_string(),
            started_at: self.started_at,
        }
    }
}

/// `<root>/pids/<instance>.json` and `<root>/logs/<instance>.log`.
#[derive(Debug, Clone)]
pub(super) struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Creates the `pids/` and `logs/` directories if missing.
    pub(super) fn create(root: PathBuf) -> Result<Self> {
        for sub in ["logs", "pids"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        Ok(StateDir { root })
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn pids_dir(&self) -> PathBuf {
        self.root.join("pids")
    }

    pub(super) fn log_path(&self, instance: &InstanceId) -> PathBuf {
        self.root
            .join("logs")
            .join(format!("{}.log", file_stem(instance)))
    }

    pub(super) fn pid_path(&self, instance: &InstanceId) -> PathBuf {
        self.pids_dir()
            .join(format!("{}.json", file_stem(instance)))
    }

    /// The pid file of `instance`; `None` when there is none or it is unreadable.
    pub(super) async fn read(&self, instance: &InstanceId) -> Result<Option<PidFile>> {
        let path = self.pid_path(instance);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Written to a temporary name and renamed, so a crash never leaves half a pid file.
    pub(super) async fn write(&self, pf: &PidFile) -> Result<()> {
        let path = self.pid_path(&pf.meta.instance);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(pf).map_err(|e| Error::Runtime {
            message: format!("encoding pid file: {e}"),
        })?;
        tokio::fs::write(&tmp, bytes)
            .await
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
    }
}

/// Instance ids are DNS-1123 labels and dots already; anything else is replaced so the id stays
/// one file name.
fn file_stem(instance: &InstanceId) -> String {
    instance
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
