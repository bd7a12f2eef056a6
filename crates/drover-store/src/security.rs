//! How the store proves itself to etcd: TLS files (CA, client certificate and key) and an etcd
//! user whose password is in a file. The settings are checked with the endpoints
//! ([`check_endpoints`]) and read from their files when the store connects ([`load`]).
//!
//! Messages name the config field and the flag every Drover process takes for it
//! (`--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`, `--etcd-user`,
//! `--etcd-password-file`), so an operator can act on them whichever way they configured it.

use std::path::{Path, PathBuf};

use etcd_client::{Certificate, Identity, TlsOptions};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// TLS to etcd. Everything unset (the default) means plain `http://`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA (or CAs) that signed the etcd servers' certificates
    /// (`--etcd-cafile`). Required for `https://` endpoints: the system roots are never
    /// trusted for etcd. Default: none.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate presented to etcd, for a server started with
    /// `--client-cert-auth` (`--etcd-certfile`); needs `key_file`. Default: none.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (`--etcd-keyfile`). Default: none.
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether any TLS file is set: then endpoints without a scheme are `https://`, and
    /// `http://` ones are refused.
    pub fn is_enabled(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// A client certificate needs its key and the other way round.
    pub(crate) fn validate(&self) -> Result<()> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => bad(
                "tls.cert_file (--etcd-certfile) is set without tls.key_file (--etcd-keyfile): \
                 a client certificate needs its key",
            ),
            (None, Some(_)) => bad(
                "tls.key_file (--etcd-keyfile) is set without tls.cert_file (--etcd-certfile): \
                 a key needs its client certificate",
            ),
            _ => Ok(()),
        }
    }
}

/// An etcd user to authenticate as (etcd's own auth, turned on with `etcdctl auth enable`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name (`--etcd-user`).
    pub name: String,
    /// A file holding the password (`--etcd-password-file`); one trailing newline (`\n` or
    /// `\r\n`) is not part of it. The password itself never appears in the config.
    pub password_file: PathBuf,
}

impl UserConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return bad("user.name (--etcd-user) must not be empty");
        }
        Ok(())
    }
}

/// How the endpoints are reached, once their schemes agree with the TLS settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Scheme::Http => "http://",
            Scheme::Https => "https://",
        }
    }
}

/// The one scheme of all `endpoints`: the one they name, else `https` when TLS is configured
/// and `http` otherwise.
///
/// # Guarantees
///
/// Refuses, naming the endpoint and the setting: a mix of `http://` and `https://`; an
/// `https://` endpoint without a CA file; an `http://` endpoint while TLS files are set.
pub(crate) fn check_endpoints(endpoints: &[String], tls: &TlsConfig) -> Result<Scheme> {
    let named = |prefix: &str| {
        endpoints
            .iter()
            .find(|e| e.trim().starts_with(prefix))
            .cloned()
    };
    let (http, https) = (named("http://"), named("https://"));
    let scheme = match (&http, &https) {
        (Some(h), Some(s)) => {
            return bad(format!(
                "endpoints: {h} is http:// but {s} is https://: every endpoint must be reached \
                 the same way"
            ))
        }
        (Some(_), None) => Scheme::Http,
        (None, Some(_)) => Scheme::Https,
        (None, None) if tls.is_enabled() => Scheme::Https,
        (None, None) => Scheme::Http,
    };
    match scheme {
        Scheme::Https if tls.ca_file.is_none() => {
            let endpoint = https
                .or_else(|| endpoints.first().cloned())
                .unwrap_or_default();
            bad(format!(
                "endpoints: {endpoint} is https:// but no CA file is set to verify etcd's \
                 certificate with: set tls.ca_file (--etcd-cafile)"
            ))
        }
        Scheme::Http if tls.is_enabled() => bad(format!(
            "endpoints: {} is plain http:// but TLS files are set (--etcd-cafile, \
             --etcd-certfile, --etcd-keyfile): use https://",
            http.unwrap_or_default()
        )),
        _ => Ok(scheme),
    }
}

