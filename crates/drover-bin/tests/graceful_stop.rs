//! Promise 6 on agent shutdown, judged by the workload itself: every copy appends `start` and
//! `stop` lines (pid, nanoseconds) to a file outside Drover, and takes 5 s to stop after
//! SIGTERM. When its agent gets SIGTERM, the replacement on the other node must start only
//! after the old copy has exited: the agent stops its copies first and releases its lease last.
//! Checked for a single-replica service and for a job run retried elsewhere, and for an agent
//! cut off from etcd (lease loss): there the old copy is killed at its fencing deadline, before
//! it can record its stop, so the test itself watches the old pid in `/proc` as the witness.
//! `drover drain` of the node obeys the same rule without surge, and with `maxSurge: 1` the
//! records never show more than two live copies.
//! Last, an agent SIGKILLed and restarted while etcd is down for 3 s adopts its copies: the
//! same pids, and the workload recorded no second start; and one restarted through a proxy
//! that loses the reply to its registration txn keeps its node alive and its copies in place.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{manifest, max_live, records, Cli, Daemon};
use drover_api::instance::{InstanceStatus, Phase};
use drover_api::keys::Keys;
use drover_store::{Store, StoreConfig};
use drover_testkit::TcpProxy;
use drover_testkit::{process_alive as alive, wait_for, EtcdServer};

/// A workload that records its own life and needs 5 s to stop.
fn witness_command(records: &Path) -> String {
    let file = records.display();
    format!(
        "echo start $$ $(date +%s%N) >> {file}; \
         trap 'sleep 5; echo stop $$ $(date +%s%N) >> {file}; exit 0' TERM; \
         while true; do sleep 0.1; done"
    )
}

/// A single-replica service running the witness workload.
fn solo_service(records: &Path) -> String {
    format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: solo\nspec:\n  command: [sh, -c, \"{}\"]\n  terminationGracePeriodSeconds: 30\n",
        witness_command(records)
    )
}

/// The single-replica witness service allowed one extra copy while it moves.
fn surging_service(records: &Path) -> String {
    format!("{}  update:\n    maxSurge: 1\n", solo_service(records))
}

/// The single-replica witness service allowed no extra copy (`maxSurge` defaults to 1): a move
/// stops the copy first.
fn unsurging_service(records: &Path) -> String {
    format!("{}  update:\n    maxSurge: 0\n", solo_service(records))
}

/// A job running the witness workload, retried when a run fails.
fn retried_job(records: &Path) -> String {
    format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: once\nspec:\n  command: [sh, -c, \"{}\"]\n  restartPolicy: Never\n  maxRetries: 2\n  terminationGracePeriodSeconds: 30\n",
        witness_command(records)
    )
}

/// How the agent holding the copy loses it.
#[derive(Clone, Copy, PartialEq)]
enum Loss {
    /// `kill -TERM` of the agent.
    Sigterm,
    /// The agent's connection to etcd is cut: its lease runs out.
    CutOff,
    /// `drover drain` of its node.
    Drain,
}

