//! `drover apply`, `get`, `describe` and `delete` against a real etcd: what lands in etcd, what
//! is reported, and that bad input writes nothing.

mod common;

use std::time::{Duration, Instant};

use common::{manifest, task_doc, Cli};
use drover_api::manifest::List;
use drover_api::task::Task;
use drover_store::{Store, StoreConfig};
use drover_testkit::EtcdServer;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

/// The next line `get -w` prints, bounded so a silent watcher fails the test instead of hanging.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a line within 10 s")
        .expect("read")
        .expect("stdout open")
}

async fn store(server: &EtcdServer) -> Store {
    Store::connect(StoreConfig::new(server.endpoints()))
        .await
        .expect("store connects")
}

fn three_docs() -> String {
    [
        task_doc("alpha", 1),
        task_doc("beta", 2),
        task_doc("gamma", 3),
    ]
    .join("---\n")
}

#[tokio::test]
async fn apply_writes_readable_json_and_reapply_is_unchanged() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let (_dir, path) = manifest(&three_docs());
    let path = path.to_str().expect("utf-8 path");

    let out = cli.ok(&["apply", "-f", path]).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "task/alpha created",
            "task/beta created",
            "task/gamma created"
        ]
    );

    // etcdctl shows three keys whose values are JSON a person (and serde) can read.
    let dump = server
        .etcdctl(&["get", "--prefix", &format!("{}/tasks/", cli.prefix)])
        .await
        .expect("etcdctl get");
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines.len(), 6, "three keys and three values:\n{dump}");
    for pair in lines.chunks(2) {
        assert!(pair[0].starts_with(&format!("{}/tasks/default/", cli.prefix)));
        let task: Task = serde_json::from_str(pair[1]).expect("value is task JSON");
        assert_eq!(task.metadata.generation, 1);
    }

    // Re-applying reports unchanged and writes nothing: the store revision does not move.
    let store = store(&server).await;
    let before = store.list_raw("/").await.expect("list").revision;
    let out = cli.ok(&["apply", "-f", path]).await;
    assert!(out.lines().all(|l| l.ends_with(" unchanged")), "{out}");
    let after = store.list_raw("/").await.expect("list").revision;
    assert_eq!(before, after, "an unchanged apply must not write");

    // A change bumps the generation of that task only.
    let changed = [
        task_doc("alpha", 1),
        task_doc("beta", 5),
        task_doc("gamma", 3),
    ]
    .join("---\n");
    let (_dir2, path2) = manifest(&changed);
    let out = cli
        .ok(&["apply", "-f", path2.to_str().expect("utf-8")])
        .await;
    assert!(out.contains("task/beta configured"), "{out}");
    assert!(out.contains("task/alpha unchanged"), "{out}");
    let beta = store
        .get::<Task>(&format!("{}/tasks/default/beta", cli.prefix))
        .await
        .expect("get")
        .expect("beta exists");
    assert_eq!(beta.value.metadata.generation, 2);
    assert_eq!(beta.value.spec.replicas, 5);
}

#[tokio::test]
async fn a_manifest_with_one_bad_document_writes_nothing() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let bad = format!(
        "{}---\n{}---\napiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: third\nspec:\n  command: [\"true\"]\n  resources:\n    cpu: lots\n",
        task_doc("first", 1),
        task_doc("second", 1)
    );
    let (_dir, path) = manifest(&bad);
    let output = cli
        .run(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    assert!(!output.status.success());
    assert_eq!(
        output.status.code(),
        Some(65),
        "bad input exits with EX_DATAERR"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("manifest.yaml"), "names the file: {stderr}");
    assert!(
        stderr.contains("document 3"),
        "names the document: {stderr}"
    );
    assert!(stderr.contains("line "), "names the line: {stderr}");
    assert!(
        stderr.contains("spec.resources.cpu"),
        "names the field: {stderr}"
    );
    let listing = store(&server)
        .await
        .list_raw(&cli.prefix)
        .await
        .expect("list");
    assert!(
        listing.items.is_empty(),
        "nothing may be written: {:?}",
        listing.items
    );
}

#[tokio::test]
async fn get_output_round_trips_through_apply() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let (dir, path) = manifest(&three_docs());
    cli.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let stored: Vec<Task> = store(&server)
        .await
        .list::<Task>(&format!("{}/tasks/", cli.prefix))
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|v| v.value)
        .collect();

    // The spec part of each item is the stored task; `status` is observed state on top.
    let json = cli.ok(&["get", "tasks", "-o", "json"]).await;
    let mut from_json: List<serde_json::Value> =
        serde_json::from_str(&json).expect("-o json is a List");
    for item in &mut from_json.items {
        let status = item
            .as_object_mut()
            .and_then(|o| o.remove("status"))
            .expect("every task has a status");
        assert!(status["phase"].is_string(), "{status}");
    }
    let tasks: Vec<Task> = from_json
        .items
        .into_iter()
        .map(|v| serde_json::from_value(v).expect("a Task without its status"))
        .collect();
    assert_eq!(tasks, stored);

    for format in ["yaml", "json"] {
        let text = cli.ok(&["get", "tasks", "-o", format]).await;
        let file = dir.path().join(format!("out.{format}"));
        std::fs::write(&file, text).expect("write");
        let out = cli
            .ok(&["apply", "-f", file.to_str().expect("utf-8")])
            .await;
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(
            out.lines().all(|l| l.ends_with(" unchanged")),
            "-o {format} round-trips: {out}"
        );
    }
}

