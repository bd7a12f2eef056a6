//! `drover logs INSTANCE [-f] [--tail N] [--previous] [--since T] [--timestamps]` and
//! `drover logs task/NAME [--run N]`: finds the node that runs (or ran) the instance, then
//! streams its output from that node's agent over gRPC: over mutual TLS (`--agent-cafile`, …)
//! when the node key says the agent serves it. Output of removed runs comes from what the
//! agent retained (`--previous`, finished job runs); the node of a finished run's instance
//! comes from the run record (`runs/<ns>/<task>/<run>`, its `nodes`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use drover_api::duration::HumanDuration;
use drover_api::instance::Instance;
use drover_api::names::InstanceId;
use drover_api::node::Node;
use drover_api::run::RunRecord;
use drover_store::Store;
use futures::StreamExt;

use super::{connect, store_error};
use crate::agent_access::{self, Error as AccessError};
use crate::cli::{Global, LogsArgs};
use crate::exit::{CliError, CliResult};
use drover_api::keys::Keys;
use drover_proto::client::LogsQuery;
use drover_proto::tls::ClientTls;

/// What `drover logs` was pointed at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// One instance.
    Instance(InstanceId),
    /// The instances of a run of a task (`task/NAME`).
    Task { namespace: String, name: String },
}

fn target(args: &LogsArgs) -> CliResult<Target> {
    if let Some(name) = args.instance.strip_prefix("task/") {
        drover_api::names::validate_label(name)
            .map_err(|error| CliError::usage(format!("task \"{name}\": {error}")))?;
        return Ok(Target::Task {
            namespace: args.namespace.clone(),
            name: name.to_string(),
        });
    }
    if args.run.is_some() {
        return Err(CliError::usage(format!(
            "--run N picks a run of a task: give task/NAME, not the instance \"{}\"",
            args.instance
        )));
    }
    args.instance
        .parse()
        .map(Target::Instance)
        .map_err(|error| CliError::data(format!("instance \"{}\": {error}", args.instance)))
}

/// `--since`: a duration before `now`, or an RFC 3339 time.
fn parse_since(text: &str, now: DateTime<Utc>) -> CliResult<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago: HumanDuration = text.parse().map_err(|error| {
        CliError::usage(format!(
            "--since {text:?}: neither a duration (10m, 1h30m) nor an RFC 3339 time \
             (2024-05-01T10:00:00Z): {error}"
        ))
    })?;
    let ago = chrono::TimeDelta::from_std(ago.as_std())
        .map_err(|_| CliError::usage(format!("--since {text:?}: too long ago")))?;
    Ok(now - ago)
}

pub async fn run(global: &Global, args: LogsArgs) -> CliResult {
    let target = target(&args)?;
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, Utc::now()))
        .transpose()?;
    // Files first: a bad --agent-* flag is a usage error whatever etcd says.
    let tls = args.agent.client_tls().map_err(access_error)?;
    let (store, keys) = connect(global).await?;
    let query = |id: &InstanceId| LogsQuery {
        instance: id.to_string(),
        follow: args.follow,
        tail: args.tail,
        previous: args.previous,
        since_unix_nanos: since.and_then(|t| t.timestamp_nanos_opt()),
    };
    let id = match target {
        Target::Instance(id) => id,
        Target::Task { namespace, name } => {
            let (run, instances) =
                run_instances(&store, &keys, &namespace, &name, args.run).await?;
            if instances.len() == 1 {
                let (id, node) = instances.into_iter().next().ok_or_else(|| {
                    CliError::failure(format!("run {run} of task {namespace}/{name}: no instance"))
                })?;
                let agent = Agent::find(&store, &keys, tls.as_ref(), &node, &id).await?;
                return agent.print(&query(&id), args.timestamps).await;
            }
            if args.follow {
                return Err(CliError::usage(format!(
                    "run {run} of task {namespace}/{name} has {} instances: --follow takes \
                     one (name it: drover logs INSTANCE -f)",
                    instances.len()
                )));
            }
            let mut failed = Vec::new();
            for (id, node) in instances {
                println!("==> {id} (node {node}) <==");
                let result = match Agent::find(&store, &keys, tls.as_ref(), &node, &id).await {
                    Ok(agent) => agent.print(&query(&id), args.timestamps).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    eprintln!("drover logs: {e}");
                    failed.push(id.to_string());
                }
            }
            if failed.is_empty() {
                return Ok(());
            }
            return Err(CliError::failure(format!(
                "run {run} of task {namespace}/{name}: no output from {}",
                failed.join(", ")
            )));
        }
    };
    let node = node_of(&store, &keys, &id).await?;
    let agent = Agent::find(&store, &keys, tls.as_ref(), &node, &id).await?;
    agent.print(&query(&id), args.timestamps).await
}

