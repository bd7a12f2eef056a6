//! The raw put baseline of `bench scale`: the best rate at which one client process can put
//! values the size of an assignment into this etcd, with exactly [`IN_FLIGHT`] requests
//! outstanding and nothing else running (no watcher, values encoded beforehand).
//!
//! It is measured three ways, so the table shows where a client's own costs lie: through
//! [`Store::put_raw`] (Drover's path: endpoint pick, per-attempt timeout, retry bookkeeping),
//! through a bare `etcd_client::KvClient` on one connection, and through bare clients on
//! [`CONNECTIONS`] connections. The three take turns for [`ROUNDS`] rounds and each keeps its
//! best round, since on a small machine the rate of one run moves by a third with whatever
//! else runs; the fastest of the three is the baseline. Every run counts the requests in
//! flight with an atomic counter and reports the high-water mark, so "64 in flight" is
//! measured, not assumed, and reports the CPU the bench and (its own) etcd used meanwhile:
//! client and server share the machine's cores, and the client's share is part of the limit.
//!
//! A fourth run, [`batched`], is a reference and not the baseline: the same values put in
//! transactions shaped like the leader's commits ([`BATCH`] puts, each behind an "absent"
//! compare, [`LANES`] transactions in flight), still with no watcher and nothing else running.
//! It shows what batching alone buys on this etcd, so a placement rate below the raw put rate
//! can be told apart: etcd's own per-key cost, or what the placement path adds to it (watch
//! fan-out, the agents' status writes, planning).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_store::Store;
use etcd_client::{Client, Compare, CompareOp, KvClient, Txn, TxnOp};

use super::fleet::cpu_seconds;
use super::AbortOnDrop;
use crate::exit::{CliError, CliResult};

/// Requests kept in flight.
pub const IN_FLIGHT: usize = 64;
/// Connections of the multi-connection run (the in-flight requests are spread over them).
/// Measured here: 2 to 4 connections beat one by 5–20 %, 8 or 16 are slower again.
pub const CONNECTIONS: usize = 4;
/// Rounds of the three runs; each reports its best.
pub const ROUNDS: usize = 2;
/// Puts per transaction of the batched run: a commit of the leader holds 125 placements
/// (etcd's 128-operation limit less the task-state operations).
pub const BATCH: usize = 125;
/// Transactions in flight in the batched run: the leader's default commit lanes.
pub const LANES: usize = 8;
/// Untimed puts before the first timed run, so etcd's start-up costs (WAL segments, first
/// page allocations) fall on no run.
const WARM_UP: usize = 1000;

/// One timed run.
#[derive(Debug, Clone)]
pub struct Run {
    /// How the puts were sent.
    pub label: String,
    /// Puts per second.
    pub rate: f64,
    /// The most requests seen in flight at once.
    pub high_water: usize,
    /// CPU this process used during the run, in cores (CPU seconds per second).
    pub client_cores: Option<f64>,
    /// CPU etcd used during the run, in cores, when it is a process of ours.
    pub etcd_cores: Option<f64>,
}

/// Every run, and the best rate among them.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// The best round of each way of sending.
    pub runs: Vec<Run>,
    /// The highest rate: what the scheduler is compared with.
    pub best: f64,
    /// The best round of the batched reference run (not part of `best`).
    pub batched: Option<Run>,
}

/// Where one put goes.
#[derive(Clone)]
enum Sender {
    Store(Store),
    Bare(Box<KvClient>),
}

/// How one timed run sends its values.
#[derive(Clone, Copy)]
enum Shape {
    /// One put per request, [`IN_FLIGHT`] requests outstanding.
    Single,
    /// [`BATCH`] compare-and-puts per transaction, [`LANES`] transactions outstanding.
    Batched,
}

impl Sender {
    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        match self {
            Sender::Store(store) => store
                .put_raw(&key, value, None)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Sender::Bare(kv) => kv
                .put(key, value, None)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }

    /// Puts every `(key, value)` in one transaction, each behind "the key does not exist".
    async fn put_absent(&mut self, puts: Vec<(String, Vec<u8>)>) -> Result<(), String> {
        let Sender::Bare(kv) = self else {
            return Err("batched puts go through a bare client".into());
        };
        let cmps: Vec<_> = puts
            .iter()
            .map(|(key, _)| Compare::create_revision(key.as_str(), CompareOp::Equal, 0))
            .collect();
        let ops: Vec<_> = puts
            .into_iter()
            .map(|(key, value)| TxnOp::put(key, value, None))
            .collect();
        let reply = kv
            .txn(Txn::new().when(cmps).and_then(ops))
            .await
            .map_err(|e| e.to_string())?;
        if reply.succeeded() {
            Ok(())
        } else {
            Err("a batched put found its key present".into())
        }
    }
}

