//! The steady load every scenario runs under: churn tasks applied, scaled and deleted one step
//! every [`STEP`], and a scheduled job `j` whose runs report to the witness. The load keeps the
//! timeline the checker judges churn copies against.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_faults::cli::Cli;
use drover_witness::checker::Desired;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::now_ms;

/// Time between two churn steps.
pub const STEP: Duration = Duration::from_secs(2);
/// The job's schedule and work: a run every 3 s, each working 1 s.
const JOB_EVERY: &str = "3s";
const JOB_WORK: &str = "1s";

/// The replicas of one churn task's life, step by step; then it is deleted.
const CYCLE: [u32; 3] = [2, 3, 1];

/// What the load did.
#[derive(Debug, Default)]
pub struct LoadLog {
    /// Per churn task: from when it could run how many copies at most. A step's bound is in
    /// force from just before its command was sent and only ever grows: a scale-down or delete
    /// lets the copies above the new count stop, it does not forbid a start already under way.
    pub churn: BTreeMap<String, Vec<Desired>>,
    /// Commands that failed (expected while etcd or the network is faulted), with why.
    pub failed: Vec<String>,
    /// Commands sent.
    pub sent: usize,
}

/// The running load; [`stop`](Load::stop) ends it.
pub struct Load {
    stop: watch::Sender<bool>,
    task: JoinHandle<LoadLog>,
}

/// A service manifest running the witness workload.
pub fn service(name: &str, replicas: u32, witness: &str) -> String {
    format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  command: [/witness, report, --to, \"{witness}\"]\n  replicas: {replicas}\n  terminationGracePeriodSeconds: 2\n  resources: {{cpu: 10m, memory: 1Mi}}\n"
    )
}

/// The scheduled job: every run's copy works [`JOB_WORK`], then reports done. A run whose
/// node died is failed (`NodeLost`: Drover cannot know whether the work was done) and retried
/// up to 3 times as a new run.
fn job(witness: &str) -> String {
    format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: j\nspec:\n  command: [/witness, report, --to, \"{witness}\", --work, {JOB_WORK}]\n  restartPolicy: OnFailure\n  every: {JOB_EVERY}\n  maxRetries: 3\n  historyLimit: 1000\n  terminationGracePeriodSeconds: 2\n  resources: {{cpu: 10m, memory: 1Mi}}\n"
    )
}

impl Load {
    /// Applies the job and starts churning.
    ///
    /// # Panics
    ///
    /// When the job cannot be applied (the cluster is healthy when a scenario begins).
    pub async fn start(cli: Cli, witness: String) -> Load {
        cli.apply(&job(&witness)).await.expect("apply the job");
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(churn(cli, witness, stopped));
        Load { stop, task }
    }

    /// Stops churning (after the step under way); returns the log. The job keeps its
    /// schedule: its runs are judged as far as they finished.
    ///
    /// # Panics
    ///
    /// When the churn task panicked.
    pub async fn stop(self) -> LoadLog {
        self.stop.send_replace(true);
        self.task.await.expect("the churn task")
    }
}

async fn churn(cli: Cli, witness: String, mut stopped: watch::Receiver<bool>) -> LoadLog {
    let mut log = LoadLog::default();
    for k in 1.. {
        let name = format!("churn-{k}");
        let mut most = 0;
        for step in 0..=CYCLE.len() {
            if *stopped.borrow() {
                return log;
            }
            let from_ms = now_ms();
            let result = match CYCLE.get(step) {
                Some(&replicas) => {
                    most = most.max(replicas);
                    log.churn.entry(name.clone()).or_default().push(Desired {
                        from_ms,
                        desired: replicas,
                        allowed: most,
                    });
                    cli.apply(&service(&name, replicas, &witness)).await
                }
                None => {
                    log.churn.entry(name.clone()).or_default().push(Desired {
                        from_ms,
                        desired: 0,
                        allowed: most,
                    });
                    cli.drover(&["delete", "task", &name]).await
                }
            };
            log.sent += 1;
            if let Err(e) = result {
                log.failed.push(format!("{name} step {step}: {e}"));
            }
            let _ = tokio::time::timeout(STEP, stopped.changed()).await;
        }
    }
    log
}
