//! One writer per key, checked from outside: a watch of the whole prefix (etcd's own record of
//! every change, read with a plain etcd client) is joined on the revision with the write log of
//! every process of a scenario that uses every verb. Each etcd revision is made by exactly one
//! request, so the join names the process behind every change; the test fails if a key's values
//! come from two kinds of writer, if the writer is not the one docs/architecture.md's key table
//! names, or if a change comes from no logged process at all.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{manifest, Cli, Daemon};
use drover_api::instance::Instance;
use drover_api::keys::Keys;
use drover_api::taskstate::TaskState;
use drover_store::{Store, StoreConfig};
use drover_testkit::{wait_for, EtcdServer};
use etcd_client::{EventType, WatchOptions};

/// Who wrote: the kind of process, as the write log's file name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Role {
    Cli,
    Controller,
    Agent,
}

impl Role {
    fn of_log(path: &Path) -> Role {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("controller-") {
            Role::Controller
        } else if name.starts_with("agent-") {
            Role::Agent
        } else {
            Role::Cli
        }
    }
}

/// One change the watch saw.
#[derive(Debug, Clone)]
struct Change {
    revision: i64,
    key: String,
    put: bool,
    /// The lease the key had before a delete (0: none).
    prev_lease: i64,
}

/// A process in the scenario with its own write log.
struct Logs {
    dir: tempfile::TempDir,
    count: Mutex<usize>,
}

impl Logs {
    fn new() -> Logs {
        Logs {
            dir: tempfile::tempdir().expect("tempdir"),
            count: Mutex::new(0),
        }
    }

    /// A fresh log path for one process: `<role>-<n>-<what>.jsonl`.
    fn path(&self, role: &str, what: &str) -> String {
        let mut count = self.count.lock().expect("lock");
        *count += 1;
        let path = self.dir.path().join(format!("{role}-{count}-{what}.jsonl"));
        path.to_str().expect("utf-8").to_string()
    }

    /// revision → the logs that claim to have made it.
    fn claims(&self) -> HashMap<i64, Vec<PathBuf>> {
        let mut claims: HashMap<i64, Vec<PathBuf>> = HashMap::new();
        for entry in std::fs::read_dir(self.dir.path()).expect("read log dir") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read log");
            for line in text.lines() {
                let value: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: bad line {line:?}: {e}", path.display()));
                let revision = value["revision"].as_i64().expect("revision");
                claims.entry(revision).or_default().push(path.clone());
            }
        }
        claims
    }
}

/// The key table of docs/architecture.md: key kind (first path segment) → who may write its
/// values, as the "written by" column says.
fn documented_writers() -> BTreeMap<String, BTreeSet<Role>> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/architecture.md"
    ))
    .expect("read docs/architecture.md");
    let table = doc
        .split("| key | written by | value |")
        .nth(1)
        .expect("the key table");
    let mut writers = BTreeMap::new();
    for row in table.lines().skip(2) {
        if !row.starts_with("| `") {
            break;
        }
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let kind = cells[1].trim_matches('`').split('/').next().expect("kind");
        let who = cells[2];
        let mut roles = BTreeSet::new();
        if who.starts_with("all") {
            roles.extend([Role::Cli, Role::Controller, Role::Agent]);
        }
        if who.contains("users") || who.contains("operators") || who.contains("`drover ") {
            roles.insert(Role::Cli);
        }
        if who.contains("leader") || who.contains("replica") {
            roles.insert(Role::Controller);
        }
        if who.contains("agent") {
            roles.insert(Role::Agent);
        }
        assert!(!roles.is_empty(), "no writer understood in {row:?}");
        writers.insert(kind.to_string(), roles);
    }
    writers
}

