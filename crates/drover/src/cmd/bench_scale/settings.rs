//! The settings of `bench scale`: its command line checked, the task manifests it applies, the
//! assignment values its baseline puts, and the line that sums them up above the table.

use std::time::Duration;

use chrono::Utc;
use drover_api::duration::HumanDuration;
use drover_api::instance::Instance;
use drover_api::names::InstanceId;
use drover_api::task::{Task, MAX_REPLICAS};

use super::own_etcd::OwnEtcd;
use super::report::count;
use crate::cli::BenchArgs;
use crate::cmd::apply;
use crate::exit::{CliError, CliResult};
use crate::input::Source;

/// The controllers' election lease TTL unless `--lease-ttl` says otherwise.
const DEFAULT_LEASE_TTL: HumanDuration = HumanDuration::from_secs(5);
/// The most values the baseline puts per run.
const BASELINE_MAX: usize = 20_000;
/// What every instance asks for: a hollow node offers 4 CPUs and 8 GiB, so up to 400 fit.
const CPU: &str = "10m";
const MEMORY: &str = "16Mi";
/// Instances one hollow node can hold at [`CPU`] each (4 CPUs).
const PER_NODE: usize = 400;
/// The command line, checked, with the manifests it applies.
pub struct Settings {
    /// `--nodes`.
    pub nodes: usize,
    /// `--instances`.
    pub instances: usize,
    /// `--replicas-per-task`.
    pub per_task: usize,
    /// `--lease-ttl`, defaulted.
    pub lease_ttl: HumanDuration,
    /// `--failover`.
    pub failover: bool,
    /// `--commit-lanes`, if given.
    pub commit_lanes: Option<usize>,
    /// `--web`.
    pub web: bool,
    /// `--timeout`.
    pub timeout: Duration,
    /// Keep the fleet's logs after the run.
    pub keep_logs: bool,
    /// The manifests, as `drover apply` reads them.
    pub sources: Vec<Source>,
    /// The tasks they hold, validated.
    pub tasks: Vec<Task>,
}

impl Settings {
    /// Checks the flags and builds the manifests; nothing is started yet.
    pub fn new(args: &BenchArgs) -> CliResult<Settings> {
        let (nodes, instances, per_task) = (args.nodes, args.instances, args.replicas_per_task);
        if nodes == 0 || instances == 0 {
            return Err(CliError::usage(
                "--nodes and --instances must be at least 1",
            ));
        }
        if per_task == 0 || per_task > MAX_REPLICAS as usize {
            return Err(CliError::usage(format!(
                "--replicas-per-task must be 1 to {MAX_REPLICAS} (a task's limit)"
            )));
        }
        if instances > nodes.saturating_mul(PER_NODE) {
            return Err(CliError::usage(format!(
                "{instances} instances of {CPU} CPU do not fit on {nodes} hollow nodes of 4 CPUs \
                 (at most {PER_NODE} per node)"
            )));
        }
        let docs: Vec<String> = (0..instances.div_ceil(per_task))
            .map(|i| {
                let replicas = per_task.min(instances - i * per_task);
                format!(
                    "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: scale-{i}\nspec:\n  \
                     command: [simulated]\n  replicas: {replicas}\n  \
                     resources: {{cpu: {CPU}, memory: {MEMORY}}}\n"
                )
            })
            .collect();
        let sources = vec![("<bench scale tasks>".to_string(), docs.join("---\n"))];
        let tasks = apply::parse_checked(&sources)?;
        Ok(Settings {
            nodes,
            instances,
            per_task,
            lease_ttl: args.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
            failover: args.failover,
            commit_lanes: args.commit_lanes,
            web: args.web,
            timeout: args.timeout.as_std(),
            keep_logs: args.keep_logs,
            sources,
            tasks,
        })
    }
}

/// The line above the table: sizes, which etcd, which build.
pub fn title(settings: &Settings, etcd: Option<&OwnEtcd>, endpoints: &[String]) -> String {
    let etcd = match etcd {
        Some(own) => format!(
            "its own etcd (single member, data on {}, quota 8 GiB)",
            own.dir()
                .parent()
                .map_or("?".into(), |p| p.display().to_string())
        ),
        None => format!("the etcd at {}", endpoints.join(",")),
    };
    format!(
        "`drover bench scale`: {} hollow nodes, {} instances in {} tasks of up to {} \
         ({CPU} CPU, {MEMORY} each), election lease TTL {}{}{}, on {etcd}; {} build",
        count(settings.nodes as u64),
        count(settings.instances as u64),
        settings.tasks.len(),
        count(settings.per_task as u64),
        settings.lease_ttl,
        settings
            .commit_lanes
            .map_or(String::new(), |n| format!(", {n} commit lanes")),
        if settings.failover {
            ", with a standby and a failover"
        } else {
            ""
        },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )
}

/// K = min(M, 20,000) assignments as the controller would write them for the applied tasks,
/// encoded once.
pub fn baseline_values(settings: &Settings) -> CliResult<Vec<Vec<u8>>> {
    let task = settings
        .tasks
        .first()
        .ok_or_else(|| CliError::failure("no task to take the assignment size from"))?;
    (0..settings.instances.min(BASELINE_MAX))
        .map(|i| {
            let slot = u32::try_from(i % settings.per_task).unwrap_or(u32::MAX);
            let id = InstanceId::service(&task.metadata.namespace, &task.metadata.name, slot)
                .map_err(|error| CliError::failure(error.to_string()))?;
            let instance = Instance {
                id,
                namespace: task.metadata.namespace.clone(),
                task: task.metadata.name.clone(),
                slot,
                run: None,
                node: format!("hollow-{}", i % settings.nodes),
                generation: 1,
                revision: 0,
                attempt: 1,
                spec: task.spec.clone(),
                assigned_at: Utc::now(),
                stop: None,
            };
            serde_json::to_vec(&instance)
                .map_err(|error| CliError::failure(format!("encoding an assignment: {error}")))
        })
        .collect()
}
