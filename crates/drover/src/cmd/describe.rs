//! `drover describe task NAME`: the task's spec in words, its controller state, its instances,
//! dead letters and recent events — what an operator reads first when something is off.
//! (`describe node` and `describe instance` are in `describe_node`.)

use std::fmt::Write as _;

use chrono::Utc;
use drover_api::deadletter::DeadLetter;
use drover_api::event::{Event, EventKind};
use drover_api::keys::Keys;
use drover_api::names::InstanceId;
use drover_api::task::Task;
use drover_api::taskstate::TaskState;

use super::connect;
use super::rows::{self, Columns};
use super::snapshot::{self, list_valid, ClusterView, InvalidEntry, InvalidKind};
use crate::cli::{DescribeArgs, DescribeKind, Global};
use crate::exit::{CliError, CliResult};
use crate::output::{age, pairs, Table};

pub async fn run(global: &Global, args: DescribeArgs) -> CliResult {
    match args.kind {
        DescribeKind::Task => task(global, args).await,
        DescribeKind::Node => super::describe_node::node(global, &args.name).await,
        DescribeKind::Instance => super::describe_node::instance(global, &args.name).await,
    }
}

async fn task(global: &Global, args: DescribeArgs) -> CliResult {
    let (store, keys) = connect(global).await?;
    let snapshot = snapshot::read(&store, &keys).await?;
    let ns = args.namespace.as_str();
    let Some(task) = snapshot.tasks.get(&(ns.to_string(), args.name.clone())) else {
        let key = keys.task(ns, &args.name);
        if let Some(bad) = snapshot.invalid.iter().find(|entry| entry.key == key) {
            println!(
                "Name:       {}\nNamespace:  {ns}\nStatus:     Invalid\nKey:        {key}\nError:      {}",
                args.name, bad.error
            );
            return Ok(());
        }
        return Err(CliError::failure(format!(
            "task \"{}\" not found in namespace \"{ns}\"",
            args.name
        )));
    };
    let state = snapshot.states.get(&(ns.to_string(), args.name.clone()));
    let mut invalid: Vec<InvalidEntry> = snapshot
        .invalid
        .iter()
        .filter(|entry| about_task(&keys, &entry.key, ns, &args.name))
        .cloned()
        .collect();
    let dead_letters: Vec<DeadLetter> = list_valid::<DeadLetter>(
        &store,
        &keys.deadletters(),
        "dead letters",
        InvalidKind::DeadLetter,
        &mut invalid,
    )
    .await?
    .into_iter()
    .map(|v| v.value)
    .filter(|d| d.namespace == ns && d.task == args.name)
    .collect();
    let mut events: Vec<Event> = list_valid::<Event>(
        &store,
        &keys.events_in(ns),
        "events",
        InvalidKind::Event,
        &mut Vec::new(),
    )
    .await?
    .into_iter()
    .map(|v| v.value)
    .filter(|e| is_about(e, &args.name))
    .collect();
    events.sort_by_key(|e| e.time);
    print!("{}", render(task, state, &snapshot, &dead_letters, &events));
    if !invalid.is_empty() {
        println!("\nInvalid keys (values that do not decode; shown, never used):");
        for entry in &invalid {
            println!("  {}: Invalid: {}", entry.key, entry.error);
        }
    }
    Ok(())
}

/// Whether `key` belongs to task `ns/name`: the task, its state, its runs, or the assignment or
/// status of one of its instances.
fn about_task(keys: &Keys, key: &str, ns: &str, name: &str) -> bool {
    let of_instance = |id: &InstanceId| id.namespace() == ns && id.task() == name;
    keys.parse_task_key(key)
        .is_some_and(|t| t == (ns.into(), name.into()))
        || keys
            .parse_taskstate_key(key)
            .is_some_and(|t| t == (ns.into(), name.into()))
        || keys
            .parse_run_key(key)
            .is_some_and(|(n, t, _)| n == ns && t == name)
        || keys
            .parse_assignment_key(key)
            .is_some_and(|(_, id)| of_instance(&id))
        || keys
            .parse_any_status_key(key)
            .is_some_and(|id| of_instance(&id))
}

/// Whether an event concerns this task or one of its instances.
fn is_about(event: &Event, task: &str) -> bool {
    match event.kind {
        EventKind::Task => event.name == task,
        EventKind::Instance => event
            .name
            .parse::<drover_api::names::InstanceId>()
            .is_ok_and(|id| id.task() == task),
        EventKind::Node => false,
    }
}

