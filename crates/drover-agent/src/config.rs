//! The agent's configuration: every default documented, checked by [`AgentConfig::validate`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use drover_api::names::is_valid_label;
use drover_api::node::Capacity;
use drover_api::quantity::{Cpu, Memory};
use drover_api::task::DriverKind;
use serde::{Deserialize, Serialize};

use crate::advertise::AdvertiseAddress;
use crate::retained::RetainConfig;

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A configuration the agent cannot run with; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field has a value outside its allowed range or format.
    #[error("invalid agent config: {field}: {message}")]
    Invalid {
        /// The field, as spelled in [`AgentConfig`].
        field: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

/// How the agent runs instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverChoice {
    /// Docker where the daemon answers, plus the process driver for command-only tasks; the
    /// process driver alone otherwise. Default.
    #[default]
    Auto,
    /// Docker (failing at start if the daemon does not answer), plus the process driver for
    /// tasks that have only a `command`.
    Docker,
    /// Host processes only; tasks with an `image` fail with `InvalidSpec`.
    Process,
    /// Simulated instances for every task (scale tests).
    Hollow,
}

impl From<DriverKind> for DriverChoice {
    fn from(kind: DriverKind) -> Self {
        match kind {
            DriverKind::Docker => DriverChoice::Docker,
            DriverKind::Process => DriverChoice::Process,
            DriverKind::Hollow => DriverChoice::Hollow,
        }
    }
}

/// Everything `drover agent` can be told. Durations (de)serialize in the human form (`"250ms"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    /// The node name (DNS-1123 label). Required.
    pub node: String,
    /// Where the gRPC service (`Ping`, `Logs`) listens. Default `127.0.0.1:0`: a free port.
    pub address: SocketAddr,
    /// What the node key advertises as the gRPC address (`--advertise-address`): `HOST` (with
    /// the bound port) or `HOST:PORT`, never `0.0.0.0` or `::`. Default `None`: the bound
    /// address, which then must not be unspecified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_address: Option<AdvertiseAddress>,
    /// The agent's certificate (PEM, chain first) for serving gRPC over TLS
    /// (`--tls-cert-file`). With [`tls_key_file`](Self::tls_key_file) and
    /// [`client_ca_file`](Self::client_ca_file): all three or none. Default `None`: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `tls_cert_file` (`--tls-key-file`). Default `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// The CA that client certificates must chain to (`--client-ca-file`): with TLS on, a
    /// client without such a certificate is refused. Default `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// Let the process driver of an agent running as root run processes as root: tasks that
    /// set no `spec.user`, or name root (`--allow-root-tasks`). Default false: they fail with
    /// `RunAsRootRefused`.
    #[serde(default)]
    pub allow_root_tasks: bool,
    /// TTL of the node's lease; keep-alives go every TTL/6. Default 10 s, at least 2 s
    /// (etcd raises smaller TTLs to its own minimum).
    #[serde(with = "drover_api::duration::human")]
    pub lease_ttl: Duration,
    /// Self-fencing margin: every instance is gone by `last acknowledged keep-alive send time +
    /// lease_ttl - margin`, i.e. at least `margin` before the lease can have expired on the
    /// server. Default `None` = max(1 s, lease_ttl / 10). Must be below lease_ttl / 2, because
    /// fencing begins at TTL/2.
    #[serde(default, with = "drover_api::duration::human::option")]
    pub self_fence_margin: Option<Duration>,
    /// Labels for `spec.nodeSelector` (`--label k=v`). Default none.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What the scheduler may place here. Default `None` = detected: all CPUs × 1000m and
    /// `MemTotal` from `/proc/meminfo`.
    #[serde(default)]
    pub capacity: Option<Capacity>,
    /// Which drivers run instances. Default [`DriverChoice::Auto`].
    #[serde(default)]
    pub driver: DriverChoice,
    /// Where the process driver keeps pid files and logs and the agent its local records
    /// (fence stop times). Default `.drover/agent/<node>` (relative to the working dir).
    pub state_dir: PathBuf,
    /// On shutdown, leave instances running and do not revoke the lease, so an upgraded agent
    /// started within the TTL adopts them. Default false.
    #[serde(default)]
    pub keep_running_on_shutdown: bool,
    /// Test only: a cut-off agent keeps its copies running instead of fencing them, so the
    /// fault suite can show its checker finds the overlap that follows. Default false.
    #[serde(default)]
    pub unsafe_keep_copies_when_fenced: bool,
    /// Host ports handed out for `spec.ports`. Default `20000..=32000`.
    pub port_range: RangeInclusive<u16>,
    /// IP that docker publishes ports on. Default `0.0.0.0`.
    pub publish_ip: String,
    /// First delay before a local restart; doubles per restart. Default 1 s.
    #[serde(with = "drover_api::duration::human")]
    pub restart_backoff: Duration,
    /// Cap of the restart delay. Default 30 s.
    #[serde(with = "drover_api::duration::human")]
    pub restart_backoff_max: Duration,
    /// Reconciles running at once. Default 16.
    pub concurrency: usize,
    /// How much output of removed runs is kept under `<state_dir>/retained`, for
    /// `drover logs --previous` and `--run`. Defaults: see [`RetainConfig`].
    #[serde(default)]
    pub logs: RetainConfig,
    /// Version string published in the node key and `Ping`. Default: this crate's version.
    pub version: String,
}

