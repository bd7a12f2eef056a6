//! The semantic rules of a Task (documented on [`Task::validate`](super::Task::validate)).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    ConcurrencyPolicy, HealthCheck, ObjectMeta, RestartPolicy, Task, TaskError, TaskSpec,
    API_VERSION, KIND, MAX_HISTORY_LIMIT, MAX_PRIORITY, MAX_REPLICAS,
};
use crate::names::{self, NameError};
use crate::schedule;

/// Every problem of `task`, in field order.
pub(super) fn validate(task: &Task) -> Vec<TaskError> {
    let mut v = Validator::default();
    v.check_header(task);
    v.check_metadata(&task.metadata);
    v.check_spec(&task.metadata.name, &task.spec);
    v.errors
}

#[derive(Default)]
struct Validator {
    errors: Vec<TaskError>,
}

impl Validator {
    fn invalid(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(TaskError::Invalid {
            field: field.into(),
            message: message.into(),
        });
    }

    fn name(
        &mut self,
        field: String,
        what: &'static str,
        value: &str,
        check: fn(&str) -> Result<(), NameError>,
    ) {
        if let Err(source) = check(value) {
            self.errors.push(TaskError::Name {
                field,
                what,
                value: value.to_string(),
                source,
            });
        }
    }

    fn check_header(&mut self, task: &Task) {
        if task.api_version != API_VERSION {
            self.invalid(
                "apiVersion",
                format!(
                    "unsupported apiVersion {:?} (supported: {API_VERSION})",
                    task.api_version
                ),
            );
        }
        if task.kind != KIND {
            self.invalid(
                "kind",
                format!("unsupported kind {:?} (supported: {KIND})", task.kind),
            );
        }
    }

    fn check_labels(&mut self, path: &str, labels: &BTreeMap<String, String>) {
        for (key, value) in labels {
            self.name(
                format!("{path}.{key}"),
                "label key",
                key,
                names::validate_label_key,
            );
            self.name(
                format!("{path}.{key}"),
                "label value",
                value,
                names::validate_label_value,
            );
        }
    }

    fn check_metadata(&mut self, meta: &ObjectMeta) {
        self.name(
            "metadata.name".into(),
            "task name",
            &meta.name,
            names::validate_label,
        );
        self.name(
            "metadata.namespace".into(),
            "namespace",
            &meta.namespace,
            names::validate_label,
        );
        self.check_labels("metadata.labels", &meta.labels);
    }

    fn check_spec(&mut self, own_name: &str, spec: &TaskSpec) {
        self.check_what_to_run(spec);
        self.check_accounts(spec);
        self.check_numbers(spec);
        self.check_ports(spec);
        if let Some(hc) = &spec.health_check {
            self.check_health(hc);
        }
        self.check_timing(spec);
        self.check_mode_rules(spec);
        self.check_refs(own_name, "spec.dependsOn", &spec.depends_on, "depend on");
        self.check_refs(own_name, "spec.blocks", &spec.blocks, "block");
        self.check_labels("spec.nodeSelector", &spec.node_selector);
        for key in spec.env.keys() {
            self.name(
                format!("spec.env.{key}"),
                "environment variable name",
                key,
                names::validate_env_name,
            );
        }
        if let Some(h) = &spec.hollow {
            if let Some(secs) = h.run_seconds {
                if !secs.is_finite() || secs < 0.0 {
                    self.invalid(
                        "spec.hollow.runSeconds",
                        format!("must be a finite number >= 0 (got {secs})"),
                    );
                }
            }
        }
    }

    fn check_what_to_run(&mut self, spec: &TaskSpec) {
        match &spec.image {
            Some(image) if image.trim().is_empty() => {
                self.invalid("spec.image", "must not be empty")
            }
            Some(image) if image.chars().any(char::is_whitespace) => self.invalid(
                "spec.image",
                format!("image {image:?} must not contain whitespace"),
            ),
            Some(_) => {}
            None if spec.command.is_empty() => self.invalid(
                "spec",
                "either spec.image (docker driver) or spec.command (process driver) is required",
            ),
            None => {}
        }
        if spec.command.first().is_some_and(|c| c.is_empty()) {
            self.invalid("spec.command[0]", "the program must not be empty");
        }
        if let Some(dir) = &spec.working_dir {
            if !dir.starts_with('/') {
                self.invalid(
                    "spec.workingDir",
                    format!("must be an absolute path (got {dir:?})"),
                );
            }
        }
    }

