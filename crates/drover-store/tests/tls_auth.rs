//! The store against a TLS etcd with client-certificate auth, and with etcd's own auth on:
//! the right files work, a missing client certificate or a wrong CA is refused clearly, a
//! wrong password fails clearly, and expired auth tokens are renewed without the caller
//! noticing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{config, within, T};
use drover_store::{watcher, Error, Event, Store, StoreConfig, TlsConfig, UserConfig};
use drover_testkit::{
    init_tracing, unique_prefix, wait_for, EtcdCluster, EtcdOptions, EtcdServer, EtcdUser, TlsFiles,
};
use futures::StreamExt;

/// A config for `endpoints` with the CA and the client certificate the server trusts.
fn tls_config(endpoints: Vec<String>, files: &TlsFiles) -> StoreConfig {
    StoreConfig {
        tls: TlsConfig {
            ca_file: Some(files.ca.clone()),
            cert_file: Some(files.client_cert.clone()),
            key_file: Some(files.client_key.clone()),
        },
        ..config(endpoints)
    }
}

fn as_user(mut cfg: StoreConfig, user: &EtcdUser) -> StoreConfig {
    cfg.user = Some(UserConfig {
        name: user.name.clone(),
        password_file: user.password_file.clone(),
    });
    cfg
}

async fn tls_etcd() -> EtcdServer {
    init_tracing();
    within("etcd", EtcdServer::start_with(EtcdOptions::tls())).await
}

