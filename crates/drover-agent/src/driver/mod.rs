//! The driver layer: one trait over the runtimes an agent runs instances on, shaped after Nomad's
//! driver plugins (fingerprint, start, wait, inspect, stop, destroy, logs, recover).
//!
//! Three implementations live beside this file: [`docker::DockerDriver`] (the Docker Engine through
//! bollard), [`process::ProcessDriver`] (plain host processes in their own process group) and
//! [`hollow::HollowDriver`] (simulated instances for scale tests, scripted like Nomad's mock
//! driver).
//!
//! # Why boxed futures rather than `async fn` in the trait
//!
//! The agent picks its driver at run time (`--driver docker|process|hollow`) and holds it as
//! `Arc<dyn Driver>`; tests of the convergence loop plug in fakes without editing an enum in this
//! crate. `async fn` in a trait is not object-safe, and its futures cannot be required to be `Send`
//! on stable Rust, which `tokio::spawn` needs. Returning [`BoxFuture`] keeps the trait object-safe
//! and `Send` at the cost of one small allocation per call — noise next to a Docker round trip, and
//! cheap enough for the hollow driver's thousands of instances. Each driver implements the work in
//! inherent `async fn`s and the trait impl only boxes them.

pub mod docker;
pub mod hollow;
pub mod process;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use drover_api::instance::{reasons, Instance, PortBinding};
use drover_api::names::InstanceId;
pub use drover_api::task::DriverKind;
use drover_api::task::{Protocol, TaskSpec};

/// Label and pid-file keys that tie a runtime object back to its Drover instance.
pub mod labels {
    /// The node whose agent owns the instance; `recover` filters on it.
    pub const NODE: &str = "dev.drover.node";
    /// The instance id.
    pub const INSTANCE: &str = "dev.drover.instance";
    /// The task's namespace.
    pub const NAMESPACE: &str = "dev.drover.namespace";
    /// The task's name.
    pub const TASK: &str = "dev.drover.task";
    /// The task generation the instance was started from.
    pub const GENERATION: &str = "dev.drover.generation";
    /// The attempt number (local restarts and reschedules).
    pub const ATTEMPT: &str = "dev.drover.attempt";
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a driver. [`Error::reason`] is the status reason users see.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image is not present on this node. Drivers never pull (no registry is reachable), so
    /// this is returned at once instead of hanging.
    #[error("image {image:?} is not present on this node (drover never pulls images)")]
    ImageNotFound {
        /// The image reference from the spec.
        image: String,
    },
    /// The runtime could not start the instance: a missing binary, a port already taken, a
    /// scripted hollow failure.
    #[error("start failed: {message}")]
    StartError {
        /// What went wrong, naming the binary, image or port involved.
        message: String,
    },
    /// The spec cannot run under this driver at all (docker without an image, process without a
    /// command). Retrying does not help.
    #[error("invalid spec for the {driver} driver: {message}")]
    InvalidSpec {
        /// The driver that rejected the spec.
        driver: DriverKind,
        /// Which field is wrong.
        message: String,
    },
    /// The agent will not start the instance as its spec asks on this node: it would run as
    /// root without `--allow-root-tasks`, or its user, group or working directory is missing
    /// here. Retrying does not help until the spec or the node changes.
    #[error("task {task} refused: {refusal}")]
    Refused {
        /// The task, `<namespace>/<name>`.
        task: String,
        /// Why.
        refusal: process::Refusal,
    },
    /// The runtime's daemon does not answer (socket missing, connection refused, timeout).
    #[error("container runtime unavailable: {message}")]
    DaemonUnavailable {
        /// The underlying error.
        message: String,
    },
    /// The runtime has no such instance (container removed, unknown pid).
    #[error("{id} not found")]
    NotFound {
        /// The driver id (container id, pid) that was looked up.
        id: String,
    },
    /// The runtime answered with an error we do not classify further.
    #[error("runtime error: {message}")]
    Runtime {
        /// The runtime's message.
        message: String,
    },
    /// Local I/O on the agent's state dir, log files or `/proc` failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The machine-readable reason written into instance status (`ImageNotFound`, `StartError`,
    /// ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::ImageNotFound { .. } => reasons::IMAGE_NOT_FOUND,
            Error::StartError { .. } => reasons::START_ERROR,
            Error::InvalidSpec { .. } => "InvalidSpec",
            Error::Refused { refusal, .. } => refusal.reason(),
            Error::DaemonUnavailable { .. } => "DaemonUnavailable",
            Error::NotFound { .. } => "NotFound",
            Error::Runtime { .. } => "RuntimeError",
            Error::Io { .. } => "IoError",
        }
    }

    /// Whether the same call may succeed later without any change to the spec or the node.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Error::DaemonUnavailable { .. } | Error::Runtime { .. } | Error::Io { .. }
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Which Drover instance a runtime object belongs to. Written as container labels (docker) or
/// into the pid file (process), and read back by `recover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMeta {
    /// The instance id; it carries the task's namespace and name.
    pub instance: InstanceId,
    /// The node whose agent owns it.
    pub node: String,
    /// The task generation it was started from.
    pub generation: u64,
    /// The attempt number.
    pub attempt: u32,
}

