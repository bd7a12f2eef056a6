//! [`Entry`]: everything the agent tracks for one instance — the assignment it runs, its
//! [`State`], and the status it reports — with one method per transition, so the engine's
//! async code only does I/O and then records what happened.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drover_api::instance::{reasons, Health, Instance, InstanceStatus, Phase, PortBinding};
use drover_api::task::DriverKind;
use tokio::time::Instant;

use super::state::{Exit, Run, State};
use crate::deadline::Deadline;
use crate::driver::{Handle, InstanceMeta};

/// The assignment an entry runs.
#[derive(Debug, Clone)]
struct Assigned {
    instance: Arc<Instance>,
    /// Status writes are fenced on it.
    create_revision: i64,
}

/// What the entry reports in its status besides the state (plain data).
#[derive(Debug, Clone)]
struct Report {
    ports: Vec<PortBinding>,
    restart_count: u32,
    phase: Phase,
    reason: Option<String>,
    message: Option<String>,
    exit_code: Option<i32>,
    health: Health,
    started_at: Option<DateTime<Utc>>,
    /// Since when the health check has passed without a failure in between.
    healthy_since: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

/// Everything the agent tracks for one instance.
#[derive(Debug)]
pub(crate) struct Entry {
    meta: InstanceMeta,
    /// `None` for an adopted instance not yet matched to its assignment.
    assigned: Option<Assigned>,
    kind: DriverKind,
    state: State,
    report: Report,
    /// When the first run started; local restarts keep it, `timeoutSeconds` counts from it.
    first_started: Option<Instant>,
    /// The last status written, to skip identical rewrites.
    written: Option<InstanceStatus>,
}

impl Entry {
    /// A fresh entry for an assignment.
    pub fn new(instance: Arc<Instance>, create_revision: i64, kind: DriverKind) -> Self {
        let meta = InstanceMeta {
            instance: instance.id.clone(),
            node: instance.node.clone(),
            generation: instance.generation,
            attempt: instance.attempt,
        };
        Entry {
            assigned: Some(Assigned {
                instance,
                create_revision,
            }),
            ..Entry::unmatched(meta, kind)
        }
    }

    /// An entry not yet matched to an assignment and not started.
    pub fn unmatched(meta: InstanceMeta, kind: DriverKind) -> Self {
        Entry {
            meta,
            assigned: None,
            kind,
            state: State::Pending,
            report: Report {
                ports: Vec::new(),
                restart_count: 0,
                phase: Phase::Pending,
                reason: None,
                message: None,
                exit_code: None,
                health: Health::Unknown,
                started_at: None,
                healthy_since: None,
                finished_at: None,
            },
            first_started: None,
            written: None,
        }
    }

    /// An entry for a run a driver recovered after an agent restart, not yet matched to its
    /// assignment. `prior` is the previous agent's status (ports, when reserved again, and
    /// restart count); `first_started` is the run's start, earlier runs being unknown.
    pub fn recovered(
        meta: InstanceMeta,
        kind: DriverKind,
        run: Run,
        exit: Option<Exit>,
        first_started: Instant,
        prior: Option<(Vec<PortBinding>, u32)>,
    ) -> Self {
        let mut entry = Entry::unmatched(meta, kind);
        if let Some((ports, restart_count)) = prior {
            entry.report.ports = ports;
            entry.report.restart_count = restart_count;
        }
        entry.report.phase = Phase::Running;
        entry.report.started_at = Some(run.handle().started_at);
        entry.first_started = Some(first_started);
        entry.state = match exit {
            None => State::Running { run },
            Some(exit) => State::Exited {
                run,
                exit,
                unhealthy: false,
            },
        };
        entry
    }

    /// The instance's identity as the drivers label it.
    pub fn meta(&self) -> &InstanceMeta {
        &self.meta
    }

    /// The driver that runs it.
    pub fn kind(&self) -> DriverKind {
        self.kind
    }

    /// Where it stands.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The assignment being run (`None` until an adopted instance is matched).
    pub fn instance(&self) -> Option<&Arc<Instance>> {
        self.assigned.as_ref().map(|a| &a.instance)
    }

    /// Create revision of the assignment being run (`None` until matched).
    pub fn create_revision(&self) -> Option<i64> {
        self.assigned.as_ref().map(|a| a.create_revision)
    }

    /// Local restarts so far.
    pub fn restart_count(&self) -> u32 {
        self.report.restart_count
    }

    /// When the current (or last) run started.
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        self.report.started_at
    }

    /// The host ports it holds.
    pub fn ports(&self) -> &[PortBinding] {
        &self.report.ports
    }

    /// Whether it has not started a run yet (so `timeoutSeconds` has not begun).
    pub fn never_started(&self) -> bool {
        self.first_started.is_none()
    }

    /// Whether the runtime object is (as far as we know) still running.
    pub fn is_running(&self) -> bool {
        self.state.is_running()
    }

    /// The handle of the current or last run.
    pub fn handle(&self) -> Option<&Handle> {
        self.state.run().map(Run::handle)
    }

