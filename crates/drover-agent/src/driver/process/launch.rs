//! How a process of an instance is launched — as whom, with which environment, in which
//! directory — decided once from the spec and the node, so that the instance's own process and
//! its exec probes run alike (a probe run as the agent would hand out the agent's privileges).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::environ;
use super::identity::{self, Accounts, Policy, Refusal, RunAs};
use crate::driver::{Error, Result, StartRequest};

/// The identity, environment and working directory of an instance's processes.
#[derive(Debug, Clone)]
pub struct Launch {
    run_as: RunAs,
    env: BTreeMap<String, String>,
    workdir: Option<PathBuf>,
    policy: Policy,
}

impl Launch {
    /// Decides how `req`'s processes run under `policy`, reading the node's account files.
    ///
    /// # Guarantees
    /// Fails with [`Error::Refused`] when the process would run as root on an agent running as
    /// root that does not allow it, when a named user or group does not exist here, or when
    /// `spec.workingDir` is not an existing directory. The environment is
    /// [`environ::child_env`]'s alone.
    pub(crate) fn prepare(req: &StartRequest, policy: Policy) -> Result<Launch> {
        let instance = &req.meta.instance;
        let refused = |refusal| Error::Refused {
            task: format!("{}/{}", instance.namespace(), instance.task()),
            refusal,
        };
        let run_as = identity::resolve(
            req.spec.user.as_deref(),
            req.spec.group.as_deref(),
            policy,
            &Accounts::load(),
        )
        .map_err(refused)?;
        if let Some(dir) = &req.spec.working_dir {
            check_working_dir(dir).map_err(refused)?;
        }
        Ok(Launch {
            env: environ::child_env(req.meta.env(), &req.ports, &run_as, &req.spec.env),
            run_as,
            workdir: req.spec.working_dir.as_deref().map(PathBuf::from),
            policy,
        })
    }

    /// A command running `argv` this way: `argv[0]` looked up on the launch's `PATH`, the
    /// environment cleared and set, the working directory and, when the spec names a user or
    /// group, the uid and gid (std then drops the agent's supplementary groups). Also returns
    /// the program's path, for messages.
    pub(crate) fn command(&self, argv: &[String]) -> Result<(tokio::process::Command, PathBuf)> {
        let Some((argv0, args)) = argv.split_first() else {
            return Err(Error::StartError {
                message: "the command is empty".into(),
            });
        };
        let path_var = self.env.get("PATH").map(OsStr::new);
        let program = resolve(argv0, path_var, self.workdir.as_deref())?;
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(args).env_clear().envs(&self.env);
        if let Some(dir) = &self.workdir {
            cmd.current_dir(dir);
        }
        if self.run_as.switch {
            cmd.uid(self.run_as.uid).gid(self.run_as.gid);
        }
        Ok((cmd, program))
    }

    /// The start error for `argv0` (at `program`) failing to spawn with `e`.
    pub(crate) fn spawn_error(&self, argv0: &str, program: &Path, e: &std::io::Error) -> Error {
        let run_as = &self.run_as;
        let other = run_as.uid != self.policy.agent_uid || run_as.gid != self.policy.agent_gid;
        let hint = if run_as.switch && other && self.policy.agent_uid != 0 {
            " (only an agent running as root can run a process as another user)"
        } else {
            ""
        };
        Error::StartError {
            message: format!(
                "cannot execute {argv0:?} ({}) as {run_as}: {e}{hint}",
                program.display()
            ),
        }
    }

    /// Who the processes run as, for logs.
    pub(crate) fn run_as(&self) -> &RunAs {
        &self.run_as
    }
}

/// `spec.workingDir` (already checked absolute by the API) must be a directory here.
fn check_working_dir(dir: &str) -> Result<(), Refusal> {
    let why = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => "is not a directory".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
        Err(e) => format!("cannot be read ({e})"),
    };
    Err(Refusal::WorkingDir {
        dir: dir.to_string(),
        why,
    })
}

/// Finds the program like `execvp` would, so a missing binary is reported by name before spawning.
fn resolve(argv0: &str, path_var: Option<&OsStr>, workdir: Option<&Path>) -> Result<PathBuf> {
    let not_found = |why: &str| Error::StartError {
        message: format!("executable {argv0:?} {why}"),
    };
    if argv0.contains('/') {
        let path = match workdir {
            Some(dir) if !argv0.starts_with('/') => dir.join(argv0),
            _ => PathBuf::from(argv0),
        };
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(not_found("does not exist or is not executable"))
        };
    }
    std::env::split_paths(path_var.unwrap_or_default())
        .map(|dir| dir.join(argv0))
        .find(|p| is_executable(p))
        .ok_or_else(|| not_found("not found on PATH"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_on_path() {
        let path = Some(OsStr::new(environ::DEFAULT_PATH));
        assert!(resolve("sh", path, None).is_ok());
        let err = resolve("no-such-binary-xyz", path, None).expect_err("missing");
        assert!(err.to_string().contains("no-such-binary-xyz"), "{err}");
    }

    #[test]
    fn a_working_dir_must_be_an_existing_directory() {
        assert_eq!(check_working_dir("/"), Ok(()));
        let missing = check_working_dir("/no/such/dir-drover").expect_err("missing");
        assert!(missing.to_string().contains("does not exist"), "{missing}");
        assert_eq!(missing.reason(), "WorkingDirNotFound");
    }
}
