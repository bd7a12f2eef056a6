//! Self-fencing (design §5.3): when keep-alives stop being acknowledged, stop every local
//! instance before the node's lease can have expired on the server.
//!
//! The clock that matters is the *send* time of the last acknowledged keep-alive: the server
//! renewed the lease when that ping arrived, which was after it was sent, so the server's expiry
//! is at least `sent + ttl`. Counting from the reply instead would overestimate how long we have.
//!
//! The timing is a pure function ([`decide`], [`clip_grace`]) so it is tested with paused
//! time; [`crate::converge`] carries the decision out on the instances.
//!
//! # Guarantees
//! - Fencing begins once no keep-alive sent in the last TTL/2 was acknowledged (with pings every
//!   TTL/6 and each unanswered one retried on the next member after TTL/12, a silent member
//!   costs about TTL/12 and an etcd election its own length), or at once when etcd says the
//!   lease is gone.
//! - Every instance's grace period is clipped so that SIGTERM, the clipped grace, and the
//!   SIGKILL reserve all fit before `deadline = sent + ttl - margin`; an instance still running
//!   at the deadline is killed and removed.
//! - The stop time of every fenced instance is recorded locally
//!   ([`crate::local::StopRecord`]), with the earliest possible server-side expiry next to it.
//! - A node is fenced from process start until its first registration: nothing new starts. If
//!   the first registration has not succeeded by `start + TTL/2`, what the agent adopted is
//!   fenced by the same rule, with the process start standing in for the last acknowledged
//!   send (deadline `start + TTL - margin`).
//! - A start in flight when fencing begins is raced against the node's fence signal: it is
//!   given until the deadline minus the SIGKILL reserve to finish, then stopped like every
//!   other instance; a start still running then is cancelled and what the driver recovers of
//!   it destroyed. Fencing completes only once every start in flight has settled.
//! - The docker driver rounds a clipped grace *down* to whole seconds, never past the deadline.
//! - Before every start the assignment is read back from etcd (linearizable) and a status write
//!   rejected as stale stops the instance at once, so a re-registered agent whose assignment
//!   cache is behind does not run a copy the controller has meanwhile placed elsewhere.
//!
//! # Caveats
//! - The guarantee holds for clocks that run at the same rate on agent and etcd (no clock
//!   *offset* matters, only drift over one TTL), and for a runtime that obeys SIGKILL within the
//!   reserve (a hung Docker daemon can exceed it; the record then shows it).
//! - etcd may have raised a short TTL to its minimum; that only makes our deadline conservative.
//! - Before the first registration the process start is only a stand-in: a previous agent
//!   that died a while before this one started may have left a lease that already expired
//!   (see [`crate::heartbeat::maintain`]).
//! - A start cancelled between the runtime creating an instance and the driver recording it
//!   (a system call's width) leaves an instance the driver cannot recover.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The longest SIGKILL reserve: time kept after the clipped grace for the kill to take effect
/// and be confirmed by the runtime.
pub const MAX_KILL_RESERVE: Duration = Duration::from_millis(500);

/// What the agent should do about its lease right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Keep-alives are fine; look again at `recheck_at` (when fencing would begin if no newer
    /// ping gets acknowledged).
    Healthy {
        /// When fencing would begin without a newer acknowledgement.
        recheck_at: Instant,
    },
    /// Stop every instance now; all must be gone by `deadline`.
    Fence {
        /// `last acknowledged send + ttl - margin` (or now, when the lease is already gone).
        deadline: Instant,
        /// The earliest instant the server can have expired the lease: `sent + ttl`.
        expiry: Instant,
    },
}

/// Decides whether to fence.
///
/// `last_ack_sent`: send time of the last acknowledged keep-alive; `gone`: etcd said the lease
/// no longer exists (then the deadline is `now`: it may already have expired).
pub fn decide(
    last_ack_sent: Instant,
    ttl: Duration,
    margin: Duration,
    gone: bool,
    now: Instant,
) -> Decision {
    let expiry = last_ack_sent + ttl;
    if gone {
        return Decision::Fence {
            deadline: now.min(expiry),
            expiry,
        };
    }
    let begin = last_ack_sent + ttl / 2;
    if now < begin {
        return Decision::Healthy { recheck_at: begin };
    }
    Decision::Fence {
        deadline: last_ack_sent + ttl.saturating_sub(margin),
        expiry,
    }
}

/// The grace period an instance gets while fencing: its own, clipped so that grace plus the
/// SIGKILL reserve (half of what is left, at most [`MAX_KILL_RESERVE`]) ends by `deadline`.
pub fn clip_grace(own: Duration, now: Instant, deadline: Instant) -> Duration {
    let left = deadline.saturating_duration_since(now);
    let reserve = (left / 2).min(MAX_KILL_RESERVE);
    own.min(left.saturating_sub(reserve))
}

