//! Store configuration: endpoints, TLS and user, timeouts, retry policy, and their documented
//! defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::security::{check_endpoints, Scheme, TlsConfig, UserConfig};

/// How to reach etcd and how hard to try.
///
/// Durations (de)serialize in the human form (`"250ms"`, `"5s"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// etcd client URLs, `http://host:port`, `https://host:port` or `host:port` (then
    /// `https://` when `tls` is set, else `http://`); all must use the same scheme.
    /// Default: `["http://127.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// TLS to etcd: the CA to verify its certificate with, and a client certificate.
    /// Default: none (plain http).
    pub tls: TlsConfig,
    /// The etcd user to authenticate as, when etcd's auth is on. Default: none.
    pub user: Option<UserConfig>,
    /// Bound on establishing a connection, and on [`Store::connect`](crate::Store::connect)
    /// as a whole. Default: 3 s.
    #[serde(with = "drover_api::duration::human")]
    pub connect_timeout: Duration,
    /// Bound on each unary request attempt (get, put, txn, lease grant…). Default: 5 s.
    #[serde(with = "drover_api::duration::human")]
    pub request_timeout: Duration,
    /// HTTP/2 ping interval on every connection, so a silently dead peer is noticed. Default: 5 s.
    #[serde(with = "drover_api::duration::human")]
    pub keepalive_interval: Duration,
    /// How long an HTTP/2 ping may go unanswered before the connection is dropped. Default: 3 s.
    #[serde(with = "drover_api::duration::human")]
    pub keepalive_timeout: Duration,
    /// How long an endpoint that failed in transport is avoided while others are live.
    /// Default: 5 s.
    #[serde(with = "drover_api::duration::human")]
    pub dead_endpoint_cooldown: Duration,
    /// Keys fetched per range request when listing a prefix. Default: 500.
    pub page_size: usize,
    /// The server's `--max-txn-ops` (the most compares or operations in one txn). Default: 128.
    pub max_txn_ops: usize,
    /// The server's `--max-request-bytes`: the largest request etcd accepts. Batched commits
    /// stay under it with room to spare. Default: 1.5 MiB (etcd's default).
    pub max_request_bytes: usize,
    /// The largest response this client decodes (a list page, a watch response). etcd bounds
    /// list pages by key count, not bytes, so this is far above gRPC's 4 MiB default: a page of
    /// `page_size` keys each as large as `max_request_bytes` allows must fit. Default: 256 MiB.
    pub max_response_bytes: usize,
    /// Retry policy for idempotent calls.
    pub retry: RetryConfig,
    /// Append one JSON line per write that created a revision (`{"revision":R,"op":"txn"}`)
    /// to this file: with a watch of the prefix, it tells which process wrote each key. The
    /// `drover` binary sets it from `DROVER_WRITE_LOG`. Default: none.
    pub write_log: Option<PathBuf>,
}

/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// The smallest `max_request_bytes` accepted.
const MIN_REQUEST_BYTES: usize = 64 * 1024;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            tls: TlsConfig::default(),
            user: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(3),
            dead_endpoint_cooldown: Duration::from_secs(5),
            page_size: 500,
            max_txn_ops: 128,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_response_bytes: 256 * 1024 * 1024,
            retry: RetryConfig::default(),
            write_log: None,
        }
    }
}

impl StoreConfig {
    /// The default config pointed at `endpoints`.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> StoreConfig {
        StoreConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..StoreConfig::default()
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        if self.endpoints.is_empty() {
            return bad("endpoints: at least one etcd endpoint is required".into());
        }
        self.tls.validate()?;
        if let Some(user) = &self.user {
            user.validate()?;
        }
        self.urls()?;
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("{name}: must be greater than zero"));
            }
        }
        if self.page_size == 0 {
            return bad("page_size: must be at least 1".into());
        }
        if self.max_txn_ops < 2 {
            return bad("max_txn_ops: must be at least 2".into());
        }
        if self.max_request_bytes < MIN_REQUEST_BYTES {
            return bad(format!(
                "max_request_bytes: must be at least {MIN_REQUEST_BYTES} (etcd's own floor for useful work)"
            ));
        }
        if self.max_response_bytes < self.max_request_bytes {
            return bad("max_response_bytes: must be at least max_request_bytes".into());
        }
        self.retry.validate()
    }

    /// The endpoints as `http://` or `https://` URLs, all the same.
    pub(crate) fn urls(&self) -> Result<Vec<String>> {
        let scheme = check_endpoints(&self.endpoints, &self.tls)?;
        self.endpoints
            .iter()
            .map(|e| normalize_endpoint(e, scheme))
            .collect()
    }
}

