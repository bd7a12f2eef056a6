//! The Task resource: one kind that covers services, jobs, scheduled and triggered work.
//!
//! User-facing types use camelCase field names and reject unknown fields. Every default is
//! documented on its field; [`Task::validate`] holds the semantic rules, each documented there.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::names::NameError;
use crate::quantity::{Cpu, Memory};
use crate::schedule::{self, ScheduleError};

/// The only supported `apiVersion`.
pub const API_VERSION: &str = "drover.dev/v1";
/// The only supported `kind`.
pub const KIND: &str = "Task";
/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Upper bound of `spec.replicas`.
pub const MAX_REPLICAS: u32 = 1000;
/// Upper bound of `spec.priority`.
pub const MAX_PRIORITY: u8 = 100;
/// Upper bound of `spec.historyLimit`.
pub const MAX_HISTORY_LIMIT: u32 = 1000;

/// The largest task Drover stores, as encoded JSON (256 KiB).
///
/// Every assignment embeds its instance's resolved spec, and the leader's smallest unit of
/// commit (replacing one instance: remove the old assignment, add the new one, write the task
/// state, compare the fence) must fit in one etcd request (`--max-request-bytes`, 1.5 MiB by
/// default) with room to spare. A task over this limit is refused at `apply`, by name.
pub const MAX_TASK_BYTES: usize = 256 * 1024;

/// A task too large to store (see [`MAX_TASK_BYTES`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "task {namespace}/{name}: {bytes} bytes as JSON, over the limit of {limit} bytes {what} \
     (every assignment embeds the spec and must fit in one etcd request)"
)]
pub struct TooLarge {
    /// The task's namespace.
    pub namespace: String,
    /// The task's name.
    pub name: String,
    /// Its encoded size.
    pub bytes: usize,
    /// The limit, [`MAX_TASK_BYTES`] or [`MAX_RUN_BYTES`].
    pub limit: usize,
    /// Which limit.
    pub what: String,
}

/// The most bytes of specs one run of a job may start: a run's instances are assigned in one
/// transaction (a run starts whole or not at all), and every assignment embeds the spec.
pub const MAX_RUN_BYTES: usize = 1024 * 1024;

/// Refuses a task whose encoded JSON exceeds [`MAX_TASK_BYTES`], or, for work that runs to
/// completion, whose `replicas` copies of it exceed [`MAX_RUN_BYTES`].
pub fn check_size(task: &Task) -> Result<(), TooLarge> {
    let bytes = serde_json::to_vec(task).map_or(usize::MAX, |v| v.len());
    let too_large = |bytes, limit, what: &str| TooLarge {
        namespace: task.metadata.namespace.clone(),
        name: task.metadata.name.clone(),
        bytes,
        limit,
        what: what.to_string(),
    };
    if bytes > MAX_TASK_BYTES {
        return Err(too_large(bytes, MAX_TASK_BYTES, "per task"));
    }
    let run = bytes.saturating_mul(task.spec.replicas as usize);
    if task.spec.mode() != Mode::Service && run > MAX_RUN_BYTES {
        return Err(too_large(
            run,
            MAX_RUN_BYTES,
            "per job run (replicas x spec; a run's assignments are written together)",
        ));
    }
    Ok(())
}

/// One semantic problem in a Task, with the path of the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// A field has a value that breaks a rule.
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the field, e.g. `spec.healthCheck.http.port`.
        field: String,
        /// What is wrong, and what would be right.
        message: String,
    },
    /// A name (task, namespace, dependency, label) is not valid.
    #[error("{field}: invalid {what} {value:?}: {source}")]
    Name {
        /// Path of the field.
        field: String,
        /// What kind of name (`"task name"`, `"label key"`, ...).
        what: &'static str,
        /// The rejected name.
        value: String,
        /// Why.
        source: NameError,
    },
    /// The cron expression or the time zone is not valid.
    #[error("{field}: {source}")]
    Schedule {
        /// Path of the field (`spec.schedule` or `spec.timeZone`).
        field: String,
        /// Why.
        source: ScheduleError,
    },
}

