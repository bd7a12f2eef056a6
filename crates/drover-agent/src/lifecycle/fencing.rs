//! Self-fencing at run time: stop every instance of a node before its lease can expire, and
//! converge afresh once the agent re-registered. The rule itself is in [`crate::fence`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use drover_api::instance::{reasons, Phase};
use tokio::time::Instant;

use crate::converge::Engine;
use crate::fence;
use crate::local::{Slot, StopReason};

/// How long a destroy after a failed or late stop may take while fencing.
const KILL_CONFIRM: Duration = Duration::from_secs(5);

impl Engine {
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
    pub(super) async fn fence_one(&self, slot: &Slot, fence_times: Option<(Instant, Instant)>) {
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
}
