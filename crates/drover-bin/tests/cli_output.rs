//! Output a script can rely on, end to end against a real etcd, controller and process agent:
//! `get -o json` carries a status block (a task the circuit breaker Suspended, one whose value
//! does not decode as Invalid), `-l` selects tasks, instances and nodes, `-o name` and `-o
//! jsonpath` print what scripts read, and values another client wrote show as Invalid.

mod common;

use std::time::Duration;

use common::{manifest, Cli, Daemon};
use drover_api::keys::Keys;
use drover_api::names::InstanceId;
use drover_store::{Store, StoreConfig};
use drover_testkit::{wait_for, EtcdServer};
use serde_json::Value;

const TASKS: &str = "apiVersion: drover.dev/v1
kind: Task
metadata:
  name: web
  labels: {app: web, tier: front}
spec:
  command: [sleep, \"3600\"]
  terminationGracePeriodSeconds: 1
  resources: {cpu: 10m, memory: 1Mi}
---
apiVersion: drover.dev/v1
kind: Task
metadata:
  name: broken
  labels: {app: batch}
spec:
  command: [/bin/false]
  restartPolicy: Never
  every: 1s
  maxConsecutiveFailures: 2
  terminationGracePeriodSeconds: 1
  resources: {cpu: 10m, memory: 1Mi}
";

fn items(json: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(json).expect("-o json parses");
    list["items"].as_array().expect("a List").clone()
}

fn named<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items
        .iter()
        .find(|i| i["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{name} listed: {items:?}"))
}