/// Per-node fencing state. A node starts fenced: nothing starts before its first
/// registration (see [`crate::heartbeat::maintain`]).
#[derive(Debug)]
pub(crate) struct NodeFence {
    /// Whether the node is fenced; starts in flight watch it to learn that fencing began.
    pub fenced: watch::Sender<bool>,
    /// All instances must be gone by then (set before `fenced`).
    pub deadline: std::sync::Mutex<Option<Instant>>,
    /// Starts in flight, which fencing waits for.
    pub starting: watch::Sender<usize>,
    /// Whether the node has registered before: lifting the fence of its first registration
    /// is no recovery from self-fencing.
    pub registered_before: std::sync::atomic::AtomicBool,
}

impl Default for NodeFence {
    fn default() -> Self {
        NodeFence {
            fenced: watch::Sender::new(true),
            deadline: std::sync::Mutex::new(None),
            starting: watch::Sender::new(0),
            registered_before: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl NodeFence {
    /// The fencing deadline, while fenced.
    pub fn deadline(&self) -> Option<Instant> {
        *self
            .deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counts a start in flight on a node while alive.
pub(crate) struct InFlight<'a>(&'a watch::Sender<usize>);

impl<'a> InFlight<'a> {
    pub fn new(counter: &'a watch::Sender<usize>) -> Self {
        counter.send_modify(|n| *n += 1);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Converts a tokio instant to wall-clock time, for records a person or another process reads.
pub fn wall_clock(at: Instant) -> chrono::DateTime<chrono::Utc> {
    let now = Instant::now();
    let wall = chrono::Utc::now();
    if at <= now {
        wall - chrono::Duration::from_std(now - at).unwrap_or_default()
    } else {
        wall + chrono::Duration::from_std(at - now).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);
    const MARGIN: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn healthy_until_half_the_ttl_since_the_last_acked_send() {
        let sent = Instant::now();
        assert_eq!(
            decide(sent, TTL, MARGIN, false, Instant::now()),
            Decision::Healthy {
                recheck_at: sent + Duration::from_secs(5)
            }
        );
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert!(matches!(
            decide(sent, TTL, MARGIN, false, Instant::now()),
            Decision::Healthy { .. }
        ));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            decide(sent, TTL, MARGIN, false, Instant::now()),
            Decision::Fence {
                deadline: sent + Duration::from_secs(9),
                expiry: sent + TTL
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_ack_moves_the_clock() {
        let first = Instant::now();
        tokio::time::advance(Duration::from_secs(4)).await;
        let second = Instant::now();
        tokio::time::advance(Duration::from_secs(2)).await;
        // 6 s after the first send but only 2 s after the second: healthy.
        assert!(matches!(
            decide(first, TTL, MARGIN, false, Instant::now()),
            Decision::Fence { .. }
        ));
        assert!(matches!(
            decide(second, TTL, MARGIN, false, Instant::now()),
            Decision::Healthy { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_lease_fences_at_once() {
        let sent = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        assert_eq!(
            decide(sent, TTL, MARGIN, true, now),
            Decision::Fence {
                deadline: now,
                expiry: sent + TTL
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn grace_is_clipped_to_end_before_the_deadline() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(4);
        // A long grace is cut to what is left minus the kill reserve.
        assert_eq!(
            clip_grace(Duration::from_secs(30), now, deadline),
            Duration::from_millis(3500)
        );
        // A short one is kept.
        assert_eq!(
            clip_grace(Duration::from_secs(1), now, deadline),
            Duration::from_secs(1)
        );
        // Little time left: half of it for the kill.
        assert_eq!(
            clip_grace(
                Duration::from_secs(30),
                now,
                now + Duration::from_millis(400)
            ),
            Duration::from_millis(200)
        );
        // Past the deadline: no grace, straight to SIGKILL.
        assert_eq!(
            clip_grace(
                Duration::from_secs(30),
                deadline + Duration::from_secs(1),
                deadline
            ),
            Duration::ZERO
        );
    }

    #[tokio::test(start_paused = true)]
    async fn whole_timeline_fits_within_the_lease() {
        // For every TTL and grace, fencing begins at TTL/2 and grace + reserve end by the
        // deadline, which is `margin` before the earliest expiry.
        for ttl_s in [2u64, 3, 5, 10, 30, 60] {
            let ttl = Duration::from_secs(ttl_s);
            let margin = (ttl / 10)
                .max(Duration::from_secs(1))
                .min(ttl / 2 - Duration::from_millis(1));
            let sent = Instant::now();
            let begin = sent + ttl / 2;
            let Decision::Fence { deadline, expiry } = decide(sent, ttl, margin, false, begin)
            else {
                panic!("must fence at TTL/2");
            };
            assert!(deadline + margin <= expiry);
            for grace_s in [0u64, 1, 5, 30, 600] {
                let grace = clip_grace(Duration::from_secs(grace_s), begin, deadline);
                assert!(begin + grace <= deadline, "ttl {ttl_s} grace {grace_s}");
            }
        }
    }
}
