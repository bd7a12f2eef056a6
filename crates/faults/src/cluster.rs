//! A cluster of real hosts: each host a container of `drover/fault-host` with its own address
//! on a private network — the witness service, 3 etcd members, 3 controller replicas, the
//! agents (process driver) and the operator's `cli` host — built by `hack/fault-images.sh`.
//!
//! Three networks, so each fault cuts exactly one path: the cluster network (etcd, controllers,
//! agents, cli: what `disconnect` cuts), the witness network (agents and the witness, so a
//! cut-off agent's copies still report) and the control network (controllers and agents, so a
//! controller cut off from etcd still reaches the agents). Dropping the [`Cluster`] removes
//! every container, the network and the records; [`Cluster::start`] first removes what an
//! interrupted earlier run left.

use std::path::PathBuf;
use std::time::Duration;

use drover_api::keys::Keys;
use drover_api::node::Node;
use drover_store::{Store, StoreConfig};
use drover_witness::datagram::Received;

use crate::cli::{self, Cli};
use crate::docker::{self, docker, LABEL};

/// The image every host runs.
pub const IMAGE: &str = "drover/fault-host:latest";
/// The agents' lease TTL: a cut-off agent stops its copies before this runs out. The agent's
/// default: it fences at half of it, which must outlast an etcd leader election (lease
/// renewals wait for a leader); at 4 s, killing the etcd leader made agents fence.
pub const AGENT_TTL: Duration = Duration::from_secs(10);
/// The controllers' election lease TTL.
pub const CONTROLLER_TTL: Duration = Duration::from_secs(3);
/// Where the witness writes its records, on its host.
const WITNESS_RECORDS: &str = "/tmp/witness.jsonl";
/// Where the witness listens, on its host.
const WITNESS_PORT: u16 = 7700;
/// The cli host's address octet.
const CLI_OCTET: u8 = 9;
/// Key prefix of the cluster's state.
pub const PREFIX: &str = "/drover";