/// Nanoseconds since the epoch, the clock `date +%s%N` uses.
fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Polls `pid` every 10 ms until it is gone; returns when that was seen (epoch nanoseconds).
fn watch_death(pid: u32) -> tokio::task::JoinHandle<u128> {
    tokio::spawn(async move {
        while alive(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        now_nanos()
    })
}

/// `budget`: the most live copies the task allows (replicas + surge). With 1, the replacement
/// must start after the old copy exited; with more, the records must stay within it.
async fn scenario(loss: Loss, budget: usize, task_yaml: impl FnOnce(&Path) -> String) {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    // Each agent reaches etcd through its own proxy, so one can be cut off.
    let proxies = [
        TcpProxy::start(server.client_addr()).await,
        TcpProxy::start(server.client_addr()).await,
    ];
    let store = Store::connect(StoreConfig::new(server.endpoints()))
        .await
        .expect("store");
    let keys = Keys::new(&cli.prefix);
    let witness = tempfile::tempdir().expect("tempdir");
    let file = witness.path().join("records");
    let states = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let _controller = Daemon::start(&cli, &["controller", "--id", "c", "--lease-ttl", "2s"]);
    let mut agents: Vec<(String, Daemon)> = ["a", "b"]
        .iter()
        .zip(&states)
        .zip(&proxies)
        .map(|((node, state), proxy)| {
            let via = Cli {
                endpoints: vec![proxy.url()],
                prefix: cli.prefix.clone(),
                access: Vec::new(),
            };
            let daemon = Daemon::start(
                &via,
                &[
                    "agent",
                    "--node",
                    node,
                    "--driver",
                    "process",
                    // Tests run as root; their tasks set no spec.user.
                    "--allow-root-tasks",
                    "--lease-ttl",
                    "3s",
                    "--state-dir",
                    state.path().to_str().expect("utf-8"),
                ],
            );
            ((*node).to_string(), daemon)
        })
        .collect();
    wait_for(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let n = store.list_raw(&keys.nodes()).await.ok()?.items.len();
            (n == 2).then_some(())
        },
    )
    .await
    .expect("both agents register");

    let (_dir, path) = manifest(&task_yaml(&file));
    cli.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let first = wait_for(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let running = common::running_statuses(&store, &keys).await?;
            let first = running.into_iter().next()?;
            (records(&file).len() == 1).then_some(first)
        },
    )
    .await
    .expect("the first copy runs and recorded its start");

    let index = agents
        .iter()
        .position(|(n, _)| *n == first.node)
        .expect("its agent");
    let old_pid = records(&file)[0].1;
    let death = watch_death(old_pid);
    let (_, old_agent) = &mut agents[index];
    match loss {
        Loss::Sigterm => {
            old_agent.signal("TERM");
            let exited = old_agent.wait_exit(Duration::from_secs(30)).await;
            assert!(exited.is_some(), "the agent exits after stopping its copy");
        }
        Loss::CutOff => proxies[index].cut(),
        Loss::Drain => {
            cli.ok(&["drain", &first.node, "--timeout", "60s"]).await;
        }
    }

    let seen = wait_for(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let seen = records(&file);
            (seen.iter().filter(|r| r.0 == "start").count() >= 2).then_some(seen)
        },
    )
    .await
    .expect("a replacement starts on the other node");
    let died = tokio::time::timeout(Duration::from_secs(30), death)
        .await
        .expect("the old copy dies")
        .expect("watcher");
    eprintln!("workload records: {seen:?}; old pid {old_pid} seen gone at {died}");
    let replacement = seen
        .iter()
        .find(|r| r.0 == "start" && r.1 != old_pid)
        .expect("the replacement recorded its start");
    // The old copy's end: its own stop record (SIGTERM path) or its death as seen from
    // outside (killed at the fencing deadline), whichever is known; the poll adds <= 10 ms.
    let recorded_stop = seen
        .iter()
        .find(|r| r.0 == "stop" && r.1 == old_pid)
        .map(|r| r.2);
    if loss != Loss::CutOff {
        assert!(
            recorded_stop.is_some(),
            "a graceful stop runs the workload's own handler"
        );
    }
    if budget > 1 {
        assert!(
            max_live(&seen) <= budget,
            "more than {budget} live copies: {seen:?}"
        );
        return;
    }
    let ended = recorded_stop.map_or(died, |s| s.min(died));
    assert!(
        replacement.2 >= ended,
        "the replacement started {} ms before the old copy exited",
        (ended - replacement.2) / 1_000_000
    );
    if recorded_stop.is_some() {
        assert_eq!(max_live(&seen), 1, "never two live copies: {seen:?}");
    }
}

#[tokio::test]
async fn sigterm_of_an_agent_stops_a_service_copy_before_its_replacement_starts() {
    scenario(Loss::Sigterm, 1, solo_service).await;
}

#[tokio::test]
async fn sigterm_of_an_agent_stops_a_job_run_before_its_retry_starts() {
    scenario(Loss::Sigterm, 1, retried_job).await;
}

#[tokio::test]
async fn an_agent_cut_off_from_etcd_has_its_copy_gone_before_the_replacement_starts() {
    scenario(Loss::CutOff, 1, solo_service).await;
}

#[tokio::test]
async fn a_job_run_on_a_cut_off_agent_is_gone_before_its_retry_starts() {
    scenario(Loss::CutOff, 1, retried_job).await;
}

#[tokio::test]
async fn a_drain_without_surge_stops_the_copy_before_its_replacement_starts() {
    scenario(Loss::Drain, 1, unsurging_service).await;
}

#[tokio::test]
async fn a_drain_with_surge_never_exceeds_replicas_plus_surge() {
    scenario(Loss::Drain, 2, surging_service).await;
}

#[test]
fn max_live_counts_overlap_from_records() {
    let r = |k: &str, p, t| (k.to_string(), p, t);
    assert_eq!(
        max_live(&[r("start", 1, 1), r("stop", 1, 5), r("start", 2, 6)]),
        1
    );
    assert_eq!(
        max_live(&[r("start", 1, 1), r("start", 2, 3), r("stop", 1, 5)]),
        2
    );
}

