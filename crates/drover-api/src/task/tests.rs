//! Unit tests of the Task types, defaults and validation rules.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::duration::HumanDuration;
use crate::quantity::{Cpu, Memory};

fn svc() -> Task {
    Task::new(
        "default",
        "web",
        TaskSpec {
            image: Some("nginx".into()),
            ..TaskSpec::default()
        },
    )
}

fn fields(t: &Task) -> Vec<String> {
    t.validate().iter().map(|e| e.field().to_string()).collect()
}

#[test]
fn defaults() {
    let s = TaskSpec::default();
    assert_eq!(s.replicas, 1);
    assert_eq!(s.resources.cpu, Cpu(100));
    assert_eq!(s.resources.memory, Memory(64 << 20));
    assert_eq!(s.priority, 50);
    assert_eq!(s.max_restarts, 3);
    assert_eq!(s.termination_grace_period_seconds, 30);
    assert_eq!(s.history_limit, 10);
    assert!(svc().validate().is_empty(), "{:?}", svc().validate());
}

#[test]
fn driver_and_mode() {
    let mut t = svc();
    assert_eq!(t.spec.driver(), DriverKind::Docker);
    assert_eq!(t.spec.mode(), Mode::Service);
    t.spec.image = None;
    t.spec.command = vec!["sleep".into(), "1".into()];
    assert_eq!(t.spec.driver(), DriverKind::Process);
    t.spec.restart_policy = RestartPolicy::Never;
    assert_eq!(t.spec.mode(), Mode::Job);
    t.spec.trigger = Some(Trigger::Manual);
    assert_eq!(t.spec.mode(), Mode::Triggered);
    t.spec.trigger = None;
    t.spec.schedule = Some("* * * * *".into());
    assert_eq!(t.spec.mode(), Mode::Scheduled);
    assert_eq!(t.spec.mode().to_string(), "scheduled");
    assert!(t.validate().is_empty(), "{:?}", t.validate());
    assert_eq!(
        serde_json::to_string(&DriverKind::Hollow).unwrap(),
        "\"hollow\""
    );
}

#[test]
fn service_rules() {
    let mut t = svc();
    t.spec.schedule = Some("* * * * *".into());
    t.spec.timeout_seconds = Some(5);
    assert_eq!(fields(&t), ["spec.schedule", "spec.timeoutSeconds"]);
    let msg = t.validate()[0].to_string();
    assert!(
        msg.contains("service") && msg.contains("OnFailure"),
        "{msg}"
    );
}

#[test]
fn a_service_refuses_gates_and_the_circuit_breaker() {
    let mut t = svc();
    t.spec.depends_on = vec!["fetch".into()];
    t.spec.blocks = vec!["cleanup".into()];
    t.spec.max_consecutive_failures = Some(3);
    assert_eq!(
        fields(&t),
        [
            "spec.dependsOn",
            "spec.blocks",
            "spec.maxConsecutiveFailures"
        ]
    );
}

