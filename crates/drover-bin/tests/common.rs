//! Shared helpers for the binary's integration tests: run `drover` against a real etcd with a
//! unique key prefix, and read what it wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// Bound on any single CLI invocation in tests.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// A `drover` invocation context: which etcd and which prefix, and how to reach it.
pub struct Cli {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// Flags every invocation gets before the verb (`--etcd-cafile=…`, `--etcd-user=…`).
    pub access: Vec<String>,
}

impl Cli {
    pub fn new(endpoints: Vec<String>) -> Cli {
        Cli::with_access(endpoints, Vec::new())
    }

    /// A context whose invocations all get the global flags `access`.
    pub fn with_access(endpoints: Vec<String>, access: Vec<String>) -> Cli {
        Cli {
            endpoints,
            prefix: drover_testkit::unique_prefix(),
            access,
        }
    }

    /// A command for the drover binary with `--etcd`, `--prefix` and the access flags set.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
        command
            .arg("--etcd")
            .arg(self.endpoints.join(","))
            .arg("--prefix")
            .arg(&self.prefix)
            .args(&self.access)
            .args(args)
            .env_remove("DROVER_ETCD")
            .env_remove("DROVER_PREFIX")
            .env_remove("DROVER_ETCD_CAFILE")
            .env_remove("DROVER_ETCD_CERTFILE")
            .env_remove("DROVER_ETCD_KEYFILE")
            .env_remove("DROVER_ETCD_USER")
            .env_remove("DROVER_ETCD_PASSWORD_FILE")
            .env_remove("DROVER_AGENT_CAFILE")
            .env_remove("DROVER_AGENT_CERTFILE")
            .env_remove("DROVER_AGENT_KEYFILE")
            .env_remove("DROVER_TLS_CERT_FILE")
            .env_remove("DROVER_TLS_KEY_FILE")
            .env_remove("DROVER_CLIENT_CA_FILE")
            .env_remove("DROVER_LOG_FORMAT")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs the binary to completion.
    pub async fn run(&self, args: &[&str]) -> Output {
        let output = tokio::time::timeout(CLI_TIMEOUT, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("drover {args:?} did not finish within {CLI_TIMEOUT:?}"))
            .expect("drover runs");
        output
    }

    /// Runs the binary and requires success; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            output.status.success(),
            "drover {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// Starts a long-running verb (`get -w`, daemons) with piped stdout.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("drover starts")
    }
}

/// Writes `text` to a temp file and returns its path (the dir lives as long as the guard).
pub fn manifest(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("manifest.yaml");
    std::fs::write(&path, text).expect("write manifest");
    (dir, path)
}

/// A small valid task document using the process driver.
pub fn task_doc(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  command: [\"sleep\", \"3600\"]\n  replicas: {replicas}\n"
    )
}

/// A daemon (`drover controller`, `drover agent`) run as a real child process, so tests can
/// SIGKILL, SIGSTOP and SIGTERM it. Its stderr goes to a log file the test can read.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `drover <args>` against `cli`'s etcd and prefix.
    pub fn start(cli: &Cli, args: &[&str]) -> Daemon {
        Daemon::start_with_env(cli, args, &[])
    }

    /// [`Daemon::start`], with `env` added to the daemon's own environment.
    pub fn start_with_env(cli: &Cli, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("daemon.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = cli
            .command(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("drover daemon starts");
        Daemon {
            child,
            log,
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("daemon still running")
    }

    /// Sends a signal by name (`KILL`, `TERM`, `STOP`, `CONT`), with kill(2): no `kill`
    /// command is needed (a minimal Debian has none).
    pub fn signal(&self, name: &str) {
        use rustix::process::{kill_process, Pid, Signal};
        let signal = match name {
            "KILL" => Signal::KILL,
            "TERM" => Signal::TERM,
            "STOP" => Signal::STOP,
            "CONT" => Signal::CONT,
            "INT" => Signal::INT,
            other => panic!("unknown signal {other}"),
        };
        let pid = Pid::from_raw(i32::try_from(self.pid()).expect("pid fits")).expect("pid > 0");
        kill_process(pid, signal).unwrap_or_else(|e| panic!("kill -{name}: {e}"));
    }

    /// SIGKILL, and reap.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// Waits for the process to exit on its own (after SIGTERM), bounded.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A stopped process ignores SIGKILL until continued on some kernels' views; continue it.
        if let Some(pid) = self.child.id() {
            let pid = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
            }
        }
        let _ = self.child.start_kill();
    }
}

