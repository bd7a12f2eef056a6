//! The client verbs' command line: global options and the verbs, as clap derive types. Each
//! verb's behaviour lives in its own module under `cmd/`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use drover_api::duration::HumanDuration;

use crate::agent_access::AgentAccess;
use crate::etcd_access::EtcdAccess;
use crate::output::Format;

/// Options every verb shares.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// etcd endpoints, a comma-separated list for a cluster [default: http://127.0.0.1:2379]
    // Empty when neither the flag nor `DROVER_ETCD` was given: read it through
    // `Global::endpoints`, which supplies the default, so that a verb can tell an explicit
    // choice from the default (`bench scale` starts an etcd of its own unless told one).
    // (A plain comment: clap turns doc comments into `--help` text.)
    #[arg(long, env = "DROVER_ETCD", value_delimiter = ',', global = true)]
    pub etcd: Vec<String>,
    /// Key prefix under which Drover keeps all its state in etcd.
    #[arg(long, env = "DROVER_PREFIX", default_value = "/drover", global = true)]
    pub prefix: String,
    /// Append one JSON line per etcd write this process makes (revision, operation) to this
    /// file: joined with a watch, it tells who wrote each key.
    #[arg(long, env = "DROVER_WRITE_LOG", value_name = "FILE", global = true)]
    pub write_log: Option<PathBuf>,
    /// TLS and the etcd user (`--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`,
    /// `--etcd-user`, `--etcd-password-file`).
    #[command(flatten)]
    pub access: EtcdAccess,
}

/// The etcd the verbs talk to when neither `--etcd` nor `DROVER_ETCD` names one.
pub const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";

impl Global {
    /// The etcd endpoints to use: those given, else [`DEFAULT_ETCD`].
    pub fn endpoints(&self) -> Vec<String> {
        if self.etcd_given() {
            self.etcd.clone()
        } else {
            vec![DEFAULT_ETCD.to_string()]
        }
    }

    /// Whether `--etcd` or `DROVER_ETCD` named the endpoints (rather than the default).
    pub fn etcd_given(&self) -> bool {
        self.etcd.iter().any(|e| !e.trim().is_empty())
    }
}

/// The client verbs: everything but the daemons (`controller`, `agent`, `up`), which the
/// binary adds.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update tasks from manifests (all are validated before anything is written).
    Apply(ApplyArgs),
    /// List tasks, instances or nodes.
    Get(GetArgs),
    /// Show one task, node or instance in detail, with recent events.
    Describe(DescribeArgs),
    /// Show how the stored tasks differ from the manifests (exit 0: none, 1: some, >1: error).
    Diff(DiffArgs),
    /// Delete tasks by name or by manifest.
    Delete(DeleteArgs),
    /// Measure Drover's etcd paths against raw etcd baselines on the same etcd.
    Bench(BenchArgs),
    /// Print an instance's output, through the agent that runs it.
    Logs(LogsArgs),
    /// Mark a node unschedulable.
    Cordon(NodeArgs),
    /// Mark a node schedulable again (also ends a drain).
    Uncordon(NodeArgs),
    /// Move every instance off a node (replacement first), then leave it cordoned.
    Drain(DrainArgs),
    /// Start one run of a job, scheduled or manual task now.
    Trigger(TaskArgs),
    /// Resume a task its circuit breaker suspended (resets the failure count).
    Enable(TaskArgs),
    /// Re-queue a dead-lettered instance: a job runs again, a service refills its slot.
    Retry(RetryArgs),
    /// Watch and steer a service's rollout: status, history, undo, pause, resume, promote.
    Rollout(RolloutArgs),
    /// Cluster administration: etcd users and roles.
    Admin(AdminArgs),
}

/// `drover admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// What to do.
    #[command(subcommand)]
    pub verb: AdminVerb,
}

/// The admin verbs.
#[derive(Debug, Subcommand)]
pub enum AdminVerb {
    /// Create etcd roles and users for the controllers, CLI users and each node's agent (each
    /// node's agent may write only its own node key and statuses), then turn etcd's
    /// authentication on. Repeatable: run it again with more `--node`s to add nodes (as root,
    /// with `--etcd-user root --etcd-password-file ...`, once auth is on).
    Bootstrap(BootstrapArgs),
}

/// `drover admin bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// A node to make an agent user and role for (`drover-node-<NODE>`); repeat it.
    #[arg(long = "node", value_name = "NODE")]
    pub nodes: Vec<String>,
    /// Where the passwords of the users created now are written, one `<user>.password` file
    /// each (mode 0600); created if missing.
    #[arg(long, value_name = "DIR", default_value = "drover-credentials")]
    pub credentials_dir: PathBuf,
    /// The password of etcd's `root` user, read from this file, when root does not exist yet
    /// [default: a new one, written to `<credentials-dir>/root.password`].
    #[arg(long, value_name = "FILE")]
    pub root_password_file: Option<PathBuf>,
}

