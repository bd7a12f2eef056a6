//! Test certificates for a TLS etcd: a CA, a server certificate for loopback, client
//! certificates, and a second CA that trusts none of them, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The common name of [`TlsFiles::client_cert`]. No etcd user has this name, so etcd's
/// `--client-cert-auth` (which takes a certificate's CN as the user when a request carries no
/// token) grants a request authenticated by the certificate alone nothing once auth is enabled.
pub const CLIENT_CN: &str = "drover-test-client";

/// PEM files of one test PKI, in a directory the caller owns.
///
/// # Guarantees
///
/// - `server_cert` names `127.0.0.1` (IP) and `localhost` (DNS), with the server-auth
///   purpose, so rustls and Go both accept it for `https://127.0.0.1:PORT`; it also has the
///   client-auth purpose, as etcd's peers present their server certificate to each other.
/// - `client_cert` has the client-auth purpose and CN [`CLIENT_CN`].
/// - `other_ca` signed nothing here; `other_client_cert` is signed by it: a client certificate
///   the etcd server does not trust.
/// - Keys are ECDSA P-256 in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// The etcd server's (and peers') certificate.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate the server trusts.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// A CA unrelated to the server: verifying the server with it fails.
    pub other_ca: PathBuf,
    /// A client certificate signed by `other_ca`: the server refuses it.
    pub other_client_cert: PathBuf,
    /// Its key.
    pub other_client_key: PathBuf,
}

impl TlsFiles {
    /// Makes a fresh PKI and writes it under `dir` (created if missing).
    ///
    /// # Panics
    ///
    /// When a certificate cannot be made or a file cannot be written: test support.
    pub fn generate(dir: &Path) -> TlsFiles {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
            other_ca: dir.join("other-ca.pem"),
            other_client_cert: dir.join("other-client.pem"),
            other_client_key: dir.join("other-client-key.pem"),
        };
        let ca = new_ca("drover test CA");
        write(&files.ca, &ca.pem());
        let (cert, key) = leaf(
            &ca,
            "drover test etcd",
            &["127.0.0.1", "localhost"],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        write(&files.server_cert, &cert);
        write(&files.server_key, &key);
        let (cert, key) = leaf(&ca, CLIENT_CN, &[], &[ExtendedKeyUsagePurpose::ClientAuth]);
        write(&files.client_cert, &cert);
        write(&files.client_key, &key);
        let other = new_ca("drover test other CA");
        write(&files.other_ca, &other.pem());
        let (cert, key) = leaf(
            &other,
            CLIENT_CN,
            &[],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        );
        write(&files.other_client_cert, &cert);
        write(&files.other_client_key, &key);
        files
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, key_pair())
        .unwrap_or_else(|e| panic!("cannot make the test CA: {e}"))
}

/// A certificate signed by `ca` and its key, both PEM.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    sans: &[&str],
    purposes: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let sans: Vec<String> = sans.iter().map(|s| (*s).to_string()).collect();
    let mut params = CertificateParams::new(sans)
        .unwrap_or_else(|e| panic!("bad subject alternative names: {e}"));
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = purposes.to_vec();
    params.use_authority_key_identifier_extension = true;
    let key = key_pair();
    let cert = params
        .signed_by(&key, ca)
        .unwrap_or_else(|e| panic!("cannot sign the {name} certificate: {e}"));
    (cert.pem(), key.serialize_pem())
}

fn key_pair() -> KeyPair {
    KeyPair::generate().unwrap_or_else(|e| panic!("cannot generate a key pair: {e}"))
}

fn write(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
