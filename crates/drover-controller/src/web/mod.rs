//! The live web view (`drover controller --web-addr`): a read-only page of nodes, tasks,
//! instances, runs, dead letters and recent events, served by any replica from the mirror it
//! keeps anyway (no extra etcd load, nothing written), with change notices pushed over
//! Server-Sent Events.
//!
//! - [`pages`]: pure functions of the snapshot to paged, summarised records;
//! - [`notice`]: what changed, as per-part revisions that merge (a slow client loses nothing
//!   and costs nothing: it holds one `watch` receiver and re-fetches the page it shows);
//! - [`recent`]: the newest events, bounded;
//! - [`http`]: the thin HTTP edge (routes, JSON, the stream) and the embedded page.

pub mod http;
pub mod notice;
pub mod pages;
pub mod recent;

use std::sync::{Arc, PoisonError};

use drover_api::Keys;
use tokio::sync::watch;

use crate::leader::ControllerStatus;
use crate::mirror::Mirror;
use crate::snapshot::Snapshot;

pub use http::{serve, WebError};
pub use notice::Notice;

/// What the web view reads: one replica's mirror, its id and its role. Cheap to clone.
#[derive(Clone)]
pub struct WebSource {
    mirror: Arc<Mirror>,
    keys: Keys,
    id: String,
    status: watch::Receiver<ControllerStatus>,
}

impl std::fmt::Debug for WebSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSource")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl WebSource {
    pub(crate) fn new(
        mirror: Arc<Mirror>,
        keys: Keys,
        id: String,
        status: watch::Receiver<ControllerStatus>,
    ) -> Self {
        Self {
            mirror,
            keys,
            id,
            status,
        }
    }

    /// The key schema.
    #[must_use]
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Who answers.
    #[must_use]
    pub fn replica(&self) -> pages::Replica {
        pages::Replica {
            id: self.id.clone(),
            leader: self.status.borrow().leader,
        }
    }

    /// Change notices, newest value only.
    #[must_use]
    pub fn notices(&self) -> watch::Receiver<Notice> {
        self.mirror.notice.subscribe()
    }

    /// Runs `f` on the snapshot and the recent events, under the mirror's lock: call it on a
    /// blocking thread (the leader's planner may hold the lock while it plans).
    pub fn read<T>(&self, f: impl FnOnce(&Snapshot, &recent::Ring) -> T) -> T {
        let state = self
            .mirror
            .planner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(state.relist.live(), state.events.live())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use drover_store::watcher::Event as WatchEvent;
    use drover_store::Versioned;

    use super::*;

    fn put(
        key: String,
        value: serde_json::Value,
        rev: i64,
    ) -> WatchEvent<Box<serde_json::value::RawValue>> {
        WatchEvent::Apply(Versioned {
            key,
            value: serde_json::value::to_raw_value(&value).expect("JSON"),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: None,
        })
    }

    /// A notice goes out once the mirror has applied what it names, never before: a browser
    /// that re-fetches on it reads the change.
    #[test]
    fn the_notice_follows_the_applied_snapshot_and_events_reach_the_ring() {
        let keys = Keys::new("/t");
        let mirror = Mirror::new(keys.clone(), Duration::from_millis(20));
        let status = watch::channel(ControllerStatus::default()).1;
        let source = WebSource::new(mirror.clone(), keys.clone(), "c0".into(), status);
        let mut notices = source.notices();
        let node = serde_json::json!({"name": "n1", "address": "a:1",
            "capacity": {"cpu": "1000m", "memory": "1Gi"}, "startedAt": "2026-01-01T00:00:00Z"});
        let event = serde_json::json!({"time": "2026-01-01T00:00:00Z", "namespace": "default",
            "kind": "Node", "name": "n1", "reason": "Registered", "message": "m",
            "source": "agent"});
        {
            let mut feed = mirror.feed.lock().expect("feed");
            feed.queued.extend([
                Ok(WatchEvent::Init),
                Ok(WatchEvent::InitDone { revision: 1 }),
                Ok(put(keys.node("n1"), node, 2)),
                Ok(put(keys.event("default", "e1"), event, 3)),
            ]);
        }
        assert!(!notices.has_changed().expect("open"), "nothing applied yet");
        {
            let mut state = mirror.planner.lock().expect("state");
            mirror.apply_queued(&mut state);
        }
        assert!(notices.has_changed().expect("open"));
        let n = *notices.borrow_and_update();
        assert_eq!((n.revision, n.nodes, n.events, n.tasks), (3, 2, 3, 1));
        let (alive, events) = source.read(|s, ring| (s.node_present("n1"), ring.len()));
        assert!(alive);
        assert_eq!(events, 1);
        // Applying nothing new sends nothing.
        {
            let mut state = mirror.planner.lock().expect("state");
            mirror.apply_queued(&mut state);
        }
        assert!(!notices.has_changed().expect("open"));
    }
}
