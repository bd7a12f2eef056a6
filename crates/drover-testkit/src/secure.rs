//! A test etcd's security: TLS with client-certificate auth, etcd users, and the flags that the
//! server and `etcdctl` get for them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tempfile::TempDir;

use crate::certs::TlsFiles;

/// How a test etcd serves its clients. The default is what [`EtcdServer::start`]
/// (crate::EtcdServer::start) has always started: plain http, no auth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Serve clients (and a cluster's peers) over TLS and require a client certificate signed
    /// by the test CA (`--client-cert-auth`, `--peer-client-cert-auth`).
    pub tls: bool,
    /// etcd's `--auth-token-ttl` in seconds (etcd's default: 300), so that a test can let the
    /// simple tokens of its clients expire.
    pub auth_token_ttl: Option<u32>,
}

impl EtcdOptions {
    /// TLS with client-certificate auth, otherwise etcd's defaults.
    pub fn tls() -> EtcdOptions {
        EtcdOptions {
            tls: true,
            ..EtcdOptions::default()
        }
    }
}

/// A test PKI in a directory of its own, shared by the members of a cluster.
#[derive(Debug)]
pub(crate) struct Pki {
    _dir: TempDir,
    pub files: TlsFiles,
}

impl Pki {
    /// Makes a fresh PKI in a new temp dir.
    pub(crate) fn generate() -> Arc<Pki> {
        let dir = tempfile::Builder::new()
            .prefix("drover-pki-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for certificates: {e}"));
        let files = TlsFiles::generate(dir.path());
        Arc::new(Pki { _dir: dir, files })
    }
}

/// An etcd user a test made, with its password also in a file (as `--etcd-password-file`
/// takes it: one line, newline-terminated).
#[derive(Debug, Clone)]
pub struct EtcdUser {
    /// The user name.
    pub name: String,
    /// The password.
    pub password: String,
    /// A file holding `password` and a newline.
    pub password_file: PathBuf,
}

impl EtcdUser {
    /// A user named `name` with a random password, written to a file under `dir`.
    pub(crate) fn new(name: &str, dir: &Path) -> EtcdUser {
        let password = format!("pw-{:016x}", rand::random::<u64>());
        let password_file = dir.join(format!("{name}.password"));
        std::fs::write(&password_file, format!("{password}\n")).unwrap_or_else(|e| {
            panic!("cannot write {}: {e}", password_file.display());
        });
        EtcdUser {
            name: name.to_string(),
            password,
            password_file,
        }
    }
}

/// What `etcdctl` needs to reach a member: its TLS files and, once auth is on, the root user.
#[derive(Debug, Clone, Default)]
pub(crate) struct EtcdctlAccess {
    pub tls: Option<Arc<Pki>>,
    pub root: Option<EtcdUser>,
}

impl EtcdctlAccess {
    /// The flags before etcdctl's command.
    pub(crate) fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(pki) = &self.tls {
            let f = &pki.files;
            args.push(format!("--cacert={}", f.ca.display()));
            args.push(format!("--cert={}", f.client_cert.display()));
            args.push(format!("--key={}", f.client_key.display()));
        }
        if let Some(root) = &self.root {
            args.push(format!("--user={}:{}", root.name, root.password));
        }
        args
    }
}

/// The URL scheme clients and peers use.
pub(crate) fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// The server flags for `options` with the member's certificates.
pub(crate) fn server_args(options: EtcdOptions, pki: Option<&Pki>) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(pki) = pki.filter(|_| options.tls) {
        let f = &pki.files;
        args.push(format!("--cert-file={}", f.server_cert.display()));
        args.push(format!("--key-file={}", f.server_key.display()));
        args.push(format!("--trusted-ca-file={}", f.ca.display()));
        args.push("--client-cert-auth".to_string());
        args.push(format!("--peer-cert-file={}", f.server_cert.display()));
        args.push(format!("--peer-key-file={}", f.server_key.display()));
        args.push(format!("--peer-trusted-ca-file={}", f.ca.display()));
        args.push("--peer-client-cert-auth".to_string());
    }
    if let Some(ttl) = options.auth_token_ttl {
        args.push(format!("--auth-token-ttl={ttl}"));
    }
    args
}