impl AgentConfig {
    /// The documented defaults for node `node`.
    pub fn new(node: impl Into<String>) -> Self {
        let node = node.into();
        AgentConfig {
            state_dir: PathBuf::from(".drover/agent").join(&node),
            node,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_address: None,
            tls_cert_file: None,
            tls_key_file: None,
            client_ca_file: None,
            allow_root_tasks: false,
            lease_ttl: Duration::from_secs(10),
            self_fence_margin: None,
            labels: BTreeMap::new(),
            capacity: None,
            driver: DriverChoice::Auto,
            keep_running_on_shutdown: false,
            unsafe_keep_copies_when_fenced: false,
            port_range: crate::ports::DEFAULT_RANGE,
            publish_ip: "0.0.0.0".into(),
            restart_backoff: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(30),
            concurrency: 16,
            logs: RetainConfig::default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The effective self-fencing margin: the configured one, or max(1 s, TTL/10).
    pub fn fence_margin(&self) -> Duration {
        self.self_fence_margin
            .unwrap_or_else(|| (self.lease_ttl / 10).max(Duration::from_secs(1)))
    }

    /// The configured capacity, or the detected one.
    pub fn effective_capacity(&self) -> Capacity {
        self.capacity.unwrap_or_else(detect_capacity)
    }

    /// The gRPC TLS files, when all three are given; `None` when none is.
    ///
    /// # Guarantees
    ///
    /// A partial set is an error naming the flags that are missing: a half-configured TLS
    /// never falls back to plaintext.
    pub fn grpc_tls(&self) -> Result<Option<GrpcTlsFiles>> {
        let flags = [
            ("--tls-cert-file", &self.tls_cert_file),
            ("--tls-key-file", &self.tls_key_file),
            ("--client-ca-file", &self.client_ca_file),
        ];
        let missing: Vec<&str> = flags
            .iter()
            .filter(|(_, path)| path.is_none())
            .map(|(flag, _)| *flag)
            .collect();
        match (
            &self.tls_cert_file,
            &self.tls_key_file,
            &self.client_ca_file,
        ) {
            (Some(cert), Some(key), Some(client_ca)) => Ok(Some(GrpcTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
            })),
            (None, None, None) => Ok(None),
            _ => {
                let given: Vec<&str> = flags
                    .iter()
                    .filter(|(_, path)| path.is_some())
                    .map(|(flag, _)| *flag)
                    .collect();
                Err(invalid(
                    "tls",
                    format!(
                        "{} given without {}: serving gRPC over mutual TLS takes all three of \
                         --tls-cert-file, --tls-key-file and --client-ca-file (or none, for \
                         plaintext)",
                        given.join(" and "),
                        missing.join(" and ")
                    ),
                ))
            }
        }
    }

    /// Rejects values the agent cannot honour, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.grpc_tls()?;
        if !is_valid_label(&self.node) {
            return Err(invalid(
                "node",
                format!("{:?} is not a DNS-1123 label", self.node),
            ));
        }
        if self.advertise_address.is_none() && self.address.ip().is_unspecified() {
            return Err(invalid(
                "advertiseAddress",
                format!(
                    "--address {} listens on every interface, which is no address to publish: \
                     give --advertise-address HOST[:PORT], the address other nodes and \
                     `drover logs` reach this agent at",
                    self.address
                ),
            ));
        }
        if self.lease_ttl < Duration::from_secs(2) {
            return Err(invalid("leaseTtl", "must be at least 2 s"));
        }
        if self.fence_margin() >= self.lease_ttl / 2 {
            return Err(invalid(
                "selfFenceMargin",
                format!(
                    "{:?} must be below half the lease TTL ({:?}): fencing begins at TTL/2",
                    self.fence_margin(),
                    self.lease_ttl / 2
                ),
            ));
        }
        if self.port_range.is_empty() || *self.port_range.start() == 0 {
            return Err(invalid(
                "portRange",
                "must be a non-empty range of ports above 0",
            ));
        }
        if self.restart_backoff.is_zero() || self.restart_backoff > self.restart_backoff_max {
            return Err(invalid(
                "restartBackoff",
                "must be positive and at most restartBackoffMax",
            ));
        }
        if self.concurrency == 0 {
            return Err(invalid("concurrency", "must be at least 1"));
        }
        if self.logs.keep_per_instance == 0 || self.logs.max_bytes == 0 {
            return Err(invalid(
                "logs",
                "--logs-keep-per-instance and --logs-max-bytes must be at least 1",
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("stateDir", "must not be empty"));
        }
        for (k, v) in &self.labels {
            drover_api::names::validate_label_key(k)
                .map_err(|e| invalid("labels", e.to_string()))?;
            drover_api::names::validate_label_value(v)
                .map_err(|e| invalid("labels", e.to_string()))?;
        }
        Ok(())
    }
}

/// The agent's gRPC TLS files ([`AgentConfig::grpc_tls`]): all three, checked for presence
/// only; their contents are read at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTlsFiles {
    /// `--tls-cert-file`.
    pub cert: PathBuf,
    /// `--tls-key-file`.
    pub key: PathBuf,
    /// `--client-ca-file`.
    pub client_ca: PathBuf,
}

