//! Events: `events/<ns>/<id>` on a TTL lease, written by the leader after each plan.
//!
//! One lease serves many events and is replaced when half its TTL has passed, so every event
//! lives between half the TTL and the full TTL, with one lease grant per half TTL.

use std::time::Duration;

use drover_api::{Event, Keys};
use drover_store::{Fence, LeaseId, Op, Store};
use tokio::time::Instant;

/// Writes events, fenced, on a rotating lease.
#[derive(Debug)]
pub struct EventWriter {
    store: Store,
    keys: Keys,
    ttl: Duration,
    source: String,
    lease: Option<(LeaseId, Instant)>,
    seq: u64,
}

impl EventWriter {
    /// A writer whose events live about `ttl`; `source` (e.g. the replica id) makes ids unique.
    #[must_use]
    pub fn new(store: Store, keys: Keys, ttl: Duration, source: impl Into<String>) -> Self {
        Self {
            store,
            keys,
            ttl,
            source: source.into().replace('/', "-"),
            lease: None,
            seq: 0,
        }
    }

    async fn lease(&mut self) -> drover_store::Result<LeaseId> {
        match self.lease {
            Some((id, granted)) if granted.elapsed() < self.ttl / 2 => Ok(id),
            _ => {
                let id = self.store.grant(self.ttl).await?;
                self.lease = Some((id, Instant::now()));
                Ok(id)
            }
        }
    }

    /// Writes `events`, fenced when `fence` is given.
    ///
    /// # Caveats
    ///
    /// Best effort: the caller logs a failure and carries on; events are for people, and the
    /// state they describe is in etcd regardless.
    pub async fn write(
        &mut self,
        events: &[Event],
        fence: Option<&Fence>,
    ) -> drover_store::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        for retry in [true, false] {
            let lease = self.lease().await?;
            let mut ops = Vec::with_capacity(events.len());
            for e in events {
                self.seq += 1;
                let nanos = e.time.timestamp_nanos_opt().unwrap_or_default();
                let id = format!("{nanos:020}-{}-{}", self.source, self.seq);
                // Name the replica, so `describe` shows which leader decided.
                let mut e = e.clone();
                e.source = format!("controller/{}", self.source);
                ops.push(Op::put(
                    self.keys.event(&e.namespace, &id),
                    &e,
                    Some(lease),
                )?);
            }
            let chunks = self.store.commit_batched(ops, fence).await;
            match chunks.into_iter().find_map(|c| c.result.err()) {
                None => return Ok(()),
                // The lease ended early (revoked, or this process stalled): take a new one.
                Some(drover_store::Error::LeaseNotFound { .. }) if retry => self.lease = None,
                Some(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Logs each of a plan's events at debug, inside a span that names its object (`task`,
/// `instance` with its `task`, or `node`) and the `reason`, so that a JSON log pipeline can
/// follow one object through the leader's decisions by span field alone. Debug, not info: a
/// plan for thousands of instances has an event for each.
pub fn log(events: &[Event]) {
    use drover_api::{EventKind, InstanceId};
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    for event in events {
        let (ns, name, reason) = (&event.namespace, &event.name, &event.reason);
        let span = match event.kind {
            EventKind::Task => {
                tracing::debug_span!("event", namespace = %ns, task = %name, %reason)
            }
            EventKind::Instance => {
                let task = name.parse::<InstanceId>().ok();
                let task = task.as_ref().map_or("", InstanceId::task);
                tracing::debug_span!("event", namespace = %ns, task, instance = %name, %reason)
            }
            EventKind::Node => tracing::debug_span!("event", node = %name, %reason),
        };
        let _entered = span.enter();
        tracing::debug!(detail = %event.message, "event");
    }
}
