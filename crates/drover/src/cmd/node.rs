//! `drover cordon|uncordon|drain NODE`: node maintenance. Cordon stops new placements; drain
//! also moves every service instance elsewhere — replacement first within the task's
//! `update.maxSurge`, otherwise stopping one copy before its replacement starts — and reports
//! progress until the node is empty.

use std::time::Duration;

use super::{connect, node_admin};
use crate::cli::{DrainArgs, Global, NodeArgs};
use crate::exit::{CliError, CliResult};

/// How often drain progress is polled.
const DRAIN_POLL: Duration = Duration::from_millis(500);

pub async fn cordon(global: &Global, args: NodeArgs, cordoned: bool) -> CliResult {
    let (store, keys) = connect(global).await?;
    node_admin::cordon(&store, &keys, &args.node, cordoned)
        .await
        .map_err(|error| CliError::failure(format!("node \"{}\": {error}", args.node)))?;
    let verb = if cordoned { "cordoned" } else { "uncordoned" };
    println!("node/{} {verb}", args.node);
    Ok(())
}

pub async fn drain(global: &Global, args: DrainArgs) -> CliResult {
    let (store, keys) = connect(global).await?;
    let started = node_admin::drain(&store, &keys, &args.node)
        .await
        .map_err(|error| CliError::failure(format!("node \"{}\": {error}", args.node)))?;
    println!(
        "node/{} cordoned; draining {} instance(s)",
        args.node,
        started.remaining.len()
    );
    let wait = node_admin::wait_drained(&store, &keys, &args.node, DRAIN_POLL, |progress| {
        println!(
            "node/{}: {} instance(s) left, {} running",
            progress.node,
            progress.remaining.len(),
            progress.running
        );
    });
    match tokio::time::timeout(args.timeout.as_std(), wait).await {
        Ok(Ok(_)) => {
            println!("node/{} drained", args.node);
            Ok(())
        }
        Ok(Err(error)) => Err(CliError::failure(format!("node \"{}\": {error}", args.node))),
        Err(_) => Err(CliError::failure(format!(
            "node \"{}\" is not drained after {}; the drain goes on, `drover get instances -A -o wide` shows what is left",
            args.node, args.timeout
        ))),
    }
}