/// Exponential backoff with full jitter for idempotent calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per call including the first; 1 disables retries. Default: 8.
    pub max_attempts: u32,
    /// Upper bound of the first backoff (the actual wait is uniform in `[0, bound]`).
    /// Default: 50 ms.
    #[serde(with = "drover_api::duration::human")]
    pub initial_backoff: Duration,
    /// The bound doubles per attempt up to this. Default: 1 s.
    #[serde(with = "drover_api::duration::human")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::InvalidConfig(
                "retry.max_attempts: must be at least 1".into(),
            ));
        }
        if self.initial_backoff.is_zero() || self.max_backoff < self.initial_backoff {
            return Err(Error::InvalidConfig(
                "retry: need 0 < initial_backoff <= max_backoff".into(),
            ));
        }
        Ok(())
    }
}

/// `host:port` → `<scheme>host:port`; `http://…` and `https://…` are kept (their agreement with
/// `scheme` is [`check_endpoints`]' job); anything else is an error.
fn normalize_endpoint(endpoint: &str, scheme: Scheme) -> Result<String> {
    let e = endpoint.trim().trim_end_matches('/');
    let host_port = if let Some(rest) = e.strip_prefix(scheme.prefix()) {
        rest
    } else if e.contains("://") {
        return Err(Error::InvalidConfig(format!(
            "endpoints: {endpoint}: unsupported scheme (use http:// or https://)"
        )));
    } else {
        e
    };
    let port_ok = host_port
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok || host_port.contains('/') {
        return Err(Error::InvalidConfig(format!(
            "endpoints: {endpoint}: expected host:port, http://host:port or https://host:port"
        )));
    }
    Ok(format!("{}{host_port}", scheme.prefix()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn defaults_are_valid() {
        StoreConfig::default().validate().expect("valid");
    }

    #[test]
    fn endpoints_accept_every_form() {
        let http = |e: &str| normalize_endpoint(e, Scheme::Http);
        assert_eq!(http("127.0.0.1:2379").expect("ok"), "http://127.0.0.1:2379");
        assert_eq!(
            http("http://localhost:2379/").expect("ok"),
            "http://localhost:2379"
        );
        assert!(http("a").is_err());
        assert!(http("a:notaport").is_err());
        assert!(http("unix://x").is_err());
        let https = |e: &str| normalize_endpoint(e, Scheme::Https);
        assert_eq!(https("a:1").expect("ok"), "https://a:1");
        assert_eq!(https("https://a:1/").expect("ok"), "https://a:1");
        assert!(https("https://a").is_err());
    }

    #[test]
    fn https_endpoints_need_a_ca_and_every_endpoint_the_same_scheme() {
        let msg = StoreConfig::new(["https://a:1"])
            .validate()
            .expect_err("no CA")
            .to_string();
        assert!(msg.contains("--etcd-cafile"), "{msg}");
        let mut cfg = StoreConfig::new(["https://a:1", "b:2"]);
        cfg.tls.ca_file = Some("ca.pem".into());
        cfg.validate().expect("CA given; b:2 becomes https");
        assert_eq!(cfg.urls().expect("urls"), ["https://a:1", "https://b:2"]);
        cfg.endpoints.push("http://c:3".into());
        let msg = cfg.validate().expect_err("mixed").to_string();
        assert!(msg.contains("http://c:3"), "{msg}");
        cfg.endpoints = vec!["a:1".into()];
        cfg.tls.cert_file = Some("client.pem".into());
        let msg = cfg.validate().expect_err("no key").to_string();
        assert!(msg.contains("--etcd-keyfile"), "{msg}");
    }

    #[test]
    fn validate_names_the_field() {
        let cfg = StoreConfig {
            page_size: 0,
            ..StoreConfig::default()
        };
        let err = cfg.validate().expect_err("invalid").to_string();
        assert!(err.contains("page_size"), "{err}");
        let cfg = StoreConfig::new(Vec::<String>::new());
        assert!(cfg
            .validate()
            .expect_err("invalid")
            .to_string()
            .contains("endpoints"));
    }

    #[test]
    fn serde_round_trip_in_human_durations() {
        let json = r#"{"endpoints":["a:1"],"request_timeout":"250ms","retry":{"max_attempts":2}}"#;
        let cfg: StoreConfig = serde_json::from_str(json).expect("parse");
        assert_eq!(cfg.request_timeout, Duration::from_millis(250));
        assert_eq!(cfg.retry.max_attempts, 2);
        assert_eq!(cfg.retry.initial_backoff, Duration::from_millis(50));
        assert!(serde_json::from_str::<StoreConfig>(r#"{"nope":1}"#).is_err());
        let json = r#"{"endpoints":["https://a:1"],"tls":{"ca_file":"/ca.pem"},
            "user":{"name":"root","password_file":"/pw"}}"#;
        let cfg: StoreConfig = serde_json::from_str(json).expect("parse");
        assert_eq!(cfg.tls.ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(cfg.user.as_ref().map(|u| u.name.as_str()), Some("root"));
        cfg.validate().expect("valid");
    }
}