/// Why the cluster could not be brought up or driven.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A docker command failed.
    #[error(transparent)]
    Docker(#[from] docker::Error),
    /// The image is missing.
    #[error("image {IMAGE} is missing: build it with hack/fault-images.sh")]
    NoImage,
    /// The witness's records could not be read.
    #[error("reading the witness's records {path}: {source}")]
    Records {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command on the cli host failed.
    #[error(transparent)]
    Cli(#[from] cli::Error),
    /// A host name this cluster does not have.
    #[error("no host {0} in this cluster")]
    NoHost(String),
    /// The cluster did not come up in time.
    #[error("the cluster did not come up: {0}")]
    NotUp(String),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A running cluster.
pub struct Cluster {
    /// This run's id: the label value on everything it created, and the container prefix.
    pub run: String,
    /// The first three octets of its subnet.
    pub net: String,
    /// The agents' names (`a1`, `a2`, ...).
    pub agents: Vec<String>,
    records: PathBuf,
}

impl Cluster {
    /// Brings up the witness, 3 etcd members, 3 controllers and `agents` agents, and waits
    /// until etcd answers, a controller leads and every agent registered.
    pub async fn start(agents: usize) -> Result<Cluster> {
        Self::start_with(agents, &[]).await
    }

    /// [`Cluster::start`], with `agent_args` added to every agent's command line.
    pub async fn start_with(agents: usize, agent_args: &[&str]) -> Result<Cluster> {
        if docker(&["image", "inspect", IMAGE]).await.is_err() {
            return Err(Error::NoImage);
        }
        // What an interrupted run left behind goes first.
        docker::remove_labelled(None).await?;
        let run = format!("faults-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let octet = free_octet().await?;
        let net = format!("10.213.{octet}");
        let records = std::env::temp_dir().join(&run);
        std::fs::create_dir_all(&records).map_err(|source| Error::Records {
            path: records.clone(),
            source,
        })?;
        let cluster = Cluster {
            run: run.clone(),
            net: net.clone(),
            agents: (1..=agents).map(|i| format!("a{i}")).collect(),
            records,
        };
        let label = format!("{LABEL}={run}");
        for (name, subnet) in [
            (run.clone(), format!("{net}.0/24")),
            (
                cluster.witness_net(),
                format!("{}.0/24", cluster.witness_prefix()),
            ),
            (
                cluster.control_net(),
                format!("{}.0/24", cluster.control_prefix()),
            ),
        ] {
            docker(&[
                "network", "create", "--subnet", &subnet, "--label", &label, &name,
            ])
            .await?;
        }
        cluster
            .host_on(
                &cluster.witness_net(),
                &cluster.witness_prefix(),
                "witness",
                10,
                &[],
                &[
                    "/witness",
                    "serve",
                    "--listen",
                    &format!("0.0.0.0:{WITNESS_PORT}"),
                    "--out",
                    WITNESS_RECORDS,
                ],
            )
            .await?;
        let peers: Vec<String> = (1..=3)
            .map(|i| format!("e{i}=http://{net}.{}:2380", 10 + i))
            .collect();
        for i in 1..=3u8 {
            let ip = format!("{net}.{}", 10 + i);
            let name = format!("e{i}");
            cluster
                .host(
                    &name,
                    10 + i,
                    &[],
                    &[
                        "/usr/bin/etcd",
                        "--name",
                        &name,
                        "--data-dir",
                        "/state/etcd",
                        "--listen-client-urls",
                        "http://0.0.0.0:2379",
                        "--advertise-client-urls",
                        &format!("http://{ip}:2379"),
                        "--listen-peer-urls",
                        "http://0.0.0.0:2380",
                        "--initial-advertise-peer-urls",
                        &format!("http://{ip}:2380"),
                        "--initial-cluster",
                        &peers.join(","),
                        "--initial-cluster-state",
                        "new",
                        // The members ping a silent client after half a second and drop it
                        // when it does not answer, so a client cut off for a couple of
                        // seconds comes back to a closed connection and must watch anew
                        // (with etcd's defaults, two hours, the stalled stream would simply
                        // resume).
                        "--grpc-keepalive-interval",
                        "500ms",
                        "--grpc-keepalive-timeout",
                        "500ms",
                        // A member cut off into a minority keeps campaigning and raising its
                        // term; without pre-vote its return deposes the majority's leader and
                        // etcd had no leader for over 3 s (all members "no leader"), longer
                        // than an agent can go without a renewal. Pre-vote is etcd's default
                        // from 3.5 on, and what a production deployment runs.
                        "--pre-vote",
                    ],
                )
                .await?;
        }
        // The operator's seat: an idle process keeps the host up for `docker exec`.
        cluster
            .host(
                "cli",
                CLI_OCTET,
                &[],
                &[
                    "/witness",
                    "serve",
                    "--listen",
                    "127.0.0.1:7701",
                    "--out",
                    "/tmp/idle.jsonl",
                ],
            )
            .await?;
        let etcd = cluster.endpoints().join(",");
        let controller_ttl = format!("{}s", CONTROLLER_TTL.as_secs());
        for i in 1..=3u8 {
            let id = format!("c{i}");
            cluster
                .host(
                    &id,
                    20 + i,
                    &["-e", "RUST_LOG=info"],
                    &[
                        "/drover",
                        "--etcd",
                        &etcd,
                        "controller",
                        "--id",
                        &id,
                        "--lease-ttl",
                        &controller_ttl,
                    ],
                )
                .await?;
            cluster
                .attach(
                    &cluster.control_net(),
                    &cluster.control_prefix(),
                    &id,
                    20 + i,
                )
                .await?;
        }
        let agent_ttl = format!("{}s", AGENT_TTL.as_secs());
        for (i, name) in cluster.agents.iter().enumerate() {
            let octet = 31 + u8::try_from(i).unwrap_or(u8::MAX - 31);
            // Bound to every interface, so the node key names the host's cluster address.
            let advertise = format!("{}.{octet}", cluster.net);
            cluster
                .host(
                    name,
                    octet,
                    &["-e", "RUST_LOG=info"],
                    &[
                        "/drover",
                        "--etcd",
                        &etcd,
                        "agent",
                        "--node",
                        name,
                        "--driver",
                        "process",
                        "--lease-ttl",
                        &agent_ttl,
                        "--state-dir",
                        "/state",
                        "--address",
                        "0.0.0.0:7000",
                        "--advertise-address",
                        &advertise,
                        // The host container is the boundary here; its tasks run as root.
                        "--allow-root-tasks",
                    ]
                    .into_iter()
                    .chain(agent_args.iter().copied())
                    .collect::<Vec<_>>(),
                )
                .await?;
            cluster
                .attach(
                    &cluster.witness_net(),
                    &cluster.witness_prefix(),
                    name,
                    octet,
                )
                .await?;
            cluster
                .attach(
                    &cluster.control_net(),
                    &cluster.control_prefix(),
                    name,
                    octet,
                )
                .await?;
        }
        cluster.wait_up().await?;
        Ok(cluster)
    }

    /// Connects host `name` to `network` at `<prefix>.<octet>`.
    async fn attach(&self, network: &str, prefix: &str, name: &str, octet: u8) -> Result<()> {
        let ip = format!("{prefix}.{octet}");
        docker(&[
            "network",
            "connect",
            "--ip",
            &ip,
            network,
            &self.container(name),
        ])
        .await?;
        Ok(())
    }

    /// Runs `cmd` in a new host container `name` at `<net>.<octet>` on the cluster network.
    async fn host(&self, name: &str, octet: u8, extra: &[&str], cmd: &[&str]) -> Result<()> {
        self.host_on(&self.run, &self.net, name, octet, extra, cmd)
            .await
    }

    /// Runs `cmd` in a new host container `name` at `<prefix>.<octet>` on `network`.
    async fn host_on(
        &self,
        network: &str,
        prefix: &str,
        name: &str,
        octet: u8,
        extra: &[&str],
        cmd: &[&str],
    ) -> Result<()> {
        let container = self.container(name);
        let ip = format!("{prefix}.{octet}");
        let label = format!("{LABEL}={}", self.run);
        // No bind mounts: the docker CLI may run in a container of its own (hack/fresh-machine.sh)
        // whose paths the engine cannot see. Records come out by `docker cp`, manifests go in
        // on standard input.
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &container,
            "--hostname",
            name,
            "--network",
            network,
            "--ip",
            &ip,
            "--label",
            &label,
        ];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        docker(&args).await?;
        Ok(())
    }

    /// The container of host `name`.
    pub fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.run)
    }

    /// etcd's client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        (1..=3)
            .map(|i| format!("http://{}.{}:2379", self.net, 10 + i))
            .collect()
    }

    /// The witness's address, for the workload's `--to`.
    pub fn witness(&self) -> String {
        format!("{}.10:{WITNESS_PORT}", self.witness_prefix())
    }

    /// The witness network's name.
    fn witness_net(&self) -> String {
        format!("{}-w", self.run)
    }

    /// The witness network's first three octets (the cluster's third octet, under 10.214).
    fn witness_prefix(&self) -> String {
        let octet = self.net.rsplit('.').next().unwrap_or("0");
        format!("10.214.{octet}")
    }

    /// The control network's name.
    fn control_net(&self) -> String {
        format!("{}-c", self.run)
    }

    /// The control network's first three octets (the cluster's third octet, under 10.215).
    fn control_prefix(&self) -> String {
        let octet = self.net.rsplit('.').next().unwrap_or("0");
        format!("10.215.{octet}")
    }

    /// The address octet of host `name` on every network it is on: the cli host .9, etcd
    /// members `e1`.. .11.., controllers `c1`.. .21.., agents `a1`.. .31...
    pub fn octet(&self, name: &str) -> Result<u8> {
        let numbered = |prefix: char, base: u8, count: usize| {
            let i: u8 = name.strip_prefix(prefix)?.parse().ok()?;
            (1..=count).contains(&usize::from(i)).then(|| base + i)
        };
        let octet = match name {
            "cli" => Some(CLI_OCTET),
            _ => numbered('e', 10, 3)
                .or_else(|| numbered('c', 20, 3))
                .or_else(|| numbered('a', 30, self.agents.len())),
        };
        octet.ok_or_else(|| Error::NoHost(name.to_string()))
    }

    /// The operator's seat (see [`crate::cli`]).
    pub fn cli(&self) -> Cli {
        Cli::new(self.container("cli"), self.endpoints())
    }

    /// The etcd member (`e1`..`e3`) that leads the raft group now, if one answers as leader.
    pub async fn etcd_leader(&self) -> Result<Option<String>> {
        let statuses = self.cli().member_statuses().await?;
        let endpoints = self.endpoints();
        Ok(statuses.iter().find(|s| s.leader).and_then(|s| {
            let i = endpoints.iter().position(|e| *e == s.endpoint)?;
            Some(format!("e{}", i + 1))
        }))
    }

    /// A store client of the cluster's etcd, from the test's own host.
    pub async fn store(&self) -> Result<Store> {
        Store::connect(StoreConfig::new(self.endpoints()))
            .await
            .map_err(|e| Error::NotUp(format!("etcd: {e}")))
    }

    /// The key schema.
    pub fn keys(&self) -> Keys {
        Keys::new(PREFIX)
    }

    async fn wait_up(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut last = String::from("nothing tried yet");
        while tokio::time::Instant::now() < deadline {
            match self.up_once().await {
                Ok(()) => return Ok(()),
                Err(why) => last = why,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(Error::NotUp(last))
    }

    async fn up_once(&self) -> Result<(), String> {
        let store = self.store().await.map_err(|e| e.to_string())?;
        let keys = self.keys();
        let nodes = store
            .list::<Node>(&keys.nodes())
            .await
            .map_err(|e| e.to_string())?;
        if nodes.items.len() < self.agents.len() {
            return Err(format!(
                "{}/{} agents registered",
                nodes.items.len(),
                self.agents.len()
            ));
        }
        let controllers = store
            .list::<drover_api::records::ControllerInfo>(&keys.controllers())
            .await
            .map_err(|e| e.to_string())?;
        if !controllers.items.iter().any(|c| c.value.leader) {
            return Err("no controller leads".into());
        }
        Ok(())
    }

    /// Everything the witness recorded so far (copied out of its host with `docker cp`; the
    /// copy is kept in the run's local directory until the cluster is dropped).
    pub fn records(&self) -> Result<Vec<Received>> {
        let path = self.records.join("witness.jsonl");
        let from = format!("{}:{WITNESS_RECORDS}", self.container("witness"));
        // Blocking: callers poll from synchronous closures; one copy takes milliseconds.
        let copied = std::process::Command::new("docker")
            .args(["cp", "-q", &from])
            .arg(&path)
            .output()
            .map_err(|source| Error::Records {
                path: path.clone(),
                source,
            })?;
        if !copied.status.success() {
            let stderr = String::from_utf8_lossy(&copied.stderr);
            // Before the first report the witness has not created its file yet.
            if stderr.contains("Could not find the file") || stderr.contains("No such") {
                return Ok(Vec::new());
            }
            return Err(Error::Records {
                path,
                source: std::io::Error::other(format!("docker cp {from}: {}", stderr.trim())),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Records {
            path: path.clone(),
            source,
        })?;
        // A torn last line (being written) is skipped, not an error.
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect())
    }

    /// `docker kill` host `name`: the host dies with every process on it.
    pub async fn kill(&self, name: &str) -> Result<()> {
        docker(&["kill", &self.container(name)]).await?;
        Ok(())
    }

    /// Boots a killed host again, with its disk (state dirs, etcd data) as it was.
    pub async fn boot(&self, name: &str) -> Result<()> {
        docker(&["start", &self.container(name)]).await?;
        Ok(())
    }

    /// Sends `signal` (`TERM`, ...) to host `name`'s main process.
    pub async fn signal(&self, name: &str, signal: &str) -> Result<()> {
        docker(&["kill", "--signal", signal, &self.container(name)]).await?;
        Ok(())
    }

    /// Freezes host `name` (`docker pause`): its processes stop, its sockets stay open.
    pub async fn pause(&self, name: &str) -> Result<()> {
        docker(&["pause", &self.container(name)]).await?;
        Ok(())
    }

    /// Resumes a paused host.
    pub async fn unpause(&self, name: &str) -> Result<()> {
        docker(&["unpause", &self.container(name)]).await?;
        Ok(())
    }

    /// The controller replica that leads now (`c1`..`c3`), as its record in etcd says.
    pub async fn leader(&self) -> Result<Option<String>> {
        let store = self.store().await?;
        let controllers = store
            .list::<drover_api::records::ControllerInfo>(&self.keys().controllers())
            .await
            .map_err(|e| Error::NotUp(format!("listing controllers: {e}")))?;
        Ok(controllers
            .items
            .into_iter()
            .find(|c| c.value.leader)
            .map(|c| c.value.id))
    }

    /// Cuts host `name` off the cluster network (from etcd and the controllers; an agent's
    /// copies still reach the witness on theirs).
    pub async fn disconnect(&self, name: &str) -> Result<()> {
        docker(&["network", "disconnect", &self.run, &self.container(name)]).await?;
        Ok(())
    }

    /// Reconnects host `name` at its address.
    pub async fn reconnect(&self, name: &str) -> Result<()> {
        let ip = format!("{}.{}", self.net, self.octet(name)?);
        docker(&[
            "network",
            "connect",
            "--ip",
            &ip,
            &self.run,
            &self.container(name),
        ])
        .await?;
        Ok(())
    }

    /// Runs `drover ARGS` against the cluster on the cli host; returns its stdout.
    pub async fn drover(&self, args: &[&str]) -> Result<String> {
        Ok(self.cli().drover(args).await?)
    }

    /// `drover apply` of the manifest `text`, handed over on standard input.
    pub async fn apply(&self, text: &str) -> Result<String> {
        Ok(self.cli().apply(text).await?)
    }

    /// Every line host `name` logged since it was created (ANSI colours removed).
    async fn all_log_lines(&self, name: &str) -> Vec<String> {
        let output = tokio::process::Command::new("docker")
            .args(["logs", &self.container(name)])
            .output()
            .await;
        output.map_or_else(
            |_| Vec::new(),
            |o| {
                [o.stdout, o.stderr]
                    .iter()
                    .flat_map(|bytes| {
                        String::from_utf8_lossy(bytes)
                            .lines()
                            .map(strip_colours)
                            .collect::<Vec<_>>()
                    })
                    .collect()
            },
        )
    }

    /// How many lines host `name` logged (since it was created) that contain `needle`.
    pub async fn log_lines_with(&self, name: &str, needle: &str) -> usize {
        self.lines_with(name, needle).await.len()
    }

    /// The lines host `name` logged (since it was created) that contain `needle`.
    pub async fn lines_with(&self, name: &str, needle: &str) -> Vec<String> {
        self.all_log_lines(name)
            .await
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// The lines host `name` logged at WARN or ERROR.
    pub async fn warnings(&self, name: &str) -> Vec<String> {
        self.all_log_lines(name)
            .await
            .into_iter()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect()
    }

    /// The last lines host `name` logged.
    pub async fn logs(&self, name: &str) -> String {
        // The hosts log to stderr, which `docker logs` hands back on its own stderr.
        let output = tokio::process::Command::new("docker")
            .args(["logs", "--tail", "60", &self.container(name)])
            .output()
            .await;
        match output {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => e.to_string(),
        }
    }
}

/// `line` without its ANSI colour escapes (`ESC [ ... m`).
fn strip_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A third octet `o` such that none of 10.213.o, 10.214.o and 10.215.o is a subnet of an
/// existing network (one an interrupted run left behind, say), picked at random.
async fn free_octet() -> Result<u8> {
    let ids = docker(&["network", "ls", "-q"]).await?;
    let mut args = vec![
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
    ];
    args.extend(ids.split_whitespace());
    let used = docker(&args).await?;
    let taken = |o: u8| {
        (213..=215).any(|b| {
            used.split_whitespace()
                .any(|s| s == format!("10.{b}.{o}.0/24"))
        })
    };
    let start = u16::from(rand::random::<u8>() % 200);
    (0..200u16)
        .filter_map(|k| u8::try_from(16 + (start + k) % 200).ok())
        .find(|o| !taken(*o))
        .ok_or_else(|| Error::NotUp("no free 10.213-215.X.0/24 subnets".into()))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Drop cannot await: the docker CLI is run synchronously, bounded by docker itself.
        let filter = format!("label={LABEL}={}", self.run);
        let ids = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
        let _ = std::process::Command::new("docker")
            .args([
                "network",
                "rm",
                &self.run,
                &self.witness_net(),
                &self.control_net(),
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.records);
    }
}
