//! The engine's runtime operations: start a run, stop it, adopt what survived an agent
//! restart, fence (stop everything before the lease can expire) and shut down.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use drover_api::instance::{reasons, Health, InstanceStatus, Phase};
use drover_api::task::DriverKind;
use tokio::time::Instant;
use tracing::Instrument;

use crate::converge::{bindings, Engine, Result};
use crate::driver::{Driver, Handle, StartRequest, TaskState};
use crate::fence;
use crate::local::{Entry, Run, Slot, StopReason, StopRecord};
use crate::probe::Probe;

/// How long a destroy after a failed or late stop may take while fencing.
const KILL_CONFIRM: Duration = Duration::from_secs(5);

impl Engine {
    /// Starts the entry's instance; a permanent failure makes it terminal `Failed`.
    pub(crate) async fn start(self: &Arc<Self>, slot: &Slot) -> Result<()> {
        let (instance, kind) = {
            let table = self.table();
            let Some(e) = table.get(slot) else {
                return Ok(());
            };
            let Some(instance) = e.instance.clone() else {
                return Ok(());
            };
            (instance, e.kind)
        };
        let Some(driver) = self.drivers.get(kind).cloned() else {
            self.fail(
                slot,
                "InvalidSpec",
                format!("this node has no {kind} driver"),
            );
            return Ok(());
        };
        let host = self.ports.allocate(&slot.id, instance.spec.ports.len())?;
        let ports = bindings(&instance.spec.ports, &host);
        let req = StartRequest::from_instance(&instance, ports.clone());
        tracing::info!(driver = %kind, ?ports, "starting");
        let handle = match driver.start(&req).await {
            Ok(h) => h,
            Err(e) => {
                self.ports.release(&slot.id);
                if e.retryable() {
                    if let Some(en) = self.table().get_mut(slot) {
                        en.phase = Phase::Pending;
                        en.reason = Some(e.reason().to_string());
                        en.message = Some(e.to_string());
                    }
                    return Err(e.into());
                }
                tracing::warn!(error = %e, reason = e.reason(), "start failed");
                self.fail(slot, e.reason(), e.to_string());
                return Ok(());
            }
        };
        let seq = self.next_seq();
        {
            let mut table = self.table();
            let Some(e) = table.get_mut(slot) else {
                return Ok(());
            };
            e.ports = ports;
            e.phase = Phase::Running;
            e.reason = None;
            e.message = None;
            e.health = Health::Unknown;
            e.started_at = Some(handle.started_at);
            e.finished_at = None;
            e.next_start = None;
            e.run = Some(Run {
                handle: handle.clone(),
                seq,
                exited: None,
                unhealthy: false,
                tasks: Vec::new(),
                probing: false,
            });
        }
        self.spawn_waiter(slot, seq, driver, handle);
        // A fence that began while we were starting may have missed this run: stop it ourselves.
        if self.is_fenced(&slot.node) {
            self.fence_one(slot, None).await;
        }
        Ok(())
    }

    fn fail(&self, slot: &Slot, reason: &str, message: String) {
        if let Some(e) = self.table().get_mut(slot) {
            e.terminal = true;
            e.phase = Phase::Failed;
            e.reason = Some(reason.to_string());
            e.message = Some(message);
        }
    }

    fn spawn_waiter(
        self: &Arc<Self>,
        slot: &Slot,
        seq: u64,
        driver: Arc<dyn Driver>,
        handle: Handle,
    ) {
        let engine = self.clone();
        let kill = self.kill.clone();
        let s = slot.clone();
        let task = tokio::spawn(
            async move {
                let state = tokio::select! {
                    () = kill.cancelled() => return,
                    state = wait_exit(driver.as_ref(), &handle) => state,
                };
                let (code, finished) = match state {
                    TaskState::Exited { code, finished_at } => (code, finished_at),
                    TaskState::NotFound | TaskState::Running => (None, None),
                };
                tracing::info!(?code, "instance exited");
                if let Some(e) = engine.table().get_mut(&s) {
                    if let Some(run) = e
                        .run
                        .as_mut()
                        .filter(|r| r.seq == seq && r.exited.is_none())
                    {
                        run.exited = Some((code, finished.or_else(|| Some(Utc::now()))));
                    }
                }
                engine.poke(s, "exited");
            }
            .in_current_span(),
        );
        self.attach(slot, seq, task.abort_handle(), false);
    }

