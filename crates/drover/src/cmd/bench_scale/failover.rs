//! The failover step of `bench scale --failover`: with every instance Running, SIGKILL the
//! leader and measure the standby's takeover in three figures: kill → the standby leads, the
//! standby leads → its first plan committed, and how many assignments changed meanwhile
//! (a leader change must move nothing).

use std::time::{Duration, Instant};

use drover_api::keys::Keys;
use drover_store::Store;
use tokio::sync::watch;

use super::fleet::Fleet;
use super::observe::{Control, Progress};
use super::probe;
use crate::cmd::store_error;
use crate::exit::{CliError, CliResult};

/// How often the standby's `/readyz` is asked.
const POLL: Duration = Duration::from_millis(10);
/// How long after the first plan assignment changes are still counted.
const AFTERMATH: Duration = Duration::from_secs(2);
/// Time given to the watch to deliver the last changes of the counted window.
const SETTLE: Duration = Duration::from_millis(500);
/// How long the instances may take to be all Running again before the kill.
const STEADY: Duration = Duration::from_secs(120);
/// How long the standby may take to answer `/readyz` 200 (campaigning) before the kill.
const STANDBY_READY: Duration = Duration::from_secs(30);

/// What the takeover took.
#[derive(Debug, Clone)]
pub struct Takeover {
    /// The replica killed.
    pub killed: String,
    /// The replica that took over.
    pub standby: String,
    /// SIGKILL → the standby leads.
    pub to_lead: Duration,
    /// The standby leads → its `/readyz` answers 200 (first plan committed).
    pub to_plan: Duration,
    /// Assignment keys put or deleted from the kill until [`AFTERMATH`] after the first plan.
    pub moved: usize,
}

/// Once all `target` instances run, kills the leader and measures the takeover.
///
/// # Guarantees
///
/// "Leads" is the earliest sign of it: the standby's `/readyz` turning 503 (a leader not yet
/// synced) or its `controllers/` record saying leader, whichever the bench saw first. "First
/// plan" is the first 200 after that: the controller answers 200 as a leader only once its
/// snapshot is listed and its first plan committed. Assignment changes are counted by revision
/// from the watch, so a change is counted whenever its event arrives.
pub async fn run(
    store: &Store,
    keys: &Keys,
    fleet: &mut Fleet,
    control: &watch::Receiver<Control>,
    progress: &watch::Receiver<Progress>,
    target: usize,
) -> CliResult<Takeover> {
    let leader = control
        .borrow()
        .leader
        .clone()
        .ok_or_else(|| CliError::failure("failover: no controller leads"))?;
    let (standby, admin) = fleet
        .replicas
        .iter()
        .find(|r| r.id != leader)
        .map(|r| (r.id.clone(), r.admin))
        .ok_or_else(|| CliError::failure("failover: no standby replica"))?;
    if fleet.replica(&leader).is_none() {
        return Err(CliError::failure(format!(
            "failover: leader {leader} is not one of ours"
        )));
    }
    // Steady state: every instance Running now, not only once (a node that fenced itself
    // since has its instances restarting).
    let deadline = Instant::now() + STEADY;
    let mut watched = progress.clone();
    while watched.borrow_and_update().running < target {
        fleet.check_alive()?;
        if Instant::now() > deadline {
            return Err(CliError::failure(format!(
                "failover: not all {target} instances Running again within {STEADY:?}"
            )));
        }
        let _ = tokio::time::timeout(POLL * 10, watched.changed()).await;
    }
    // The standby must be campaigning already, or its start-up would count as takeover.
    let deadline = Instant::now() + STANDBY_READY;
    while readyz(admin).await != Some(200) {
        fleet.check_alive()?;
        if Instant::now() > deadline {
            return Err(CliError::failure(format!(
                "failover: standby {standby} not ready within {STANDBY_READY:?}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }

    let before = store
        .count(&keys.assignments())
        .await
        .map_err(|error| store_error("counting assignments", error))?
        .revision;
    let killed = Instant::now();
    fleet.kill_replica(&leader).await;
    let mut unsynced: Option<Instant> = None;
    let (leads, planned) = loop {
        let answer = readyz(admin).await;
        let now = Instant::now();
        if answer == Some(503) && unsynced.is_none() {
            unsynced = Some(now);
        }
        let recorded = control.borrow().took_lead_after(&standby, killed);
        let leads = match (unsynced, recorded) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let (Some(leads), Some(200)) = (leads, answer) {
            break (leads, now);
        }
        fleet.check_alive()?;
        tokio::time::sleep(POLL).await;
    };
    tokio::time::sleep(AFTERMATH).await;
    let after = store
        .count(&keys.assignments())
        .await
        .map_err(|error| store_error("counting assignments", error))?
        .revision;
    tokio::time::sleep(SETTLE).await;
    let moved = progress.borrow().changes_between(before, after);
    Ok(Takeover {
        killed: leader,
        standby,
        to_lead: leads.saturating_duration_since(killed),
        to_plan: planned.saturating_duration_since(leads),
        moved,
    })
}

/// The status code of the replica's `/readyz`, if it answers.
async fn readyz(admin: std::net::SocketAddr) -> Option<u16> {
    probe::get(admin, "/readyz", Duration::from_secs(1))
        .await
        .map(|(code, _)| code)
}
