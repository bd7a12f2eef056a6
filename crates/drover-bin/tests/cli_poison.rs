//! Promise 7 on the read and apply paths: values that another etcd client wrote under every key
//! kind, none of which decode. Every read verb still answers, showing each bad key as Invalid
//! with its error; `apply` of other tasks keeps working, and applying a task of the same name
//! replaces the bad value.

mod common;

use common::{manifest, task_doc, Cli};
use drover_api::keys::Keys;
use drover_api::names::InstanceId;
use drover_store::{Store, StoreConfig};
use drover_testkit::EtcdServer;

/// One undecodable value per key kind the CLI reads.
fn poison(keys: &Keys) -> Vec<(String, &'static str)> {
    let bad = InstanceId::service("default", "bad", 0).expect("id");
    let web = InstanceId::service("default", "web", 0).expect("id");
    vec![
        (
            keys.task("default", "bad"),
            r#"{"spec":{"replicas":"many"}}"#,
        ),
        (keys.assignment("n1", &bad), r#""not an instance""#),
        (keys.status("n1", &web), r#"{"phase":"Sideways"}"#),
        (
            keys.legacy_status(&web),
            "{a status from before statuses moved",
        ),
        (keys.node("ghost"), "not json"),
        (keys.nodeinfo("ghost"), r#"{"cordoned":"yes"}"#),
        (keys.taskstate("default", "web"), r#"{"suspended":"maybe"}"#),
        (keys.deadletter("default", &bad), "[1,2]"),
        (keys.run("default", "web", 1), r#"{"run":"first"}"#),
        (keys.event("default", "foreign"), r#"{"reason":7}"#),
        (keys.controller("foreign"), "{"),
    ]
}

#[tokio::test]
async fn every_read_verb_shows_invalid_keys_and_apply_keeps_working() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let keys = Keys::new(&cli.prefix);
    let store = Store::connect(StoreConfig::new(server.endpoints()))
        .await
        .expect("store");
    let (_dir, web) = manifest(&task_doc("web", 1));
    cli.ok(&["apply", "-f", web.to_str().expect("utf-8")]).await;
    for (key, value) in poison(&keys) {
        store
            .put_raw(&key, value.as_bytes().to_vec(), None)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    for (args, shows) in [
        (vec!["get", "tasks"], keys.task("default", "bad")),
        (vec!["get", "tasks"], keys.taskstate("default", "web")),
        (vec!["get", "instances"], "default.bad.0".to_string()),
        (vec!["get", "nodes"], keys.node("ghost")),
        (vec!["get", "nodes"], keys.nodeinfo("ghost")),
        (vec!["get", "runs", "web"], keys.run("default", "web", 1)),
        (
            vec!["get", "deadletters"],
            "deadletter/default/default.bad.0".into(),
        ),
        (vec!["get", "controllers"], keys.controller("foreign")),
        (
            vec!["describe", "task", "web"],
            keys.taskstate("default", "web"),
        ),
        (vec!["describe", "task", "bad"], keys.task("default", "bad")),
    ] {
        let out = cli.ok(&args).await;
        assert!(out.contains("Invalid"), "{args:?} shows Invalid:\n{out}");
        assert!(out.contains(&shows), "{args:?} names {shows}:\n{out}");
    }
    let out = cli.ok(&["get", "instances", "-o", "wide"]).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("default.web.0") || l.contains("Invalid")),
        "{out}"
    );
    // enable does not patch a state it cannot read into one that releases the task.
    let enable = cli.run(&["enable", "web"]).await;
    assert!(!enable.status.success());
    assert!(String::from_utf8_lossy(&enable.stderr).contains("Invalid"));
    let state = store
        .get_raw(&keys.taskstate("default", "web"))
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(
        state.value,
        br#"{"suspended":"maybe"}"#.to_vec(),
        "left as it was"
    );

    // A task that decodes but breaks apply's rules is Invalid with its reason.
    let cron = serde_json::json!({
        "apiVersion": "drover.dev/v1", "kind": "Task",
        "metadata": {"name": "badcron", "namespace": "default", "generation": 1},
        "spec": {"command": ["true"], "schedule": "every tuesday", "restartPolicy": "Never"},
    });
    store
        .put_raw(
            &keys.task("default", "badcron"),
            cron.to_string().into_bytes(),
            None,
        )
        .await
        .expect("put");
    let out = cli.ok(&["get", "tasks"]).await;
    assert!(
        out.lines().any(|l| l.contains("tasks/default/badcron")
            && l.contains("Invalid")
            && l.contains("spec.schedule")),
        "{out}"
    );

    // JSON stays a document a script can parse, the bad keys also on stderr; every task is an
    // item, the ones that do not decode or break the rules with `status.phase: Invalid`.
    let json = cli.run(&["get", "tasks", "-o", "json"]).await;
    assert!(json.status.success());
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json parses");
    let phases: Vec<(String, String)> = parsed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                i["status"]["phase"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let invalid: Vec<&str> = phases
        .iter()
        .filter(|(_, p)| p == "Invalid")
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(invalid, ["bad", "badcron"], "{parsed}");
    assert_eq!(phases.len(), 3, "{parsed}");
    assert!(String::from_utf8_lossy(&json.stderr).contains("Invalid"));

    // apply keeps working, and applying "bad" replaces the value that did not decode.
    let (_dir2, more) = manifest(&[task_doc("other", 1), task_doc("bad", 2)].join("---\n"));
    let out = cli
        .ok(&["apply", "-f", more.to_str().expect("utf-8")])
        .await;
    assert!(out.contains("task/other created"), "{out}");
    assert!(out.contains("task/bad configured"), "{out}");
    let bad = store
        .get::<drover_api::task::Task>(&keys.task("default", "bad"))
        .await
        .expect("decodes now")
        .expect("exists");
    assert_eq!(bad.value.spec.replicas, 2);
}

/// `get -w` keeps its view current from the watch: a value another client writes while it
/// watches (garbage, then a good one, then a deletion) is shown as it comes, Invalid first.
#[tokio::test]
async fn get_watch_shows_a_foreign_value_as_invalid_then_as_it_heals() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let keys = Keys::new(&cli.prefix);
    let store = Store::connect(StoreConfig::new(server.endpoints()))
        .await
        .expect("store");
    let id = InstanceId::service("default", "web", 0).expect("id");
    let running = |id: &str| {
        serde_json::json!({
            "id": id, "node": "n1", "phase": "Running", "generation": 1, "attempt": 0,
            "updatedAt": "2026-01-01T00:00:00Z"
        })
    };
    let other = InstanceId::service("default", "other", 0).expect("id");
    store
        .put(
            &keys.status("n1", &other),
            &running("default.other.0"),
            None,
        )
        .await
        .expect("put");
    let mut child = cli.spawn(&["get", "instances", "-w"]);
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        child.stdout.take().expect("stdout"),
    ));
    // The listing (header and one row) shows the watch is established.
    assert!(next_line(&mut lines).await.starts_with("NAME"));
    assert!(next_line(&mut lines).await.starts_with("default.other.0"));

    let status = keys.status("n1", &id);
    store
        .put_raw(&status, b"\x00not json".to_vec(), None)
        .await
        .expect("put");
    let line = next_line(&mut lines).await;
    assert!(
        line.contains("default.web.0") && line.contains("Invalid"),
        "{line}"
    );

    store
        .put(&status, &running("default.web.0"), None)
        .await
        .expect("put");
    let line = next_line(&mut lines).await;
    assert!(
        line.contains("default.web.0") && line.contains("Running"),
        "{line}"
    );

    store.delete(&status).await.expect("delete");
    assert_eq!(
        next_line(&mut lines).await,
        "instance/default.web.0 deleted"
    );
    child.start_kill().expect("kill");
}

async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
        .await
        .expect("a line within 10 s")
        .expect("read")
        .expect("stdout open")
}
