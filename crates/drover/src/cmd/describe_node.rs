//! `drover describe node NAME` and `drover describe instance ID`: one node (registration,
//! record, capacity and what is allocated, its instances) or one instance (assignment and the
//! agent's status), each with its recent events and the Invalid keys that concern it.

use std::fmt::Write as _;

use chrono::Utc;
use drover_api::event::EventKind;
use drover_api::names::InstanceId;

use super::connect;
use super::describe::indent;
use super::get_events::{self, object_of, About};
use super::rows::{self, Columns};
use super::snapshot::{self, InvalidEntry};
use crate::cli::Global;
use crate::exit::{CliError, CliResult};
use crate::output::{age, pairs, Table};

fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{:<16}{value}", format!("{label}:"));
}

fn events_section(out: &mut String, events: &[(String, drover_api::event::Event)]) {
    let now = Utc::now();
    out.push_str("\nEvents:\n");
    let mut table = Table::new(vec!["AGE", "REASON", "OBJECT", "SOURCE", "MESSAGE"]);
    for (_, event) in events {
        table.row(vec![
            age(Some(event.time), now),
            event.reason.clone(),
            object_of(event),
            event.source.clone(),
            event.message.clone(),
        ]);
    }
    out.push_str(&indent(if table.is_empty() {
        "<none>\n".into()
    } else {
        table.render()
    }));
}

fn invalid_section(out: &mut String, invalid: &[InvalidEntry]) {
    if invalid.is_empty() {
        return;
    }
    out.push_str("\nInvalid keys (values that do not decode; shown, never used):\n");
    for entry in invalid {
        let _ = writeln!(out, "  {}: Invalid: {}", entry.key, entry.error);
    }
}

