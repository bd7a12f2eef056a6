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

use chrono::Utc;
use futures::stream::BoxStream;

use crate::converge::Engine;
use crate::driver::{DriverKind, LogLine, LogStream};

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
        let node = &self.node;
        let id: InstanceId = req
            .instance
            .parse()
            .map_err(|e| Status::invalid_argument(format!("instance {:?}: {e}", req.instance)))?;
        let tail =
            (req.tail_lines > 0).then(|| usize::try_from(req.tail_lines).unwrap_or(usize::MAX));
        let since = (req.since_unix_nanos != 0)
            .then(|| chrono::DateTime::<Utc>::from_timestamp_nanos(req.since_unix_nanos));
        let retained = self.engine.retained();
        let outputs = match retained {
            Some(r) => r
                .list(&id)
                .await
                .map_err(|e| Status::internal(format!("instance {id} on node {node}: {e}")))?,
            None => Vec::new(),
        };
        // The current run, unless it was already removed (its output is then the newest
        // retained one: a restart waiting out its backoff).
        let live = self
            .engine
            .instances()
            .run_of(node, &id)
            .filter(|(_, h)| !outputs.last().is_some_and(|o| o.header.is_of(h)));
        let what = if req.previous {
            format!("the previous output of instance {id} on node {node}")
        } else {
            format!("instance {id} on node {node}")
        };
        let lines = match pick(live.is_some(), outputs.len(), req.previous) {
            Some(Pick::Live) => {
                let Some((kind, handle)) = live.clone() else {
                    return Err(Status::internal(format!("{what}: its run vanished")));
                };
                let Some(driver) = self.engine.drivers().get(kind) else {
                    return Err(Status::unavailable(format!(
                        "{what}: node {node} has no {kind} driver"
                    )));
                };
                driver.logs(&handle, req.follow, tail)
            }
            Some(Pick::Retained(i)) => {
                let output = &outputs[i];
                let read = match retained {
                    Some(r) => r.read(output).await,
                    None => Ok(Vec::new()),
                };
                let mut lines = read.map_err(|e| Status::internal(format!("{what}: {e}")))?;
                // `since` before `tail`: the last N lines of those since T.
                if let Some(since) = since {
                    if lines.iter().any(|l| l.time.is_none()) {
                        return Err(untimed(&what, output.header.driver));
                    }
                    lines.retain(|l| l.time.is_some_and(|t| t >= since));
                }
                let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
                futures::stream::iter(lines.into_iter().skip(skip).map(Ok)).boxed()
            }
            None if req.previous => {
                return Err(Status::not_found(format!(
                    "{what}: none is retained (it has not been restarted or removed on this \
                     node, or its output is past the agent's --logs-* bounds)"
                )));
            }
            None => {
                return Err(Status::not_found(format!(
                    "instance {id} does not run on node {node} and none of its output is \
                     retained there"
                )));
            }
        };
        let kind = live.as_ref().map(|(k, _)| *k);
        Ok(Response::new(since_filter(lines, since, what, kind)))
    }
}

/// Which output a `Logs` call reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// The current run, through its driver.
    Live,
    /// The retained output at this index (oldest first).
    Retained(usize),
}

/// The output to serve given whether a current run is still there (`live`), how many outputs
/// are retained, and whether the previous one is asked for. Without a current run the newest
/// retained output *is* the current one, so `previous` is the one before it.
fn pick(live: bool, retained: usize, previous: bool) -> Option<Pick> {
    if live && !previous {
        return Some(Pick::Live);
    }
    // How many outputs back from the newest retained one: a live run's previous is the
    // newest; without a live run the newest is the current one and its previous the next.
    let back = usize::from(previous) + usize::from(!live);
    retained.checked_sub(back).map(Pick::Retained)
}

fn untimed(what: &str, driver: DriverKind) -> Status {
    Status::failed_precondition(format!(
        "{what}: --since needs line times, and the {driver} driver records none"
    ))
}

/// Converts driver lines to protocol lines, keeping only those at or after `since`. A line
/// without a time under `since` ends the stream with FAILED_PRECONDITION: neither keeping nor
/// dropping it would be honest.
fn since_filter(
    lines: BoxStream<'static, crate::driver::Result<LogLine>>,
    since: Option<chrono::DateTime<Utc>>,
    what: String,
    kind: Option<DriverKind>,
) -> LogLines {
    let stream = futures::stream::unfold(Some(lines), move |state| {
        let what = what.clone();
        async move {
            let mut lines = state?;
            loop {
                let item = match lines.next().await? {
                    Ok(l) => l,
                    Err(e) => {
                        return Some((Err(Status::unavailable(format!("{what}: {e}"))), None))
                    }
                };
                match (since, item.time) {
                    (Some(_), None) => {
                        let driver = kind.unwrap_or(DriverKind::Process);
                        return Some((Err(untimed(&what, driver)), None));
                    }
                    (Some(s), Some(t)) if t < s => continue,
                    _ => return Some((Ok(to_proto(item)), Some(lines))),
                }
            }
        }
    });
    Box::pin(stream)
}

fn to_proto(l: LogLine) -> pb::LogLine {
    pb::LogLine {
        line: l.line,
        source: match l.stream {
            LogStream::Stdout => pb::LogSource::Stdout,
            LogStream::Stderr => pb::LogSource::Stderr,
            LogStream::Combined => pb::LogSource::Combined,
        }
        .into(),
        time_unix_nanos: l.time.and_then(|t| t.timestamp_nanos_opt()).unwrap_or(0),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_is_the_output_before_the_current_one() {
        // A live run: current is live, previous the newest retained.
        assert_eq!(pick(true, 0, false), Some(Pick::Live));
        assert_eq!(pick(true, 2, false), Some(Pick::Live));
        assert_eq!(pick(true, 0, true), None);
        assert_eq!(pick(true, 2, true), Some(Pick::Retained(1)));
        // No live run (removed, or a finished job): current is the newest retained.
        assert_eq!(pick(false, 0, false), None);
        assert_eq!(pick(false, 2, false), Some(Pick::Retained(1)));
        assert_eq!(pick(false, 1, true), None);
        assert_eq!(pick(false, 2, true), Some(Pick::Retained(0)));
    }
}
