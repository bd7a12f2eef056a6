//! The client side of the agent service: connecting to an agent at the address its node key
//! advertises, `Ping`, and the `Logs` stream `drover logs` prints.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};

use crate::agent::v1 as pb;
use crate::agent::v1::agent_client::AgentClient;
use crate::tls::ClientTls;

/// How long connecting to an agent may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a call to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent address is not a valid endpoint.
    #[error("bad agent address {address:?}: {message}")]
    Address {
        /// The address given.
        address: String,
        /// Why it is unusable.
        message: String,
    },
    /// Connecting to the agent failed.
    #[error("connecting to agent at {address}: {}", causes(source))]
    Connect {
        /// The address.
        address: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The agent answered with an error (e.g. `NotFound` for an instance it does not run).
    #[error("agent: {}: {}{}", .0.code(), .0.message(), cause_suffix(.0))]
    Status(#[from] tonic::Status),
}

impl Error {
    /// Whether the call ended because the connection did, not by an answer of the agent (as
    /// when an mTLS agent refuses the client's certificate after the client's handshake is
    /// done, on the first request).
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            Error::Status(status) if matches!(
                status.code(),
                tonic::Code::Cancelled | tonic::Code::Unavailable | tonic::Code::Unknown
            )
        )
    }
}

/// `error` and its sources, joined: tonic's transport error says only "transport error" and
/// keeps the reason (a refused certificate, a refused connection) in its sources.
#[must_use]
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        // Some layers print their source in their own message already.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}

/// The sources of a status (such as a TLS alert that ended the connection), after ": ".
fn cause_suffix(status: &tonic::Status) -> String {
    std::error::Error::source(status)
        .map(|cause| format!(": {}", causes(cause)))
        .unwrap_or_default()
}

/// How to reach one agent: the address its node key advertises (`host:port`) and, when it
/// serves TLS, the client's TLS settings.
#[derive(Debug, Clone)]
pub struct AgentEndpoint {
    address: String,
    tls: Option<ClientTls>,
}

impl AgentEndpoint {
    /// Plaintext gRPC (`http://`), for an agent started without TLS.
    pub fn plaintext(address: impl Into<String>) -> Self {
        AgentEndpoint {
            address: address.into(),
            tls: None,
        }
    }

    /// gRPC over TLS (`https://`): the agent's certificate is verified against the CA of
    /// `tls` and must name the host of `address` (an IP address SAN for an IP).
    pub fn tls(address: impl Into<String>, tls: ClientTls) -> Self {
        AgentEndpoint {
            address: address.into(),
            tls: Some(tls),
        }
    }

    /// The address.
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// A stream of an instance's output lines.
pub type LogLines = Pin<Box<dyn Stream<Item = Result<String>> + Send>>;

/// What to ask an agent's `Logs` for (see `proto/drover/agent/v1/agent.proto`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogsQuery {
    /// The instance id, e.g. `default.echo.0`.
    pub instance: String,
    /// Keep the stream open for new lines.
    pub follow: bool,
    /// Only the last N lines (`None`: all).
    pub tail: Option<u32>,
    /// The previous container's or process's output instead of the current one.
    pub previous: bool,
    /// Only lines written at or after this time, in Unix nanoseconds.
    pub since_unix_nanos: Option<i64>,
}

/// A stream of an instance's output lines as the agent sends them (text, source, time).
pub type LogRecords = Pin<Box<dyn Stream<Item = Result<pb::LogLine>> + Send>>;

/// Streams an instance's output from `agent`: the last `tail` lines (all with `None`), then
/// new lines while `follow`.
pub async fn logs(
    agent: &AgentEndpoint,
    instance: &str,
    follow: bool,
    tail: Option<u32>,
) -> Result<LogLines> {
    let query = LogsQuery {
        instance: instance.to_string(),
        follow,
        tail,
        ..LogsQuery::default()
    };
    let records = logs_with(agent, &query).await?;
    Ok(Box::pin(records.map(|item| item.map(|l| l.line))))
}

/// Streams what `query` asks for from `agent`, each line with its source and time.
pub async fn logs_with(agent: &AgentEndpoint, query: &LogsQuery) -> Result<LogRecords> {
    let mut client = connect(agent).await?;
    let stream = client
        .logs(pb::LogsRequest {
            instance: query.instance.clone(),
            follow: query.follow,
            tail_lines: query.tail.unwrap_or(0),
            previous: query.previous,
            since_unix_nanos: query.since_unix_nanos.unwrap_or(0),
        })
        .await?
        .into_inner();
    Ok(Box::pin(stream.map(|item| item.map_err(Error::from))))
}

/// Pings `agent`.
pub async fn ping(agent: &AgentEndpoint) -> Result<pb::PingReply> {
    let mut client = connect(agent).await?;
    Ok(client.ping(pb::PingRequest {}).await?.into_inner())
}

async fn connect(agent: &AgentEndpoint) -> Result<AgentClient<tonic::transport::Channel>> {
    let address = agent.address.as_str();
    let bad = |message: String| Error::Address {
        address: address.to_string(),
        message,
    };
    let scheme = if agent.tls.is_some() { "https" } else { "http" };
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("{scheme}://{address}")
    };
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(url).map_err(|e| bad(e.to_string()))?;
    if let Some(tls) = &agent.tls {
        if endpoint.uri().scheme_str() != Some("https") {
            return Err(bad("TLS to an agent needs an https:// address".to_string()));
        }
        let host = endpoint
            .uri()
            .host()
            .ok_or_else(|| bad("no host to verify the agent's certificate for".to_string()))?;
        // The URI keeps an IPv6 host in brackets; the certificate's IP SAN has none.
        let server_name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        endpoint = endpoint
            .tls_config(tls.config(&server_name))
            .map_err(|e| bad(format!("TLS settings: {e}")))?;
    }
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|source| Error::Connect {
            address: address.to_string(),
            source,
        })?;
    Ok(AgentClient::new(channel))
}
