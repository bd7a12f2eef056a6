//! One etcd member as a child process: start on free loopback ports (plain or TLS),
//! health-wait, SIGKILL, restart on the same ports and data, and `etcdctl` against it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The server flags of every etcd the test kit starts: the same as `drover up` and
/// `bench scale` give theirs (`drover_store::ETCD_SERVER_FLAGS`, which drover-store's tests
/// hold equal to this; the test kit cannot depend on drover-store, whose tests use it).
pub const ETCD_SERVER_FLAGS: &[&str] = &["--backend-batch-interval=10ms"];
use tokio::time::Instant;

use crate::certs::TlsFiles;
use crate::ports::free_port;
use crate::secure::{self, EtcdOptions, EtcdUser, EtcdctlAccess, Pki};

/// How long a member may take to answer `/health` after being spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the members of a fresh cluster may take to elect a leader.
pub(crate) const START_TIMEOUT_CLUSTER: Duration = Duration::from_secs(30);
/// How often a fresh start is retried when a picked port was taken in the meantime.
pub(crate) const START_ATTEMPTS: usize = 5;

/// Running `etcdctl` failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdctlError {
    /// The `etcdctl` binary could not be run at all.
    #[error("cannot run etcdctl (install it with hack/install-deps.sh): {0}")]
    Spawn(#[source] std::io::Error),
    /// `etcdctl` ran and exited unsuccessfully.
    #[error("etcdctl {args} failed ({status}): {stderr}")]
    Failed {
        /// The arguments, joined by spaces.
        args: String,
        /// The exit status as printed by the OS.
        status: String,
        /// What etcdctl wrote to stderr.
        stderr: String,
    },
}

/// Ports, names and cluster membership of one member; fixed for the member's lifetime so that a
/// restart comes back on the same addresses.
#[derive(Debug, Clone)]
pub(crate) struct MemberSpec {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Where `/health` is served over plain http when clients must speak TLS
    /// (`--listen-metrics-urls`); `None` for a plain member, which serves it on the client port.
    pub metrics_port: Option<u16>,
    pub initial_cluster: String,
    pub token: String,
    pub options: EtcdOptions,
}

impl MemberSpec {
    /// `name=URL` of a member's peer port, as `--initial-cluster` lists it.
    pub(crate) fn peer_url(name: &str, peer_port: u16, options: EtcdOptions) -> String {
        let scheme = secure::scheme(options.tls);
        format!("{name}={scheme}://127.0.0.1:{peer_port}")
    }

    /// A port for `/health` when the client port speaks TLS.
    pub(crate) fn metrics_port_for(options: EtcdOptions) -> Option<u16> {
        options.tls.then(free_port)
    }
}

/// Why a spawned member did not become healthy.
#[derive(Debug)]
pub(crate) enum StartFailure {
    /// The process exited because one of its ports was taken: retry with fresh ports.
    PortTaken,
    /// Anything else; the message carries the member's log.
    Other(String),
}

/// One running (or killed) etcd process with its own data dir.
///
/// # Guarantees
///
/// - The data dir lives in a fresh temp dir under `/dev/shm` (tmpfs) when it exists and has
///   room for another member ([`SHM_HEADROOM`]), else under the system temp dir, and is
///   removed on drop.
/// - The process is SIGKILLed on drop. If the test process itself dies without unwinding (a
///   nextest timeout, SIGKILL), a small watchdog process notices and kills etcd and removes its
///   data dir, so no etcd outlives its test.
/// - etcd runs with `--auto-compaction-retention=0`: history is only compacted when a test asks
///   ([`compact`](Self::compact)).
pub struct EtcdServer {
    spec: MemberSpec,
    dir: TempDir,
    process: Option<Process>,
    access: EtcdctlAccess,
}

struct Process {
    child: Child,
    watchdog: Option<Watchdog>,
}

/// A `sh` that kills etcd when its stdin reaches EOF without a line first: the test process died.
struct Watchdog {
    child: Child,
    stdin: ChildStdin,
}

