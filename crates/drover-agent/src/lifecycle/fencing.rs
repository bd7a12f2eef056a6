//! Self-fencing at run time: stop every instance of a node before its lease can expire, and
//! converge afresh once the agent re-registered. The rule itself is in [`crate::fence`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::RunOf;
use crate::converge::Engine;
use crate::driver::{Driver, Handle, StartRequest};
use crate::fence::{self, NodeFence};
use crate::instance::{Entry, State};
use crate::local::{Slot, StopReason};

/// How long a destroy after a failed or late stop may take while fencing.
const KILL_CONFIRM: Duration = Duration::from_secs(5);

/// Which fence [`Engine::unfence`] lifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unfenced {
    /// The node was not fenced (or is not one of this engine's).
    NotFenced,
    /// The fence every node starts with, until its first registration.
    FirstRegistration,
    /// A fence of self-fencing: the node registers again with a new lease.
    AfterSelfFencing,
}

impl Engine {
    /// Self-fencing of `node`: see [`crate::fence`] for the rule and its guarantees.
    pub(crate) async fn fence(&self, node: &str, deadline: Instant, expiry: Instant) {
        let Some(state) = self.node(node) else {
            return;
        };
        *state
            .deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(deadline);
        // Wakes starts in flight (see `start_or_fence`).
        state.fenced.send_replace(true);
        self.metrics().fences.inc();
        if self.unsafe_keeps_copies_when_fenced() {
            tracing::error!(
                node,
                "SELF-FENCING DISABLED (test-only switch): copies keep running past the lease"
            );
            return;
        }
        let victims = self.instances().slots_where(node, Entry::is_running);
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
        // Starts that were in flight stop what they started themselves (`start_or_fence`).
        let mut starting = state.starting.subscribe();
        let settled =
            tokio::time::timeout_at(deadline + KILL_CONFIRM, starting.wait_for(|n| *n == 0)).await;
        if settled.is_err() {
            tracing::error!(
                node,
                "self-fencing: a start in flight did not settle in time"
            );
        }
        tracing::error!(
            node,
            "self-fencing done: no instance runs until the agent re-registers"
        );
    }

    /// Stops one instance for fencing, clipping its grace to the deadline.
    pub(super) async fn fence_one(&self, slot: &Slot, fence_times: Option<(Instant, Instant)>) {
        let deadline = fence_times
            .map(|(d, _)| d)
            .or_else(|| self.node(&slot.node).and_then(NodeFence::deadline));
        let Some(deadline) = deadline else { return };
        let Some(RunOf {
            driver,
            handle,
            grace: own,
            ..
        }) = self.run_of(slot)
        else {
            return;
        };
        let started = self.instances().read(slot, Entry::started_at).flatten();
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
        self.instances().update(slot, Entry::fenced);
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

    /// Runs `driver.start(req)` for `slot`, raced against fencing of its node.
    ///
    /// Returns the start's result, or `None` when fencing began during the start and the start
    /// did not finish in time; whatever it had made by then is destroyed.
    ///
    /// # Guarantees
    /// - A start that finishes after fencing began is returned as usual, no later than the
    ///   fencing deadline minus the SIGKILL reserve ([`fence::clip_grace`]), so the caller's
    ///   fencing stop ([`Self::fence_one`]) still ends by the deadline.
    /// - A start still running then is cancelled, and what the driver recovers for this
    ///   instance is destroyed (bounded by [`KILL_CONFIRM`]) and recorded as a fenced stop.
    ///
    /// # Caveats
    /// A start cancelled between the runtime creating the instance and the driver recording it
    /// (the process driver's pid file, a container's labels are set at create) leaves an
    /// instance the driver cannot recover; the window is the length of one system call.
    pub(super) async fn start_or_fence(
        &self,
        slot: &Slot,
        driver: &Arc<dyn Driver>,
        req: &StartRequest,
    ) -> Option<crate::driver::Result<Handle>> {
        let Some(state) = self.node(&slot.node) else {
            return Some(driver.start(req).await);
        };
        let mut fenced = state.fenced.subscribe();
        if *fenced.borrow_and_update() {
            return None;
        }
        // Boxed, hence `Unpin`; dropping it cancels the start.
        let mut start = driver.start(req);
        tokio::select! {
            r = &mut start => return Some(r),
            _ = fenced.wait_for(|f| *f) => {}
        }
        let now = Instant::now();
        let cutoff = state.deadline().map_or(now, |d| {
            now + fence::clip_grace(d.saturating_duration_since(now), now, d)
        });
        if let Ok(r) = tokio::time::timeout_at(cutoff, &mut start).await {
            return Some(r);
        }
        drop(start);
        tracing::error!("self-fencing began during a start that did not finish in time; destroying what it made");
        let began = Utc::now();
        let found = tokio::time::timeout(KILL_CONFIRM, driver.recover(&slot.node)).await;
        let mine: Vec<Handle> = match found {
            Ok(Ok(found)) => found
                .into_iter()
                .filter(|r| r.meta.instance == slot.id)
                .map(|r| r.handle)
                .collect(),
            _ => {
                tracing::error!("self-fencing could not list what the cancelled start made");
                Vec::new()
            }
        };
        for handle in mine {
            let confirmed = matches!(
                tokio::time::timeout(KILL_CONFIRM, driver.destroy(&handle)).await,
                Ok(Ok(()))
            );
            self.record(
                slot,
                StopReason::Fenced,
                Some(handle.started_at),
                began,
                None,
                confirmed,
            )
            .await;
        }
        None
    }

    /// After registering: forget what fencing stopped and converge `node` afresh. Says which
    /// fence it lifted: the one every node starts with, or one of self-fencing.
    pub(crate) async fn unfence(&self, node: &str) -> Unfenced {
        let Some(state) = self.node(node) else {
            return Unfenced::NotFenced;
        };
        if !*state.fenced.borrow() {
            return Unfenced::NotFenced;
        }
        let fenced = self
            .instances()
            .slots_where(node, |e| matches!(e.state(), State::Fenced { .. }));
        for slot in &fenced {
            if let Err(e) = self.stop_and_forget(slot, StopReason::Fenced).await {
                tracing::warn!(instance = %slot.id, error = %e, "cleaning up a fenced instance");
            }
        }
        *state
            .deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        state.fenced.send_replace(false);
        let lifted = if state.registered_before.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                node,
                "re-registered after self-fencing; converging to the current assignments"
            );
            Unfenced::AfterSelfFencing
        } else {
            tracing::info!(node, "registered; converging to the current assignments");
            Unfenced::FirstRegistration
        };
        self.poke_all(Some(node), "registered");
        lifted
    }
}
