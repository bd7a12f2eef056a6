//! `drover agent --node NAME`: registers the node on a lease, converges its assignments through
//! the chosen driver and reports status. With `--hollow-nodes N` one process simulates N nodes
//! (scale tests). SIGTERM revokes the lease and stops instances (`--keep-running` leaves them).

use drover_agent::retained::RetainConfig;
use drover_agent::{Agent, AgentConfig, HollowConfig, HollowNodes};
use drover_api::node::Capacity;

use super::daemon::{polled_readiness, process_registry, serve_admin, shutdown_on_signals};
use crate::cli::{AgentArgs, DriverFlag};
use drover_cli::cli::Global;
use drover_cli::cmd::connect;
use drover_cli::exit::{CliError, CliResult};

pub async fn run(global: &Global, args: AgentArgs) -> CliResult {
    if let Some(count) = args.hollow_nodes {
        return run_hollow(global, args, count).await;
    }
    let config = config(&args)?;
    let shutdown = shutdown_on_signals()?;
    let (store, keys) = connect(global).await?;
    let mut registry = process_registry(&store);
    let agent = Agent::start(store, keys, config, &mut registry, shutdown.clone())
        .await
        .map_err(|error| match error {
            drover_agent::agent::Error::Tls(_) => CliError::usage(format!("agent: {error}")),
            _ => CliError::failure(format!("agent: {error}")),
        })?;
    let handle = agent.handle();
    // Live, not latched: a fenced or re-registering agent answers 503 again.
    let watched = handle.clone();
    let ready = polled_readiness(
        move || watched.readiness().map_err(|why| why.to_string()),
        shutdown.clone(),
    );
    serve_admin(args.metrics_addr, registry, ready, shutdown.clone()).await?;
    tracing::info!(node = %handle.node(), address = %handle.address(), "agent started");
    agent
        .join()
        .await
        .map_err(|error| CliError::failure(format!("agent: {error}")))
}

fn config(args: &AgentArgs) -> CliResult<AgentConfig> {
    let node = args
        .node
        .clone()
        .ok_or_else(|| CliError::usage("--node NAME is required (or --hollow-nodes N)"))?;
    let mut config = AgentConfig::new(node);
    if let Some(address) = args.address {
        config.address = address;
    }
    config.advertise_address = args.advertise_address.clone();
    config.allow_root_tasks = args.allow_root_tasks;
    config.tls_cert_file = args.tls_cert_file.clone();
    config.tls_key_file = args.tls_key_file.clone();
    config.client_ca_file = args.client_ca_file.clone();
    config.lease_ttl = args.lease_ttl.as_std();
    config.driver = args.driver.into();
    config.keep_running_on_shutdown = args.keep_running;
    config.unsafe_keep_copies_when_fenced = args.unsafe_keep_copies_when_fenced;
    if let Some(dir) = &args.state_dir {
        config.state_dir = dir.clone();
    }
    config.logs = RetainConfig {
        keep_per_instance: args.logs_keep_per_instance,
        max_bytes: args.logs_max_bytes.as_bytes(),
        keep_finished: args.logs_keep_finished,
        max_age: args.logs_max_age.as_std(),
    };
    if let Some(ip) = &args.publish_ip {
        config.publish_ip = ip.clone();
    }
    for label in &args.labels {
        let (key, value) = label
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--label {label}: expected key=value")))?;
        config.labels.insert(key.to_string(), value.to_string());
    }
    if args.cpu.is_some() || args.memory.is_some() {
        let detected = Capacity::default();
        config.capacity = Some(Capacity {
            cpu: args.cpu.unwrap_or(detected.cpu),
            memory: args.memory.unwrap_or(detected.memory),
        });
    }
    config
        .validate()
        .map_err(|error| CliError::usage(format!("agent config: {error}")))?;
    // Read the TLS files before etcd is dialed, so a bad one is refused by name (exit 64)
    // whatever etcd's state; `Agent::start` reads them again to serve.
    let tls = config
        .grpc_tls()
        .map_err(|error| CliError::usage(format!("agent config: {error}")))?;
    drover_agent::grpc_tls::server(tls.as_ref())
        .map_err(|error| CliError::usage(format!("agent: {error}")))?;
    Ok(config)
}

async fn run_hollow(global: &Global, args: AgentArgs, count: usize) -> CliResult {
    if !matches!(args.driver, DriverFlag::Auto | DriverFlag::Hollow) {
        return Err(CliError::usage(
            "--hollow-nodes runs the hollow driver only",
        ));
    }
    let mut config = HollowConfig::new(args.node.clone().unwrap_or_else(|| "hollow".into()), count);
    config.lease_ttl = args.lease_ttl.as_std();
    if let Some(cpu) = args.cpu {
        config.capacity.cpu = cpu;
    }
    if let Some(memory) = args.memory {
        config.capacity.memory = memory;
    }
    let shutdown = shutdown_on_signals()?;
    let (store, keys) = connect(global).await?;
    let mut registry = process_registry(&store);
    // The nodes register their families first, so the endpoint serves the registry they count in.
    let hollow = HollowNodes::start(store, keys, config, &mut registry)
        .map_err(|error| CliError::failure(format!("hollow agent: {error}")))?;
    // Live, like a real agent's: ready while every node is registered on a live lease and
    // the assignments have been listed; a node that fenced itself makes it 503 again.
    let watched = hollow.handle();
    let ready = polled_readiness(
        move || {
            if watched.is_ready() {
                Ok(())
            } else {
                Err(format!(
                    "{}/{count} hollow nodes registered{}",
                    watched.registered(),
                    if watched.is_listed() {
                        ""
                    } else {
                        ", assignments not listed yet"
                    }
                ))
            }
        },
        shutdown.clone(),
    );
    serve_admin(args.metrics_addr, registry, ready, shutdown.clone()).await?;
    hollow.run_until(shutdown, None).await;
    Ok(())
}