impl TaskError {
    /// Path of the field the problem concerns.
    pub fn field(&self) -> &str {
        match self {
            TaskError::Invalid { field, .. }
            | TaskError::Name { field, .. }
            | TaskError::Schedule { field, .. } => field,
        }
    }

    /// The problem without the field path.
    pub fn message(&self) -> String {
        match self {
            TaskError::Invalid { message, .. } => message.clone(),
            TaskError::Name {
                what,
                value,
                source,
                ..
            } => format!("invalid {what} {value:?}: {source}"),
            TaskError::Schedule { source, .. } => source.to_string(),
        }
    }
}

/// A Task: desired state written by users to `tasks/<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Task {
    /// Must be `drover.dev/v1`.
    pub api_version: String,
    /// Must be `Task`.
    pub kind: String,
    /// Name, namespace, labels, generation.
    pub metadata: ObjectMeta,
    /// What to run and how.
    pub spec: TaskSpec,
}

/// Identity of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// DNS-1123 label, unique within the namespace. Required.
    pub name: String,
    /// DNS-1123 label. Default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Free-form labels (Kubernetes label syntax). Default empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Assigned by `drover apply`: bumped each time the spec changes. Default 0 (never applied).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub generation: u64,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// Which runtime runs an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// Containers through the Docker engine (tasks with an `image`).
    Docker,
    /// Plain processes (tasks with only a `command`).
    Process,
    /// Simulated instances scripted by `spec.hollow`, for scale tests.
    Hollow,
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriverKind::Docker => "docker",
            DriverKind::Process => "process",
            DriverKind::Hollow => "hollow",
        })
    }
}

/// How a task runs over time, derived from its spec by [`TaskSpec::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Runs forever, restarted on exit (`restartPolicy: Always`).
    Service,
    /// Runs to completion once per apply.
    Job,
    /// Runs to completion on a cron `schedule` or `every` interval.
    Scheduled,
    /// Runs to completion on `drover trigger`.
    Triggered,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Service => "service",
            Mode::Job => "job",
            Mode::Scheduled => "scheduled",
            Mode::Triggered => "triggered",
        })
    }
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP (default).
    #[default]
    #[serde(rename = "TCP", alias = "tcp", alias = "Tcp")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP", alias = "udp", alias = "Udp")]
    Udp,
}

/// What happens when an instance's process exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Always restart (services). Default.
    #[default]
    Always,
    /// Restart on a non-zero exit (jobs that retry locally).
    OnFailure,
    /// Never restart.
    Never,
}

/// What a scheduled or triggered task does when a run is due while the previous one runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConcurrencyPolicy {
    /// Skip the new run. Default.
    #[default]
    Forbid,
    /// Run both.
    Allow,
    /// Cancel the running one and start the new one.
    Replace,
}

/// How a task is triggered other than by schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// Only by `drover trigger TASK`.
    Manual,
}

/// A container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    /// Port inside the container (or the port the process listens on). Non-zero.
    pub container_port: u16,
    /// Optional DNS-1123 name, unique within the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Default `TCP`.
    #[serde(default)]
    pub protocol: Protocol,
}

/// Resources requested by each instance; the scheduler packs nodes by these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Resources {
    /// Default `100m`.
    pub cpu: Cpu,
    /// Default `64Mi`.
    pub memory: Memory,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu: Cpu::millis(100),
            memory: Memory::mebibytes(64),
        }
    }
}

/// An HTTP GET probe: healthy on a 2xx or 3xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpProbe {
    /// Path, starting with `/`. Default `/`.
    #[serde(default = "default_probe_path")]
    pub path: String,
    /// Container port. Required, non-zero.
    pub port: u16,
}

fn default_probe_path() -> String {
    "/".to_string()
}

/// A TCP connect probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpProbe {
    /// Container port. Required, non-zero.
    pub port: u16,
}