    pub(crate) fn spawn_prober(self: &Arc<Self>, slot: &Slot) {
        let (seq, probe) = {
            let table = self.table();
            let Some(e) = table.get(slot) else { return };
            let (Some(run), Some(check)) = (
                e.run.as_ref().filter(|r| !r.probing && r.exited.is_none()),
                e.instance
                    .as_ref()
                    .and_then(|i| i.spec.health_check.clone()),
            ) else {
                return;
            };
            if e.kind == DriverKind::Hollow {
                return;
            }
            let docker = match e.kind {
                DriverKind::Docker => self
                    .drivers
                    .docker_client()
                    .map(|d| (d, run.handle.id.clone())),
                _ => None,
            };
            (
                run.seq,
                Probe {
                    check,
                    ports: e.ports.clone(),
                    docker,
                },
            )
        };
        let engine = self.clone();
        let kill = self.kill.clone();
        let s = slot.clone();
        let task = tokio::spawn(
            async move {
                let report = |health: Health, message: Option<String>| {
                    tracing::info!(?health, ?message, "health changed");
                    if let Some(e) = engine.table().get_mut(&s) {
                        let Some(run) = e.run.as_mut().filter(|r| r.seq == seq) else {
                            return;
                        };
                        run.unhealthy = health == Health::Unhealthy;
                        e.health = health;
                        if health == Health::Unhealthy {
                            e.message = message;
                        }
                    }
                    engine.poke(s.clone(), "health");
                };
                tokio::select! {
                    () = kill.cancelled() => {}
                    () = probe.run(report) => {}
                }
            }
            .in_current_span(),
        );
        self.attach(slot, seq, task.abort_handle(), true);
    }

    fn attach(&self, slot: &Slot, seq: u64, task: tokio::task::AbortHandle, probing: bool) {
        let mut table = self.table();
        match table
            .get_mut(slot)
            .and_then(|e| e.run.as_mut())
            .filter(|r| r.seq == seq)
        {
            Some(run) => {
                run.tasks.push(task);
                run.probing |= probing;
            }
            None => task.abort(),
        }
    }

    /// Stops the current run with the spec's grace period and records its exit.
    pub(crate) async fn stop_run(&self, slot: &Slot) -> Result<()> {
        let Some((driver, handle, grace)) = self.run_of(slot) else {
            return Ok(());
        };
        driver.stop(&handle, grace).await?;
        let state = driver.inspect(&handle).await.unwrap_or(TaskState::NotFound);
        let (code, finished) = match state {
            TaskState::Exited { code, finished_at } => (code, finished_at),
            _ => (None, None),
        };
        if let Some(run) = self.table().get_mut(slot).and_then(|e| e.run.as_mut()) {
            if run.handle.id == handle.id && run.exited.is_none() {
                run.exited = Some((code, finished.or_else(|| Some(Utc::now()))));
            }
        }
        Ok(())
    }

    fn run_of(&self, slot: &Slot) -> Option<(Arc<dyn Driver>, Handle, Duration)> {
        let table = self.table();
        let e = table.get(slot)?;
        let run = e.run.as_ref()?;
        Some((
            self.drivers.get(e.kind)?.clone(),
            run.handle.clone(),
            e.grace(),
        ))
    }

    /// Stops (grace period), removes the runtime object, frees the ports and forgets the entry.
    pub(crate) async fn stop_and_forget(&self, slot: &Slot, reason: StopReason) -> Result<()> {
        let began = Utc::now();
        let running = self.table().get(slot).is_some_and(Entry::is_running);
        let started = self.table().get(slot).and_then(|e| e.started_at);
        if let Some((driver, handle, grace)) = self.run_of(slot) {
            if running {
                tracing::info!(?reason, ?grace, "stopping");
            }
            driver.stop(&handle, grace).await?;
            driver.destroy(&handle).await?;
        }
        if self.table().remove(slot).is_none() {
            return Ok(());
        }
        self.ports.release(&slot.id);
        if running {
            self.record(slot, reason, started, began, None, true).await;
        }
        Ok(())
    }

