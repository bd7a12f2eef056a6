//! The agent's gRPC service (`proto/drover/agent/v1/agent.proto`): `Ping` and `Logs`. The
//! client side lives in `drover_proto::client` (re-exported here as [`logs_client`], [`ping`],
//! [`AgentEndpoint`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use drover_api::names::InstanceId;
use drover_api::node::NodeInfo;
use drover_proto::agent::v1 as pb;
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
        let key = self.engine.keys().nodeinfo(&self.node);
        let draining =
            tokio::time::timeout(NODEINFO_TIMEOUT, self.engine.store().get::<NodeInfo>(&key))
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
        let found = self.engine.instances().run_of(&self.node, &id);
        let Some((kind, handle)) = found else {
            return Err(Status::not_found(format!(
                "instance {id} does not run on node {}",
                self.node
            )));
        };
        let Some(driver) = self.engine.drivers().get(kind) else {
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

/// Serves the agent service on `listener` until `shutdown`, through `server` (plain, or TLS
/// with client certificates required: see [`crate::grpc_tls::server`]).
pub(crate) async fn serve(
    mut server: tonic::transport::Server,
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
    server
        .add_service(AgentServer::new(svc))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await?;
    Ok(())
}

pub use drover_proto::client::{logs as logs_client, ping, AgentEndpoint};
