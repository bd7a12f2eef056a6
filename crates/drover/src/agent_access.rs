//! How `drover logs` proves itself to agents that serve mutual TLS, and how it picks plaintext
//! or TLS for one agent from that agent's node key.

use std::path::PathBuf;

use clap::Args;
use drover_api::node::Node;
use drover_proto::client::AgentEndpoint;
use drover_proto::tls::{self, ClientTls, PemFile};

/// `--agent-cafile`, `--agent-certfile`, `--agent-keyfile`, each also from a `DROVER_AGENT_*`
/// variable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct AgentAccess {
    /// PEM file of the CA that signed the agents' certificates; needed for agents that serve
    /// TLS (their node key says so), whose certificates must name their advertised host.
    #[arg(long, env = "DROVER_AGENT_CAFILE", value_name = "FILE")]
    pub agent_cafile: Option<PathBuf>,
    /// PEM client certificate to present to agents (they require one signed by their
    /// --client-ca-file).
    #[arg(long, env = "DROVER_AGENT_CERTFILE", value_name = "FILE")]
    pub agent_certfile: Option<PathBuf>,
    /// PEM private key of --agent-certfile.
    #[arg(long, env = "DROVER_AGENT_KEYFILE", value_name = "FILE")]
    pub agent_keyfile: Option<PathBuf>,
}

/// Why no endpoint could be made for an agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flags are incomplete or contradict each other.
    #[error("{0}")]
    Usage(String),
    /// A file named by a flag cannot be used.
    #[error(transparent)]
    File(#[from] tls::Error),
    /// The agent's node key says TLS but no CA was given to verify it with.
    #[error(
        "agent {node} at {address} serves gRPC over mutual TLS: give --agent-cafile (the CA of \
         agents' certificates) with --agent-certfile and --agent-keyfile"
    )]
    TlsNeeded {
        /// The node.
        node: String,
        /// Its advertised address.
        address: String,
    },
    /// The agent serves plaintext while this client was told to verify agents.
    #[error(
        "agent {node} at {address} serves plaintext gRPC, but --agent-cafile was given: not \
         sending the request without TLS (drop the --agent-* flags to talk to a plaintext agent)"
    )]
    Downgrade {
        /// The node.
        node: String,
        /// Its advertised address.
        address: String,
    },
}

impl Error {
    /// Whether the command line is at fault (exit 64) rather than the agent's setup.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Usage(_) | Error::File(_) | Error::TlsNeeded { .. }
        )
    }
}

impl AgentAccess {
    /// The client's TLS settings, or `None` when no flag is given.
    ///
    /// # Guarantees
    ///
    /// A certificate needs its key and the other way round, and either needs the CA; every
    /// file is read and checked as PEM here, each error naming its flag and file. A CA alone
    /// is allowed: it verifies agents, which then refuse the client for lack of a certificate.
    pub fn client_tls(&self) -> Result<Option<ClientTls>, Error> {
        let identity = match (&self.agent_certfile, &self.agent_keyfile) {
            (Some(cert), Some(key)) => Some(tls::identity(
                PemFile {
                    flag: "--agent-certfile",
                    path: cert,
                },
                PemFile {
                    flag: "--agent-keyfile",
                    path: key,
                },
            )?),
            (Some(_), None) => {
                return Err(Error::Usage(
                    "--agent-certfile needs --agent-keyfile".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::Usage(
                    "--agent-keyfile needs --agent-certfile".into(),
                ))
            }
            (None, None) => None,
        };
        let Some(ca) = &self.agent_cafile else {
            return match identity {
                Some(_) => Err(Error::Usage(
                    "--agent-certfile and --agent-keyfile need --agent-cafile, to verify the \
                     agent's certificate"
                        .into(),
                )),
                None => Ok(None),
            };
        };
        let ca = tls::certificates(PemFile {
            flag: "--agent-cafile",
            path: ca,
        })?;
        Ok(Some(ClientTls::new(ca, identity)))
    }
}

/// How to reach the agent of `node`: TLS when its node key says it serves TLS, plaintext when
/// it says not.
///
/// # Guarantees
///
/// Never plaintext when `tls` is set: a node key that claims plaintext (written by an old
/// agent, or by whoever can write it) cannot downgrade a client told to verify agents.
pub fn endpoint(tls: Option<&ClientTls>, node: &Node) -> Result<AgentEndpoint, Error> {
    match (node.tls, tls) {
        (true, Some(tls)) => Ok(AgentEndpoint::tls(node.address.clone(), tls.clone())),
        (false, None) => Ok(AgentEndpoint::plaintext(node.address.clone())),
        (true, None) => Err(Error::TlsNeeded {
            node: node.name.clone(),
            address: node.address.clone(),
        }),
        (false, Some(_)) => Err(Error::Downgrade {
            node: node.name.clone(),
            address: node.address.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        access: AgentAccess,
    }

    fn parse(args: &[&str]) -> AgentAccess {
        let argv = std::iter::once("probe").chain(args.iter().copied());
        Probe::try_parse_from(argv).expect("parses").access
    }

    fn node(tls: bool) -> Node {
        Node {
            name: "n1".into(),
            address: "127.0.0.1:7400".into(),
            capacity: Default::default(),
            labels: Default::default(),
            drivers: Vec::new(),
            version: "test".into(),
            tls,
            started_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn no_flags_is_plaintext_and_refuses_a_tls_agent() {
        let access = parse(&[]);
        let tls = access.client_tls().expect("no flags");
        assert!(tls.is_none());
        endpoint(None, &node(false)).expect("plaintext");
        let err = endpoint(None, &node(true)).expect_err("needs a CA");
        assert!(err.is_usage());
        assert!(err.to_string().contains("--agent-cafile"), "{err}");
    }

    #[test]
    fn half_an_identity_names_the_missing_flag() {
        let err = parse(&["--agent-certfile=/c.pem"])
            .client_tls()
            .expect_err("no key");
        assert!(err.to_string().contains("needs --agent-keyfile"), "{err}");
        let err = parse(&["--agent-keyfile=/k.pem"])
            .client_tls()
            .expect_err("no cert");
        assert!(err.to_string().contains("needs --agent-certfile"), "{err}");
        assert!(err.is_usage());
    }

    #[test]
    fn files_are_read_and_named() {
        let err = parse(&["--agent-cafile=/nonexistent/ca.pem"])
            .client_tls()
            .expect_err("missing CA");
        let text = err.to_string();
        assert!(
            text.contains("--agent-cafile /nonexistent/ca.pem"),
            "{text}"
        );
        assert!(err.is_usage());
    }

    #[test]
    fn a_client_told_to_verify_never_falls_back_to_plaintext() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        // Syntactically valid PEM; rustls checks the DER only when connecting.
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let access = parse(&[&format!("--agent-cafile={}", ca.display())]);
        let tls = access.client_tls().expect("CA alone").expect("some");
        assert!(!tls.has_identity());
        let err = endpoint(Some(&tls), &node(false)).expect_err("downgrade");
        assert!(matches!(err, Error::Downgrade { .. }), "{err}");
        assert!(!err.is_usage());
        let endpoint = endpoint(Some(&tls), &node(true)).expect("tls");
        assert_eq!(endpoint.address(), "127.0.0.1:7400");
    }
}
