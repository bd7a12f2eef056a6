//! `--log-format json` on the real daemons: a controller and a process-driver agent run a task,
//! and every line either wrote to stderr must be one JSON object, with the fields of the spans
//! it was logged in, so that a log pipeline can follow the task and its instance by field.

mod common;

use std::time::Duration;

use common::{manifest, Daemon, Etcd};
use serde_json::Value;

/// Bound on each wait for the cluster.
const WAIT: Duration = Duration::from_secs(60);

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Parses every line of `log` as a JSON log record, failing on the first that is not one.
fn records(name: &str, log: &str) -> Vec<Value> {
    let records: Vec<Value> = log
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}\n--- log:\n{log}"));
            let object = record
                .as_object()
                .unwrap_or_else(|| panic!("{name}: not an object: {line}"));
            for key in ["timestamp", "level", "target"] {
                assert!(
                    object.get(key).is_some_and(Value::is_string),
                    "{name}: no {key}: {line}"
                );
            }
            assert!(
                object.get("fields").is_some_and(Value::is_object),
                "{name}: no fields object: {line}"
            );
            record
        })
        .collect();
    assert!(!records.is_empty(), "{name} logged nothing");
    records
}

/// Whether some span `record` was logged in (the current one or any around it) has `field`
/// set to a string that `matches`.
fn in_span_with(record: &Value, field: &str, matches: impl Fn(&str) -> bool) -> bool {
    let current = record.get("span").into_iter();
    let around = record
        .get("spans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    current.chain(around).any(|span| {
        span.get(field)
            .and_then(Value::as_str)
            .is_some_and(&matches)
    })
}

#[tokio::test]
async fn daemons_log_one_json_object_per_line_with_the_span_fields() {
    let etcd = Etcd::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut controller = Daemon::start_with_env(
        &etcd.cli,
        &["controller", "--id", "c", "--log-format", "json"],
        // Debug for the controller's own records: its per-event spans name the task.
        &[("RUST_LOG", "info,drover_controller=debug")],
    );
    let mut agent = Daemon::start_with_env(
        &etcd.cli,
        &[
            "agent",
            "--node",
            "n1",
            "--driver",
            "process",
            // Tests run as root; the task sets no spec.user.
            "--allow-root-tasks",
            "--state-dir",
            path(state.path()),
        ],
        // The flag's environment variable, as a unit file would set it.
        &[("DROVER_LOG_FORMAT", "json")],
    );
    common::node_key(&etcd, "n1").await;
    let (_dir, file) = manifest(&common::task_doc("jsonlog", 1));
    etcd.cli.ok(&["apply", "-f", path(&file)]).await;
    let running = common::wait_running(
        &etcd.store,
        &etcd.keys,
        1,
        &[("controller", &controller), ("agent", &agent)],
    )
    .await;
    let instance = running[0].id.to_string();

    // SIGTERM, so the shutdown records are in the logs too and every line is complete.
    agent.signal("TERM");
    controller.signal("TERM");
    assert!(agent.wait_exit(WAIT).await.is_some(), "agent did not stop");
    assert!(
        controller.wait_exit(WAIT).await.is_some(),
        "controller did not stop"
    );

    let controller_log = controller.log_text();
    let agent_log = agent.log_text();
    let from_controller = records("controller", &controller_log);
    let from_agent = records("agent", &agent_log);

    assert!(
        from_controller
            .iter()
            .any(|r| in_span_with(r, "reason", |_| true) && in_span_with(r, "id", |id| id == "c")),
        "no controller record in its reconcile span:\n{controller_log}"
    );
    assert!(
        from_controller
            .iter()
            .any(|r| in_span_with(r, "task", |t| t == "jsonlog")),
        "no controller record in a span naming the task:\n{controller_log}"
    );
    assert!(
        from_agent.iter().any(|r| {
            in_span_with(r, "instance", |i| i == instance)
                && in_span_with(r, "task", |t| t == "jsonlog")
                && in_span_with(r, "node", |n| n == "n1")
        }),
        "no agent record in a span naming instance {instance}:\n{agent_log}"
    );
}

#[tokio::test]
async fn a_bad_log_format_is_a_usage_error_naming_the_flag() {
    // Parsing fails before anything is dialled, so no etcd is needed.
    let cli = common::Cli::new(vec!["http://127.0.0.1:1".to_string()]);
    let output = cli.run(&["controller", "--log-format", "yaml"]).await;
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--log-format"), "{stderr}");

    let mut command = cli.command(&["get", "tasks"]);
    command.env("DROVER_LOG_FORMAT", "xml");
    let output = tokio::time::timeout(common::CLI_TIMEOUT, command.output())
        .await
        .expect("drover get finishes")
        .expect("drover runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--log-format"), "{stderr}");
}
