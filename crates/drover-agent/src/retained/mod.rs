//! Output the agent keeps after a container or process is removed (a local restart, a finished
//! job run, a stopped service copy), so `drover logs --previous` and `drover logs --run N` can
//! still show it: the runtime forgets it on destroy (docker removes the container and its
//! log, the process driver deletes its log file).
//!
//! Layout: `<state_dir>/retained/<instance>/<seq>.jsonl`, one file per removed run: a header
//! line ([`Header`]) then one JSON record per output line. Files are written whole under a
//! temporary name and renamed, so a crash never leaves half an output; being under the state
//! dir, they survive an agent restart. Bounds ([`RetainConfig`]): each output keeps its last
//! `max_bytes` of lines, each instance its newest `keep_per_instance` outputs, and finished
//! instances are kept for `max_age` and at most `keep_finished` of them ([`policy`]).

pub mod policy;

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::driver::{DriverKind, Handle, LogLine, LogStream};
use drover_api::names::InstanceId;

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Failures of the retained-output store. Each names the file or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, writing, listing or deleting under the store's directory failed.
    #[error("retained output {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A retained file does not decode (written by something else, or damaged).
    #[error("retained output {}: line {line} does not decode: {source}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// Its 1-based line number.
        line: usize,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The blocking file work did not finish (its thread panicked or was cancelled).
    #[error("retained output: background file work failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How much output the agent keeps (`drover agent --logs-*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetainConfig {
    /// Outputs kept per instance, newest first (`--logs-keep-per-instance`). Default 3.
    pub keep_per_instance: usize,
    /// Bytes of one output kept, its last lines (`--logs-max-bytes`). Default 4 MiB.
    pub max_bytes: u64,
    /// Finished instances (no longer assigned here) whose outputs are kept
    /// (`--logs-keep-finished`). Default 100.
    pub keep_finished: usize,
    /// A finished instance's outputs are deleted this long after its last one was written
    /// (`--logs-max-age`). Default 24 h.
    #[serde(with = "drover_api::duration::human")]
    pub max_age: Duration,
}

impl Default for RetainConfig {
    fn default() -> Self {
        RetainConfig {
            keep_per_instance: 3,
            max_bytes: 4 << 20,
            keep_finished: 100,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetainConfig {
    /// The deletion bounds of [`policy::to_delete`].
    pub fn bounds(&self) -> policy::Bounds {
        policy::Bounds {
            keep_per_instance: self.keep_per_instance,
            keep_finished: self.keep_finished,
            max_age: self.max_age,
        }
    }
}

/// The first line of a retained file: whose output it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// The instance id.
    pub instance: String,
    /// The node whose agent ran it.
    pub node: String,
    /// The driver that ran it.
    pub driver: DriverKind,
    /// The driver's id of the removed run (container id, pid).
    pub handle: String,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When the output was retained (the run had ended, or was just stopped).
    pub written_at: DateTime<Utc>,
    /// Lines dropped from the front to stay within `max_bytes`.
    pub dropped_lines: u64,
}

impl Header {
    /// Whether this output is of the run `handle` (same driver id and start: a pid may be
    /// reused, its start time with it is not).
    pub fn is_of(&self, handle: &Handle) -> bool {
        self.handle == handle.id && self.started_at == handle.started_at
    }
}

/// One output line on disk; short names because there is one per line of output.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    time: Option<DateTime<Utc>>,
    #[serde(rename = "s")]
    stream: LogStream,
    #[serde(rename = "l")]
    line: String,
}

/// One retained output of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Its number; higher is newer.
    pub seq: u64,
    /// Whose output it is.
    pub header: Header,
    /// Where it is.
    pub path: PathBuf,
}

/// The last `cap` bytes of lines of a stream: lines are appended at the back and dropped
/// from the front, so memory stays bounded whatever the container printed.
#[derive(Debug)]
pub struct TailBuffer {
    lines: VecDeque<LogLine>,
    bytes: u64,
    cap: u64,
    dropped: u64,
}

impl TailBuffer {
    /// An empty buffer holding at most `cap` bytes (each line counts its text and a newline).
    pub fn new(cap: u64) -> Self {
        TailBuffer {
            lines: VecDeque::new(),
            bytes: 0,
            cap,
            dropped: 0,
        }
    }

    /// Appends `line`, dropping the oldest lines while over the cap.
    pub fn push(&mut self, line: LogLine) {
        self.bytes += size_of_line(&line);
        self.lines.push_back(line);
        while self.bytes > self.cap {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= size_of_line(&old);
            self.dropped += 1;
        }
    }

    /// The kept lines and how many were dropped.
    pub fn into_parts(self) -> (Vec<LogLine>, u64) {
        (self.lines.into(), self.dropped)
    }
}