/// The node that runs `id` (its assignment), or that ran it (a finished run's record).
async fn node_of(store: &Store, keys: &Keys, id: &InstanceId) -> CliResult<String> {
    let listed = store
        .list_checked::<Instance>(&keys.assignments())
        .await
        .map_err(|error| store_error("listing assignments", error))?;
    if let Some(a) = listed.items.iter().find(|item| item.value.id == *id) {
        return Ok(a.value.node.clone());
    }
    if let Some(bad) = listed.invalid.iter().find(|bad| {
        keys.parse_assignment_key(&bad.key)
            .is_some_and(|(_, i)| i == *id)
    }) {
        return Err(CliError::failure(format!(
            "instance \"{id}\": its assignment {} is Invalid: {}",
            bad.key, bad.error
        )));
    }
    let Some(run) = id.run() else {
        return Err(CliError::failure(format!(
            "instance \"{id}\" is not assigned to any node"
        )));
    };
    let (ns, task) = (id.namespace(), id.task());
    let record = run_record(store, keys, ns, task, run).await?;
    record.nodes.get(&id.to_string()).cloned().ok_or_else(|| {
        CliError::failure(format!(
            "instance \"{id}\" is not assigned to any node, and run {run} of task {ns}/{task} \
             does not name a node for it (the run has not finished, or never placed it)"
        ))
    })
}

async fn run_record(
    store: &Store,
    keys: &Keys,
    ns: &str,
    task: &str,
    run: u64,
) -> CliResult<RunRecord> {
    let key = keys.run(ns, task, run);
    store
        .get::<RunRecord>(&key)
        .await
        .map_err(|error| {
            store_error(
                &format!("reading run {run} of task {ns}/{task} ({key})"),
                error,
            )
        })?
        .map(|v| v.value)
        .ok_or_else(|| {
            CliError::failure(format!(
                "task {ns}/{task} has no run {run} (drover get runs {task} lists those kept)"
            ))
        })
}

/// The run (`run`, else the latest) and where each of its instances runs or ran, by id.
async fn run_instances(
    store: &Store,
    keys: &Keys,
    ns: &str,
    task: &str,
    run: Option<u64>,
) -> CliResult<(u64, Vec<(InstanceId, String)>)> {
    let run = match run {
        Some(run) => run,
        None => {
            let runs = store
                .list_checked::<RunRecord>(&keys.runs_of(ns, task))
                .await
                .map_err(|error| {
                    store_error(&format!("listing the runs of task {ns}/{task}"), error)
                })?;
            runs.items.last().map(|r| r.value.run).ok_or_else(|| {
                CliError::failure(format!(
                    "task {ns}/{task} has no runs: name an instance of a service instead \
                     (drover get instances)"
                ))
            })?
        }
    };
    let record = run_record(store, keys, ns, task, run).await?;
    let mut nodes: BTreeMap<String, String> = record.nodes;
    let listed = store
        .list_checked::<Instance>(&keys.assignments())
        .await
        .map_err(|error| store_error("listing assignments", error))?;
    for a in listed.items {
        let id = &a.value.id;
        if id.namespace() == ns && id.task() == task && id.run() == Some(run) {
            nodes.insert(id.to_string(), a.value.node.clone());
        }
    }
    let mut instances: Vec<(InstanceId, String)> = Vec::new();
    for (id, node) in nodes {
        let parsed = id.parse().map_err(|error| {
            CliError::failure(format!(
                "run {run} of task {ns}/{task} names instance {id:?}, which is not an instance id: {error}"
            ))
        })?;
        instances.push((parsed, node));
    }
    instances.sort_by_key(|(id, _)| id.slot());
    if instances.is_empty() {
        return Err(CliError::failure(format!(
            "run {run} of task {ns}/{task}: no instance of it was placed on a node"
        )));
    }
    Ok((run, instances))
}

