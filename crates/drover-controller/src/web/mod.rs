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
