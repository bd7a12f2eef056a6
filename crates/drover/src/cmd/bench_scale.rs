//! `drover bench scale --nodes N --instances M`: how fast one controller places M instances on
//! N hollow nodes and they run, against the best raw put rate of the same etcd in the same run.
//!
//! One run, one table at the end:
//! 1. etcd: its own single member on tmpfs (8 GiB quota) unless `--etcd` / `DROVER_ETCD` names
//!    one; on a named etcd everything goes under a fresh `/drover-bench-<hex>` prefix that is
//!    deleted afterwards;
//! 2. the raw put baseline ([`baseline`]), its keys deleted and compacted away afterwards;
//! 3. one `drover agent --hollow-nodes N` and one controller (two with `--failover`), children
//!    of this very binary;
//! 4. the tasks, applied through `drover apply`'s own code path; from that moment the time
//!    until all M are assigned and until all M are Running, watched (never re-listed);
//! 5. leader terms, peak memory of every process, etcd's db size; with `--failover`, the
//!    standby's takeover after the leader is SIGKILLed ([`failover`]).
//!
//! Every way out (success, error, `--timeout`, Ctrl-C, SIGTERM) kills the children, stops the
//! etcd it started and removes its directories; a run cut short still prints what it reached.

mod baseline;
mod failover;
mod fleet;
mod observe;
mod own_etcd;
mod probe;
mod report;
mod settings;
mod web;

use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_api::duration::HumanDuration;
use drover_api::keys::Keys;
use drover_store::Store;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::fleet::{vm_hwm_kib, Fleet};
use self::observe::{Control, Progress};
use self::own_etcd::OwnEtcd;
use self::report::{bytes, count, duration, kib, per_second, ratio, Report};
use self::settings::{baseline_values, title, Settings};
use super::apply;
use super::{connect, store_error};
use crate::cli::{BenchArgs, Global};
use crate::etcd_access::EtcdAccess;
use crate::exit::{CliError, CliResult};

