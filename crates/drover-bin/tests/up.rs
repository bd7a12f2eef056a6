//! The first thing a new user runs: `drover up` from a directory that is not a checkout, with the
//! example built into the binary and an etcd of its own, twice in a row, each run stopping what
//! it started; `hack/build-images.sh` run again leaving no dangling image; and an unknown verb
//! exiting 64 with the nearest verb suggested.

mod common;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command as StdCommand;
use std::time::Duration;

use common::Cli;

/// Bound on one `drover up --exit` (build already done; etcd start, placement, echo, shutdown).
const UP_TIMEOUT: Duration = Duration::from_secs(150);

fn running_containers(node: &str) -> BTreeSet<String> {
    let out = StdCommand::new("docker")
        .args(["ps", "-q", "--no-trunc", "--filter"])
        .arg(format!("label=dev.drover.node={node}"))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A client port whose neighbour (the peer port `up` gives its etcd) is free too.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let port = drover_testkit::free_port();
        let both = std::net::TcpListener::bind(("127.0.0.1", port))
            .and_then(|a| std::net::TcpListener::bind(("127.0.0.1", port + 1)).map(|b| (a, b)));
        if both.is_ok() {
            return port;
        }
    }
    panic!("no two adjacent free ports on 127.0.0.1");
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

#[tokio::test]
async fn up_runs_from_any_directory_twice_and_stops_everything_it_started() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let port = free_port_pair();
    // The same etcd port, prefix and state dir both times: the second run meets the first's data.
    let cli = Cli {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        prefix: drover_testkit::unique_prefix(),
        access: Vec::new(),
    };
    for round in 1..=2 {
        let output = tokio::time::timeout(
            UP_TIMEOUT,
            cli.command(&["up", "--exit"])
                .current_dir(cwd.path())
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: drover up did not finish in {UP_TIMEOUT:?}"))
        .expect("drover up runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "round {round}: drover up failed:\n{stdout}\n{stderr}"
        );
        assert!(
            stderr.contains("starting etcd at"),
            "round {round}: up starts its own etcd: {stderr}"
        );
        assert!(stdout.contains("Running"), "round {round}: {stdout}");
        assert!(
            stdout.contains(r#"answered: {"Msg":"hi"}"#),
            "round {round}: the echo reply: {stdout}"
        );
        assert!(
            running_containers("local").is_empty(),
            "round {round}: up left a container running"
        );
        assert!(!answers(port), "round {round}: up left its etcd running");
        assert!(
            cwd.path().join(".drover/etcd").is_dir(),
            "round {round}: etcd's data lives under the working directory's .drover/"
        );
    }
}

#[tokio::test]
async fn an_unknown_verb_exits_64_and_names_the_nearest_verb() {
    let cli = Cli::new(vec!["http://127.0.0.1:9".into()]);
    for (typo, nearest) in [("frobnicate", None), ("aply", Some("apply"))] {
        let output = cli.run(&[typo]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "drover {typo}: {stderr}");
        assert!(stderr.contains(typo), "names what was wrong: {stderr}");
        assert!(
            stderr.contains("similar subcommand exists"),
            "suggests a verb: {stderr}"
        );
        if let Some(nearest) = nearest {
            assert!(stderr.contains(&format!("'{nearest}'")), "{stderr}");
        }
    }
    let output = cli.run(&["get", "tasks", "--frob"]).await;
    assert_eq!(output.status.code(), Some(64), "an unknown flag is usage");
    let output = cli.run(&["--help"]).await;
    assert_eq!(output.status.code(), Some(0), "help is not an error");
    let output = cli.run(&["--version"]).await;
    assert_eq!(output.status.code(), Some(0), "version is not an error");
}

fn image_id(image: &str) -> Option<String> {
    let out = StdCommand::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .output()
        .expect("docker image inspect");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn build_images(image: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hack/build-images.sh");
    let out = StdCommand::new("bash")
        .arg(script)
        .env("DROVER_ECHO_IMAGE", image)
        .output()
        .expect("build-images.sh runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "build-images.sh failed: {stderr}");
    stderr
}

struct RemoveImage(String);
impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = StdCommand::new("docker")
            .args(["image", "rm", "-f", &self.0])
            .output();
    }
}

#[test]
fn build_images_replaces_an_outdated_image_without_leaving_it_dangling() {
    let image = format!("drover-test/echo-dangling-{}:latest", std::process::id());
    let _cleanup = RemoveImage(image.clone());
    // An outdated image under the tag: an empty one, as an older build would have left.
    let import = StdCommand::new("bash")
        .arg("-c")
        .arg(format!(
            "tar -c -T /dev/null | docker import --change 'LABEL dev.drover.content-sha256=old' - {image}"
        ))
        .output()
        .expect("docker import");
    assert!(import.status.success(), "{import:?}");
    let outdated = image_id(&image).expect("the outdated image exists");

    let first = build_images(&image);
    assert!(
        first.contains("importing"),
        "an outdated image is replaced: {first}"
    );
    let built = image_id(&image).expect("the image exists");
    assert_ne!(built, outdated);
    assert_eq!(
        image_id(&outdated),
        None,
        "the replaced image was removed, not left as a dangling <none>"
    );

    let second = build_images(&image);
    assert!(second.contains("up to date"), "{second}");
    assert_eq!(
        image_id(&image),
        Some(built),
        "an unchanged binary imports nothing"
    );
}
