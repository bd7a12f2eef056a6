//! What `bench scale` learns by watching etcd (never by re-listing): how many instances are
//! assigned and Running, every assignment change with its revision, who leads by the
//! controllers' own account, and the succession of election keys (the leader terms).
//!
//! Each watch runs in a task that publishes into a `watch` channel the caller owns, so what was
//! reached is still readable after the run was cut short (timeout, Ctrl-C).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use drover_api::instance::Phase;
use drover_api::keys::Keys;
use drover_api::records::ControllerInfo;
use drover_store::{watcher, Event, LeaseId, Store};
use futures::StreamExt;
use serde::de::IgnoredAny;
use serde::Deserialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::AbortOnDrop;
use crate::exit::{CliError, CliResult};

/// The watch tasks, aborted when dropped, so no watch outlives the step that started it.
pub type Watching = AbortOnDrop<()>;

/// Assignments and statuses, as the watches have seen them.
#[derive(Debug, Default)]
pub struct Progress {
    /// Assignment keys that exist now.
    pub assigned: usize,
    /// Status keys whose phase is Running.
    pub running: usize,
    /// When `assigned` first reached the target.
    pub all_assigned: Option<Instant>,
    /// When `running` first reached the target.
    pub all_running: Option<Instant>,
    /// The revision of every assignment put or delete seen after the initial listing.
    pub assignment_changes: Vec<i64>,
    /// Node keys put again with a new lease after the initial listing: an agent that fenced
    /// itself (keep-alives unanswered for too long) and registered anew.
    pub node_reregistrations: usize,
    /// Node keys deleted after the initial listing: a lease that expired or was revoked.
    pub node_losses: usize,
    /// The nodes either happened to.
    pub nodes_disturbed: HashSet<String>,
}

impl Progress {
    /// Assignment puts and deletes with a revision in `(after, up_to]`.
    pub fn changes_between(&self, after: i64, up_to: i64) -> usize {
        self.assignment_changes
            .iter()
            .filter(|&&r| r > after && r <= up_to)
            .count()
    }
}

/// Who leads, as the controllers and the election keys tell it.
#[derive(Debug, Default)]
pub struct Control {
    /// The replica whose `controllers/` record says it leads now.
    pub leader: Option<String>,
    /// Each time a replica's record turned to leader, with when the bench saw it.
    pub took_lead: Vec<(Instant, String)>,
    /// Each change of the leading election key (the oldest candidate), with when it was seen.
    pub leader_keys: Vec<(Instant, String)>,
}

impl Control {
    /// Distinct leader terms from `since` on: the election key leading at `since` and every
    /// one that led after it.
    pub fn terms_since(&self, since: Instant) -> usize {
        let at_start = self
            .leader_keys
            .iter()
            .take_while(|(t, _)| *t < since)
            .last()
            .map(|(_, key)| key);
        let mut keys: Vec<&String> = at_start.into_iter().collect();
        keys.extend(
            self.leader_keys
                .iter()
                .filter(|(t, _)| *t >= since)
                .map(|(_, k)| k),
        );
        keys.sort();
        keys.dedup();
        keys.len()
    }

    /// When `id` took the lead after `after`, if it has.
    pub fn took_lead_after(&self, id: &str, after: Instant) -> Option<Instant> {
        self.took_lead
            .iter()
            .find(|(t, who)| who == id && *t > after)
            .map(|(t, _)| *t)
    }
}

/// Only the phase of a status (the rest is skipped, not decoded).
#[derive(Deserialize)]
struct PhaseOnly {
    phase: Phase,
}

