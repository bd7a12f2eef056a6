//! A multi-member etcd cluster on loopback (plain or TLS), with per-member kill and restart.

use crate::certs::TlsFiles;
use crate::etcd::{
    run_etcdctl, EtcdServer, EtcdctlError, MemberSpec, StartFailure, START_ATTEMPTS,
};
use crate::ports::free_port;
use crate::secure::{EtcdOptions, EtcdUser, Pki};

/// Several etcd members forming one cluster, each on its own free loopback ports and data dir.
///
/// # Guarantees
///
/// Every member is killed and its data dir removed on drop (see [`EtcdServer`]).
pub struct EtcdCluster {
    members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `size` members (names `m0`, `m1`, …) with a unique cluster token and waits until
    /// every member answers `/health` (so a leader is elected).
    ///
    /// # Panics
    ///
    /// When `size` is 0, when `etcd` is missing, or when the cluster does not become healthy
    /// within 30 s (the message carries the failing member's log).
    pub async fn start(size: usize) -> EtcdCluster {
        EtcdCluster::start_with(size, EtcdOptions::default()).await
    }

    /// Starts `size` members secured as `options` say (see
    /// [`EtcdServer::start_with`]); with `tls`, peers too speak TLS with client certificates
    /// from the same CA, which every member shares.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub async fn start_with(size: usize, options: EtcdOptions) -> EtcdCluster {
        assert!(size > 0, "a cluster needs at least one member");
        let pki = options.tls.then(Pki::generate);
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let token = format!("drover-{:x}", rand::random::<u64>());
            let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
            let initial_cluster = ports
                .iter()
                .enumerate()
                .map(|(i, (_, peer))| MemberSpec::peer_url(&format!("m{i}"), *peer, options))
                .collect::<Vec<_>>()
                .join(",");
            let mut members: Vec<EtcdServer> = ports
                .iter()
                .enumerate()
                .map(|(i, (client_port, peer_port))| {
                    let spec = MemberSpec {
                        name: format!("m{i}"),
                        client_port: *client_port,
                        peer_port: *peer_port,
                        metrics_port: MemberSpec::metrics_port_for(options),
                        initial_cluster: initial_cluster.clone(),
                        token: token.clone(),
                        options,
                    };
                    EtcdServer::prepare(spec, pki.clone())
                })
                .collect();
            // All members must run before any can elect a leader.
            for m in &mut members {
                m.spawn();
            }
            let mut failure = None;
            for m in &mut members {
                if let Err(e) = m.wait_healthy(crate::etcd::START_TIMEOUT_CLUSTER).await {
                    failure = Some(e);
                    break;
                }
            }
            match failure {
                None => return EtcdCluster { members },
                Some(StartFailure::PortTaken) => last = "port taken".into(),
                Some(StartFailure::Other(msg)) => panic!("{msg}"),
            }
        }
        panic!("etcd cluster did not start after {START_ATTEMPTS} attempts: {last}");
    }

    /// Client URLs of all members, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdServer::client_url).collect()
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Member `i`.
    ///
    /// # Panics
    ///
    /// When `i` is out of range.
    pub fn member(&self, i: usize) -> &EtcdServer {
        &self.members[i]
    }

    /// Member `i`, mutably (to kill or restart it directly).
    ///
    /// # Panics
    ///
    /// When `i` is out of range.
    pub fn member_mut(&mut self, i: usize) -> &mut EtcdServer {
        &mut self.members[i]
    }

    /// SIGKILLs member `i` (see [`EtcdServer::kill`]).
    pub fn kill_member(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Restarts member `i` on its ports and data and waits until it sees a leader again.
    pub async fn restart_member(&mut self, i: usize) {
        self.members[i].restart().await;
    }

    /// Runs `etcdctl` against all members that were started.
    pub async fn etcdctl(&self, args: &[&str]) -> Result<String, EtcdctlError> {
        run_etcdctl(&self.endpoints(), self.members[0].access(), args).await
    }

    /// The certificates of a TLS cluster (see [`EtcdServer::tls_files`]).
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.members[0].tls_files()
    }

    /// Adds the `root` user and turns on auth for the whole cluster (see
    /// [`EtcdServer::enable_auth`]); every member's `etcdctl` then runs as root.
    pub async fn enable_auth(&mut self) -> Result<EtcdUser, EtcdctlError> {
        let root = self.members[0].enable_auth().await?;
        for m in &mut self.members[1..] {
            m.set_root(root.clone());
        }
        Ok(root)
    }
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.members).finish()
    }
}
