//! Integration tests of reads, writes, CAS, transactions and batching against a real etcd.

mod common;

use std::time::{Duration, Instant};

use common::{config, connect, within, T};
use drover_store::{CreateOutcome, Error, Op, Store, StoreConfig, Txn};
use drover_testkit::{unique_prefix, EtcdServer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Thing {
    name: String,
    n: u32,
}

fn thing(n: u32) -> Thing {
    Thing {
        name: format!("t{n}"),
        n,
    }
}

#[tokio::test]
async fn get_list_create_cas_delete() {
    let etcd = within("etcd", EtcdServer::start()).await;
    // The bare host:port form works too.
    let bare = etcd.endpoints()[0]
        .trim_start_matches("http://")
        .to_string();
    let store = connect(vec![bare]).await;
    let p = unique_prefix();
    let k = format!("{p}/a");

    assert!(within("get", store.get::<Thing>(&k))
        .await
        .expect("get")
        .is_none());
    let created = within("create", store.create(&k, &thing(1), None))
        .await
        .expect("create");
    let CreateOutcome::Created { revision } = created else {
        panic!("expected Created, got {created:?}");
    };
    let again = within("create", store.create(&k, &thing(2), None))
        .await
        .expect("create");
    assert_eq!(
        again,
        CreateOutcome::AlreadyExists {
            mod_revision: revision
        }
    );

    let got = within("get", store.get::<Thing>(&k))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.value, thing(1));
    assert_eq!(got.key, k);
    assert_eq!(
        (got.create_revision, got.mod_revision, got.version),
        (revision, revision, 1)
    );
    assert_eq!(got.lease, None);

    assert!(
        within("cas", store.compare_and_swap(&k, revision, &thing(3)))
            .await
            .expect("cas")
    );
    assert!(
        !within("cas", store.compare_and_swap(&k, revision, &thing(4)))
            .await
            .expect("cas"),
        "a stale revision loses"
    );
    let got = within("get", store.get::<Thing>(&k))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.value, thing(3));
    assert_eq!(got.version, 2);

    within("put", store.put(&format!("{p}/b"), &thing(5), None))
        .await
        .expect("put");
    within(
        "put",
        store.put_raw(&format!("{p}/c"), b"{bad".to_vec(), None),
    )
    .await
    .expect("put");
    let listing = within("list", store.list_raw(&p)).await.expect("list");
    assert_eq!(listing.items.len(), 3);
    assert!(listing.revision >= got.mod_revision);
    let err = within("list", store.list::<Thing>(&p))
        .await
        .expect_err("bad value");
    assert!(
        matches!(&err, Error::Decode { key, .. } if key.ends_with("/c")),
        "{err}"
    );
    assert!(!err.retryable());
    let err = within("get", store.get::<Thing>(&format!("{p}/c")))
        .await
        .expect_err("bad value");
    assert!(err.to_string().contains(&format!("{p}/c")), "{err}");

    assert!(!within("delete_if", store.delete_if(&k, revision))
        .await
        .expect("delete_if"));
    assert!(within("delete_if", store.delete_if(&k, got.mod_revision))
        .await
        .expect("delete_if"));
    assert!(within("delete", store.delete(&format!("{p}/b")))
        .await
        .expect("delete"));
    assert!(!within("delete", store.delete(&format!("{p}/b")))
        .await
        .expect("delete"));
    assert_eq!(
        within("delete_prefix", store.delete_prefix(&p))
            .await
            .expect("dp"),
        1
    );
    assert!(within("list", store.list_raw(&p))
        .await
        .expect("list")
        .items
        .is_empty());
}

#[tokio::test]
async fn list_pages_at_one_revision() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let store = within(
        "connect",
        Store::connect(StoreConfig {
            page_size: 7,
            ..config(etcd.endpoints())
        }),
    )
    .await
    .expect("connect");
    let p = unique_prefix();
    let ops: Vec<Op> = (0..50)
        .map(|i| Op::put(format!("{p}/{i:03}"), &thing(i), None).expect("encode"))
        .collect();
    let outcome = within("batch", store.commit_batched(ops, None)).await;
    assert!(outcome.iter().all(|c| c.result.is_ok()));
    // A neighbour key outside the prefix must not leak in.
    within("put", store.put(&format!("{p}0"), &thing(99), None))
        .await
        .expect("put");

    let listing = within("list", store.list::<Thing>(&format!("{p}/")))
        .await
        .expect("list");
    assert_eq!(listing.items.len(), 50, "all pages");
    let ns: Vec<u32> = listing.items.iter().map(|v| v.value.n).collect();
    assert_eq!(
        ns,
        (0..50).collect::<Vec<_>>(),
        "sorted by key, no duplicates"
    );
}

