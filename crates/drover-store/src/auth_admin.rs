//! etcd's own users and roles, for `drover admin bootstrap`: roles with key-range permissions,
//! users with passwords, and turning authentication on. Every call can be repeated: what
//! exists already is left as it is (a role's permissions are granted again, which etcd treats
//! as a replacement of the same range).

use etcd_client::{Permission, PermissionType};

use crate::error::{Error, Result};
use crate::pool::Idempotency;
use crate::store::Store;

/// What a key-range permission allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Range reads and watches.
    Read,
    /// Puts and deletes (etcd also needs it to revoke a lease keys are attached to).
    Write,
    /// Both.
    ReadWrite,
}

/// One permission of a role: `access` on the keys in `[key, range_end)`, or on `key` alone
/// when `range_end` is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    /// What it allows.
    pub access: Access,
    /// The first key.
    pub key: String,
    /// One past the last key, `None` for exactly `key`.
    pub range_end: Option<String>,
}

impl Grant {
    /// `access` on exactly `key`.
    #[must_use]
    pub fn key(access: Access, key: impl Into<String>) -> Grant {
        Grant {
            access,
            key: key.into(),
            range_end: None,
        }
    }

    /// `access` on every key that starts with `prefix` (which should end with `/`, so that a
    /// sibling whose name extends this one's is not covered).
    #[must_use]
    pub fn prefix(access: Access, prefix: impl Into<String>) -> Grant {
        let key = prefix.into();
        let range_end = prefix_end(&key);
        Grant {
            access,
            key,
            range_end: Some(range_end),
        }
    }

    /// Whether this grant covers `key`.
    #[must_use]
    pub fn covers(&self, key: &str) -> bool {
        match &self.range_end {
            None => key == self.key,
            Some(end) => key >= self.key.as_str() && key < end.as_str(),
        }
    }

    /// Whether it lets a client write.
    #[must_use]
    pub fn writes(&self) -> bool {
        matches!(self.access, Access::Write | Access::ReadWrite)
    }

    fn to_etcd(&self) -> Permission {
        let kind = match self.access {
            Access::Read => PermissionType::Read,
            Access::Write => PermissionType::Write,
            Access::ReadWrite => PermissionType::Readwrite,
        };
        let permission = Permission::new(kind, self.key.as_bytes().to_vec());
        match &self.range_end {
            Some(end) => permission.with_range_end(end.as_bytes().to_vec()),
            None => permission,
        }
    }
}

/// The end of the range of keys starting with `prefix`: its last byte raised by one (keys are
/// UTF-8 built from ASCII names, and a prefix ends with `/`, so no carry is needed).
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    if let Some(last) = bytes.last_mut() {
        *last = last.saturating_add(1);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether a call created something or found it there already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// Created now.
    Created,
    /// It existed; left as it was.
    Existed,
}

/// etcd's refusal of a name that is taken ("role name already exists", "user name already
/// exists"): its message is the only way etcd 3.4 tells it apart.
fn already_exists(e: &Error) -> bool {
    matches!(e, Error::Rejected { reason, .. } if reason.contains("already exists"))
}

impl Store {
    /// Creates role `name` if missing and grants it every one of `grants`.
    pub async fn ensure_role(&self, name: &str, grants: &[Grant]) -> Result<Ensured> {
        let timeout = self.request_timeout();
        let mut backoff = self.backoff();
        let owned = name.to_string();
        let added = self
            .inner
            .pool
            .call(
                "role_add",
                Idempotency::Idempotent,
                timeout,
                &mut backoff,
                |mut c| {
                    let name = owned.clone();
                    async move { c.role_add(name).await }
                },
            )
            .await;
        let ensured = match added {
            Ok(_) => Ensured::Created,
            Err(e) if already_exists(&e) => Ensured::Existed,
            Err(e) => return Err(e),
        };
        for grant in grants {
            let permission = grant.to_etcd();
            self.inner
                .pool
                .call(
                    "role_grant_permission",
                    Idempotency::Idempotent,
                    timeout,
                    &mut backoff,
                    |mut c| {
                        let (name, permission) = (owned.clone(), permission.clone());
                        async move { c.role_grant_permission(name, permission).await }
                    },
                )
                .await?;
        }
        Ok(ensured)
    }

    /// Creates user `name` with `password` if missing (an existing user keeps its password),
    /// then grants it `role` (if given).
    pub async fn ensure_user(
        &self,
        name: &str,
        password: &str,
        role: Option<&str>,
    ) -> Result<Ensured> {
        let timeout = self.request_timeout();
        let mut backoff = self.backoff();
        let (user, password) = (name.to_string(), password.to_string());
        let added = self
            .inner
            .pool
            .call(
                "user_add",
                Idempotency::Idempotent,
                timeout,
                &mut backoff,
                |mut c| {
                    let (user, password) = (user.clone(), password.clone());
                    async move { c.user_add(user, password, None).await }
                },
            )
            .await;
        let ensured = match added {
            Ok(_) => Ensured::Created,
            Err(e) if already_exists(&e) => Ensured::Existed,
            Err(e) => return Err(e),
        };
        if let Some(role) = role {
            let role = role.to_string();
            self.inner
                .pool
                .call(
                    "user_grant_role",
                    Idempotency::Idempotent,
                    timeout,
                    &mut backoff,
                    |mut c| {
                        let (user, role) = (user.clone(), role.clone());
                        async move { c.user_grant_role(user, role).await }
                    },
                )
                .await?;
        }
        Ok(ensured)
    }

    /// Turns etcd's authentication on (a no-op when it is on). etcd requires a `root` user
    /// with the `root` role first.
    pub async fn enable_auth(&self) -> Result<()> {
        let mut backoff = self.backoff();
        self.inner
            .pool
            .call(
                "auth_enable",
                Idempotency::Idempotent,
                self.request_timeout(),
                &mut backoff,
                |mut c| async move { c.auth_enable().await },
            )
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_grant_covers_its_keys_and_not_a_sibling_whose_name_extends_it() {
        let g = Grant::prefix(Access::Write, "/d/status/n1/");
        assert!(g.covers("/d/status/n1/x"));
        assert!(g.covers("/d/status/n1/"));
        assert!(!g.covers("/d/status/n10/x"));
        assert!(!g.covers("/d/status/n1"));
        assert!(!g.covers("/d/status/n2/x"));
        assert_eq!(g.range_end.as_deref(), Some("/d/status/n10"));
        let k = Grant::key(Access::Read, "/d/nodes/n1");
        assert!(k.covers("/d/nodes/n1") && !k.covers("/d/nodes/n10"));
    }
}