/// A command run inside the instance: healthy on exit code 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecProbe {
    /// Program and arguments. Non-empty.
    pub command: Vec<String>,
}

/// A health check; exactly one of `http`, `tcp`, `exec` must be set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// HTTP GET probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    /// TCP connect probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    /// Exec probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    /// Seconds between probes. Default 10, at least 1.
    #[serde(default = "default_period")]
    pub period_seconds: u32,
    /// Seconds before a probe counts as failed. Default 1, at least 1.
    #[serde(default = "default_one")]
    pub timeout_seconds: u32,
    /// Consecutive failures before the instance is unhealthy. Default 3, at least 1.
    #[serde(default = "default_three")]
    pub failure_threshold: u32,
    /// Seconds after start before the first probe. Default 0.
    #[serde(default)]
    pub initial_delay_seconds: u32,
}

fn default_period() -> u32 {
    10
}
fn default_one() -> u32 {
    1
}
fn default_three() -> u32 {
    3
}

/// Script for the simulated `hollow` driver (Nomad's mock driver: `run_for`, `exit_code`,
/// `start_error`). Ignored by the other drivers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HollowScript {
    /// Seconds the simulated process runs before exiting; absent: runs until stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_seconds: Option<f64>,
    /// Exit code when it exits. Default 0.
    #[serde(default)]
    pub exit_code: i32,
    /// When set, starting fails with this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_error: Option<String>,
}

/// What to run and how. Every field has a default except that `image` or `command` is needed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TaskSpec {
    /// Container image: runs under the docker driver. Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Program and arguments. With an image, overrides its entrypoint; alone, runs as a plain
    /// process under the process driver. Default empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Working directory, absolute. Default: the image's, or the agent's for processes. The
    /// process driver refuses to start a process whose directory does not exist on the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Who the instance runs as: a user name or a numeric uid. Under the process driver the
    /// agent looks it up in the node's `/etc/passwd`; with an image it is the container's user
    /// (Docker's `--user`). Default: the agent's own user for processes (an agent running as
    /// root refuses that unless started with `--allow-root-tasks`), the image's for containers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The primary group: a group name or a numeric gid. Default: the user's primary group
    /// (from `/etc/passwd`); a numeric uid the node does not know needs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Environment variables. Default empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Ports; host ports are allocated by the agent and reported in the status. Default none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// Number of instances (for jobs: parallel instances per run). Default 1, at most 1000.
    pub replicas: u32,
    /// Requested resources. Default `100m` CPU, `64Mi` memory.
    pub resources: Resources,
    /// Only nodes with all these labels are eligible. Default empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// 0 to 100; higher is scheduled first. Default 50.
    pub priority: u8,
    /// May this task evict lower-priority instances to fit? Default false.
    pub preemption: bool,
    /// Default `Always` (a service).
    pub restart_policy: RestartPolicy,
    /// Local restarts before the instance counts as failed. Default 3.
    pub max_restarts: u32,
    /// Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Seconds between SIGTERM and SIGKILL. Default 30.
    pub termination_grace_period_seconds: u32,
    /// Deadline for one run (jobs only). Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// 5-field cron expression. Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Fixed interval between runs, e.g. `5m`. Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every: Option<HumanDuration>,
    /// IANA time zone of `schedule`. Default UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// What to do when a run is due while one runs. Default `Forbid`.
    pub concurrency_policy: ConcurrencyPolicy,
    /// A run that could not start within this many seconds of its due time is skipped.
    /// Default none (never skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starting_deadline_seconds: Option<u64>,
    /// `manual`: run only on `drover trigger`. Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// Tasks (same namespace) whose latest run must have succeeded first. Default none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Tasks (same namespace) that must not be running while this one runs. Default none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<String>,
    /// Times a failed run is retried (jobs only). Default 0.
    pub max_retries: u32,
    /// Circuit breaker: suspend the task after this many failed runs in a row, until
    /// `drover enable`. Default none (never suspended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_consecutive_failures: Option<u32>,
    /// Run records kept per task. Default 10, at most 1000.
    pub history_limit: u32,
    /// Script for the `hollow` driver. Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hollow: Option<HollowScript>,
    /// How a service's copies are replaced: rollouts, drains, failures (services only).
    /// Default: one extra copy at a time, none unavailable (see [`UpdateStrategy`]).
    #[serde(skip_serializing_if = "UpdateStrategy::is_default")]
    pub update: UpdateStrategy,
}

