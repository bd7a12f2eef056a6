//! The documents `get -o json|yaml|jsonpath|name` prints: each task, instance and node as a
//! kubectl-shaped object (`apiVersion`, `kind`, `metadata`, `spec`, `status`), its `status`
//! derived from the cluster view the table is drawn from, so the two never disagree.
//!
//! The `spec` part of a task is the stored Task unchanged (so `apply` takes it back; apply
//! ignores `status`). A key whose value is Invalid is an object too, with `status.phase:
//! Invalid` and the error, never left out.

use std::collections::BTreeMap;

use drover_api::instance::{Health, Phase};
use drover_api::keys::Keys;
use drover_api::quantity::{Cpu, Memory};
use drover_api::run::RunOutcome;
use drover_api::task::{Mode, Task, API_VERSION};
use drover_api::taskstate::TaskState;
use serde::Serialize;
use serde_json::{json, Value};

use super::snapshot::{ClusterView, InstanceView, InvalidEntry, InvalidKind, NodeView};

/// A kubectl-style condition. Drover records no transition times, so there is no
/// `lastTransitionTime`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// What the condition is about (`Available`, `Suspended`, ...).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `True` or `False`.
    pub status: &'static str,
    /// Short CamelCase reason.
    pub reason: String,
    /// For people.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

fn condition(kind: &'static str, holds: bool, reason: &str, message: String) -> Condition {
    Condition {
        kind,
        status: if holds { "True" } else { "False" },
        reason: reason.to_string(),
        message,
    }
}

/// A task's phase, one word for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TaskPhase {
    /// A service with every replica ready on the current generation; a run going.
    Running,
    /// Nothing ready yet (nothing placed, or a job never run).
    Pending,
    /// A service on its way: some replicas not ready or not on the current generation.
    Progressing,
    /// The circuit breaker stopped it (`maxConsecutiveFailures`); `drover enable` resumes it.
    Suspended,
    /// Its stored value does not decode or breaks apply's rules.
    Invalid,
    /// The latest run of a job succeeded.
    Succeeded,
    /// The latest run of a job failed (or hit its deadline, or was cancelled).
    Failed,
}

/// The latest run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastRun {
    /// Its number.
    pub number: u64,
    /// How it ended; absent while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RunOutcome>,
}

/// Why a key is Invalid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invalid {
    /// The key.
    pub key: String,
    /// The decode or validation error.
    pub error: String,
}

/// `status` of a task.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// One word for scripts.
    pub phase: TaskPhase,
    /// `spec.replicas`.
    pub desired: u32,
    /// Copies Running and not Unhealthy.
    pub ready: u32,
    /// Copies assigned from the current generation and not being stopped.
    pub updated: u32,
    /// Copies both ready and updated.
    pub available: u32,
    /// kubectl-style conditions.
    pub conditions: Vec<Condition>,
    /// The latest run (jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,
    /// The circuit breaker tripped.
    pub suspended: bool,
    /// Set when the task's value is Invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<Invalid>,
    /// The controller's `taskstate/<ns>/<name>` as stored (whatever fields it has), absent
    /// before the controller wrote one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<TaskState>,
    /// Set when the controller's state key holds a value that does not decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_invalid: Option<Invalid>,
}