/// How often a wait re-checks that the children still run.
const LIVENESS: Duration = Duration::from_millis(500);
/// Bound on each clean-up call to etcd.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Tasks spawned for a step, aborted when it ends (or is cut short).
pub struct AbortOnDrop<T>(pub Vec<JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

/// SIGINT and SIGTERM, caught from the start so that either ends the run in order.
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn new() -> CliResult<Signals> {
        let catch = |kind: SignalKind| {
            signal(kind)
                .map_err(|error| CliError::failure(format!("cannot catch signals: {error}")))
        };
        Ok(Signals {
            int: catch(SignalKind::interrupt())?,
            term: catch(SignalKind::terminate())?,
        })
    }

    /// The name of the next signal.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

pub async fn run(global: &Global, args: BenchArgs) -> CliResult {
    let started = Instant::now();
    let load_before = load_average();
    let mut signals = Signals::new()?;
    let settings = Settings::new(&args)?;
    let etcd = if global.etcd_given() {
        None
    } else {
        eprintln!("starting an etcd of our own (data on tmpfs)");
        tokio::select! {
            etcd = OwnEtcd::start() => Some(etcd?),
            signal = signals.recv() => return Err(CliError::failure(format!("interrupted ({signal})"))),
        }
    };
    let endpoints = etcd
        .as_ref()
        .map_or_else(|| global.endpoints(), OwnEtcd::endpoints);
    let prefix = format!("/drover-bench-{:016x}", rand::random::<u64>());
    let ours = Global {
        etcd: endpoints.clone(),
        prefix: prefix.clone(),
        write_log: global.write_log.clone(),
        // An etcd of our own is plain http on loopback; one that was named is reached as
        // the flags say.
        access: if etcd.is_some() {
            EtcdAccess::default()
        } else {
            global.access.clone()
        },
    };
    let (store, keys) = connect(&ours).await?;
    let mut fleet = Fleet::new(&endpoints, &prefix, &ours.access, settings.keep_logs)?;
    let mut report = Report::new(title(&settings, etcd.as_ref(), &endpoints));
    let (progress_tx, progress) = watch::channel(Progress::default());
    let (control_tx, control) = watch::channel(Control::default());
    let mut applied_at = None;
    let run = Run {
        store: &store,
        keys: &keys,
        settings: &settings,
        etcd_pid: etcd.as_ref().map(OwnEtcd::pid),
    };
    let measured = run.measure(
        &mut fleet,
        &mut report,
        &mut applied_at,
        (progress_tx, progress.clone()),
        (control_tx, control.clone()),
    );
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(settings.timeout.saturating_sub(started.elapsed()), measured) => outcome.unwrap_or_else(|_| {
            Err(CliError::failure(format!(
                "timed out after {} (--timeout)",
                HumanDuration::from_std(settings.timeout)
            )))
        }),
        signal = signals.recv() => Err(CliError::failure(format!("interrupted ({signal})"))),
    };

    if outcome.is_err() {
        let reached = progress.borrow();
        let of = count(settings.instances as u64);
        report.row(
            "reached before the run stopped: assigned",
            format!("{} of {of}", count(reached.assigned as u64)),
            "",
        );
        report.row(
            "reached before the run stopped: Running",
            format!("{} of {of}", count(reached.running as u64)),
            "",
        );
    }
    if let Some(applied) = applied_at {
        report.row(
            "leader terms from the apply to the end",
            count(control.borrow().terms_since(applied) as u64),
            "distinct election keys that led",
        );
        let seen = progress.borrow();
        let writes = seen.assignment_changes.len();
        report.row(
            "assignment keys put or deleted from the apply to the end",
            count(writes as u64),
            format!(
                "{} beyond one placement per instance",
                count(writes.saturating_sub(settings.instances) as u64)
            ),
        );
        report.row(
            "hollow nodes that lost or replaced their lease after registering",
            count(seen.nodes_disturbed.len() as u64),
            format!(
                "{} re-registrations after self-fencing, {} node keys expired; a healthy run has none",
                count(seen.node_reregistrations as u64),
                count(seen.node_losses as u64)
            ),
        );
    }
    let load = |l: Option<f64>| l.map_or_else(|| "?".to_string(), |l| format!("{l:.2}"));
    report.row(
        "machine load average (1 min), start → end",
        format!("{} → {}", load(load_before), load(load_average())),
        format!(
            "{} cores, shared with whatever else runs",
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
        ),
    );
    fleet.sample();
    for (name, peak) in fleet.peak_rss() {
        report.row(
            format!("peak RSS (VmHWM), {name}"),
            peak.map_or_else(|| "not read".to_string(), kib),
            "",
        );
    }
    if let Some(etcd) = &etcd {
        report.row(
            "peak RSS (VmHWM), etcd",
            vm_hwm_kib(etcd.pid()).map_or_else(|| "not read".to_string(), kib),
            "",
        );
    }
    match tokio::time::timeout(CLEANUP_TIMEOUT, store.db_size()).await {
        Ok(Ok(size)) => report.row(
            "etcd db size at the end",
            bytes(size.total),
            format!("{} in use", bytes(size.in_use)),
        ),
        Ok(Err(error)) => eprintln!("could not read etcd's db size: {error}"),
        Err(_) => eprintln!("could not read etcd's db size: no answer in {CLEANUP_TIMEOUT:?}"),
    }
    fleet.stop().await;
    if etcd.is_none() {
        match tokio::time::timeout(CLEANUP_TIMEOUT, store.delete_prefix(&keys.all())).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => eprintln!("could not delete {}: {error}", keys.all()),
            Err(_) => eprintln!("could not delete {}: no answer", keys.all()),
        }
    }
    if outcome.is_err() {
        eprintln!("the daemons' logs end:\n{}", fleet.log_tails(15));
    }
    print!("{}", report.render());
    drop(fleet);
    drop(etcd);
    outcome
}

/// What every step needs.
struct Run<'a> {
    store: &'a Store,
    keys: &'a Keys,
    settings: &'a Settings,
    /// The pid of the etcd this run started, if it did.
    etcd_pid: Option<u32>,
}