/// Connecting fails; returns the error's message.
async fn refused(cfg: StoreConfig) -> String {
    match within("connect", Store::connect(cfg)).await {
        Ok(_) => panic!("connected, but etcd should have refused"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn a_store_reads_writes_and_watches_over_tls_with_a_client_certificate() {
    let etcd = tls_etcd().await;
    let files = etcd.tls_files().expect("TLS member");
    let store = within(
        "connect",
        Store::connect(tls_config(etcd.endpoints(), files)),
    )
    .await
    .expect("connect over TLS");
    let p = unique_prefix();
    let mut events = watcher::<String>(store.clone(), format!("{p}/"));
    loop {
        match within("listing", events.next()).await {
            Some(Ok(Event::InitDone { .. })) => break,
            Some(_) => {}
            None => panic!("watch ended"),
        }
    }
    within(
        "put",
        store.put(&format!("{p}/a"), &"one".to_string(), None),
    )
    .await
    .expect("put");
    let got = within("get", store.get::<String>(&format!("{p}/a")))
        .await
        .expect("get")
        .map(|v| v.value);
    assert_eq!(got.as_deref(), Some("one"));
    // The watch sees the write (after the listing's InitDone).
    let applied = within("apply event", async {
        while let Some(ev) = events.next().await {
            if let Ok(Event::Apply(v)) = ev {
                return v.value;
            }
        }
        panic!("watch ended");
    })
    .await;
    assert_eq!(applied, "one");
    // Bare host:port endpoints become https:// once TLS files are set.
    let bare = etcd.endpoints()[0]
        .trim_start_matches("https://")
        .to_string();
    let store = within("connect", Store::connect(tls_config(vec![bare], files)))
        .await
        .expect("connect with host:port");
    within("get", store.get::<String>(&format!("{p}/a")))
        .await
        .expect("get");
}

#[tokio::test]
async fn without_a_client_certificate_etcd_refuses_the_store_clearly() {
    let etcd = tls_etcd().await;
    let files = etcd.tls_files().expect("TLS member");
    let mut cfg = tls_config(etcd.endpoints(), files);
    cfg.tls.cert_file = None;
    cfg.tls.key_file = None;
    let msg = refused(cfg).await;
    assert!(msg.contains("unreachable"), "{msg}");
    assert!(
        msg.to_lowercase().contains("certificate"),
        "the reason names the certificate: {msg}"
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let etcd = tls_etcd().await;
    let files = etcd.tls_files().expect("TLS member");
    let mut cfg = tls_config(etcd.endpoints(), files);
    cfg.tls.cert_file = Some(files.other_client_cert.clone());
    cfg.tls.key_file = Some(files.other_client_key.clone());
    let msg = refused(cfg).await;
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
}

#[tokio::test]
async fn a_wrong_ca_is_refused_clearly() {
    let etcd = tls_etcd().await;
    let files = etcd.tls_files().expect("TLS member");
    let mut cfg = tls_config(etcd.endpoints(), files);
    cfg.tls.ca_file = Some(files.other_ca.clone());
    let msg = refused(cfg).await;
    assert!(msg.contains("unreachable"), "{msg}");
    // rustls: "invalid peer certificate: UnknownIssuer".
    assert!(
        msg.contains("UnknownIssuer"),
        "the reason says whose certificate: {msg}"
    );
}

#[tokio::test]
async fn a_plain_store_cannot_reach_a_tls_etcd() {
    let etcd = tls_etcd().await;
    let plain = etcd.endpoints()[0].replacen("https://", "http://", 1);
    let msg = refused(config(vec![plain])).await;
    assert!(msg.contains("unreachable"), "{msg}");
}

#[tokio::test]
async fn a_missing_key_file_is_named() {
    let etcd = tls_etcd().await;
    let files = etcd.tls_files().expect("TLS member");
    let mut cfg = tls_config(etcd.endpoints(), files);
    let missing = Path::new("/nonexistent/drover/client-key.pem");
    cfg.tls.key_file = Some(missing.to_path_buf());
    let error = within("connect", Store::connect(cfg))
        .await
        .expect_err("the key cannot be read");
    assert!(matches!(error, Error::Credentials { .. }), "{error:?}");
    let msg = error.to_string();
    assert!(
        msg.contains("/nonexistent/drover/client-key.pem") && msg.contains("--etcd-keyfile"),
        "{msg}"
    );
}

#[tokio::test]
async fn with_etcd_auth_on_the_user_works_and_a_wrong_password_fails_clearly() {
    let mut etcd = tls_etcd().await;
    let root = within("enable auth", etcd.enable_auth())
        .await
        .expect("auth on");
    let files = etcd.tls_files().expect("TLS member").clone();
    let store = within(
        "connect",
        Store::connect(as_user(tls_config(etcd.endpoints(), &files), &root)),
    )
    .await
    .expect("connect as root");
    let p = unique_prefix();
    within("put", store.put(&format!("{p}/k"), &"v".to_string(), None))
        .await
        .expect("put as root");
    let lease = within("grant", store.grant(Duration::from_secs(5)))
        .await
        .expect("grant as root");
    let ka = within(
        "keep alive",
        store.keep_alive(lease, Duration::from_secs(5)),
    )
    .await
    .expect("keep-alive as root");
    assert!(ka.is_lost().is_none());

    // A bare etcd-client gets the same TLS and user.
    let mut bare = within(
        "bare client",
        drover_store::bare_client(&as_user(tls_config(etcd.endpoints(), &files), &root)),
    )
    .await
    .expect("bare client as root");
    let got = within("bare get", bare.get(format!("{p}/k"), None))
        .await
        .expect("bare get");
    assert_eq!(got.kvs().len(), 1);

    // The wrong password: etcd's own message, the user and the endpoint, at connect.
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = EtcdUser {
        password_file: dir.path().join("wrong"),
        ..root.clone()
    };
    std::fs::write(&wrong.password_file, "not-the-password\n").expect("write");
    let error = within(
        "connect",
        Store::connect(as_user(tls_config(etcd.endpoints(), &files), &wrong)),
    )
    .await
    .expect_err("a wrong password is refused");
    assert!(matches!(error, Error::AuthFailed { .. }), "{error:?}");
    let msg = error.to_string();
    assert!(
        msg.contains("root") && msg.contains("authentication failed"),
        "{msg}"
    );

    // No user at all: the certificate's CN names no etcd user, so requests are refused.
    let anonymous = within(
        "connect",
        Store::connect(tls_config(etcd.endpoints(), &files)),
    )
    .await
    .expect("connecting needs no user");
    let error = within("get", anonymous.get::<String>(&format!("{p}/k")))
        .await
        .expect_err("a request without a user is refused");
    assert!(matches!(error, Error::Rejected { .. }), "{error:?}");
}

#[tokio::test]
async fn a_users_role_limits_what_the_store_may_write() {
    let mut etcd = tls_etcd().await;
    within("enable auth", etcd.enable_auth())
        .await
        .expect("auth on");
    let p = unique_prefix();
    let user = within("add user", etcd.add_user("limited", &format!("{p}/mine/")))
        .await
        .expect("user");
    let files = etcd.tls_files().expect("TLS member").clone();
    let store = within(
        "connect",
        Store::connect(as_user(tls_config(etcd.endpoints(), &files), &user)),
    )
    .await
    .expect("connect as limited");
    within("put", store.put(&format!("{p}/mine/a"), &1u32, None))
        .await
        .expect("inside the role's prefix");
    let error = within("put", store.put(&format!("{p}/theirs/a"), &1u32, None))
        .await
        .expect_err("outside the role's prefix");
    assert!(error.to_string().contains("permission denied"), "{error}");
}

/// Waits until etcd has expired the auth tokens issued before this call, without using them
/// (every use of a simple token renews it): each poll authenticates-once probe client, made
/// up front, is used exactly once, so the first refused probe shows that tokens idle since
/// then are gone.
async fn wait_until_idle_tokens_expire(endpoint: &str, files: &TlsFiles, root: &EtcdUser) {
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(
            std::fs::read(&files.ca).expect("ca"),
        ))
        .identity(etcd_client::Identity::from_pem(
            std::fs::read(&files.client_cert).expect("cert"),
            std::fs::read(&files.client_key).expect("key"),
        ));
    let options = etcd_client::ConnectOptions::new()
        .with_tls(tls)
        .with_user(root.name.clone(), root.password.clone());
    let mut probes = Vec::new();
    for _ in 0..30 {
        let probe = etcd_client::Client::connect([endpoint], Some(options.clone()));
        probes.push(within("probe", probe).await.expect("probe client"));
    }
    let found = wait_for(T * 3, Duration::from_millis(500), || {
        let probe = probes.pop();
        async move {
            let mut probe = probe.expect("ran out of probes before the tokens expired");
            match probe.get("/probe", None).await {
                Err(e) if e.to_string().contains("invalid auth token") => Some(()),
                _ => None,
            }
        }
    })
    .await;
    found.expect("etcd expires idle tokens (--auth-token-ttl=1)");
}

#[tokio::test]
async fn expired_auth_tokens_are_renewed_for_calls_watches_and_keep_alives() {
    init_tracing();
    let options = EtcdOptions {
        auth_token_ttl: Some(1),
        ..EtcdOptions::tls()
    };
    let mut etcd = within("etcd", EtcdServer::start_with(options)).await;
    let root = within("enable auth", etcd.enable_auth())
        .await
        .expect("auth on");
    let files = etcd.tls_files().expect("TLS member").clone();
    let store = within(
        "connect",
        Store::connect(as_user(tls_config(etcd.endpoints(), &files), &root)),
    )
    .await
    .expect("connect as root");
    let p = unique_prefix();
    let mut events = watcher::<u32>(store.clone(), format!("{p}/w/"));
    loop {
        match within("listing", events.next()).await {
            Some(Ok(Event::InitDone { .. })) => break,
            Some(_) => {}
            None => panic!("watch ended"),
        }
    }
    let ttl = Duration::from_secs(4);
    let lease = within("grant", store.grant(ttl)).await.expect("grant");
    let ka = within("keep alive", store.keep_alive(lease, ttl))
        .await
        .expect("keep-alive");

    // The store's token is not used by the keep-alives: it expires like the probes' do.
    wait_until_idle_tokens_expire(&etcd.endpoints()[0], &files, &root).await;

    // Unary calls re-authenticate and go through.
    within("put", store.put(&format!("{p}/w/a"), &7u32, Some(lease)))
        .await
        .expect("a put after the token expired");
    // The watch opened before expiry still delivers.
    let applied = within("apply event", async {
        while let Some(ev) = events.next().await {
            if let Ok(Event::Apply(v)) = ev {
                return v.value;
            }
        }
        panic!("watch ended");
    })
    .await;
    assert_eq!(applied, 7);
    // Keep-alives carry no token: the lease outlived several tokens and is still held.
    wait_until_idle_tokens_expire(&etcd.endpoints()[0], &files, &root).await;
    assert!(
        ka.is_lost().is_none(),
        "the lease was lost: {:?}",
        ka.is_lost()
    );
    let left = within("lease ttl", store.lease_ttl(lease))
        .await
        .expect("lease ttl");
    assert!(left.is_some(), "the lease is gone on the server");
    // A watcher started after expiry lists and watches (its list re-authenticates).
    let mut late = watcher::<u32>(store.clone(), format!("{p}/w/"));
    let mut listed = Vec::new();
    loop {
        match within("late listing", late.next()).await {
            Some(Ok(Event::InitApply(v))) => listed.push(v.value),
            Some(Ok(Event::InitDone { .. })) => break,
            Some(_) => {}
            None => panic!("watch ended"),
        }
    }
    assert_eq!(listed, [7]);
}

#[tokio::test]
async fn an_authenticated_store_starts_with_a_member_down() {
    init_tracing();
    let mut cluster = within("cluster", EtcdCluster::start_with(3, EtcdOptions::tls())).await;
    let root = within("enable auth", cluster.enable_auth())
        .await
        .expect("auth on");
    let files = cluster.tls_files().expect("TLS cluster").clone();
    // The store knows members 0 and 1 only; member 2 keeps the quorum when either is down.
    let endpoints = cluster.endpoints()[..2].to_vec();
    cluster.kill_member(0);
    // Member 0 led: authenticating (a raft request) waits out the election.
    let cfg = StoreConfig {
        request_timeout: Duration::from_secs(5),
        ..as_user(tls_config(endpoints, &files), &root)
    };
    let store = within("connect", Store::connect(cfg))
        .await
        .expect("member 1 answers");
    let p = unique_prefix();
    within("put", store.put(&format!("{p}/k"), &1u32, None))
        .await
        .expect("put");
    // Member 0 comes back and member 1 goes: member 0's client, never authenticated, is the
    // only one left and authenticates on first use.
    within("restart", cluster.restart_member(0)).await;
    cluster.kill_member(1);
    let got = wait_for(T * 2, Duration::from_millis(100), || async {
        store.get::<u32>(&format!("{p}/k")).await.ok().flatten()
    })
    .await
    .expect("served by the member that was down at start");
    assert_eq!(got.value, 1);
}

#[tokio::test]
async fn a_watch_fails_over_to_a_member_whose_token_expired() {
    init_tracing();
    let options = EtcdOptions {
        auth_token_ttl: Some(1),
        ..EtcdOptions::tls()
    };
    let mut cluster = within("cluster", EtcdCluster::start_with(3, options)).await;
    let root = within("enable auth", cluster.enable_auth())
        .await
        .expect("auth on");
    let files = cluster.tls_files().expect("TLS cluster").clone();
    // The store knows members 0 and 1; both authenticate at connect, then member 1 idles.
    let cfg = StoreConfig {
        request_timeout: Duration::from_secs(5),
        ..as_user(tls_config(cluster.endpoints()[..2].to_vec(), &files), &root)
    };
    let store = within("connect", Store::connect(cfg))
        .await
        .expect("connect");
    let p = unique_prefix();
    within("first put", store.put(&format!("{p}/a"), &1u32, None))
        .await
        .expect("put");
    // The watch runs in the background from here on: it lists, then opens on member 0.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut events = watcher::<u32>(store.clone(), format!("{p}/"));
    let pump = tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            if let Ok(Event::Apply(v) | Event::InitApply(v)) = ev {
                if tx.send(v.value).is_err() {
                    return;
                }
            }
        }
    });
    assert_eq!(within("listed", rx.recv()).await, Some(1));
    within("second put", store.put(&format!("{p}/a"), &2u32, None))
        .await
        .expect("put");
    assert_eq!(
        within("watched", rx.recv()).await,
        Some(2),
        "the watch is open"
    );
    wait_until_idle_tokens_expire(&cluster.endpoints()[1], &files, &root).await;
    // Member 0 goes: the watch reopens on member 1 with the token it got at connect, long
    // expired (this store sends member 1 nothing else: the next write goes through a store
    // of its own on member 2). etcd cancels that watch ("permission denied"); the watcher
    // gets a new token and resumes, losing nothing.
    cluster.kill_member(0);
    // Authenticating takes a raft round: while the members elect a new leader (member 0 may
    // have led) it goes unanswered, so connect until it is answered.
    let writer_cfg = as_user(
        tls_config(vec![cluster.endpoints()[2].clone()], &files),
        &root,
    );
    let writer = wait_for(T * 2, Duration::from_millis(100), || {
        let cfg = writer_cfg.clone();
        async move { Store::connect(cfg).await.ok() }
    })
    .await
    .expect("writer on member 2 once a leader is elected");
    let wrote = wait_for(T * 2, Duration::from_millis(100), || async {
        writer.put(&format!("{p}/a"), &3u32, None).await.ok()
    })
    .await;
    wrote.expect("member 2 takes writes once a leader is elected");
    let seen = wait_for(T * 2, Duration::from_millis(10), || {
        let got = rx.try_recv().ok();
        async move { got.filter(|v| *v == 3) }
    })
    .await;
    assert_eq!(seen.ok(), Some(3), "the watch resumed on member 1");
    pump.abort();
}