/// Records every change under `prefix` from `from` on, until the task is aborted.
async fn watch_all(endpoints: Vec<String>, prefix: String, from: i64) -> Arc<Mutex<Vec<Change>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut client = etcd_client::Client::connect(endpoints, None)
        .await
        .expect("watch client");
    let options = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_start_revision(from);
    let mut stream = client
        .watch(prefix.as_str(), Some(options))
        .await
        .expect("watch");
    let sink = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok(Some(response)) = stream.message().await {
            let mut sink = sink.lock().expect("lock");
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                sink.push(Change {
                    revision: kv.mod_revision(),
                    key: kv.key_str().expect("utf-8 key").to_string(),
                    put: event.event_type() == EventType::Put,
                    prev_lease: event.prev_kv().map_or(0, |p| p.lease()),
                });
            }
        }
    });
    seen
}

fn job(name: &str, script: &str, extra: &str) -> String {
    format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  command: [sh, -c, {script:?}]\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 2\n  resources: {{cpu: 10m, memory: 1Mi}}\n{extra}"
    )
}

struct Scenario {
    cli: Cli,
    store: Store,
    keys: Keys,
    logs: Logs,
}

impl Scenario {
    /// Runs a CLI verb with its own write log; requires success.
    async fn verb(&self, args: &[&str]) -> String {
        let log = self.logs.path("cli", args[0]);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--write-log", &log]);
        self.cli.ok(&all).await
    }

    fn daemon(&self, role: &str, name: &str, args: &[&str]) -> Daemon {
        let log = self.logs.path(role, name);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--write-log", &log]);
        Daemon::start(&self.cli, &all)
    }

