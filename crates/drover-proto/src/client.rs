//! The client side of the agent service: connecting to an agent at the address its node key
//! advertises, `Ping`, and the `Logs` stream `drover logs` prints.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};

use crate::agent::v1 as pb;
use crate::agent::v1::agent_client::AgentClient;

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
    #[error("connecting to agent at {address}: {source}")]
    Connect {
        /// The address.
        address: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The agent answered with an error (e.g. `NotFound` for an instance it does not run).
    #[error("agent: {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

/// A stream of an instance's output lines.
pub type LogLines = Pin<Box<dyn Stream<Item = Result<String>> + Send>>;

/// Streams an instance's output from the agent at `address` (`host:port`, as in the node
/// key): the last `tail` lines (all with `None`), then new lines while `follow`.
pub async fn logs(
    address: &str,
    instance: &str,
    follow: bool,
    tail: Option<u32>,
) -> Result<LogLines> {
    let mut client = connect(address).await?;
    let stream = client
        .logs(pb::LogsRequest {
            instance: instance.to_string(),
            follow,
            tail_lines: tail.unwrap_or(0),
        })
        .await?
        .into_inner();
    Ok(Box::pin(
        stream.map(|item| item.map(|l| l.line).map_err(Error::from)),
    ))
}

/// Pings the agent at `address`.
pub async fn ping(address: &str) -> Result<pb::PingReply> {
    let mut client = connect(address).await?;
    Ok(client.ping(pb::PingRequest {}).await?.into_inner())
}

async fn connect(address: &str) -> Result<AgentClient<tonic::transport::Channel>> {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url).map_err(|e| Error::Address {
        address: address.to_string(),
        message: e.to_string(),
    })?;
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