#[tokio::test]
async fn status_blocks_selectors_names_and_jsonpath() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let keys = Keys::new(&cli.prefix);
    let store = Store::connect(StoreConfig::new(server.endpoints()))
        .await
        .expect("store");
    let state = tempfile::tempdir().expect("tempdir");
    let controller = Daemon::start(&cli, &["controller", "--id", "c", "--lease-ttl", "2s"]);
    let agent = Daemon::start(
        &cli,
        &[
            "agent",
            "--node",
            "n0",
            "--driver",
            "process",
            "--label",
            "disk=ssd",
            // Tests run as root; their tasks set no spec.user.
            "--allow-root-tasks",
            "--lease-ttl",
            "4s",
            "--state-dir",
            state.path().to_str().expect("utf-8"),
        ],
    );
    let (_dir, path) = manifest(TASKS);
    cli.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    // Values no Drover process wrote: a task, a status and a node that do not decode.
    let stray = InstanceId::service("default", "web", 9).expect("id");
    for (key, value) in [
        (keys.task("default", "junk"), "not json at all"),
        (keys.status("n0", &stray), r#"{"phase":"Sideways"}"#),
        (keys.node("ghost"), "{garbage"),
    ] {
        store
            .put_raw(&key, value.as_bytes().to_vec(), None)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    // The real path to Suspended: the controller runs /bin/false until its breaker trips.
    let phases = "{range .items[*]}{.metadata.name}={.status.phase}{\"\\n\"}{end}";
    let jsonpath = format!("jsonpath={phases}");
    let seen = wait_for(
        Duration::from_secs(90),
        Duration::from_millis(300),
        || async {
            let out = cli.run(&["get", "tasks", "-o", &jsonpath]).await;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (text.contains("broken=Suspended") && text.contains("web=Running")).then_some(text)
        },
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "never Suspended and Running\ncontroller:\n{}\nagent:\n{}",
            controller.log_text(),
            agent.log_text()
        )
    });
    assert!(seen.contains("junk=Invalid"), "{seen}");

    // The status block of each kind of task.
    let tasks = items(&cli.ok(&["get", "tasks", "-o", "json"]).await);
    let broken = &named(&tasks, "broken")["status"];
    assert_eq!(broken["phase"], "Suspended", "{broken}");
    assert_eq!(broken["suspended"], true);
    assert_eq!(broken["state"]["suspended"], true, "taskstate as stored");
    assert_eq!(broken["state"]["consecutiveFailures"], 2);
    assert_eq!(broken["lastRun"]["outcome"], "Failed", "{broken}");
    let suspended = broken["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Suspended")
        .expect("a Suspended condition");
    assert_eq!(suspended["status"], "True");
    assert_eq!(suspended["reason"], "CircuitBreakerOpen");
    let web = &named(&tasks, "web")["status"];
    assert_eq!(
        (&web["desired"], &web["ready"], &web["available"]),
        (&Value::from(1), &Value::from(1), &Value::from(1)),
        "{web}"
    );
    let junk = named(&tasks, "junk");
    assert_eq!(junk["status"]["phase"], "Invalid", "{junk}");
    assert_eq!(
        junk["status"]["invalid"]["key"],
        keys.task("default", "junk")
    );
    assert!(junk["status"]["invalid"]["error"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));

    // -l on tasks, with -o name; the task without labels is only selected by !app.
    for (selector, expected) in [
        ("app=web", "task/web\n"),
        ("app in (web,batch),tier!=front", "task/broken\n"),
        ("tier", "task/web\n"),
        ("!app", "task/junk\n"),
        // notin, like !=, also holds where the key is absent (kubectl).
        ("app notin (web)", "task/broken\ntask/junk\n"),
        ("app=nothing", ""),
    ] {
        let out = cli
            .ok(&["get", "tasks", "-l", selector, "-o", "name"])
            .await;
        assert_eq!(out, expected, "-l {selector}");
    }
    let labels = cli.ok(&["get", "tasks", "--show-labels"]).await;
    assert!(
        labels
            .lines()
            .any(|l| l.starts_with("web") && l.ends_with("app=web,tier=front")),
        "{labels}"
    );

    // jsonpath: an index and a filter.
    let first = cli
        .ok(&["get", "tasks", "-o", "jsonpath={.items[0].metadata.name}"])
        .await;
    assert_eq!(first, "broken");
    let running = cli
        .ok(&[
            "get",
            "tasks",
            "-o",
            "jsonpath={.items[?(@.status.phase==\"Running\")].metadata.name}",
        ])
        .await;
    assert_eq!(running, "web");

    // Instances carry their task's labels; the stray status is an Invalid instance.
    let out = cli
        .ok(&["get", "instances", "-l", "app=web", "-o", "name"])
        .await;
    assert_eq!(out, "instance/default.web.0\ninstance/default.web.9\n");
    assert_eq!(
        cli.ok(&["get", "instances", "-l", "app=batch,tier", "-o", "name"])
            .await,
        ""
    );
    let instances = items(
        &cli.ok(&["get", "instances", "-l", "tier=front", "-o", "json"])
            .await,
    );
    let running = &named(&instances, "default.web.0")["status"];
    assert_eq!(running["phase"], "Running", "{running}");
    assert_eq!(running["node"], "n0");
    assert_eq!(running["health"], "Unknown");
    assert_eq!(running["restarts"], 0);
    let stray = &named(&instances, "default.web.9")["status"];
    assert_eq!(stray["phase"], "Invalid", "{stray}");
    assert!(stray["error"].is_string(), "{stray}");

    // Nodes by their labels; the node whose registration does not decode is Invalid.
    assert_eq!(
        cli.ok(&["get", "nodes", "-l", "disk=ssd", "-o", "name"])
            .await,
        "node/n0\n"
    );
    assert_eq!(
        cli.ok(&["get", "nodes", "-l", "!disk", "-o", "name"]).await,
        "node/ghost\n"
    );
    let nodes = items(&cli.ok(&["get", "nodes", "-o", "json"]).await);
    let n0 = &named(&nodes, "n0")["status"];
    assert_eq!(n0["phase"], "Ready", "{n0}");
    assert_eq!(n0["lease"], "Held");
    assert_eq!(n0["cordoned"], false);
    assert!(n0["instances"].as_u64().is_some_and(|n| n >= 1), "{n0}");
    assert!(n0["capacity"]["cpu"].is_string(), "{n0}");
    assert_eq!(named(&nodes, "ghost")["status"]["phase"], "Invalid");

    // A selector that does not parse is a usage error naming the part.
    let bad = cli
        .run(&["get", "nodes", "-l", "disk=ssd,app in web"])
        .await;
    assert_eq!(bad.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("app in web"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // describe node and instance.
    let node = cli.ok(&["describe", "node", "n0"]).await;
    assert!(
        node.contains("default.web.0") && node.contains("Ready"),
        "{node}"
    );
    let instance = cli.ok(&["describe", "instance", "default.web.0"]).await;
    assert!(
        instance.contains("Running") && instance.contains("n0"),
        "{instance}"
    );

    // What -o yaml prints (status and all) applies back unchanged.
    let yaml = cli.ok(&["get", "tasks", "-l", "app", "-o", "yaml"]).await;
    let (_out, file) = manifest(&yaml);
    let out = cli
        .ok(&["apply", "-f", file.to_str().expect("utf-8")])
        .await;
    assert_eq!(out, "task/broken unchanged\ntask/web unchanged\n", "{yaml}");
}

#[tokio::test]
async fn events_dry_run_and_diff() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let keys = Keys::new(&cli.prefix);
    let store = Store::connect(StoreConfig::new(server.endpoints()))
        .await
        .expect("store");
    let doc = |replicas: u32| {
        format!(
            "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: web\nspec:\n  command: [sleep, \"3600\"]\n  replicas: {replicas}\n"
        )
    };
    let (_dir, one) = manifest(&doc(1));
    let one = one.to_str().expect("utf-8").to_string();
    cli.ok(&["apply", "-f", &one]).await;

    // Events, written as the controller and agents write them, and one that does not decode.
    let event = |time: &str, kind: &str, name: &str, reason: &str| {
        serde_json::json!({
            "time": time, "namespace": "default", "kind": kind, "name": name,
            "reason": reason, "message": format!("{reason} happened"), "source": "controller"
        })
        .to_string()
    };
    for (id, value) in [
        ("b", event("2026-01-01T00:00:02Z", "Task", "web", "Second")),
        (
            "a",
            event("2026-01-01T00:00:01Z", "Instance", "default.web.0", "First"),
        ),
        ("c", event("2026-01-01T00:00:03Z", "Node", "n1", "NodeDead")),
        ("z", "{\"reason\": 7".to_string()),
    ] {
        store
            .put_raw(&keys.event("default", id), value.into_bytes(), None)
            .await
            .expect("put");
    }
    let all = cli.run(&["get", "events", "-o", "json"]).await;
    assert!(all.status.success());
    let reasons: Vec<String> = items(&String::from_utf8_lossy(&all.stdout))
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(reasons, ["First", "Second", "NodeDead"], "oldest first");
    assert!(String::from_utf8_lossy(&all.stderr).contains("Invalid"));
    let table = cli.ok(&["get", "events"]).await;
    assert!(table.contains(&keys.event("default", "z")), "{table}");
    assert_eq!(
        cli.ok(&["get", "events", "--for", "task/web", "-o", "name"])
            .await,
        "event/a\nevent/b\n"
    );
    assert_eq!(
        cli.ok(&[
            "get",
            "events",
            "--for",
            "node/n1",
            "-o",
            "jsonpath={.items[*].reason}"
        ])
        .await,
        "NodeDead"
    );
    let bad = cli.run(&["get", "events", "--for", "pod/x"]).await;
    assert_eq!(bad.status.code(), Some(64));

    // diff: nothing to show exits 0; a change shows as a unified diff and exits 1.
    let same = cli.run(&["diff", "-f", &one]).await;
    assert_eq!(same.status.code(), Some(0));
    assert!(same.stdout.is_empty());
    let (_dir2, two) = manifest(&doc(2));
    let two = two.to_str().expect("utf-8").to_string();
    let changed = cli.run(&["diff", "-f", &two]).await;
    assert_eq!(changed.status.code(), Some(1));
    let text = String::from_utf8_lossy(&changed.stdout);
    assert!(
        text.contains("-  replicas: 1\n") && text.contains("+  replicas: 2\n"),
        "{text}"
    );
    assert!(
        text.contains("-  generation: 1\n+  generation: 2\n"),
        "{text}"
    );
    let (_dir3, broken) = manifest(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata: {name: web}\nspec: {replicas: many}\n",
    );
    let error = cli
        .run(&["diff", "-f", broken.to_str().expect("utf-8")])
        .await;
    assert_eq!(
        error.status.code(),
        Some(65),
        "bad input is an error, not a diff"
    );

    // apply --dry-run says what would change and writes nothing.
    let before = store
        .get_raw(&keys.task("default", "web"))
        .await
        .expect("get")
        .expect("stored");
    let out = cli.ok(&["apply", "--dry-run", "-f", &two]).await;
    assert_eq!(out, "task/web configured (dry run)\n");
    let after = store
        .get_raw(&keys.task("default", "web"))
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(before.mod_revision, after.mod_revision, "nothing written");
}
