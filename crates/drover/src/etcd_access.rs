//! How every Drover process proves itself to etcd: the global TLS and user flags, turned into
//! the store's settings, and back into flags for the processes a verb starts itself.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Args;
use drover_store::{StoreConfig, TlsConfig, UserConfig};

/// `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile` (the Kubernetes API server's names),
/// `--etcd-user` and `--etcd-password-file`, each also from a `DROVER_ETCD_*` variable. The
/// password is only ever read from a file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct EtcdAccess {
    /// PEM file of the CA that signed etcd's certificate; needed for https:// endpoints, and
    /// makes endpoints given as host:port https://.
    #[arg(long, env = "DROVER_ETCD_CAFILE", value_name = "FILE", global = true)]
    pub etcd_cafile: Option<PathBuf>,
    /// PEM client certificate to present to etcd (for `etcd --client-cert-auth`).
    #[arg(long, env = "DROVER_ETCD_CERTFILE", value_name = "FILE", global = true)]
    pub etcd_certfile: Option<PathBuf>,
    /// PEM private key of --etcd-certfile.
    #[arg(long, env = "DROVER_ETCD_KEYFILE", value_name = "FILE", global = true)]
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd user to authenticate as, when etcd's auth is on (needs --etcd-password-file).
    #[arg(long, env = "DROVER_ETCD_USER", value_name = "NAME", global = true)]
    pub etcd_user: Option<String>,
    /// File holding the password of --etcd-user (a trailing newline is not part of it).
    #[arg(
        long,
        env = "DROVER_ETCD_PASSWORD_FILE",
        value_name = "FILE",
        global = true
    )]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdAccess {
    /// Whether any of the flags is set.
    pub fn is_set(&self) -> bool {
        *self != EtcdAccess::default()
    }

    /// The store's TLS and user settings.
    ///
    /// # Guarantees
    ///
    /// Refuses a user without a password file and a password file without a user, naming both
    /// flags. Everything else (a certificate without its key, https without a CA, files that
    /// cannot be read) is refused by the store, whose messages name these flags too.
    pub fn settings(&self) -> Result<(TlsConfig, Option<UserConfig>), String> {
        let tls = TlsConfig {
            ca_file: self.etcd_cafile.clone(),
            cert_file: self.etcd_certfile.clone(),
            key_file: self.etcd_keyfile.clone(),
        };
        let user = match (&self.etcd_user, &self.etcd_password_file) {
            (Some(name), Some(file)) => Some(UserConfig {
                name: name.clone(),
                password_file: file.clone(),
            }),
            (Some(_), None) => {
                return Err(
                    "--etcd-user needs --etcd-password-file (the password is only \
                     read from a file, never taken on the command line)"
                        .to_string(),
                )
            }
            (None, Some(_)) => {
                return Err("--etcd-password-file needs --etcd-user".to_string());
            }
            (None, None) => None,
        };
        Ok((tls, user))
    }

    /// Sets `config`'s TLS and user from the flags (see [`settings`](Self::settings)).
    pub fn apply(&self, config: &mut StoreConfig) -> Result<(), String> {
        let (tls, user) = self.settings()?;
        config.tls = tls;
        config.user = user;
        Ok(())
    }

    /// The same flags for a `drover` process this one starts (the bench's controllers and
    /// agents), so that it reaches etcd the same way.
    pub fn child_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        let mut flag = |name: &str, value: OsString| {
            args.push(OsString::from(name));
            args.push(value);
        };
        let paths = [
            ("--etcd-cafile", &self.etcd_cafile),
            ("--etcd-certfile", &self.etcd_certfile),
            ("--etcd-keyfile", &self.etcd_keyfile),
            ("--etcd-password-file", &self.etcd_password_file),
        ];
        for (name, path) in paths {
            if let Some(path) = path {
                flag(name, path.clone().into_os_string());
            }
        }
        if let Some(user) = &self.etcd_user {
            flag("--etcd-user", OsString::from(user));
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        access: EtcdAccess,
    }

    fn parse(args: &[&str]) -> EtcdAccess {
        let argv = std::iter::once("probe").chain(args.iter().copied());
        Probe::try_parse_from(argv).expect("parses").access
    }

    fn config(args: &[&str], endpoints: &[&str]) -> Result<StoreConfig, String> {
        let mut cfg = StoreConfig::new(endpoints.iter().copied());
        parse(args).apply(&mut cfg)?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn no_flags_is_plain_http() {
        let access = parse(&[]);
        assert!(!access.is_set());
        let cfg = config(&[], &["127.0.0.1:2379"]).expect("valid");
        assert_eq!(cfg.tls, TlsConfig::default());
        assert!(cfg.user.is_none());
    }

    #[test]
    fn tls_and_user_flags_reach_the_store_config() {
        let cfg = config(
            &[
                "--etcd-cafile=/pki/ca.pem",
                "--etcd-certfile=/pki/c.pem",
                "--etcd-keyfile=/pki/k.pem",
                "--etcd-user=drover",
                "--etcd-password-file=/pki/pw",
            ],
            &["https://e1:2379", "e2:2379"],
        )
        .expect("valid");
        assert_eq!(cfg.tls.ca_file, Some("/pki/ca.pem".into()));
        assert_eq!(cfg.tls.cert_file, Some("/pki/c.pem".into()));
        assert_eq!(cfg.tls.key_file, Some("/pki/k.pem".into()));
        let user = cfg.user.expect("user");
        assert_eq!(user.name, "drover");
        assert_eq!(user.password_file, PathBuf::from("/pki/pw"));
    }

    #[test]
    fn a_user_needs_a_password_file_and_the_other_way_round() {
        let msg = config(&["--etcd-user=root"], &["a:1"]).expect_err("no password file");
        assert!(msg.contains("--etcd-password-file"), "{msg}");
        let msg = config(&["--etcd-password-file=/pw"], &["a:1"]).expect_err("no user");
        assert!(msg.contains("--etcd-user"), "{msg}");
    }

    #[test]
    fn bad_combinations_name_the_flag() {
        let msg = config(&[], &["https://a:1"]).expect_err("https without a CA");
        assert!(msg.contains("--etcd-cafile"), "{msg}");
        let msg = config(&["--etcd-cafile=/ca", "--etcd-certfile=/c"], &["a:1"])
            .expect_err("certificate without key");
        assert!(msg.contains("--etcd-keyfile"), "{msg}");
        let msg = config(&["--etcd-cafile=/ca", "--etcd-keyfile=/k"], &["a:1"])
            .expect_err("key without certificate");
        assert!(msg.contains("--etcd-certfile"), "{msg}");
        let msg = config(&["--etcd-cafile=/ca"], &["http://a:1"]).expect_err("plain endpoint");
        assert!(msg.contains("http://a:1"), "{msg}");
        let msg =
            config(&["--etcd-cafile=/ca"], &["https://a:1", "http://b:2"]).expect_err("mixed");
        assert!(
            msg.contains("http://b:2") && msg.contains("https://a:1"),
            "{msg}"
        );
    }

    #[test]
    fn there_is_no_password_flag() {
        let argv = ["probe", "--etcd-password=secret"];
        assert!(Probe::try_parse_from(argv).is_err());
    }

    #[test]
    fn child_args_parse_back_to_the_same_flags() {
        let access = parse(&[
            "--etcd-cafile=/pki/ca.pem",
            "--etcd-certfile=/pki/c.pem",
            "--etcd-keyfile=/pki/k.pem",
            "--etcd-user=drover",
            "--etcd-password-file=/pki/pw",
        ]);
        let args = access.child_args();
        let argv = std::iter::once(OsString::from("probe")).chain(args);
        let again = Probe::try_parse_from(argv).expect("parses").access;
        assert_eq!(again, access);
        assert!(parse(&[]).child_args().is_empty());
    }
}
