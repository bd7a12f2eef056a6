//! Tests of the testkit itself against real etcd processes and sockets.

use std::time::Duration;

use drover_testkit::{wait_for, EtcdCluster, EtcdOptions, EtcdServer, TcpProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(15);

#[tokio::test]
async fn server_starts_kills_and_restarts_with_its_data() {
    let mut etcd = timeout(T, EtcdServer::start()).await.expect("start");
    assert!(etcd.is_running());
    let port_before = etcd.client_addr();
    timeout(T, etcd.etcdctl(&["put", "/k", "v1"]))
        .await
        .expect("timeout")
        .expect("put");

    etcd.kill();
    assert!(!etcd.is_running());
    assert!(
        TcpStream::connect(port_before).await.is_err(),
        "port must be closed after kill"
    );

    timeout(T, etcd.restart()).await.expect("restart");
    assert_eq!(etcd.client_addr(), port_before);
    let got = timeout(T, etcd.etcdctl(&["get", "/k", "--print-value-only"]))
        .await
        .expect("timeout")
        .expect("get");
    assert_eq!(got.trim(), "v1");
    assert!(etcd.data_dir().exists());
}

#[tokio::test]
async fn compact_makes_old_revisions_unreadable() {
    let etcd = timeout(T, EtcdServer::start()).await.expect("start");
    for i in 0..3 {
        let v = format!("v{i}");
        timeout(T, etcd.etcdctl(&["put", "/c", &v]))
            .await
            .expect("timeout")
            .expect("put");
    }
    timeout(T, etcd.compact(3))
        .await
        .expect("timeout")
        .expect("compact");
    let err = timeout(T, etcd.etcdctl(&["get", "/c", "--rev=2"]))
        .await
        .expect("timeout")
        .expect_err("revision 2 is compacted");
    assert!(err.to_string().contains("compacted"), "{err}");
}

#[tokio::test]
async fn cluster_comes_up_and_survives_a_killed_member() {
    let mut cluster = timeout(Duration::from_secs(30), EtcdCluster::start(3))
        .await
        .expect("start");
    assert_eq!(cluster.endpoints().len(), 3);
    let out = timeout(T, cluster.etcdctl(&["member", "list"]))
        .await
        .expect("timeout")
        .expect("member list");
    assert_eq!(out.lines().count(), 3, "{out}");

    cluster.kill_member(0);
    // The two survivors keep a quorum: writes through them succeed.
    let survivors = vec![
        cluster.member(1).client_url(),
        cluster.member(2).client_url(),
    ];
    let ok = wait_for(T, Duration::from_millis(100), || {
        let survivors = survivors.clone();
        async move {
            let out = tokio::process::Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg("--endpoints")
                .arg(survivors.join(","))
                .args(["put", "/after-kill", "x"])
                .output()
                .await
                .ok()?;
            out.status.success().then_some(())
        }
    })
    .await;
    ok.expect("writes work with one member down");

    timeout(T, cluster.restart_member(0))
        .await
        .expect("restart member");
    let got = timeout(
        T,
        cluster
            .member(0)
            .etcdctl(&["get", "/after-kill", "--print-value-only"]),
    )
    .await
    .expect("timeout")
    .expect("get from restarted member");
    assert_eq!(got.trim(), "x");
}

async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

#[tokio::test]
async fn proxy_forwards_cuts_blackholes_and_restores() {
    let target = echo_server().await;
    let proxy = TcpProxy::start(target).await;

    let mut conn = TcpStream::connect(proxy.addr()).await.expect("connect");
    let got = timeout(T, roundtrip(&mut conn, b"hello"))
        .await
        .expect("t")
        .expect("io");
    assert_eq!(got, b"hello");

    // Blackhole: bytes stall, then flow again after restore.
    proxy.blackhole();
    tokio::time::sleep(Duration::from_millis(50)).await; // let the pumps see the mode change
    conn.write_all(b"stall").await.expect("write is buffered");
    let mut buf = [0u8; 5];
    assert!(
        timeout(Duration::from_millis(300), conn.read_exact(&mut buf))
            .await
            .is_err(),
        "nothing may pass a blackhole"
    );
    proxy.restore();
    timeout(T, conn.read_exact(&mut buf))
        .await
        .expect("t")
        .expect("io");
    assert_eq!(&buf, b"stall");

    // Cut: the open connection is closed and new ones are refused.
    proxy.cut();
    let closed = timeout(T, async {
        let mut b = [0u8; 1];
        matches!(conn.read(&mut b).await, Ok(0) | Err(_))
    })
    .await
    .expect("cut must close the connection");
    assert!(closed);
    wait_for(T, Duration::from_millis(20), || async {
        TcpStream::connect(proxy.addr())
            .await
            .is_err()
            .then_some(())
    })
    .await
    .expect("new connections are refused while cut");

    proxy.restore();
    let mut conn = wait_for(T, Duration::from_millis(20), || async {
        TcpStream::connect(proxy.addr()).await.ok()
    })
    .await
    .expect("listening again after restore");
    let got = timeout(T, roundtrip(&mut conn, b"again"))
        .await
        .expect("t")
        .expect("io");
    assert_eq!(got, b"again");
}

#[tokio::test]
async fn proxy_in_front_of_etcd() {
    let etcd = timeout(T, EtcdServer::start()).await.expect("start");
    let proxy = TcpProxy::start(etcd.client_addr()).await;
    let out = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &proxy.url(), "put", "/via-proxy", "1"])
        .output();
    let out = timeout(T, out).await.expect("t").expect("run etcdctl");
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn an_armed_reply_loss_passes_traffic_that_is_not_http2() {
    let target = echo_server().await;
    let proxy = TcpProxy::start(target).await;
    proxy.lose_reply_to(b"hello");
    let mut conn = TcpStream::connect(proxy.addr()).await.expect("connect");
    let got = timeout(T, roundtrip(&mut conn, b"hello, not a preface"))
        .await
        .expect("t")
        .expect("io");
    assert_eq!(got, b"hello, not a preface");
    assert_eq!(proxy.replies_lost(), 0);
}

