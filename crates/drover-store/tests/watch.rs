//! Integration tests of the watcher and reflector through restarts, compaction and a member
//! loss.

mod common;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{connect, within, T};
use drover_store::reflector::{self, Reader};
use drover_store::{watcher, Event, Op, Result, Store};
use drover_testkit::{unique_prefix, EtcdCluster, EtcdServer, TcpProxy};
use futures::{Stream, StreamExt};

type Events = Pin<Box<dyn Stream<Item = Result<Event<u64>>> + Send>>;

/// A reflector over `prefix` whose stream the test drives by hand, counting `Init` events.
fn reflect(store: &Store, prefix: &str) -> (Reader<u64>, Events, Arc<AtomicUsize>) {
    let (reader, writer) = reflector::store::<u64>();
    let inits = Arc::new(AtomicUsize::new(0));
    let counter = inits.clone();
    let events = watcher::<u64>(store.clone(), prefix).inspect(move |e| {
        if matches!(e, Ok(Event::Init)) {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (
        reader,
        Box::pin(reflector::reflector(writer, events)),
        inits,
    )
}

/// The cache as key → (mod revision, value).
fn snapshot(reader: &Reader<u64>) -> BTreeMap<String, (i64, u64)> {
    reader
        .list()
        .iter()
        .map(|v| (v.key.clone(), (v.mod_revision, v.value)))
        .collect()
}

async fn fresh(store: &Store, prefix: &str) -> BTreeMap<String, (i64, u64)> {
    within("list", store.list::<u64>(prefix))
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|v| (v.key, (v.mod_revision, v.value)))
        .collect()
}

/// Consumes `events` until the cache equals `want`, within the test bound.
async fn pump_until_equal(
    events: &mut Events,
    reader: &Reader<u64>,
    want: &BTreeMap<String, (i64, u64)>,
) {
    let done = tokio::time::timeout(T, async {
        loop {
            if reader.is_ready() && &snapshot(reader) == want {
                return;
            }
            if let Ok(Some(item)) =
                tokio::time::timeout(Duration::from_millis(50), events.next()).await
            {
                item.expect("no decode errors in this test");
            }
        }
    })
    .await;
    if done.is_err() {
        panic!(
            "cache never matched\n  cache: {:?}\n  want:  {want:?}",
            snapshot(reader)
        );
    }
}

async fn put_n(store: &Store, prefix: &str, range: std::ops::Range<u64>) {
    for i in range {
        within("put", store.put(&format!("{prefix}/{i:04}"), &i, None))
            .await
            .expect("put");
    }
}

#[tokio::test]
async fn watcher_survives_an_etcd_restart_without_missing_events() {
    let mut etcd = within("etcd", EtcdServer::start()).await;
    let watch_store = connect(etcd.endpoints()).await;
    let p = unique_prefix();
    put_n(&watch_store, &p, 0..5).await;

    let (reader, mut events, inits) = reflect(&watch_store, &p);
    let want = fresh(&watch_store, &p).await;
    pump_until_equal(&mut events, &reader, &want).await;
    put_n(&watch_store, &p, 5..8).await;
    let want = fresh(&watch_store, &p).await;
    pump_until_equal(&mut events, &reader, &want).await;

    // Outage; the watcher is not consumed until after the writes below, so they land after
    // the restart and before it resumes.
    etcd.kill();
    within("restart", etcd.restart()).await;
    let writer = connect(etcd.endpoints()).await;
    put_n(&writer, &p, 8..12).await;
    within("delete", writer.delete(&format!("{p}/0001")))
        .await
        .expect("delete");
    within("put", writer.put(&format!("{p}/0002"), &200, None))
        .await
        .expect("put");
    let want = fresh(&writer, &p).await;
    pump_until_equal(&mut events, &reader, &want).await;

    // And after it resumed.
    put_n(&writer, &p, 12..15).await;
    within("delete", writer.delete(&format!("{p}/0003")))
        .await
        .expect("delete");
    let want = fresh(&writer, &p).await;
    pump_until_equal(&mut events, &reader, &want).await;
    assert_eq!(
        inits.load(Ordering::SeqCst),
        1,
        "resumed from its revision, no re-list"
    );
    assert_eq!(
        reader.revision(),
        want.values()
            .map(|(r, _)| *r)
            .max()
            .unwrap_or(0)
            .max(reader.revision())
    );
}

#[tokio::test]
async fn compaction_past_the_watcher_makes_it_relist() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let proxy = TcpProxy::start(etcd.client_addr()).await;
    let watch_store = connect(vec![proxy.url()]).await;
    let writer = connect(etcd.endpoints()).await;
    let p = unique_prefix();
    put_n(&writer, &p, 0..10).await;

    let (reader, mut events, inits) = reflect(&watch_store, &p);
    let want = fresh(&writer, &p).await;
    pump_until_equal(&mut events, &reader, &want).await;
    // One event through the watch, so the watch itself is open when the history goes.
    put_n(&writer, &p, 99..100).await;
    let want = fresh(&writer, &p).await;
    pump_until_equal(&mut events, &reader, &want).await;
    assert_eq!(inits.load(Ordering::SeqCst), 1);

    // Stop consuming and cut the watcher off; write, delete, and compact the history away.
    proxy.cut();
    put_n(&writer, &p, 10..20).await;
    within("delete", writer.delete(&format!("{p}/0004")))
        .await
        .expect("delete");
    let ops: Vec<Op> = (0..3).map(|i| Op::delete(format!("{p}/{i:04}"))).collect();
    assert!(within("batch", writer.commit_batched(ops, None))
        .await
        .iter()
        .all(|c| c.result.is_ok()));
    let rev = within("put", writer.put(&format!("{p}/0005"), &500, None))
        .await
        .expect("put");
    within("compact", etcd.compact(rev)).await.expect("compact");
    proxy.restore();

    let want = fresh(&writer, &p).await;
    pump_until_equal(&mut events, &reader, &want).await;
    assert_eq!(
        inits.load(Ordering::SeqCst),
        2,
        "re-listed once after compaction"
    );

    // Watching continues normally after the re-list.
    put_n(&writer, &p, 20..22).await;
    let want = fresh(&writer, &p).await;
    pump_until_equal(&mut events, &reader, &want).await;
}

#[tokio::test]
async fn decode_errors_are_items_and_the_stream_continues() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let store = connect(etcd.endpoints()).await;
    let p = unique_prefix();
    let mut events = Box::pin(watcher::<u64>(store.clone(), p.clone()));
    assert_eq!(
        within("next", events.next())
            .await
            .expect("item")
            .expect("ok"),
        Event::Init
    );
    assert!(matches!(
        within("next", events.next()).await.expect("item"),
        Ok(Event::InitDone { .. })
    ));
    within(
        "put",
        store.put_raw(&format!("{p}/bad"), b"nope".to_vec(), None),
    )
    .await
    .expect("put");
    within("put", store.put(&format!("{p}/good"), &7u64, None))
        .await
        .expect("put");
    let err = within("next", events.next())
        .await
        .expect("item")
        .expect_err("bad value");
    assert!(err.to_string().contains(&format!("{p}/bad")), "{err}");
    let ok = within("next", events.next())
        .await
        .expect("item")
        .expect("good value");
    assert!(matches!(ok, Event::Apply(v) if v.value == 7));
    within("delete", store.delete(&format!("{p}/good")))
        .await
        .expect("delete");
    let del = within("next", events.next())
        .await
        .expect("item")
        .expect("delete");
    assert!(
        matches!(&del, Event::Delete { key, prev: Some(prev), .. } if key.ends_with("/good") && prev.value == 7),
        "{del:?}"
    );
}

