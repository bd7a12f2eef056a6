//! Operator actions on nodes, for `drover cordon|uncordon|drain`: compare-and-swap writes of
//! `nodeinfo/<node>`, the operators' own key (not fenced: operators are not the leader), and
//! drain progress.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_api::{InstanceId, Keys, NodeInfo, Phase};
use drover_store::{CreateOutcome, Store};
use serde::Serialize;

/// Attempts at a compare-and-swap before giving up (each loses only to a concurrent writer).
const CAS_ATTEMPTS: usize = 16;

/// Why an operator action failed.
#[derive(Debug)]
pub enum AdminError {
    /// etcd failed.
    Store(drover_store::Error),
    /// The node is neither registered nor known from an earlier registration.
    UnknownNode(String),
    /// Concurrent writers kept changing the record.
    Contended(String),
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminError::Store(e) => e.fmt(f),
            AdminError::UnknownNode(node) => write!(
                f,
                "node {node} is unknown (not registered and no nodeinfo record)"
            ),
            AdminError::Contended(node) => write!(
                f,
                "nodeinfo/{node} kept changing; gave up after {CAS_ATTEMPTS} attempts"
            ),
        }
    }
}

impl std::error::Error for AdminError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AdminError::Store(e) => Some(e),
            AdminError::UnknownNode(_) | AdminError::Contended(_) => None,
        }
    }
}

impl From<drover_store::Error> for AdminError {
    fn from(e: drover_store::Error) -> Self {
        AdminError::Store(e)
    }
}

/// Read-modify-write of `nodeinfo/<node>` with compare-and-swap.
async fn update_info(
    store: &Store,
    keys: &Keys,
    node: &str,
    f: impl Fn(&mut NodeInfo),
) -> Result<NodeInfo, AdminError> {
    let key = keys.nodeinfo(node);
    for _ in 0..CAS_ATTEMPTS {
        match store.get::<NodeInfo>(&key).await? {
            Some(current) => {
                let mut next = current.value.clone();
                f(&mut next);
                if next == current.value {
                    return Ok(next);
                }
                if store
                    .compare_and_swap(&key, current.mod_revision, &next)
                    .await?
                {
                    return Ok(next);
                }
            }
            None => {
                if store.get_raw(&keys.node(node)).await?.is_none() {
                    return Err(AdminError::UnknownNode(node.to_owned()));
                }
                let mut next = NodeInfo {
                    name: node.to_owned(),
                    ..NodeInfo::default()
                };
                f(&mut next);
                if let CreateOutcome::Created { .. } = store.create(&key, &next, None).await? {
                    return Ok(next);
                }
            }
        }
    }
    Err(AdminError::Contended(node.to_owned()))
}

/// `drover cordon NODE` (`cordoned = true`) and `drover uncordon NODE` (`false`, which also ends
/// a drain). Returns the new record.
///
/// # Guarantees
///
/// A compare-and-swap on the record, which only operators write (the leader keeps what it
/// knows of the node in `nodestate/`): two concurrent operators never overwrite each other.
/// Cordoning moves nothing; it only stops new placements on the node.
pub async fn cordon(
    store: &Store,
    keys: &Keys,
    node: &str,
    cordoned: bool,
) -> Result<NodeInfo, AdminError> {
    update_info(store, keys, node, |i| {
        i.cordoned = cordoned;
        if !cordoned {
            i.draining = false;
        }
    })
    .await
}

/// How far a drain has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainProgress {
    /// The node.
    pub node: String,
    /// Instances still assigned to it.
    pub remaining: Vec<InstanceId>,
    /// How many of those still run.
    pub running: usize,
}

impl DrainProgress {
    /// True once nothing is left on the node.
    #[must_use]
    pub fn done(&self) -> bool {
        self.remaining.is_empty()
    }
}

/// `drover drain NODE`: marks the node draining (and cordoned) and returns the progress so far.
/// The leader then starts a replacement for each instance elsewhere and removes the original
/// once enough replacements run. Poll [`drain_progress`] (or use [`wait_drained`]) to follow it.
pub async fn drain(store: &Store, keys: &Keys, node: &str) -> Result<DrainProgress, AdminError> {
    update_info(store, keys, node, |i| {
        i.cordoned = true;
        i.draining = true;
    })
    .await?;
    drain_progress(store, keys, node).await
}

/// The instances still assigned to `node`.
pub async fn drain_progress(
    store: &Store,
    keys: &Keys,
    node: &str,
) -> Result<DrainProgress, AdminError> {
    let listing = store.list_raw(&keys.node_assignments(node)).await?;
    let remaining: Vec<InstanceId> = listing
        .items
        .iter()
        .filter_map(|kv| keys.parse_assignment_key(&kv.key).map(|(_, id)| id))
        .collect();
    // The node's statuses in one read; an instance with none there may still have one under
    // the key of before statuses moved under their node.
    let statuses = store.list_raw(&keys.node_statuses(node)).await?;
    let mut reported: BTreeMap<InstanceId, bool> = statuses
        .items
        .iter()
        .filter_map(|kv| {
            let (_, id) = keys.parse_status_key(&kv.key)?;
            let status: drover_api::InstanceStatus = serde_json::from_slice(&kv.value).ok()?;
            Some((id, status.phase == Phase::Running))
        })
        .collect();
    for id in &remaining {
        if reported.contains_key(id) {
            continue;
        }
        if let Some(s) = store
            .get::<drover_api::InstanceStatus>(&keys.legacy_status(id))
            .await?
        {
            reported.insert(id.clone(), s.value.phase == Phase::Running);
        }
    }
    let running = remaining
        .iter()
        .filter(|id| reported.get(*id).copied().unwrap_or(false))
        .count();
    Ok(DrainProgress {
        node: node.to_owned(),
        remaining,
        running,
    })
}

/// Polls [`drain_progress`] every `interval`, calling `on_progress` when it changes, until the
/// node is empty. Returns the final progress; bound it with `tokio::time::timeout`.
pub async fn wait_drained(
    store: &Store,
    keys: &Keys,
    node: &str,
    interval: Duration,
    mut on_progress: impl FnMut(&DrainProgress),
) -> Result<DrainProgress, AdminError> {
    let mut last: Option<DrainProgress> = None;
    loop {
        let p = drain_progress(store, keys, node).await?;
        if last.as_ref() != Some(&p) {
            on_progress(&p);
        }
        if p.done() {
            return Ok(p);
        }
        last = Some(p);
        tokio::time::sleep(interval).await;
    }
}