    async fn until<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        wait_for(Duration::from_secs(60), Duration::from_millis(200), check)
            .await
            .unwrap_or_else(|_| panic!("{what} within 60 s"))
    }

    async fn assignments_on(&self, node: &str) -> Vec<Instance> {
        self.store
            .list::<Instance>(&self.keys.node_assignments(node))
            .await
            .map(|l| l.items.into_iter().map(|i| i.value).collect())
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_key_has_one_writer_across_a_scenario_of_every_verb() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let store = Store::connect(StoreConfig::new(server.endpoints()))
        .await
        .expect("store");
    let keys = Keys::new(&cli.prefix);
    let from = store.prefix_revision(&cli.prefix).await.expect("revision") + 1;
    let changes = watch_all(server.endpoints(), cli.prefix.clone(), from).await;
    let s = Scenario {
        cli,
        store,
        keys,
        logs: Logs::new(),
    };

    let mut daemons = Vec::new();
    for id in ["c1", "c2"] {
        daemons.push(s.daemon(
            "controller",
            id,
            &["controller", "--id", id, "--lease-ttl", "2s"],
        ));
    }
    let mut state_dirs = Vec::new();
    for node in ["n0", "n1"] {
        let dir = tempfile::tempdir().expect("tempdir");
        daemons.push(s.daemon(
            "agent",
            node,
            &[
                "agent",
                "--node",
                node,
                "--driver",
                "process",
                // Tests run as root; their tasks set no spec.user.
                "--allow-root-tasks",
                "--lease-ttl",
                "4s",
                "--state-dir",
                dir.path().to_str().expect("utf-8"),
            ],
        ));
        state_dirs.push(dir);
    }
    s.until("both agents register", || async {
        let n = s.store.list_raw(&s.keys.nodes()).await.ok()?.items.len();
        (n == 2).then_some(())
    })
    .await;

    // apply: a service, a manual job, a job that dead-letters, a schedule that trips the breaker.
    let web = "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: web\nspec:\n  command: [sleep, \"3600\"]\n  replicas: 2\n  terminationGracePeriodSeconds: 2\n  resources: {cpu: 10m, memory: 1Mi}\n";
    let jobs = [
        job("once", "echo ran", "  trigger: manual\n"),
        job("flaky", "exit 3", "  maxRetries: 0\n"),
        job(
            "broken",
            "exit 1",
            "  every: 1s\n  maxConsecutiveFailures: 1\n",
        ),
    ];
    let (_web_dir, web_path) = manifest(web);
    let (_jobs_dir, jobs_path) = manifest(&jobs.join("---\n"));
    let web_path = web_path.to_str().expect("utf-8").to_string();
    let jobs_path = jobs_path.to_str().expect("utf-8").to_string();
    s.verb(&["apply", "-f", &web_path, "-f", &jobs_path]).await;
    s.until("web runs twice", || async {
        let n = s.assignments_on("n0").await.len() + s.assignments_on("n1").await.len();
        (n >= 2).then_some(())
    })
    .await;

    // The reading verbs write nothing; they run with a write log all the same.
    for args in [
        &["get", "tasks"][..],
        &["get", "instances", "-A"],
        &["get", "nodes"],
        &["get", "controllers"],
        &["get", "runs", "once"],
        &["get", "deadletters"],
        &["describe", "task", "web"],
    ] {
        s.verb(args).await;
    }
    let any_web = s
        .assignments_on("n0")
        .await
        .into_iter()
        .chain(s.assignments_on("n1").await)
        .next()
        .expect("a web instance");
    s.verb(&["logs", &any_web.id.to_string()]).await;

    s.verb(&["trigger", "once"]).await;
    s.until("the triggered run", || async {
        let runs = s
            .store
            .list_raw(&s.keys.runs_of("default", "once"))
            .await
            .ok()?;
        (!runs.items.is_empty()).then_some(())
    })
    .await;

    s.until("broken is suspended", || async {
        let state = s
            .store
            .get::<TaskState>(&s.keys.taskstate("default", "broken"))
            .await
            .ok()??;
        state.value.suspended.then_some(())
    })
    .await;
    s.verb(&["enable", "broken"]).await;

    let letter = s
        .until("flaky is dead-lettered", || {
            common::dead_letter_of(&s.store, &s.keys, "flaky")
        })
        .await;
    s.verb(&["retry", &letter.instance.to_string()]).await;

    s.verb(&["cordon", "n1"]).await;
    s.verb(&["uncordon", "n1"]).await;
    s.verb(&["drain", "n0", "--timeout", "60s"]).await;
    s.verb(&["uncordon", "n0"]).await;

    s.verb(&["delete", "task", "web"]).await;
    s.verb(&["delete", "-f", &jobs_path]).await;
    s.until("every assignment is gone", || async {
        let n = s.assignments_on("n0").await.len() + s.assignments_on("n1").await.len();
        (n == 0).then_some(())
    })
    .await;

    // A node dies: its lease expires and the leader records it (nodestate/).
    let n1 = daemons.pop().expect("agent n1");
    drop(n1);
    s.until("the leader records n1 dead", || async {
        s.store
            .get_raw(&s.keys.nodestate("n1"))
            .await
            .ok()?
            .map(|_| ())
    })
    .await;
    for daemon in &daemons {
        daemon.signal("TERM");
    }
    for daemon in &mut daemons {
        daemon.wait_exit(Duration::from_secs(30)).await;
    }

    // Everything up to the last revision has been seen by the watch.
    let last = s
        .store
        .prefix_revision(&s.cli.prefix)
        .await
        .expect("revision");
    let changes = s
        .until("the watch catches up", || async {
            let seen = changes.lock().expect("lock");
            seen.last()
                .is_some_and(|c| c.revision >= last)
                .then(|| seen.clone())
        })
        .await;
    judge(&s.keys, &changes, &s.logs.claims(), &documented_writers());
}

