//! A cluster of real hosts: each host a container of `drover/fault-host` with its own address
//! on a private network — the witness service, 3 etcd members, 3 controller replicas and the
//! agents (process driver) — built by `hack/fault-images.sh`. Dropping the [`Cluster`] removes
//! every container, the network and the records; [`Cluster::start`] first removes what an
//! interrupted earlier run left.

use std::path::PathBuf;
use std::time::Duration;

use drover_api::keys::Keys;
use drover_api::node::Node;
use drover_store::{Store, StoreConfig};
use drover_witness::datagram::Received;

use crate::docker::{self, docker, LABEL};

/// The image every host runs.
pub const IMAGE: &str = "drover/fault-host:latest";
/// The agents' lease TTL: a cut-off agent stops its copies before this runs out. The agent's
/// default: it fences at half of it, which must outlast an etcd leader election (lease
/// renewals wait for a leader); at 4 s, killing the etcd leader made agents fence.
pub const AGENT_TTL: Duration = Duration::from_secs(10);
/// The controllers' election lease TTL.
pub const CONTROLLER_TTL: Duration = Duration::from_secs(3);
/// Where the witness listens, on its host.
const WITNESS_PORT: u16 = 7700;
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
        let octet = 16 + rand::random::<u8>() % 200;
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
        // Two networks: the cluster's (etcd, controllers, agents: what faults cut) and the
        // witness's (agents and the witness only), so a cut-off agent's copies still report.
        for (name, subnet) in [
            (run.clone(), format!("{net}.0/24")),
            (
                cluster.witness_net(),
                format!("{}.0/24", cluster.witness_prefix()),
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
                    "/records/witness.jsonl",
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
                    ],
                )
                .await?;
        }
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
        }
        let agent_ttl = format!("{}s", AGENT_TTL.as_secs());
        for (i, name) in cluster.agents.iter().enumerate() {
            let octet = 31 + u8::try_from(i).unwrap_or(u8::MAX - 31);
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
                    ]
                    .into_iter()
                    .chain(agent_args.iter().copied())
                    .collect::<Vec<_>>(),
                )
                .await?;
            let witness_ip = format!("{}.{octet}", cluster.witness_prefix());
            docker(&[
                "network",
                "connect",
                "--ip",
                &witness_ip,
                &cluster.witness_net(),
                &cluster.container(name),
            ])
            .await?;
        }
        cluster.wait_up().await?;
        Ok(cluster)
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
        // Every host sees the run's directory: the witness writes its records there, and the
        // test hands manifests to the CLI through it.
        let mount = format!("{}:/records", self.records.display());
        let mut args = vec![
            "run",
            "-d",
            "-v",
            &mount,
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

    /// The address octet of agent `name` (`a1` is .31) on both networks.
    pub fn agent_octet(&self, name: &str) -> Option<u8> {
        let i = self.agents.iter().position(|a| a == name)?;
        31u8.checked_add(u8::try_from(i).ok()?)
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

    /// Everything the witness recorded so far.
    pub fn records(&self) -> Result<Vec<Received>> {
        let path = self.records.join("witness.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(Error::Records { path, source }),
        };
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
    pub async fn reconnect(&self, name: &str, octet: u8) -> Result<()> {
        let ip = format!("{}.{octet}", self.net);
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

    /// Runs `drover ARGS` against the cluster, on controller host `c1`; returns its stdout.
    pub async fn drover(&self, args: &[&str]) -> Result<String> {
        let etcd = self.endpoints().join(",");
        let container = self.container("c1");
        let mut all = vec![
            "exec",
            container.as_str(),
            "/drover",
            "--etcd",
            etcd.as_str(),
        ];
        all.extend_from_slice(args);
        Ok(docker(&all).await?)
    }

    /// Writes `text` into the run's directory as `name`; returns its path inside every host.
    pub fn file(&self, name: &str, text: &str) -> Result<String> {
        let path = self.records.join(name);
        std::fs::write(&path, text).map_err(|source| Error::Records { path, source })?;
        Ok(format!("/records/{name}"))
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
            .args(["network", "rm", &self.run, &self.witness_net()])
            .output();
        let _ = std::fs::remove_dir_all(&self.records);
    }
}
