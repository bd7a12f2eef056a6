//! PEM files for the agent's gRPC over mutual TLS, read and checked the same way on both
//! sides (the agent's certificate, key and client CA; `drover logs`' CA, certificate and key),
//! and the client's TLS settings for one agent.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A TLS file that cannot be used. Every message names the flag and the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{flag} {}: cannot read it: {source}", path.display())]
    Read {
        /// The flag that named the file (e.g. `--tls-cert-file`).
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no PEM item of the kind wanted, or malformed PEM.
    #[error("{flag} {}: {message}", path.display())]
    Pem {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// A file named by a flag, for messages that name both.
#[derive(Debug, Clone, Copy)]
pub struct PemFile<'a> {
    /// The flag (e.g. `--client-ca-file`).
    pub flag: &'static str,
    /// The file.
    pub path: &'a Path,
}

impl PemFile<'_> {
    fn read(&self) -> Result<Vec<u8>> {
        std::fs::read(self.path).map_err(|source| Error::Read {
            flag: self.flag,
            path: self.path.to_path_buf(),
            source,
        })
    }

    fn bad(&self, message: impl Into<String>) -> Error {
        Error::Pem {
            flag: self.flag,
            path: self.path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Reads PEM certificates (a CA bundle or a certificate chain) from `file`.
///
/// # Guarantees
///
/// The file holds at least one well-formed `CERTIFICATE` block and no malformed PEM; whether
/// the DER inside is a valid X.509 certificate is left to rustls when the TLS config is built.
pub fn certificates(file: PemFile<'_>) -> Result<Certificate> {
    let pem = file.read()?;
    let mut count = 0usize;
    for item in CertificateDer::pem_slice_iter(&pem) {
        item.map_err(|e| file.bad(format!("bad PEM: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(file.bad("no PEM CERTIFICATE block in it"));
    }
    Ok(Certificate::from_pem(pem))
}

/// Reads a certificate chain and its private key (PKCS#8, PKCS#1 or SEC1 PEM).
pub fn identity(cert: PemFile<'_>, key: PemFile<'_>) -> Result<Identity> {
    let chain = certificates(cert)?;
    let pem = key.read()?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| key.bad(format!("no usable PEM private key in it: {e}")))?;
    Ok(Identity::from_pem(chain.into_inner(), pem))
}

/// How a client talks TLS to agents: the CA their certificates must chain to, and the client
/// certificate it presents (agents serving mTLS refuse a client without one).
#[derive(Debug, Clone)]
pub struct ClientTls {
    ca: Certificate,
    identity: Option<Identity>,
}

impl ClientTls {
    /// Trusts agents whose certificates `ca` signed and presents `identity`, if any.
    pub fn new(ca: Certificate, identity: Option<Identity>) -> Self {
        ClientTls { ca, identity }
    }

    /// Whether a client certificate is presented.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// tonic's config for an agent whose certificate must name `server_name` (a DNS name or
    /// an IP address).
    pub(crate) fn config(&self, server_name: &str) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .domain_name(server_name);
        match &self.identity {
            Some(identity) => config.identity(identity.clone()),
            None => config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file<'a>(path: &'a Path) -> PemFile<'a> {
        PemFile {
            flag: "--agent-cafile",
            path,
        }
    }

    #[test]
    fn a_missing_file_is_named_with_its_flag() {
        let err = certificates(file(Path::new("/nonexistent/ca.pem"))).expect_err("missing");
        let text = err.to_string();
        assert!(text.contains("--agent-cafile"), "{text}");
        assert!(text.contains("/nonexistent/ca.pem"), "{text}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not pem at all\n").expect("write");
        let err = certificates(file(&path)).expect_err("no certificate");
        assert!(matches!(err, Error::Pem { .. }), "{err}");
        assert!(err.to_string().contains("no PEM CERTIFICATE"), "{err}");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\n!!!notbase64\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = certificates(file(&path)).expect_err("bad base64");
        assert!(err.to_string().contains("bad PEM"), "{err}");
    }

    #[test]
    fn a_key_file_without_a_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        // A syntactically valid CERTIFICATE block (content is only checked by rustls later).
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "").expect("write");
        let err = identity(
            PemFile {
                flag: "--agent-certfile",
                path: &cert,
            },
            PemFile {
                flag: "--agent-keyfile",
                path: &key,
            },
        )
        .expect_err("no key");
        assert!(err.to_string().contains("--agent-keyfile"), "{err}");
        assert!(err.to_string().contains("private key"), "{err}");
    }
}