    /// Where the run stands against `timeoutSeconds` at `now` (see [`crate::deadline`]).
    pub fn deadline(&self, now: Instant) -> Deadline {
        match self.instance() {
            Some(i) => crate::deadline::check(&i.spec, self.first_started, now),
            None => Deadline::None,
        }
    }

    /// The grace period from the spec (10 s for an adopted instance without assignment).
    pub fn grace(&self) -> Duration {
        let secs = self
            .instance()
            .map_or(10, |i| i.spec.termination_grace_period_seconds);
        Duration::from_secs(u64::from(secs))
    }

    /// Whether its instance is health-probed (hollow instances never are).
    pub fn wants_probe(&self) -> bool {
        self.instance()
            .is_some_and(|i| i.spec.health_check.is_some())
            && self.kind != DriverKind::Hollow
    }

    /// The status to report now.
    pub fn status(&self) -> InstanceStatus {
        let r = &self.report;
        InstanceStatus {
            id: self.meta.instance.clone(),
            node: self.meta.node.clone(),
            phase: r.phase,
            reason: r.reason.clone(),
            message: r.message.clone(),
            container_id: self.handle().map(|h| h.id.clone()),
            restart_count: r.restart_count,
            exit_code: r.exit_code,
            health: r.health,
            ports: r.ports.clone(),
            generation: self.meta.generation,
            attempt: self.meta.attempt,
            started_at: r.started_at,
            healthy_since: r.healthy_since,
            finished_at: r.finished_at,
            updated_at: Utc::now(),
        }
    }

    /// The status to write, unless it was written already or there is no assignment to
    /// fence the write on: the status and the create revision.
    pub fn unwritten(&self) -> Option<(InstanceStatus, i64)> {
        let rev = self.create_revision()?;
        let status = self.status();
        if self
            .written
            .as_ref()
            .is_some_and(|w| crate::status::same(w, &status))
        {
            return None;
        }
        Some((status, rev))
    }

    /// Remembers the status written last.
    pub fn written(&mut self, status: InstanceStatus) {
        self.written = Some(status);
    }

    /// An adopted instance is matched to its assignment.
    pub fn adopt(&mut self, instance: Arc<Instance>, create_revision: i64) {
        self.assigned = Some(Assigned {
            instance,
            create_revision,
        });
    }

    /// A start failed in a way that may pass: still pending, with the reason shown.
    pub fn start_failed(&mut self, reason: &str, message: String) {
        self.report.phase = Phase::Pending;
        self.report.reason = Some(reason.to_string());
        self.report.message = Some(message);
    }

    /// A run started: it holds `ports` and is numbered `seq`.
    pub fn started(&mut self, handle: Handle, seq: u64, ports: Vec<PortBinding>, now: Instant) {
        let r = &mut self.report;
        r.ports = ports;
        r.phase = Phase::Running;
        r.reason = None;
        r.message = None;
        r.health = Health::Unknown;
        r.healthy_since = None;
        r.started_at = Some(handle.started_at);
        r.finished_at = None;
        self.first_started.get_or_insert(now);
        self.state = State::Running {
            run: Run::new(handle, seq),
        };
    }

    /// The run `seq` exited (see [`State::exited`]).
    pub fn exited(&mut self, seq: u64, exit: Exit) {
        self.state.exited(seq, exit);
    }

    /// The prober of run `seq` reports `health` (with its message when unhealthy).
    pub fn health(&mut self, seq: u64, health: Health, message: Option<String>) {
        if !self.state.health(seq, health == Health::Unhealthy) {
            return;
        }
        if health != Health::Healthy {
            self.report.healthy_since = None;
        } else if self.report.health != Health::Healthy {
            self.report.healthy_since = Some(Utc::now());
        }
        self.report.health = health;
        if health == Health::Unhealthy {
            self.report.message = message;
        }
    }

    /// Ties a helper task to run `seq` (a prober when `probe`); hands it back when that run
    /// is gone, for the caller to abort.
    pub fn attach(
        &mut self,
        seq: u64,
        task: tokio::task::AbortHandle,
        probe: bool,
    ) -> Option<tokio::task::AbortHandle> {
        match self.state.run_mut().filter(|r| r.seq() == seq) {
            Some(run) => run.attach(task),
            None => return Some(task),
        }
        if probe {
            self.state.probing();
        }
        None
    }

    /// Copies how the run ended into the report (`now` when the end time is unknown).
    fn record_exit(&mut self, now: DateTime<Utc>) {
        if let Some(exit) = self.state.exit() {
            self.report.exit_code = exit.code;
            self.report.finished_at = exit.finished.or(Some(now));
        }
    }

    /// Ends the entry for good with `phase`, keeping the last run.
    fn terminal(&mut self, phase: Phase, reason: Option<String>, message: Option<String>) {
        let last = self.state.take_last(Exit {
            code: None,
            finished: Some(Utc::now()),
        });
        self.state = State::Terminal { last };
        self.report.phase = phase;
        self.report.reason = reason;
        self.report.message = message;
    }