#[tokio::test]
async fn cluster_member_loss_keeps_reads_writes_and_watches_working() {
    let mut cluster = within("cluster", EtcdCluster::start(3)).await;
    let store = connect(cluster.endpoints()).await;
    let p = unique_prefix();
    put_n(&store, &p, 0..5).await;
    let (reader, mut events, _inits) = reflect(&store, &p);
    let want = fresh(&store, &p).await;
    pump_until_equal(&mut events, &reader, &want).await;
    // An event through the watch proves it is open (on the preferred, first endpoint).
    put_n(&store, &p, 100..101).await;
    let want = fresh(&store, &p).await;
    pump_until_equal(&mut events, &reader, &want).await;

    // The store prefers the first endpoint: kill that member.
    cluster.kill_member(0);

    put_n(&store, &p, 5..10).await;
    assert!(
        within("create", store.create(&format!("{p}/new"), &1u64, None))
            .await
            .is_ok()
    );
    let cur = within("get", store.get::<u64>(&format!("{p}/0001")))
        .await
        .expect("get")
        .expect("some");
    assert!(within(
        "cas",
        store.compare_and_swap(&cur.key, cur.mod_revision, &100u64)
    )
    .await
    .expect("cas"));
    let want = fresh(&store, &p).await;
    assert_eq!(want.len(), 12);
    pump_until_equal(&mut events, &reader, &want).await;

    // A watcher started after the loss works too, and the lease machinery as well.
    let (reader2, mut events2, _) = reflect(&store, &p);
    pump_until_equal(&mut events2, &reader2, &want).await;
    let lease = within("grant", store.grant(Duration::from_secs(3)))
        .await
        .expect("grant");
    let ka = within("ka", store.keep_alive(lease, Duration::from_secs(3)))
        .await
        .expect("ka");
    assert!(ka.is_lost().is_none());

    // The member comes back and the cluster carries on.
    within("restart", cluster.restart_member(0)).await;
    put_n(&store, &p, 10..12).await;
    let want = fresh(&store, &p).await;
    pump_until_equal(&mut events, &reader, &want).await;
}

