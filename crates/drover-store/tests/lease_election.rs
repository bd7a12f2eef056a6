//! Integration tests of leases, keep-alive loss detection, election and fencing.

mod common;

use std::time::Duration;

use common::{connect, within, POLL, T};
use drover_store::{Election, Error, LeaseLost, Op, Txn};
use drover_testkit::{unique_prefix, wait_for, EtcdServer};
use tokio::time::Instant;

#[tokio::test]
async fn keep_alive_reports_server_side_revoke_within_one_interval() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let store = connect(etcd.endpoints()).await;
    let ttl = Duration::from_secs(3);
    let lease = within("grant", store.grant(ttl)).await.expect("grant");
    let ka = within("keep_alive", store.keep_alive(lease, ttl))
        .await
        .expect("keep_alive");
    assert_eq!(ka.interval(), ttl / 6);

    // It keeps the lease alive past its TTL.
    let k = format!("{}/node", unique_prefix());
    within("put", store.put(&k, &"up", Some(lease)))
        .await
        .expect("put");
    let first_ack = ka.last_ack_sent_at();
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    assert!(ka.is_lost().is_none());
    assert!(ka.last_ack_sent_at() > first_ack, "acks move forward");
    assert!(Instant::now() - ka.last_ack_sent_at() <= ka.interval() + Duration::from_millis(500));
    assert!(within("get", store.get::<String>(&k))
        .await
        .expect("get")
        .is_some());

    // Revoked by someone else: the loop notices at its next ping.
    let other = connect(etcd.endpoints()).await;
    let revoked_at = Instant::now();
    within("revoke", other.revoke(lease)).await.expect("revoke");
    let reason = within("lost", ka.lost()).await;
    let took = revoked_at.elapsed();
    let bound = ka.interval()
        + store
            .config()
            .request_timeout
            .min(Duration::from_millis(500));
    assert_eq!(reason, LeaseLost::NotFound);
    assert!(
        took <= bound,
        "loss noticed after {took:?}, bound {bound:?}"
    );
    assert!(within("get", store.get::<String>(&k))
        .await
        .expect("get")
        .is_none());

    // Keeping a gone lease alive is a typed error.
    let err = within("keep_alive", store.keep_alive(lease, ttl))
        .await
        .expect_err("gone");
    assert!(matches!(err, Error::LeaseNotFound { .. }), "{err}");
    assert_eq!(
        within("ttl", store.lease_ttl(lease)).await.expect("ttl"),
        None
    );
}

#[tokio::test]
async fn keep_alive_reports_deadline_when_etcd_is_gone() {
    let mut etcd = within("etcd", EtcdServer::start()).await;
    let store = connect(etcd.endpoints()).await;
    let ttl = Duration::from_secs(2);
    let lease = within("grant", store.grant(ttl)).await.expect("grant");
    let ka = within("keep_alive", store.keep_alive(lease, ttl))
        .await
        .expect("keep_alive");
    etcd.kill();
    let reason = within("lost", ka.lost()).await;
    assert_eq!(reason, LeaseLost::Deadline);
    let since_ack = Instant::now() - ka.last_ack_sent_at();
    assert!(
        since_ack >= ttl,
        "declared lost only at last_ack_sent_at + ttl ({since_ack:?})"
    );
    assert!(
        since_ack <= ttl + Duration::from_millis(500),
        "{since_ack:?}"
    );
}