fn size_of_line(line: &LogLine) -> u64 {
    u64::try_from(line.line.len())
        .unwrap_or(u64::MAX / 2)
        .saturating_add(1)
}

/// The store under `<state_dir>/retained`. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Retained {
    root: PathBuf,
    config: RetainConfig,
    /// Serialises writers and the collector, so a sequence number is never taken twice and a
    /// file being written is never collected.
    write: tokio::sync::Mutex<()>,
}

impl Retained {
    /// The store at `root` (created if missing).
    pub fn open(root: PathBuf, config: RetainConfig) -> Result<Self> {
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        Ok(Retained {
            root,
            config,
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// The bounds in force.
    pub fn config(&self) -> &RetainConfig {
        &self.config
    }

    fn dir_of(&self, instance: &str) -> PathBuf {
        let stem: String = instance
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root.join(stem)
    }

    /// Reads `lines` (an ended run's whole output) into a buffer capped at `max_bytes`.
    pub async fn capture(
        &self,
        mut lines: BoxStream<'static, crate::driver::Result<LogLine>>,
    ) -> (TailBuffer, Option<String>) {
        let mut buf = TailBuffer::new(self.config.max_bytes);
        while let Some(item) = lines.next().await {
            match item {
                Ok(line) => buf.push(line),
                Err(e) => return (buf, Some(e.to_string())),
            }
        }
        (buf, None)
    }

    /// Writes the output of the run `handle` of `node` as the instance's newest.
    pub async fn keep(
        &self,
        node: &str,
        driver: DriverKind,
        handle: &Handle,
        buf: TailBuffer,
    ) -> Result<Output> {
        let _guard = self.write.lock().await;
        let dir = self.dir_of(&handle.instance.to_string());
        let (lines, dropped) = buf.into_parts();
        let header = Header {
            instance: handle.instance.to_string(),
            node: node.to_string(),
            driver,
            handle: handle.id.clone(),
            started_at: handle.started_at,
            written_at: Utc::now(),
            dropped_lines: dropped,
        };
        tokio::task::spawn_blocking(move || write_output(&dir, header, &lines)).await?
    }

    /// The retained outputs of `instance`, oldest first. Files that do not decode are
    /// skipped with a warning: one damaged file must not hide the others.
    pub async fn list(&self, instance: &InstanceId) -> Result<Vec<Output>> {
        let dir = self.dir_of(&instance.to_string());
        tokio::task::spawn_blocking(move || list_dir(&dir)).await?
    }

    /// The lines of `output`.
    pub async fn read(&self, output: &Output) -> Result<Vec<LogLine>> {
        let path = output.path.clone();
        tokio::task::spawn_blocking(move || read_lines(&path)).await?
    }

    /// Deletes what the bounds no longer allow ([`policy::to_delete`]); `live` are the
    /// instances the agent still has in its table. Returns how many outputs were deleted.
    pub async fn collect(&self, live: BTreeSet<String>) -> Result<usize> {
        let _guard = self.write.lock().await;
        let root = self.root.clone();
        let bounds = self.config.bounds();
        tokio::task::spawn_blocking(move || collect_dir(&root, &live, bounds, Utc::now())).await?
    }
}

fn write_output(dir: &Path, header: Header, lines: &[LogLine]) -> Result<Output> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let seq = list_dir(dir)?.last().map_or(1, |o| o.seq + 1);
    let path = dir.join(format!("{seq:08}.jsonl"));
    let tmp = dir.join(format!("{seq:08}.tmp"));
    let encode = |e: serde_json::Error| Error::Io {
        path: tmp.clone(),
        source: std::io::Error::other(e),
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io(&tmp))?);
    serde_json::to_writer(&mut out, &header).map_err(encode)?;
    out.write_all(b"\n").map_err(io(&tmp))?;
    for l in lines {
        let rec = Record {
            time: l.time,
            stream: l.stream,
            line: l.line.clone(),
        };
        serde_json::to_writer(&mut out, &rec).map_err(encode)?;
        out.write_all(b"\n").map_err(io(&tmp))?;
    }
    out.into_inner()
        .map_err(|e| Error::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(Output { seq, header, path })
}

/// The outputs in `dir`, oldest first; a missing dir has none.
fn list_dir(dir: &Path) -> Result<Vec<Output>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let Some(seq) = seq_of(&path) else { continue };
        match read_header(&path) {
            Ok(header) => found.push(Output { seq, header, path }),
            Err(error) => tracing::warn!(%error, "skipping a retained output"),
        }
    }
    found.sort_by_key(|o| o.seq);
    Ok(found)
}

