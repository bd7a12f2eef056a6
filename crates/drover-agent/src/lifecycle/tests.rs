//! The engine against a real etcd with an assignment cache fed by hand, so a cache that is
//! behind etcd (after a partition, before the watch caught up) can be shown deterministically.

use std::sync::Arc;
use std::time::Duration;

use drover_api::instance::Instance;
use drover_api::keys::Keys;
use drover_api::names::InstanceId;
use drover_store::reflector::Writer;
use drover_store::watcher::Event;
use drover_store::{Store, StoreConfig, Versioned};
use drover_testkit::EtcdServer;
use tokio_util::sync::CancellationToken;

use crate::config::DriverChoice;
use crate::converge::{Engine, EngineConfig, EngineParts};
use crate::drivers::DriverSet;
use crate::lifecycle::fencing::Unfenced;
use crate::local::{Records, Slot, StopReason};
use crate::metrics::Metrics;
use crate::ports::PortAllocator;
use crate::restart;

pub(crate) const LIMIT: Duration = Duration::from_secs(30);
pub(crate) const NODE: &str = "n1";

pub(crate) struct Rig {
    pub _etcd: EtcdServer,
    pub _dir: tempfile::TempDir,
    pub store: Store,
    pub keys: Keys,
    pub engine: Arc<Engine>,
    pub writer: Writer<Instance>,
}

pub(crate) async fn rig() -> Rig {
    rig_with(None).await
}

/// A rig whose engine runs `drivers` (the process driver when `None`).
pub(crate) async fn rig_with(drivers: Option<DriverSet>) -> Rig {
    let etcd = tokio::time::timeout(LIMIT, EtcdServer::start())
        .await
        .expect("etcd starts in time");
    let mut cfg = StoreConfig::new(etcd.endpoints());
    cfg.request_timeout = Duration::from_secs(2);
    let store = tokio::time::timeout(LIMIT, Store::connect(cfg))
        .await
        .expect("connect in time")
        .expect("etcd answers");
    let keys = Keys::new(&drover_testkit::unique_prefix());
    let dir = tempfile::tempdir().expect("tempdir");
    let drivers = match drivers {
        Some(d) => d,
        // These tests run as root and are about the lifecycle, not about whom a task runs as.
        None => DriverSet::new(DriverChoice::Process, dir.path(), "127.0.0.1", true)
            .await
            .expect("process driver"),
    };
    let (reader, writer) = drover_store::reflector::store();
    let mut registry = prometheus_client::registry::Registry::default();
    let engine = Arc::new(Engine::new(EngineParts {
        store: store.clone(),
        keys: keys.clone(),
        drivers,
        ports: PortAllocator::default(),
        nodes: vec![(Arc::from(NODE), reader)],
        records: Records::new(None),
        retained: None,
        config: EngineConfig {
            backoff: restart::Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(1),
            },
            unsafe_keep_copies_when_fenced: false,
        },
        metrics: Metrics::register(&mut registry),
        kill: CancellationToken::new(),
    }));
    Rig {
        _etcd: etcd,
        _dir: dir,
        store,
        keys,
        engine,
        writer,
    }
}

pub(crate) fn instance(id: &InstanceId) -> Instance {
    Instance {
        id: id.clone(),
        namespace: id.namespace().to_string(),
        task: id.task().to_string(),
        slot: id.slot(),
        run: id.run(),
        node: NODE.to_string(),
        generation: 1,
        revision: 0,
        attempt: 1,
        spec: serde_json::from_value(serde_json::json!({
            "command": ["/bin/sh", "-c", "sleep 600"],
            "terminationGracePeriodSeconds": 1,
        }))
        .expect("spec"),
        assigned_at: chrono::Utc::now(),
        stop: None,
    }
}

impl Rig {
    /// Writes the assignment to etcd; returns its create revision.
    pub(crate) async fn assign(&self, id: &InstanceId) -> i64 {
        self.store
            .put(&self.keys.assignment(NODE, id), &instance(id), None)
            .await
            .expect("assignment written")
    }

