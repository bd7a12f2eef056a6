//! Shared helpers for the binary's integration tests: run `drover` against a real etcd with a
//! unique key prefix, and read what it wrote.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// Bound on any single CLI invocation in tests.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// A `drover` invocation context: which etcd and which prefix.
pub struct Cli {
    pub endpoints: Vec<String>,
    pub prefix: String,
}

impl Cli {
    pub fn new(endpoints: Vec<String>) -> Cli {
        Cli { endpoints, prefix: drover_testkit::unique_prefix() }
    }

    /// A command for the drover binary with `--etcd` and `--prefix` set.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
        command
            .arg("--etcd")
            .arg(self.endpoints.join(","))
            .arg("--prefix")
            .arg(&self.prefix)
            .args(args)
            .env_remove("DROVER_ETCD")
            .env_remove("DROVER_PREFIX")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs the binary to completion.
    pub async fn run(&self, args: &[&str]) -> Output {
        let output = tokio::time::timeout(CLI_TIMEOUT, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("drover {args:?} did not finish within {CLI_TIMEOUT:?}"))
            .expect("drover runs");
        output
    }

    /// Runs the binary and requires success; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            output.status.success(),
            "drover {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// Starts a long-running verb (`get -w`, daemons) with piped stdout.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("drover starts")
    }
}

/// Writes `text` to a temp file and returns its path (the dir lives as long as the guard).
pub fn manifest(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("manifest.yaml");
    std::fs::write(&path, text).expect("write manifest");
    (dir, path)
}

/// A small valid task document using the process driver.
pub fn task_doc(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  command: [\"sleep\", \"3600\"]\n  replicas: {replicas}\n"
    )
}
