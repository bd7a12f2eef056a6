//! Health checks: HTTP GET (through [`drover_runtime::http`]), TCP connect and exec probes, run
//! every `periodSeconds` after `initialDelaySeconds`, with a `failureThreshold` of consecutive
//! failures before the instance is declared unhealthy.
//!
//! Ports in a health check are *container* ports: the probe connects to the host port the
//! agent published for it (docker, process), or to the port itself on 127.0.0.1 when it is not
//! published (a process listening on a fixed port). Exec probes run the command on the host
//! for process instances and through `docker exec` for containers. Hollow instances are never
//! probed (there is nothing to connect to).

use std::net::SocketAddr;
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::Docker;
use drover_api::instance::{Health, PortBinding};
use drover_api::task::HealthCheck;
use drover_runtime::http;

use crate::driver::process::Launch;
use futures::StreamExt;

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why one probe failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer within `timeoutSeconds`.
    #[error("probe timed out after {0:?}")]
    Timeout(Duration),
    /// Connecting or talking to the instance failed.
    #[error("probe I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP answer was not 2xx/3xx.
    #[error("HTTP probe answered {0}")]
    HttpStatus(u16),
    /// The HTTP probe got no usable answer: not HTTP, cut short, or a body over
    /// [`http::MAX_BODY`].
    #[error("HTTP probe: {0}")]
    Http(http::Error),
    /// The exec probe's command exited non-zero (or could not run).
    #[error("exec probe failed: {0}")]
    Exec(String),
    /// The health check has no probe set.
    #[error("health check has no http, tcp or exec probe")]
    NoProbe,
}

impl From<http::Error> for Error {
    /// Keeps the probe's own meaning of a timeout and of a failed connect.
    fn from(error: http::Error) -> Self {
        match error {
            http::Error::Timeout(limit) => Error::Timeout(limit),
            http::Error::Connect(error) => Error::Io(error),
            other => Error::Http(other),
        }
    }
}

/// Where and how to probe one running instance.
#[derive(Clone)]
pub struct Probe {
    /// The health check from the spec.
    pub check: HealthCheck,
    /// Published ports of the instance.
    pub ports: Vec<PortBinding>,
    /// The container to `docker exec` into; `None` runs exec probes on the host.
    pub docker: Option<(Docker, String)>,
    /// How exec probes run on the host: as the process instance itself runs (user, group,
    /// environment, working directory). `None` (it could not be prepared) fails them rather
    /// than running them as the agent.
    pub host: Option<Launch>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").field("check", &self.check).finish()
    }
}

impl Probe {
    fn addr(&self, container_port: u16) -> SocketAddr {
        let port = self
            .ports
            .iter()
            .find(|p| p.container_port == container_port)
            .map_or(container_port, |p| p.host_port);
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.check.timeout_seconds.max(1)))
    }

    /// Runs the probe once, bounded by `timeoutSeconds`.
    pub async fn once(&self) -> Result<()> {
        let limit = self.timeout();
        let attempt = async {
            if let Some(probe) = &self.check.http {
                let status = http::get(self.addr(probe.port), &probe.path, limit)
                    .await?
                    .status;
                return if (200..400).contains(&status) {
                    Ok(())
                } else {
                    Err(Error::HttpStatus(status))
                };
            }
            if let Some(tcp) = &self.check.tcp {
                tokio::net::TcpStream::connect(self.addr(tcp.port)).await?;
                return Ok(());
            }
            if let Some(exec) = &self.check.exec {
                return match &self.docker {
                    Some((docker, container)) => {
                        docker_exec(docker, container, &exec.command).await
                    }
                    None => host_exec(self.host.as_ref(), &exec.command).await,
                };
            }
            Err(Error::NoProbe)
        };
        tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| Error::Timeout(limit))?
    }

    /// Probes every period until the instance is unhealthy, reporting each change of health
    /// through `report` (the first success reports `Healthy`); returns after reporting
    /// `Unhealthy`. Drop the future to stop probing.
    pub async fn run(&self, mut report: impl FnMut(Health, Option<String>)) {
        let period = Duration::from_secs(u64::from(self.check.period_seconds.max(1)));
        tokio::time::sleep(Duration::from_secs(u64::from(
            self.check.initial_delay_seconds,
        )))
        .await;
        let mut tracker = Tracker::new(self.check.failure_threshold);
        loop {
            let result = self.once().await;
            let message = result.as_ref().err().map(ToString::to_string);
            if let Some(health) = tracker.record(result.is_ok()) {
                report(health, message);
                if health == Health::Unhealthy {
                    return;
                }
            }
            tokio::time::sleep(period).await;
        }
    }
}