#[tokio::test]
async fn fence_of_a_resigned_leader_is_rejected() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let store = connect(etcd.endpoints()).await;
    let p = unique_prefix();
    let election = Election::new(store.clone(), format!("{p}/leader"));
    let ttl = Duration::from_secs(5);
    let l1 = within("grant", store.grant(ttl)).await.expect("grant");
    let _ka1 = within("ka", store.keep_alive(l1, ttl)).await.expect("ka");
    let leader = within("campaign", election.campaign(&"ctrl-1", l1))
        .await
        .expect("campaign");
    let fence = leader.fence().clone();

    let info = within("leader", election.leader::<String>())
        .await
        .expect("leader")
        .expect("some");
    assert_eq!(
        (info.value.as_str(), info.create_revision),
        ("ctrl-1", fence.create_revision)
    );

    // Fenced writes work while leading; an ordinary lost compare is not `Fenced`.
    let k = format!("{p}/assignments/x");
    let txn = Txn::new().put(k.clone(), &1, None).expect("encode");
    let out = within("commit", store.commit(txn, Some(&fence)))
        .await
        .expect("commit");
    assert!(out.succeeded);
    let lost_cas = Txn::new()
        .when(drover_store::Cmp::ModRevision(k.clone(), 1))
        .put(k.clone(), &2, None)
        .expect("encode");
    let out = within("commit", store.commit(lost_cas, Some(&fence)))
        .await
        .expect("not fenced");
    assert!(!out.succeeded);

    // A second candidate waits; resigning hands over.
    let l2 = within("grant", store.grant(ttl)).await.expect("grant");
    let _ka2 = within("ka", store.keep_alive(l2, ttl)).await.expect("ka");
    let e2 = election.clone();
    let second = tokio::spawn(async move { e2.campaign(&"ctrl-2", l2).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second.is_finished(), "only one leader at a time");

    within("resign", leader.resign()).await.expect("resign");
    let txn = Txn::new().put(k.clone(), &3, None).expect("encode");
    let err = within("commit", store.commit(txn, Some(&fence)))
        .await
        .expect_err("fenced");
    assert!(
        matches!(&err, Error::Fenced { expected_create_revision, .. } if *expected_create_revision == fence.create_revision),
        "{err}"
    );
    let chunks = within(
        "batch",
        store.commit_batched(vec![Op::delete(k.clone())], Some(&fence)),
    )
    .await;
    assert!(matches!(chunks[0].result, Err(Error::Fenced { .. })));

    let leader2 = within("second", second)
        .await
        .expect("join")
        .expect("elected");
    assert_ne!(leader2.fence(), &fence);
    let info = within("leader", election.leader::<String>())
        .await
        .expect("leader")
        .expect("some");
    assert_eq!(info.value, "ctrl-2");
    let txn = Txn::new().put(k, &4, None).expect("encode");
    assert!(
        within("commit", store.commit(txn, Some(leader2.fence())))
            .await
            .expect("ok")
            .succeeded
    );
}

#[tokio::test]
async fn fence_of_a_leader_whose_lease_expired_is_rejected() {
    let etcd = within("etcd", EtcdServer::start()).await;
    let store = connect(etcd.endpoints()).await;
    let p = unique_prefix();
    let election = Election::new(store.clone(), format!("{p}/leader"));
    let ttl = Duration::from_secs(2);
    let lease = within("grant", store.grant(ttl)).await.expect("grant");
    let ka = within("ka", store.keep_alive(lease, ttl))
        .await
        .expect("ka");
    let leader = within("campaign", election.campaign(&"ctrl-1", lease))
        .await
        .expect("campaign");
    let fence = leader.fence().clone();

    ka.stop();
    within("leadership lost", leader.lost()).await;
    assert!(leader.is_lost());
    let txn = Txn::new().put(format!("{p}/x"), &1, None).expect("encode");
    let err = within("commit", store.commit(txn, Some(&fence)))
        .await
        .expect_err("fenced");
    assert!(
        matches!(
            err,
            Error::Fenced {
                actual_create_revision: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.retryable());
    assert!(within("leader", election.leader::<String>())
        .await
        .expect("leader")
        .is_none());
}

#[tokio::test]
async fn cancelled_campaign_withdraws_and_observe_follows_leaders() {
    use futures::StreamExt;

    let etcd = within("etcd", EtcdServer::start()).await;
    let store = connect(etcd.endpoints()).await;
    let p = unique_prefix();
    let election = Election::new(store.clone(), format!("{p}/leader"));
    let ttl = Duration::from_secs(5);
    let mut observed = Box::pin(election.observe::<String>());
    assert_eq!(
        within("observe", observed.next())
            .await
            .expect("item")
            .expect("ok"),
        None
    );

    let l1 = within("grant", store.grant(ttl)).await.expect("grant");
    let leader = within("campaign", election.campaign(&"a", l1))
        .await
        .expect("campaign");
    let seen = within("observe", observed.next())
        .await
        .expect("item")
        .expect("ok");
    assert_eq!(seen.map(|l| l.value), Some("a".to_string()));

    // A campaign that is dropped while waiting leaves no candidate key behind.
    let l2 = within("grant", store.grant(ttl)).await.expect("grant");
    let waiting =
        tokio::time::timeout(Duration::from_millis(300), election.campaign(&"b", l2)).await;
    assert!(waiting.is_err(), "must still be waiting");
    wait_for(T, POLL, || async {
        let keys = store.list_raw(&format!("{p}/leader/")).await.ok()?;
        (keys.items.len() == 1).then_some(())
    })
    .await
    .expect("abandoned candidacy withdrawn");

    within("resign", leader.resign()).await.expect("resign");
    let seen = within("observe", observed.next())
        .await
        .expect("item")
        .expect("ok");
    assert_eq!(seen, None);
}
