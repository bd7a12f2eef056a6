//! The engine's runtime operations: start a run, watch it (exit waiter, prober), stop it and
//! shut down. Adopting what survived an agent restart is in [`adopt`], self-fencing in
//! [`fencing`], stopping jobs past `timeoutSeconds` in [`timeout`].

mod adopt;
pub(crate) mod confirm;
#[cfg(test)]
mod confirm_tests;
mod fencing;
#[cfg(test)]
mod race_tests;
mod retain;
#[cfg(test)]
mod stop_tests;
#[cfg(test)]
pub(crate) mod tests;
mod timeout;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use drover_api::instance::{Health, Phase};
use drover_api::task::DriverKind;
use drover_store::Versioned;
use tokio::time::Instant;
use tracing::Instrument;

use crate::converge::{bindings, Engine, Error, InFlight, Result};
use crate::driver::{Driver, Handle, StartRequest, TaskState};
use crate::fence;
use crate::instance::{Entry, Exit};
use crate::local::{Slot, StopReason, StopRecord};
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
        let found = self.instances().read(slot, |e| {
            let instance = e.instance()?.clone();
            let create_revision = e.create_revision()?;
            Some((instance, e.kind(), create_revision, e.never_started()))
        });
        let Some((instance, kind, create_revision, first)) = found.flatten() else {
            return Ok(());
        };
        let confirmed = self.confirm_start(slot, first).await?;
        if !is_still_assigned(&confirmed.assignment, create_revision) {
            tracing::warn!(
                create_revision,
                "not starting: etcd no longer has this assignment (the local cache is behind)"
            );
            self.stop_and_forget(slot, StopReason::Unassigned).await?;
            return Ok(());
        }
        if let Some(status) = ended_status(confirmed.status, slot, &instance) {
            tracing::info!(phase = %status.phase, "not starting: an earlier agent reported this copy ended");
            self.instances().update(slot, |e| e.ended_before(status));
            return Ok(());
        }
        let Some(driver) = self.drivers().get(kind).cloned() else {
            self.fail(
                slot,
                "InvalidSpec",
                format!("this node has no {kind} driver"),
            );
            return Ok(());
        };
        let host = self.ports().allocate(&slot.id, instance.spec.ports.len())?;
        let ports = bindings(&instance.spec.ports, &host);
        let req = StartRequest::from_instance(&instance, ports.clone());
        tracing::info!(driver = %kind, ?ports, "starting");
        // Held until the run is in the table and, if fencing began, stopped again.
        let _in_flight = self.node(&slot.node).map(|n| InFlight::new(&n.starting));
        let Some(started) = self.start_or_fence(slot, &driver, &req).await else {
            self.instances().update(slot, Entry::fenced);
            return Ok(());
        };
        let handle = match started {
            Ok(h) => h,
            Err(e) => {
                self.ports().release(&slot.id);
                if e.retryable() {
                    self.instances()
                        .update(slot, |en| en.start_failed(e.reason(), e.to_string()));
                    return Err(e.into());
                }
                tracing::warn!(error = %e, reason = e.reason(), "start failed");
                self.fail(slot, e.reason(), e.to_string());
                return Ok(());
            }
        };
        let seq = self.next_seq();
        let recorded = self.instances().update(slot, |e| {
            e.started(handle.clone(), seq, ports, Instant::now());
        });
        if recorded.is_none() {
            return Ok(());
        }
        self.spawn_waiter(slot, seq, driver, handle);
        // A fence that began while we were starting may have missed this run: stop it ourselves.
        if self.is_fenced(&slot.node) {
            self.fence_one(slot, None).await;
        }
        Ok(())
    }

    /// Reads, in one linearizable read, what a start must confirm: the assignment of `slot`
    /// and, before a copy's first start (`with_status`), its status.
    ///
    /// One read-only transaction instead of two reads, shared with the node's other confirms
    /// that wait on one in flight ([`confirm`]): on etcd 3.4 every read request copies the
    /// server's uncommitted write buffer, and a burst of starts comes with a burst of writes.
    async fn confirm_start(&self, slot: &Slot, with_status: bool) -> Result<Confirmed> {
        let assignment = self.keys().assignment(&slot.node, &slot.id);
        let status = self.keys().status(&slot.node, &slot.id);
        // Until the leader has moved it, a status may still be under the key of before
        // statuses moved under their node.
        let legacy = self.keys().legacy_status(&slot.id);
        let keys: Vec<String> = if with_status {
            vec![assignment.clone(), status, legacy]
        } else {
            vec![assignment.clone()]
        };
        let batched = self.confirms().submit(&slot.node, keys.clone()).await;
        let found = match batched {
            Some(found) => found,
            None => {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                self.store()
                    .get_raw_each(&keys)
                    .await
                    .map_err(|source| Error::Confirm {
                        key: assignment.clone(),
                        source,
                    })?
            }
        };
        let mut found = found.into_iter();
        let assignment = found.next().flatten();
        let status = found.next().flatten();
        Ok(Confirmed {
            assignment,
            status: status.or_else(|| found.next().flatten()),
        })
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
        let found = self
            .instances()
            .read(slot, |e| (e.is_running(), e.started_at(), e.state().exit()));
        let Some((running, started, exited_before)) = found else {
            return Ok(());
        };
        let began = Utc::now();
        if running {
            tracing::info!(reason, "stopping on the controller's request");
            self.stop_run(slot).await?;
        }
        let job = slot.id.run().is_some();
        self.instances()
            .update(slot, |e| e.stopped_on_request(reason, job, exited_before));
        if running {
            self.record(slot, StopReason::Requested, started, began, None, true)
                .await;
        }
        Ok(())
    }

    fn fail(&self, slot: &Slot, reason: &str, message: String) {
        self.instances().update(slot, |e| e.fail(reason, message));
    }

    fn spawn_waiter(
        self: &Arc<Self>,
        slot: &Slot,
        seq: u64,
        driver: Arc<dyn Driver>,
        handle: Handle,
    ) {
        let engine = self.clone();
        let kill = self.kill().clone();
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
                let exit = Exit {
                    code,
                    finished: finished.or_else(|| Some(Utc::now())),
                };
                engine.instances().update(&s, |e| e.exited(seq, exit));
                engine.poke(s, "exited");
            }
            .in_current_span(),
        );
        self.attach(slot, seq, task.abort_handle(), false);
    }

    pub(crate) fn spawn_prober(self: &Arc<Self>, slot: &Slot) {
        let found = self.instances().read(slot, |e| {
            let run = e.state().unprobed()?;
            let check = e.instance()?.spec.health_check.clone()?;
            if e.kind() == DriverKind::Hollow {
                return None;
            }
            let docker = match e.kind() {
                DriverKind::Docker => self
                    .drivers()
                    .docker_client()
                    .map(|d| (d, run.handle().id.clone())),
                _ => None,
            };
            // An exec probe of a process runs as the process does, never as the agent.
            let host = match e.kind() {
                DriverKind::Process if check.exec.is_some() => {
                    let req = StartRequest::from_instance(e.instance()?, e.ports().to_vec());
                    self.drivers()
                        .process_launch(&req)
                        .inspect_err(
                            |error| tracing::warn!(%error, "exec probe cannot run as the instance"),
                        )
                        .ok()
                }
                _ => None,
            };
            Some((
                run.seq(),
                Probe {
                    check,
                    ports: e.ports().to_vec(),
                    docker,
                    host,
                },
            ))
        });
        let Some((seq, probe)) = found.flatten() else {
            return;
        };
        let engine = self.clone();
        let kill = self.kill().clone();
        let s = slot.clone();
        let task = tokio::spawn(
            async move {
                let report = |health: Health, message: Option<String>| {
                    tracing::info!(?health, ?message, "health changed");
                    engine
                        .instances()
                        .update(&s, |e| e.health(seq, health, message));
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
        let mut task = Some(task);
        let orphan = self
            .instances()
            .update(slot, |e| {
                task.take().and_then(|t| e.attach(seq, t, probing))
            })
            .flatten();
        // The entry's run refused the helper, or the entry is gone (forgotten while the helper
        // was being spawned): either way nothing owns the task, so it must not outlive us.
        // Dropping an `AbortHandle` does not stop its task.
        for task in orphan.into_iter().chain(task) {
            task.abort();
        }
    }

    /// Stops the current run with the spec's grace period and records its exit.
    pub(crate) async fn stop_run(&self, slot: &Slot) -> Result<()> {
        let Some(RunOf {
            driver,
            handle,
            grace,
            seq,
        }) = self.run_of(slot)
        else {
            return Ok(());
        };
        driver.stop(&handle, grace).await?;
        let state = driver.inspect(&handle).await.unwrap_or(TaskState::NotFound);
        let (code, finished) = match state {
            TaskState::Exited { code, finished_at } => (code, finished_at),
            _ => (None, None),
        };
        let exit = Exit {
            code,
            finished: finished.or_else(|| Some(Utc::now())),
        };
        self.instances().update(slot, |e| e.exited(seq, exit));
        Ok(())
    }

    /// The driver, handle, grace period and number of the entry's current or last run.
    fn run_of(&self, slot: &Slot) -> Option<RunOf> {
        self.instances()
            .read(slot, |e| {
                let run = e.state().run()?;
                Some(RunOf {
                    driver: self.drivers().get(e.kind())?.clone(),
                    handle: run.handle().clone(),
                    grace: e.grace(),
                    seq: run.seq(),
                })
            })
            .flatten()
    }

    /// Stops (grace period), removes the runtime object, frees the ports and forgets the entry.
    pub(crate) async fn stop_and_forget(&self, slot: &Slot, reason: StopReason) -> Result<()> {
        let began = Utc::now();
        let (running, started) = self
            .instances()
            .read(slot, |e| (e.is_running(), e.started_at()))
            .unwrap_or((false, None));
        if let Some(RunOf {
            driver,
            handle,
            grace,
            ..
        }) = self.run_of(slot)
        {
            if running {
                tracing::info!(?reason, ?grace, "stopping");
            }
            driver.stop(&handle, grace).await?;
            self.retain_output(slot, driver.as_ref(), &handle).await;
            driver.destroy(&handle).await?;
        }
        if reason == StopReason::Shutdown {
            self.publish_shutdown(slot, !running).await;
        }
        if self.instances().remove(slot).is_none() {
            return Ok(());
        }
        self.ports().release(&slot.id);
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
        let job = slot.id.run().is_some();
        let final_status = self
            .instances()
            .update(slot, |e| e.shutdown_status(ended_before, job))
            .flatten();
        let Some((status, rev)) = final_status else {
            return;
        };
        let key = self.keys().assignment(&slot.node, &slot.id);
        if let Err(e) = crate::status::write(self.store(), self.keys(), &key, rev, &status).await {
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
        if let Err(e) = self.records().add(rec).await {
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
        let slots = self.instances().slots_where(node, |_| true);
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

/// What stopping or destroying a run needs.
struct RunOf {
    driver: Arc<dyn Driver>,
    handle: Handle,
    grace: Duration,
    /// The run's number, so its exit is not recorded on a later run.
    seq: u64,
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

/// What [`Engine::confirm_start`] read.
struct Confirmed {
    assignment: Option<Versioned<Vec<u8>>>,
    status: Option<Versioned<Vec<u8>>>,
}

/// Whether `found` is the assignment created at `create_revision`, without a stop request.
/// Absent, re-created (another create revision), asked to stop, or no longer decodable is
/// `false`: never start what may not be wanted.
fn is_still_assigned(found: &Option<Versioned<Vec<u8>>>, create_revision: i64) -> bool {
    found.as_ref().is_some_and(|v| {
        v.create_revision == create_revision
            && serde_json::from_slice::<drover_api::Instance>(&v.value)
                .is_ok_and(|i| i.stop.is_none())
    })
}

/// The status an earlier agent process wrote when this copy ended for good (Succeeded or
/// Failed, for this node and attempt), if `found` is one: the entry then takes that outcome
/// instead of starting again. The controller may delete the assignment and start a
/// replacement on such a status, so starting the copy anew could make two. A copy an agent
/// stopped for its own sake (`Stopped`: shutdown, fencing) is resumed as before; a status that
/// does not decode ends nothing.
fn ended_status(
    found: Option<Versioned<Vec<u8>>>,
    slot: &Slot,
    instance: &drover_api::Instance,
) -> Option<drover_api::InstanceStatus> {
    found
        .and_then(|v| serde_json::from_slice::<drover_api::InstanceStatus>(&v.value).ok())
        .filter(|s| {
            matches!(s.phase, Phase::Succeeded | Phase::Failed)
                && s.node == *slot.node
                && s.attempt == instance.attempt
        })
}