impl EtcdServer {
    /// Starts a single-member etcd on free loopback ports and waits until it answers `/health`.
    ///
    /// # Guarantees
    ///
    /// Returns only once the member has a leader (itself) and serves requests. Port collisions
    /// with other processes are retried with fresh ports.
    ///
    /// # Panics
    ///
    /// When `etcd` is not installed (the message names `hack/install-deps.sh`), or when it does
    /// not become healthy within 30 s (the message carries etcd's log).
    pub async fn start() -> EtcdServer {
        EtcdServer::start_with(EtcdOptions::default()).await
    }

    /// Starts a single-member etcd secured as `options` say: with `tls`, clients must speak
    /// TLS and present a certificate from [`tls_files`](Self::tls_files)' CA, and
    /// [`endpoints`](Self::endpoints) are `https://` URLs.
    ///
    /// # Guarantees
    ///
    /// As [`start`](Self::start); [`etcdctl`](Self::etcdctl) keeps working (it is given the
    /// client certificate).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub async fn start_with(options: EtcdOptions) -> EtcdServer {
        let pki = options.tls.then(Pki::generate);
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let name = "drover-test".to_string();
            let client_port = free_port();
            let peer_port = free_port();
            let spec = MemberSpec {
                initial_cluster: MemberSpec::peer_url(&name, peer_port, options),
                token: format!("drover-{:x}", rand::random::<u64>()),
                name,
                client_port,
                peer_port,
                metrics_port: MemberSpec::metrics_port_for(options),
                options,
            };
            let mut server = EtcdServer::prepare(spec, pki.clone());
            server.spawn();
            match server.wait_healthy(START_TIMEOUT).await {
                Ok(()) => return server,
                Err(StartFailure::PortTaken) => last = "port taken".into(),
                Err(StartFailure::Other(msg)) => panic!("{msg}"),
            }
        }
        panic!("etcd did not start after {START_ATTEMPTS} attempts: {last}");
    }

    /// A member with a fresh data dir and no process yet.
    pub(crate) fn prepare(spec: MemberSpec, pki: Option<Arc<Pki>>) -> EtcdServer {
        let shm = Path::new("/dev/shm");
        let builder = {
            let mut b = tempfile::Builder::new();
            b.prefix("drover-etcd-");
            b
        };
        let dir = if shm.is_dir() && room_on(shm) {
            builder.tempdir_in(shm)
        } else {
            builder.tempdir()
        }
        .unwrap_or_else(|e| panic!("cannot create a temp dir for etcd: {e}"));
        EtcdServer {
            spec,
            dir,
            process: None,
            access: EtcdctlAccess {
                tls: pki,
                root: None,
            },
        }
    }

    /// The client URLs to hand to a store: `["http://127.0.0.1:<port>"]`, or `https://` for a
    /// TLS member.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.client_url()]
    }

    /// The client URL, `http://127.0.0.1:<port>` (`https://` for a TLS member).
    pub fn client_url(&self) -> String {
        let scheme = secure::scheme(self.spec.options.tls);
        format!("{scheme}://127.0.0.1:{}", self.spec.client_port)
    }

    /// The certificates of a TLS member (`None` for a plain one): the CA to verify it by and
    /// a client certificate it accepts, plus a wrong CA and a client certificate it refuses.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.access.tls.as_deref().map(|pki| &pki.files)
    }

    /// Adds the `root` user with a random password, grants it the root role and turns on
    /// etcd's authentication (`etcdctl user add`, `user grant-role`, `auth enable`). From then
    /// on [`etcdctl`](Self::etcdctl) runs as root.
    ///
    /// # Guarantees
    ///
    /// Returns the root user; its password is also in a file (for `--etcd-password-file`)
    /// that lives as long as this member.
    pub async fn enable_auth(&mut self) -> Result<EtcdUser, EtcdctlError> {
        let root = EtcdUser::new("root", self.dir.path());
        let with_password = format!("root:{}", root.password);
        self.etcdctl(&["user", "add", &with_password]).await?;
        self.etcdctl(&["user", "grant-role", "root", "root"])
            .await?;
        self.etcdctl(&["auth", "enable"]).await?;
        self.access.root = Some(root.clone());
        Ok(root)
    }

    /// Adds a user `name` with a random password (also written to a file) whose role of the
    /// same name may read and write every key under `prefix`, and nothing else. Needs
    /// [`enable_auth`](Self::enable_auth) first for the limits to apply.
    pub async fn add_user(&self, name: &str, prefix: &str) -> Result<EtcdUser, EtcdctlError> {
        let user = EtcdUser::new(name, self.dir.path());
        let with_password = format!("{name}:{}", user.password);
        self.etcdctl(&["role", "add", name]).await?;
        self.etcdctl(&[
            "role",
            "grant-permission",
            name,
            "--prefix=true",
            "readwrite",
            prefix,
        ])
        .await?;
        self.etcdctl(&["user", "add", &with_password]).await?;
        self.etcdctl(&["user", "grant-role", name, name]).await?;
        Ok(user)
    }

    /// The client address, for example to put a [`TcpProxy`](crate::TcpProxy) in front of it.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.spec.client_port))
    }

    /// The member's name in the cluster.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The member's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The OS process id, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.child.id())
    }

    /// Whether the process is alive (it was not killed and has not exited).
    pub fn is_running(&mut self) -> bool {
        match self.process.as_mut() {
            Some(p) => matches!(p.child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// What etcd wrote to stdout/stderr so far (errors only, given `--log-level=error`).
    pub fn log(&self) -> String {
        let mut out = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut out);
        }
        out
    }

    /// SIGKILLs the process and reaps it. A no-op when it is not running.
    ///
    /// # Guarantees
    ///
    /// When this returns the process is gone and its ports are closed; the data dir is kept for
    /// [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
            if let Some(mut w) = p.watchdog.take() {
                // A full line tells the watchdog to exit without touching anything.
                let _ = w.stdin.write_all(b"done\n");
                drop(w.stdin);
                let _ = w.child.wait();
            }
        }
    }

    /// Kills the process if it runs, then starts it again on the same ports with the same data
    /// dir, and waits until it answers `/health` (for a cluster member: until it sees a leader).
    ///
    /// # Panics
    ///
    /// When it does not become healthy within 30 s (for example because another process took
    /// one of its ports meanwhile); the message carries etcd's log.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        match self.wait_healthy(START_TIMEOUT).await {
            Ok(()) => {}
            Err(StartFailure::PortTaken) => panic!(
                "etcd member {} could not restart: its port was taken meanwhile\n{}",
                self.spec.name,
                self.log()
            ),
            Err(StartFailure::Other(msg)) => panic!("{msg}"),
        }
    }

    /// Runs `etcdctl` against this member and returns its stdout.
    pub async fn etcdctl(&self, args: &[&str]) -> Result<String, EtcdctlError> {
        run_etcdctl(&self.endpoints(), &self.access, args).await
    }

    pub(crate) fn access(&self) -> &EtcdctlAccess {
        &self.access
    }

    pub(crate) fn set_root(&mut self, root: EtcdUser) {
        self.access.root = Some(root);
    }

    /// Compacts the history up to `revision` (physically), so that watching from an older
    /// revision fails with `compact_revision` set.
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdctlError> {
        let rev = revision.to_string();
        self.etcdctl(&["compact", &rev, "--physical"])
            .await
            .map(|_| ())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Spawns the etcd process (and its watchdog) without waiting for it.
    pub(crate) fn spawn(&mut self) {
        let bin = etcd_binary();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cannot open the etcd log file: {e}"));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone the etcd log file handle: {e}"));
        let s = &self.spec;
        let scheme = secure::scheme(s.options.tls);
        let client = format!("{scheme}://127.0.0.1:{}", s.client_port);
        let peer = format!("{scheme}://127.0.0.1:{}", s.peer_port);
        let mut cmd = Command::new(&bin);
        cmd.arg("--name")
            .arg(&s.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--logger=zap", "--log-level=error"])
            .args(ETCD_SERVER_FLAGS)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &s.initial_cluster])
            .args(["--initial-cluster-token", &s.token])
            .args(["--initial-cluster-state", "new"])
            .arg("--auto-compaction-retention=0")
            .args(secure::server_args(s.options, self.access.tls.as_deref()))
            .args(
                s.metrics_port
                    .map(|port| format!("--listen-metrics-urls=http://127.0.0.1:{port}")),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C or a group kill of the test does not reach it
            // first, so the watchdog decides (and also removes the data dir).
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let watchdog = spawn_watchdog(child.id(), self.dir.path());
        self.process = Some(Process { child, watchdog });
    }

    /// Polls `/health` until it reports healthy, the process exits, or `timeout` passes.
    pub(crate) async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), StartFailure> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.process.as_mut() {
                if let Ok(Some(status)) = p.child.try_wait() {
                    let log = self.log();
                    self.kill();
                    if log.contains("address already in use") {
                        return Err(StartFailure::PortTaken);
                    }
                    return Err(StartFailure::Other(format!(
                        "etcd member {} exited during start ({status}); log:\n{log}",
                        self.spec.name
                    )));
                }
            }
            let health_port = self.spec.metrics_port.unwrap_or(self.spec.client_port);
            if health(health_port).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.log();
                return Err(StartFailure::Other(format!(
                    "etcd member {} not healthy within {timeout:?}; log:\n{log}",
                    self.spec.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for EtcdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdServer")
            .field("name", &self.spec.name)
            .field("client", &self.client_url())
            .field("pid", &self.pid())
            .finish()
    }
}

/// Whether `GET /health` on the client port answers `"health":"true"`.
async fn health(port: u16) -> bool {
    let probe = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

/// `/usr/bin/etcd`, else `etcd` on `PATH`.
///
/// # Panics
///
/// When neither exists; the message says how to install it.
pub(crate) fn etcd_binary() -> PathBuf {
    find_binary("etcd").unwrap_or_else(|| {
        panic!(
            "etcd not found at /usr/bin/etcd or on PATH: run hack/install-deps.sh \
             (Debian package etcd-server)"
        )
    })
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin").join(name);
    if fixed.is_file() {
        return Some(fixed);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Starts the watchdog for `pid`. Best effort: without `sh` there is simply no watchdog.
fn spawn_watchdog(pid: u32, dir: &Path) -> Option<Watchdog> {
    let script = r#"if read _line; then exit 0; fi; kill -9 "$0" 2>/dev/null; rm -rf "$1""#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()?;
    let stdin = child.stdin.take()?;
    Some(Watchdog { child, stdin })
}

/// Runs `etcdctl --endpoints <endpoints> <args>` (API v3) and returns its stdout.
pub(crate) async fn run_etcdctl(
    endpoints: &[String],
    access: &EtcdctlAccess,
    args: &[&str],
) -> Result<String, EtcdctlError> {
    let bin = find_binary("etcdctl").unwrap_or_else(|| PathBuf::from("etcdctl"));
    let out = tokio::process::Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(access.args())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(EtcdctlError::Spawn)?;
    if !out.status.success() {
        return Err(EtcdctlError::Failed {
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Free space a tmpfs must have for one more etcd data dir: etcd preallocates a 64 MiB WAL
/// segment, and a suite runs several members at once. A container's default `/dev/shm` is
/// 64 MiB, far too small, so the data dir then goes to the ordinary temp dir instead.
const SHM_HEADROOM: u64 = 512 * 1024 * 1024;

/// Whether `dir` has [`SHM_HEADROOM`] free.
fn room_on(dir: &Path) -> bool {
    rustix::fs::statvfs(dir).is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) >= SHM_HEADROOM)
}