    /// The ended run (already destroyed) is restarted from `until` on, as restart number
    /// `restart`; `message` says why.
    pub fn restart_after(&mut self, until: Instant, restart: u32, message: String) {
        self.record_exit(Utc::now());
        self.state = State::Backoff { until };
        self.report.restart_count = restart;
        self.report.phase = Phase::Starting;
        self.report.reason = None;
        self.report.message = Some(message);
    }

    /// The ended run is done for good (see [`crate::restart::next`]).
    pub fn finish(&mut self, phase: Phase, reason: Option<&str>, message: String) {
        self.record_exit(Utc::now());
        self.terminal(phase, reason.map(str::to_string), Some(message));
    }

    /// The run (stopped by the caller) lasted past `timeoutSeconds` (`limit`).
    pub fn expired(&mut self, limit: Duration) {
        self.record_exit(Utc::now());
        self.terminal(
            Phase::Failed,
            Some(reasons::DEADLINE_EXCEEDED.to_string()),
            Some(crate::deadline::message(limit)),
        );
    }

    /// Failed for good before running (no driver, a permanent start error).
    pub fn fail(&mut self, reason: &str, message: String) {
        self.terminal(Phase::Failed, Some(reason.to_string()), Some(message));
    }

    /// An earlier agent already reported this copy ended for good: take that outcome.
    pub fn ended_before(&mut self, status: InstanceStatus) {
        self.terminal(status.phase, status.reason, status.message);
        let r = &mut self.report;
        r.exit_code = status.exit_code;
        r.started_at = status.started_at;
        r.finished_at = status.finished_at;
        r.restart_count = status.restart_count;
    }

    /// The controller asked this copy to stop and the caller stopped what ran. A job copy
    /// that had exited on its own before the request (`exited_before`, its code) keeps its
    /// outcome; anything else is `Stopped` with the request's reason.
    pub fn stopped_on_request(&mut self, reason: &str, job: bool, exited_before: Option<Exit>) {
        self.record_exit(Utc::now());
        let (mut phase, mut why, mut message) = (
            self.report.phase,
            self.report.reason.take(),
            self.report.message.take(),
        );
        match exited_before.filter(|_| job && !phase.is_terminal()) {
            Some(Exit { code: Some(0), .. }) => {
                phase = Phase::Succeeded;
                why = None;
            }
            Some(_) => {
                phase = Phase::Failed;
                why = Some(reasons::ERROR.to_string());
            }
            None => {}
        }
        if !phase.is_terminal() {
            phase = Phase::Stopped;
            why = Some(reason.to_string());
            message = Some(format!("stopped on the controller's request ({reason})"));
        }
        self.terminal(phase, why, message);
    }

    /// Stopped (or never started) because its node is fencing itself.
    pub fn fenced(&mut self) {
        let last = self.state.take_last(Exit {
            code: None,
            finished: Some(Utc::now()),
        });
        self.state = State::Fenced { last };
        self.report.phase = Phase::Stopped;
        self.report.reason = Some(reasons::LEASE_LOST.to_string());
    }

    /// The final status at agent shutdown, with the create revision to fence it on; `None`
    /// when it already ended for good or has no assignment. A job run that had exited on its
    /// own before the shutdown (`ended_before`) keeps its outcome; anything else is
    /// `Stopped` (AgentShutdown).
    pub fn shutdown_status(
        &mut self,
        ended_before: bool,
        job: bool,
    ) -> Option<(InstanceStatus, i64)> {
        let rev = self.create_revision()?;
        if self.report.phase.is_terminal() {
            return None;
        }
        let r = &mut self.report;
        match self.state.exit() {
            Some(exit) if ended_before && job => {
                r.exit_code = exit.code;
                if exit.code == Some(0) {
                    r.phase = Phase::Succeeded;
                    r.reason = None;
                } else {
                    r.phase = Phase::Failed;
                    r.reason = Some(reasons::ERROR.to_string());
                }
                r.message = Some("exited before the agent shut down".into());
            }
            _ => {
                r.phase = Phase::Stopped;
                r.reason = Some(reasons::AGENT_SHUTDOWN.to_string());
                r.message = Some("the agent shut down and stopped the instance".into());
                let last = self.state.take_last(Exit {
                    code: None,
                    finished: Some(Utc::now()),
                });
                self.state = State::Terminal { last };
            }
        }
        Some((self.status(), rev))
    }

    /// Replaces the state (tests build every state this way).
    #[cfg(test)]
    pub fn set_state(&mut self, state: State) {
        self.state = state;
    }

    /// Replaces the message (tests use it to force a status write).
    #[cfg(test)]
    pub fn set_message(&mut self, message: &str) {
        self.report.message = Some(message.to_string());
    }

    /// Replaces the restart count (tests).
    #[cfg(test)]
    pub fn set_restart_count(&mut self, n: u32) {
        self.report.restart_count = n;
    }

    /// Marks the first start (tests).
    #[cfg(test)]
    pub fn set_first_started(&mut self, at: Option<Instant>) {
        self.first_started = at;
    }
}