impl InstanceMeta {
    /// The labels that identify this instance on a container. Namespace and task are redundant
    /// with the id but let `docker ps --filter label=...` select by task.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::NODE.to_string(), self.node.clone()),
            (labels::INSTANCE.to_string(), self.instance.to_string()),
            (
                labels::NAMESPACE.to_string(),
                self.instance.namespace().to_string(),
            ),
            (labels::TASK.to_string(), self.instance.task().to_string()),
            (labels::GENERATION.to_string(), self.generation.to_string()),
            (labels::ATTEMPT.to_string(), self.attempt.to_string()),
        ])
    }

    /// Reads the labels back; `None` when any is missing or malformed (not ours, or tampered).
    pub fn from_labels<'a>(mut get: impl FnMut(&str) -> Option<&'a str>) -> Option<Self> {
        Some(InstanceMeta {
            instance: get(labels::INSTANCE)?.parse().ok()?,
            node: get(labels::NODE)?.to_string(),
            generation: get(labels::GENERATION)?.parse().ok()?,
            attempt: get(labels::ATTEMPT)?.parse().ok()?,
        })
    }

    /// Environment variables every driver gives the workload, so it can tell who it is.
    pub(crate) fn env(&self) -> [(String, String); 4] {
        [
            ("DROVER_INSTANCE".to_string(), self.instance.to_string()),
            ("DROVER_NODE".to_string(), self.node.clone()),
            (
                "DROVER_NAMESPACE".to_string(),
                self.instance.namespace().to_string(),
            ),
            ("DROVER_TASK".to_string(), self.instance.task().to_string()),
        ]
    }
}

/// Everything a driver needs to start one instance.
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// Who the instance is; becomes labels / pid-file metadata.
    pub meta: InstanceMeta,
    /// The resolved task spec from the assignment.
    pub spec: TaskSpec,
    /// Host ports already allocated by the agent, one per published container port. The
    /// protocol comes from the spec's matching `ports[]` entry (TCP when none matches).
    pub ports: Vec<PortBinding>,
}

impl StartRequest {
    /// The request for an assignment, with the host ports the agent allocated for it.
    pub fn from_instance(instance: &Instance, ports: Vec<PortBinding>) -> Self {
        StartRequest {
            meta: InstanceMeta {
                instance: instance.id.clone(),
                node: instance.node.clone(),
                generation: instance.generation,
                attempt: instance.attempt,
            },
            spec: instance.spec.clone(),
            ports,
        }
    }

    /// The protocol of `binding`, from the spec's port list.
    pub fn protocol_of(&self, binding: &PortBinding) -> Protocol {
        self.spec
            .ports
            .iter()
            .find(|p| p.container_port == binding.container_port)
            .map_or(Protocol::Tcp, |p| p.protocol)
    }
}

/// A started (or recovered) instance as the driver knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    /// The instance id.
    pub instance: InstanceId,
    /// The driver's own id: container id (docker), pid (process), instance id (hollow).
    pub id: String,
    /// When the runtime started it.
    pub started_at: DateTime<Utc>,
}

/// What the runtime says about an instance right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Started and not yet exited.
    Running,
    /// It ended. `code` is `None` where the runtime cannot know it (a process adopted after an
    /// agent restart); a signal death is reported as `128 + signal`, as shells and Docker do.
    Exited {
        /// The exit code, when known.
        code: Option<i32>,
        /// When it ended, when known.
        finished_at: Option<DateTime<Utc>>,
    },
    /// The runtime has no such instance.
    NotFound,
}

impl TaskState {
    /// Whether the instance is still running.
    pub fn is_running(&self) -> bool {
        matches!(self, TaskState::Running)
    }
}

/// Which output a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Both, interleaved in one file (the process driver keeps one log per instance).
    Combined,
}

/// One line of an instance's output, without its trailing newline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Where it came from.
    pub stream: LogStream,
    /// The text (lossily decoded as UTF-8).
    pub line: String,
    /// When it was written, where the runtime records it (docker does; the process driver's
    /// output goes straight from the process to a file, so its lines have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
}

/// Whether a driver can run here, and why (or why not). Reported in the node record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The driver.
    pub kind: DriverKind,
    /// Whether instances can be started.
    pub healthy: bool,
    /// A human-readable detail: the runtime version, or the reason it is unusable.
    pub detail: String,
}

/// An instance the driver found already running (or exited) for this node at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredInstance {
    /// Who it is.
    pub meta: InstanceMeta,
    /// A handle to keep managing it.
    pub handle: Handle,
    /// Its state when found.
    pub state: TaskState,
}

