//! `drover bench failover`: the distribution of leader takeover time. Runs controller replicas
//! of this very binary against the configured etcd under a fresh prefix, SIGKILLs the leader
//! again and again, and measures how long until another replica leads — as a ratio to the
//! election lease TTL, the floor a crashed leader's lease imposes.

use std::process::Stdio;
use std::time::{Duration, Instant};

use drover_api::duration::HumanDuration;
use drover_api::keys::Keys;
use drover_api::records::ControllerInfo;
use drover_store::Store;
use tokio::process::{Child, Command};

use super::{connect, store_error};
use crate::cli::{BenchArgs, Global};
use crate::exit::{CliError, CliResult};

/// The replicas' election lease TTL unless `--lease-ttl` says otherwise.
const DEFAULT_LEASE_TTL: HumanDuration = HumanDuration::from_secs(2);

/// How long one round may wait for a leader before the benchmark gives up.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(global: &Global, args: BenchArgs) -> CliResult {
    if args.rounds == 0 {
        return Err(CliError::usage("--rounds must be at least 1"));
    }
    let (store, _) = connect(global).await?;
    let prefix = format!("/drover-bench-{:016x}", rand::random::<u64>());
    let keys = Keys::new(&prefix);
    let lease_ttl = args.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
    let ttl = lease_ttl.as_std();
    let exe = std::env::current_exe()
        .map_err(|error| CliError::failure(format!("cannot find the drover binary: {error}")))?;
    let spawn = |id: String| -> CliResult<(String, Child)> {
        let child = Command::new(&exe)
            .args(["--etcd", &global.endpoints().join(","), "--prefix", &prefix])
            .args(global.access.child_args())
            .arg("controller")
            .args(["--id", &id, "--lease-ttl", &lease_ttl.to_string()])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| CliError::failure(format!("cannot start a replica: {error}")))?;
        Ok((id, child))
    };
    let mut replicas = vec![spawn("r0".into())?, spawn("r1".into())?];
    let mut next_id = 2;
    let mut samples = Vec::with_capacity(args.rounds);
    let outcome: CliResult = async {
        let mut leader = wait_leader(&store, &keys, None).await?;
        for _ in 0..args.rounds {
            let index = replicas
                .iter()
                .position(|(id, _)| *id == leader)
                .ok_or_else(|| CliError::failure(format!("leader {leader} is not one of ours")))?;
            let (_, mut child) = replicas.remove(index);
            let killed = Instant::now();
            let _ = child.start_kill();
            let _ = child.wait().await;
            let next = wait_leader(&store, &keys, Some(&leader)).await?;
            samples.push(killed.elapsed());
            replicas.push(spawn(format!("r{next_id}"))?);
            next_id += 1;
            leader = next;
        }
        Ok(())
    }
    .await;
    for (_, child) in &mut replicas {
        let _ = child.start_kill();
    }
    store
        .delete_prefix(&format!("{prefix}/"))
        .await
        .map_err(|error| store_error("cleaning up", error))?;
    outcome?;
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let ratio = |d: Duration| d.as_secs_f64() / ttl.as_secs_f64();
    println!(
        "leader SIGKILLed {} times, election lease TTL {ttl:?} (baseline)",
        samples.len()
    );
    for (label, value) in [("p50", pick(0.5)), ("p90", pick(0.9)), ("max", pick(1.0))] {
        println!(
            "takeover {label}: {value:>10.3?}   {:.2}x TTL",
            ratio(value)
        );
    }
    Ok(())
}

/// Waits until a replica other than `not` leads; returns its id.
async fn wait_leader(store: &Store, keys: &Keys, not: Option<&str>) -> CliResult<String> {
    let deadline = Instant::now() + ROUND_TIMEOUT;
    loop {
        let leaders = store
            .list::<ControllerInfo>(&keys.controllers())
            .await
            .map_err(|error| store_error("listing controllers", error))?;
        if let Some(info) = leaders
            .items
            .into_iter()
            .map(|item| item.value)
            .find(|info| info.leader && Some(info.id.as_str()) != not)
        {
            return Ok(info.id);
        }
        if Instant::now() > deadline {
            return Err(CliError::failure(format!(
                "no new leader within {ROUND_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