#[tokio::test]
async fn racing_writers_exactly_one_wins() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let a = connect(etcd.endpoints()).await;
    let b = connect(etcd.endpoints()).await;
    let k = format!("{}/race", unique_prefix());
    within("put", a.put(&k, &thing(0), None))
        .await
        .expect("put");
    let rev = within("get", a.get::<Thing>(&k))
        .await
        .expect("get")
        .expect("exists")
        .mod_revision;

    for round in 0..20 {
        let cur = within("get", a.get::<Thing>(&k))
            .await
            .expect("get")
            .expect("exists");
        let (ra, rb) = within(
            "race",
            futures::future::join(
                a.compare_and_swap(&k, cur.mod_revision, &thing(1000 + round)),
                b.compare_and_swap(&k, cur.mod_revision, &thing(2000 + round)),
            ),
        )
        .await;
        let wins = [ra.expect("a"), rb.expect("b")]
            .iter()
            .filter(|w| **w)
            .count();
        assert_eq!(wins, 1, "round {round}: exactly one writer wins");
    }
    let end = within("get", a.get::<Thing>(&k))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(end.version, 21);
    assert!(end.mod_revision > rev);
}

#[tokio::test]
async fn batched_commit_of_300_ops_in_chunks() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let store = connect(etcd.endpoints()).await;
    let p = unique_prefix();
    let ops: Vec<Op> = (0..300)
        .map(|i| Op::put(format!("{p}/{i:04}"), &thing(i), None).expect("encode"))
        .collect();
    let chunks = within("batch", store.commit_batched(ops, None)).await;
    let ranges: Vec<_> = chunks.iter().map(|c| c.ops.clone()).collect();
    assert_eq!(ranges, vec![0..128, 128..256, 256..300]);
    let revs: Vec<i64> = chunks
        .iter()
        .map(|c| *c.result.as_ref().expect("chunk ok"))
        .collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "one revision per chunk: {revs:?}"
    );
    let listing = within("list", store.list_raw(&p)).await.expect("list");
    assert_eq!(listing.items.len(), 300);

    // Deleting them back in one batch.
    let dels: Vec<Op> = listing
        .items
        .iter()
        .map(|v| Op::delete(v.key.clone()))
        .collect();
    let chunks = within("batch", store.commit_batched(dels, None)).await;
    assert!(chunks.iter().all(|c| c.result.is_ok()));
    assert!(within("list", store.list_raw(&p))
        .await
        .expect("list")
        .items
        .is_empty());
}

#[tokio::test]
async fn txn_op_limit_counts_compares_and_ops_separately() {
    // Measured etcd 3.4 semantics behind `commit`'s check: compares and ops are each limited
    // to --max-txn-ops (128), not their sum.
    let etcd = within("etcd", EtcdServer::start()).await;
    let store = connect(etcd.endpoints()).await;
    let p = unique_prefix();
    let mut txn = Txn::new();
    for i in 0..128 {
        txn = txn
            .when(drover_store::Cmp::Absent(format!("{p}/{i}")))
            .put(format!("{p}/{i}"), &i, None)
            .expect("encode");
    }
    let out = within("commit", store.commit(txn.clone(), None))
        .await
        .expect("128 + 128 fits");
    assert!(out.succeeded);

    let too_big = txn.put(format!("{p}/extra"), &0, None).expect("encode");
    let err = within("commit", store.commit(too_big.clone(), None))
        .await
        .expect_err("129 ops");
    assert!(
        matches!(err, Error::TooManyOps { ops: 129, max: 128 }),
        "{err}"
    );

    // And etcd itself agrees when our check is lifted.
    let lax = within(
        "connect",
        Store::connect(StoreConfig {
            max_txn_ops: 1000,
            ..config(etcd.endpoints())
        }),
    )
    .await
    .expect("connect");
    let err = within("commit", lax.commit(too_big, None))
        .await
        .expect_err("server limit");
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    assert!(err.to_string().contains("too many operations"), "{err}");
}

#[tokio::test]
async fn connecting_to_a_dead_endpoint_fails_fast_and_clearly() {
    let port = drover_testkit::free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let err = within("connect", Store::connect(config(vec![endpoint.clone()])))
        .await
        .expect_err("nothing listens there");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().contains(&endpoint),
        "names the endpoint: {err}"
    );
    assert!(err.retryable());

    let err = Store::connect(StoreConfig::new(Vec::<String>::new()))
        .await
        .expect_err("no endpoints");
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    let _ = T;
}