fn render(
    task: &Task,
    state: Option<&TaskState>,
    snapshot: &ClusterView,
    dead_letters: &[DeadLetter],
    events: &[Event],
) -> String {
    let now = Utc::now();
    let meta = &task.metadata;
    let spec = &task.spec;
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{:<16}{value}", format!("{label}:"));
    };
    line("Name", meta.name.clone());
    line("Namespace", meta.namespace.clone());
    line("Labels", pairs(&meta.labels));
    line("Generation", meta.generation.to_string());
    line("Mode", spec.mode().to_string());
    line("Driver", spec.driver().to_string());
    if let Some(image) = &spec.image {
        line("Image", image.clone());
    }
    if !spec.command.is_empty() {
        line("Command", spec.command.join(" "));
    }
    let running = snapshot
        .instances_of(&meta.namespace, &meta.name)
        .filter(|v| v.is_running())
        .count();
    line(
        "Replicas",
        format!("{} desired, {running} running", spec.replicas),
    );
    line(
        "Resources",
        format!(
            "cpu {}, memory {}",
            spec.resources.cpu, spec.resources.memory
        ),
    );
    line("Priority", spec.priority.to_string());
    line(
        "Restart policy",
        format!(
            "{:?} (at most {} local restarts)",
            spec.restart_policy, spec.max_restarts
        ),
    );
    if let Some(check) = &spec.health_check {
        let what = if let Some(http) = &check.http {
            format!("http GET :{}{}", http.port, http.path)
        } else if let Some(tcp) = &check.tcp {
            format!("tcp :{}", tcp.port)
        } else if let Some(exec) = &check.exec {
            format!("exec {}", exec.command.join(" "))
        } else {
            "none".to_string()
        };
        line(
            "Health check",
            format!(
                "{what} every {}s, timeout {}s, unhealthy after {} failures",
                check.period_seconds, check.timeout_seconds, check.failure_threshold
            ),
        );
    }
    if !spec.node_selector.is_empty() {
        line("Node selector", pairs(&spec.node_selector));
    }
    if let Some(schedule) = &spec.schedule {
        line("Schedule", schedule.clone());
    }
    if spec.mode() == drover_api::Mode::Service {
        let u = &spec.update;
        let b = u.budget(spec.replicas);
        line(
            "Update",
            format!(
                "maxSurge {} ({}), maxUnavailable {}, minHealthy {}s, healthyDeadline {}s, progressDeadline {}s{}{}",
                u.max_surge,
                b.surge,
                b.unavailable,
                u.min_healthy_seconds,
                u.healthy_deadline_seconds,
                u.progress_deadline_seconds,
                if u.canary > 0 { format!(", canary {}", u.canary) } else { String::new() },
                if u.auto_revert { ", autoRevert" } else { "" },
            ),
        );
    }
    if !spec.depends_on.is_empty() {
        line("Depends on", spec.depends_on.join(", "));
    }
    if !spec.blocks.is_empty() {
        line("Blocks", spec.blocks.join(", "));
    }
    if let Some(state) = state {
        if state.suspended {
            line(
                "Suspended",
                state
                    .suspended_reason
                    .clone()
                    .unwrap_or_else(|| "yes".into()),
            );
        }
        if let Some(reason) = &state.pending_reason {
            line("Waiting", reason.clone());
        }
        if let Some(rollout) = &state.rollout {
            line("Rollout", rollout.summary());
            if let Some(f) = rollout.failure.as_ref().filter(|_| {
                rollout.reverted_hash.is_some() || rollout.phase == drover_api::RolloutPhase::Failed
            }) {
                line("Rollout failure", format!("{}: {}", f.reason, f.message));
            }
        }
        if state.consecutive_failures > 0 {
            line(
                "Failures",
                format!("{} in a row", state.consecutive_failures),
            );
        }
    }

    out.push_str("\nInstances:\n");
    let columns = Columns {
        namespace: false,
        wide: false,
    };
    let mut table = rows::instance_table(columns);
    for view in snapshot.instances_of(&meta.namespace, &meta.name) {
        table.row(rows::instance_row(view, columns, now));
    }
    out.push_str(&indent(if table.is_empty() {
        "<none>\n".into()
    } else {
        table.render()
    }));

    if !dead_letters.is_empty() {
        out.push_str("\nDead letters:\n");
        let mut table = Table::new(vec!["INSTANCE", "ATTEMPTS", "EXIT", "AGE", "LAST ERROR"]);
        for letter in dead_letters {
            table.row(vec![
                letter.instance.to_string(),
                letter.attempts.to_string(),
                letter
                    .exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                age(Some(letter.time), now),
                letter.last_error.clone(),
            ]);
        }
        out.push_str(&indent(table.render()));
    }

    out.push_str("\nEvents:\n");
    let mut table = Table::new(vec!["AGE", "REASON", "OBJECT", "MESSAGE"]);
    for event in events {
        table.row(vec![
            age(Some(event.time), now),
            event.reason.clone(),
            format!("{:?}/{}", event.kind, event.name).to_lowercase(),
            event.message.clone(),
        ]);
    }
    out.push_str(&indent(if table.is_empty() {
        "<none>\n".into()
    } else {
        table.render()
    }));
    out
}

pub fn indent(text: String) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}