/// The checker: attributes every change to one process and applies the one-writer rules.
fn judge(
    keys: &Keys,
    changes: &[Change],
    claims: &HashMap<i64, Vec<PathBuf>>,
    documented: &BTreeMap<String, BTreeSet<Role>>,
) {
    let mut problems = Vec::new();
    // key → roles that put values into it.
    let mut putters: BTreeMap<&str, BTreeSet<Role>> = BTreeMap::new();
    let mut kinds_seen: BTreeSet<String> = BTreeSet::new();
    for change in changes {
        let kind = change
            .key
            .strip_prefix(&keys.all())
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("?")
            .to_string();
        kinds_seen.insert(kind.clone());
        let who: BTreeSet<Role> = claims
            .get(&change.revision)
            .map(|paths| paths.iter().map(|p| Role::of_log(p)).collect())
            .unwrap_or_default();
        let paths = claims.get(&change.revision).map_or(0, Vec::len);
        if paths > 1 {
            problems.push(format!(
                "revision {} ({}) claimed by {paths} processes",
                change.revision, change.key
            ));
        }
        let Some(&role) = who.iter().next() else {
            // No request of ours made it: only etcd ending a lease may change a key that way.
            if change.put || change.prev_lease == 0 {
                problems.push(format!(
                    "{} {} at revision {} by no logged process",
                    if change.put { "put" } else { "delete" },
                    change.key,
                    change.revision
                ));
            }
            continue;
        };
        if change.put {
            putters.entry(&change.key).or_default().insert(role);
            let allowed = documented.get(&kind);
            if !allowed.is_some_and(|a| a.contains(&role)) {
                problems.push(format!(
                    "{} written by {role:?}; docs/architecture.md says {allowed:?}",
                    change.key
                ));
            }
        } else if role != Role::Controller
            && !putters
                .get(change.key.as_str())
                .is_some_and(|p| p.contains(&role))
        {
            // A key is deleted by its writer, or by the leader when it consumes a request or
            // removes what belongs to a removed instance or task.
            problems.push(format!(
                "{} deleted by {role:?}, neither its writer nor the leader",
                change.key
            ));
        }
    }
    for (key, roles) in &putters {
        if roles.len() > 1 {
            problems.push(format!("{key} has {} writers: {roles:?}", roles.len()));
        }
    }
    let mut by_kind: BTreeMap<String, BTreeSet<Role>> = BTreeMap::new();
    for (key, roles) in &putters {
        let kind = key
            .strip_prefix(&keys.all())
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("?");
        by_kind.entry(kind.to_string()).or_default().extend(roles);
    }
    eprintln!(
        "{} changes, {} keys written; writers by kind: {by_kind:?}",
        changes.len(),
        putters.len()
    );
    // The scenario reaches every kind of key the table lists.
    for kind in documented.keys() {
        if !kinds_seen.contains(kind) {
            problems.push(format!("the scenario never changed a {kind}/ key"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems in {} changes:\n{}",
        problems.len(),
        changes.len(),
        problems.join("\n")
    );
}

#[test]
fn the_checker_reports_a_key_with_two_writers_and_a_change_nobody_made() {
    let keys = Keys::new("/t");
    let documented = documented_writers();
    let change = |revision, key: &str, put| Change {
        revision,
        key: format!("/t/{key}"),
        put,
        prev_lease: 0,
    };
    let changes = vec![
        change(2, "nodeinfo/n1", true),
        change(3, "nodeinfo/n1", true),
        change(4, "taskstate/default/a", true),
        change(5, "tasks/default/a", false),
    ];
    let mut claims = HashMap::new();
    claims.insert(2, vec![PathBuf::from("cli-1-cordon.jsonl")]);
    claims.insert(3, vec![PathBuf::from("controller-2-c1.jsonl")]);
    claims.insert(5, vec![PathBuf::from("agent-3-n0.jsonl")]);
    let outcome = std::panic::catch_unwind(|| judge(&keys, &changes, &claims, &documented));
    let message = outcome
        .expect_err("the checker must fail")
        .downcast::<String>()
        .expect("a message");
    assert!(
        message.contains("/t/nodeinfo/n1 has 2 writers"),
        "{message}"
    );
    assert!(
        message.contains("nodeinfo/n1 written by Controller"),
        "{message}"
    );
    assert!(
        message.contains("put /t/taskstate/default/a at revision 4 by no logged process"),
        "{message}"
    );
    assert!(
        message.contains("/t/tasks/default/a deleted by Agent"),
        "{message}"
    );
    assert!(documented["status"].contains(&Role::Agent));
    assert_eq!(documented["tasks"], BTreeSet::from([Role::Cli]));
}