/// A reply lost after etcd applied the txn (the testkit proxy drops the answer to the request
/// carrying a marker) is `OutcomeUnknown`, never a success or a plain failure, and the txn did
/// land: the case every caller of `commit` must settle by reading back.
#[tokio::test]
async fn a_lost_commit_reply_is_outcome_unknown_and_the_txn_landed() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let proxy = drover_testkit::TcpProxy::start(etcd.client_addr()).await;
    proxy.lose_reply_to(b"lose-this-reply");
    let via_proxy = connect(vec![proxy.url()]).await;
    let direct = connect(etcd.endpoints()).await;
    let p = unique_prefix();
    let marked = Thing {
        name: "lose-this-reply".into(),
        n: 1,
    };
    let txn = Txn::new()
        .put(format!("{p}/marked"), &marked, None)
        .expect("encode");
    let err = within("commit", via_proxy.commit(txn, None))
        .await
        .expect_err("the reply was lost");
    assert!(
        matches!(err, Error::OutcomeUnknown { .. }),
        "expected OutcomeUnknown, got {err:?}"
    );
    assert_eq!(proxy.replies_lost(), 1);
    let landed = within("get", direct.get::<Thing>(&format!("{p}/marked")))
        .await
        .expect("get")
        .expect("the txn landed although its reply was lost");
    assert_eq!(landed.value, marked);

    // One-shot: the same client's next write goes through.
    let txn = Txn::new()
        .put(format!("{p}/next"), &marked, None)
        .expect("encode");
    within("commit", via_proxy.commit(txn, None))
        .await
        .expect("the next commit passes");
    assert_eq!(proxy.replies_lost(), 1);
}

#[tokio::test]
async fn count_db_size_compact_and_defragment() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let store = connect(etcd.endpoints()).await;
    let p = unique_prefix();
    for n in 0..5 {
        within("put", store.put(&format!("{p}/c/{n}"), &thing(n), None))
            .await
            .expect("put");
    }
    within("put", store.put(&format!("{p}/d"), &thing(9), None))
        .await
        .expect("put");
    let counted = within("count", store.count(&format!("{p}/c/")))
        .await
        .expect("count");
    assert_eq!(counted.count, 5, "only the keys under the prefix");
    assert!(counted.revision > 0);
    let size = within("status", store.db_size()).await.expect("status");
    assert!(size.total > 0 && size.in_use > 0 && size.in_use <= size.total);

    within("compact", store.compact(counted.revision))
        .await
        .expect("compact");
    let error = within("compact again", store.compact(counted.revision - 1))
        .await
        .expect_err("an old revision is compacted already");
    assert!(matches!(error, Error::Compacted { .. }), "{error}");
    within("defragment", store.defragment())
        .await
        .expect("defragment");
    let counted = within("count", store.count(&format!("{p}/c/")))
        .await
        .expect("count");
    assert_eq!(counted.count, 5, "compaction keeps the current values");
}

#[tokio::test]
async fn get_raw_each_reads_every_key_in_order_foreign_bytes_and_absent_keys_included() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let store = connect(etcd.endpoints()).await;
    let p = unique_prefix();
    let (foreign, absent, ours) = (format!("{p}/a"), format!("{p}/b"), format!("{p}/c"));
    // A value Drover did not write: not JSON at all.
    within(
        "put foreign",
        store.put_raw(&foreign, b"\xff{not json".to_vec(), None),
    )
    .await
    .expect("put foreign");
    let written = within("put ours", store.put(&ours, &thing(3), None))
        .await
        .expect("put ours");

    let found = within("get each", store.get_raw_each(&[&ours, &absent, &foreign]))
        .await
        .expect("get each");
    assert_eq!(found.len(), 3, "one answer per key, in the order asked");
    let ours_found = found[0].as_ref().expect("ours is there");
    assert_eq!(ours_found.key, ours);
    assert_eq!(ours_found.mod_revision, written);
    let decoded: Thing = serde_json::from_slice(&ours_found.value).expect("ours decodes");
    assert_eq!(decoded, thing(3));
    assert!(found[1].is_none(), "an absent key reads as absent");
    let foreign_found = found[2].as_ref().expect("the foreign value is there");
    assert_eq!(foreign_found.value, b"\xff{not json".to_vec());

    let none = within("get none", store.get_raw_each(&[]))
        .await
        .expect("get none");
    assert!(none.is_empty());
}

#[test]
fn the_test_kits_etcd_gets_the_server_flags_drover_gives_its_own() {
    assert_eq!(
        drover_testkit::ETCD_SERVER_FLAGS,
        drover_store::ETCD_SERVER_FLAGS
    );
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../hack/etcd.sh"))
            .expect("hack/etcd.sh");
    for flag in drover_store::ETCD_SERVER_FLAGS {
        assert!(script.contains(flag), "hack/etcd.sh does not pass {flag}");
    }
}

