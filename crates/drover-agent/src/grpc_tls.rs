//! The agent's gRPC server over mutual TLS: `--tls-cert-file`, `--tls-key-file` and
//! `--client-ca-file` read, checked and turned into a tonic server that requires a client
//! certificate signed by that CA.

use std::path::PathBuf;

use drover_proto::tls::{self, PemFile};
use tonic::transport::{Server, ServerTlsConfig};

use crate::config::GrpcTlsFiles;

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The TLS files cannot serve (exit 64 at the binary). Messages name the files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file is unreadable or holds no usable PEM.
    #[error(transparent)]
    Pem(#[from] tls::Error),
    /// The files parse as PEM but rustls refuses them together (a key that is not the
    /// certificate's, DER that is no certificate).
    #[error(
        "gRPC TLS: --tls-cert-file {}, --tls-key-file {}, --client-ca-file {}: {message}",
        .cert.display(), .key.display(), .client_ca.display()
    )]
    Refused {
        /// `--tls-cert-file`.
        cert: PathBuf,
        /// `--tls-key-file`.
        key: PathBuf,
        /// `--client-ca-file`.
        client_ca: PathBuf,
        /// What rustls said.
        message: String,
    },
}

/// A tonic server builder: plain with `None`, else TLS with client certificates required.
///
/// # Guarantees
///
/// With files, every file is read and the rustls server config is built here, so a bad file
/// is refused when the agent starts, not at the first connection. The server never accepts a
/// connection without a client certificate that chains to `client_ca` (no optional client
/// auth).
pub fn server(files: Option<&GrpcTlsFiles>) -> Result<Server> {
    let Some(files) = files else {
        return Ok(Server::builder());
    };
    let identity = tls::identity(
        PemFile {
            flag: "--tls-cert-file",
            path: &files.cert,
        },
        PemFile {
            flag: "--tls-key-file",
            path: &files.key,
        },
    )?;
    let client_ca = tls::certificates(PemFile {
        flag: "--client-ca-file",
        path: &files.client_ca,
    })?;
    let config = ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(client_ca)
        .client_auth_optional(false);
    Server::builder()
        .tls_config(config)
        .map_err(|e| Error::Refused {
            cert: files.cert.clone(),
            key: files.key.clone(),
            client_ca: files.client_ca.clone(),
            message: drover_proto::client::causes(&e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_needs_no_files() {
        server(None).expect("plaintext");
    }

    #[test]
    fn the_test_pki_serves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = drover_testkit::TlsFiles::generate(dir.path());
        let files = GrpcTlsFiles {
            cert: pki.server_cert,
            key: pki.server_key,
            client_ca: pki.ca,
        };
        server(Some(&files)).expect("valid PKI");
    }

    #[test]
    fn an_unreadable_file_is_named_with_its_flag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = drover_testkit::TlsFiles::generate(dir.path());
        let f = GrpcTlsFiles {
            cert: pki.server_cert,
            key: pki.server_key,
            client_ca: dir.path().join("missing-ca.pem"),
        };
        let err = server(Some(&f)).expect_err("no CA file");
        let text = err.to_string();
        assert!(text.contains("--client-ca-file"), "{text}");
        assert!(text.contains(&f.client_ca.display().to_string()), "{text}");
    }

    #[test]
    fn bad_pem_and_a_foreign_key_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = drover_testkit::TlsFiles::generate(dir.path());
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").expect("write");
        let f = GrpcTlsFiles {
            cert: junk.clone(),
            key: pki.server_key.clone(),
            client_ca: pki.ca.clone(),
        };
        let text = server(Some(&f)).expect_err("junk cert").to_string();
        assert!(text.contains("--tls-cert-file"), "{text}");
        assert!(text.contains("junk.pem"), "{text}");
        let f = GrpcTlsFiles {
            cert: pki.server_cert.clone(),
            key: junk,
            client_ca: pki.ca.clone(),
        };
        let text = server(Some(&f)).expect_err("junk key").to_string();
        assert!(text.contains("--tls-key-file"), "{text}");
        let f = GrpcTlsFiles {
            cert: pki.server_cert,
            key: pki.client_key,
            client_ca: pki.ca,
        };
        let err = server(Some(&f)).expect_err("key of another certificate");
        assert!(matches!(err, Error::Refused { .. }), "{err}");
    }
}
