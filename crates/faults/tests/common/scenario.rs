//! One scenario's frame: the steady service `w` and the load before the faults; afterwards
//! convergence (through the witness and through `drover get`), the witness's verdict on every
//! task, the figures line the report is built from, and the promises asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use drover_api::run::{RunCause, RunRecord};
use drover_api::task::Task;
use drover_faults::cluster::{Cluster, AGENT_TTL};
use drover_witness::checker::{self, Copy, Interval, Work};

use super::load::{Load, LoadLog};
use super::{apply_steady, judge, now_ms, PERIOD_MS};

/// How long the cluster may take to converge once the faults are over.
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);
/// How long the load goes on after the last fault, before convergence is judged.
const SETTLE: Duration = Duration::from_secs(10);
/// The load runs at least this long in all, so every scenario judges a dozen job runs and as
/// many churn steps.
const MIN_LOAD: Duration = Duration::from_secs(36);
/// A copy counts as live when it reported within this many ms.
const LIVE_WINDOW_MS: i64 = 500;

/// What the scenario promises about the steady service `w` after its first fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promise {
    /// No copy of `w` goes missing at all (faults of controllers and of a minority of etcd).
    Undisturbed,
    /// Copies lost with a host are replaced within the agent lease TTL plus 2 s.
    Replaced,
    /// Copies may stop while etcd has no quorum (agents fence); only safety is promised, and
    /// the gaps are reported.
    SafeOnly,
}

/// A scenario under way.
pub struct Scenario<'a> {
    cluster: &'a Cluster,
    name: String,
    applied: i64,
    load: Load,
    load_started: tokio::time::Instant,
    first_fault: Option<i64>,
    rounds: usize,
}