#[tokio::test]
async fn commit_each_applies_each_nested_txn_by_its_own_compare_within_etcds_limits() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let store = connect(etcd.endpoints()).await;
    let p = unique_prefix();
    let guard = |i: u32| format!("{p}/guard/{i}");
    let mut revs = Vec::new();
    for i in 0..3 {
        revs.push(
            within("put guard", store.put(&guard(i), &thing(i), None))
                .await
                .expect("guard"),
        );
    }
    // A writer that is not Drover re-creates guard 1 (a new create revision) with bytes that
    // are not even JSON: its nested txn must fail alone.
    within("delete", store.delete(&guard(1)))
        .await
        .expect("delete");
    within(
        "foreign put",
        store.put_raw(&guard(1), b"\xffnot json".to_vec(), None),
    )
    .await
    .expect("foreign");
    let txns: Vec<Txn> = (0..3u32)
        .map(|i| {
            Txn::new()
                .when(drover_store::Cmp::CreateRevision(
                    guard(i),
                    revs[i as usize],
                ))
                .put(format!("{p}/out/{i}"), &thing(i), None)
                .expect("encode")
        })
        .collect();
    let outcomes = within("commit each", store.commit_each(&txns))
        .await
        .expect("commit each");
    assert_eq!(
        outcomes.iter().map(|o| o.succeeded).collect::<Vec<_>>(),
        [true, false, true]
    );
    assert!(outcomes.iter().all(|o| o.revision == outcomes[0].revision));
    for (i, written) in [(0, true), (1, false), (2, true)] {
        let got = within("get", store.get::<Thing>(&format!("{p}/out/{i}")))
            .await
            .expect("get");
        assert_eq!(got.map(|v| v.value), written.then(|| thing(i)), "out/{i}");
    }

    // etcd counts a nested txn against what the outer one leaves of the limit: 65 nested txns
    // of 64 puts each is refused before sending, and etcd agrees when our check is lifted.
    let wide: Vec<Txn> = (0..65u32)
        .map(|t| {
            (0..64u32).fold(Txn::new(), |txn, i| {
                txn.put(format!("{p}/wide/{t}/{i}"), &i, None)
                    .expect("encode")
            })
        })
        .collect();
    let err = within("too wide", store.commit_each(&wide))
        .await
        .expect_err("over the limit");
    assert!(matches!(err, Error::TooManyOps { max: 128, .. }), "{err}");
    let lax = within(
        "connect",
        Store::connect(StoreConfig {
            max_txn_ops: 1000,
            ..config(etcd.endpoints())
        }),
    )
    .await
    .expect("connect");
    let err = within("too wide, unchecked", lax.commit_each(&wide))
        .await
        .expect_err("server limit");
    assert!(err.to_string().contains("too many operations"), "{err}");

    // Two nested txns writing one key: etcd refuses the whole request, nothing applies.
    let twice = [
        Txn::new()
            .put(format!("{p}/twice"), &1, None)
            .expect("encode"),
        Txn::new()
            .put(format!("{p}/twice"), &2, None)
            .expect("encode"),
    ];
    let err = within("twice", store.commit_each(&twice))
        .await
        .expect_err("duplicate key");
    assert!(err.to_string().contains("duplicate key"), "{err}");
    assert!(within("get", store.get::<u32>(&format!("{p}/twice")))
        .await
        .expect("get")
        .is_none());
}

#[tokio::test]
async fn a_read_txn_whose_reply_is_over_grpcs_default_4_mib_is_read_whole() {
    // 20 values of 250 KiB (task specs may be 256 KiB): about 5 MiB in one reply, over tonic's
    // default decode limit, under the store's `max_response_bytes`.
    let etcd = within("etcd", EtcdServer::start()).await;
    let store = connect(etcd.endpoints()).await;
    let p = unique_prefix();
    let keys: Vec<String> = (0..20).map(|i| format!("{p}/big/{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let value = vec![b'a' + u8::try_from(i).expect("small"); 250 * 1024];
        within("put", store.put_raw(key, value, None))
            .await
            .expect("put");
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let found = within("get each", store.get_raw_each(&refs))
        .await
        .expect("a 5 MiB reply is read");
    assert_eq!(found.len(), 20);
    for (i, v) in found.iter().enumerate() {
        let v = v.as_ref().expect("present");
        assert_eq!(v.value.len(), 250 * 1024);
        assert_eq!(v.value[0], b'a' + u8::try_from(i).expect("small"));
    }
}
