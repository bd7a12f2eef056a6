//! Table rows for `get`: one function per resource, shared by the first listing and by the
//! lines `get -w` prints for each change.

use chrono::{DateTime, Utc};
use drover_api::records::ControllerInfo;
use drover_api::task::Task;

use super::snapshot::{ClusterView, InstanceView, NodeView};
use crate::cli::Resource;
use crate::output::{age, pairs, Table};

/// The empty table (headers only) for a resource.
pub fn table_for(resource: Resource, columns: Columns) -> Table {
    match resource {
        Resource::Tasks => task_table(columns),
        Resource::Instances => instance_table(columns),
        Resource::Nodes => node_table(columns),
        Resource::Controllers => controller_table(columns),
        Resource::Runs => super::get_jobs::run_table(),
        Resource::Deadletters => super::get_jobs::deadletter_table(),
        Resource::Events => super::get_events::event_table(columns),
    }
}

/// The table for controller replicas.
pub fn controller_table(_columns: Columns) -> Table {
    Table::new(vec!["ID", "ROLE", "SINCE", "VERSION"])
}

/// One controller replica's row.
pub fn controller_row(info: &ControllerInfo, now: DateTime<Utc>) -> Vec<String> {
    vec![
        info.id.clone(),
        if info.leader {
            "leader".into()
        } else {
            "standby".into()
        },
        age(Some(info.since), now),
        info.version.clone(),
    ]
}

/// Column choices for one listing.
#[derive(Debug, Clone, Copy)]
pub struct Columns {
    /// Show the NAMESPACE column (`-A`).
    pub namespace: bool,
    /// Show the extra columns (`-o wide`).
    pub wide: bool,
}

/// The table for tasks, with its headers.
pub fn task_table(columns: Columns) -> Table {
    let mut headers = Vec::new();
    if columns.namespace {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME",
        "MODE",
        "DESIRED",
        "RUNNING",
        "LAST RUN",
        "NEXT RUN",
        "FAILURES",
        "ENABLED",
        "GENERATION",
    ]);
    if columns.wide {
        headers.extend(["PRIORITY", "IMAGE/COMMAND", "SELECTOR"]);
    }
    Table::new(headers)
}

/// One task's row.
pub fn task_row(task: &Task, snapshot: &ClusterView, columns: Columns) -> Vec<String> {
    let meta = &task.metadata;
    let running = snapshot
        .instances_of(&meta.namespace, &meta.name)
        .filter(|view| view.is_running())
        .count();
    let mut row = Vec::new();
    if columns.namespace {
        row.push(meta.namespace.clone());
    }
    let state = snapshot
        .states
        .get(&(meta.namespace.clone(), meta.name.clone()));
    let last_run = state
        .and_then(|s| {
            Some(format!(
                "#{} {}",
                s.last_run?,
                s.last_outcome
                    .map_or_else(|| "Running".to_owned(), |o| o.to_string())
            ))
        })
        .unwrap_or_else(|| "-".into());
    let next_run = state
        .and_then(|s| s.next_run_at)
        .map(|at| until(at, Utc::now()))
        .unwrap_or_else(|| "-".into());
    let enabled = if state.is_some_and(|s| s.suspended) {
        "no (suspended)"
    } else {
        "yes"
    };
    row.extend([
        meta.name.clone(),
        task.spec.mode().to_string(),
        task.spec.replicas.to_string(),
        running.to_string(),
        last_run,
        next_run,
        state.map_or(0, |s| s.consecutive_failures).to_string(),
        enabled.to_string(),
        meta.generation.to_string(),
    ]);
    if columns.wide {
        let what = match &task.spec.image {
            Some(image) => image.clone(),
            None => task.spec.command.join(" "),
        };
        row.extend([
            task.spec.priority.to_string(),
            what,
            pairs(&task.spec.node_selector),
        ]);
    }
    row
}

/// How far ahead `at` is ("in 42s"), or "due" once passed.
fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if at <= now {
        return "due".to_string();
    }
    format!("in {}", age(Some(now), at))
}

