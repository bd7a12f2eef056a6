//! Fencing against a start in flight, with a hollow driver whose start is held at a gate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use drover_api::names::InstanceId;
use drover_api::task::DriverKind;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::FutureExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::tests::{rig_with, Rig, LIMIT, NODE};
use crate::driver::hollow::HollowDriver;
use crate::driver::{
    Driver, Fingerprint, Handle, LogLine, RecoveredInstance, Result, StartRequest, TaskState,
};
use crate::drivers::DriverSet;
use crate::local::StopReason;

/// The hollow driver, but `start` creates the instance and then waits for [`Gated::open`].
#[derive(Clone)]
struct Gated {
    inner: HollowDriver,
    entered: Arc<AtomicBool>,
    gate: Arc<Notify>,
    /// What `start` made, for `recover` (the hollow driver recovers nothing).
    made: Arc<Mutex<Vec<RecoveredInstance>>>,
}

impl Gated {
    fn new() -> Self {
        Gated {
            inner: HollowDriver::new(),
            entered: Arc::default(),
            gate: Arc::default(),
            made: Arc::default(),
        }
    }

    fn open(&self) {
        self.gate.notify_one();
    }

    async fn running(&self) -> usize {
        let found = Driver::recover(self, NODE).await.expect("recover");
        found.iter().filter(|r| r.state.is_running()).count()
    }
}

impl Driver for Gated {
    fn kind(&self) -> DriverKind {
        DriverKind::Hollow
    }
    fn fingerprint(&self) -> BoxFuture<'_, Fingerprint> {
        Driver::fingerprint(&self.inner)
    }
    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, Result<Handle>> {
        async move {
            let handle = Driver::start(&self.inner, req).await?;
            self.made
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(RecoveredInstance {
                    meta: req.meta.clone(),
                    handle: handle.clone(),
                    state: TaskState::Running,
                });
            self.entered.store(true, Ordering::SeqCst);
            self.gate.notified().await;
            Ok(handle)
        }
        .boxed()
    }
    fn inspect<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<TaskState>> {
        Driver::inspect(&self.inner, handle)
    }
    fn wait<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<TaskState>> {
        Driver::wait(&self.inner, handle)
    }
    fn stop<'a>(&'a self, handle: &'a Handle, grace: Duration) -> BoxFuture<'a, Result<()>> {
        Driver::stop(&self.inner, handle, grace)
    }
    fn destroy<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<()>> {
        Driver::destroy(&self.inner, handle)
    }
    fn logs(
        &self,
        handle: &Handle,
        follow: bool,
        tail: Option<usize>,
    ) -> BoxStream<'static, Result<LogLine>> {
        Driver::logs(&self.inner, handle, follow, tail)
    }
    fn recover<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<RecoveredInstance>>> {
        async move {
            let made = self
                .made
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let mut found = Vec::new();
            for mut rec in made.into_iter().filter(|r| r.meta.node == node) {
                rec.state = Driver::inspect(&self.inner, &rec.handle).await?;
                if rec.state != TaskState::NotFound {
                    found.push(rec);
                }
            }
            Ok(found)
        }
        .boxed()
    }
}

/// A rig on `gated` with one assignment whose reconcile is held in `start` at the gate.
async fn start_held(gated: &Gated, id: &InstanceId) -> (Rig, tokio::task::JoinHandle<()>) {
    let set = DriverSet::single(DriverKind::Hollow, Arc::new(gated.clone()));
    let mut rig = rig_with(Some(set)).await;
    rig.engine.unfence(NODE).await;
    let rev = rig.assign(id).await;
    rig.cache(id, rev);
    let engine = rig.engine.clone();
    let slot = Rig::slot(id);
    let reconcile = tokio::spawn(async move {
        engine.reconcile(&slot).await.expect("reconcile");
    });
    let entered = gated.entered.clone();
    tokio::time::timeout(LIMIT, async move {
        while !entered.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the start reaches the gate");
    (rig, reconcile)
}

fn fenced_stops(rig: &Rig, id: &InstanceId) -> usize {
    let recs = rig.engine.records().list();
    recs.iter()
        .filter(|r| r.instance == *id && r.reason == StopReason::Fenced)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn fencing_waits_for_a_start_in_flight_and_stops_what_it_started() {
    let gated = Gated::new();
    let id = InstanceId::service("default", "slow", 0).expect("id");
    let (rig, reconcile) = start_held(&gated, &id).await;
    let now = Instant::now();
    let (deadline, expiry) = (now + Duration::from_secs(3), now + Duration::from_secs(4));
    let engine = rig.engine.clone();
    let fence = tokio::spawn(async move { engine.fence(NODE, deadline, expiry).await });
    // The start finishes while fencing is under way (a slow runtime, not a wait on a condition).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !fence.is_finished(),
        "fencing waits for the start in flight"
    );
    gated.open();
    tokio::time::timeout(LIMIT, fence)
        .await
        .expect("fencing ends")
        .expect("fence task");
    assert!(Instant::now() <= deadline, "within the deadline");
    assert_eq!(fenced_stops(&rig, &id), 1, "stopped as part of fencing");
    assert_eq!(gated.running().await, 0);
    assert_eq!(rig.engine.running(None), 0);
    tokio::time::timeout(LIMIT, reconcile)
        .await
        .expect("reconcile ends")
        .expect("reconcile task");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_outlasting_the_fencing_deadline_is_cancelled_and_what_it_made_destroyed() {
    let gated = Gated::new();
    let id = InstanceId::service("default", "stuck", 0).expect("id");
    let (rig, reconcile) = start_held(&gated, &id).await;
    assert_eq!(gated.running().await, 1, "the runtime has the instance");
    let now = Instant::now();
    let (deadline, expiry) = (now + Duration::from_secs(1), now + Duration::from_secs(2));
    // The gate never opens: the start hangs past the deadline.
    tokio::time::timeout(LIMIT, rig.engine.fence(NODE, deadline, expiry))
        .await
        .expect("fencing ends");
    assert!(Instant::now() <= deadline, "within the deadline");
    assert_eq!(gated.running().await, 0, "what the start made is gone");
    assert_eq!(
        fenced_stops(&rig, &id),
        1,
        "{:?}",
        rig.engine.records().list()
    );
    assert_eq!(rig.engine.running(None), 0);
    tokio::time::timeout(LIMIT, reconcile)
        .await
        .expect("reconcile ends")
        .expect("reconcile task");
}

/// A helper task (prober, timeout watcher) spawned for a run whose entry is forgotten before
/// the handle is attached must not be left running: nothing else would ever abort it.
#[tokio::test]
async fn a_helper_attached_to_a_forgotten_entry_is_aborted() {
    let rig = super::tests::rig().await;
    let slot = crate::local::Slot {
        node: Arc::from(super::tests::NODE),
        id: "default.gone.0".parse().expect("id"),
    };
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        // Holds `tx` until aborted: the receiver sees the channel close only then.
        let _tx = tx;
        std::future::pending::<()>().await;
    });
    rig.engine.attach(&slot, 1, task.abort_handle(), true);
    let closed = tokio::time::timeout(super::tests::LIMIT, &mut rx).await;
    assert!(
        matches!(closed, Ok(Err(_))),
        "the orphaned helper must be aborted: {closed:?}"
    );
    assert!(task.await.expect_err("aborted").is_cancelled());
}
