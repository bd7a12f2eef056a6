//! The process driver: runs `command` as a plain host process, the leader of its own process
//! group, with output in `<state_dir>/logs/<instance>.log` and a pid file in
//! `<state_dir>/pids/<instance>.json` so a restarted agent can adopt what is still running.
//!
//! A process runs as `spec.user`/`spec.group` ([`identity`]), with a clean environment
//! ([`environ`]), never the agent's, as its [`Launch`] says; an agent running as root refuses
//! to run it as root unless built with [`ProcessDriver::allow_root_tasks`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::FutureExt;
use rustix::process::Signal;
use tokio::sync::watch;

use drover_api::names::InstanceId;

mod environ;
mod identity;
mod launch;
mod logfile;
mod procfs;
mod statedir;

pub use environ::DEFAULT_PATH;
pub use identity::Refusal;
pub use launch::Launch;

pub(crate) use identity::Policy;
use logfile::follow_file;
use procfs::{group_alive, read_stat, signal_group};
use statedir::{PidFile, StateDir};

use super::{
    DriverKind, Error, Fingerprint, Handle, LogLine, RecoveredInstance, Result, StartRequest,
    TaskState,
};

/// How often a stop, a wait on an adopted process, or a log follow looks again.
const POLL: Duration = Duration::from_millis(50);
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How long a SIGKILLed group may take to disappear before `stop` reports an error.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The exit of a child we spawned ourselves.
#[derive(Debug, Clone, Copy)]
struct Exit {
    code: Option<i32>,
    finished_at: DateTime<Utc>,
}

/// A child this driver spawned: its exit arrives on `exit` from the reaper task.
struct Child {
    pid: u32,
    exit: watch::Receiver<Option<Exit>>,
}

/// Runs instances as host processes. Cheap to clone; clones share the child table.
#[derive(Clone)]
pub struct ProcessDriver {
    state: StateDir,
    children: Arc<Mutex<HashMap<InstanceId, Child>>>,
    policy: Policy,
}

impl ProcessDriver {
    /// A driver keeping pid files and logs under `state_dir` (created if missing). Running as
    /// root, it refuses to run processes as root (see [`Self::allow_root_tasks`]).
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<Self> {
        Ok(ProcessDriver {
            state: StateDir::create(state_dir.into())?,
            children: Arc::default(),
            policy: Policy::of_this_process(false),
        })
    }

    /// With `allow` (`--allow-root-tasks`), a driver running as root also runs processes as
    /// root: those that set no `spec.user`, or name root.
    pub fn allow_root_tasks(mut self, allow: bool) -> Self {
        self.policy.allow_root = allow;
        self
    }

    /// Where an instance's combined stdout/stderr goes.
    pub fn log_path(&self, instance: &InstanceId) -> PathBuf {
        self.state.log_path(instance)
    }

    /// See [`super::Driver::start`].
    ///
    /// # Guarantees
    /// - The process runs as `spec.user`/`spec.group` when set (resolved on this node), else
    ///   as the agent; it is refused ([`Error::Refused`]) if that would be root on an agent
    ///   running as root without [`Self::allow_root_tasks`], if a named user or group does not
    ///   exist here, or if `spec.workingDir` is not an existing directory.
    /// - Switching user drops the agent's supplementary groups: the process has only its
    ///   primary group.
    /// - Its environment is the documented minimal set, `DROVER_*` and the spec's `env`
    ///   ([`Launch`]); nothing of the agent's environment is inherited. `argv[0]` is looked up
    ///   on that `PATH`.
    pub async fn start(&self, req: &StartRequest) -> Result<Handle> {
        let instance = &req.meta.instance;
        let Some(argv0) = req.spec.command.first() else {
            return Err(Error::InvalidSpec {
                driver: DriverKind::Process,
                message: "`command` is empty".into(),
            });
        };
        // Idempotent start: the same attempt still running is returned as is; a leftover of
        // another attempt is killed first, so there is never a second live copy.
        if let Some(pf) = self.state.read(instance).await? {
            if pf.is_alive() {
                if pf.meta == req.meta {
                    return Ok(pf.handle());
                }
                tracing::info!(instance = %instance, pid = pf.pid, "killing a leftover attempt");
                self.stop(&pf.handle(), Duration::ZERO).await?;
            }
        }
        let launch = Launch::prepare(req, self.policy)?;
        let (mut cmd, program) = launch.command(&req.spec.command)?;

        let log_path = self.log_path(instance);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io("duplicating the log file handle", e))?;

        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            // Its own group, so stop can signal everything it forked.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| launch.spawn_error(argv0, &program, &e))?;
        let pid = child.id().ok_or_else(|| Error::StartError {
            message: format!("{argv0:?} exited before its pid could be read"),
        })?;
        let started_at = Utc::now();
        let start_ticks = read_stat(pid).map(|s| s.start_ticks).unwrap_or_default();

