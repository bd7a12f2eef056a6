//! Group commit per node: while one request of a node is in etcd, that node's next ones wait
//! and then go together in one transaction.
//!
//! A burst of assignments (the leader places a node's copies in one transaction) makes a node
//! confirm and report many instances at once. Sent one by one, each is its own etcd request;
//! on etcd 3.4 every request also copies the server's write buffer while the leader writes.
//! Grouped, a burst costs a few requests, and a lone request goes out at once as before: the
//! first of a node's requests never waits, only those that arrive while one is in flight.
//!
//! Batches are per node, never across nodes, so hollow nodes ask of etcd what the same number
//! of real agents (one node each) would.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

/// Sends one batch: an answer per request, in order, or `None` when the batch failed as a
/// whole (each caller then sends its request alone, so it gets its own error).
pub(crate) type SendBatch<Q, A> =
    Box<dyn Fn(Vec<Q>) -> BoxFuture<'static, Option<Vec<A>>> + Send + Sync>;

/// Whether `next` may join `batch` (which holds at least one request): etcd's limits on ops
/// and bytes, and no key written twice.
pub(crate) type Fits<Q> = Box<dyn Fn(&[Q], &Q) -> bool + Send + Sync>;

/// Per-node queues of requests of one kind, each drained by one task at a time.
pub(crate) struct Batcher<Q, A> {
    queues: Mutex<HashMap<Arc<str>, Queue<Q, A>>>,
    send: SendBatch<Q, A>,
    fits: Fits<Q>,
}

/// Removes a node's queue when dropped before its drain ended (see [`Batcher::drain`]); a
/// drain that ended normally has removed it already.
struct ForgetQueue<'a, Q, A> {
    queues: &'a Mutex<HashMap<Arc<str>, Queue<Q, A>>>,
    node: &'a Arc<str>,
    drained: bool,
}

impl<Q, A> Drop for ForgetQueue<'_, Q, A> {
    fn drop(&mut self) {
        if self.drained {
            return;
        }
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.node);
    }
}

struct Queue<Q, A> {
    waiting: VecDeque<Waiting<Q, A>>,
}