/// All CPUs × 1000m, and `MemTotal` from `/proc/meminfo` (0 where it cannot be read).
pub fn detect_capacity() -> Capacity {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_meminfo_total(&text))
        .unwrap_or(0);
    Capacity {
        cpu: Cpu::millis(u64::try_from(cpus).unwrap_or(1).saturating_mul(1000)),
        memory: Memory::bytes(memory),
    }
}

/// `MemTotal:  16318436 kB` → bytes.
fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_margin_rule_holds() {
        let c = AgentConfig::new("n1");
        c.validate().expect("defaults validate");
        assert_eq!(c.fence_margin(), Duration::from_secs(1));
        let mut big = AgentConfig::new("n1");
        big.lease_ttl = Duration::from_secs(60);
        assert_eq!(big.fence_margin(), Duration::from_secs(6));
    }

    #[test]
    fn bad_values_name_their_field() {
        let mut c = AgentConfig::new("N_1");
        assert!(matches!(
            c.validate(),
            Err(Error::Invalid { field: "node", .. })
        ));
        c.node = "n1".into();
        c.lease_ttl = Duration::from_secs(2);
        assert!(matches!(
            c.validate(),
            Err(Error::Invalid {
                field: "selfFenceMargin",
                ..
            })
        ));
        c.lease_ttl = Duration::from_secs(10);
        c.concurrency = 0;
        assert!(matches!(
            c.validate(),
            Err(Error::Invalid {
                field: "concurrency",
                ..
            })
        ));
    }

    #[test]
    fn an_unspecified_bind_address_needs_an_advertise_address() {
        let mut c = AgentConfig::new("n1");
        c.address = SocketAddr::from(([0, 0, 0, 0], 7400));
        let err = c.validate().expect_err("nothing to advertise");
        assert!(
            matches!(
                err,
                Error::Invalid {
                    field: "advertiseAddress",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("--advertise-address"), "{err}");
        c.address = "[::]:7400".parse().expect("addr");
        assert!(c.validate().is_err());
        c.advertise_address = Some("10.0.0.5".parse().expect("valid"));
        c.validate().expect("advertised explicitly");
        c.address = SocketAddr::from(([127, 0, 0, 1], 0));
        c.advertise_address = None;
        c.validate().expect("loopback advertises itself, as before");
    }

    #[test]
    fn grpc_tls_takes_all_three_files_or_none() {
        let mut c = AgentConfig::new("n1");
        assert_eq!(c.grpc_tls().expect("none is plaintext"), None);
        c.tls_cert_file = Some("agent.pem".into());
        let err = c.validate().expect_err("cert alone");
        assert!(matches!(err, Error::Invalid { field: "tls", .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("--tls-cert-file given without"), "{text}");
        assert!(
            text.contains("--tls-key-file and --client-ca-file"),
            "{text}"
        );
        c.tls_key_file = Some("agent-key.pem".into());
        let text = c.validate().expect_err("no CA").to_string();
        assert!(
            text.contains("--tls-cert-file and --tls-key-file given without --client-ca-file"),
            "{text}"
        );
        c.tls_cert_file = None;
        c.client_ca_file = Some("ca.pem".into());
        let text = c.validate().expect_err("no cert").to_string();
        assert!(text.contains("without --tls-cert-file:"), "{text}");
        c.tls_cert_file = Some("agent.pem".into());
        c.validate().expect("all three");
        assert_eq!(
            c.grpc_tls().expect("all three"),
            Some(GrpcTlsFiles {
                cert: "agent.pem".into(),
                key: "agent-key.pem".into(),
                client_ca: "ca.pem".into(),
            })
        );
        let json = serde_json::to_string(&c).expect("encode");
        let back: AgentConfig = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, c);
    }

    #[test]
    fn meminfo_and_json_round_trip() {
        assert_eq!(
            parse_meminfo_total("MemFree: 1 kB\nMemTotal:  2048 kB\n"),
            Some(2048 * 1024)
        );
        assert!(detect_capacity().cpu.as_millis() >= 1000);
        let c = AgentConfig::new("n1");
        let json = serde_json::to_string(&c).expect("encode");
        let back: AgentConfig = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, c);
    }
}
