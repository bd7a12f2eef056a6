//! Least privilege through etcd's own roles, on a TLS etcd: `drover admin bootstrap` makes the
//! controller's, the users' and one role per node and turns auth on; then etcd itself refuses
//! an agent's writes outside its own node and a user's writes to what the leader decides, and
//! a cluster whose every process holds only its own credentials runs, survives a node's death
//! and a leader's, and serves `drover logs` over mTLS.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{manifest, running_statuses, task_doc, wait_running, Cli, Daemon};
use drover_api::keys::Keys;
use drover_api::InstanceId;
use drover_store::{Store, StoreConfig, TlsConfig, UserConfig};
use drover_testkit::{wait_for, EtcdOptions, EtcdServer, TlsFiles};

fn tls_flags(files: &TlsFiles) -> Vec<String> {
    vec![
        format!("--etcd-cafile={}", files.ca.display()),
        format!("--etcd-certfile={}", files.client_cert.display()),
        format!("--etcd-keyfile={}", files.client_key.display()),
    ]
}

/// A CLI context on `base`'s etcd and prefix that authenticates as `user`, whose password
/// bootstrap wrote to `<dir>/<user>.password`.
fn as_user(base: &Cli, files: &TlsFiles, dir: &Path, user: &str) -> Cli {
    let mut access = tls_flags(files);
    access.push(format!("--etcd-user={user}"));
    access.push(format!(
        "--etcd-password-file={}",
        dir.join(format!("{user}.password")).display()
    ));
    Cli {
        endpoints: base.endpoints.clone(),
        prefix: base.prefix.clone(),
        access,
    }
}

async fn store_as(etcd: &EtcdServer, files: &TlsFiles, dir: &Path, user: &str) -> Store {
    let cfg = StoreConfig {
        tls: TlsConfig {
            ca_file: Some(files.ca.clone()),
            cert_file: Some(files.client_cert.clone()),
            key_file: Some(files.client_key.clone()),
        },
        user: Some(UserConfig {
            name: user.into(),
            password_file: dir.join(format!("{user}.password")),
        }),
        ..StoreConfig::new(etcd.endpoints())
    };
    tokio::time::timeout(Duration::from_secs(15), Store::connect(cfg))
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("store as {user}: {e}"))
}

