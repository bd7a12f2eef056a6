//! `drover bench store`: how close Drover's etcd paths come to etcd's own limits, measured on the
//! same etcd in the same run and printed as ratios against raw baselines:
//!
//! - bindings: fenced, batched assignment commits (what the leader does when it schedules)
//!   against raw pipelined puts of the same values;
//! - watch: events delivered through Drover's watcher against the raw put rate that produced
//!   them;
//! - list: a paged list of everything written, in keys per second.
//!
//! It writes under a fresh `/drover-bench-<random>` prefix and deletes it afterwards.

use std::time::{Duration, Instant};

use chrono::Utc;
use drover_api::instance::Instance;
use drover_api::names::InstanceId;
use drover_api::task::TaskSpec;
use drover_store::{watcher, Election, Event, Op, Store};
use futures::{StreamExt, TryStreamExt};

use super::{connect, store_error};
use crate::cli::{BenchArgs, Global};
use crate::exit::{CliError, CliResult};

/// Requests kept in flight for the pipelined baseline.
const IN_FLIGHT: usize = 64;

pub async fn run(global: &Global, args: BenchArgs) -> CliResult {
    let (store, _) = connect(global).await?;
    let prefix = format!("/drover-bench-{:016x}", rand::random::<u64>());
    let outcome = measure(&store, &prefix, args.count).await;
    store
        .delete_prefix(&format!("{prefix}/"))
        .await
        .map_err(|error| store_error("cleaning up", error))?;
    let report = outcome?;
    println!("{report}");
    Ok(())
}

fn instance(i: usize) -> Result<Instance, CliError> {
    let id = InstanceId::service("bench", "load", i as u32)
        .map_err(|error| CliError::failure(error.to_string()))?;
    Ok(Instance {
        id,
        namespace: "bench".into(),
        task: "load".into(),
        slot: i as u32,
        run: None,
        node: format!("node-{}", i % 100),
        generation: 1,
        revision: 0,
        attempt: 1,
        spec: TaskSpec {
            command: vec!["sleep".into(), "3600".into()],
            ..TaskSpec::default()
        },
        assigned_at: Utc::now(),
        stop: None,
    })
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

async fn measure(store: &Store, prefix: &str, count: usize) -> CliResult<String> {
    let values: Vec<Instance> = (0..count).map(instance).collect::<Result<_, _>>()?;

    // Baseline: raw pipelined puts of the same JSON values, IN_FLIGHT at a time, while a
    // watcher on the prefix counts the events they produce.
    let raw_prefix = format!("{prefix}/raw/");
    let mut events = watcher::<serde_json::Value>(store.clone(), raw_prefix.clone());
    while let Some(event) = events.next().await {
        if matches!(event, Ok(Event::InitDone { .. })) {
            break;
        }
    }
    let watch_count = tokio::spawn(async move {
        let started = Instant::now();
        let mut seen = 0;
        while seen < count {
            match events.next().await {
                Some(Ok(Event::Apply(_))) => seen += 1,
                Some(_) => {}
                None => break,
            }
        }
        (seen, started.elapsed())
    });
    let started = Instant::now();
    futures::stream::iter(values.iter().enumerate())
        .map(|(i, value)| {
            let key = format!("{raw_prefix}{i:08}");
            async move { store.put(&key, value, None).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await
        .map_err(|error| store_error("raw puts", error))?;
    let raw = started.elapsed();
    let (seen, watched) = watch_count
        .await
        .map_err(|error| CliError::failure(format!("watch counter failed: {error}")))?;

    // Drover: the same values as fenced, batched assignment commits by an elected leader.
    let lease = store
        .grant(Duration::from_secs(30))
        .await
        .map_err(|error| store_error("lease", error))?;
    let election = Election::new(store.clone(), format!("{prefix}/leader/"));
    let leadership = election
        .campaign(&"bench", lease)
        .await
        .map_err(|error| store_error("campaign", error))?;
    let ops: Vec<Op> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Op::put(format!("{prefix}/assignments/{i:08}"), value, None))
        .collect::<Result<_, _>>()
        .map_err(|error| store_error("encoding", error))?;
    let started = Instant::now();
    for chunk in store.commit_batched(ops, Some(leadership.fence())).await {
        chunk
            .result
            .map_err(|error| store_error("fenced commit", error))?;
    }
    let bindings = started.elapsed();
    drop(leadership);
    let _ = store.revoke(lease).await;

    let started = Instant::now();
    let listed = store
        .list_raw(&format!("{prefix}/"))
        .await
        .map_err(|error| store_error("list", error))?
        .items
        .len();
    let list = started.elapsed();

    let raw_rate = rate(count, raw);
    let bind_rate = rate(count, bindings);
    let watch_rate = rate(seen, watched);
    Ok(format!(
        "values: {count} assignments of {} bytes each\n\
         {:<40}{raw_rate:>9.0}/s   baseline\n\
         {:<40}{bind_rate:>9.0}/s   {:.2}x baseline\n\
         {:<40}{watch_rate:>9.0}/s   {:.2}x baseline ({seen} of {count})\n\
         {:<40}{:>9.0}/s   {listed} keys",
        serde_json::to_vec(&values[0]).map(|v| v.len()).unwrap_or(0),
        format!("raw pipelined puts ({IN_FLIGHT} in flight)"),
        "fenced batched bindings",
        bind_rate / raw_rate,
        "watcher events delivered",
        watch_rate / raw_rate,
        "paged list",
        rate(listed, list),
    ))
}