fn bad<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::InvalidConfig(msg.into()))
}

/// The credentials as read from their files.
pub(crate) struct Loaded {
    /// TLS for every endpoint, when configured.
    pub tls: Option<TlsOptions>,
    /// The user and password, when configured.
    pub user: Option<Credentials>,
}

/// A user name and its password; `Debug` leaves the password out.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Reads every file `tls` and `user` name.
///
/// # Guarantees
///
/// A file that cannot be read, a certificate or key file without the PEM block it must hold,
/// or an empty password is [`Error::Credentials`] naming the file and its flag.
pub(crate) fn load(tls: &TlsConfig, user: Option<&UserConfig>) -> Result<Loaded> {
    let tls = if tls.is_enabled() {
        let mut options = TlsOptions::new();
        if let Some(path) = &tls.ca_file {
            let pem = read_pem(Role::Ca, path, "CERTIFICATE-----")?;
            options = options.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            let cert = read_pem(Role::Cert, cert, "CERTIFICATE-----")?;
            let key = read_pem(Role::Key, key, "PRIVATE KEY-----")?;
            options = options.identity(Identity::from_pem(cert, key));
        }
        Some(options)
    } else {
        None
    };
    let user = user
        .map(|u| {
            Ok::<_, Error>(Credentials {
                name: u.name.clone(),
                password: read_password(&u.password_file)?,
            })
        })
        .transpose()?;
    Ok(Loaded { tls, user })
}

/// Which credential file a failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Ca,
    Cert,
    Key,
    Password,
}

impl Role {
    fn describe(self) -> &'static str {
        match self {
            Role::Ca => "CA file (--etcd-cafile)",
            Role::Cert => "client certificate (--etcd-certfile)",
            Role::Key => "client key (--etcd-keyfile)",
            Role::Password => "password file (--etcd-password-file)",
        }
    }
}

fn credentials_error(role: Role, path: &Path, reason: impl Into<String>) -> Error {
    Error::Credentials {
        what: role.describe(),
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read(role: Role, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| credentials_error(role, path, e.to_string()))
}

/// The file's bytes, which must hold a PEM block whose `-----BEGIN` line ends with `block`.
fn read_pem(role: Role, path: &Path, block: &str) -> Result<Vec<u8>> {
    let bytes = read(role, path)?;
    let text = String::from_utf8_lossy(&bytes);
    let has_block = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(block));
    if !has_block {
        let want = format!("-----BEGIN {}", block.trim_end_matches('-'));
        return Err(credentials_error(
            role,
            path,
            format!("not PEM: no '{want}' line"),
        ));
    }
    Ok(bytes)
}

fn read_password(path: &Path) -> Result<String> {
    let bytes = read(Role::Password, path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| credentials_error(Role::Password, path, "not UTF-8"))?;
    let password = parse_password(&text);
    if password.is_empty() {
        return Err(credentials_error(Role::Password, path, "it is empty"));
    }
    Ok(password.to_string())
}