        let (tx, rx) = watch::channel(None);
        // The reaper: collects the exit status (so no zombie lingers) and publishes it.
        tokio::spawn(async move {
            let status = child.wait().await;
            let code = status.ok().and_then(|s| {
                use std::os::unix::process::ExitStatusExt;
                s.code().or_else(|| s.signal().map(|sig| 128 + sig))
            });
            let _ = tx.send(Some(Exit {
                code,
                finished_at: Utc::now(),
            }));
        });
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(instance.clone(), Child { pid, exit: rx });

        let pf = PidFile {
            pid,
            start_ticks,
            started_at,
            command: req.spec.command.clone(),
            meta: req.meta.clone(),
        };
        if let Err(e) = self.state.write(&pf).await {
            // Without a pid file a restarted agent could not find it: better not to run it.
            signal_group(pid, Signal::KILL);
            return Err(e);
        }
        tracing::debug!(instance = %instance, pid, program = %program.display(), user = %launch.run_as(), "process started");
        Ok(pf.handle())
    }

    /// See [`super::Driver::inspect`].
    pub async fn inspect(&self, handle: &Handle) -> Result<TaskState> {
        let pid = parse_pid(handle)?;
        if let Some(exit) = self.own_child(&handle.instance, pid) {
            return Ok(match *exit.borrow() {
                Some(e) => TaskState::Exited {
                    code: e.code,
                    finished_at: Some(e.finished_at),
                },
                None => TaskState::Running,
            });
        }
        match self.state.read(&handle.instance).await? {
            Some(pf) if pf.pid == pid => Ok(if pf.is_alive() {
                TaskState::Running
            } else {
                TaskState::Exited {
                    code: None,
                    finished_at: None,
                }
            }),
            _ => Ok(TaskState::NotFound),
        }
    }

    /// See [`super::Driver::wait`].
    pub async fn wait(&self, handle: &Handle) -> Result<TaskState> {
        let pid = parse_pid(handle)?;
        if let Some(mut exit) = self.own_child(&handle.instance, pid) {
            // An error means the reaper is gone, which only happens after it sent the exit.
            let _ = exit.wait_for(Option::is_some).await;
            return self.inspect(handle).await;
        }
        loop {
            let state = self.inspect(handle).await?;
            if !state.is_running() {
                return Ok(state);
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }

    /// See [`super::Driver::stop`].
    ///
    /// # Guarantees
    /// SIGTERM goes to the whole process group, SIGKILL to whatever is left of it after `grace`;
    /// returns `Ok` once no live (non-zombie) member of the group remains and, for our own
    /// child, once it has been reaped (its exit is known; no zombie is left).
    ///
    /// # Caveats
    /// A member that left the group (`setsid`, `setpgid`) is out of reach, as with any process
    /// group supervisor. The pid file and log stay until [`ProcessDriver::destroy`].
    pub async fn stop(&self, handle: &Handle, grace: Duration) -> Result<()> {
        let pgid = parse_pid(handle)?;
        if let Some(pf) = self.state.read(&handle.instance).await? {
            // Never signal a reused pid: a live process with that pid but another start time
            // leads a group that is not ours (ours, if its leader died, has no such process).
            if pf.pid == pgid && read_stat(pgid).is_some_and(|s| s.start_ticks != pf.start_ticks) {
                return Ok(());
            }
        }
        self.end_group(handle, pgid, grace).await?;
        self.reaped(handle, pgid).await
    }

    /// SIGTERM to group `pgid`, SIGKILL after `grace`; returns once no live member is left.
    async fn end_group(&self, handle: &Handle, pgid: u32, grace: Duration) -> Result<()> {
        if !group_alive(pgid) {
            return Ok(());
        }
        signal_group(pgid, Signal::TERM);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if !group_alive(pgid) {
                return Ok(());
            }
            tokio::time::sleep(POLL.min(grace)).await;
        }
        tracing::info!(instance = %handle.instance, pgid, "grace period over, sending SIGKILL");
        signal_group(pgid, Signal::KILL);
        let deadline = tokio::time::Instant::now() + KILL_TIMEOUT;
        while group_alive(pgid) {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Runtime {
                    message: format!("process group {pgid} survived SIGKILL"),
                });
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// Waits for the reaper to collect our own child `pid`, so that after a stop its exit is
    /// known to [`Self::inspect`] and no zombie is left. An adopted process (not our child) is
    /// reaped by whoever its parent is; there is nothing to wait for.
    async fn reaped(&self, handle: &Handle, pid: u32) -> Result<()> {
        let Some(mut exit) = self.own_child(&handle.instance, pid) else {
            return Ok(());
        };
        // An error from `wait_for` means the reaper is gone, which only happens after it sent
        // the exit; only the timeout is a failure.
        let in_time = tokio::time::timeout(KILL_TIMEOUT, async {
            let _ = exit.wait_for(Option::is_some).await;
        })
        .await;
        in_time.map_err(|_| Error::Runtime {
            message: format!("process {pid} ended but was not reaped within {KILL_TIMEOUT:?}"),
        })
    }

    /// See [`super::Driver::destroy`]: stops at once, then removes the pid file and the log.
    pub async fn destroy(&self, handle: &Handle) -> Result<()> {
        self.stop(handle, Duration::ZERO).await?;
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&handle.instance);
        for path in [
            self.state.pid_path(&handle.instance),
            self.log_path(&handle.instance),
        ] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
            }
        }
        Ok(())
    }

    /// See [`super::Driver::logs`]. Lines are [`super::LogStream::Combined`]: both outputs share a file.
    pub fn logs(
        &self,
        handle: &Handle,
        follow: bool,
        tail: Option<usize>,
    ) -> BoxStream<'static, Result<LogLine>> {
        let driver = self.clone();
        let handle = handle.clone();
        let path = self.log_path(&handle.instance);
        let is_running = move || {
            let (driver, handle) = (driver.clone(), handle.clone());
            async move { matches!(driver.inspect(&handle).await, Ok(TaskState::Running)) }.boxed()
        };
        follow_file(path, follow, tail, is_running)
    }

    /// See [`super::Driver::recover`].
    ///
    /// # Guarantees
    /// Returns only instances of `node` whose process is alive and whose start time matches the
    /// pid file, so a reused pid is never adopted. Their exit code will be unknown (`None`): an
    /// adopted process is not our child.
    ///
    /// # Caveats
    /// Pid files of processes that are gone are deleted here (their logs stay until `destroy`).
    pub async fn recover(&self, node: &str) -> Result<Vec<RecoveredInstance>> {
        let dir = self.state.pids_dir();
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let mut found = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
        {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(bytes) = tokio::fs::read(&path).await else {
                continue;
            };
            let Ok(pf) = serde_json::from_slice::<PidFile>(&bytes) else {
                tracing::warn!(path = %path.display(), "ignoring unreadable pid file");
                continue;
            };
            if pf.meta.node != node {
                continue;
            }
            if !pf.is_alive() {
                tracing::info!(instance = %pf.meta.instance, pid = pf.pid, "process gone, dropping its pid file");
                let _ = tokio::fs::remove_file(&path).await;
                continue;
            }
            found.push(RecoveredInstance {
                handle: pf.handle(),
                meta: pf.meta,
                state: TaskState::Running,
            });
        }
        Ok(found)
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            kind: DriverKind::Process,
            healthy: true,
            detail: format!("state dir {}", self.state.root().display()),
        }
    }

    fn own_child(&self, instance: &InstanceId, pid: u32) -> Option<watch::Receiver<Option<Exit>>> {
        let children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        children
            .get(instance)
            .filter(|c| c.pid == pid)
            .map(|c| c.exit.clone())
    }
}

