//! The operator's seat: `drover` and `etcdctl` run on the cluster's `cli` host, which no
//! scenario faults, so commands keep working while a controller, an agent or an etcd member is
//! killed or cut off. Cloneable, so a load generator can drive the cluster from its own task.

use crate::docker::{self, docker, docker_with_input};

/// Why a command on the cli host failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command (or docker) failed.
    #[error(transparent)]
    Docker(#[from] docker::Error),
    /// etcdctl answered something this module does not understand.
    #[error("etcdctl {what}: {detail}")]
    Etcdctl {
        /// What was asked.
        what: &'static str,
        /// What was wrong with the answer.
        detail: String,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A handle on the cli host.
#[derive(Debug, Clone)]
pub struct Cli {
    container: String,
    endpoints: Vec<String>,
}

/// One etcd member's view, from `etcdctl endpoint status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its client URL.
    pub endpoint: String,
    /// Whether it is the raft leader.
    pub leader: bool,
    /// The store revision it has applied.
    pub revision: i64,
}

impl Cli {
    /// A handle on `container`, whose drover and etcdctl talk to `endpoints`.
    pub fn new(container: String, endpoints: Vec<String>) -> Cli {
        Cli {
            container,
            endpoints,
        }
    }

    /// Runs `drover ARGS` against the cluster; returns its stdout.
    pub async fn drover(&self, args: &[&str]) -> Result<String> {
        let etcd = self.endpoints.join(",");
        let mut all = vec!["exec", self.container.as_str(), "/drover", "--etcd", &etcd];
        all.extend_from_slice(args);
        Ok(docker(&all).await?)
    }

    /// `drover apply -f -` of the manifest `text`, handed over on standard input.
    pub async fn apply(&self, text: &str) -> Result<String> {
        let etcd = self.endpoints.join(",");
        let args = [
            "exec",
            "-i",
            self.container.as_str(),
            "/drover",
            "--etcd",
            &etcd,
            "apply",
            "-f",
            "-",
        ];
        Ok(docker_with_input(&args, text.as_bytes()).await?)
    }

    /// Runs `etcdctl ARGS` against `endpoints` (all members when empty); returns its stdout.
    pub async fn etcdctl(&self, endpoints: &[String], args: &[&str]) -> Result<String> {
        let to = if endpoints.is_empty() {
            self.endpoints.join(",")
        } else {
            endpoints.join(",")
        };
        let flag = format!("--endpoints={to}");
        let mut all = vec![
            "exec",
            "-e",
            "ETCDCTL_API=3",
            self.container.as_str(),
            "/usr/bin/etcdctl",
            "--command-timeout=3s",
            &flag,
        ];
        all.extend_from_slice(args);
        Ok(docker(&all).await?)
    }

    /// The status of every member that answers (a dead one is left out).
    pub async fn member_statuses(&self) -> Result<Vec<MemberStatus>> {
        let mut out = Vec::new();
        for endpoint in &self.endpoints {
            let Ok(text) = self
                .etcdctl(
                    std::slice::from_ref(endpoint),
                    &["endpoint", "status", "-w", "json"],
                )
                .await
            else {
                continue;
            };
            let parsed: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Etcdctl {
                    what: "endpoint status",
                    detail: format!("{e}: {text}"),
                })?;
            let status = &parsed[0]["Status"];
            let (Some(member), Some(leader), Some(revision)) = (
                status["header"]["member_id"].as_u64(),
                status["leader"].as_u64(),
                status["header"]["revision"].as_i64(),
            ) else {
                return Err(Error::Etcdctl {
                    what: "endpoint status",
                    detail: format!("no member_id, leader or revision in {text}"),
                });
            };
            out.push(MemberStatus {
                endpoint: endpoint.clone(),
                leader: member == leader,
                revision,
            });
        }
        Ok(out)
    }

    /// Compacts etcd's history up to its current revision; returns that revision.
    pub async fn compact_all(&self) -> Result<i64> {
        let revision = self
            .member_statuses()
            .await?
            .iter()
            .map(|s| s.revision)
            .max()
            .ok_or(Error::Etcdctl {
                what: "endpoint status",
                detail: "no member answered".into(),
            })?;
        self.etcdctl(&[], &["compact", &revision.to_string(), "--physical"])
            .await?;
        Ok(revision)
    }
}