    /// Makes the local cache hold the assignment of `id` with `create_revision`, whatever
    /// etcd holds.
    pub(crate) fn cache(&mut self, id: &InstanceId, create_revision: i64) {
        self.cache_value(instance(id), create_revision);
    }

    /// Makes the local cache hold `value` as the assignment created at `create_revision`.
    pub(crate) fn cache_value(&mut self, value: Instance, create_revision: i64) {
        let v = Versioned {
            key: self.keys.assignment(NODE, &value.id),
            value,
            create_revision,
            mod_revision: create_revision,
            version: 1,
            lease: None,
        };
        self.writer.apply(&Event::Init);
        self.writer.apply(&Event::InitApply(v));
        self.writer.apply(&Event::InitDone {
            revision: create_revision,
        });
    }

    pub(crate) fn slot(id: &InstanceId) -> Slot {
        Slot {
            node: Arc::from(NODE),
            id: id.clone(),
        }
    }

    /// The driver's id of the slot's current run (its pid under the process driver).
    pub(crate) fn pid(&self, slot: &Slot) -> String {
        self.engine
            .instances()
            .read(slot, |e| e.handle().map(|h| h.id.clone()))
            .flatten()
            .expect("a run")
    }

    pub(crate) async fn reconcile(&self, slot: &Slot) {
        tokio::time::timeout(LIMIT, self.engine.reconcile(slot))
            .await
            .expect("reconcile in time")
            .expect("reconcile");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_cache_does_not_start_what_etcd_no_longer_assigns() {
    let mut rig = rig().await;
    rig.engine.unfence(NODE).await;
    let id = InstanceId::service("default", "gone", 0).expect("id");
    let rev = rig.assign(&id).await;
    // The leader deleted it; the cache has not heard yet.
    rig.store
        .delete(&rig.keys.assignment(NODE, &id))
        .await
        .expect("delete");
    rig.cache(&id, rev);
    rig.reconcile(&Rig::slot(&id)).await;
    assert_eq!(rig.engine.running(None), 0, "nothing started");
    assert!(rig.engine.instances().is_empty(), "the entry is forgotten");

    // Deleted and re-created for a new placement: another create revision, also not ours.
    let newer = rig.assign(&id).await;
    assert!(newer > rev);
    rig.reconcile(&Rig::slot(&id)).await;
    assert_eq!(rig.engine.running(None), 0, "nothing started");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_status_write_stops_the_instance_at_once() {
    let mut rig = rig().await;
    rig.engine.unfence(NODE).await;
    let id = InstanceId::service("default", "moved", 0).expect("id");
    let rev = rig.assign(&id).await;
    rig.cache(&id, rev);
    let slot = Rig::slot(&id);
    rig.reconcile(&slot).await;
    assert_eq!(rig.engine.running(None), 1, "started");
    let pid = rig.pid(&slot);
    // The assignment goes away in etcd only; then the status changes and is written.
    rig.store
        .delete(&rig.keys.assignment(NODE, &id))
        .await
        .expect("delete");
    rig.engine
        .instances()
        .update(&slot, |e| e.set_message("something to report"));
    rig.reconcile(&slot).await;
    assert_eq!(rig.engine.running(None), 0, "stopped");
    assert!(rig.engine.instances().is_empty(), "the entry is forgotten");
    let recs = rig.engine.records().list();
    assert!(
        recs.iter()
            .any(|r| r.instance == id && r.reason == StopReason::Unassigned),
        "{recs:?}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the process is gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_registration_after_self_fencing_is_reported_as_one() {
    let rig = rig().await;
    assert_eq!(
        rig.engine.unfence(NODE).await,
        Unfenced::FirstRegistration,
        "every node starts fenced: its first registration recovers from nothing"
    );
    assert_eq!(rig.engine.unfence(NODE).await, Unfenced::NotFenced);
    let now = tokio::time::Instant::now();
    rig.engine
        .fence(
            NODE,
            now + Duration::from_secs(5),
            now + Duration::from_secs(10),
        )
        .await;
    assert_eq!(rig.engine.unfence(NODE).await, Unfenced::AfterSelfFencing);
}