    async fn record(
        &self,
        slot: &Slot,
        reason: StopReason,
        started_at: Option<chrono::DateTime<Utc>>,
        stop_began_at: chrono::DateTime<Utc>,
        fence: Option<(Instant, Instant)>,
        confirmed: bool,
    ) {
        let rec = StopRecord {
            instance: slot.id.clone(),
            node: slot.node.to_string(),
            reason,
            started_at,
            stop_began_at,
            stopped_at: Utc::now(),
            deadline: fence.map(|(d, _)| fence::wall_clock(d)),
            lease_expiry_earliest: fence.map(|(_, x)| fence::wall_clock(x)),
            confirmed,
        };
        if let Err(e) = self.records.add(rec).await {
            tracing::warn!(error = %e, "cannot record the stop");
        }
    }

    /// Adopts what the drivers already run for `node` (after an agent restart): each becomes an
    /// entry with create revision 0, matched to its assignment (or stopped) by reconcile.
    pub(crate) async fn adopt(self: &Arc<Self>, node: &Arc<str>) {
        for (kind, driver) in self.drivers.all().to_vec() {
            let found = match driver.recover(node).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(driver = %kind, error = %e, "recover failed; nothing adopted");
                    continue;
                }
            };
            for rec in found {
                let slot = Slot {
                    node: node.clone(),
                    id: rec.meta.instance.clone(),
                };
                // The previous agent's status has the ports and restart count.
                let prior: Option<InstanceStatus> = self
                    .store
                    .get::<InstanceStatus>(&self.keys.status(&slot.id))
                    .await
                    .ok()
                    .flatten()
                    .map(|v| v.value)
                    .filter(|s| s.node == *node.as_ref());
                let mut entry = adopted_entry(rec.meta.clone(), kind);
                if let Some(p) = &prior {
                    let host: Vec<u16> = p.ports.iter().map(|b| b.host_port).collect();
                    if self.ports.reserve(&slot.id, &host).is_ok() {
                        entry.ports = p.ports.clone();
                    }
                    entry.restart_count = p.restart_count;
                }
                let exited = match rec.state {
                    TaskState::Running => None,
                    TaskState::Exited { code, finished_at } => Some((code, finished_at)),
                    TaskState::NotFound => continue,
                };
                let seq = self.next_seq();
                entry.phase = Phase::Running;
                entry.started_at = Some(rec.handle.started_at);
                entry.run = Some(Run {
                    handle: rec.handle.clone(),
                    seq,
                    exited,
                    unhealthy: false,
                    tasks: Vec::new(),
                    probing: false,
                });
                tracing::info!(instance = %slot.id, driver = %kind, running = exited.is_none(), "recovered");
                self.table().insert(slot.clone(), entry);
                if exited.is_none() {
                    self.spawn_waiter(&slot, seq, driver.clone(), rec.handle);
                }
            }
        }
    }

    /// Self-fencing of `node`: see [`crate::fence`] for the rule and its guarantees.
    pub(crate) async fn fence(&self, node: &str, deadline: Instant, expiry: Instant) {
        let Some(state) = self.nodes.get(node) else {
            return;
        };
        *state
            .deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(deadline);
        state.fenced.store(true, Ordering::SeqCst);
        self.metrics.fences.inc();
        let victims: Vec<Slot> = self
            .table()
            .iter()
            .filter(|(s, e)| *s.node == *node && e.is_running())
            .map(|(s, _)| s.clone())
            .collect();
        tracing::error!(
            node,
            instances = victims.len(),
            left = ?deadline.saturating_duration_since(Instant::now()),
            "SELF-FENCING: keep-alives are not acknowledged; stopping every instance before the lease can expire"
        );
        let stops = victims
            .iter()
            .map(|s| self.fence_one(s, Some((deadline, expiry))));
        futures::future::join_all(stops).await;
        tracing::error!(
            node,
            "self-fencing done: no instance runs until the agent re-registers"
        );
    }

    /// Stops one instance for fencing, clipping its grace to the deadline.
    async fn fence_one(&self, slot: &Slot, fence_times: Option<(Instant, Instant)>) {
        let deadline = fence_times.map(|(d, _)| d).or_else(|| {
            self.nodes.get(&slot.node).and_then(|n| {
                *n.deadline
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            })
        });
        let Some(deadline) = deadline else { return };
        let Some((driver, handle, own)) = self.run_of(slot) else {
            return;
        };
        let started = self.table().get(slot).and_then(|e| e.started_at);
        let began = Utc::now();
        let grace = fence::clip_grace(own, Instant::now(), deadline);
        let stopped = matches!(
            tokio::time::timeout_at(deadline, driver.stop(&handle, grace)).await,
            Ok(Ok(()))
        );
        let confirmed = stopped
            || matches!(
                tokio::time::timeout(KILL_CONFIRM, driver.destroy(&handle)).await,
                Ok(Ok(()))
            );
        if !confirmed {
            tracing::error!(instance = %slot.id, "self-fencing could not confirm the instance stopped");
        }
        if let Some(e) = self.table().get_mut(slot) {
            e.fenced = true;
            e.phase = Phase::Stopped;
            e.reason = Some(reasons::LEASE_LOST.to_string());
            if let Some(run) = e.run.as_mut() {
                run.exited.get_or_insert((None, Some(Utc::now())));
            }
        }
        self.record(
            slot,
            StopReason::Fenced,
            started,
            began,
            fence_times,
            confirmed,
        )
        .await;
    }

    /// After re-registering: forget what fencing stopped and converge `node` afresh.
    pub(crate) async fn unfence(&self, node: &str) {
        let Some(state) = self.nodes.get(node) else {
            return;
        };
        if !state.fenced.load(Ordering::SeqCst) {
            return;
        }
        let fenced: Vec<Slot> = self
            .table()
            .iter()
            .filter(|(s, e)| *s.node == *node && e.fenced)
            .map(|(s, _)| s.clone())
            .collect();
        for slot in &fenced {
            if let Err(e) = self.stop_and_forget(slot, StopReason::Fenced).await {
                tracing::warn!(instance = %slot.id, error = %e, "cleaning up a fenced instance");
            }
        }
        *state
            .deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        state.fenced.store(false, Ordering::SeqCst);
        tracing::warn!(
            node,
            "re-registered after self-fencing; converging to the current assignments"
        );
        self.poke_all(Some(node), "re-registered");
    }

    /// Agent shutdown: stop every instance of `node` within its grace period, concurrently.
    pub(crate) async fn stop_all(&self, node: &str) {
        let slots: Vec<Slot> = self
            .table()
            .keys()
            .filter(|s| *s.node == *node)
            .cloned()
            .collect();
        let stops = slots.iter().map(|slot| {
            let span = tracing::info_span!("shutdown", instance = %slot.id);
            async move {
                if let Err(e) = self.stop_and_forget(slot, StopReason::Shutdown).await {
                    tracing::warn!(error = %e, "stopping on shutdown failed");
                }
            }
            .instrument(span)
        });
        futures::future::join_all(stops).await;
    }
}

fn adopted_entry(meta: crate::driver::InstanceMeta, kind: DriverKind) -> Entry {
    Entry {
        meta,
        instance: None,
        create_revision: 0,
        kind,
        run: None,
        ports: Vec::new(),
        restart_count: 0,
        phase: Phase::Pending,
        reason: None,
        message: None,
        exit_code: None,
        health: Health::Unknown,
        started_at: None,
        finished_at: None,
        next_start: None,
        terminal: false,
        fenced: false,
        written: None,
    }
}

/// Waits for the run to end, riding out transient driver errors.
async fn wait_exit(driver: &dyn Driver, handle: &Handle) -> TaskState {
    loop {
        match driver.wait(handle).await {
            Ok(state) if !state.is_running() => return state,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "wait failed; polling");
                if let Ok(state) = driver.inspect(handle).await {
                    if !state.is_running() {
                        return state;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
