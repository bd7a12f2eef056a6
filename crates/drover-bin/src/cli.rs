//! The binary's command line: the client verbs of `drover-cli` plus the daemons (`up`,
//! `controller`, `agent`), as clap derive types.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use drover_agent::advertise::AdvertiseAddress;
use drover_agent::config::DriverChoice;
use drover_api::duration::HumanDuration;
use drover_api::quantity::{Cpu, Memory};
use drover_cli::cli::{Command, Global};

/// Drover: a declarative orchestrator for containerized tasks, with etcd as its only state.
#[derive(Debug, Parser)]
#[command(name = "drover", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// How stderr log records look: text (for people) or json (one object per line, with the
    /// fields of the span it was logged in and of the spans around it, for log pipelines).
    #[arg(
        long,
        env = "DROVER_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Verb,
}

/// The verbs: the client verbs of `drover-cli`, and the daemons.
#[derive(Debug, Subcommand)]
pub enum Verb {
    #[command(flatten)]
    Client(Command),
    /// Run a whole local cluster: etcd, a controller and an agent, with the example applied.
    Up(UpArgs),
    /// Run a controller replica (leader election, scheduling, node lifecycle).
    Controller(ControllerArgs),
    /// Run a node agent (heartbeat, convergence of assigned instances, status).
    // Boxed: the agent has by far the most flags.
    Agent(Box<AgentArgs>),
    /// Print a shell completion script for drover (every verb, daemons included) to stdout.
    Completion(CompletionArgs),
    /// Print drover's man page to stdout, or write one page per verb into a directory.
    Man(ManArgs),
}

/// `--log-format`: how log records are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per record.
    Text,
    /// One JSON object per line: timestamp, level, target, fields, span and spans.
    Json,
}

/// `drover completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The shells `drover completion` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// Bash (source it, or put it in /etc/bash_completion.d/drover).
    Bash,
    /// Zsh (put it as `_drover` in a directory on $fpath).
    Zsh,
    /// Fish (put it in ~/.config/fish/completions/drover.fish).
    Fish,
}

/// `drover man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `drover.1` and one page per verb (`drover-apply.1`, `drover-rollout-status.1`,
    /// ...) here, creating the directory, instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// `drover controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// This replica's id (default: host name and pid).
    #[arg(long)]
    pub id: Option<String>,
    /// TTL of the election lease: a crashed leader is replaced about this long after it died.
    #[arg(long, default_value = "5s")]
    pub lease_ttl: HumanDuration,
    /// Reschedules of a failed instance before it is dead-lettered.
    #[arg(long, default_value_t = 3)]
    pub reschedule_limit: u32,
    /// Transactions of one plan in flight at once (each a fenced batch of up to etcd's
    /// operation limit); every step of one task stays in one lane.
    #[arg(long, default_value_t = 8)]
    pub commit_lanes: usize,
    /// Serve /metrics, /healthz and /readyz here (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve the read-only live web view here (e.g. 127.0.0.1:7480): nodes, tasks, instances,
    /// runs, dead letters and events from this replica's mirror, updated over Server-Sent
    /// Events. Off unless given.
    #[arg(long)]
    pub web_addr: Option<SocketAddr>,
}

