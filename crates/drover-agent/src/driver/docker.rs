//! The docker driver: runs instances as Docker containers through bollard, over the local unix
//! socket, labelled so a restarted agent can find and adopt them.
//!
//! Images are never pulled (no registry is reachable here): a missing image is `ImageNotFound` at
//! once. Containers run with `init: true`, so PID 1 in a `FROM scratch` image still gets SIGTERM
//! forwarded and zombies reaped.

use std::collections::HashMap;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};

mod convert;

use convert::{create_body, handle_of, map_err, meta_of, state_of};

use super::{
    labels, DriverKind, Error, Fingerprint, Handle, LogLine, LogStream, RecoveredInstance, Result,
    StartRequest, TaskState,
};

/// Per-request timeout of the Docker client. Long calls (`stop` with a long grace, `wait`, log
/// follows) are bounded by our own timers or stream once the headers arrive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting and version negotiation may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop` waits for the container to be gone after Docker's own stop (or a kill).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(100);

/// Runs instances as Docker containers. Cheap to clone (the client is reference-counted).
#[derive(Clone, Debug)]
pub struct DockerDriver {
    docker: Docker,
    host_ip: String,
}

impl DockerDriver {
    /// Connects to the local Docker daemon (`DOCKER_HOST` if it is a `unix://` URL, else
    /// `/var/run/docker.sock`) and negotiates the API version down to the daemon's, so an older
    /// engine (Docker 20.10 speaks API 1.41) does not answer "client version too new".
    ///
    /// Ports are published on `0.0.0.0`, so other nodes and users reach the instance at the node's
    /// address; see [`DockerDriver::with_host_ip`].
    pub async fn connect() -> Result<Self> {
        let unavailable = |e: BollardError| Error::DaemonUnavailable {
            message: e.to_string(),
        };
        let docker = Docker::connect_with_local_defaults()
            .map_err(unavailable)?
            .with_timeout(REQUEST_TIMEOUT);
        let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| Error::DaemonUnavailable {
                message: format!("no answer within {CONNECT_TIMEOUT:?}"),
            })?
            .map_err(unavailable)?;
        Ok(DockerDriver {
            docker,
            host_ip: "0.0.0.0".into(),
        })
    }

    /// Publishes ports on `ip` instead of `0.0.0.0` (e.g. `127.0.0.1` for a laptop cluster).
    pub fn with_host_ip(mut self, ip: impl Into<String>) -> Self {
        self.host_ip = ip.into();
        self
    }

    /// The bollard client, for callers that need more than the driver offers (tests, debugging).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// The container name of an instance: `drover-<instance id>`, with anything Docker does not
    /// accept in a name replaced by `-`.
    pub fn container_name(instance: &str) -> String {
        let clean: String = instance
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '.' | '-' => c,
                _ => '-',
            })
            .collect();
        format!("drover-{clean}")
    }

    async fn fingerprint(&self) -> Fingerprint {
        let version = tokio::time::timeout(CONNECT_TIMEOUT, self.docker.version()).await;
        let (healthy, detail) = match version {
            Ok(Ok(v)) => (
                true,
                format!(
                    "docker {} (API {})",
                    v.version.unwrap_or_default(),
                    self.docker.client_version()
                ),
            ),
            Ok(Err(e)) => (false, format!("docker daemon error: {e}")),
            Err(_) => (false, "docker daemon does not answer".to_string()),
        };
        Fingerprint {
            kind: DriverKind::Docker,
            healthy,
            detail,
        }
    }

    /// Whether `image` is in the local engine. Never pulls: no registry is assumed reachable.
    pub async fn has_image(&self, image: &str) -> Result<bool> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(map_err(e, image)),
        }
    }

    /// See [`super::Driver::start`].
    pub async fn start(&self, req: &StartRequest) -> Result<Handle> {
        let Some(image) = req.spec.image.clone() else {
            return Err(Error::InvalidSpec {
                driver: DriverKind::Docker,
                message: "`image` is required".into(),
            });
        };
        // Never pull: a missing image fails now rather than hanging on an unreachable registry.
        if !self.has_image(&image).await? {
            return Err(Error::ImageNotFound { image });
        }
        let name = Self::container_name(&req.meta.instance.to_string());
        let body = create_body(req, image, &self.host_ip);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let create_failed = |e: BollardError| match e {
            BollardError::DockerResponseServerError {
                status_code: 404, ..
            } => Error::ImageNotFound {
                image: req.spec.image.clone().unwrap_or_default(),
            },
            // The daemon refused the config (a memory limit below its minimum, ...).
            BollardError::DockerResponseServerError { message, .. } => Error::StartError {
                message: format!("creating container {name}: {message}"),
            },
            other => map_err(other, &name),
        };
        let id = match self
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await
        {
            Ok(created) => created.id,
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                // Name taken: the same attempt still running is adopted (idempotent start);
                // anything else under our name is a leftover and is replaced.
                let existing = self.inspect_raw(&name).await?;
                let meta = meta_of(&existing);
                if meta.as_ref() == Some(&req.meta) && state_of(&existing).is_running() {
                    return handle_of(&existing, &name);
                }
                self.remove(&name).await?;
                self.docker
                    .create_container(Some(options), body)
                    .await
                    .map_err(create_failed)?
                    .id
            }
            Err(e) => return Err(create_failed(e)),
        };
        if let Err(e) = self.docker.start_container(&id, None).await {
            // Leave nothing half-made behind: the agent retries with a fresh create.
            let _ = self.remove(&id).await;
            return Err(match e {
                BollardError::DockerResponseServerError { message, .. } => Error::StartError {
                    message: format!("container {name}: {message}"),
                },
                other => map_err(other, &id),
            });
        }
        tracing::debug!(instance = %req.meta.instance, container = %id, "container started");
        handle_of(&self.inspect_raw(&id).await?, &id)
    }

    /// See [`super::Driver::inspect`].
    pub async fn inspect(&self, handle: &Handle) -> Result<TaskState> {
        match self.inspect_raw(&handle.id).await {
            Ok(c) => Ok(state_of(&c)),
            Err(Error::NotFound { .. }) => Ok(TaskState::NotFound),
            Err(e) => Err(e),
        }
    }

    /// See [`super::Driver::wait`]. Uses Docker's wait endpoint, and falls back to polling when
    /// that stream breaks (daemon restart, client timeout).
    pub async fn wait(&self, handle: &Handle) -> Result<TaskState> {
        loop {
            let state = self.inspect(handle).await?;
            if !state.is_running() {
                return Ok(state);
            }
            let options = WaitContainerOptionsBuilder::default()
                .condition("not-running")
                .build();
            let mut waits = self.docker.wait_container(&handle.id, Some(options));
            match waits.next().await {
                // A non-zero exit arrives as `DockerContainerWaitError`; inspect reads the code.
                Some(Ok(_)) | Some(Err(BollardError::DockerContainerWaitError { .. })) | None => {}
                Some(Err(e)) => {
                    tracing::debug!(container = %handle.id, error = %e, "wait failed, polling");
                    tokio::time::sleep(POLL * 5).await;
                }
            }
        }
    }

    /// See [`super::Driver::stop`].
    ///
    /// # Guarantees
    /// Docker sends the image's stop signal (SIGTERM by default, forwarded by `docker-init`) and
    /// SIGKILL after `grace`; this returns `Ok` only once the container is no longer running.
    /// If it still runs `grace` + 15 s after the call, we SIGKILL it ourselves.
    ///
    /// # Caveats
    /// `grace` is rounded down to whole seconds (Docker's unit, see [`stop_timeout`]). The
    /// exited container stays until [`DockerDriver::destroy`], so its logs and exit code
    /// remain readable.
    pub async fn stop(&self, handle: &Handle, grace: Duration) -> Result<()> {
        if !self.inspect(handle).await?.is_running() {
            return Ok(());
        }
        let options = StopContainerOptionsBuilder::default()
            .t(stop_timeout(grace))
            .build();
        // The client's own request timeout may cut a long stop short; then we keep polling until
        // the grace period is really over before killing.
        let deadline = tokio::time::Instant::now() + grace + CONFIRM_TIMEOUT;
        match tokio::time::timeout_at(
            deadline,
            self.docker.stop_container(&handle.id, Some(options)),
        )
        .await
        {
            Ok(Ok(())) => {}
            // 304: already stopped; 404: already gone.
            Ok(Err(BollardError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            })) => {}
            Ok(Err(e)) => tracing::warn!(container = %handle.id, error = %e, "docker stop failed"),
            Err(_) => tracing::warn!(container = %handle.id, "docker stop timed out"),
        }
        if self.confirm_stopped(handle, deadline).await? {
            return Ok(());
        }
        tracing::warn!(container = %handle.id, "still running after the grace period, killing");
        let kill = KillContainerOptionsBuilder::default()
            .signal("SIGKILL")
            .build();
        match self.docker.kill_container(&handle.id, Some(kill)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => {}
            Err(e) => return Err(map_err(e, &handle.id)),
        }
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        if self.confirm_stopped(handle, deadline).await? {
            Ok(())
        } else {
            Err(Error::Runtime {
                message: format!("container {} still running after SIGKILL", handle.id),
            })
        }
    }

    /// Polls until the container is not running (`true`) or `deadline` passes (`false`).
    async fn confirm_stopped(
        &self,
        handle: &Handle,
        deadline: tokio::time::Instant,
    ) -> Result<bool> {
        loop {
            if !self.inspect(handle).await?.is_running() {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// See [`super::Driver::destroy`]: removes the container (killing it if needed).
    pub async fn destroy(&self, handle: &Handle) -> Result<()> {
        self.remove(&handle.id).await
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(map_err(e, id)),
        }
    }

    /// See [`super::Driver::logs`]. Docker's stream is demultiplexed into stdout and stderr
    /// lines; a frame holding several lines yields several [`LogLine`]s.
    pub fn logs(
        &self,
        handle: &Handle,
        follow: bool,
        tail: Option<usize>,
    ) -> BoxStream<'static, Result<LogLine>> {
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            // Line times, for `drover logs --since/--timestamps` and retained output.
            .timestamps(true)
            .tail(&tail)
            .build();
        let id = handle.id.clone();
        self.docker
            .logs(&handle.id, Some(options))
            .flat_map(move |chunk| {
                let lines = match chunk {
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        super::split_timed_lines(LogStream::Stderr, &message)
                            .into_iter()
                            .map(Ok)
                            .collect()
                    }
                    Ok(
                        bollard::container::LogOutput::StdOut { message }
                        | bollard::container::LogOutput::Console { message },
                    ) => super::split_timed_lines(LogStream::Stdout, &message)
                        .into_iter()
                        .map(Ok)
                        .collect(),
                    Ok(bollard::container::LogOutput::StdIn { .. }) => Vec::new(),
                    Err(e) => vec![Err(map_err(e, &id))],
                };
                futures::stream::iter(lines)
            })
            .boxed()
    }

    /// See [`super::Driver::recover`].
    ///
    /// # Guarantees
    /// Returns every container, running or exited, labelled `dev.drover.node=<node>` with complete
    /// instance labels, with its current state.
    ///
    /// # Caveats
    /// Containers with partial labels are skipped (and left alone): they were not made by us.
    pub async fn recover(&self, node: &str) -> Result<Vec<RecoveredInstance>> {
        let filters = HashMap::from([("label", vec![format!("{}={node}", labels::NODE)])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| map_err(e, node))?;
        let mut found = Vec::new();
        for summary in containers {
            let Some(id) = summary.id else { continue };
            let c = match self.inspect_raw(&id).await {
                Ok(c) => c,
                Err(Error::NotFound { .. }) => continue, // removed meanwhile
                Err(e) => return Err(e),
            };
            let Some(meta) = meta_of(&c) else {
                tracing::warn!(container = %id, "skipping a container with incomplete drover labels");
                continue;
            };
            found.push(RecoveredInstance {
                handle: handle_of(&c, &id)?,
                state: state_of(&c),
                meta,
            });
        }
        Ok(found)
    }

    async fn inspect_raw(&self, id: &str) -> Result<ContainerInspectResponse> {
        self.docker
            .inspect_container(id, None)
            .await
            .map_err(|e| map_err(e, id))
    }
}