/// `describe node NAME`.
pub async fn node(global: &Global, name: &str) -> CliResult {
    let (store, keys) = connect(global).await?;
    let view = snapshot::read(&store, &keys).await?;
    let Some(node) = view.nodes.get(name) else {
        return Err(CliError::failure(format!("node \"{name}\" not found")));
    };
    let now = Utc::now();
    let mut out = String::new();
    line(&mut out, "Name", &node.name);
    line(&mut out, "Status", node.display_status());
    let info = node.info.clone().unwrap_or_default();
    line(
        &mut out,
        "Lease",
        if node.node.is_some() {
            "held (the agent is alive)"
        } else {
            "expired or never registered"
        },
    );
    line(
        &mut out,
        "Cordoned",
        if info.cordoned || info.draining {
            "yes"
        } else {
            "no"
        },
    );
    line(
        &mut out,
        "Draining",
        if info.draining { "yes" } else { "no" },
    );
    if let Some(seen) = info.last_seen {
        line(
            &mut out,
            "Last seen",
            format!("{} ago", age(Some(seen), now)),
        );
    }
    let on_it: Vec<_> = view.instances_on(name).collect();
    if let Some(reg) = &node.node {
        line(&mut out, "Address", &reg.address);
        line(&mut out, "Version", &reg.version);
        line(
            &mut out,
            "Drivers",
            reg.drivers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        line(&mut out, "Labels", pairs(&reg.labels));
        line(
            &mut out,
            "Started",
            format!("{} ago", age(Some(reg.started_at), now)),
        );
        line(
            &mut out,
            "Capacity",
            format!("cpu {}, memory {}", reg.capacity.cpu, reg.capacity.memory),
        );
    }
    let cpu: u64 = on_it
        .iter()
        .filter_map(|v| v.assignment.as_ref())
        .map(|a| a.spec.resources.cpu.as_millis())
        .sum();
    let memory: u64 = on_it
        .iter()
        .filter_map(|v| v.assignment.as_ref())
        .map(|a| a.spec.resources.memory.as_bytes())
        .sum();
    line(
        &mut out,
        "Allocated",
        format!(
            "cpu {}, memory {} ({} instances)",
            drover_api::quantity::Cpu::millis(cpu),
            drover_api::quantity::Memory::bytes(memory),
            on_it.len()
        ),
    );
    if let Some(error) = &node.invalid {
        line(&mut out, "Invalid", error);
    }
    out.push_str("\nInstances:\n");
    let columns = Columns {
        namespace: true,
        wide: false,
    };
    let mut table = rows::instance_table(columns);
    for instance in &on_it {
        table.row(rows::instance_row(instance, columns, now));
    }
    out.push_str(&indent(if table.is_empty() {
        "<none>\n".into()
    } else {
        table.render()
    }));
    let about = About {
        kind: EventKind::Node,
        name: name.to_string(),
    };
    let invalid: Vec<InvalidEntry> = view
        .invalid
        .iter()
        .filter(|e| {
            keys.parse_node_key(&e.key)
                .or_else(|| keys.parse_nodeinfo_key(&e.key))
                .is_some_and(|n| n == name)
        })
        .cloned()
        .collect();
    let events: Vec<_> = get_events::read(&store, &keys, Some("default"), &mut Vec::new())
        .await?
        .into_iter()
        .filter(|(_, e)| about.covers(e))
        .collect();
    events_section(&mut out, &events);
    invalid_section(&mut out, &invalid);
    print!("{out}");
    Ok(())
}

/// `describe instance ID`.
pub async fn instance(global: &Global, id: &str) -> CliResult {
    let parsed: InstanceId = id
        .parse()
        .map_err(|error| CliError::usage(format!("instance {id:?}: {error}")))?;
    let (store, keys) = connect(global).await?;
    let view = snapshot::read(&store, &keys).await?;
    let Some(instance) = view.instances.get(id) else {
        return Err(CliError::failure(format!("instance \"{id}\" not found")));
    };
    let now = Utc::now();
    let mut out = String::new();
    line(&mut out, "Name", id);
    line(&mut out, "Namespace", parsed.namespace());
    line(&mut out, "Task", parsed.task());
    line(&mut out, "Status", instance.display_status());
    if let Some(a) = &instance.assignment {
        line(&mut out, "Node", &a.node);
        line(&mut out, "Generation", a.generation);
        line(&mut out, "Attempt", a.attempt);
        if let Some(run) = a.run {
            line(&mut out, "Run", run);
        }
        line(
            &mut out,
            "Assigned",
            format!("{} ago", age(Some(a.assigned_at), now)),
        );
        if let Some(stop) = &a.stop {
            line(
                &mut out,
                "Stop requested",
                format!(
                    "{} ({} ago)",
                    stop.reason,
                    age(Some(stop.requested_at), now)
                ),
            );
        }
    } else {
        line(&mut out, "Assignment", "<none> (being cleaned up)");
    }
    if let Some(s) = &instance.status {
        line(&mut out, "Phase", s.phase);
        if let Some(reason) = &s.reason {
            line(&mut out, "Reason", reason);
        }
        if let Some(message) = &s.message {
            line(&mut out, "Message", message);
        }
        line(&mut out, "Health", format!("{:?}", s.health));
        line(&mut out, "Restarts", s.restart_count);
        if let Some(code) = s.exit_code {
            line(&mut out, "Exit code", code);
        }
        if let Some(container) = &s.container_id {
            line(&mut out, "Container", container);
        }
        if !s.ports.is_empty() {
            line(
                &mut out,
                "Ports",
                s.ports
                    .iter()
                    .map(|p| format!("{}->{}", p.host_port, p.container_port))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        if let Some(at) = s.started_at {
            line(&mut out, "Started", format!("{} ago", age(Some(at), now)));
        }
        if let Some(at) = s.finished_at {
            line(&mut out, "Finished", format!("{} ago", age(Some(at), now)));
        }
        line(
            &mut out,
            "Reported",
            format!("{} ago by {}", age(Some(s.updated_at), now), s.node),
        );
    } else {
        line(&mut out, "Phase", "Pending (no status from the agent yet)");
    }
    if let Some(error) = &instance.invalid {
        line(&mut out, "Invalid", error);
    }
    let about = About {
        kind: EventKind::Instance,
        name: id.to_string(),
    };
    let invalid: Vec<InvalidEntry> = view
        .invalid
        .iter()
        .filter(|e| {
            keys.parse_any_status_key(&e.key)
                .or_else(|| keys.parse_assignment_key(&e.key).map(|(_, i)| i))
                .is_some_and(|i| i == parsed)
        })
        .cloned()
        .collect();
    let events: Vec<_> = get_events::read(&store, &keys, Some(parsed.namespace()), &mut Vec::new())
        .await?
        .into_iter()
        .filter(|(_, e)| about.covers(e))
        .collect();
    events_section(&mut out, &events);
    invalid_section(&mut out, &invalid);
    print!("{out}");
    Ok(())
}