impl Run<'_> {
    /// Steps 2 to 7; every row goes into `report` as soon as it is known.
    async fn measure(
        &self,
        fleet: &mut Fleet,
        report: &mut Report,
        applied_at: &mut Option<Instant>,
        (progress_tx, mut progress): (watch::Sender<Progress>, watch::Receiver<Progress>),
        (control_tx, mut control): (watch::Sender<Control>, watch::Receiver<Control>),
    ) -> CliResult {
        let (store, keys, settings) = (self.store, self.keys, self.settings);
        let (best, batched) = self.baseline(report).await?;

        eprintln!("starting {} hollow nodes", settings.nodes);
        let started = Instant::now();
        fleet.start_agent(settings.nodes)?;
        loop {
            let registered = store
                .count(&keys.nodes())
                .await
                .map_err(|error| store_error("counting nodes", error))?;
            if registered.count >= settings.nodes as i64 {
                break;
            }
            fleet.check_alive()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        report.row(
            format!("{} hollow nodes registered", count(settings.nodes as u64)),
            duration(started.elapsed()),
            "one agent process, one lease per node",
        );

        let _nodes = observe::nodes(store, keys, progress_tx.clone()).await?;
        let _control = observe::control(store, keys, control_tx).await?;
        let started = Instant::now();
        let ttl = settings.lease_ttl.to_string();
        let lanes = settings.commit_lanes;
        fleet.start_controller("c0", &ttl, lanes, settings.web)?;
        if settings.failover {
            fleet.start_controller("c1", &ttl, lanes, false)?;
        }
        wait(&mut control, fleet, |c| c.leader.is_some()).await?;
        report.row(
            "controller started → leads",
            duration(started.elapsed()),
            if settings.failover {
                "c0 and c1 campaign"
            } else {
                ""
            },
        );

        let _instances = observe::instances(store, keys, settings.instances, progress_tx).await?;
        eprintln!("applying {} tasks", settings.tasks.len());
        let applied = Instant::now();
        *applied_at = Some(applied);
        apply::apply_to(store, keys, &settings.sources, &settings.tasks, false).await?;
        wait(&mut progress, fleet, |p| p.all_assigned.is_some()).await?;
        let to_assigned = since(applied, progress.borrow().all_assigned);
        let m = count(settings.instances as u64);
        report.row(
            format!("apply → all {m} assigned"),
            duration(to_assigned),
            "",
        );
        let placements = baseline::rate(settings.instances, to_assigned);
        report.row(
            "placements/s (instances / time to all assigned)",
            per_second(placements),
            match batched {
                Some(batched) => format!(
                    "{} of the baseline, {} of the batched reference",
                    ratio(placements, best),
                    ratio(placements, batched)
                ),
                None => format!("{} of the baseline", ratio(placements, best)),
            },
        );
        wait(&mut progress, fleet, |p| p.all_running.is_some()).await?;
        let to_running = since(applied, progress.borrow().all_running);
        report.row(format!("apply → all {m} Running"), duration(to_running), "");

        if let Some((addr, pid)) = fleet
            .replica("c0")
            .and_then(|c0| Some((c0.web?, c0.proc.pid())))
        {
            eprintln!("measuring c0's web view at http://{addr}/");
            let view = web::measure(addr, pid).await?;
            report.row(
                "web view: first page (/, app.js, style.css, /api/summary, /api/tasks)",
                duration(view.first_page),
                format!(
                    "one request after the other; slowest {} ({})",
                    view.slowest.1,
                    duration(view.slowest.0)
                ),
            );
            let growth =
                (view.rss_after_kib as f64 / view.rss_before_kib.max(1) as f64 - 1.0) * 100.0;
            report.row(
                "web view: c0 RSS before → with the view open",
                format!(
                    "{} → {} ({growth:+.1} %)",
                    kib(view.rss_before_kib),
                    kib(view.rss_after_kib)
                ),
                format!(
                    "stream open, 10 rounds of 6 pages; {} notices received",
                    view.notices
                ),
            );
        }

        if settings.failover {
            eprintln!("killing the leader");
            let takeover =
                failover::run(store, keys, fleet, &control, &progress, settings.instances).await?;
            let ttl = settings.lease_ttl.as_std().as_secs_f64();
            report.row(
                format!(
                    "failover: SIGKILL {} → {} leads",
                    takeover.killed, takeover.standby
                ),
                duration(takeover.to_lead),
                format!("{} TTL", ratio(takeover.to_lead.as_secs_f64(), ttl)),
            );
            report.row(
                format!(
                    "failover: {} leads → its first plan committed (/readyz 200)",
                    takeover.standby
                ),
                duration(takeover.to_plan),
                format!("{} TTL", ratio(takeover.to_plan.as_secs_f64(), ttl)),
            );
            report.row(
                "failover: assignment keys put or deleted, kill → first plan + 2 s",
                count(takeover.moved as u64),
                "a leader change should move nothing",
            );
        }
        Ok(())
    }

    /// Step 2: the raw put baseline and the batched reference, their keys deleted and
    /// compacted away afterwards. Returns the best raw rate and the batched one.
    async fn baseline(&self, report: &mut Report) -> CliResult<(f64, Option<f64>)> {
        let values = baseline_values(self.settings)?;
        let size = values.first().map_or(0, Vec::len);
        let runs = values.len();
        eprintln!(
            "baseline: {} rounds of 3 runs of {runs} raw puts of {size} bytes, then of batched puts",
            baseline::ROUNDS
        );
        let prefix = format!("{}baseline/", self.keys.all());
        let measured =
            baseline::measure(self.store, &prefix, Arc::new(values), self.etcd_pid).await?;
        let batched = measured.batched.iter().map(|run| (run, true));
        for (run, is_batched) in measured.runs.iter().map(|run| (run, false)).chain(batched) {
            let best = if is_batched {
                ", the batched reference: the leader's commit shape, not the baseline"
            } else if run.rate >= measured.best {
                ", the baseline"
            } else {
                ""
            };
            let cores = |c: Option<f64>| c.map_or("?".to_string(), |c| format!("{c:.2}"));
            let cpu = match run.etcd_cores {
                Some(etcd) => format!(
                    "; cores used: bench {}, etcd {etcd:.2}",
                    cores(run.client_cores)
                ),
                None => format!("; cores used: bench {}", cores(run.client_cores)),
            };
            report.row(
                format!(
                    "{} of {} × {size} B: {}",
                    if is_batched { "puts" } else { "raw puts" },
                    count(runs as u64),
                    run.label
                ),
                per_second(run.rate),
                format!(
                    "best of {} rounds; {} requests in flight at most (measured){best}{cpu}",
                    baseline::ROUNDS,
                    run.high_water
                ),
            );
        }
        let deleted = self
            .store
            .delete_prefix(&prefix)
            .await
            .map_err(|error| store_error("deleting the baseline keys", error))?;
        let revision = self
            .store
            .count(&prefix)
            .await
            .map_err(|error| store_error("reading the revision", error))?
            .revision;
        self.store
            .compact(revision)
            .await
            .map_err(|error| store_error("compacting the baseline away", error))?;
        if self.etcd_pid.is_some() {
            self.store
                .defragment()
                .await
                .map_err(|error| store_error("defragmenting", error))?;
        }
        tracing::debug!(deleted, revision, "baseline keys deleted and compacted");
        Ok((measured.best, measured.batched.map(|run| run.rate)))
    }
}

/// The 1-minute load average, from `/proc/loadavg`.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The time from `start` to `at` (zero when unknown).
fn since(start: Instant, at: Option<Instant>) -> Duration {
    at.map_or(Duration::ZERO, |at| at.saturating_duration_since(start))
}

/// Waits until `done` holds for the watched value, failing early when a child died.
async fn wait<T>(
    rx: &mut watch::Receiver<T>,
    fleet: &mut Fleet,
    mut done: impl FnMut(&T) -> bool,
) -> CliResult {
    loop {
        if done(&rx.borrow_and_update()) {
            return Ok(());
        }
        fleet.check_alive()?;
        tokio::select! {
            changed = rx.changed() => changed
                .map_err(|_| CliError::failure("a watch of etcd ended"))?,
            () = tokio::time::sleep(LIVENESS) => {}
        }
    }
}