/// `drover agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The node name (a DNS-1123 label); with --hollow-nodes, the prefix of the node names.
    #[arg(long)]
    pub node: Option<String>,
    /// Which driver runs instances: auto (docker where the daemon answers, else process),
    /// docker, process or hollow.
    #[arg(long, value_enum, default_value = "auto")]
    pub driver: DriverFlag,
    /// A node label for nodeSelector matching (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// TTL of the node lease; keep-alives go every TTL/6.
    #[arg(long, default_value = "10s")]
    pub lease_ttl: HumanDuration,
    /// Where the gRPC service (Ping, Logs) listens (default 127.0.0.1:0, a free port).
    #[arg(long)]
    pub address: Option<SocketAddr>,
    /// The gRPC address the node key publishes, which `drover logs` dials: HOST (with the
    /// bound port) or HOST:PORT, never 0.0.0.0 or ::. Default: the bound address; required
    /// when --address binds every interface.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub advertise_address: Option<AdvertiseAddress>,
    /// PEM certificate (chain first) the gRPC service (Ping, Logs) serves TLS with; it must
    /// name the advertised host. Needs --tls-key-file and --client-ca-file.
    #[arg(long, env = "DROVER_TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "DROVER_TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA bundle that client certificates must chain to: with TLS on, the agent refuses
    /// clients without one.
    #[arg(long, env = "DROVER_CLIENT_CA_FILE", value_name = "FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// Let an agent running as root run process tasks as root (tasks that set no spec.user, or
    /// name root). Without it they fail with RunAsRootRefused.
    #[arg(long)]
    pub allow_root_tasks: bool,
    /// CPU the scheduler may place here (default: all cores).
    #[arg(long)]
    pub cpu: Option<Cpu>,
    /// Memory the scheduler may place here (default: MemTotal).
    #[arg(long)]
    pub memory: Option<Memory>,
    /// Where the agent keeps pid files, logs and local records (default .drover/agent/NODE).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// IP that docker publishes ports on (default 0.0.0.0).
    #[arg(long)]
    pub publish_ip: Option<String>,
    /// On SIGTERM leave instances running and the lease alive, for an agent upgrade.
    #[arg(long)]
    pub keep_running: bool,
    /// Test only: keep copies running when the node fences itself (the fault suite shows its
    /// checker then finds overlap). Breaks the one-copy promise; never use it in production.
    #[arg(long, hide = true)]
    pub unsafe_keep_copies_when_fenced: bool,
    /// Simulate this many nodes with the hollow driver in one process (scale tests).
    #[arg(long)]
    pub hollow_nodes: Option<usize>,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Outputs of removed runs kept per instance (for `drover logs --previous`).
    #[arg(long, default_value_t = 3)]
    pub logs_keep_per_instance: usize,
    /// Bytes of one removed run's output kept (its last lines).
    #[arg(long, default_value = "4Mi")]
    pub logs_max_bytes: Memory,
    /// Finished instances (no longer assigned here) whose output is kept (for `drover logs
    /// --run`).
    #[arg(long, default_value_t = 100)]
    pub logs_keep_finished: usize,
    /// A finished instance's output is deleted this long after it ended.
    #[arg(long, default_value = "24h")]
    pub logs_max_age: HumanDuration,
}

/// `--driver`: which driver an agent runs instances with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverFlag {
    /// Docker where the daemon answers, plus processes for command-only tasks.
    Auto,
    /// Docker (fails at start without a daemon), plus processes for command-only tasks.
    Docker,
    /// Host processes only.
    Process,
    /// Simulated instances (scale tests).
    Hollow,
}

impl From<DriverFlag> for DriverChoice {
    fn from(flag: DriverFlag) -> Self {
        match flag {
            DriverFlag::Auto => DriverChoice::Auto,
            DriverFlag::Docker => DriverChoice::Docker,
            DriverFlag::Process => DriverChoice::Process,
            DriverFlag::Hollow => DriverChoice::Hollow,
        }
    }
}

/// `drover up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Manifest to apply once the cluster runs. Default: the echo example built into the
    /// binary (`manifests/examples/echo.yaml`), so `up` works from any directory.
    #[arg(short = 'f', long = "filename")]
    pub file: Option<PathBuf>,
    /// Where the local etcd keeps its data.
    #[arg(long, default_value = ".drover")]
    pub state_dir: PathBuf,
    /// Stop everything after showing the result instead of running until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// Serve the local cluster's /metrics, /healthz and /readyz here (controller and agent in
    /// one registry); port 0 picks a free one. The address served is printed.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Where the controller serves the live web view (its URL is printed).
    #[arg(long, default_value = "127.0.0.1:7480", conflicts_with = "no_web")]
    pub web_addr: SocketAddr,
    /// Do not serve the web view.
    #[arg(long)]
    pub no_web: bool,
}