/// Watches `prefix` in a task that hands every event to `on_event`; resolves once the initial
/// listing has been handed over, so nothing that happens afterwards can be missed.
async fn spawn_watch<T, F>(
    store: &Store,
    prefix: String,
    mut on_event: F,
) -> CliResult<JoinHandle<()>>
where
    T: serde::de::DeserializeOwned + Send + 'static,
    F: FnMut(drover_store::Result<Event<T>>) + Send + 'static,
{
    let (ready_tx, ready_rx) = oneshot::channel();
    let mut events = watcher::<T>(store.clone(), prefix.clone());
    let handle = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        while let Some(event) = events.next().await {
            let listed = matches!(event, Ok(Event::InitDone { .. }));
            on_event(event);
            if listed {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    match ready_rx.await {
        Ok(()) => Ok(handle),
        Err(_) => Err(CliError::failure(format!("the watch of {prefix} ended"))),
    }
}

/// Watches assignments and statuses until dropped, counting towards `target` instances.
pub async fn instances(
    store: &Store,
    keys: &Keys,
    target: usize,
    progress: watch::Sender<Progress>,
) -> CliResult<Watching> {
    let tx = progress.clone();
    let mut present: HashSet<String> = HashSet::new();
    let assigned = spawn_watch::<IgnoredAny, _>(store, keys.assignments(), move |event| {
        let revision = match event {
            Ok(Event::Init) => {
                present.clear();
                None
            }
            Ok(Event::InitApply(item)) => {
                present.insert(item.key);
                None
            }
            Ok(Event::Apply(item)) => {
                let revision = item.mod_revision;
                present.insert(item.key);
                Some(revision)
            }
            Ok(Event::Delete {
                key, mod_revision, ..
            }) => {
                present.remove(&key);
                Some(mod_revision)
            }
            Ok(Event::InitDone { .. }) | Err(_) => None,
        };
        tx.send_modify(|p| {
            p.assigned = present.len();
            p.assignment_changes.extend(revision);
            if p.assigned >= target && p.all_assigned.is_none() {
                p.all_assigned = Some(Instant::now());
            }
        });
    })
    .await?;
    let mut phases: HashMap<String, bool> = HashMap::new();
    let mut count = 0usize;
    let running = spawn_watch::<PhaseOnly, _>(store, keys.statuses(), move |event| {
        let (key, is_running) = match event {
            Ok(Event::Init) => {
                phases.clear();
                count = 0;
                return;
            }
            Ok(Event::InitApply(item) | Event::Apply(item)) => {
                let running = item.value.phase == Phase::Running;
                (item.key, Some(running))
            }
            Ok(Event::Delete { key, .. }) => (key, None),
            // A status that does not decode counts as not running.
            Err(drover_store::Error::Decode { key, .. }) => (key, Some(false)),
            Ok(Event::InitDone { .. }) | Err(_) => return,
        };
        let was = match is_running {
            Some(now) => phases.insert(key, now),
            None => phases.remove(&key),
        };
        if was == Some(true) {
            count -= 1;
        }
        if is_running == Some(true) {
            count += 1;
        }
        progress.send_modify(|p| {
            p.running = count;
            if count >= target && p.all_running.is_none() {
                p.all_running = Some(Instant::now());
            }
        });
    })
    .await?;
    Ok(AbortOnDrop(vec![assigned, running]))
}

/// Watches the node keys until dropped, counting every lease a node lost or replaced after
/// the initial listing (a healthy run has none).
pub async fn nodes(
    store: &Store,
    keys: &Keys,
    progress: watch::Sender<Progress>,
) -> CliResult<Watching> {
    let mut leases: HashMap<String, Option<LeaseId>> = HashMap::new();
    let mut listed = false;
    let watch = spawn_watch::<IgnoredAny, _>(store, keys.nodes(), move |event| match event {
        Ok(Event::Init) => {
            leases.clear();
        }
        Ok(Event::InitApply(item)) => {
            leases.insert(item.key, item.lease);
        }
        Ok(Event::InitDone { .. }) => listed = true,
        Ok(Event::Apply(item)) => {
            let before = leases.insert(item.key.clone(), item.lease);
            if listed && before.is_some_and(|lease| lease != item.lease) {
                progress.send_modify(|p| {
                    p.node_reregistrations += 1;
                    p.nodes_disturbed.insert(item.key);
                });
            }
        }
        Ok(Event::Delete { key, .. }) => {
            leases.remove(&key);
            if listed {
                progress.send_modify(|p| {
                    p.node_losses += 1;
                    p.nodes_disturbed.insert(key);
                });
            }
        }
        Err(_) => {}
    })
    .await?;
    Ok(AbortOnDrop(vec![watch]))
}

/// Watches the controllers' records and the election keys until dropped.
pub async fn control(
    store: &Store,
    keys: &Keys,
    control: watch::Sender<Control>,
) -> CliResult<Watching> {
    let tx = control.clone();
    let mut leading: HashMap<String, bool> = HashMap::new();
    let leaders = spawn_watch::<ControllerInfo, _>(store, keys.controllers(), move |event| {
        let (key, info) = match event {
            Ok(Event::InitApply(item) | Event::Apply(item)) => (item.key, Some(item.value)),
            Ok(Event::Delete { key, .. }) => (key, None),
            Ok(Event::Init | Event::InitDone { .. }) | Err(_) => return,
        };
        let is = info.as_ref().is_some_and(|info| info.leader);
        let was = match &info {
            Some(_) => leading.insert(key, is),
            None => leading.remove(&key),
        }
        .unwrap_or(false);
        tx.send_modify(|c| match info {
            Some(info) if is && !was => {
                c.took_lead.push((Instant::now(), info.id.clone()));
                c.leader = Some(info.id);
            }
            _ if was && !is => c.leader = None,
            _ => {}
        });
    })
    .await?;
    // Candidate key → create revision; the oldest leads.
    let mut candidates: BTreeMap<String, i64> = BTreeMap::new();
    let mut leading_key: Option<String> = None;
    let mut listing = false;
    let terms = spawn_watch::<serde_json::Value, _>(store, keys.election_prefix(), move |event| {
        match event {
            Ok(Event::Init) => {
                candidates.clear();
                listing = true;
            }
            Ok(Event::InitApply(item) | Event::Apply(item)) => {
                candidates.insert(item.key, item.create_revision);
            }
            Ok(Event::Delete { key, .. }) => {
                candidates.remove(&key);
            }
            Ok(Event::InitDone { .. }) => listing = false,
            Err(_) => {}
        }
        if listing {
            return;
        }
        let now = candidates
            .iter()
            .min_by_key(|(_, rev)| **rev)
            .map(|(key, _)| key.clone());
        if now != leading_key {
            if let Some(key) = &now {
                control.send_modify(|c| c.leader_keys.push((Instant::now(), key.clone())));
            }
            leading_key = now;
        }
    })
    .await?;
    Ok(AbortOnDrop(vec![leaders, terms]))
}