    fn check_accounts(&mut self, spec: &TaskSpec) {
        for (field, what, value) in [
            ("spec.user", "user", &spec.user),
            ("spec.group", "group", &spec.group),
        ] {
            if let Some(value) = value {
                self.name(field.into(), what, value, names::validate_account);
            }
        }
        if spec.image.is_some() && spec.group.is_some() && spec.user.is_none() {
            self.invalid(
                "spec.group",
                "with an image, needs spec.user too (the container's user is user[:group])",
            );
        }
    }

    fn check_numbers(&mut self, spec: &TaskSpec) {
        if spec.priority > MAX_PRIORITY {
            self.invalid(
                "spec.priority",
                format!(
                    "must be between 0 and {MAX_PRIORITY} (got {})",
                    spec.priority
                ),
            );
        }
        if spec.replicas > MAX_REPLICAS {
            self.invalid(
                "spec.replicas",
                format!("must be at most {MAX_REPLICAS} (got {})", spec.replicas),
            );
        }
        if spec.history_limit > MAX_HISTORY_LIMIT {
            self.invalid(
                "spec.historyLimit",
                format!(
                    "must be at most {MAX_HISTORY_LIMIT} (got {})",
                    spec.history_limit
                ),
            );
        }
        for (field, value) in [
            ("spec.timeoutSeconds", spec.timeout_seconds),
            (
                "spec.startingDeadlineSeconds",
                spec.starting_deadline_seconds,
            ),
            (
                "spec.maxConsecutiveFailures",
                spec.max_consecutive_failures.map(u64::from),
            ),
        ] {
            if value == Some(0) {
                self.invalid(field, "must be at least 1 when set");
            }
        }
    }