fn seq_of(path: &Path) -> Option<u64> {
    if path.extension().is_none_or(|e| e != "jsonl") {
        return None;
    }
    path.file_stem()?.to_str()?.parse().ok()
}

fn read_header(path: &Path) -> Result<Header> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut first = String::new();
    std::io::BufReader::new(file)
        .read_line(&mut first)
        .map_err(io(path))?;
    serde_json::from_str(&first).map_err(|source| Error::Decode {
        path: path.to_path_buf(),
        line: 1,
        source,
    })
}

fn read_lines(path: &Path) -> Result<Vec<LogLine>> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut lines = Vec::new();
    for (n, text) in std::io::BufReader::new(file).lines().enumerate().skip(1) {
        let text = text.map_err(io(path))?;
        let rec: Record = serde_json::from_str(&text).map_err(|source| Error::Decode {
            path: path.to_path_buf(),
            line: n + 1,
            source,
        })?;
        lines.push(LogLine {
            stream: rec.stream,
            line: rec.line,
            time: rec.time,
        });
    }
    Ok(lines)
}

fn collect_dir(
    root: &Path,
    live: &BTreeSet<String>,
    bounds: policy::Bounds,
    now: DateTime<Utc>,
) -> Result<usize> {
    let mut all = Vec::new();
    let mut paths = std::collections::HashMap::new();
    for entry in std::fs::read_dir(root).map_err(io(root))? {
        let dir = entry.map_err(io(root))?.path();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if !dir.is_dir() {
            continue;
        }
        let outputs = list_dir(&dir)?;
        for o in &outputs {
            paths.insert((name.clone(), o.seq), o.path.clone());
        }
        all.push(policy::InstanceOutputs {
            instance: name,
            outputs: outputs
                .iter()
                .map(|o| policy::Kept {
                    seq: o.seq,
                    written_at: o.header.written_at,
                })
                .collect(),
        });
    }
    let doomed = policy::to_delete(&all, live, bounds, now);
    for key in &doomed {
        if let Some(path) = paths.get(key) {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(path)(e)),
            }
        }
    }
    // An instance left with nothing loses its directory too (not if something else is in it).
    for inst in &all {
        let dir = root.join(&inst.instance);
        if list_dir(&dir)?.is_empty() {
            let _ = std::fs::remove_dir(&dir);
        }
    }
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> LogLine {
        LogLine {
            stream: LogStream::Stdout,
            line: text.into(),
            time: None,
        }
    }

    #[test]
    fn the_tail_buffer_keeps_whole_lines_from_the_end() {
        let mut buf = TailBuffer::new(5);
        for l in ["aaaa", "bb", "c"] {
            buf.push(line(l));
        }
        let (kept, dropped) = buf.into_parts();
        let kept: Vec<&str> = kept.iter().map(|l| l.line.as_str()).collect();
        assert_eq!((kept, dropped), (vec!["bb", "c"], 1));
        let mut buf = TailBuffer::new(3);
        buf.push(line("toolong"));
        assert_eq!(buf.into_parts().1, 1);
    }

    /// Bounds a file operation of the test, so a hang fails instead of stalling the suite.
    async fn within<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .map_err(|_| Error::Io {
                path: PathBuf::from("test"),
                source: std::io::Error::other("timed out"),
            })?
    }

    #[tokio::test]
    async fn outputs_round_trip_and_are_collected_beyond_the_bounds() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io(Path::new("tempdir")))?;
        let config = RetainConfig {
            keep_per_instance: 2,
            ..RetainConfig::default()
        };
        let store = Retained::open(dir.path().join("retained"), config)?;
        let id: InstanceId = "default.web.0".parse().map_err(|_| Error::Io {
            path: PathBuf::new(),
            source: std::io::Error::other("bad id"),
        })?;
        for n in 0..3 {
            let handle = Handle {
                instance: id.clone(),
                id: format!("c{n}"),
                started_at: Utc::now(),
            };
            let mut buf = TailBuffer::new(config.max_bytes);
            buf.push(line(&format!("run {n}")));
            within(store.keep("n1", DriverKind::Docker, &handle, buf)).await?;
        }
        let outputs = within(store.list(&id)).await?;
        assert_eq!(outputs.iter().map(|o| o.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let newest = within(store.read(&outputs[2])).await?;
        assert_eq!(newest, [line("run 2")]);
        let live = BTreeSet::from([id.to_string()]);
        assert_eq!(within(store.collect(live)).await?, 1);
        let left = within(store.list(&id)).await?;
        assert_eq!(left.iter().map(|o| o.seq).collect::<Vec<_>>(), [2, 3]);
        Ok(())
    }
}