/// A task named on the command line.
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// The task.
    pub name: String,
    /// Its namespace.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}

/// `drover rollout`.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// What to do.
    #[command(subcommand)]
    pub verb: RolloutVerb,
}

/// The rollout verbs.
#[derive(Debug, Subcommand)]
pub enum RolloutVerb {
    /// Wait for the rollout of the task's current spec: exit 0 once every copy runs it and is
    /// available, 1 when it fails, is reverted or is paused (naming why).
    Status(RolloutStatusArgs),
    /// List the task's revisions (the copy templates it has rolled out).
    History(RolloutHistoryArgs),
    /// Apply an earlier revision's template to the task (the previous one by default).
    Undo(RolloutUndoArgs),
    /// Replace no more copies for the rollout until resumed.
    Pause(TaskArgs),
    /// Go on with a paused rollout.
    Resume(TaskArgs),
    /// The canaries are good: roll out the rest.
    Promote(TaskArgs),
}

/// `drover rollout status`.
#[derive(Debug, Args)]
pub struct RolloutStatusArgs {
    /// The service.
    #[command(flatten)]
    pub task: TaskArgs,
    /// Wait until the rollout ends (`--watch=false`: print where it stands and exit 0).
    #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set)]
    pub watch: bool,
    /// Give up (exit 1) after this long, e.g. `5m` [default: wait as long as it takes].
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<HumanDuration>,
}

/// `drover rollout history`.
#[derive(Debug, Args)]
pub struct RolloutHistoryArgs {
    /// The service.
    #[command(flatten)]
    pub task: TaskArgs,
    /// Show this revision's whole record (YAML).
    #[arg(long)]
    pub revision: Option<u64>,
    /// Output format: table, json or yaml.
    #[arg(short, long, default_value = "table", value_parser = Format::parse)]
    pub output: Format,
}

/// `drover rollout undo`.
#[derive(Debug, Args)]
pub struct RolloutUndoArgs {
    /// The service.
    #[command(flatten)]
    pub task: TaskArgs,
    /// The revision to go back to [default: the last stable one, else the one before].
    #[arg(long)]
    pub to_revision: Option<u64>,
}

/// `drover retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The dead-lettered instance, as `drover get deadletters` names it.
    pub instance: String,
}

/// `drover logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The instance (as `drover get instances` names it), or `task/NAME` for the instances
    /// of one of a job's runs (see --run).
    pub instance: String,
    /// Keep printing new lines.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines (of each instance, with task/NAME).
    #[arg(long)]
    pub tail: Option<u32>,
    /// The output of the instance's previous container or process: the one before its last
    /// restart (kept by the agent after it was removed).
    #[arg(long)]
    pub previous: bool,
    /// With task/NAME: which run (as `drover get runs` numbers them). Default: the latest.
    #[arg(long, value_name = "N")]
    pub run: Option<u64>,
    /// The namespace of task/NAME.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Only lines written since then: a duration ago (`10m`, `1h30m`) or a time (RFC 3339,
    /// `2024-05-01T10:00:00Z`). Needs line times, which the docker driver records and the
    /// process driver does not.
    #[arg(long, value_name = "DURATION|RFC3339")]
    pub since: Option<String>,
    /// Start each line with the time it was written (RFC 3339, UTC), where it is known.
    #[arg(long)]
    pub timestamps: bool,
    /// TLS to agents that serve it (`--agent-cafile`, `--agent-certfile`, `--agent-keyfile`).
    #[command(flatten)]
    pub agent: AgentAccess,
}

/// `drover cordon` / `uncordon`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node.
    pub node: String,
}

/// `drover drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node.
    pub node: String,
    /// Give up waiting after this long (the drain itself goes on).
    #[arg(long, default_value = "5m")]
    pub timeout: HumanDuration,
}