/// A task runtime, in the shape of Nomad's driver plugins. See the module docs for why the
/// methods return boxed futures.
pub trait Driver: Send + Sync + 'static {
    /// Which driver this is.
    fn kind(&self) -> DriverKind;

    /// Whether this driver is usable on this machine, with a reason. Never fails: an unusable
    /// driver is a fingerprint with `healthy == false`.
    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint>;

    /// Starts one instance. Idempotent per (instance, attempt): a second call while the first
    /// copy still runs returns the existing handle instead of starting a duplicate.
    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, Result<Handle>>;

    /// The instance's state now, without waiting.
    fn inspect<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<TaskState>>;

    /// Resolves once the instance is no longer running (`Exited` or `NotFound`).
    fn wait<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<TaskState>>;

    /// Stops the instance: SIGTERM, then SIGKILL once `grace` has passed.
    ///
    /// # Guarantees
    /// Returns `Ok` only once the instance (for the process driver: its whole process group) is
    /// gone; stopping an instance that already exited or is unknown is `Ok`.
    ///
    /// # Caveats
    /// The runtime keeps the exited instance (container, pid file, log) until [`Driver::destroy`].
    fn stop<'a>(&'a self, handle: &'a Handle, grace: Duration) -> BoxFuture<'a, Result<()>>;

    /// Removes what `stop` leaves behind (container, pid file and log). Kills first if needed.
    fn destroy<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<()>>;

    /// The instance's output: the last `tail` lines (all when `None`), then, with `follow`, new
    /// lines until the instance exits or the stream is dropped.
    fn logs(
        &self,
        handle: &Handle,
        follow: bool,
        tail: Option<usize>,
    ) -> BoxStream<'static, Result<LogLine>>;

    /// What this driver already runs for `node`, so the agent adopts it after a restart instead
    /// of starting duplicates.
    ///
    /// # Guarantees
    /// Everything returned carries complete [`InstanceMeta`]; objects without it are ignored.
    ///
    /// # Caveats
    /// Exited instances may be returned too (docker), with their state; the caller decides
    /// whether to report or destroy them.
    fn recover<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<RecoveredInstance>>>;
}

impl fmt::Display for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Combined => "output",
        })
    }
}

/// Splits a chunk of output into lines, dropping the trailing newline and any `\r`.
pub(crate) fn split_lines(stream: LogStream, bytes: &[u8]) -> Vec<LogLine> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    text.split('\n')
        .map(|l| LogLine {
            stream,
            line: l.strip_suffix('\r').unwrap_or(l).to_string(),
            time: None,
        })
        .collect()
}

/// Splits a chunk of Docker output requested with `timestamps`: each line starts with its
/// RFC 3339 time and a space, which becomes [`LogLine::time`]. A line without one is kept
/// whole, untimed.
pub(crate) fn split_timed_lines(stream: LogStream, bytes: &[u8]) -> Vec<LogLine> {
    split_lines(stream, bytes)
        .into_iter()
        .map(|mut l| {
            let parsed = l.line.split_once(' ').and_then(|(t, rest)| {
                let time = DateTime::parse_from_rfc3339(t).ok()?;
                Some((time.with_timezone(&Utc), rest.to_string()))
            });
            if let Some((time, rest)) = parsed {
                l.time = Some(time);
                l.line = rest;
            }
            l
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        let meta = InstanceMeta {
            instance: "default.echo.3".parse().expect("valid id"),
            node: "n1".into(),
            generation: 7,
            attempt: 2,
        };
        let labels = meta.labels();
        let back = InstanceMeta::from_labels(|k| labels.get(k).map(String::as_str));
        assert_eq!(back, Some(meta));
        assert_eq!(labels[labels::TASK], "echo");
        assert_eq!(InstanceMeta::from_labels(|_| None), None);
    }

    #[test]
    fn split_lines_strips_newlines() {
        let lines = split_lines(LogStream::Stdout, b"a\r\nb\n");
        let text: Vec<_> = lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(text, ["a", "b"]);
    }

    #[test]
    fn docker_timestamps_become_line_times() {
        let lines = split_timed_lines(
            LogStream::Stderr,
            b"2024-05-01T10:00:00.123456789Z hello world\nno time here\n",
        );
        assert_eq!(lines[0].line, "hello world");
        assert_eq!(
            lines[0].time.map(|t| t.to_rfc3339()),
            Some("2024-05-01T10:00:00.123456789+00:00".to_string())
        );
        assert_eq!(
            (lines[1].line.as_str(), lines[1].time),
            ("no time here", None)
        );
    }

    #[test]
    fn reasons() {
        let e = Error::ImageNotFound { image: "x".into() };
        assert_eq!(e.reason(), "ImageNotFound");
        assert!(!e.retryable());
        assert!(Error::DaemonUnavailable {
            message: String::new()
        }
        .retryable());
    }
}