/// The status of a task that decodes (`invalid`: its Invalid entry, when it breaks apply's
/// rules).
pub fn task_status(
    task: &Task,
    view: &ClusterView,
    keys: &Keys,
    invalid: Option<&InvalidEntry>,
) -> TaskStatus {
    let meta = &task.metadata;
    let name = (meta.namespace.clone(), meta.name.clone());
    let state = view.states.get(&name);
    let copies: Vec<&InstanceView> = view.instances_of(&meta.namespace, &meta.name).collect();
    let stopping = |c: &&InstanceView| c.assignment.as_ref().is_some_and(|a| a.stop.is_some());
    let ready_of = |c: &&InstanceView| {
        c.is_running()
            && c.status
                .as_ref()
                .is_some_and(|s| s.health != Health::Unhealthy)
    };
    let updated_of = |c: &&InstanceView| {
        !stopping(c)
            && c.assignment
                .as_ref()
                .is_some_and(|a| a.generation == meta.generation)
    };
    let count = |f: &dyn Fn(&&InstanceView) -> bool| {
        u32::try_from(copies.iter().filter(|c| f(c)).count()).unwrap_or(u32::MAX)
    };
    let ready = count(&ready_of);
    let updated = count(&updated_of);
    let available = count(&|c| ready_of(c) && updated_of(c));
    let desired = task.spec.replicas;
    let suspended = state.is_some_and(|s| s.suspended);
    let service = task.spec.mode() == Mode::Service;
    let active = copies.iter().any(|c| {
        !stopping(c)
            && c.assignment.is_some()
            && !c.status.as_ref().is_some_and(|s| s.phase.is_terminal())
    });
    let outcome = state.and_then(|s| s.last_outcome);
    let phase = if invalid.is_some() {
        TaskPhase::Invalid
    } else if suspended {
        TaskPhase::Suspended
    } else if service {
        if ready >= desired && available >= desired {
            TaskPhase::Running
        } else if copies.is_empty() {
            TaskPhase::Pending
        } else {
            TaskPhase::Progressing
        }
    } else if active {
        if ready > 0 {
            TaskPhase::Running
        } else {
            TaskPhase::Pending
        }
    } else {
        match outcome {
            Some(RunOutcome::Succeeded) => TaskPhase::Succeeded,
            Some(_) => TaskPhase::Failed,
            None => TaskPhase::Pending,
        }
    };
    let mut conditions = vec![match invalid {
        Some(entry) => condition("Valid", false, "Invalid", entry.error.clone()),
        None => condition("Valid", true, "Valid", String::new()),
    }];
    conditions.push(match state.filter(|s| s.suspended) {
        Some(s) => condition(
            "Suspended",
            true,
            "CircuitBreakerOpen",
            s.suspended_reason.clone().unwrap_or_default(),
        ),
        None => condition("Suspended", false, "Enabled", String::new()),
    });
    if service {
        let all = available >= desired;
        conditions.push(condition(
            "Available",
            all,
            if all {
                "MinimumReplicasAvailable"
            } else {
                "ReplicasUnavailable"
            },
            format!("{available}/{desired} replicas available"),
        ));
        let done = updated >= desired && ready >= desired;
        conditions.push(condition(
            "Progressing",
            !done,
            if done {
                "NewReplicasAvailable"
            } else {
                "ReplicasUpdating"
            },
            format!("{updated}/{desired} updated, {ready}/{desired} ready"),
        ));
    } else if let Some(outcome) = outcome {
        conditions.push(condition(
            "Complete",
            outcome.is_success(),
            &outcome.to_string(),
            state
                .and_then(|s| s.last_run)
                .map(|n| format!("run #{n}"))
                .unwrap_or_default(),
        ));
    }
    if let Some(reason) = state.and_then(|s| s.pending_reason.clone()) {
        conditions.push(condition("Waiting", true, "Waiting", reason));
    }
    let state_key = keys.taskstate(&meta.namespace, &meta.name);
    TaskStatus {
        phase,
        desired,
        ready,
        updated,
        available,
        conditions,
        last_run: state.and_then(|s| {
            Some(LastRun {
                number: s.last_run?,
                outcome: s.last_outcome,
            })
        }),
        suspended,
        invalid: invalid.map(|entry| Invalid {
            key: entry.key.clone(),
            error: entry.error.clone(),
        }),
        state: state.cloned(),
        state_invalid: view.invalid_entry(&state_key).map(|entry| Invalid {
            key: entry.key.clone(),
            error: entry.error.clone(),
        }),
    }
}

/// A task as `get -o json` prints it: the stored Task with a `status` block.
pub fn task_object(task: &Task, view: &ClusterView, keys: &Keys) -> Value {
    let key = keys.task(&task.metadata.namespace, &task.metadata.name);
    let status = task_status(task, view, keys, view.invalid_entry(&key));
    let mut object = serde_json::to_value(task).unwrap_or_else(
        |error| json!({"apiVersion": API_VERSION, "kind": "Task", "error": error.to_string()}),
    );
    if let Value::Object(map) = &mut object {
        map.insert("status".into(), to_value(&status));
    }
    object
}

