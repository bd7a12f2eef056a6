//! The engine's runtime operations: start a run, watch it (exit waiter, prober), stop it and
//! shut down. Adopting what survived an agent restart is in [`adopt`], self-fencing in
//! [`fencing`], stopping jobs past `timeoutSeconds` in [`timeout`].

mod adopt;
mod fencing;
#[cfg(test)]
mod race_tests;
#[cfg(test)]
mod stop_tests;
#[cfg(test)]
pub(crate) mod tests;
mod timeout;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use drover_api::instance::{reasons, Health, Phase};
use drover_api::task::DriverKind;
use tokio::time::Instant;
use tracing::Instrument;

use crate::converge::{bindings, Engine, Error, InFlight, Result};
use crate::driver::{Driver, Handle, StartRequest, TaskState};
use crate::fence;
use crate::local::{Entry, Run, Slot, StopReason, StopRecord};
use crate::probe::Probe;

impl Engine {
    /// Starts the entry's instance; a permanent failure makes it terminal `Failed`.
    ///
    /// # Guarantees
    /// Nothing is started unless a linearizable read, just before the start, finds the
    /// assignment with the create revision the entry holds ([`Self::still_assigned`]): a stale
    /// assignment cache (after a partition, before the watch caught up) never starts an
    /// instance the controller has meanwhile removed or placed anew.
    pub(crate) async fn start(self: &Arc<Self>, slot: &Slot) -> Result<()> {
        let (instance, kind, create_revision, first) = {
            let table = self.table();
            let Some(e) = table.get(slot) else {
                return Ok(());
            };
            let Some(instance) = e.instance.clone() else {
                return Ok(());
            };
            (
                instance,
                e.kind,
                e.create_revision,
                e.first_started.is_none(),
            )
        };
        if !self.still_assigned(slot, create_revision).await? {
            tracing::warn!(
                create_revision,
                "not starting: etcd no longer has this assignment (the local cache is behind)"
            );
            self.stop_and_forget(slot, StopReason::Unassigned).await?;
            return Ok(());
        }
        if first && self.ended_before(slot, &instance).await? {
            return Ok(());
        }
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
        // Held until the run is in the table and, if fencing began, stopped again.
        let _in_flight = self
            .nodes
            .get(&slot.node)
            .map(|n| InFlight::new(&n.starting));
        let Some(started) = self.start_or_fence(slot, &driver, &req).await else {
            if let Some(e) = self.table().get_mut(slot) {
                e.fenced = true;
                e.phase = Phase::Stopped;
                e.reason = Some(reasons::LEASE_LOST.to_string());
            }
            return Ok(());
        };
        let handle = match started {
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
            e.first_started.get_or_insert_with(Instant::now);
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

    /// Whether etcd (linearizable read) still holds the assignment of `slot` created at
    /// `create_revision`, without a stop request. Absent, re-created (another create revision),
    /// asked to stop, or no longer decodable is `false`: never start what may not be wanted.
    pub(crate) async fn still_assigned(&self, slot: &Slot, create_revision: i64) -> Result<bool> {
        let key = self.keys.assignment(&slot.node, &slot.id);
        let found = self
            .store
            .get_raw(&key)
            .await
            .map_err(|source| Error::Confirm { key, source })?;
        Ok(found.is_some_and(|v| {
            v.create_revision == create_revision
                && serde_json::from_slice::<drover_api::Instance>(&v.value)
                    .is_ok_and(|i| i.stop.is_none())
        }))
    }

    /// Whether an earlier agent process already reported this copy ended for good — Succeeded
    /// or Failed, for this node and attempt; the entry then takes that outcome instead of
    /// starting again. The controller may delete the assignment and start a replacement on
    /// such a status, so starting the copy anew could make two. A copy an agent stopped for
    /// its own sake (`Stopped`: shutdown, fencing) is resumed as before.
    async fn ended_before(&self, slot: &Slot, instance: &drover_api::Instance) -> Result<bool> {
        let key = self.keys.status(&slot.id);
        let found = self
            .store
            .get_raw(&key)
            .await
            .map_err(|source| Error::Confirm { key, source })?;
        let Some(status) = found
            .and_then(|v| serde_json::from_slice::<drover_api::InstanceStatus>(&v.value).ok())
            .filter(|s| {
                matches!(s.phase, Phase::Succeeded | Phase::Failed)
                    && s.node == *slot.node
                    && s.attempt == instance.attempt
            })
        else {
            return Ok(false);
        };
        tracing::info!(phase = %status.phase, "not starting: an earlier agent reported this copy ended");
        if let Some(e) = self.table().get_mut(slot) {
            e.terminal = true;
            e.phase = status.phase;
            e.reason = status.reason;
            e.message = status.message;
            e.exit_code = status.exit_code;
            e.started_at = status.started_at;
            e.finished_at = status.finished_at;
            e.restart_count = status.restart_count;
        }
        Ok(true)
    }

    /// The controller asked this copy to stop ([`drover_api::Instance::stop`]): stop it (grace
    /// period) and make the entry terminal, so the status written next reports the process
    /// gone. A copy that already ended keeps its real outcome; one never started is `Stopped`.
    ///
    /// # Guarantees
    /// The entry turns terminal only after the driver's stop returned (the process exited or
    /// was killed at the end of the grace period): the terminal status — on which the
    /// controller deletes the assignment and lets a replacement start — is never written for a
    /// copy that may still run. Nothing is restarted afterwards.
    pub(crate) async fn stop_on_request(&self, slot: &Slot, reason: &str) -> Result<()> {
        let (running, terminal, started, exited_before) = match self.table().get(slot) {
            Some(e) => (
                e.is_running(),
                e.terminal,
                e.started_at,
                e.run.as_ref().and_then(|r| r.exited).map(|(code, _)| code),
            ),
            None => return Ok(()),
        };
        if terminal && !running {
            return Ok(());
        }
        let began = Utc::now();
        if running {
            tracing::info!(reason, "stopping on the controller's request");
            self.stop_run(slot).await?;
        }
        {
            let mut table = self.table();
            let Some(e) = table.get_mut(slot) else {
                return Ok(());
            };
            if let Some((code, finished)) = e.run.as_ref().and_then(|r| r.exited) {
                e.exit_code = code;
                e.finished_at = finished.or_else(|| Some(Utc::now()));
            }
            e.next_start = None;
            e.terminal = true;
            // A job copy that had exited on its own before the request keeps its outcome.
            match exited_before.filter(|_| slot.id.run().is_some() && !e.phase.is_terminal()) {
                Some(Some(0)) => {
                    e.phase = Phase::Succeeded;
                    e.reason = None;
                }
                Some(_) => {
                    e.phase = Phase::Failed;
                    e.reason = Some(reasons::ERROR.to_string());
                }
                None => {}
            }
            if !e.phase.is_terminal() {
                e.phase = Phase::Stopped;
                e.reason = Some(reason.to_string());
                e.message = Some(format!("stopped on the controller's request ({reason})"));
            }
        }
        if running {
            self.record(slot, StopReason::Requested, started, began, None, true)
                .await;
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
        if reason == StopReason::Shutdown {
            self.publish_shutdown(slot, !running).await;
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

    /// Writes the final status of a copy at shutdown, fenced on the assignment like every
    /// status write: Stopped (AgentShutdown) for a copy the shutdown stopped; for a job run that
    /// had already exited on its own (`ended_before`) and that the stopped reconcile loop did not
    /// record, its real outcome, so finished work is not retried as if it had been cut short.
    async fn publish_shutdown(&self, slot: &Slot, ended_before: bool) {
        let final_status = self.table().get_mut(slot).and_then(|e| {
            if e.phase.is_terminal() || e.create_revision == 0 {
                return None;
            }
            let exit = e.run.as_ref().and_then(|r| r.exited).map(|(code, _)| code);
            match exit {
                Some(code) if ended_before && slot.id.run().is_some() => {
                    e.exit_code = code;
                    if code == Some(0) {
                        e.phase = Phase::Succeeded;
                        e.reason = None;
                    } else {
                        e.phase = Phase::Failed;
                        e.reason = Some(reasons::ERROR.to_string());
                    }
                    e.message = Some("exited before the agent shut down".into());
                }
                _ => {
                    e.phase = Phase::Stopped;
                    e.reason = Some(reasons::AGENT_SHUTDOWN.to_string());
                    e.message = Some("the agent shut down and stopped the instance".into());
                    if let Some(run) = e.run.as_mut() {
                        run.exited.get_or_insert((None, Some(Utc::now())));
                    }
                }
            }
            Some((e.status(), e.create_revision))
        });
        let Some((status, rev)) = final_status else {
            return;
        };
        let key = self.keys.assignment(&slot.node, &slot.id);
        if let Err(e) = crate::status::write(&self.store, &self.keys, &key, rev, &status).await {
            tracing::warn!(error = %e, "cannot publish the final status on shutdown");
        }
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

    /// Agent shutdown: stop every instance of `node` within its grace period, concurrently,
    /// and publish each one's final status (Stopped, AgentShutdown).
    ///
    /// # Guarantees
    /// Called while the node's lease is still held (the caller revokes it afterwards), so the
    /// controller sees the node alive until every copy has exited: a replacement elsewhere can
    /// only start after the old process is gone (promise 6), and no status is left saying
    /// Running for a copy that no longer exists.
    ///
    /// # Caveats
    /// A status write that fails (etcd unreachable) is logged and dropped; the node's lease
    /// then ends on its own and the controller treats the copy as lost, as after a crash.
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
