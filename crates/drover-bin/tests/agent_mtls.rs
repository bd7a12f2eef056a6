//! The agent's gRPC over mutual TLS through the real binaries: `drover logs` with a client
//! certificate reads a task's output from an agent serving TLS; a client without a certificate,
//! with one from another CA, or that does not trust the agent's CA gets nothing; the agent
//! refuses a partial or unusable set of TLS files at start, by name.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{manifest, node_key, Cli, Daemon, Etcd};
use drover_api::instance::{InstanceStatus, Phase};
use drover_testkit::{wait_for, TlsFiles};

const WAIT: Duration = Duration::from_secs(60);

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The first Running status of `task`.
async fn running(etcd: &Etcd, task: &str) -> InstanceStatus {
    wait_for(WAIT, Duration::from_millis(100), || async {
        etcd.store
            .list::<InstanceStatus>(&etcd.keys.statuses())
            .await
            .ok()?
            .items
            .into_iter()
            .map(|i| i.value)
            .find(|s| s.id.task() == task && s.phase == Phase::Running)
    })
    .await
    .unwrap_or_else(|_| panic!("{task} never Running within {WAIT:?}"))
}

/// `drover logs` with `flags`: exit code, stdout, stderr.
async fn logs(cli: &Cli, id: &str, flags: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["logs", id];
    args.extend_from_slice(flags);
    let out = cli.run(&args).await;
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn drover_logs_over_mtls_reads_the_output_and_clients_without_a_valid_certificate_get_nothing(
) {
    let etcd = Etcd::start().await;
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = TlsFiles::generate(pki_dir.path());
    let state = tempfile::tempdir().expect("tempdir");
    let _controller = Daemon::start(&etcd.cli, &["controller", "--id", "c"]);
    let mut agent = Daemon::start(
        &etcd.cli,
        &[
            "agent",
            "--node",
            "secure",
            "--driver",
            "process",
            // Tests run as root; this task sets no spec.user.
            "--allow-root-tasks",
            "--state-dir",
            path(state.path()),
            "--tls-cert-file",
            path(&pki.server_cert),
            "--tls-key-file",
            path(&pki.server_key),
            "--client-ca-file",
            path(&pki.ca),
        ],
    );
    let node = node_key(&etcd, "secure").await;
    assert!(node.tls, "the node key says the agent serves TLS: {node:?}");
    assert!(node.address.starts_with("127.0.0.1:"), "{node:?}");

    let doc = "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: greet\nspec:\n  command: [sh, -c, \"echo hello over mtls; exec sleep 3600\"]\n";
    let (_dir, file) = manifest(doc);
    etcd.cli.ok(&["apply", "-f", path(&file)]).await;
    let id = running(&etcd, "greet").await.id.to_string();

    // A client certificate the agent's CA signed, and the CA to verify the agent with.
    let good = [
        "--agent-cafile",
        path(&pki.ca),
        "--agent-certfile",
        path(&pki.client_cert),
        "--agent-keyfile",
        path(&pki.client_key),
    ];
    let text = wait_for(WAIT, Duration::from_millis(200), || async {
        let (code, stdout, _) = logs(&etcd.cli, &id, &good).await;
        (code == Some(0) && stdout.contains("hello over mtls")).then_some(stdout)
    })
    .await
    .expect("drover logs over mTLS shows the task's output");
    assert!(text.contains("hello over mtls"), "{text}");

    // No --agent-* flags: the client will not dial a TLS agent in plaintext, and says why.
    let (code, stdout, stderr) = logs(&etcd.cli, &id, &[]).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--agent-cafile"), "{stderr}");
    assert!(!stdout.contains("hello"), "{stdout}");

    // Trusting the agent but presenting no certificate: the agent refuses the handshake.
    let (code, stdout, stderr) = logs(&etcd.cli, &id, &["--agent-cafile", path(&pki.ca)]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stdout.contains("hello"), "{stdout}");
    assert!(stderr.contains("agent secure at"), "{stderr}");
    assert!(stderr.contains("give --agent-certfile"), "{stderr}");
    eprintln!("no client certificate: {stderr}");

    // A certificate from another CA: the agent refuses it.
    let (code, stdout, stderr) = logs(
        &etcd.cli,
        &id,
        &[
            "--agent-cafile",
            path(&pki.ca),
            "--agent-certfile",
            path(&pki.other_client_cert),
            "--agent-keyfile",
            path(&pki.other_client_key),
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stdout.contains("hello"), "{stdout}");
    assert!(stderr.contains("--client-ca-file"), "{stderr}");
    eprintln!("another CA's client certificate: {stderr}");

    // A client that does not trust the agent's CA refuses the agent, even with a good
    // certificate of its own.
    let (code, stdout, stderr) = logs(
        &etcd.cli,
        &id,
        &[
            "--agent-cafile",
            path(&pki.other_ca),
            "--agent-certfile",
            path(&pki.client_cert),
            "--agent-keyfile",
            path(&pki.client_key),
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stdout.contains("hello"), "{stdout}");
    assert!(
        stderr.contains("certificate") || stderr.contains("UnknownIssuer"),
        "the client names the certificate it refused: {stderr}"
    );
    eprintln!("untrusted agent: {stderr}");

    // The agent's port does not speak plaintext gRPC at all.
    let plain = drover_agent::AgentEndpoint::plaintext(node.address.clone());
    let err = tokio::time::timeout(WAIT, drover_agent::grpc::ping(&plain))
        .await
        .expect("bounded")
        .expect_err("plaintext is refused");
    eprintln!("plaintext ping: {err}");

    let log = agent.log_text();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        !log.contains("without TLS"),
        "no plaintext warning with TLS on: {log}"
    );
    // SIGTERM: the agent stops its copy before it exits (a SIGKILL would leave it running).
    agent.signal("TERM");
    assert!(
        agent.wait_exit(WAIT).await.is_some(),
        "the agent did not stop"
    );
}

#[tokio::test]
async fn the_agent_refuses_a_partial_or_unusable_set_of_tls_files_by_name() {
    // Nothing is contacted: the agent refuses before it connects to etcd.
    let cli = Cli::new(vec!["http://127.0.0.1:1".into()]);
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = TlsFiles::generate(pki_dir.path());
    let agent = |extra: &[&str]| {
        let mut args = vec!["agent", "--node", "n1", "--driver", "hollow"];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let cli = &cli;
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = cli.run(&refs).await;
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };

    let (code, stderr) = run(agent(&["--tls-cert-file", path(&pki.server_cert)])).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("without --tls-key-file and --client-ca-file"),
        "{stderr}"
    );
    let (code, stderr) = run(agent(&[
        "--tls-cert-file",
        path(&pki.server_cert),
        "--tls-key-file",
        path(&pki.server_key),
    ]))
    .await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("without --client-ca-file"), "{stderr}");

    let missing = pki_dir.path().join("missing.pem");
    let (code, stderr) = run(agent(&[
        "--tls-cert-file",
        path(&pki.server_cert),
        "--tls-key-file",
        path(&pki.server_key),
        "--client-ca-file",
        path(&missing),
    ]))
    .await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("--client-ca-file") && stderr.contains(path(&missing)),
        "{stderr}"
    );

    let junk = pki_dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("write");
    let (code, stderr) = run(agent(&[
        "--tls-cert-file",
        path(&junk),
        "--tls-key-file",
        path(&pki.server_key),
        "--client-ca-file",
        path(&pki.ca),
    ]))
    .await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("--tls-cert-file") && stderr.contains(path(&junk)),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_agent_serving_plaintext_beyond_loopback_warns_and_plaintext_logs_still_work() {
    let etcd = Etcd::start().await;
    let state = tempfile::tempdir().expect("tempdir");
    let _controller = Daemon::start(&etcd.cli, &["controller", "--id", "c"]);
    let mut agent = Daemon::start(
        &etcd.cli,
        &[
            "agent",
            "--node",
            "open",
            "--driver",
            "process",
            "--allow-root-tasks",
            "--state-dir",
            path(state.path()),
            "--address",
            "0.0.0.0:0",
            "--advertise-address",
            "127.0.0.1",
        ],
    );
    let node = node_key(&etcd, "open").await;
    assert!(!node.tls, "{node:?}");
    wait_for(WAIT, Duration::from_millis(100), || async {
        agent.log_text().contains("without TLS").then_some(())
    })
    .await
    .expect("the agent warns that it serves plaintext beyond loopback");

    let doc = "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: plain\nspec:\n  command: [sh, -c, \"echo hello in plaintext; exec sleep 3600\"]\n";
    let (_dir, file) = manifest(doc);
    etcd.cli.ok(&["apply", "-f", path(&file)]).await;
    let id = running(&etcd, "plain").await.id.to_string();
    wait_for(WAIT, Duration::from_millis(200), || async {
        let (code, stdout, _) = logs(&etcd.cli, &id, &[]).await;
        (code == Some(0) && stdout.contains("hello in plaintext")).then_some(())
    })
    .await
    .expect("plaintext drover logs still works");

    // A client told to verify agents does not fall back to plaintext.
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = TlsFiles::generate(pki_dir.path());
    let (code, stdout, stderr) = logs(&etcd.cli, &id, &["--agent-cafile", path(&pki.ca)]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("serves plaintext"), "{stderr}");
    assert!(!stdout.contains("hello"), "{stdout}");
    // SIGTERM: the agent stops its copy before it exits (a SIGKILL would leave it running).
    agent.signal("TERM");
    assert!(
        agent.wait_exit(WAIT).await.is_some(),
        "the agent did not stop"
    );
}