/// A `tasks/` key whose value does not decode: its name (from the key), `status.phase:
/// Invalid` and the error. Such an item has no `spec`, so `apply` refuses it.
pub fn undecodable_task_object(entry: &InvalidEntry, keys: &Keys) -> Value {
    let (namespace, name) = keys
        .parse_task_key(&entry.key)
        .unwrap_or_else(|| (String::new(), entry.key.clone()));
    json!({
        "apiVersion": API_VERSION,
        "kind": "Task",
        "metadata": {"name": name, "namespace": namespace},
        "status": {
            "phase": TaskPhase::Invalid,
            "conditions": [condition("Valid", false, "Invalid", entry.error.clone())],
            "invalid": Invalid {key: entry.key.clone(), error: entry.error.clone()},
        },
    })
}

/// The undecodable `tasks/` entries of the view (tasks that decode but break the rules are in
/// `view.tasks`, and get their status from [`task_object`]).
pub fn undecodable_tasks<'a>(
    view: &'a ClusterView,
    keys: &'a Keys,
) -> impl Iterator<Item = &'a InvalidEntry> + 'a {
    view.invalid.iter().filter(move |entry| {
        entry.kind == InvalidKind::Task
            && keys
                .parse_task_key(&entry.key)
                .is_none_or(|name| !view.tasks.contains_key(&name))
    })
}

/// The labels an instance is selected by: its task's.
pub fn instance_labels<'a>(
    view: &'a InstanceView,
    cluster: &'a ClusterView,
) -> Option<&'a BTreeMap<String, String>> {
    let (namespace, task) = view.task();
    cluster
        .tasks
        .get(&(namespace.to_string(), task.to_string()))
        .map(|t| &t.metadata.labels)
}

/// An instance: metadata (its task's labels), the assignment as `spec`, and a `status` from the
/// agent's report.
pub fn instance_object(view: &InstanceView, cluster: &ClusterView) -> Value {
    let (namespace, task) = view.task();
    let status = view.status.as_ref();
    let assignment = view.assignment.as_ref();
    let phase = if view.invalid.is_some() {
        "Invalid".to_string()
    } else {
        status.map_or(Phase::Pending, |s| s.phase).to_string()
    };
    let node = assignment
        .map(|a| a.node.clone())
        .or_else(|| status.map(|s| s.node.clone()));
    let mut block = json!({
        "phase": phase,
        "node": node,
        "health": status.map_or(Health::Unknown, |s| s.health),
        "restarts": status.map_or(0, |s| s.restart_count),
        "ports": status.map(|s| s.ports.clone()).unwrap_or_default(),
        "reason": status.and_then(|s| s.reason.clone()),
        "message": status.and_then(|s| s.message.clone()),
        "exitCode": status.and_then(|s| s.exit_code),
        "containerId": status.and_then(|s| s.container_id.clone()),
        "generation": status.map(|s| s.generation),
        "attempt": status.map(|s| s.attempt),
        "startedAt": status.and_then(|s| s.started_at),
        "finishedAt": status.and_then(|s| s.finished_at),
        "updatedAt": status.map(|s| s.updated_at),
        "stopRequested": assignment.and_then(|a| a.stop.clone()),
    });
    if let (Some(error), Value::Object(map)) = (&view.invalid, &mut block) {
        map.insert("error".into(), Value::String(error.clone()));
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": "Instance",
        "metadata": {
            "name": view.id.to_string(),
            "namespace": namespace,
            "task": task,
            "labels": instance_labels(view, cluster).cloned().unwrap_or_default(),
        },
        "spec": assignment,
        "status": drop_nulls(block),
    })
}