impl super::Driver for DockerDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Docker
    }
    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint> {
        DockerDriver::fingerprint(self).boxed()
    }
    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, Result<Handle>> {
        DockerDriver::start(self, req).boxed()
    }
    fn inspect<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<TaskState>> {
        DockerDriver::inspect(self, handle).boxed()
    }
    fn wait<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<TaskState>> {
        DockerDriver::wait(self, handle).boxed()
    }
    fn stop<'a>(&'a self, handle: &'a Handle, grace: Duration) -> BoxFuture<'a, Result<()>> {
        DockerDriver::stop(self, handle, grace).boxed()
    }
    fn destroy<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<()>> {
        DockerDriver::destroy(self, handle).boxed()
    }
    fn logs(
        &self,
        handle: &Handle,
        follow: bool,
        tail: Option<usize>,
    ) -> BoxStream<'static, Result<LogLine>> {
        DockerDriver::logs(self, handle, follow, tail)
    }
    fn recover<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<RecoveredInstance>>> {
        DockerDriver::recover(self, node).boxed()
    }
}

/// Docker's stop timeout (whole seconds) for `grace`, rounded **down**.
///
/// # Guarantees
/// Never longer than `grace`: a grace clipped by self-fencing ([`crate::fence::clip_grace`]) is
/// fractional, and rounding it up would let SIGKILL come after the fencing deadline. Graces
/// from a spec are whole seconds and pass unchanged.
pub fn stop_timeout(grace: Duration) -> i32 {
    i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_timeout_rounds_a_clipped_grace_down() {
        assert_eq!(stop_timeout(Duration::from_millis(3500)), 3);
        assert_eq!(stop_timeout(Duration::from_millis(999)), 0);
        assert_eq!(stop_timeout(Duration::ZERO), 0);
        assert_eq!(stop_timeout(Duration::from_secs(30)), 30);
        assert_eq!(stop_timeout(Duration::MAX), i32::MAX);
    }
}
