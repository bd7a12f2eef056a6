//! The daemons `bench scale` runs as child processes of this very binary: one hollow agent and
//! one or two controller replicas, each logging to its own file in a temp dir, each killed on
//! every way out of the run, with its peak resident memory read before it goes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::own_etcd::free_port;
use crate::etcd_access::EtcdAccess;
use crate::exit::{CliError, CliResult};

/// How long a child may take to die after SIGKILL before the run stops waiting for it.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// One child process.
pub struct Proc {
    /// What the table calls it (`hollow agent`, `controller c0`).
    pub name: String,
    child: Child,
    pid: u32,
    log: PathBuf,
    /// The highest VmHWM read so far, in KiB.
    peak_rss_kib: Option<u64>,
    /// Killed on purpose (the failover step): its exit is not a failure.
    killed: bool,
}

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads VmHWM (the kernel's peak resident set) while the process is alive.
    fn sample(&mut self) {
        if self.killed {
            return;
        }
        if let Some(kib) = vm_hwm_kib(self.pid) {
            self.peak_rss_kib = Some(self.peak_rss_kib.map_or(kib, |p| p.max(kib)));
        }
    }

    /// SIGKILLs and reaps it, after a last memory reading.
    async fn kill(&mut self) {
        self.sample();
        self.killed = true;
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(REAP_TIMEOUT, self.child.wait()).await;
    }
}

/// A controller replica: its process and where its `/readyz` answers.
pub struct Replica {
    /// The `--id` it runs with.
    pub id: String,
    /// Its `--metrics-addr`.
    pub admin: SocketAddr,
    /// Its `--web-addr`, when it serves the web view.
    pub web: Option<SocketAddr>,
    /// The process.
    pub proc: Proc,
}

/// The children and their log dir.
///
/// # Guarantees
///
/// Every child has `kill_on_drop` and its own process group (a Ctrl-C at the terminal reaches
/// only the bench, which stops them itself); [`Fleet::stop`] kills and reaps them all; dropping
/// the fleet removes the log dir (unless it was asked to keep it).
pub struct Fleet {
    exe: PathBuf,
    etcd: String,
    /// The TLS and user flags every child gets.
    access: Vec<std::ffi::OsString>,
    prefix: String,
    logs: PathBuf,
    /// Whether dropping the fleet leaves the log dir (and says where it is).
    keep_logs: bool,
    /// The hollow agent, once started.
    pub agent: Option<Proc>,
    /// The controller replicas, in start order.
    pub replicas: Vec<Replica>,
}

impl Fleet {
    /// A fleet of `current_exe()` processes against `endpoints` under `prefix`, reaching etcd
    /// as `access` says; creates the log dir, removed when the fleet is dropped unless
    /// `keep_logs`.
    pub fn new(
        endpoints: &[String],
        prefix: &str,
        access: &EtcdAccess,
        keep_logs: bool,
    ) -> CliResult<Fleet> {
        let exe = std::env::current_exe().map_err(|error| {
            CliError::failure(format!("cannot find the drover binary: {error}"))
        })?;
        let logs =
            std::env::temp_dir().join(format!("drover-bench-logs-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&logs)
            .map_err(|error| CliError::failure(format!("{}: {error}", logs.display())))?;
        Ok(Fleet {
            exe,
            etcd: endpoints.join(","),
            access: access.child_args(),
            prefix: prefix.to_string(),
            logs,
            keep_logs,
            agent: None,
            replicas: Vec::new(),
        })
    }

    fn spawn(&self, name: &str, file: &str, args: &[&str]) -> CliResult<Proc> {
        let log = self.logs.join(file);
        let stderr = std::fs::File::create(&log)
            .map_err(|error| CliError::failure(format!("{}: {error}", log.display())))?;
        let child = Command::new(&self.exe)
            .args(["--etcd", &self.etcd, "--prefix", &self.prefix])
            .args(&self.access)
            .args(args)
            .env("RUST_LOG", "warn,drover_controller=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| CliError::failure(format!("cannot start the {name}: {error}")))?;
        let pid = child
            .id()
            .ok_or_else(|| CliError::failure(format!("the {name} exited at once")))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            pid,
            log,
            peak_rss_kib: None,
            killed: false,
        })
    }

    /// Starts `drover agent --hollow-nodes nodes` (nodes `hollow-0` …).
    pub fn start_agent(&mut self, nodes: usize) -> CliResult {
        let count = nodes.to_string();
        let proc = self.spawn(
            "hollow agent",
            "agent.log",
            &["agent", "--hollow-nodes", &count, "--node", "hollow"],
        )?;
        self.agent = Some(proc);
        Ok(())
    }

    /// Starts `drover controller --id id` with its admin endpoint on a free port, and with
    /// `web` its web view on another.
    pub fn start_controller(
        &mut self,
        id: &str,
        lease_ttl: &str,
        commit_lanes: Option<usize>,
        web: bool,
    ) -> CliResult {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let addr = admin.to_string();
        let web = if web {
            Some(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
        } else {
            None
        };
        let web_arg = web.map(|w| w.to_string());
        let lanes = commit_lanes.map(|n| n.to_string());
        let mut args = vec![
            "controller",
            "--id",
            id,
            "--lease-ttl",
            lease_ttl,
            "--metrics-addr",
            &addr,
        ];
        if let Some(lanes) = &lanes {
            args.extend(["--commit-lanes", lanes]);
        }
        if let Some(web) = &web_arg {
            args.extend(["--web-addr", web]);
        }
        let proc = self.spawn(
            &format!("controller {id}"),
            &format!("controller-{id}.log"),
            &args,
        )?;
        self.replicas.push(Replica {
            id: id.to_string(),
            admin,
            web,
            proc,
        });
        Ok(())
    }

    /// The replica with this id.
    pub fn replica(&self, id: &str) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.id == id)
    }