/// Keys that are not UTF-8 (only a foreign client writes them) are passed over by listings,
/// page boundaries included, and by the watch: the keys around them are still read.
#[tokio::test]
async fn keys_that_are_not_utf8_are_passed_over_by_lists_and_watches() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let store = within(
        "connect",
        Store::connect(drover_store::StoreConfig {
            page_size: 1,
            ..common::config(etcd.endpoints())
        }),
    )
    .await
    .expect("connect");
    let mut raw = within(
        "raw client",
        etcd_client::Client::connect(etcd.endpoints(), None),
    )
    .await
    .expect("raw client");
    let p = unique_prefix();
    let bad = |suffix: u8| {
        let mut key = format!("{p}/b").into_bytes();
        key.extend([0xff, suffix]);
        key
    };
    within("put a", store.put(&format!("{p}/a"), &1u64, None))
        .await
        .expect("put");
    for suffix in 0..3 {
        within("put bad", raw.put(bad(suffix), "1", None))
            .await
            .expect("put bad");
    }
    within("put c", store.put(&format!("{p}/c"), &3u64, None))
        .await
        .expect("put");

    let listed = within("list", store.list_raw(&p)).await.expect("list");
    let keys: Vec<&str> = listed.items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, vec![format!("{p}/a"), format!("{p}/c")]);

    let mut events = watcher::<u64>(store.clone(), p.clone());
    let mut listed = 0;
    loop {
        match within("init", events.next()).await.expect("event") {
            Ok(Event::InitApply(_)) => listed += 1,
            Ok(Event::InitDone { .. }) => break,
            other => assert!(matches!(other, Ok(Event::Init)), "{other:?}"),
        }
    }
    assert_eq!(listed, 2);
    within("put bad", raw.put(bad(9), "1", None))
        .await
        .expect("put bad");
    within("put d", store.put(&format!("{p}/d"), &4u64, None))
        .await
        .expect("put");
    match within("next", events.next()).await.expect("event") {
        Ok(Event::Apply(item)) => assert_eq!(item.key, format!("{p}/d")),
        other => panic!("the change after the bad key, not {other:?}"),
    }
}
