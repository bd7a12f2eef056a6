//! `bench scale`'s own etcd: one member on free loopback ports with its data on tmpfs, stopped
//! and its directory removed when the guard drops, whatever way the run ends.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::probe;
use crate::exit::{CliError, CliResult, UNAVAILABLE};

/// The backend quota: a large scale run must never hit etcd's 2 GiB default and go read-only.
pub const QUOTA_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// How long etcd may take to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Fresh-port attempts when a port picked as free was taken before etcd bound it.
const START_ATTEMPTS: usize = 3;

/// A running etcd this process started.
///
/// # Guarantees
///
/// - Its data dir is a fresh directory under `/dev/shm` (tmpfs) when that exists, else under
///   the system temp dir; its log is `etcd.log` there.
/// - It runs in its own process group, so a Ctrl-C at the terminal reaches this process only,
///   which then stops everything in order.
/// - On drop it is SIGKILLed and reaped, and the directory is removed.
///
/// # Caveats
///
/// If this process is itself SIGKILLed, nothing stops etcd: kill it by the pid the run prints.
pub struct OwnEtcd {
    child: Child,
    dir: PathBuf,
    client: SocketAddr,
}

impl OwnEtcd {
    /// Starts etcd and waits until it answers `/health`.
    pub async fn start() -> CliResult<OwnEtcd> {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = base.join(format!("drover-bench-etcd-{:016x}", rand::random::<u64>()));
            std::fs::create_dir(&dir)
                .map_err(|error| CliError::failure(format!("{}: {error}", dir.display())))?;
            let mut etcd = OwnEtcd::spawn(dir)?;
            match etcd.wait_healthy().await {
                Ok(()) => return Ok(etcd),
                Err(Failure::PortTaken) => last = "a port was taken".into(),
                Err(Failure::Other(message)) => return Err(CliError::new(UNAVAILABLE, message)),
            }
        }
        Err(CliError::new(
            UNAVAILABLE,
            format!("etcd did not start after {START_ATTEMPTS} attempts: {last}"),
        ))
    }

    fn spawn(dir: PathBuf) -> CliResult<OwnEtcd> {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let log = std::fs::File::create(dir.join("etcd.log"))
            .map_err(|error| CliError::failure(format!("{}: {error}", dir.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|error| CliError::failure(format!("etcd log: {error}")))?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .args(["--logger=zap", "--log-level=warn"])
            .args(drover_store::ETCD_SERVER_FLAGS)
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=bench={peer}"))
            .arg(format!("--quota-backend-bytes={QUOTA_BYTES}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(CliError::new(
                    UNAVAILABLE,
                    format!("cannot start etcd ({error}); run hack/install-deps.sh to install it"),
                ));
            }
        };
        Ok(OwnEtcd {
            child,
            dir,
            client: SocketAddr::from(([127, 0, 0, 1], client_port)),
        })
    }

    async fn wait_healthy(&mut self) -> Result<(), Failure> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.log_tail();
                return Err(if log.contains("address already in use") {
                    Failure::PortTaken
                } else {
                    Failure::Other(format!("etcd exited during start ({status}):\n{log}"))
                });
            }
            let answer = probe::get(self.client, "/health", Duration::from_secs(1)).await;
            if answer.is_some_and(|(code, body)| code == 200 && body.contains("\"true\"")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Failure::Other(format!(
                    "etcd not healthy within {START_TIMEOUT:?}:\n{}",
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The client URL, as `--etcd` takes it.
    pub fn endpoints(&self) -> Vec<String> {
        vec![format!("http://{}", self.client)]
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its data and log live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn log_tail(&self) -> String {
        super::fleet::tail(&self.dir.join("etcd.log"), 20)
    }
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {error}", self.dir.display());
        }
    }
}

/// Why a start attempt failed.
enum Failure {
    /// etcd could not bind a port picked as free: try others.
    PortTaken,
    /// Anything else, with etcd's log.
    Other(String),
}

/// A loopback TCP port that was free a moment ago (the caller binds it soon after; a lost race
/// shows as a failed bind, which callers retry or report).
pub fn free_port() -> CliResult<u16> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|error| CliError::failure(format!("no free loopback port: {error}")))
}