    fn check_ports(&mut self, spec: &TaskSpec) {
        let mut seen = BTreeSet::new();
        let mut names_seen = BTreeSet::new();
        for (i, port) in spec.ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            if port.container_port == 0 {
                self.invalid(
                    format!("{path}.containerPort"),
                    "must be between 1 and 65535 (got 0)",
                );
            } else if !seen.insert((port.container_port, port.protocol as u8)) {
                self.invalid(
                    format!("{path}.containerPort"),
                    format!(
                        "port {} is listed twice for the same protocol",
                        port.container_port
                    ),
                );
            }
            if let Some(name) = &port.name {
                self.name(
                    format!("{path}.name"),
                    "port name",
                    name,
                    names::validate_label,
                );
                if !names_seen.insert(name.as_str()) {
                    self.invalid(
                        format!("{path}.name"),
                        format!("port name {name:?} is used twice"),
                    );
                }
            }
        }
    }

    fn check_health(&mut self, hc: &HealthCheck) {
        let kinds = [hc.http.is_some(), hc.tcp.is_some(), hc.exec.is_some()];
        match kinds.iter().filter(|k| **k).count() {
            0 => self.invalid(
                "spec.healthCheck",
                "exactly one of http, tcp or exec is required (got none)",
            ),
            1 => {}
            _ => self.invalid(
                "spec.healthCheck",
                "exactly one of http, tcp or exec is allowed (got more than one)",
            ),
        }
        if let Some(http) = &hc.http {
            if http.port == 0 {
                self.invalid(
                    "spec.healthCheck.http.port",
                    "must be between 1 and 65535 (got 0)",
                );
            }
            if !http.path.starts_with('/') {
                self.invalid(
                    "spec.healthCheck.http.path",
                    format!("must start with '/' (got {:?})", http.path),
                );
            }
        }
        if let Some(tcp) = &hc.tcp {
            if tcp.port == 0 {
                self.invalid(
                    "spec.healthCheck.tcp.port",
                    "must be between 1 and 65535 (got 0)",
                );
            }
        }
        if let Some(exec) = &hc.exec {
            if exec.command.first().is_none_or(|c| c.is_empty()) {
                self.invalid("spec.healthCheck.exec.command", "must name a program");
            }
        }
        for (field, value) in [
            ("spec.healthCheck.periodSeconds", hc.period_seconds),
            ("spec.healthCheck.timeoutSeconds", hc.timeout_seconds),
            ("spec.healthCheck.failureThreshold", hc.failure_threshold),
        ] {
            if value == 0 {
                self.invalid(field, "must be at least 1");
            }
        }
    }

    fn check_timing(&mut self, spec: &TaskSpec) {
        let set: Vec<&str> = [
            (spec.schedule.is_some(), "schedule"),
            (spec.every.is_some(), "every"),
            (spec.trigger.is_some(), "trigger"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if set.len() > 1 {
            self.invalid(
                format!("spec.{}", set[1]),
                format!(
                    "{} are mutually exclusive (choose one way to start runs)",
                    set.join(" and ")
                ),
            );
        }
        if let Some(expr) = &spec.schedule {
            if let Err(source) = schedule::parse_cron(expr) {
                self.errors.push(TaskError::Schedule {
                    field: "spec.schedule".into(),
                    source,
                });
            }
        }
        if let Some(tz) = &spec.time_zone {
            if let Err(source) = schedule::parse_time_zone(tz) {
                self.errors.push(TaskError::Schedule {
                    field: "spec.timeZone".into(),
                    source,
                });
            }
            if spec.schedule.is_none() {
                self.invalid(
                    "spec.timeZone",
                    "only applies to spec.schedule, which is not set",
                );
            }
        }
        if let Some(every) = spec.every {
            if every.as_std().as_millis() < 1000 {
                self.invalid("spec.every", format!("must be at least 1s (got {every})"));
            }
        }
    }

    fn check_mode_rules(&mut self, spec: &TaskSpec) {
        let periodic = spec.schedule.is_some() || spec.every.is_some() || spec.trigger.is_some();
        if spec.restart_policy == RestartPolicy::Always {
            let why = "a service (restartPolicy: Always) runs forever; use restartPolicy OnFailure or Never for work that finishes";
            for (on, field) in [
                (spec.schedule.is_some(), "spec.schedule"),
                (spec.every.is_some(), "spec.every"),
                (spec.trigger.is_some(), "spec.trigger"),
                (spec.timeout_seconds.is_some(), "spec.timeoutSeconds"),
                (spec.max_retries > 0, "spec.maxRetries"),
                (
                    spec.starting_deadline_seconds.is_some(),
                    "spec.startingDeadlineSeconds",
                ),
                (
                    spec.concurrency_policy != ConcurrencyPolicy::Forbid,
                    "spec.concurrencyPolicy",
                ),
                // Gates and the circuit breaker act on runs, and a service has none: refused
                // rather than silently ignored.
                (!spec.depends_on.is_empty(), "spec.dependsOn"),
                (!spec.blocks.is_empty(), "spec.blocks"),
                (
                    spec.max_consecutive_failures.is_some(),
                    "spec.maxConsecutiveFailures",
                ),
            ] {
                if on {
                    self.invalid(field, format!("not allowed for a service: {why}"));
                }
            }
            for (field, message) in spec.update.problems() {
                self.invalid(format!("spec.update.{field}"), message);
            }
            return;
        }
        if !spec.update.is_default() {
            self.invalid(
                "spec.update",
                "only applies to services (restartPolicy: Always): a job run has one copy per slot, never more",
            );
        }
        if !periodic {
            if spec.starting_deadline_seconds.is_some() {
                self.invalid(
                    "spec.startingDeadlineSeconds",
                    "only applies with schedule, every or trigger",
                );
            }
            if spec.concurrency_policy != ConcurrencyPolicy::Forbid {
                self.invalid(
                    "spec.concurrencyPolicy",
                    "only applies with schedule, every or trigger",
                );
            }
        }
        if spec.replicas == 0 {
            self.invalid(
                "spec.replicas",
                "work that runs to completion needs at least 1 replica",
            );
        }
    }

    fn check_refs(&mut self, own_name: &str, path: &str, refs: &[String], verb: &str) {
        let mut seen = BTreeSet::new();
        for (i, r) in refs.iter().enumerate() {
            let field = format!("{path}[{i}]");
            if r == own_name {
                self.invalid(field, format!("a task cannot {verb} itself ({r:?})"));
                continue;
            }
            if !seen.insert(r.as_str()) {
                self.invalid(field, format!("{r:?} is listed twice"));
                continue;
            }
            self.name(field, "task name", r, names::validate_label);
        }
    }
}