/// Counts consecutive failures; reports a change of health.
#[derive(Debug, Clone)]
pub struct Tracker {
    threshold: u32,
    failures: u32,
    health: Health,
}

impl Tracker {
    /// A tracker with `failureThreshold` (at least 1).
    pub fn new(threshold: u32) -> Self {
        Tracker {
            threshold: threshold.max(1),
            failures: 0,
            health: Health::Unknown,
        }
    }

    /// Records one probe result; returns the new health when it changed.
    pub fn record(&mut self, ok: bool) -> Option<Health> {
        let next = if ok {
            self.failures = 0;
            Health::Healthy
        } else {
            self.failures += 1;
            if self.failures >= self.threshold {
                Health::Unhealthy
            } else {
                self.health
            }
        };
        (next != self.health).then(|| {
            self.health = next;
            next
        })
    }
}

async fn host_exec(launch: Option<&Launch>, command: &[String]) -> Result<()> {
    let Some(launch) = launch else {
        return Err(Error::Exec(
            "not run: the instance's user, group or working directory could not be resolved".into(),
        ));
    };
    let (mut cmd, program) = launch
        .command(command)
        .map_err(|e| Error::Exec(e.to_string()))?;
    let program = program.display();
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| Error::Exec(format!("{program}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Exec(format!("{program} exited with {status}")))
    }
}

async fn docker_exec(docker: &Docker, container: &str, command: &[String]) -> Result<()> {
    let fail = |e: bollard::errors::Error| Error::Exec(e.to_string());
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(command.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(fail)?;
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, None).await.map_err(fail)?
    {
        // Drain the output so the exec runs to its end.
        while output.next().await.is_some() {}
    }
    let inspect = docker.inspect_exec(&exec.id).await.map_err(fail)?;
    match inspect.exit_code {
        Some(0) => Ok(()),
        code => Err(Error::Exec(format!("exit code {code:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn tracker_counts_consecutive_failures() {
        let mut t = Tracker::new(2);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), Some(Health::Healthy));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(Health::Unhealthy));
    }

    #[tokio::test]
    async fn http_tcp_and_exec_probes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let n = c.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let answer = if request.contains("/garbage") {
                    "SSH-2.0-OpenSSH_9.6\r\n\r\n".to_string()
                } else {
                    let code = if request.contains("/bad") { 500 } else { 200 };
                    format!("HTTP/1.0 {code} X\r\n\r\n")
                };
                let _ = c.write_all(answer.as_bytes()).await;
            }
        });
        let req = crate::driver::StartRequest {
            meta: crate::driver::InstanceMeta {
                instance: "default.probe.0".parse().expect("id"),
                node: "n1".into(),
                generation: 1,
                attempt: 1,
            },
            spec: Default::default(),
            ports: Vec::new(),
        };
        let policy = crate::driver::process::Policy::of_this_process(true);
        let host = Launch::prepare(&req, policy).expect("launch as the agent");
        let check = |json: serde_json::Value| Probe {
            check: serde_json::from_value(json).expect("check"),
            ports: vec![PortBinding {
                container_port: 7,
                host_port: addr.port(),
            }],
            docker: None,
            host: Some(host.clone()),
        };
        check(serde_json::json!({"http": {"path": "/ok", "port": 7}}))
            .once()
            .await
            .expect("200");
        assert!(matches!(
            check(serde_json::json!({"http": {"path": "/bad", "port": 7}}))
                .once()
                .await,
            Err(Error::HttpStatus(500))
        ));
        let garbage = check(serde_json::json!({"http": {"path": "/garbage", "port": 7}}))
            .once()
            .await;
        assert!(
            matches!(garbage, Err(Error::Http(http::Error::Protocol(_)))),
            "{garbage:?}"
        );
        check(serde_json::json!({"tcp": {"port": 7}}))
            .once()
            .await
            .expect("connect");
        check(serde_json::json!({"exec": {"command": ["true"]}}))
            .once()
            .await
            .expect("true");
        assert!(check(serde_json::json!({"exec": {"command": ["false"]}}))
            .once()
            .await
            .is_err());
        // Without a launch, an exec probe is not run as the agent: it fails.
        let mut unprepared = check(serde_json::json!({"exec": {"command": ["true"]}}));
        unprepared.host = None;
        assert!(matches!(unprepared.once().await, Err(Error::Exec(_))));
    }
}