    /// SIGKILLs the replica `id` (its memory is read first). Returns false if there is none.
    pub async fn kill_replica(&mut self, id: &str) -> bool {
        match self.replicas.iter_mut().find(|r| r.id == id) {
            Some(replica) => {
                replica.proc.kill().await;
                true
            }
            None => false,
        }
    }

    fn procs(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.agent
            .iter_mut()
            .chain(self.replicas.iter_mut().map(|r| &mut r.proc))
    }

    /// Fails with the child's log when one that should run has exited.
    pub fn check_alive(&mut self) -> CliResult {
        for proc in self.procs() {
            if proc.killed {
                continue;
            }
            if let Ok(Some(status)) = proc.child.try_wait() {
                return Err(CliError::failure(format!(
                    "the {} exited ({status}); its log ends:\n{}",
                    proc.name,
                    tail(&proc.log, 20)
                )));
            }
        }
        Ok(())
    }

    /// Reads every live child's peak memory.
    pub fn sample(&mut self) {
        self.procs().for_each(Proc::sample);
    }

    /// `(name, peak RSS in KiB)` of every child, in start order.
    pub fn peak_rss(&self) -> Vec<(String, Option<u64>)> {
        self.agent
            .iter()
            .chain(self.replicas.iter().map(|r| &r.proc))
            .map(|p| (p.name.clone(), p.peak_rss_kib))
            .collect()
    }

    /// The last lines of every child's log, for a failed run.
    pub fn log_tails(&self, lines: usize) -> String {
        self.agent
            .iter()
            .chain(self.replicas.iter().map(|r| &r.proc))
            .map(|p| {
                format!(
                    "--- {} ({}):\n{}",
                    p.name,
                    p.log.display(),
                    tail(&p.log, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills and reaps every child (after a last memory reading).
    pub async fn stop(&mut self) {
        for proc in self.procs() {
            if !proc.killed {
                proc.kill().await;
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for proc in self.procs() {
            // SIGKILL without waiting: `Drop` cannot await the reaping (`stop` does).
            let _ = proc.child.start_kill();
        }
        if self.keep_logs {
            eprintln!("the fleet's logs are kept in {}", self.logs.display());
        } else if let Err(error) = std::fs::remove_dir_all(&self.logs) {
            eprintln!("could not remove {}: {error}", self.logs.display());
        }
    }
}

/// The peak resident set (VmHWM) of `pid` in KiB, while it runs.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The CPU time `pid` has used so far (user + system, all threads), in seconds.
///
/// # Caveats
///
/// `/proc/<pid>/stat` counts in clock ticks of `USER_HZ`, which is 100 on every Linux
/// architecture Drover builds for.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), utime and stime; `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// The last `lines` lines of a log file (empty if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