#[tokio::test]
async fn an_agent_restarted_while_etcd_is_down_adopts_its_copies_and_starts_none_twice() {
    let common::Etcd {
        mut server,
        cli,
        store,
        keys,
    } = common::Etcd::start().await;
    let witness = tempfile::tempdir().expect("tempdir");
    let file = witness.path().join("records");
    let state = tempfile::tempdir().expect("tempdir");
    let agent_args = [
        "agent",
        "--node",
        "a",
        "--driver",
        "process",
        // Tests run as root; their tasks set no spec.user.
        "--allow-root-tasks",
        "--lease-ttl",
        "10s",
        "--state-dir",
        state.path().to_str().expect("utf-8"),
    ];
    let _controller = Daemon::start(&cli, &["controller", "--id", "c", "--lease-ttl", "2s"]);
    let mut agent = Daemon::start(&cli, &agent_args);
    let doc = format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: pair\nspec:\n  command: [sh, -c, \"{}\"]\n  replicas: 2\n",
        witness_command(&file)
    );
    let (_dir, path) = manifest(&doc);
    cli.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let running = || async {
        let statuses = store
            .list_checked::<InstanceStatus>(&keys.statuses())
            .await
            .ok()?;
        let mut ids: Vec<String> = statuses
            .items
            .into_iter()
            .filter(|s| s.value.phase == Phase::Running)
            .filter_map(|s| s.value.container_id)
            .collect();
        ids.sort();
        (ids.len() == 2).then_some(ids)
    };
    let before = wait_for(Duration::from_secs(30), Duration::from_millis(100), running)
        .await
        .expect("2 copies run");
    assert_eq!(records(&file).len(), 2);

    agent.kill().await;
    server.kill();
    let mut agent = Daemon::start(&cli, &agent_args);
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.restart().await;
    let after = wait_for(Duration::from_secs(30), Duration::from_millis(100), running)
        .await
        .expect("the restarted agent reports both copies Running");
    assert_eq!(after, before, "adopted: the same pids");
    // The workload's own word: still exactly two starts, no stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = records(&file);
    assert_eq!(seen.len(), 2, "no copy started twice or stopped: {seen:?}");
    let pids: Vec<u32> = before.iter().filter_map(|p| p.parse().ok()).collect();
    assert_eq!(pids.len(), 2, "process ids: {before:?}");
    for pid in pids {
        assert!(alive(pid), "copy {pid} still lives");
        assert!(
            seen.iter().any(|r| r.1 == pid),
            "the workload recorded pid {pid}"
        );
    }
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(30)).await.is_some());
}

/// A registration txn that lands but whose reply is lost (the proxy closes the connection on
/// the answer) must not leave the node key on a lease nobody keeps alive: the node would look
/// dead one TTL later, the controller would move its copies away and the agent would fence
/// what it adopted. Node `b` stands ready to take them, so "where they were" means something.
#[tokio::test]
async fn an_agent_whose_registration_reply_is_lost_keeps_its_node_and_its_copies() {
    let common::Etcd {
        server,
        cli,
        store,
        keys,
    } = common::Etcd::start().await;
    let witness = tempfile::tempdir().expect("tempdir");
    let file = witness.path().join("records");
    let states = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let agent_args = |node: &'static str, state: &tempfile::TempDir| -> Vec<String> {
        [
            "agent",
            "--node",
            node,
            "--driver",
            "process",
            // Tests run as root; their tasks set no spec.user.
            "--allow-root-tasks",
            "--lease-ttl",
            "3s",
            "--state-dir",
            state.path().to_str().expect("utf-8"),
        ]
        .map(String::from)
        .to_vec()
    };
    let args_a = agent_args("a", &states[0]);
    let args_a: Vec<&str> = args_a.iter().map(String::as_str).collect();
    let proxy = TcpProxy::start(server.client_addr()).await;
    let via_proxy = Cli {
        endpoints: vec![proxy.url()],
        prefix: cli.prefix.clone(),
        access: Vec::new(),
    };
    let _controller = Daemon::start(&cli, &["controller", "--id", "c", "--lease-ttl", "2s"]);
    let mut agent = Daemon::start(&via_proxy, &args_a);
    let doc = format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: pair\nspec:\n  command: [sh, -c, \"{}\"]\n  replicas: 2\n",
        witness_command(&file)
    );
    let (_dir, path) = manifest(&doc);
    cli.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let on_a = || async {
        let running = common::running_statuses(&store, &keys).await?;
        let mut ids: Vec<String> = running
            .into_iter()
            .filter(|s| s.node == "a")
            .filter_map(|s| s.container_id)
            .collect();
        ids.sort();
        (ids.len() == 2).then_some(ids)
    };
    let before = wait_for(Duration::from_secs(30), Duration::from_millis(100), on_a)
        .await
        .expect("2 copies run on a");
    let args_b = agent_args("b", &states[1]);
    let args_b: Vec<&str> = args_b.iter().map(String::as_str).collect();
    let _other = Daemon::start(&cli, &args_b);

    // Restart a (its copies keep running and are adopted); lose the reply to the txn that
    // binds its node key — the only request whose body carries a node record.
    agent.kill().await;
    proxy.lose_reply_to(br#""drivers":["#);
    let mut agent = Daemon::start(&via_proxy, &args_a);
    wait_for(
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async { (proxy.replies_lost() == 1).then_some(()) },
    )
    .await
    .expect("the registration's reply was lost");

    // Three TTLs: long enough for an orphaned lease to expire and its node to be judged dead.
    let node_key = keys.node("a");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(9);
    while tokio::time::Instant::now() < deadline {
        let node = store.get_raw(&node_key).await.expect("read node key");
        assert!(node.is_some(), "node a must stay registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = on_a().await.expect("both copies still Running on a");
    assert_eq!(after, before, "the same processes, where they were");
    let seen = records(&file);
    assert_eq!(seen.len(), 2, "no copy stopped or started again: {seen:?}");
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(30)).await.is_some());
}