impl super::Driver for ProcessDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Process
    }
    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint> {
        futures::future::ready(ProcessDriver::fingerprint(self)).boxed()
    }
    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, Result<Handle>> {
        ProcessDriver::start(self, req).boxed()
    }
    fn inspect<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<TaskState>> {
        ProcessDriver::inspect(self, handle).boxed()
    }
    fn wait<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<TaskState>> {
        ProcessDriver::wait(self, handle).boxed()
    }
    fn stop<'a>(&'a self, handle: &'a Handle, grace: Duration) -> BoxFuture<'a, Result<()>> {
        ProcessDriver::stop(self, handle, grace).boxed()
    }
    fn destroy<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<()>> {
        ProcessDriver::destroy(self, handle).boxed()
    }
    fn logs(
        &self,
        handle: &Handle,
        follow: bool,
        tail: Option<usize>,
    ) -> BoxStream<'static, Result<LogLine>> {
        ProcessDriver::logs(self, handle, follow, tail)
    }
    fn recover<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<RecoveredInstance>>> {
        ProcessDriver::recover(self, node).boxed()
    }
}

fn parse_pid(handle: &Handle) -> Result<u32> {
    handle
        .id
        .parse()
        .ok()
        .filter(|&p| p > 1)
        .ok_or_else(|| Error::NotFound {
            id: handle.id.clone(),
        })
}
