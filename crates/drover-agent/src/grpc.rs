//! The agent's gRPC service (`proto/drover/agent/v1/agent.proto`): `Ping` and `Logs`, and
//! [`logs_client`], the client side `drover logs` uses.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use drover_api::names::InstanceId;
use drover_api::node::NodeInfo;
use drover_proto::agent::v1 as pb;
use drover_proto::agent::v1::agent_client::AgentClient;
use drover_proto::agent::v1::agent_server::{Agent, AgentServer};
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::converge::Engine;
use crate::driver::LogStream;

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// gRPC failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Serving failed (the listener broke).
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
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
    Status(#[from] Status),
}

/// How long `Ping` waits for `nodeinfo/<node>` before answering without it.
const NODEINFO_TIMEOUT: Duration = Duration::from_millis(500);

struct Service {
    engine: Arc<Engine>,
    node: Arc<str>,
    version: String,
}

type LogLines = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for Service {
    async fn ping(
        &self,
        _req: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingReply>, Status> {
        let running = self.engine.running(Some(&self.node));
        let key = self.engine.keys.nodeinfo(&self.node);
        let draining =
            tokio::time::timeout(NODEINFO_TIMEOUT, self.engine.store.get::<NodeInfo>(&key))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .is_some_and(|v| v.value.draining);
        let state = if draining {
            pb::NodeState::Draining
        } else if running > 0 {
            pb::NodeState::Busy
        } else {
            pb::NodeState::Free
        };
        Ok(Response::new(pb::PingReply {
            node: self.node.to_string(),
            state: state.into(),
            running: u32::try_from(running).unwrap_or(u32::MAX),
            version: self.version.clone(),
        }))
    }

    type LogsStream = LogLines;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<LogLines>, Status> {
        let req = req.into_inner();
        let id: InstanceId = req
            .instance
            .parse()
            .map_err(|e| Status::invalid_argument(format!("{e}")))?;
        let found = {
            let table = self.engine.table();
            table
                .iter()
                .find(|(s, _)| s.id == id && *s.node == *self.node)
                .and_then(|(_, e)| Some((e.kind, e.run.as_ref()?.handle.clone())))
        };
        let Some((kind, handle)) = found else {
            return Err(Status::not_found(format!(
                "instance {id} does not run on node {}",
                self.node
            )));
        };
        let Some(driver) = self.engine.drivers.get(kind) else {
            return Err(Status::unavailable(format!("no {kind} driver")));
        };
        let tail =
            (req.tail_lines > 0).then(|| usize::try_from(req.tail_lines).unwrap_or(usize::MAX));
        let lines = driver
            .logs(&handle, req.follow, tail)
            .map(|item| match item {
                Ok(l) => Ok(pb::LogLine {
                    line: l.line,
                    source: match l.stream {
                        LogStream::Stdout => pb::LogSource::Stdout,
                        LogStream::Stderr => pb::LogSource::Stderr,
                        LogStream::Combined => pb::LogSource::Combined,
                    }
                    .into(),
                }),
                Err(e) => Err(Status::unavailable(e.to_string())),
            });
        Ok(Response::new(Box::pin(lines)))
    }
}

/// Serves the agent service on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    node: Arc<str>,
    version: String,
    shutdown: CancellationToken,
) -> Result<()> {
    let svc = Service {
        engine,
        node,
        version,
    };
    tonic::transport::Server::builder()
        .add_service(AgentServer::new(svc))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await?;
    Ok(())
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
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|source| Error::Connect {
            address: address.to_string(),
            source,
        })?;
    Ok(AgentClient::new(channel))
}

/// Streams an instance's output from the agent at `address` (`host:port`, as in the node
/// key): the last `tail` lines (all with `None`), then new lines while `follow`.
pub async fn logs_client(
    address: &str,
    instance: &str,
    follow: bool,
    tail: Option<u32>,
) -> Result<Pin<Box<dyn Stream<Item = Result<String>> + Send>>> {
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

/// The address to advertise for a listener bound to `bound`.
pub(crate) fn advertised(bound: SocketAddr) -> String {
    bound.to_string()
}
