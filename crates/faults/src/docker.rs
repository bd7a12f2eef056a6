//! The docker CLI, as the fault suite uses it: containers with fixed addresses on a private
//! network, and the faults (kill, pause, disconnect). Everything it creates carries the label
//! [`LABEL`], so [`remove_labelled`] can clear what an interrupted run left behind.

use std::time::Duration;

use tokio::process::Command;

/// The label on every container and network the suite creates.
pub const LABEL: &str = "dev.drover.fault-suite.run";

/// How long one docker command may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A docker command that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command could not be run at all.
    #[error("running docker {args}: {source}")]
    Spawn {
        /// The arguments.
        args: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("docker {args} failed: {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// It did not finish in time.
    #[error("docker {args} did not finish within {TIMEOUT:?}")]
    Timeout {
        /// The arguments.
        args: String,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `docker ARGS`; returns its stdout, trimmed.
pub async fn docker(args: &[&str]) -> Result<String> {
    docker_with_input(args, &[]).await
}

/// Runs `docker ARGS` with `input` on its standard input; returns its stdout, trimmed.
pub async fn docker_with_input(args: &[&str], input: &[u8]) -> Result<String> {
    use tokio::io::AsyncWriteExt;
    let shown = args.join(" ");
    let spawn_error = |source| Error::Spawn {
        args: shown.clone(),
        source,
    };
    let mut child = Command::new("docker")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).await.map_err(spawn_error)?;
    }
    let run = child.wait_with_output();
    let output = tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| Error::Timeout {
            args: shown.clone(),
        })?
        .map_err(|source| Error::Spawn {
            args: shown.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Failed {
            args: shown,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Removes every container and network labelled by any run of the suite (`run` = `None`) or by
/// one run. A network the engine refuses to remove is reported and left (see inside).
pub async fn remove_labelled(run: Option<&str>) -> Result<()> {
    let filter = match run {
        Some(run) => format!("label={LABEL}={run}"),
        None => format!("label={LABEL}"),
    };
    let containers = docker(&["ps", "-aq", "--filter", &filter]).await?;
    let ids: Vec<&str> = containers.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids);
        docker(&args).await?;
    }
    let networks = docker(&["network", "ls", "-q", "--filter", &filter]).await?;
    for id in networks.split_whitespace() {
        // The engine can keep a stale endpoint on a network whose containers are all gone
        // ("has active endpoints") until it restarts; such a network only holds its subnet,
        // which the next cluster avoids.
        if let Err(e) = docker(&["network", "rm", id]).await {
            eprintln!("fault suite: leaving network {id} behind: {e}");
        }
    }
    Ok(())
}