/// The table for instances, with its headers.
pub fn instance_table(columns: Columns) -> Table {
    let mut headers = Vec::new();
    if columns.namespace {
        headers.push("NAMESPACE");
    }
    headers.extend(["NAME", "TASK", "NODE", "STATUS", "RESTARTS", "PORTS", "AGE"]);
    if columns.wide {
        headers.extend(["GEN", "ATTEMPT", "HEALTH", "CONTAINER", "MESSAGE"]);
    }
    Table::new(headers)
}

/// One instance's row.
pub fn instance_row(view: &InstanceView, columns: Columns, now: DateTime<Utc>) -> Vec<String> {
    let id = view.id.to_string();
    let (namespace, task) = view.task();
    let node = view
        .assignment
        .as_ref()
        .map(|a| a.node.clone())
        .or_else(|| view.status.as_ref().map(|s| s.node.clone()))
        .unwrap_or_default();
    let status = view.status.as_ref();
    let ports = status
        .map(|s| {
            s.ports
                .iter()
                .map(|p| format!("{}->{}", p.host_port, p.container_port))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let started = status
        .and_then(|s| s.started_at)
        .or_else(|| view.assignment.as_ref().map(|a| a.assigned_at));
    let mut row = Vec::new();
    if columns.namespace {
        row.push(namespace.to_string());
    }
    row.extend([
        id,
        task.to_string(),
        node,
        view.display_status(),
        status.map(|s| s.restart_count).unwrap_or(0).to_string(),
        if ports.is_empty() {
            "<none>".into()
        } else {
            ports
        },
        age(started, now),
    ]);
    if columns.wide {
        let assignment = view.assignment.as_ref();
        row.extend([
            assignment
                .map(|a| a.generation.to_string())
                .unwrap_or_default(),
            assignment
                .map(|a| a.attempt.to_string())
                .unwrap_or_default(),
            status
                .map(|s| format!("{:?}", s.health))
                .unwrap_or_default(),
            status
                .and_then(|s| s.container_id.clone())
                .map(|id| id.chars().take(12).collect())
                .unwrap_or_default(),
            status.and_then(|s| s.message.clone()).unwrap_or_default(),
        ]);
    }
    row
}

/// The table for nodes, with its headers.
pub fn node_table(columns: Columns) -> Table {
    let mut headers = vec![
        "NAME",
        "STATUS",
        "INSTANCES",
        "CPU",
        "MEMORY",
        "DRIVERS",
        "AGE",
    ];
    if columns.wide {
        headers.extend(["ADDRESS", "VERSION", "LABELS"]);
    }
    Table::new(headers)
}

/// One node's row: CPU and memory as requested/capacity.
pub fn node_row(
    view: &NodeView,
    snapshot: &ClusterView,
    columns: Columns,
    now: DateTime<Utc>,
) -> Vec<String> {
    let instances: Vec<&InstanceView> = snapshot.instances_on(&view.name).collect();
    let cpu_used: u64 = instances
        .iter()
        .filter_map(|v| v.assignment.as_ref())
        .map(|a| a.spec.resources.cpu.as_millis())
        .sum();
    let mem_used: u64 = instances
        .iter()
        .filter_map(|v| v.assignment.as_ref())
        .map(|a| a.spec.resources.memory.as_bytes())
        .sum();
    let (cpu, memory, drivers, started) = match &view.node {
        Some(node) => (
            format!("{}m/{}", cpu_used, node.capacity.cpu),
            format!("{}Mi/{}", mem_used >> 20, node.capacity.memory),
            node.drivers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            Some(node.started_at),
        ),
        None => ("-".into(), "-".into(), "-".into(), None),
    };
    let mut row = vec![
        view.name.clone(),
        view.display_status(),
        instances.len().to_string(),
        cpu,
        memory,
        drivers,
        age(started, now),
    ];
    if columns.wide {
        let node = view.node.as_ref();
        row.extend([
            node.map(|n| n.address.clone()).unwrap_or_default(),
            node.map(|n| n.version.clone()).unwrap_or_default(),
            node.map(|n| pairs(&n.labels)).unwrap_or_default(),
        ]);
    }
    row
}
