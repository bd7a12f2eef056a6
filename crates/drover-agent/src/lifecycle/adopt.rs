//! Adoption after an agent restart: what the drivers still run becomes local entries, matched
//! to their assignments (or stopped) by reconcile.

use std::sync::Arc;

use drover_api::instance::InstanceStatus;
use tokio::time::Instant;

use crate::converge::Engine;
use crate::driver::TaskState;
use crate::instance::{Entry, Exit, Run};
use crate::local::Slot;

impl Engine {
    /// Adopts what the drivers already run for `node` (after an agent restart): each becomes an
    /// entry with create revision 0, matched to its assignment (or stopped) by reconcile.
    ///
    /// The previous statuses (ports, restart counts) are read until `lookups_until` only: with
    /// etcd unreachable, adoption must not hold up the heartbeat, which fences what was adopted
    /// if it cannot register. An instance adopted without its status has no ports reserved.
    pub(crate) async fn adopt(self: &Arc<Self>, node: &Arc<str>, lookups_until: Instant) {
        for (kind, driver) in self.drivers().all().to_vec() {
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
                // Under the node, or (not moved yet) under the key of before statuses moved
                // there.
                let own = self.keys().status(&slot.node, &slot.id);
                let legacy = self.keys().legacy_status(&slot.id);
                let lookup = async {
                    match self.store().get::<InstanceStatus>(&own).await {
                        Ok(None) => self.store().get::<InstanceStatus>(&legacy).await,
                        found => found,
                    }
                };
                let prior: Option<InstanceStatus> = tokio::time::timeout_at(lookups_until, lookup)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
                    .map(|v| v.value)
                    .filter(|s| s.node == *node.as_ref());
                let prior = prior.map(|p| {
                    let host: Vec<u16> = p.ports.iter().map(|b| b.host_port).collect();
                    let ports = match self.ports().reserve(&slot.id, &host) {
                        Ok(()) => p.ports.clone(),
                        Err(_) => Vec::new(),
                    };
                    (ports, p.restart_count)
                });
                let exited = match rec.state {
                    TaskState::Running => None,
                    TaskState::Exited { code, finished_at } => Some(Exit {
                        code,
                        finished: finished_at,
                    }),
                    TaskState::NotFound => continue,
                };
                let seq = self.next_seq();
                // Earlier runs are unknown here: the deadline counts from this run's start.
                let age = (chrono::Utc::now() - rec.handle.started_at)
                    .to_std()
                    .unwrap_or_default();
                let now = Instant::now();
                let entry = Entry::recovered(
                    rec.meta.clone(),
                    kind,
                    Run::new(rec.handle.clone(), seq),
                    exited,
                    now.checked_sub(age).unwrap_or(now),
                    prior,
                );
                tracing::info!(instance = %slot.id, driver = %kind, running = exited.is_none(), "recovered");
                self.instances().insert(slot.clone(), entry);
                if exited.is_none() {
                    self.spawn_waiter(&slot, seq, driver.clone(), rec.handle);
                }
            }
        }
    }
}
