//! `drover admin bootstrap`: etcd's users and roles for Drover ([`roles`]), each user's new
//! password in a file of its own, then etcd's authentication turned on.
//!
//! # Guarantees
//!
//! - Repeatable: roles and users that exist are kept (an existing user keeps its password, and
//!   no file is written for it); a role's permissions are granted again.
//! - A new password is on disk (mode 0600) before the user that has it is created, so a
//!   failure never leaves a user whose password nobody has; an existing user's password file
//!   is never touched.
//! - Authentication is turned on last, once every role and user exists.

pub mod roles;

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use drover_api::names::is_valid_label;
use drover_store::{Ensured, Store};

use super::{connect, store_error};
use crate::cli::{BootstrapArgs, Global};
use crate::exit::{CliError, CliResult};

/// etcd's built-in administrator.
const ROOT: &str = "root";

pub async fn run(global: &Global, args: BootstrapArgs) -> CliResult {
    if let Some(bad) = args.nodes.iter().find(|n| !is_valid_label(n)) {
        return Err(CliError::usage(format!(
            "--node {bad:?}: not a node name (lowercase letters, digits and '-', at most 63)"
        )));
    }
    let root_password = match &args.root_password_file {
        Some(file) => Some(read_password(file)?),
        None => None,
    };
    let (store, keys) = connect(global).await?;
    let dir = &args.credentials_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| {
            CliError::failure(format!("--credentials-dir {}: {error}", dir.display()))
        })?;

    for role in roles::all(&keys, &args.nodes) {
        let ensured = store
            .ensure_role(&role.name, &role.grants)
            .await
            .map_err(|error| store_error(&format!("role {}", role.name), error))?;
        println!("role/{} {}", role.name, verb(ensured));
        user(&store, dir, &role.name, Some(&role.name), None).await?;
    }
    user(&store, dir, ROOT, Some(ROOT), root_password).await?;
    store
        .enable_auth()
        .await
        .map_err(|error| store_error("turning etcd's authentication on", error))?;
    println!("etcd authentication on");
    Ok(())
}

/// Makes user `name` (granted `role`) unless it exists; a new user's password (`password`, or
/// a new random one written to `<dir>/<name>.password`) is reported.
async fn user(
    store: &Store,
    dir: &Path,
    name: &str,
    role: Option<&str>,
    password: Option<String>,
) -> CliResult {
    let file = dir.join(format!("{name}.password"));
    let pending = dir.join(format!("{name}.password.new"));
    let (password, written) = match password {
        Some(password) => (password, false),
        None => (new_password(), true),
    };
    // Written first, under a name of its own: a user is never created with a password that
    // is not on disk, and an existing user's file is never touched.
    if written {
        write_secret(&pending, &password)?;
    }
    let ensured = store
        .ensure_user(name, &password, role)
        .await
        .map_err(|error| store_error(&format!("user {name}"), error));
    let keep = matches!(ensured, Ok(Ensured::Created));
    if written {
        let done = if keep {
            std::fs::rename(&pending, &file)
        } else {
            std::fs::remove_file(&pending)
        };
        done.map_err(|error| CliError::failure(format!("{}: {error}", pending.display())))?;
    }
    match ensured? {
        Ensured::Created if written => {
            println!("user/{name} created; password in {}", file.display());
        }
        Ensured::Created => println!("user/{name} created"),
        Ensured::Existed => {
            println!("user/{name} unchanged (it existed; its password is as it was)");
        }
    }
    Ok(())
}

fn verb(ensured: Ensured) -> &'static str {
    match ensured {
        Ensured::Created => "created",
        Ensured::Existed => "updated",
    }
}

/// 32 random bytes as hex.
fn new_password() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_password(file: &PathBuf) -> CliResult<String> {
    let text = std::fs::read_to_string(file).map_err(|error| {
        CliError::usage(format!("--root-password-file {}: {error}", file.display()))
    })?;
    let password = text.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(CliError::usage(format!(
            "--root-password-file {}: the file is empty",
            file.display()
        )));
    }
    Ok(password)
}

/// Writes `secret` to `file`, readable by its owner only (replacing an older file).
fn write_secret(file: &Path, secret: &str) -> CliResult {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .map_err(|error| CliError::failure(format!("{}: {error}", file.display())))?;
    writeln!(f, "{secret}")
        .map_err(|error| CliError::failure(format!("{}: {error}", file.display())))
}