impl Default for TaskSpec {
    fn default() -> Self {
        Self {
            image: None,
            command: Vec::new(),
            working_dir: None,
            user: None,
            group: None,
            env: BTreeMap::new(),
            ports: Vec::new(),
            replicas: 1,
            resources: Resources::default(),
            node_selector: BTreeMap::new(),
            priority: 50,
            preemption: false,
            restart_policy: RestartPolicy::Always,
            max_restarts: 3,
            health_check: None,
            termination_grace_period_seconds: 30,
            timeout_seconds: None,
            schedule: None,
            every: None,
            time_zone: None,
            concurrency_policy: ConcurrencyPolicy::Forbid,
            starting_deadline_seconds: None,
            trigger: None,
            depends_on: Vec::new(),
            blocks: Vec::new(),
            max_retries: 0,
            max_consecutive_failures: None,
            history_limit: 10,
            hollow: None,
            update: UpdateStrategy::default(),
        }
    }
}

impl TaskSpec {
    /// Docker when an image is set, otherwise Process. (Hollow is chosen by the agent's
    /// `--driver hollow`, never by the spec.)
    pub fn driver(&self) -> DriverKind {
        if self.image.is_some() {
            DriverKind::Docker
        } else {
            DriverKind::Process
        }
    }

    /// Scheduled if `schedule` or `every` is set; Triggered if `trigger: manual`; Service if
    /// `restartPolicy: Always`; otherwise Job.
    pub fn mode(&self) -> Mode {
        if self.schedule.is_some() || self.every.is_some() {
            Mode::Scheduled
        } else if self.trigger == Some(Trigger::Manual) {
            Mode::Triggered
        } else if self.restart_policy == RestartPolicy::Always {
            Mode::Service
        } else {
            Mode::Job
        }
    }

    /// The parsed cron schedule, if `schedule` is set (and valid).
    pub fn cron_schedule(&self) -> Option<Result<schedule::Schedule, ScheduleError>> {
        self.schedule
            .as_deref()
            .map(|expr| schedule::Schedule::parse(expr, self.time_zone.as_deref()))
    }
}

/// The spec fields that do not change what a running copy is: a change to only these (or
/// to labels) starts no new revision and restarts nothing.
///
/// `replicas` (scaling), `priority` and `preemption` (the scheduler's order), `update` (how
/// copies are replaced), `historyLimit`, `maxConsecutiveFailures`, `dependsOn` and `blocks`
/// (when runs may start).
pub const NON_TEMPLATE_FIELDS: [&str; 8] = [
    "replicas",
    "priority",
    "preemption",
    "update",
    "historyLimit",
    "maxConsecutiveFailures",
    "dependsOn",
    "blocks",
];

impl TaskSpec {
    /// The copy template: this spec with every [`NON_TEMPLATE_FIELDS`] field at its default.
    /// Two specs with equal templates run identical copies.
    pub fn template(&self) -> TaskSpec {
        let d = TaskSpec::default();
        TaskSpec {
            replicas: d.replicas,
            priority: d.priority,
            preemption: d.preemption,
            update: d.update,
            history_limit: d.history_limit,
            max_consecutive_failures: d.max_consecutive_failures,
            depends_on: d.depends_on,
            blocks: d.blocks,
            ..self.clone()
        }
    }