/// The agent of the node that holds an instance's output.
struct Agent {
    node: String,
    address: String,
    endpoint: drover_proto::client::AgentEndpoint,
    tls: Option<ClientTls>,
}

impl Agent {
    async fn find(
        store: &Store,
        keys: &Keys,
        tls: Option<&ClientTls>,
        node: &str,
        id: &InstanceId,
    ) -> CliResult<Agent> {
        let found = store
            .get::<Node>(&keys.node(node))
            .await
            .map_err(|error| store_error(&format!("reading node {node}"), error))?
            .ok_or_else(|| {
                CliError::failure(format!(
                    "node \"{node}\" that holds the output of \"{id}\" is not alive (no node \
                     key); its logs are unreachable until its agent is back"
                ))
            })?;
        let endpoint = agent_access::endpoint(tls, &found.value).map_err(access_error)?;
        Ok(Agent {
            node: node.to_string(),
            address: found.value.address,
            endpoint,
            tls: tls.cloned(),
        })
    }

    async fn print(&self, query: &LogsQuery, timestamps: bool) -> CliResult {
        let fail = |error: drover_proto::client::Error| {
            CliError::failure(format!(
                "agent {} at {}: {error}{}",
                self.node,
                self.address,
                refusal_hint(self.tls.as_ref(), &error)
            ))
        };
        let mut lines = drover_proto::client::logs_with(&self.endpoint, query)
            .await
            .map_err(fail)?;
        let mut untimed_noted = false;
        while let Some(line) = lines.next().await {
            let line = line.map_err(|error| {
                CliError::failure(format!(
                    "log stream of {} from node {}: {error}",
                    query.instance, self.node
                ))
            })?;
            match stamp(timestamps, line.time_unix_nanos) {
                Some(t) => println!("{t} {}", line.line),
                None => {
                    if timestamps && !untimed_noted {
                        untimed_noted = true;
                        eprintln!(
                            "drover logs: lines of {} carry no time (its driver records none)",
                            query.instance
                        );
                    }
                    println!("{}", line.line);
                }
            }
        }
        Ok(())
    }
}

/// The `--timestamps` prefix of a line written at `nanos` (0: unknown).
fn stamp(timestamps: bool, nanos: i64) -> Option<String> {
    (timestamps && nanos != 0).then(|| {
        DateTime::<Utc>::from_timestamp_nanos(nanos)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_ago_or_a_time() {
        let now = DateTime::<Utc>::from_timestamp_nanos(1_700_000_000_000_000_000);
        let ago = parse_since("10m", now).map_err(|e| e.to_string());
        assert_eq!(ago, Ok(now - chrono::TimeDelta::minutes(10)));
        let at = parse_since("2024-05-01T10:00:00Z", now).map(|t| t.to_rfc3339());
        assert_eq!(
            at.map_err(|e| e.to_string()),
            Ok("2024-05-01T10:00:00+00:00".to_string())
        );
        let bad = parse_since("yesterday", now).err().map(|e| e.to_string());
        assert!(bad.is_some_and(|m| m.contains("--since \"yesterday\"")));
    }

    #[test]
    fn timestamps_print_only_known_times() {
        assert_eq!(stamp(false, 5), None);
        assert_eq!(stamp(true, 0), None);
        assert_eq!(
            stamp(true, 1_500_000_000),
            Some("1970-01-01T00:00:01.500000000Z".to_string())
        );
    }
}