/// Measures the three runs, [`ROUNDS`] times each, writing `values` under its own part of
/// `prefix` every time; `etcd` is the pid of an etcd of ours, whose CPU use is then reported too.
pub async fn measure(
    store: &Store,
    prefix: &str,
    values: Arc<Vec<Vec<u8>>>,
    etcd: Option<u32>,
) -> CliResult<Baseline> {
    let one = Sender::Bare(Box::new(connect(store).await?.kv_client()));
    let mut many = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        many.push(Sender::Bare(Box::new(connect(store).await?.kv_client())));
    }
    let warm: Arc<Vec<Vec<u8>>> = Arc::new(values.iter().take(WARM_UP).cloned().collect());
    drive(
        format!("{prefix}warm-up/"),
        warm,
        many.clone(),
        Shape::Single,
        etcd,
    )
    .await?;
    let variants = [
        (
            "Store::put_raw, 1 connection",
            vec![Sender::Store(store.clone())],
        ),
        ("bare etcd-client KvClient, 1 connection", vec![one]),
        (
            &*format!("bare etcd-client KvClient, {CONNECTIONS} connections"),
            many,
        ),
    ];
    let mut best: Vec<Option<Run>> = vec![None; variants.len()];
    for round in 0..ROUNDS {
        for (i, (label, senders)) in variants.iter().enumerate() {
            let run = drive(
                format!("{prefix}{i}/{round}/"),
                values.clone(),
                senders.clone(),
                Shape::Single,
                etcd,
            )
            .await?
            .labelled(label);
            if best[i].as_ref().is_none_or(|b| run.rate > b.rate) {
                best[i] = Some(run);
            }
        }
    }
    let runs: Vec<Run> = best.into_iter().flatten().collect();
    let best = runs.iter().map(|r| r.rate).fold(0.0, f64::max);
    let mut batched: Option<Run> = None;
    for round in 0..ROUNDS {
        let run = drive(
            format!("{prefix}batched/{round}/"),
            values.clone(),
            vec![Sender::Bare(Box::new(connect(store).await?.kv_client()))],
            Shape::Batched,
            etcd,
        )
        .await?
        .labelled(&format!(
            "txns of {BATCH} puts, each behind an absent compare, 1 connection"
        ));
        if batched.as_ref().is_none_or(|b| run.rate > b.rate) {
            batched = Some(run);
        }
    }
    Ok(Baseline {
        runs,
        best,
        batched,
    })
}

/// One etcd client of its own (its own HTTP/2 connection per endpoint), with the store's
/// endpoints, TLS and user.
async fn connect(store: &Store) -> CliResult<Client> {
    drover_store::bare_client(store.config())
        .await
        .map_err(|error| CliError::failure(format!("bare etcd client: {error}")))
}

/// The outcome of [`drive`] before it is named.
struct Timed {
    rate: f64,
    high_water: usize,
    client_cores: Option<f64>,
    etcd_cores: Option<f64>,
}

impl Timed {
    fn labelled(self, label: &str) -> Run {
        Run {
            label: label.to_string(),
            rate: self.rate,
            high_water: self.high_water,
            client_cores: self.client_cores,
            etcd_cores: self.etcd_cores,
        }
    }
}

/// CPU seconds of this process and of etcd (when ours) at one moment.
struct CpuMark {
    client: Option<f64>,
    etcd: Option<f64>,
}

impl CpuMark {
    fn now(etcd: Option<u32>) -> CpuMark {
        CpuMark {
            client: cpu_seconds(std::process::id()),
            etcd: etcd.and_then(cpu_seconds),
        }
    }

    /// Cores used per process from `self` to `later` over `elapsed`.
    fn cores(&self, later: &CpuMark, elapsed: Duration) -> (Option<f64>, Option<f64>) {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let per = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / secs);
        (per(self.client, later.client), per(self.etcd, later.etcd))
    }
}

/// Puts every value as `<prefix><index>` from as many tasks as `shape` keeps requests in
/// flight, each with one request outstanding at a time, task `w` sending through
/// `senders[w % senders.len()]`; a request carries one value, or [`BATCH`] when batched.
async fn drive(
    prefix: String,
    values: Arc<Vec<Vec<u8>>>,
    senders: Vec<Sender>,
    shape: Shape,
    etcd: Option<u32>,
) -> CliResult<Timed> {
    let (tasks, per_request) = match shape {
        Shape::Single => (IN_FLIGHT, 1),
        Shape::Batched => (LANES, BATCH),
    };
    let cpu = CpuMark::now(etcd);
    let next = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let high_water = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|w| {
            let mut sender = senders[w % senders.len()].clone();
            let (next, in_flight, high_water) =
                (next.clone(), in_flight.clone(), high_water.clone());
            let (values, prefix) = (values.clone(), prefix.clone());
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(per_request, Ordering::Relaxed);
                    let last = values.len().min(first + per_request);
                    if first >= last {
                        return Ok(());
                    }
                    let mut puts: Vec<(String, Vec<u8>)> = (first..last)
                        .map(|i| (format!("{prefix}{i:08}"), values[i].clone()))
                        .collect();
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    high_water.fetch_max(now, Ordering::SeqCst);
                    let sent = match shape {
                        Shape::Single => match puts.pop() {
                            Some((key, value)) => sender.put(key, value).await,
                            None => Ok(()),
                        },
                        Shape::Batched => sender.put_absent(puts).await,
                    };
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    sent?;
                }
            })
        })
        .collect();
    // Aborted if the run is cut short, so no put outlives it.
    let mut workers = AbortOnDrop(workers);
    for worker in &mut workers.0 {
        join(worker)
            .await
            .map_err(|error| CliError::failure(format!("baseline put: {error}")))?;
    }
    let elapsed = started.elapsed();
    let (client_cores, etcd_cores) = cpu.cores(&CpuMark::now(etcd), elapsed);
    Ok(Timed {
        rate: rate(values.len(), elapsed),
        high_water: high_water.load(Ordering::SeqCst),
        client_cores,
        etcd_cores,
    })
}

async fn join<F>(task: F) -> Result<(), String>
where
    F: Future<Output = Result<Result<(), String>, tokio::task::JoinError>>,
{
    task.await.map_err(|e| e.to_string())?
}

/// Events per second.
pub fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}
