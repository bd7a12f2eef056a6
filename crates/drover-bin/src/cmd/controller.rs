//! `drover controller`: one controller replica. Replicas elect a leader through etcd; only the
//! leader reconciles, and every write it makes is fenced on its election key. SIGTERM resigns,
//! so a standby takes over without waiting for the lease to expire.

use drover_controller::{Controller, ControllerConfig, Metrics};

use super::daemon::{process_registry, readiness, serve_admin, shutdown_on_signals};
use crate::cli::ControllerArgs;
use drover_cli::cli::Global;
use drover_cli::cmd::connect;
use drover_cli::exit::{CliError, CliResult};

pub async fn run(global: &Global, args: ControllerArgs) -> CliResult {
    let mut config = match args.id {
        Some(id) => ControllerConfig::new(id),
        None => ControllerConfig::default(),
    };
    config.lease_ttl = args.lease_ttl.as_std();
    config.reschedule_limit = args.reschedule_limit;
    config.commit_lanes = args.commit_lanes;
    config
        .validate()
        .map_err(|error| CliError::usage(format!("controller config: {error}")))?;
    let shutdown = shutdown_on_signals()?;
    let (store, keys) = connect(global).await?;
    let mut registry = process_registry(&store);
    let metrics = Metrics::register(&mut registry);
    let id = config.id.clone();
    let controller = Controller::with_metrics(store, keys, config, metrics)
        .map_err(|error| CliError::failure(format!("controller: {error}")))?;
    let ready = readiness(controller.status(), |status| {
        if status.ready() {
            Ok(())
        } else if status.leader {
            Err("leader, not synced yet".to_string())
        } else {
            Err("not campaigning (etcd unreachable?)".to_string())
        }
    });
    serve_admin(args.metrics_addr, registry, ready, shutdown.clone()).await?;
    if let Some(addr) = args.web_addr {
        let bound = drover_controller::web::serve(addr, controller.web_source(), shutdown.clone())
            .await
            .map_err(|error| CliError::usage(format!("--web-addr: {error}")))?;
        tracing::info!(%bound, "serving the web view");
        eprintln!("web view: http://{bound}/");
    }
    tracing::info!(%id, "controller replica starting");
    controller.run(shutdown).await;
    tracing::info!(%id, "controller replica stopped");
    Ok(())
}