    /// A stable digest of [`TaskSpec::template`] (FNV-1a over its JSON, 16 hex digits): a
    /// revision's identity. Fields left at their defaults are not written, so adding a field
    /// to a later Drover does not change the digest of specs that do not use it.
    pub fn template_hash(&self) -> String {
        let json = serde_json::to_vec(&self.template()).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in json {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

impl Task {
    /// A task with default spec and metadata, for tests and builders.
    pub fn new(namespace: &str, name: &str, spec: TaskSpec) -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            metadata: ObjectMeta {
                name: name.to_string(),
                namespace: namespace.to_string(),
                labels: BTreeMap::new(),
                generation: 0,
            },
            spec,
        }
    }

    /// Same desired state: equal in everything except `metadata.generation`. This is how
    /// `drover apply` tells "unchanged" (no write, generation kept) from "configured".
    pub fn spec_equal_ignoring_generation(&self, other: &Task) -> bool {
        self.api_version == other.api_version
            && self.kind == other.kind
            && self.metadata.name == other.metadata.name
            && self.metadata.namespace == other.metadata.namespace
            && self.metadata.labels == other.metadata.labels
            && self.spec == other.spec
    }

    /// Checks every semantic rule and returns all problems found (empty when valid).
    ///
    /// Rules (each error names the field path):
    ///
    /// - `apiVersion` is `drover.dev/v1` and `kind` is `Task`.
    /// - `metadata.name`, `metadata.namespace`, `spec.dependsOn[*]`, `spec.blocks[*]` and port
    ///   names are DNS-1123 labels; label and node-selector keys and values use Kubernetes
    ///   label syntax; `spec.env` keys are identifiers (`[A-Za-z_][A-Za-z0-9_]*`).
    /// - `spec.image` or `spec.command` is set; neither may be empty strings.
    /// - `spec.workingDir` is an absolute path.
    /// - `spec.user` and `spec.group` are numeric ids (32 bits) or account names
    ///   (`[A-Za-z_][A-Za-z0-9_.-]*`, optionally ending in `$`, at most 32 characters); with an
    ///   image, `spec.group` needs `spec.user`.
    /// - `spec.priority` ≤ 100, `spec.replicas` ≤ 1000, `spec.historyLimit` ≤ 1000.
    /// - Ports are non-zero; `(containerPort, protocol)` pairs and names are unique.
    /// - A health check has exactly one of `http`, `tcp`, `exec`; probe ports are non-zero;
    ///   the http path starts with `/`; the exec command is non-empty; `periodSeconds`,
    ///   `timeoutSeconds` and `failureThreshold` are at least 1.
    /// - `schedule`, `every` and `trigger` are mutually exclusive; the cron expression is
    ///   valid (5 fields); `timeZone` is a known IANA zone and needs `schedule`; `every` is at
    ///   least 1s.
    /// - A service (`restartPolicy: Always`) runs forever, so it may not have `schedule`,
    ///   `every`, `trigger`, `timeoutSeconds`, `maxRetries`, `startingDeadlineSeconds` or a
    ///   non-default `concurrencyPolicy` (use `OnFailure` or `Never` for work that finishes).
    /// - `startingDeadlineSeconds` and a non-default `concurrencyPolicy` need `schedule`,
    ///   `every` or `trigger`.
    /// - Work that finishes (not a service) needs at least 1 replica.
    /// - A service's `update`: `maxSurge` and `maxUnavailable` are not both 0, percentages
    ///   are at most 100%, `healthyDeadlineSeconds` exceeds `minHealthySeconds`, and
    ///   `progressDeadlineSeconds` is at least `healthyDeadlineSeconds`.
    /// - `timeoutSeconds`, `startingDeadlineSeconds` and `maxConsecutiveFailures` are at
    ///   least 1 when set.
    /// - A task may not depend on or block itself, nor list the same task twice.
    /// - `spec.hollow.runSeconds` is a finite number ≥ 0.
    pub fn validate(&self) -> Vec<TaskError> {
        validate::validate(self)
    }
}

mod update;
mod validate;

pub use update::{Budget, ResolvedBudget, UpdateStrategy};

#[cfg(test)]
mod tests;