#[tokio::test]
async fn tls_server_requires_a_client_certificate_and_can_enable_auth() {
    let mut etcd = timeout(T, EtcdServer::start_with(EtcdOptions::tls()))
        .await
        .expect("start");
    assert!(etcd.client_url().starts_with("https://127.0.0.1:"));
    let files = etcd
        .tls_files()
        .expect("a TLS member has certificates")
        .clone();
    timeout(T, etcd.etcdctl(&["put", "/k", "v1"]))
        .await
        .expect("timeout")
        .expect("etcdctl with the client certificate");

    // Without a client certificate (only the CA) etcd refuses the connection.
    let bare = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.client_url()])
        .arg(format!("--cacert={}", files.ca.display()))
        .args(["--dial-timeout=2s", "--command-timeout=3s", "get", "/k"])
        .output();
    let bare = timeout(T, bare)
        .await
        .expect("timeout")
        .expect("etcdctl runs");
    assert!(
        !bare.status.success(),
        "a client without a certificate got in"
    );

    let root = timeout(T, etcd.enable_auth())
        .await
        .expect("timeout")
        .expect("enable auth");
    assert_eq!(
        std::fs::read_to_string(&root.password_file).expect("password file"),
        format!("{}\n", root.password)
    );
    let got = timeout(T, etcd.etcdctl(&["get", "/k", "--print-value-only"]))
        .await
        .expect("timeout")
        .expect("etcdctl as root");
    assert_eq!(got.trim(), "v1");
    // The restarted member still answers its health check (served over plain http).
    timeout(T, etcd.restart()).await.expect("restart");
}

#[tokio::test]
async fn tls_cluster_comes_up_with_peer_tls() {
    let cluster = timeout(
        Duration::from_secs(60),
        EtcdCluster::start_with(3, EtcdOptions::tls()),
    )
    .await
    .expect("start");
    assert!(cluster
        .endpoints()
        .iter()
        .all(|e| e.starts_with("https://")));
    timeout(T, cluster.etcdctl(&["put", "/c", "v"]))
        .await
        .expect("timeout")
        .expect("put over TLS");
    // One line per member that answered over TLS.
    let out = timeout(T, cluster.etcdctl(&["endpoint", "status"]))
        .await
        .expect("timeout")
        .expect("status");
    assert_eq!(
        out.lines().filter(|l| l.contains("https://")).count(),
        3,
        "{out}"
    );
}
