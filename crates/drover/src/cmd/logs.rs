//! `drover logs INSTANCE [-f] [--tail N]`: finds the node that runs the instance, then streams
//! its output from that node's agent over gRPC: over mutual TLS (`--agent-cafile`, …) when
//! the node key says the agent serves it.

use drover_api::instance::Instance;
use drover_api::names::InstanceId;
use drover_api::node::Node;
use futures::StreamExt;

use super::{connect, store_error};
use crate::agent_access::{self, Error as AccessError};
use crate::cli::{Global, LogsArgs};
use crate::exit::{CliError, CliResult};
use drover_proto::tls::ClientTls;

pub async fn run(global: &Global, args: LogsArgs) -> CliResult {
    let id: InstanceId = args
        .instance
        .parse()
        .map_err(|error| CliError::data(format!("instance \"{}\": {error}", args.instance)))?;
    // Files first: a bad --agent-* flag is a usage error whatever etcd says.
    let tls = args.agent.client_tls().map_err(access_error)?;
    let (store, keys) = connect(global).await?;
    let listed = store
        .list_checked::<Instance>(&keys.assignments())
        .await
        .map_err(|error| store_error("listing assignments", error))?;
    let invalid = listed.invalid.iter().find(|bad| {
        keys.parse_assignment_key(&bad.key)
            .is_some_and(|(_, i)| i == id)
    });
    let assignment = listed
        .items
        .into_iter()
        .find(|item| item.value.id == id)
        .ok_or_else(|| match invalid {
            Some(bad) => CliError::failure(format!(
                "instance \"{id}\": its assignment {} is Invalid: {}",
                bad.key, bad.error
            )),
            None => CliError::failure(format!("instance \"{id}\" is not assigned to any node")),
        })?;
    let node_name = assignment.value.node;
    let node = store
        .get::<Node>(&keys.node(&node_name))
        .await
        .map_err(|error| store_error("reading the node", error))?
        .ok_or_else(|| {
            CliError::failure(format!(
                "node \"{node_name}\" that runs \"{id}\" is not alive; its logs are unreachable"
            ))
        })?;
    let agent = agent_access::endpoint(tls.as_ref(), &node.value).map_err(access_error)?;
    let mut lines = drover_proto::client::logs(&agent, &id.to_string(), args.follow, args.tail)
        .await
        .map_err(|error| {
            CliError::failure(format!(
                "agent {} at {}: {error}{}",
                node_name,
                node.value.address,
                refusal_hint(tls.as_ref(), &error)
            ))
        })?;
    while let Some(line) = lines.next().await {
        let line = line.map_err(|error| CliError::failure(format!("log stream: {error}")))?;
        println!("{line}");
    }
    Ok(())
}

fn access_error(error: AccessError) -> CliError {
    if error.is_usage() {
        CliError::usage(error.to_string())
    } else {
        CliError::failure(error.to_string())
    }
}

/// Why a TLS call may have ended without a status from the agent. An agent serving mTLS
/// refuses a client certificate after the client already counts the handshake as done (TLS
/// 1.3), so the client sees only a closed connection on its first request.
fn refusal_hint(tls: Option<&ClientTls>, error: &drover_proto::client::Error) -> &'static str {
    let closed = error.is_connection_lost();
    match tls {
        Some(tls) if closed && !tls.has_identity() => {
            " (agents serving mTLS refuse clients without a certificate: give --agent-certfile \
             and --agent-keyfile)"
        }
        Some(_) if closed => {
            " (the agent closed the connection: is --agent-certfile signed by the CA the agent \
             trusts, its --client-ca-file?)"
        }
        _ => "",
    }
}