/// `drover bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, default_value = "store")]
    pub what: BenchKind,
    /// store: how many values to write.
    #[arg(long, default_value_t = 5000)]
    pub count: usize,
    /// failover: how many times to SIGKILL the leader.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// failover, scale: the controllers' election lease TTL [default: failover 2s, scale 5s].
    #[arg(long)]
    pub lease_ttl: Option<HumanDuration>,
    /// scale: how many hollow nodes one `drover agent --hollow-nodes` process simulates.
    #[arg(long, default_value_t = 300)]
    pub nodes: usize,
    /// scale: how many instances to place and run on them.
    #[arg(long, default_value_t = 3000)]
    pub instances: usize,
    /// scale: replicas per applied task (the instances are spread over ceil(M / this) tasks;
    /// at most 1000, the limit of a task).
    #[arg(long, default_value_t = 1000)]
    pub replicas_per_task: usize,
    /// scale: once all instances run, SIGKILL the leader and measure the standby's takeover
    /// (a second controller replica runs as standby from the start).
    #[arg(long)]
    pub failover: bool,
    /// scale: serve controller c0's web view (`--web-addr`) and, once all instances run,
    /// measure its first page load and c0's memory with the view open.
    #[arg(long)]
    pub web: bool,
    /// scale: the controllers' `--commit-lanes` (transactions of one plan in flight)
    /// [default: the controller's, 8].
    #[arg(long)]
    pub commit_lanes: Option<usize>,
    /// scale: bound on the whole run; on expiry it reports how far it got and fails.
    #[arg(long, default_value = "15m")]
    pub timeout: HumanDuration,
    /// scale: keep the controllers' and the agent's logs after the run (their directory is
    /// printed) instead of removing them.
    #[arg(long)]
    pub keep_logs: bool,
}

/// The benchmarks `drover bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchKind {
    /// Bindings, watch and list against raw pipelined puts.
    Store,
    /// Leader takeover time after SIGKILL, against the election lease TTL.
    Failover,
    /// Hollow nodes and a controller on one etcd: time to place and run M instances on N
    /// nodes against the raw put rate, leader terms, peak memory, and optionally a takeover.
    Scale,
}

/// `drover apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A manifest file, a directory of them, or `-` for standard input (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Validate and show what would change, but write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What `get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Resource {
    /// Desired tasks.
    #[value(alias = "task")]
    Tasks,
    /// Instances: assignments and their status.
    #[value(alias = "instance", alias = "inst")]
    Instances,
    /// Worker nodes.
    #[value(alias = "node", alias = "no")]
    Nodes,
    /// Controller replicas, and which one leads.
    #[value(alias = "controller")]
    Controllers,
    /// The run history of one task (`get runs TASK`).
    #[value(alias = "run")]
    Runs,
    /// Instances that exhausted their retries.
    #[value(alias = "deadletter", alias = "dl")]
    Deadletters,
    /// Recent events (`--for task/NAME|node/NAME|instance/ID`), oldest first.
    #[value(alias = "event", alias = "ev")]
    Events,
}

/// `drover get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to list.
    pub resource: Resource,
    /// Only this object.
    pub name: Option<String>,
    /// Namespace (tasks and instances).
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format: table, wide, json, yaml, name or jsonpath=TEMPLATE (kubectl's subset:
    /// `{.items[*].metadata.name}`, `{range .items[*]}...{end}`, `[?(@.status.phase=="Running")]`).
    #[arg(short, long, default_value = "table", value_parser = Format::parse)]
    pub output: Format,
    /// After listing, print every change as it happens.
    #[arg(short, long)]
    pub watch: bool,
    /// Only objects whose labels match (kubectl syntax: `k=v`, `k!=v`, `k`, `!k`,
    /// `k in (a,b)`, `k notin (a)`, comma-separated; instances carry their task's labels).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Add a LABELS column to the table.
    #[arg(long)]
    pub show_labels: bool,
    /// Events: only those about this object (`task/NAME` also shows its instances').
    #[arg(long = "for", value_name = "KIND/NAME")]
    pub for_object: Option<String>,
}

impl GetArgs {
    /// A plain listing of `resource` in the default namespace, as a table.
    pub fn new(resource: Resource) -> Self {
        GetArgs {
            resource,
            name: None,
            namespace: "default".to_string(),
            all_namespaces: false,
            output: Format::Table,
            watch: false,
            selector: None,
            show_labels: false,
            for_object: None,
        }
    }
}

/// `drover describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The kind of object.
    pub kind: DescribeKind,
    /// Its name (an instance: its id, as `get instances` shows it).
    pub name: String,
    /// Its namespace.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}

/// What `describe` can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DescribeKind {
    /// A task.
    #[value(alias = "tasks")]
    Task,
    /// A node: its registration, record, capacity, instances and events.
    #[value(alias = "nodes", alias = "no")]
    Node,
    /// An instance: its assignment, the agent's status and events.
    #[value(alias = "instances", alias = "inst")]
    Instance,
}

/// `drover diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// A manifest file, a directory of them, or `-` for standard input (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}

/// `drover delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// `task NAME`, or nothing with `-f`.
    #[arg(num_args = 0..=2, value_names = ["KIND", "NAME"])]
    pub target: Vec<String>,
    /// Delete the tasks these manifests name.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Namespace of a task named on the command line.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}