#[test]
fn a_copy_budget_is_for_services_only() {
    let mut t = svc();
    t.spec.update.max_surge = crate::Budget::Count(2);
    assert!(fields(&t).is_empty(), "a service may surge");
    t.spec.restart_policy = RestartPolicy::Never;
    assert_eq!(fields(&t), ["spec.update"]);
    // The manifest spelling, and unknown fields under it are refused.
    let spec: TaskSpec = serde_json::from_str(r#"{"update":{"maxSurge":1}}"#).unwrap();
    assert_eq!(spec.update.max_surge, crate::Budget::Count(1));
    assert!(serde_json::from_str::<TaskSpec>(r#"{"update":{"maxSurj":1}}"#).is_err());
}

#[test]
fn job_rules() {
    let mut t = svc();
    t.spec.restart_policy = RestartPolicy::OnFailure;
    t.spec.schedule = Some("* * * * *".into());
    t.spec.every = Some(HumanDuration::from_secs(60));
    t.spec.time_zone = Some("Nowhere/Land".into());
    t.spec.replicas = 0;
    assert_eq!(fields(&t), ["spec.every", "spec.timeZone", "spec.replicas"]);
    let mut t = svc();
    t.spec.restart_policy = RestartPolicy::Never;
    t.spec.starting_deadline_seconds = Some(10);
    t.spec.concurrency_policy = ConcurrencyPolicy::Allow;
    t.spec.time_zone = Some("UTC".into());
    assert_eq!(
        fields(&t),
        [
            "spec.timeZone",
            "spec.startingDeadlineSeconds",
            "spec.concurrencyPolicy"
        ]
    );
}

#[test]
fn many_rules_at_once() {
    let mut t = svc();
    t.metadata.name = "Web".into();
    t.spec.priority = 101;
    t.spec.replicas = 1001;
    t.spec.ports = vec![
        PortSpec {
            container_port: 0,
            name: None,
            protocol: Protocol::Tcp,
        },
        PortSpec {
            container_port: 80,
            name: Some("http".into()),
            protocol: Protocol::Tcp,
        },
        PortSpec {
            container_port: 80,
            name: Some("http".into()),
            protocol: Protocol::Tcp,
        },
    ];
    t.spec.env.insert("BAD-NAME".into(), "x".into());
    t.spec.depends_on = vec!["Web".into(), "x".into(), "x".into()];
    t.spec.health_check = Some(HealthCheck {
        http: Some(HttpProbe {
            path: "health".into(),
            port: 0,
        }),
        tcp: Some(TcpProbe { port: 1 }),
        exec: None,
        period_seconds: 0,
        timeout_seconds: 1,
        failure_threshold: 1,
        initial_delay_seconds: 0,
    });
    let f = fields(&t);
    for expected in [
        "metadata.name",
        "spec.priority",
        "spec.replicas",
        "spec.ports[0].containerPort",
        "spec.ports[2].containerPort",
        "spec.ports[2].name",
        "spec.env.BAD-NAME",
        "spec.dependsOn[0]",
        "spec.dependsOn[2]",
        "spec.healthCheck",
        "spec.healthCheck.http.port",
        "spec.healthCheck.http.path",
        "spec.healthCheck.periodSeconds",
    ] {
        assert!(
            f.iter().any(|x| x == expected),
            "missing {expected} in {f:?}"
        );
    }
}

#[test]
fn equality_ignores_generation() {
    let a = svc();
    let mut b = svc();
    b.metadata.generation = 7;
    assert!(a.spec_equal_ignoring_generation(&b));
    b.spec.replicas = 2;
    assert!(!a.spec_equal_ignoring_generation(&b));
}

#[test]
fn size_limits_per_task_and_per_job_run() {
    let mut t = svc();
    t.spec.env.insert("BLOB".into(), "x".repeat(20_000));
    t.spec.replicas = 300;
    assert!(
        super::check_size(&t).is_ok(),
        "a service's copies are written apart"
    );
    t.spec.restart_policy = RestartPolicy::Never;
    let err = super::check_size(&t).expect_err("a job run's copies are written together");
    assert_eq!(err.limit, super::MAX_RUN_BYTES);
    assert!(err.to_string().contains("per job run"), "{err}");
    t.spec.replicas = 1;
    t.spec
        .env
        .insert("BLOB".into(), "x".repeat(super::MAX_TASK_BYTES));
    let err = super::check_size(&t).expect_err("over the per-task limit");
    assert_eq!(err.limit, super::MAX_TASK_BYTES);
    assert!(
        err.to_string().contains("default/"),
        "names the task: {err}"
    );
}

#[test]
fn only_fields_that_change_a_running_copy_change_its_template() {
    let base = svc();
    let hash = base.spec.template_hash();
    let mut same = base.clone();
    same.spec.replicas = 7;
    same.spec.priority = 90;
    same.spec.preemption = true;
    same.spec.update.max_surge = crate::Budget::Percent(25);
    same.spec.history_limit = 3;
    same.metadata.labels.insert("team".into(), "a".into());
    same.metadata.generation = 9;
    assert_eq!(same.spec.template_hash(), hash);
    for change in [
        |s: &mut TaskSpec| {
            s.env
                .insert("V".into(), "2".into())
                .map(|_| ())
                .unwrap_or(())
        },
        |s: &mut TaskSpec| s.command.push("--flag".into()),
        |s: &mut TaskSpec| s.termination_grace_period_seconds = 5,
        |s: &mut TaskSpec| s.image = Some("other:1".into()),
    ] {
        let mut t = base.clone();
        change(&mut t.spec);
        assert_ne!(t.spec.template_hash(), hash, "{:?}", t.spec);
    }
    assert_eq!(hash.len(), 16);
}

/// A revision is identified by this digest: a Drover that computed it differently (a new
/// field written by default, a renamed one) would restart every service on upgrade. Pinned.
#[test]
fn the_template_hash_of_a_fixed_spec_never_changes() {
    let mut t = svc();
    t.spec.env.insert("PORT".into(), "7777".into());
    assert_eq!(t.spec.template_hash(), PINNED_TEMPLATE_HASH);
}

const PINNED_TEMPLATE_HASH: &str = "df753a21e4e838f0";