struct Waiting<Q, A> {
    request: Q,
    answer: oneshot::Sender<Option<A>>,
}

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    /// A batcher that sends with `send`, grouping what `fits` allows.
    pub(crate) fn new(send: SendBatch<Q, A>, fits: Fits<Q>) -> Arc<Self> {
        Arc::new(Batcher {
            queues: Mutex::new(HashMap::new()),
            send,
            fits,
        })
    }

    /// Sends `request` for `node`, with whatever else of that node is waiting.
    ///
    /// # Guarantees
    /// The request is sent after this call began (a read answers as of then or later). If no
    /// request of `node` is in flight it is sent at once.
    ///
    /// # Caveats
    /// `None` means its batch failed as a whole (or the sending task was lost with the
    /// runtime): the outcome of a write is then unknown, and the caller should send it alone.
    pub(crate) async fn submit(self: &Arc<Self>, node: &Arc<str>, request: Q) -> Option<A> {
        let (answer, answered) = oneshot::channel();
        let first = {
            let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
            let mut first = false;
            let queue = queues.entry(node.clone()).or_insert_with(|| {
                first = true;
                Queue {
                    waiting: VecDeque::new(),
                }
            });
            queue.waiting.push_back(Waiting { request, answer });
            first
        };
        if first {
            // Its own task, so a caller that is cancelled never strands the others.
            let batcher = self.clone();
            let node = node.clone();
            tokio::spawn(async move { batcher.drain(&node).await });
        }
        answered.await.ok().flatten()
    }

    /// Sends `node`'s waiting requests, batch after batch, until none is left.
    async fn drain(&self, node: &Arc<str>) {
        // Should this task end early (a panic, the runtime going away), the node's queue goes
        // with it: every request still waiting is answered `None` (its sender dropped) and the
        // next one starts a new drain, instead of waiting forever behind a drain that is gone.
        let mut forget = ForgetQueue {
            queues: &self.queues,
            node,
            drained: false,
        };
        loop {
            let Some((requests, answers)) = self.next_batch(node) else {
                // `next_batch` removed the queue; a new one may be another drain's by now.
                forget.drained = true;
                return;
            };
            let count = requests.len();
            match (self.send)(requests).await {
                Some(replies) if replies.len() == count => {
                    for (answer, reply) in answers.into_iter().zip(replies) {
                        let _ = answer.send(Some(reply));
                    }
                }
                _ => {
                    for answer in answers {
                        let _ = answer.send(None);
                    }
                }
            }
        }
    }

    /// Takes the longest run of `node`'s waiting requests that fits one batch; `None` (and the
    /// queue removed, so the next request starts a new drain) when nothing waits.
    #[allow(clippy::type_complexity)]
    fn next_batch(&self, node: &Arc<str>) -> Option<(Vec<Q>, Vec<oneshot::Sender<Option<A>>>)> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = queues.get_mut(node)?;
        let Some(first) = queue.waiting.pop_front() else {
            queues.remove(node);
            return None;
        };
        let (mut requests, mut answers) = (vec![first.request], vec![first.answer]);
        while queue
            .waiting
            .front()
            .is_some_and(|next| (self.fits)(&requests, &next.request))
        {
            if let Some(next) = queue.waiting.pop_front() {
                requests.push(next.request);
                answers.push(next.answer);
            }
        }
        Some((requests, answers))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures::FutureExt;

    use super::*;

    /// A batcher whose batches double each number, and log their sizes; `gate` holds every
    /// batch until a permit is added.
    fn doubling(
        sizes: Arc<Mutex<Vec<usize>>>,
        gate: Arc<tokio::sync::Semaphore>,
        max: usize,
    ) -> Arc<Batcher<u32, u32>> {
        Batcher::new(
            Box::new(move |batch: Vec<u32>| {
                let (sizes, gate) = (sizes.clone(), gate.clone());
                async move {
                    gate.acquire().await.ok()?.forget();
                    sizes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(batch.len());
                    Some(batch.iter().map(|n| n * 2).collect())
                }
                .boxed()
            }),
            Box::new(move |batch: &[u32], next: &u32| batch.len() < max && !batch.contains(next)),
        )
    }

    #[tokio::test]
    async fn a_lone_request_goes_at_once_and_those_waiting_on_it_go_together() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let batcher = doubling(sizes.clone(), gate.clone(), 100);
        let node: Arc<str> = Arc::from("n1");
        let first = tokio::spawn({
            let (b, n) = (batcher.clone(), node.clone());
            async move { b.submit(&n, 1).await }
        });
        // Let the first batch reach the gate; then ten more queue behind it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let rest: Vec<_> = (2..12)
            .map(|i| {
                let (b, n) = (batcher.clone(), node.clone());
                tokio::spawn(async move { b.submit(&n, i).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.add_permits(2);
        assert_eq!(first.await.expect("join"), Some(2));
        for (i, r) in (2..12).zip(rest) {
            assert_eq!(
                r.await.expect("join"),
                Some(i * 2),
                "each gets its own answer"
            );
        }
        let sizes = sizes.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(
            sizes,
            [1, 10],
            "the first alone, the ten that waited in one batch"
        );
        assert!(
            batcher
                .queues
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty(),
            "a drained node leaves no queue behind"
        );
    }

    #[tokio::test]
    async fn batches_respect_fits_and_never_mix_nodes() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let batcher = doubling(sizes.clone(), gate.clone(), 3);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut calls = Vec::new();
        // Node a: 1, then 2 2 3 4 5 waiting (a duplicate may not join its twin's batch).
        for (node, n) in [
            (&a, 1),
            (&b, 100),
            (&a, 2),
            (&a, 2),
            (&a, 3),
            (&a, 4),
            (&a, 5),
        ] {
            let (batcher, node) = (batcher.clone(), node.clone());
            calls.push(tokio::spawn(async move { batcher.submit(&node, n).await }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        gate.add_permits(100);
        let answers: Vec<Option<u32>> = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.expect("join"))
            .collect();
        assert_eq!(
            answers,
            [2, 200, 4, 4, 6, 8, 10].map(Some),
            "answers in order"
        );
        let mut sizes = sizes.lock().unwrap_or_else(PoisonError::into_inner).clone();
        sizes.sort_unstable();
        // a: [1], [2], [2 3 4], [5] (at most three, the twin 2 apart); b: [100].
        assert_eq!(sizes, [1, 1, 1, 1, 3]);
    }

    #[tokio::test]
    async fn a_failed_batch_answers_none_to_each_so_each_is_sent_alone() {
        let sent = Arc::new(AtomicUsize::new(0));
        let batcher: Arc<Batcher<u32, u32>> = Batcher::new(
            Box::new({
                let sent = sent.clone();
                move |_batch: Vec<u32>| {
                    sent.fetch_add(1, Ordering::SeqCst);
                    async { None }.boxed()
                }
            }),
            Box::new(|_: &[u32], _: &u32| true),
        );
        let node: Arc<str> = Arc::from("n");
        assert_eq!(batcher.submit(&node, 7).await, None);
        assert_eq!(sent.load(Ordering::SeqCst), 1);
        // A reply of the wrong length is a failure too, never a wrong pairing.
        let short: Arc<Batcher<u32, u32>> = Batcher::new(
            Box::new(|_batch: Vec<u32>| async { Some(Vec::new()) }.boxed()),
            Box::new(|_: &[u32], _: &u32| true),
        );
        assert_eq!(short.submit(&node, 7).await, None);
    }

    #[tokio::test]
    async fn a_drain_that_dies_strands_nobody() {
        let batcher: Arc<Batcher<u32, u32>> = Batcher::new(
            Box::new(|batch: Vec<u32>| {
                async move {
                    assert!(!batch.contains(&0), "a scripted panic of the sending task");
                    Some(batch.iter().map(|n| n * 2).collect())
                }
                .boxed()
            }),
            Box::new(|_: &[u32], _: &u32| true),
        );
        let node: Arc<str> = Arc::from("n");
        assert_eq!(
            batcher.submit(&node, 0).await,
            None,
            "answered, not stranded"
        );
        let next = tokio::time::timeout(Duration::from_secs(10), batcher.submit(&node, 1)).await;
        assert_eq!(next, Ok(Some(2)), "the next request starts a new drain");
    }
}