/// Bootstraps `nodes` on a fresh TLS etcd (auth off until then); returns the credentials dir.
async fn bootstrap(base: &Cli, nodes: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("creds");
    let mut args = vec![
        "admin".to_string(),
        "bootstrap".into(),
        format!("--credentials-dir={}", creds.display()),
    ];
    args.extend(nodes.iter().map(|n| format!("--node={n}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = base.ok(&args).await;
    assert!(out.contains("etcd authentication on"), "{out}");
    dir
}

/// Whether etcd lets `store` put `key` (a refusal must be etcd's permission error).
async fn may_put(store: &Store, key: &str) -> bool {
    match store.put_raw(key, b"{}".to_vec(), None).await {
        Ok(_) => true,
        Err(error) => {
            assert!(
                error.to_string().contains("permission denied"),
                "{key}: refused for another reason: {error}"
            );
            false
        }
    }
}

#[tokio::test]
async fn etcd_refuses_an_agent_outside_its_node_and_a_user_on_assignments() {
    let etcd = EtcdServer::start_with(EtcdOptions::tls()).await;
    let files = etcd.tls_files().expect("TLS member").clone();
    let base = Cli::with_access(etcd.endpoints(), tls_flags(&files));
    let dir = bootstrap(&base, &["n1", "n2"]).await;
    let creds = dir.path().join("creds");
    for user in ["root", "drover-controller", "drover-user", "drover-node-n1"] {
        let file = creds.join(format!("{user}.password"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file)
                .expect("password file")
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{} is readable by others", file.display());
    }
    let keys = Keys::new(&base.prefix);
    let id = InstanceId::service("default", "web", 0).expect("id");

    let n1 = store_as(&etcd, &files, &creds, "drover-node-n1").await;
    assert!(may_put(&n1, &keys.node("n1")).await, "its own node key");
    assert!(
        may_put(&n1, &keys.status("n1", &id)).await,
        "its own status"
    );
    for key in [
        keys.node("n2"),
        keys.assignment("n1", &id),
        keys.assignment("n2", &id),
        keys.status("n2", &id),
        keys.legacy_status(&id),
        keys.task("default", "web"),
        keys.nodeinfo("n1"),
        keys.taskstate("default", "web"),
    ] {
        assert!(!may_put(&n1, &key).await, "node n1 may write {key}");
    }
    // It reads what it needs, not other nodes' assignments.
    assert!(n1.list_raw(&keys.node_assignments("n1")).await.is_ok());
    let other = n1.list_raw(&keys.node_assignments("n2")).await;
    assert!(
        other.is_err_and(|e| e.to_string().contains("permission denied")),
        "node n1 reads n2's assignments"
    );

    let user = store_as(&etcd, &files, &creds, "drover-user").await;
    assert!(may_put(&user, &keys.task("default", "web")).await);
    for key in [
        keys.assignment("n1", &id),
        keys.status("n1", &id),
        keys.node("n1"),
    ] {
        assert!(!may_put(&user, &key).await, "a user may write {key}");
    }

    // Run again as root with one more node: the new node's user is made, the others are kept.
    let root = as_user(&base, &files, &creds, "root");
    let again = root
        .ok(&[
            "admin",
            "bootstrap",
            &format!("--credentials-dir={}", creds.display()),
            "--node=n1",
            "--node=n3",
        ])
        .await;
    assert!(
        again.contains("user/drover-node-n3 created")
            && again.contains("user/drover-node-n1 unchanged"),
        "{again}"
    );
    let n1_again = store_as(&etcd, &files, &creds, "drover-node-n1").await;
    assert!(
        may_put(&n1_again, &keys.node("n1")).await,
        "n1's password still works"
    );
    let n3 = store_as(&etcd, &files, &creds, "drover-node-n3").await;
    assert!(may_put(&n3, &keys.node("n3")).await);
    assert!(!may_put(&n3, &keys.node("n1")).await);
}

#[tokio::test]
async fn a_cluster_on_per_role_credentials_runs_reschedules_and_fails_over() {
    let etcd = EtcdServer::start_with(EtcdOptions::tls()).await;
    let files = etcd.tls_files().expect("TLS member").clone();
    let base = Cli::with_access(etcd.endpoints(), tls_flags(&files));
    let dir = bootstrap(&base, &["alpha", "beta"]).await;
    let creds = dir.path().join("creds");
    let controller = as_user(&base, &files, &creds, "drover-controller");
    let user = as_user(&base, &files, &creds, "drover-user");
    let watcher = store_as(&etcd, &files, &creds, "drover-user").await;
    let keys = Keys::new(&base.prefix);

    let mut c1 = Daemon::start(
        &controller,
        &["controller", "--id", "c1", "--lease-ttl", "2s"],
    );
    let mut agents = Vec::new();
    for node in ["alpha", "beta"] {
        let cli = as_user(&base, &files, &creds, &format!("drover-node-{node}"));
        let state = dir.path().join(node).display().to_string();
        agents.push(Daemon::start(
            &cli,
            &[
                "agent",
                "--node",
                node,
                "--driver",
                "hollow",
                "--lease-ttl",
                "4s",
                "--state-dir",
                &state,
            ],
        ));
    }
    let (_m, path) = manifest(&task_doc("secure", 2));
    user.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let logs = |what: &str, c: &Daemon, agents: &[Daemon]| {
        format!(
            "{what}\ncontroller:\n{}\nagents:\n{}",
            c.log_text(),
            agents
                .iter()
                .map(Daemon::log_text)
                .collect::<Vec<_>>()
                .join("\n---\n")
        )
    };
    let running = wait_running(
        &watcher,
        &keys,
        2,
        &[("c1", &c1), ("alpha", &agents[0]), ("beta", &agents[1])],
    )
    .await;
    assert!(!running.is_empty());

    // A second controller stands by; the first is killed: the second leads.
    let c2 = Daemon::start(
        &controller,
        &["controller", "--id", "c2", "--lease-ttl", "2s"],
    );
    c1.kill().await;

    // The node that runs an instance dies: its instances run on the other node.
    let victim = running[0].node.clone();
    let index = usize::from(victim == "beta");
    agents[index].kill().await;
    let survivor = if victim == "alpha" { "beta" } else { "alpha" };
    wait_for(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            running_statuses(&watcher, &keys)
                .await
                .filter(|r| r.len() == 2 && r.iter().all(|s| s.node == survivor))
        },
    )
    .await
    .unwrap_or_else(|_| panic!("{}", logs("not rescheduled", &c2, &agents)));
    let listed = user.ok(&["get", "instances"]).await;
    assert_eq!(listed.matches("Running").count(), 2, "{listed}");
}

#[tokio::test]
async fn drover_logs_works_over_mtls_with_per_role_credentials() {
    let etcd = EtcdServer::start_with(EtcdOptions::tls()).await;
    let files = etcd.tls_files().expect("TLS member").clone();
    let base = Cli::with_access(etcd.endpoints(), tls_flags(&files));
    let dir = bootstrap(&base, &["gamma"]).await;
    let creds = dir.path().join("creds");
    let user = as_user(&base, &files, &creds, "drover-user");
    let watcher = store_as(&etcd, &files, &creds, "drover-user").await;
    let keys = Keys::new(&base.prefix);

    let controller = Daemon::start(
        &as_user(&base, &files, &creds, "drover-controller"),
        &["controller", "--id", "c1"],
    );
    // The test PKI's server certificate names 127.0.0.1, the agent's address; the same CA
    // signs the client certificate `drover logs` presents.
    let state = dir.path().join("gamma").display().to_string();
    let (ca, cert, key) = (
        files.ca.display().to_string(),
        files.server_cert.display().to_string(),
        files.server_key.display().to_string(),
    );
    let mut agent = Daemon::start(
        &as_user(&base, &files, &creds, "drover-node-gamma"),
        &[
            "agent",
            "--node",
            "gamma",
            "--driver",
            "process",
            // Tests run as root; the task sets no spec.user.
            "--allow-root-tasks",
            "--state-dir",
            &state,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--client-ca-file",
            &ca,
        ],
    );
    let doc = "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: greet\nspec:\n  command: [sh, -c, \"echo hello with roles; exec sleep 3600\"]\n";
    let (_m, path) = manifest(doc);
    user.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;
    let running = wait_running(
        &watcher,
        &keys,
        1,
        &[("controller", &controller), ("agent", &agent)],
    )
    .await;
    let id = running[0].id.to_string();
    let (client_cert, client_key) = (
        files.client_cert.display().to_string(),
        files.client_key.display().to_string(),
    );
    let text = wait_for(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let out = user
                .run(&[
                    "logs",
                    &id,
                    "--agent-cafile",
                    &ca,
                    "--agent-certfile",
                    &client_cert,
                    "--agent-keyfile",
                    &client_key,
                ])
                .await;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && stdout.contains("hello with roles")).then_some(stdout)
        },
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "drover logs over mTLS as drover-user\nagent:\n{}",
            agent.log_text()
        )
    });
    assert!(text.contains("hello with roles"), "{text}");
    // Without a client certificate the agent answers nothing.
    let refused = user.run(&["logs", &id, "--agent-cafile", &ca]).await;
    assert!(!refused.status.success());
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("hello with roles"));
    // SIGTERM: the agent stops its copy before it exits (a SIGKILL would leave it running).
    agent.signal("TERM");
    assert!(
        agent.wait_exit(Duration::from_secs(45)).await.is_some(),
        "the agent did not stop on SIGTERM"
    );
}
