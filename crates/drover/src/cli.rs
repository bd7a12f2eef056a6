//! The command line: global options and the verbs, as clap derive types. Each verb's behaviour
//! lives in its own module under `cmd/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::output::Format;

/// Drover: a declarative orchestrator for containerized tasks, with etcd as its only state.
#[derive(Debug, Parser)]
#[command(name = "drover", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every verb shares.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// etcd endpoints, a comma-separated list for a cluster.
    #[arg(
        long,
        env = "DROVER_ETCD",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    pub etcd: Vec<String>,
    /// Key prefix under which Drover keeps all its state in etcd.
    #[arg(long, env = "DROVER_PREFIX", default_value = "/drover", global = true)]
    pub prefix: String,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update tasks from manifests (all are validated before anything is written).
    Apply(ApplyArgs),
    /// List tasks, instances or nodes.
    Get(GetArgs),
    /// Show one task in detail: spec, instances, state and recent events.
    Describe(DescribeArgs),
    /// Delete tasks by name or by manifest.
    Delete(DeleteArgs),
    /// Run a whole local cluster: etcd, a controller and an agent, with the example applied.
    Up(UpArgs),
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
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
    /// After listing, print every change as it happens.
    #[arg(short, long)]
    pub watch: bool,
}

/// `drover describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The kind of object (only `task` for now).
    pub kind: DescribeKind,
    /// Its name.
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

/// `drover up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Manifest to apply once the cluster runs.
    #[arg(short = 'f', long = "filename", default_value = "manifests/examples/echo.yaml")]
    pub file: PathBuf,
    /// Where the local etcd keeps its data.
    #[arg(long, default_value = ".drover")]
    pub state_dir: PathBuf,
    /// Stop everything after showing the result instead of running until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}