#[tokio::test]
async fn get_watch_prints_a_change_made_by_another_client() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let (_dir, path) = manifest(&task_doc("watched", 1));
    cli.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let mut child = cli.spawn(&["get", "tasks", "-w"]);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert!(next_line(&mut lines).await.starts_with("NAME"));
    assert!(next_line(&mut lines).await.starts_with("watched"));

    // Another client changes the task three times; each change must show up. The latency of
    // the median change is held to the promised second (the median, so one scheduling stall of
    // a loaded CI machine does not decide the outcome).
    let store = store(&server).await;
    let key = format!("{}/tasks/default/watched", cli.prefix);
    let mut latencies = Vec::new();
    for replicas in [4u32, 5, 6] {
        let mut task = store
            .get::<Task>(&key)
            .await
            .expect("get")
            .expect("exists")
            .value;
        task.spec.replicas = replicas;
        task.metadata.generation += 1;
        store.put(&key, &task, None).await.expect("put");
        let written = Instant::now();
        let line = next_line(&mut lines).await;
        latencies.push(written.elapsed());
        assert!(line.starts_with("watched"), "{line}");
        assert!(line.contains(&format!(" {replicas} ")), "{line}");
    }
    latencies.sort();
    eprintln!("get -w latencies: {latencies:?}");
    assert!(
        latencies[1] < Duration::from_secs(1),
        "median latency {:?}",
        latencies[1]
    );
    child.start_kill().expect("kill");
}

#[tokio::test]
async fn describe_and_delete_a_task() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let (_dir, path) = manifest(&task_doc("doomed", 2));
    cli.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let text = cli.ok(&["describe", "task", "doomed"]).await;
    assert!(text.contains("Name:           doomed"), "{text}");
    assert!(text.contains("2 desired"), "{text}");
    assert!(text.contains("Events:"), "{text}");

    assert_eq!(
        cli.ok(&["delete", "task", "doomed"]).await.trim(),
        "task/doomed deleted"
    );
    let output = cli.run(&["describe", "task", "doomed"]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("\"doomed\" not found"));
    let output = cli.run(&["delete", "task", "doomed"]).await;
    assert!(
        !output.status.success(),
        "deleting a missing task is an error"
    );
}

#[tokio::test]
async fn an_unreachable_etcd_is_a_clear_error_not_a_hang() {
    let port = drover_testkit::free_port();
    let cli = Cli::new(vec![format!("http://127.0.0.1:{port}")]);
    let started = Instant::now();
    let output = cli.run(&["get", "tasks"]).await;
    assert_eq!(output.status.code(), Some(69), "EX_UNAVAILABLE");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")),
        "names the endpoint: {stderr}"
    );
    assert!(stderr.contains("etcd unreachable"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    eprintln!("gave up after {:?}", started.elapsed());
}

#[tokio::test]
async fn describe_shows_dead_letters_and_why_a_task_waits() {
    use drover_api::deadletter::DeadLetter;
    use drover_api::keys::Keys;
    use drover_api::names::InstanceId;
    use drover_api::taskstate::TaskState;

    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let (_dir, path) = manifest(&task_doc("flaky", 1));
    cli.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let store = store(&server).await;
    let keys = Keys::new(&cli.prefix);
    let id = InstanceId::service("default", "flaky", 3).expect("id");
    let letter = DeadLetter {
        instance: id.clone(),
        namespace: "default".into(),
        task: "flaky".into(),
        run: None,
        attempts: 4,
        last_error: "CrashLoopBackOff: exited with code 3".into(),
        exit_code: Some(3),
        time: chrono::Utc::now(),
    };
    store
        .put(&keys.deadletter("default", &id), &letter, None)
        .await
        .expect("put");
    let state = TaskState {
        pending_reason: Some("Unschedulable: 0/3 nodes are available: 3 insufficient cpu".into()),
        ..TaskState::default()
    };
    store
        .put(&keys.taskstate("default", "flaky"), &state, None)
        .await
        .expect("put");
    let text = cli.ok(&["describe", "task", "flaky"]).await;
    assert!(text.contains("Dead letters:"), "{text}");
    assert!(text.contains(&id.to_string()), "{text}");
    assert!(
        text.contains("CrashLoopBackOff: exited with code 3"),
        "{text}"
    );
    assert!(
        text.contains("Waiting:        Unschedulable: 0/3 nodes"),
        "{text}"
    );
}

#[tokio::test]
async fn a_dependency_cycle_across_applies_is_refused_and_writes_nothing() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let doc = |name: &str, dep: &str| {
        format!(
            "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  command: [\"true\"]\n  restartPolicy: Never\n  dependsOn: [{dep}]\n"
        )
    };
    let (_d1, first) = manifest(&doc("fetch", "process"));
    cli.ok(&["apply", "-f", first.to_str().expect("utf-8")])
        .await;
    let (_d2, second) = manifest(&doc("process", "fetch"));
    let output = cli
        .run(&["apply", "-f", second.to_str().expect("utf-8")])
        .await;
    assert_eq!(output.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("process -> fetch -> process"), "{stderr}");
    let stored = store(&server)
        .await
        .get_raw(&format!("{}/tasks/default/process", cli.prefix))
        .await
        .expect("get");
    assert!(stored.is_none(), "the refused task must not be written");
}