/// How many times each scenario repeats its fault: `DROVER_FAULT_ROUNDS` (1 to 10, default 1).
pub fn rounds() -> usize {
    std::env::var("DROVER_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .clamp(1, 10)
}

impl<'a> Scenario<'a> {
    /// Applies `w`, waits for its steady state, and starts the load.
    pub async fn begin(cluster: &'a Cluster, name: &str) -> Scenario<'a> {
        let applied = apply_steady(cluster).await;
        let load = Load::start(cluster.cli(), cluster.witness()).await;
        Scenario {
            cluster,
            name: name.to_string(),
            applied,
            load,
            load_started: tokio::time::Instant::now(),
            first_fault: None,
            rounds: 0,
        }
    }

    /// Marks the start of a fault (one per round); returns its time.
    pub fn fault(&mut self) -> i64 {
        let at = now_ms();
        self.first_fault.get_or_insert(at);
        self.rounds += 1;
        at
    }

    /// Stops the load, waits for convergence, judges every task, prints and records the
    /// figures, and asserts the promises: no overlap anywhere, no job run lost or doubled,
    /// convergence, and `promise` for `w`.
    pub async fn finish(self, promise: Promise) -> Figures {
        let settled = tokio::time::Instant::now() + SETTLE;
        tokio::time::sleep_until(settled.max(self.load_started + MIN_LOAD)).await;
        let log = self.load.stop().await;
        let converged = converge(self.cluster).await;
        let first_fault = self.first_fault.unwrap_or(self.applied);
        let w = judge(self.cluster, self.applied);
        let gaps: Vec<i64> = w
            .gaps
            .iter()
            .filter(|g| g.to_ms > first_fault)
            .map(Interval::millis)
            .collect();
        let mut overlaps: Vec<(String, Interval)> = w
            .overlaps
            .iter()
            .map(|o| ("default/w".to_string(), *o))
            .collect();
        overlaps.extend(churn_overlaps(self.cluster, &log));
        let jobs = judge_job(self.cluster).await;
        let figures = Figures {
            scenario: self.name.clone(),
            rounds: self.rounds,
            overlaps,
            gaps,
            jobs,
            converged_ms: converged.clone().ok(),
            commands: log.sent,
            commands_failed: log.failed.len(),
        };
        figures.print_and_record();
        for failure in &log.failed {
            eprintln!("{}: load command failed: {failure}", self.name);
        }
        let mut broken = figures.broken(promise);
        if let Err(why) = converged {
            broken.push(format!("the cluster did not converge: {why}"));
        }
        if !broken.is_empty() {
            eprintln!("{}", warnings(self.cluster).await);
            panic!("{}: {}", self.name, broken.join("; "));
        }
        figures
    }
}

/// A scenario's figures: the row it adds to the report.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Its name.
    pub scenario: String,
    /// Faults injected.
    pub rounds: usize,
    /// Overlaps by task.
    pub overlaps: Vec<(String, Interval)>,
    /// The steady service's gaps after the first fault, in ms.
    pub gaps: Vec<i64>,
    /// The job's runs.
    pub jobs: JobFigures,
    /// How long convergence took after the faults; `None` when stuck.
    pub converged_ms: Option<i64>,
    /// Load commands sent, and how many failed.
    pub commands: usize,
    /// Load commands that failed.
    pub commands_failed: usize,
}

/// The scheduled job's runs, as the witness saw them.
#[derive(Debug, Clone, Default)]
pub struct JobFigures {
    /// Finished chains judged (a run and its retries).
    pub runs: usize,
    /// Chains Drover finished as succeeded that no copy reported done, and run numbers missing
    /// in between.
    pub lost: Vec<String>,
    /// Runs two copies reported done.
    pub doubled: Vec<String>,
    /// Chains whose work a retry did again after a run's node died having done it (the
    /// outcome Drover could not know): at least once, reported.
    pub redone: Vec<String>,
    /// Chains Drover finished as failed (dead-lettered, visible to the user).
    pub failed: Vec<String>,
    /// Chains with two copies live at once.
    pub overlapping: Vec<String>,
    /// Chains going for much longer than their work.
    pub stuck: Vec<String>,
}

impl Figures {
    fn longest_overlap_ms(&self) -> i64 {
        self.overlaps
            .iter()
            .map(|(_, o)| o.millis())
            .max()
            .unwrap_or(0)
    }

    fn print_and_record(&self) {
        let ttl_ms = i64::try_from(AGENT_TTL.as_millis()).unwrap_or(i64::MAX);
        let line = serde_json::json!({
            "scenario": self.scenario,
            "rounds": self.rounds,
            "overlaps": self.overlaps.len() + self.jobs.overlapping.len(),
            "longestOverlapMs": self.longest_overlap_ms(),
            "gaps": self.gaps.len(),
            "gapP50Ms": checker::quantile(&self.gaps, 0.5),
            "gapP99Ms": checker::quantile(&self.gaps, 0.99),
            "leaseTtlMs": ttl_ms,
            "jobRuns": self.jobs.runs,
            "runsLost": self.jobs.lost.len(),
            "runsDoubled": self.jobs.doubled.len(),
            "runsRedone": self.jobs.redone.len(),
            "runsFailed": self.jobs.failed.len(),
            "stuckRuns": self.jobs.stuck.len(),
            "convergedMs": self.converged_ms,
            "commands": self.commands,
            "commandsFailed": self.commands_failed,
        });
        eprintln!("FIGURES {line}");
        eprintln!(
            "{}: overlaps {:?}; gaps {:?} ms; jobs {:?}",
            self.scenario, self.overlaps, self.gaps, self.jobs
        );
        if let Ok(path) = std::env::var("DROVER_FAULT_FIGURES") {
            use std::io::Write;
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = appended {
                eprintln!("could not record the figures in {path}: {e}");
            }
        }
    }

    /// Every promise the figures break, worded for the failure message.
    fn broken(&self, promise: Promise) -> Vec<String> {
        let mut broken = Vec::new();
        if !self.overlaps.is_empty() {
            broken.push(format!("overlap: {:?}", self.overlaps));
        }
        let jobs = &self.jobs;
        if !(jobs.lost.is_empty() && jobs.doubled.is_empty() && jobs.overlapping.is_empty()) {
            broken.push(format!(
                "job work lost {:?}, doubled {:?}, overlapping {:?}",
                jobs.lost, jobs.doubled, jobs.overlapping
            ));
        }
        if !jobs.stuck.is_empty() {
            broken.push(format!("runs stuck: {:?}", jobs.stuck));
        }
        if jobs.runs == 0 {
            broken.push("the job ran no run to judge".into());
        }
        match promise {
            Promise::Undisturbed if !self.gaps.is_empty() => {
                broken.push(format!("copies of w went missing: {:?} ms", self.gaps));
            }
            Promise::Replaced => {
                let bound =
                    i64::try_from((AGENT_TTL + Duration::from_secs(2)).as_millis()).unwrap_or(0);
                if self.gaps.iter().any(|g| *g > bound) {
                    broken.push(format!(
                        "replacement gaps {:?} ms over lease TTL + 2 s",
                        self.gaps
                    ));
                }
            }
            Promise::Undisturbed | Promise::SafeOnly => {}
        }
        broken
    }
}

/// What the hosts warned about, for a failure's message: the lines of the agents and the
/// controllers at WARN or ERROR.
async fn warnings(cluster: &Cluster) -> String {
    let mut out = String::new();
    let hosts = cluster
        .agents
        .iter()
        .map(String::as_str)
        .chain(["c1", "c2", "c3"]);
    for host in hosts {
        for line in cluster.warnings(host).await {
            out.push_str(&format!("{host}: {line}\n"));
        }
    }
    out
}

/// Overlaps of the churn tasks, each judged against the timeline the load kept.
fn churn_overlaps(cluster: &Cluster, log: &LoadLog) -> Vec<(String, Interval)> {
    let (copies, _) = checker::copies(&cluster.records().expect("records"));
    let end = copies.iter().map(|c| c.last_ms).max().unwrap_or(0);
    let mut found = Vec::new();
    for (name, timeline) in &log.churn {
        let mine: Vec<&Copy> = copies
            .iter()
            .filter(|c| c.instance.task() == name)
            .collect();
        let verdict = checker::judge_service(&mine, timeline, PERIOD_MS, end);
        found.extend(verdict.overlaps.into_iter().map(|o| (name.clone(), o)));
    }
    found
}

/// One unit of the job's work: a run and the retries that followed it (`maxRetries`).
#[derive(Debug)]
struct Chain {
    runs: Vec<RunRecord>,
}

impl Chain {
    fn last(&self) -> &RunRecord {
        &self.runs[self.runs.len() - 1]
    }
}

/// Groups run records (by run number) into chains: a retry continues the failed run of the
/// attempt before it that no other retry continued yet.
fn chains(mut runs: Vec<RunRecord>) -> Vec<Chain> {
    runs.sort_by_key(|r| r.run);
    let mut chains: Vec<Chain> = Vec::new();
    for run in runs {
        let continues = (run.cause == RunCause::Retry).then(|| {
            chains.iter_mut().rev().find(|c| {
                let last = c.last();
                last.attempt + 1 == run.attempt && last.outcome.is_some_and(|o| !o.is_success())
            })
        });
        match continues.flatten() {
            Some(chain) => chain.runs.push(run),
            None => chains.push(Chain { runs: vec![run] }),
        }
    }
    chains
}

/// The job's runs against the witness, chain by chain (a run and its retries): a finished
/// chain must have been done by exactly one copy, its copies never live at once, and no run
/// number may be missing or a chain stuck.
async fn judge_job(cluster: &Cluster) -> JobFigures {
    let store = cluster.store().await.expect("store");
    let runs = store
        .list::<RunRecord>(&cluster.keys().runs_of("default", "j"))
        .await
        .expect("run records");
    let (copies, _) = checker::copies(&cluster.records().expect("records"));
    let mut figures = JobFigures::default();
    let numbers: BTreeSet<u64> = runs.items.iter().map(|r| r.value.run).collect();
    if let (Some(first), Some(last)) = (numbers.first(), numbers.last()) {
        figures.lost.extend(
            (*first..=*last)
                .filter(|n| !numbers.contains(n))
                .map(|n| format!("run {n} has no record")),
        );
    }
    let now = chrono::Utc::now();
    let stuck_after = chrono::Duration::from_std(AGENT_TTL * 3 + Duration::from_secs(30))
        .unwrap_or(chrono::Duration::MAX);
    let mut chained = Vec::new();
    let mut single = Vec::new();
    let mut succeeded = Vec::new();
    for chain in chains(runs.items.into_iter().map(|r| r.value).collect()) {
        let last = chain.last();
        let name = format!(
            "runs {:?}",
            chain.runs.iter().map(|r| r.run).collect::<Vec<_>>()
        );
        if last.finished_at.is_none() {
            if now - last.started_at > stuck_after {
                figures
                    .stuck
                    .push(format!("{name}: going since {}", last.started_at));
            }
            continue;
        }
        figures.runs += 1;
        let instances: Vec<String> = chain
            .runs
            .iter()
            .map(|r| format!("{}.{}.r{}.0", r.namespace, r.task, r.run))
            .collect();
        single.extend(instances.iter().cloned().map(Work::run));
        if last.outcome.is_some_and(|o| o.is_success()) {
            succeeded.push(instances[0].clone());
        } else {
            figures.failed.push(format!("{name}: {:?}", last.outcome));
        }
        chained.push(Work { instances });
    }
    let mine: Vec<&Copy> = copies.iter().filter(|c| c.instance.task() == "j").collect();
    // One run done twice, or two copies of one run live at once: Drover ran it twice.
    let per_run = checker::judge_jobs(&mine, &single);
    figures.doubled = per_run.doubled;
    figures.overlapping = per_run.overlapping;
    // Over a run and its retries: a retry live beside its predecessor is an overlap; a retry
    // of a run whose node died after its copy had done the work (Drover could not know) does
    // it again — at least once, as maxRetries asks — which is reported, not a broken promise;
    // work Drover finished as succeeded that no copy did is lost.
    let per_chain = checker::judge_jobs(&mine, &chained);
    figures.overlapping.extend(per_chain.overlapping);
    figures.redone = per_chain.doubled;
    figures
        .lost
        .extend(per_chain.lost.into_iter().filter(|w| succeeded.contains(w)));
    figures
}

/// Waits until desired equals running for every service task, through the witness (live
/// copies per task, deleted tasks none) and through `drover get tasks`; returns how long it
/// took, or what still differed.
async fn converge(cluster: &Cluster) -> Result<i64, String> {
    let started = now_ms();
    let deadline = tokio::time::Instant::now() + CONVERGE_WITHIN;
    loop {
        let why = match converged_once(cluster).await {
            Ok(()) => return Ok(now_ms() - started),
            Err(why) => why,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("after {CONVERGE_WITHIN:?}: {why}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn converged_once(cluster: &Cluster) -> Result<(), String> {
    let store = cluster.store().await.map_err(|e| e.to_string())?;
    let tasks = store
        .list::<Task>(&cluster.keys().tasks())
        .await
        .map_err(|e| e.to_string())?;
    let mut desired: BTreeMap<String, u32> = BTreeMap::new();
    let mut jobs = BTreeSet::new();
    for t in &tasks.items {
        let task = &t.value;
        if task.spec.mode() == drover_api::task::Mode::Service {
            desired.insert(task.metadata.name.clone(), task.spec.replicas);
        } else {
            jobs.insert(task.metadata.name.clone());
        }
    }
    // Through the witness: per task, the distinct instances reporting now.
    let (copies, _) = checker::copies(&cluster.records().map_err(|e| e.to_string())?);
    let at = now_ms();
    let mut live: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut processes: BTreeMap<String, usize> = BTreeMap::new();
    for c in copies.iter().filter(|c| c.last_ms >= at - LIVE_WINDOW_MS) {
        live.entry(c.instance.task().to_string())
            .or_default()
            .insert(c.instance.to_string());
        *processes.entry(c.instance.task().to_string()).or_default() += 1;
    }
    for (name, want) in &desired {
        let instances = live.get(name).map_or(0, BTreeSet::len);
        let procs = processes.get(name).copied().unwrap_or(0);
        if instances != *want as usize || procs != *want as usize {
            return Err(format!(
                "witness: task {name} wants {want}, {instances} instances in {procs} processes report"
            ));
        }
    }
    if let Some(gone) = live
        .keys()
        .find(|name| !desired.contains_key(*name) && !jobs.contains(*name))
    {
        return Err(format!(
            "witness: deleted task {gone} still has copies reporting"
        ));
    }
    // Through the CLI: every service row's DESIRED equals its RUNNING.
    let table = cluster
        .drover(&["get", "tasks"])
        .await
        .map_err(|e| e.to_string())?;
    let mut rows = 0;
    for line in table.lines().skip(1) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        let [name, mode, want, running, ..] = cells[..] else {
            return Err(format!("drover get tasks: a short row: {line:?}"));
        };
        if mode != "service" {
            continue;
        }
        rows += 1;
        if want != running {
            return Err(format!(
                "drover get tasks: {name} DESIRED {want} RUNNING {running}"
            ));
        }
    }
    if rows != desired.len() {
        return Err(format!(
            "drover get tasks shows {rows} services, etcd holds {}",
            desired.len()
        ));
    }
    Ok(())
}