/// A node: its labels, cordon and drain as `spec`, and a `status` with readiness (its lease),
/// capacity, what is allocated on it and how many instances it holds.
pub fn node_object(view: &NodeView, cluster: &ClusterView) -> Value {
    let info = view.info.clone().unwrap_or_default();
    let node = view.node.as_ref();
    let on_it: Vec<&InstanceView> = cluster.instances_on(&view.name).collect();
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
    let ready = node.is_some() && view.invalid.is_none();
    let phase = if view.invalid.is_some() {
        "Invalid"
    } else if ready {
        "Ready"
    } else {
        "NotReady"
    };
    let mut block = json!({
        "phase": phase,
        "ready": ready,
        // The registration lives on the agent's lease: present means the lease holds.
        "lease": if node.is_some() { "Held" } else { "Expired" },
        "cordoned": info.cordoned || info.draining,
        "draining": info.draining,
        "capacity": node.map(|n| n.capacity),
        "allocated": {"cpu": Cpu::millis(cpu), "memory": Memory::bytes(memory)},
        "instances": on_it.len(),
        "address": node.map(|n| n.address.clone()),
        "drivers": node.map(|n| n.drivers.clone()),
        "version": node.map(|n| n.version.clone()),
        "startedAt": node.map(|n| n.started_at),
        "lastSeen": info.last_seen,
        "conditions": [
            condition(
                "Ready",
                ready,
                if ready { "LeaseHeld" } else { "LeaseExpired" },
                String::new(),
            ),
            condition(
                "Schedulable",
                info.schedulable() && ready,
                if info.draining {
                    "Draining"
                } else if info.cordoned {
                    "Cordoned"
                } else if ready {
                    "Schedulable"
                } else {
                    "NotReady"
                },
                String::new(),
            ),
        ],
    });
    if let (Some(error), Value::Object(map)) = (&view.invalid, &mut block) {
        map.insert("error".into(), Value::String(error.clone()));
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": "Node",
        "metadata": {
            "name": view.name,
            "labels": node.map(|n| n.labels.clone()).unwrap_or_default(),
        },
        "spec": {"unschedulable": !info.schedulable(), "draining": info.draining},
        "status": drop_nulls(block),
    })
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|error| json!({"error": error.to_string()}))
}