/// Starts `drover agent --hollow-nodes N` (node names `hollow-*`, 15 s leases) and waits until
/// all `nodes` have registered.
pub async fn hollow_agent(
    cli: &Cli,
    store: &drover_store::Store,
    keys: &drover_api::keys::Keys,
    nodes: usize,
) -> Daemon {
    let agent = Daemon::start(
        cli,
        &[
            "agent",
            "--hollow-nodes",
            &nodes.to_string(),
            "--node",
            "hollow",
            "--lease-ttl",
            "15s",
        ],
    );
    drover_testkit::wait_for(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let n = store.list_raw(&keys.nodes()).await.ok()?.items.len();
            (n == nodes).then_some(())
        },
    )
    .await
    .expect("all hollow nodes register");
    agent
}

/// The statuses that decode and say Running (values that do not decode are skipped).
pub async fn running_statuses(
    store: &drover_store::Store,
    keys: &drover_api::keys::Keys,
) -> Option<Vec<drover_api::instance::InstanceStatus>> {
    let statuses = store
        .list_checked::<drover_api::instance::InstanceStatus>(&keys.statuses())
        .await
        .ok()?;
    Some(
        statuses
            .items
            .into_iter()
            .map(|s| s.value)
            .filter(|s| s.phase == drover_api::instance::Phase::Running)
            .collect(),
    )
}

/// A witness workload's own records: (kind, pid, nanos) per line, in file order.
pub fn records(path: &Path) -> Vec<(String, u32, u128)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((
                parts.next()?.to_string(),
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// The most copies alive at once, from a witness workload's [`records`] alone.
pub fn max_live(records: &[(String, u32, u128)]) -> usize {
    let mut events: Vec<(u128, i32)> = records
        .iter()
        .map(|(kind, _, t)| (*t, if kind == "start" { 1 } else { -1 }))
        .collect();
    // A stop and a start at the same instant: count the stop first.
    events.sort();
    let (mut live, mut max) = (0i32, 0i32);
    for (_, delta) in events {
        live += delta;
        max = max.max(live);
    }
    usize::try_from(max).unwrap_or(0)
}

/// A real etcd with what every test talks to it with: the CLI under a fresh prefix, a store
/// client and the key schema. Dropping it stops etcd.
pub struct Etcd {
    /// The server (`kill`/`restart` for outage tests).
    pub server: drover_testkit::EtcdServer,
    /// `drover` against it.
    pub cli: Cli,
    /// A client of our own, for reading what Drover wrote.
    pub store: drover_store::Store,
    /// The key schema under the CLI's prefix.
    pub keys: drover_api::keys::Keys,
}

impl Etcd {
    /// Starts etcd and connects.
    pub async fn start() -> Etcd {
        let server = drover_testkit::EtcdServer::start().await;
        let cli = Cli::new(server.endpoints());
        let store =
            drover_store::Store::connect(drover_store::StoreConfig::new(server.endpoints()))
                .await
                .expect("store");
        let keys = drover_api::keys::Keys::new(&cli.prefix);
        Etcd {
            server,
            cli,
            store,
            keys,
        }
    }
}

/// The dead letter of `task`, if the leader wrote one (undecodable letters are skipped).
pub async fn dead_letter_of(
    store: &drover_store::Store,
    keys: &drover_api::keys::Keys,
    task: &str,
) -> Option<drover_api::deadletter::DeadLetter> {
    let letters = store
        .list::<drover_api::deadletter::DeadLetter>(&keys.deadletters())
        .await
        .ok()?;
    letters
        .items
        .into_iter()
        .map(|i| i.value)
        .find(|d| d.task == task)
}

/// Waits (up to a minute) for the node key of `node` and decodes it.
pub async fn node_key(etcd: &Etcd, node: &str) -> drover_api::node::Node {
    drover_testkit::wait_for(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            etcd.store
                .get::<drover_api::node::Node>(&etcd.keys.node(node))
                .await
                .ok()
                .flatten()
                .map(|v| v.value)
        },
    )
    .await
    .unwrap_or_else(|_| panic!("node {node} never registered"))
}

/// Waits up to a minute until exactly `n` statuses say Running; panics with `daemons`' logs
/// (each `(name, daemon)`) otherwise.
pub async fn wait_running(
    store: &drover_store::Store,
    keys: &drover_api::keys::Keys,
    n: usize,
    daemons: &[(&str, &Daemon)],
) -> Vec<drover_api::instance::InstanceStatus> {
    drover_testkit::wait_for(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async { running_statuses(store, keys).await.filter(|r| r.len() == n) },
    )
    .await
    .unwrap_or_else(|_| {
        let logs: Vec<String> = daemons
            .iter()
            .map(|(name, d)| format!("{name}:\n{}", d.log_text()))
            .collect();
        panic!("{n} instances not Running within 60 s\n{}", logs.join("\n"))
    })
}
