//! The de-duplicating delay queue between trigger sources and the runner.
//!
//! Every request to reconcile a key goes through [`WorkQueue::schedule`]. Requests for the same
//! key merge (the earliest time wins), and a key that is being reconciled right now is *held*:
//! new requests for it are remembered and released by [`WorkQueue::finish`], so one key is never
//! handed out twice at once. The queue is a plain data structure driven by `tokio::time`
//! instants; the only async part, [`WorkQueue::next`], sleeps until the earliest deadline.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;

use tokio::time::Instant;

/// Why a key was scheduled; carried into the reconcile's tracing span and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A trigger stream (typically a watcher) yielded the key.
    Watch,
    /// [`crate::Trigger::trigger`] was called, with the caller's label.
    Trigger(&'static str),
    /// The previous reconcile returned [`crate::Action::requeue`].
    Requeue,
    /// The previous reconcile failed; this is the retry after backoff.
    Backoff,
}

impl Reason {
    /// Every value [`Reason::as_str`] returns.
    pub const LABELS: [&'static str; 4] = ["watch", "trigger", "requeue", "backoff"];

    /// A short, bounded label for metrics: `watch`, `trigger`, `requeue` or `backoff`.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Watch => "watch",
            Reason::Trigger(_) => "trigger",
            Reason::Requeue => "requeue",
            Reason::Backoff => "backoff",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Trigger(label) => write!(f, "trigger({label})"),
            other => f.write_str(other.as_str()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Request {
    at: Instant,
    reason: Reason,
}

impl Request {
    /// Merge rule: the strictly earlier request wins; on a tie the one already queued stays.
    fn merge(self, newer: Request) -> Request {
        if newer.at < self.at {
            newer
        } else {
            self
        }
    }
}

/// A de-duplicating delay queue of keys.
///
/// # Guarantees
/// - At most one entry per key: scheduling a queued key keeps the earlier of the two times (and
///   that request's reason).
/// - A key handed out by [`Self::pop_ready`] is *running* until [`Self::finish`]; requests for it
///   in between are merged into one held request, released by `finish`. A running key is never
///   handed out again before that.
/// - Keys due at the same instant come out in the order they were scheduled.
#[derive(Debug)]
pub struct WorkQueue<K> {
    /// Queued keys with their request and sequence number (the tie-breaker in `order`).
    queued: HashMap<K, (Request, u64)>,
    /// The same keys ordered by due time.
    order: BTreeMap<(Instant, u64), K>,
    /// Keys being reconciled, with the request held back until they finish.
    running: HashMap<K, Option<Request>>,
    next_seq: u64,
}

impl<K> Default for WorkQueue<K> {
    fn default() -> Self {
        Self {
            queued: HashMap::new(),
            order: BTreeMap::new(),
            running: HashMap::new(),
            next_seq: 0,
        }
    }
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    /// An empty queue.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for `key` to be handed out at `at` (or at once if `at` has passed).
    pub fn schedule(&mut self, key: K, at: Instant, reason: Reason) {
        let request = Request { at, reason };
        if let Some(held) = self.running.get_mut(&key) {
            *held = Some(held.map_or(request, |h| h.merge(request)));
            return;
        }
        self.enqueue(key, request);
    }

    fn enqueue(&mut self, key: K, request: Request) {
        if let Some((existing, seq)) = self.queued.get(&key).copied() {
            let merged = existing.merge(request);
            if merged == existing {
                return;
            }
            self.order.remove(&(existing.at, seq));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert((request.at, seq), key.clone());
        self.queued.insert(key, (request, seq));
    }

    /// Hands out the earliest key due at `now`, marking it running.
    pub fn pop_ready(&mut self, now: Instant) -> Option<(K, Reason)> {
        let (&(at, seq), _) = self.order.first_key_value()?;
        if at > now {
            return None;
        }
        let key = self.order.remove(&(at, seq))?;
        let (request, _) = self.queued.remove(&key)?;
        self.running.insert(key.clone(), None);
        Some((key, request.reason))
    }

    /// Waits (on `tokio::time`) for the earliest due key and hands it out, marking it running.
    ///
    /// Pending forever while nothing is queued. Cancel-safe: a key is only removed on the final,
    /// synchronous step, so dropping the future loses nothing.
    pub async fn next(&mut self) -> (K, Reason) {
        loop {
            match self.next_deadline() {
                None => std::future::pending::<()>().await,
                Some(deadline) => tokio::time::sleep_until(deadline).await,
            }
            if let Some(ready) = self.pop_ready(Instant::now()) {
                return ready;
            }
        }
    }

    /// Marks a running key finished and releases the request held for it, if any.
    ///
    /// `not_before` delays the released request (used to keep triggers from cutting a backoff
    /// short). Returns whether the key went back into the queue. A key that is not running is
    /// left alone.
    pub fn finish(&mut self, key: &K, not_before: Option<Instant>) -> bool {
        let Some(held) = self.running.remove(key) else {
            return false;
        };
        let Some(mut request) = held else {
            return false;
        };
        if let Some(floor) = not_before {
            request.at = request.at.max(floor);
        }
        self.enqueue(key.clone(), request);
        true
    }

    /// The earliest due time among queued keys (held keys are not due until they finish).
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.order.first_key_value().map(|(&(at, _), _)| at)
    }

    /// When and why `key` is queued, if it is (held requests are not reported here).
    #[must_use]
    pub fn deadline(&self, key: &K) -> Option<(Instant, Reason)> {
        self.queued.get(key).map(|(r, _)| (r.at, r.reason))
    }

    /// Whether `key` is running (handed out and not finished).
    #[must_use]
    pub fn is_running(&self, key: &K) -> bool {
        self.running.contains_key(key)
    }

    /// Keys waiting to be reconciled: queued ones plus those held behind a running reconcile.
    #[must_use]
    pub fn depth(&self) -> usize {
        self.queued.len() + self.running.values().filter(|h| h.is_some()).count()
    }

    /// Keys handed out and not yet finished.
    #[must_use]
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_list_every_reason() {
        use super::Reason;
        for reason in [
            Reason::Watch,
            Reason::Trigger("x"),
            Reason::Requeue,
            Reason::Backoff,
        ] {
            assert!(Reason::LABELS.contains(&reason.as_str()), "{reason:?}");
        }
    }

    use super::*;
    use std::time::Duration;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn same_key_merges_and_earliest_wins() {
        let t0 = Instant::now();
        let mut q = WorkQueue::new();
        q.schedule("a", t0 + secs(10), Reason::Requeue);
        q.schedule("a", t0 + secs(5), Reason::Backoff);
        q.schedule("a", t0 + secs(7), Reason::Watch);
        assert_eq!(q.depth(), 1);
        assert_eq!(q.deadline(&"a"), Some((t0 + secs(5), Reason::Backoff)));
        // A tie keeps the request already queued.
        q.schedule("a", t0 + secs(5), Reason::Watch);
        assert_eq!(q.deadline(&"a"), Some((t0 + secs(5), Reason::Backoff)));
    }

    #[test]
    fn pops_only_due_keys_in_time_then_fifo_order() {
        let t0 = Instant::now();
        let mut q = WorkQueue::new();
        q.schedule("late", t0 + secs(2), Reason::Watch);
        q.schedule("b", t0, Reason::Watch);
        q.schedule("a", t0, Reason::Watch);
        assert_eq!(q.next_deadline(), Some(t0));
        assert_eq!(q.pop_ready(t0), Some(("b", Reason::Watch)));
        assert_eq!(q.pop_ready(t0), Some(("a", Reason::Watch)));
        assert_eq!(q.pop_ready(t0 + secs(1)), None);
        assert_eq!(q.pop_ready(t0 + secs(2)), Some(("late", Reason::Watch)));
        assert_eq!(q.running(), 3);
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn running_key_is_held_and_released_on_finish() {
        let t0 = Instant::now();
        let mut q = WorkQueue::new();
        q.schedule("a", t0, Reason::Watch);
        assert_eq!(q.pop_ready(t0), Some(("a", Reason::Watch)));
        // Requests while running merge into one held request and are never popped.
        q.schedule("a", t0 + secs(3), Reason::Requeue);
        q.schedule("a", t0 + secs(1), Reason::Trigger("x"));
        assert_eq!(q.depth(), 1);
        assert_eq!(q.pop_ready(t0 + secs(10)), None);
        assert!(q.is_running(&"a"));
        assert!(q.finish(&"a", None));
        assert!(!q.is_running(&"a"));
        assert_eq!(q.deadline(&"a"), Some((t0 + secs(1), Reason::Trigger("x"))));
        assert_eq!(q.pop_ready(t0 + secs(1)), Some(("a", Reason::Trigger("x"))));
    }

    #[test]
    fn finish_without_held_request_leaves_nothing() {
        let t0 = Instant::now();
        let mut q = WorkQueue::new();
        q.schedule(1, t0, Reason::Watch);
        assert!(q.pop_ready(t0).is_some());
        assert!(!q.finish(&1, None));
        assert_eq!(q.depth(), 0);
        assert_eq!(q.running(), 0);
        // Finishing a key that is not running is a no-op.
        assert!(!q.finish(&2, None));
    }

    #[test]
    fn not_before_delays_the_held_request() {
        let t0 = Instant::now();
        let mut q = WorkQueue::new();
        q.schedule("a", t0, Reason::Watch);
        assert!(q.pop_ready(t0).is_some());
        q.schedule("a", t0, Reason::Watch);
        assert!(q.finish(&"a", Some(t0 + secs(4))));
        assert_eq!(q.deadline(&"a"), Some((t0 + secs(4), Reason::Watch)));
    }

    #[test]
    fn rescheduling_after_finish_merges_with_released_request() {
        let t0 = Instant::now();
        let mut q = WorkQueue::new();
        q.schedule("a", t0, Reason::Watch);
        assert!(q.pop_ready(t0).is_some());
        q.schedule("a", t0 + secs(1), Reason::Watch);
        q.finish(&"a", None);
        q.schedule("a", t0 + secs(9), Reason::Requeue);
        assert_eq!(q.depth(), 1);
        assert_eq!(q.deadline(&"a"), Some((t0 + secs(1), Reason::Watch)));
    }

    #[test]
    fn reason_labels() {
        assert_eq!(
            Reason::Trigger("node-dead").to_string(),
            "trigger(node-dead)"
        );
        assert_eq!(Reason::Trigger("node-dead").as_str(), "trigger");
        assert_eq!(Reason::Backoff.to_string(), "backoff");
    }

    #[tokio::test(start_paused = true)]
    async fn next_sleeps_until_the_earliest_deadline() {
        let t0 = Instant::now();
        let mut q = WorkQueue::new();
        q.schedule("b", t0 + secs(5), Reason::Requeue);
        q.schedule("a", t0 + secs(2), Reason::Requeue);
        let got = tokio::time::timeout(secs(60), q.next()).await;
        assert_eq!(got, Ok(("a", Reason::Requeue)));
        assert_eq!(Instant::now() - t0, secs(2));
        let got = tokio::time::timeout(secs(60), q.next()).await;
        assert_eq!(got, Ok(("b", Reason::Requeue)));
        assert_eq!(Instant::now() - t0, secs(5));
        // Empty queue: pending until the timeout.
        assert!(tokio::time::timeout(secs(1), q.next()).await.is_err());
    }
}