/// Drops the top-level members that are null, so absent facts are absent, not `null`.
fn drop_nulls(mut value: Value) -> Value {
    if let Value::Object(map) = &mut value {
        map.retain(|_, v| !v.is_null());
    }
    value
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn task(replicas: u32, restart: &str) -> Value {
        named("web", replicas, restart)
    }

    fn named(name: &str, replicas: u32, restart: &str) -> Value {
        json!({
            "apiVersion": "drover.dev/v1", "kind": "Task",
            "metadata": {"name": name, "namespace": "default", "generation": 2, "labels": {"app": "web"}},
            "spec": {"command": ["true"], "replicas": replicas, "restartPolicy": restart},
        })
    }

    fn assignment(slot: u32, generation: u64) -> Value {
        json!({
            "id": format!("default.web.{slot}"), "namespace": "default", "task": "web",
            "slot": slot, "node": "n1", "generation": generation, "attempt": 1,
            "spec": {"command": ["true"], "resources": {"cpu": "100m", "memory": "16Mi"}},
            "assignedAt": "2026-01-01T00:00:00Z"
        })
    }

    fn running(slot: u32) -> Value {
        json!({
            "id": format!("default.web.{slot}"), "node": "n1", "phase": "Running",
            "generation": 2, "attempt": 1, "updatedAt": "2026-01-01T00:00:00Z"
        })
    }

    fn view(entries: &[(String, Value)]) -> (ClusterView, Keys) {
        let keys = Keys::new("/p");
        let mut view = ClusterView::default();
        for (i, (key, value)) in entries.iter().enumerate() {
            view.apply(&keys, key, Ok(value.clone()), i as i64 + 1);
        }
        view.settle(&keys);
        (view, keys)
    }

    fn phase(object: &Value) -> &str {
        object["status"]["phase"].as_str().unwrap()
    }

    #[test]
    fn a_service_is_pending_then_progressing_then_running() {
        let keys = Keys::new("/p");
        let id = |slot| drover_api::names::InstanceId::service("default", "web", slot).unwrap();
        let t = (keys.task("default", "web"), task(2, "Always"));
        let (v, k) = view(std::slice::from_ref(&t));
        let tasks = &v.tasks[&("default".into(), "web".into())];
        assert_eq!(phase(&task_object(tasks, &v, &k)), "Pending");

        let mut entries = vec![
            t.clone(),
            (keys.assignment("n1", &id(0)), assignment(0, 2)),
            (keys.status("n1", &id(0)), running(0)),
            (keys.assignment("n1", &id(1)), assignment(1, 1)),
            (keys.status("n1", &id(1)), running(1)),
        ];
        let (v, k) = view(&entries);
        let object = task_object(&v.tasks[&("default".into(), "web".into())], &v, &k);
        assert_eq!(phase(&object), "Progressing", "{object}");
        assert_eq!(object["status"]["ready"], 2);
        assert_eq!(object["status"]["updated"], 1);
        assert_eq!(object["status"]["available"], 1);

        entries[3].1 = assignment(1, 2);
        let (v, k) = view(&entries);
        let object = task_object(&v.tasks[&("default".into(), "web".into())], &v, &k);
        assert_eq!(phase(&object), "Running", "{object}");
        let available = object["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Available")
            .unwrap();
        assert_eq!(available["status"], "True");

        let node = node_object(
            &v.nodes.get("n1").cloned().unwrap_or(NodeView {
                name: "n1".into(),
                node: None,
                info: None,
                invalid: None,
            }),
            &v,
        );
        assert_eq!(node["status"]["instances"], 2);
        assert_eq!(node["status"]["allocated"]["cpu"], "200m");
        let instance = instance_object(&v.instances["default.web.0"], &v);
        assert_eq!(instance["metadata"]["labels"]["app"], "web");
        assert_eq!(instance["status"]["phase"], "Running");
    }

    #[test]
    fn suspended_and_finished_jobs_take_the_states_word() {
        let keys = Keys::new("/p");
        let t = (keys.task("default", "web"), task(1, "Never"));
        let state = |v: Value| (keys.taskstate("default", "web"), v);
        let cases = [
            (
                json!({"suspended": true, "suspendedReason": "5 failures", "lastRun": 5, "lastOutcome": "Failed"}),
                "Suspended",
            ),
            (
                json!({"lastRun": 1, "lastOutcome": "Succeeded"}),
                "Succeeded",
            ),
            (
                json!({"lastRun": 1, "lastOutcome": "DeadlineExceeded"}),
                "Failed",
            ),
            (json!({"futureField": {"x": 1}}), "Pending"),
        ];
        for (value, expected) in cases {
            let (v, k) = view(&[t.clone(), state(value.clone())]);
            let object = task_object(&v.tasks[&("default".into(), "web".into())], &v, &k);
            assert_eq!(phase(&object), expected, "{value}: {object}");
            assert_eq!(
                object["status"]["suspended"],
                expected == "Suspended",
                "{object}"
            );
        }
    }

    #[test]
    fn an_invalid_task_is_an_object_with_its_error() {
        let keys = Keys::new("/p");
        let mut v = ClusterView::default();
        let key = keys.task("default", "junk");
        v.apply(&keys, &key, Err("expected value at line 1".into()), 1);
        // Decodes, breaks the rules: replicas over the limit.
        let bad = keys.task("default", "huge");
        v.apply(&keys, &bad, Ok(named("huge", 100_000, "Always")), 2);
        v.settle(&keys);
        let junk: Vec<Value> = undecodable_tasks(&v, &keys)
            .map(|e| undecodable_task_object(e, &keys))
            .collect();
        assert_eq!(junk.len(), 1, "only the undecodable one: {junk:?}");
        assert_eq!(junk[0]["metadata"]["name"], "junk");
        assert_eq!(phase(&junk[0]), "Invalid");
        assert!(junk[0]["status"]["invalid"]["error"]
            .as_str()
            .unwrap()
            .contains("line 1"));
        let huge = task_object(&v.tasks[&("default".into(), "huge".into())], &v, &keys);
        assert_eq!(phase(&huge), "Invalid", "{huge}");
        assert!(huge["spec"].is_object());
    }
}
