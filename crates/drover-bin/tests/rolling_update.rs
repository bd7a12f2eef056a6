//! Rolling updates of services (issue 14), end to end: real etcd, a real controller and real
//! agents, judged from outside Drover.
//!
//! - A rolling update of a 4-replica echo service (Docker) while a poller GETs `/health` on
//!   every published port every 100 ms: never fewer than `replicas − maxUnavailable` copies
//!   answer, and never more than `replicas + maxSurge` copies are live (answering, or their
//!   container running per `docker ps`).
//! - Changing only a label and the priority restarts nothing: the same containers, started at
//!   the same time per `docker inspect`, and no assignment created or deleted.
//! - `drain` of a node running all 3 copies of a service (process driver, `maxSurge: 1`,
//!   `maxUnavailable: 0`): the workload's own start/stop records never show more than 4 live
//!   copies, and the poller never sees fewer than 3 answering.

mod common;
mod rollout_kit;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{max_live, records};
use drover_testkit::wait_for;
use rollout_kit::{
    container_state, docker, docker_ready, echo_server_binary, short, timeline, watch, Cluster,
    Poller, Tick, IMAGE, SETTLE,
};

fn echo_service(name: &str, version: u32) -> String {
    format!(
        "apiVersion: drover.dev/v1
kind: Task
metadata:
  name: {name}
spec:
  image: {IMAGE}
  env: {{PORT: \"7777\", VERSION: \"{version}\"}}
  ports: [{{containerPort: 7777}}]
  replicas: 4
  resources: {{cpu: 10m, memory: 16Mi}}
  healthCheck:
    http: {{path: /health, port: 7777}}
    periodSeconds: 1
    failureThreshold: 3
  terminationGracePeriodSeconds: 5
  update:
    maxSurge: 1
    maxUnavailable: 0
    minHealthySeconds: 2
"
    )
}

#[tokio::test]
async fn a_rolling_update_keeps_every_replica_answering_and_stays_within_the_surge() {
    if !docker_ready().await {
        return;
    }
    let task = format!("roll-{:08x}", rand::random::<u32>());
    let mut cluster = Cluster::start("docker", &["n1", "n2"]).await;
    cluster.agent(0).await;
    cluster.agent(1).await;
    cluster.apply(&echo_service(&task, 1)).await;
    let (first, rollout) = cluster.settled(&task, 4).await;
    let old: BTreeSet<String> = first
        .iter()
        .filter_map(|s| s.container_id.as_deref().map(short))
        .collect();
    assert_eq!(old.len(), 4, "four containers: {first:?}");

    let poller = Poller::start(&cluster, &task);
    poller
        .until("all four original copies answering", |t| {
            old.is_subset(&t.answered)
        })
        .await;
    // Counting starts before the update is applied, so no moment of the rollout is missed.
    poller.count();
    cluster.apply(&echo_service(&task, 2)).await;
    let (last, done) = cluster.settled_after(&task, 4, rollout.revision).await;
    let new: BTreeSet<String> = last
        .iter()
        .filter_map(|s| s.container_id.as_deref().map(short))
        .collect();
    poller
        .until("the four new copies answering", |t| t.answered == new)
        .await;
    let ticks = poller.finish().await;

    let counted: Vec<&Tick> = ticks.iter().filter(|t| t.counted).collect();
    let story = timeline(&ticks, &old);
    eprintln!(
        "rollout {} -> {}: {:?}, {} counted ticks\n{story}",
        rollout.revision,
        done.revision,
        done.phase,
        counted.len()
    );
    assert!(
        new.is_disjoint(&old),
        "every copy replaced: {old:?} -> {new:?}"
    );
    let min_answering = counted.iter().map(|t| t.answered.len()).min();
    let max_live = counted.iter().map(|t| t.live()).max();
    assert!(
        min_answering.is_some_and(|m| m >= 4),
        "fewer than replicas - maxUnavailable = 4 copies answered (min {min_answering:?}):\n{story}"
    );
    assert!(
        max_live.is_some_and(|m| m <= 5),
        "more than replicas + maxSurge = 5 copies live (max {max_live:?}):\n{story}"
    );
    // Fail-capable: the poller saw the old copies and the new ones answer while counting.
    let answered: BTreeSet<&String> = counted.iter().flat_map(|t| &t.answered).collect();
    assert!(
        old.iter().all(|c| answered.contains(c)) && new.iter().all(|c| answered.contains(c)),
        "the poller saw old {old:?} and new {new:?} copies; it saw {answered:?}"
    );
    // Outside Drover: the containers now running are the new ones, with the new environment.
    let running = cluster.running_containers(&task).await.expect("docker ps");
    assert_eq!(running, new, "docker runs exactly the new copies");
    for id in &new {
        let env = docker(&["inspect", "--format", "{{json .Config.Env}}", id])
            .await
            .expect("docker inspect");
        assert!(env.contains("VERSION=2"), "{id} runs the update: {env}");
    }
}

fn calm_service(name: &str, tier: &str, priority: u32) -> String {
    format!(
        "apiVersion: drover.dev/v1
kind: Task
metadata:
  name: {name}
  labels: {{app: calm, tier: {tier}}}
spec:
  image: {IMAGE}
  env: {{PORT: \"7777\"}}
  ports: [{{containerPort: 7777}}]
  replicas: 2
  priority: {priority}
  resources: {{cpu: 10m, memory: 16Mi}}
  healthCheck:
    http: {{path: /health, port: 7777}}
    periodSeconds: 1
  update:
    minHealthySeconds: 2
"
    )
}

#[tokio::test]
async fn changing_only_a_label_and_the_priority_restarts_nothing() {
    if !docker_ready().await {
        return;
    }
    let task = format!("calm-{:08x}", rand::random::<u32>());
    let mut cluster = Cluster::start("docker", &["n1", "n2"]).await;
    cluster.agent(0).await;
    cluster.agent(1).await;
    cluster.apply(&calm_service(&task, "a", 10)).await;
    let (before, rollout) = cluster.settled(&task, 2).await;
    let ids: BTreeMap<String, String> = before
        .iter()
        .map(|s| {
            let id = s.container_id.as_deref().expect("a container id");
            (s.id.to_string(), short(id))
        })
        .collect();
    let containers: BTreeSet<String> = ids.values().cloned().collect();
    assert_eq!(
        cluster.running_containers(&task).await.expect("docker ps"),
        containers,
        "docker runs the containers the statuses name"
    );
    let mut started = BTreeMap::new();
    for id in &containers {
        let state = container_state(id).await.expect("docker inspect");
        assert!(state.0, "{id} runs");
        started.insert(id.clone(), state.1);
    }
    let (revision, assigned) = cluster.assignments(&task).await.expect("assignments");
    let assigned: BTreeMap<String, i64> = assigned
        .into_iter()
        .map(|a| (a.key, a.create_revision))
        .collect();
    let generation = cluster.generation(&task).await.expect("the task");
    let (changes, watching) = watch(
        cluster.etcd.server.endpoints(),
        cluster.etcd.keys.assignments(),
        revision + 1,
    )
    .await;

    cluster.apply(&calm_service(&task, "b", 20)).await;
    wait_for(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { (cluster.generation(&task).await? > generation).then_some(()) },
    )
    .await
    .expect("the relabelled task has a new generation");
    // A barrier: a task applied after the change is placed and runs, so the leader has
    // planned with the change in its snapshot, and once more when that copy came up.
    let sentinel = format!("sentinel-{:08x}", rand::random::<u32>());
    cluster
        .apply(&calm_service(&sentinel, "a", 10).replace("replicas: 2", "replicas: 1"))
        .await;
    cluster.settled(&sentinel, 1).await;
    let (after, now) = cluster.settled(&task, 2).await;
    watching.abort();

    assert_eq!(now.revision, rollout.revision, "no new revision: {now:?}");
    let ids_after: BTreeMap<String, String> = after
        .iter()
        .filter_map(|s| Some((s.id.to_string(), short(s.container_id.as_deref()?))))
        .collect();
    assert_eq!(ids_after, ids, "the same instances in the same containers");
    assert!(
        after.iter().all(|s| s.restart_count == 0),
        "nothing restarted: {after:?}"
    );
    assert_eq!(
        cluster.running_containers(&task).await.expect("docker ps"),
        containers,
        "docker still runs the same containers"
    );
    for (id, was) in &started {
        let (running, at) = container_state(id).await.expect("docker inspect");
        assert!(running, "{id} still runs");
        assert_eq!(&at, was, "{id} was not restarted");
    }
    let (_, assigned_after) = cluster.assignments(&task).await.expect("assignments");
    let assigned_after: BTreeMap<String, i64> = assigned_after
        .into_iter()
        .map(|a| (a.key, a.create_revision))
        .collect();
    assert_eq!(assigned_after, assigned, "the same assignments");
    let changes = changes.lock().expect("changes").clone();
    let touched: Vec<&(String, bool, bool)> = changes
        .iter()
        .filter(|(key, _, _)| assigned.contains_key(key) || key.contains(&task))
        .collect();
    eprintln!("assignment changes of {task} after the relabel: {touched:?}");
    // Fail-capable: the watch was live throughout, since it saw the sentinel placed.
    assert!(
        changes
            .iter()
            .any(|(key, _, created)| *created && key.contains(&sentinel)),
        "the watch saw the sentinel's assignment created: {changes:?}"
    );
    assert!(
        touched.iter().all(|(_, put, created)| *put && !*created),
        "no assignment of {task} created or deleted: {touched:?}"
    );
}

/// The echo server under the process driver, wrapped so that each copy appends `start` and
/// `stop` lines (shell pid, nanoseconds) to `records`: `stop` only once the server exited.
fn recorded_echo_service(name: &str, server: &Path, records: &Path) -> String {
    let (server, file) = (server.display(), records.display());
    let script = format!(
        "echo start $$ $(date +%s%N) >> {file}; \
         PORT=$DROVER_PORT_7777 {server} & child=$!; \
         trap 'kill -TERM $child 2>/dev/null; wait $child; echo stop $$ $(date +%s%N) >> {file}; exit 0' TERM; \
         wait $child; echo stop $$ $(date +%s%N) >> {file}"
    );
    format!(
        "apiVersion: drover.dev/v1
kind: Task
metadata:
  name: {name}
spec:
  command: [sh, -c, {script:?}]
  ports: [{{containerPort: 7777}}]
  replicas: 3
  resources: {{cpu: 10m, memory: 16Mi}}
  healthCheck:
    http: {{path: /health, port: 7777}}
    periodSeconds: 1
    failureThreshold: 3
  terminationGracePeriodSeconds: 10
  update:
    maxSurge: 1
    maxUnavailable: 0
    minHealthySeconds: 2
"
    )
}

#[tokio::test]
async fn a_drain_with_surge_keeps_three_answering_and_at_most_four_live() {
    let bin = tempfile::tempdir().expect("tempdir");
    let Some(server) = echo_server_binary(bin.path()).await else {
        eprintln!(
            "SKIPPED: no echo-server binary (set DROVER_ECHO_SERVER, or build {IMAGE} with hack/build-images.sh)"
        );
        return;
    };
    let witness = tempfile::tempdir().expect("tempdir");
    let file = witness.path().join("records");
    let task = "moving";
    let mut cluster = Cluster::start("process", &["n1", "n2"]).await;
    cluster.records = Some(file.clone());
    // Only n1 at first: all three copies land there.
    cluster.agent(0).await;
    cluster
        .apply(&recorded_echo_service(task, &server, &file))
        .await;
    let (first, _) = cluster.settled(task, 3).await;
    let n1 = cluster.nodes[0].clone();
    assert!(first.iter().all(|s| s.node == n1), "all on n1: {first:?}");
    let old: BTreeSet<String> = first
        .iter()
        .filter_map(|s| s.container_id.as_deref().map(short))
        .collect();
    cluster.agent(1).await;

    let poller = Poller::start(&cluster, task);
    poller
        .until("the three copies on n1 answering", |t| {
            old.is_subset(&t.answered)
        })
        .await;
    poller.count();
    let drain = cluster
        .etcd
        .cli
        .command(&["drain", &n1, "--timeout", "60s"])
        .output();
    let drained = tokio::time::timeout(SETTLE, drain)
        .await
        .expect("drain finishes")
        .expect("drain runs");
    assert!(
        drained.status.success(),
        "drain failed: {}\n{}",
        String::from_utf8_lossy(&drained.stderr),
        cluster.logs()
    );
    let (last, rollout) = cluster.settled(task, 3).await;
    let n2 = cluster.nodes[1].clone();
    assert!(
        last.iter().all(|s| s.node == n2),
        "all moved to n2: {last:?}"
    );
    let new: BTreeSet<String> = last
        .iter()
        .filter_map(|s| s.container_id.as_deref().map(short))
        .collect();
    poller
        .until("the three copies on n2 answering", |t| t.answered == new)
        .await;
    let ticks = poller.finish().await;
    // The old copies record their stop once their server exited.
    let seen = wait_for(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let seen = records(&file);
            (seen.iter().filter(|r| r.0 == "stop").count() >= 3).then_some(seen)
        },
    )
    .await
    .expect("the three old copies recorded their stop");

    let counted: Vec<&Tick> = ticks.iter().filter(|t| t.counted).collect();
    let story = timeline(&ticks, &old);
    eprintln!(
        "drain: rollout {rollout:?}, {} counted ticks, records {seen:?}\n{story}",
        counted.len()
    );
    assert!(
        max_live(&seen) <= 4,
        "the workload's records show more than replicas + maxSurge = 4 live copies: {seen:?}"
    );
    let min_answering = counted.iter().map(|t| t.answered.len()).min();
    assert!(
        min_answering.is_some_and(|m| m >= 3),
        "fewer than replicas - maxUnavailable = 3 copies answered (min {min_answering:?}):\n{story}"
    );
    let answered: BTreeSet<&String> = counted.iter().flat_map(|t| &t.answered).collect();
    assert!(
        old.iter().all(|c| answered.contains(c)) && new.iter().all(|c| answered.contains(c)),
        "the poller saw old {old:?} and new {new:?} copies; it saw {answered:?}"
    );
    assert_eq!(
        seen.iter().filter(|r| r.0 == "start").count(),
        6,
        "three copies, each replaced once: {seen:?}"
    );
}