/// The password in a password file's text: everything but one trailing `\n` or `\r\n`.
fn parse_password(text: &str) -> &str {
    text.strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(ca: bool, cert: bool, key: bool) -> TlsConfig {
        TlsConfig {
            ca_file: ca.then(|| "ca.pem".into()),
            cert_file: cert.then(|| "c.pem".into()),
            key_file: key.then(|| "k.pem".into()),
        }
    }

    fn eps(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        r.expect_err("must be refused").to_string()
    }

    #[test]
    fn the_scheme_follows_the_endpoints_then_the_tls_settings() {
        let plain = TlsConfig::default();
        assert_eq!(
            check_endpoints(&eps(&["a:1"]), &plain).ok(),
            Some(Scheme::Http)
        );
        assert_eq!(
            check_endpoints(&eps(&["a:1", "b:2"]), &tls(true, false, false)).ok(),
            Some(Scheme::Https)
        );
        assert_eq!(
            check_endpoints(&eps(&["https://a:1", "b:2"]), &tls(true, true, true)).ok(),
            Some(Scheme::Https)
        );
        assert_eq!(
            check_endpoints(&eps(&["http://a:1"]), &plain).ok(),
            Some(Scheme::Http)
        );
    }

    #[test]
    fn https_without_a_ca_names_the_flag() {
        let msg = err(check_endpoints(
            &eps(&["https://a:1"]),
            &TlsConfig::default(),
        ));
        assert!(
            msg.contains("https://a:1") && msg.contains("--etcd-cafile"),
            "{msg}"
        );
        // A client certificate alone does not say whom to trust either.
        let msg = err(check_endpoints(&eps(&["a:1"]), &tls(false, true, true)));
        assert!(msg.contains("--etcd-cafile"), "{msg}");
    }

    #[test]
    fn mixed_schemes_are_refused() {
        let msg = err(check_endpoints(
            &eps(&["http://a:1", "https://b:2"]),
            &tls(true, false, false),
        ));
        assert!(
            msg.contains("http://a:1") && msg.contains("https://b:2"),
            "{msg}"
        );
    }

    #[test]
    fn tls_files_with_a_plain_endpoint_are_refused() {
        let msg = err(check_endpoints(
            &eps(&["http://a:1"]),
            &tls(true, false, false),
        ));
        assert!(
            msg.contains("http://a:1") && msg.contains("use https://"),
            "{msg}"
        );
    }

    #[test]
    fn a_certificate_needs_its_key_and_the_key_its_certificate() {
        let msg = err(tls(true, true, false).validate());
        assert!(msg.contains("--etcd-keyfile"), "{msg}");
        let msg = err(tls(true, false, true).validate());
        assert!(msg.contains("--etcd-certfile"), "{msg}");
        tls(true, true, true).validate().expect("both given");
        tls(true, false, false).validate().expect("CA only");
    }

    #[test]
    fn an_empty_user_name_is_refused() {
        let user = UserConfig {
            name: " ".into(),
            password_file: "pw".into(),
        };
        assert!(err(user.validate()).contains("--etcd-user"));
    }

    #[test]
    fn one_trailing_newline_is_not_part_of_the_password() {
        assert_eq!(parse_password("s3cret\n"), "s3cret");
        assert_eq!(parse_password("s3cret\r\n"), "s3cret");
        assert_eq!(parse_password("s3cret"), "s3cret");
        assert_eq!(parse_password("two\n\n"), "two\n");
        assert_eq!(parse_password(" spaced \n"), " spaced ");
    }

    #[test]
    fn unreadable_or_wrong_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let cfg = TlsConfig {
            ca_file: Some(missing.clone()),
            ..TlsConfig::default()
        };
        let msg = err(load(&cfg, None).map(|_| ()));
        assert!(
            msg.contains(&missing.display().to_string()) && msg.contains("--etcd-cafile"),
            "{msg}"
        );

        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").expect("write");
        let cfg = TlsConfig {
            ca_file: Some(not_pem.clone()),
            ..TlsConfig::default()
        };
        let msg = err(load(&cfg, None).map(|_| ()));
        assert!(msg.contains("not PEM"), "{msg}");

        let empty = dir.path().join("pw");
        std::fs::write(&empty, "\n").expect("write");
        let user = UserConfig {
            name: "root".into(),
            password_file: empty.clone(),
        };
        let msg = err(load(&TlsConfig::default(), Some(&user)).map(|_| ()));
        assert!(
            msg.contains("empty") && msg.contains("--etcd-password-file"),
            "{msg}"
        );

        std::fs::write(&empty, "hunter2\n").expect("write");
        let loaded = load(&TlsConfig::default(), Some(&user)).expect("loads");
        let creds = loaded.user.expect("user");
        assert_eq!(creds.password, "hunter2");
        assert!(
            !format!("{creds:?}").contains("hunter2"),
            "Debug shows no password"
        );
    }
}
