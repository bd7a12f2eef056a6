//! The binary against a TLS etcd with client-certificate auth and etcd's auth on: a controller
//! and an agent reach it with `--etcd-cafile/--etcd-certfile/--etcd-keyfile` and
//! `--etcd-user/--etcd-password-file`, an applied task reaches Running, and the CLI refuses
//! bad credentials with clear messages and exit codes.

mod common;

use std::time::Duration;

use common::{manifest, task_doc, wait_running, Cli, Daemon};
use drover_api::keys::Keys;
use drover_store::{Store, StoreConfig, TlsConfig, UserConfig};
use drover_testkit::{EtcdOptions, EtcdServer, EtcdUser, TlsFiles};

/// The global flags for the TLS files and, when given, a user.
fn access(files: &TlsFiles, user: Option<&EtcdUser>) -> Vec<String> {
    let mut args = vec![
        format!("--etcd-cafile={}", files.ca.display()),
        format!("--etcd-certfile={}", files.client_cert.display()),
        format!("--etcd-keyfile={}", files.client_key.display()),
    ];
    if let Some(user) = user {
        args.push(format!("--etcd-user={}", user.name));
        args.push(format!(
            "--etcd-password-file={}",
            user.password_file.display()
        ));
    }
    args
}

async fn store(etcd: &EtcdServer, files: &TlsFiles, user: &EtcdUser) -> Store {
    let cfg = StoreConfig {
        tls: TlsConfig {
            ca_file: Some(files.ca.clone()),
            cert_file: Some(files.client_cert.clone()),
            key_file: Some(files.client_key.clone()),
        },
        user: Some(UserConfig {
            name: user.name.clone(),
            password_file: user.password_file.clone(),
        }),
        ..StoreConfig::new(etcd.endpoints())
    };
    tokio::time::timeout(Duration::from_secs(15), Store::connect(cfg))
        .await
        .expect("connect in time")
        .expect("store over TLS as root")
}

#[tokio::test]
async fn a_task_runs_with_controller_and_agent_on_a_tls_etcd_with_auth() {
    let mut etcd = EtcdServer::start_with(EtcdOptions::tls()).await;
    let root = etcd.enable_auth().await.expect("auth on");
    let files = etcd.tls_files().expect("TLS member").clone();
    let cli = Cli::with_access(etcd.endpoints(), access(&files, Some(&root)));
    let store = store(&etcd, &files, &root).await;
    let keys = Keys::new(&cli.prefix);

    let controller = Daemon::start(&cli, &["controller", "--id", "c1", "--lease-ttl", "2s"]);
    // Its own state dir: without one the agent keeps its files under ./.drover.
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().to_str().expect("utf-8");
    let agent = Daemon::start(
        &cli,
        &[
            "agent",
            "--node",
            "tls-node",
            "--driver",
            "hollow",
            "--state-dir",
            state_dir,
        ],
    );
    let (_dir, path) = manifest(&task_doc("secure", 2));
    cli.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let running = wait_running(
        &store,
        &keys,
        2,
        &[("controller", &controller), ("agent", &agent)],
    )
    .await;
    assert!(running.iter().all(|s| s.node == "tls-node"), "{running:?}");
    // The CLI reads it back over the same connection settings.
    let listed = cli.ok(&["get", "instances"]).await;
    assert_eq!(listed.matches("Running").count(), 2, "{listed}");
}

#[tokio::test]
async fn bad_credentials_are_refused_with_the_file_or_the_reason() {
    let mut etcd = EtcdServer::start_with(EtcdOptions::tls()).await;
    let root = etcd.enable_auth().await.expect("auth on");
    let files = etcd.tls_files().expect("TLS member").clone();
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // A wrong password: a configuration error naming the user and etcd's reason.
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = EtcdUser {
        password_file: dir.path().join("wrong"),
        ..root.clone()
    };
    std::fs::write(&wrong.password_file, "nope\n").expect("write");
    let cli = Cli::with_access(etcd.endpoints(), access(&files, Some(&wrong)));
    let out = cli.run(&["get", "tasks"]).await;
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused user root")
            && stderr(&out).contains("authentication failed"),
        "{}",
        stderr(&out)
    );

    // A password file that does not exist: named, exit 64.
    let missing = EtcdUser {
        password_file: dir.path().join("missing"),
        ..root.clone()
    };
    let cli = Cli::with_access(etcd.endpoints(), access(&files, Some(&missing)));
    let out = cli.run(&["get", "tasks"]).await;
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&missing.password_file.display().to_string())
            && stderr(&out).contains("--etcd-password-file"),
        "{}",
        stderr(&out)
    );

    // No client certificate: etcd refuses the connection; unavailable (69) with a hint.
    let ca_only = vec![format!("--etcd-cafile={}", files.ca.display())];
    let cli = Cli::with_access(etcd.endpoints(), ca_only);
    let out = cli.run(&["get", "tasks"]).await;
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(
        stderr(&out).to_lowercase().contains("certificate"),
        "{}",
        stderr(&out)
    );

    // An https endpoint without a CA: a usage error naming the flag, before any connection.
    let cli = Cli::new(etcd.endpoints());
    let out = cli.run(&["get", "tasks"]).await;
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("--etcd-cafile"), "{}", stderr(&out));

    // The daemons refuse the same way at start.
    let cli = Cli::with_access(etcd.endpoints(), access(&files, Some(&wrong)));
    let out = cli.run(&["controller", "--id", "c1"]).await;
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}
