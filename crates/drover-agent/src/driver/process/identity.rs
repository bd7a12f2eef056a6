//! Who a process task runs as: `spec.user` and `spec.group` resolved against the node's
//! `/etc/passwd` and `/etc/group`, under the rule that an agent running as root hands out root
//! only when started with `--allow-root-tasks`.
//!
//! The account files are parsed here rather than through the C library's `getpwnam`, as runc
//! does for containers: no `unsafe`, and the decision is a pure function of the files' text.
//! Accounts that exist only in another NSS source (LDAP, `systemd-homed`) are not found by
//! name; a numeric `user` and `group` still work for them.

use std::fmt;

/// Where the account database is read from.
const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

/// Why the agent refuses to start a process as its spec asks, on this node. Each is permanent
/// until the spec or the node changes: the instance fails with [`Refusal::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The process would run as root (uid 0) on an agent running as root without
    /// `--allow-root-tasks`.
    #[error(
        "would run as root (uid 0){}; this agent runs as root and hands out root only when \
         started with --allow-root-tasks: set spec.user (e.g. nobody)",
        if *.named { ", as its spec.user asks" } else { ": it sets no spec.user" }
    )]
    Root {
        /// Whether `spec.user` asked for root by name or id (rather than leaving it unset).
        named: bool,
    },
    /// `spec.user` names a user this node does not have.
    #[error("user {user:?} does not exist on this node (not in {PASSWD})")]
    UnknownUser {
        /// The user as the spec names it.
        user: String,
    },
    /// A numeric `spec.user` the node does not know, without `spec.group`: it has no primary
    /// group to run with.
    #[error(
        "uid {uid} is not in this node's {PASSWD}, so it has no primary group: set spec.group too"
    )]
    NoPrimaryGroup {
        /// The uid.
        uid: u32,
    },
    /// `spec.group` names a group this node does not have.
    #[error("group {group:?} does not exist on this node (not in {GROUP})")]
    UnknownGroup {
        /// The group as the spec names it.
        group: String,
    },
    /// `spec.workingDir` is missing on this node, or not a directory.
    #[error("spec.workingDir {dir:?} {why} on this node")]
    WorkingDir {
        /// The directory from the spec.
        dir: String,
        /// What is wrong with it.
        why: String,
    },
}

impl Refusal {
    /// The status reason (see [`drover_api::instance::reasons`]).
    pub fn reason(&self) -> &'static str {
        use drover_api::instance::reasons;
        match self {
            Refusal::Root { .. } => reasons::RUN_AS_ROOT_REFUSED,
            Refusal::UnknownUser { .. } | Refusal::NoPrimaryGroup { .. } => reasons::UNKNOWN_USER,
            Refusal::UnknownGroup { .. } => reasons::UNKNOWN_GROUP,
            Refusal::WorkingDir { .. } => reasons::WORKING_DIR_NOT_FOUND,
        }
    }
}

/// One user of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct User {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// One group of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    name: String,
    gid: u32,
}

/// The node's users and groups, as read from its account files.
#[derive(Debug, Clone, Default)]
pub(crate) struct Accounts {
    users: Vec<User>,
    groups: Vec<Group>,
}

impl Accounts {
    /// Parses the text of `/etc/passwd` and `/etc/group`; malformed lines are skipped.
    pub(crate) fn parse(passwd: &str, group: &str) -> Self {
        let fields = |line: &str| -> Vec<String> { line.split(':').map(str::to_string).collect() };
        let lines = |text: &str| {
            text.lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(fields)
                .collect::<Vec<_>>()
        };
        let users = lines(passwd)
            .into_iter()
            .filter_map(|f| {
                Some(User {
                    name: f.first()?.clone(),
                    uid: f.get(2)?.parse().ok()?,
                    gid: f.get(3)?.parse().ok()?,
                    home: f.get(5)?.clone(),
                })
            })
            .collect();
        let groups = lines(group)
            .into_iter()
            .filter_map(|f| {
                Some(Group {
                    name: f.first()?.clone(),
                    gid: f.get(2)?.parse().ok()?,
                })
            })
            .collect();
        Accounts { users, groups }
    }

    /// Reads the node's account files; a missing or unreadable file counts as empty (then only
    /// numeric ids resolve).
    pub(crate) fn load() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        Accounts::parse(&read(PASSWD), &read(GROUP))
    }

    fn user_by_name(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    fn user_by_uid(&self, uid: u32) -> Option<&User> {
        self.users.iter().find(|u| u.uid == uid)
    }

    fn group_by_name(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// Who the agent is and what it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// The agent's effective uid.
    pub(crate) agent_uid: u32,
    /// The agent's effective gid.
    pub(crate) agent_gid: u32,
    /// `--allow-root-tasks`: an agent running as root may run processes as root.
    pub(crate) allow_root: bool,
}

impl Policy {
    /// The policy of this process: its effective ids, and `allow_root`.
    pub(crate) fn of_this_process(allow_root: bool) -> Self {
        Policy {
            agent_uid: rustix::process::geteuid().as_raw(),
            agent_gid: rustix::process::getegid().as_raw(),
            allow_root,
        }
    }
}

/// The identity a process is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunAs {
    /// The uid.
    pub(crate) uid: u32,
    /// The primary gid.
    pub(crate) gid: u32,
    /// The user's name, when the node knows the uid.
    pub(crate) name: Option<String>,
    /// `HOME`: the user's home directory, `/` when unknown.
    pub(crate) home: String,
    /// Whether the spec asked for a user or group, so the child must switch to them (and
    /// drops the agent's supplementary groups); otherwise it keeps the agent's identity.
    pub(crate) switch: bool,
}

impl fmt::Display for RunAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} (uid {}, gid {})", self.uid, self.gid),
            None => write!(f, "uid {}, gid {}", self.uid, self.gid),
        }
    }
}

/// Decides who a process with `user` and `group` (from its spec) runs as.
///
/// # Guarantees
/// - A numeric `user` or `group` is taken as is; a name must exist in `accounts`.
/// - Without `group`, the gid is the user's primary group; without `user`, the agent's own
///   identity (uid and, unless `group` is set, gid).
/// - On an agent running as root without `allow_root`, nothing resolves to uid 0.
pub(crate) fn resolve(
    user: Option<&str>,
    group: Option<&str>,
    policy: Policy,
    accounts: &Accounts,
) -> Result<RunAs, Refusal> {
    let (uid, entry) = match user {
        Some(u) => match u.parse::<u32>() {
            Ok(uid) => (uid, accounts.user_by_uid(uid)),
            Err(_) => {
                let entry = accounts
                    .user_by_name(u)
                    .ok_or_else(|| Refusal::UnknownUser {
                        user: u.to_string(),
                    })?;
                (entry.uid, Some(entry))
            }
        },
        None => (policy.agent_uid, accounts.user_by_uid(policy.agent_uid)),
    };
    let gid = match (group, user) {
        (Some(g), _) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                accounts
                    .group_by_name(g)
                    .ok_or_else(|| Refusal::UnknownGroup {
                        group: g.to_string(),
                    })?
                    .gid
            }
        },
        (None, Some(_)) => entry
            .map(|e| e.gid)
            .ok_or(Refusal::NoPrimaryGroup { uid })?,
        (None, None) => policy.agent_gid,
    };
    if uid == 0 && policy.agent_uid == 0 && !policy.allow_root {
        return Err(Refusal::Root {
            named: user.is_some(),
        });
    }
    let home = entry
        .map(|e| e.home.clone())
        .filter(|h| h.starts_with('/'))
        .unwrap_or_else(|| "/".to_string());
    Ok(RunAs {
        uid,
        gid,
        name: entry.map(|e| e.name.clone()),
        home,
        switch: user.is_some() || group.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PASSWD_TEXT: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # a comment\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        broken line\n\
        app:x:1000:1000::relative:/bin/sh\n";
    const GROUP_TEXT: &str = "root:x:0:\nnogroup:x:65534:\nstaff:x:50:app\n";

    fn accounts() -> Accounts {
        Accounts::parse(PASSWD_TEXT, GROUP_TEXT)
    }

    fn root_agent(allow_root: bool) -> Policy {
        Policy {
            agent_uid: 0,
            agent_gid: 0,
            allow_root,
        }
    }

    fn run(user: Option<&str>, group: Option<&str>, p: Policy) -> Result<RunAs, Refusal> {
        resolve(user, group, p, &accounts())
    }

    #[test]
    fn a_named_user_runs_with_its_ids_and_home() {
        let r = run(Some("nobody"), None, root_agent(false)).expect("resolves");
        assert_eq!((r.uid, r.gid, r.switch), (65534, 65534, true));
        assert_eq!(r.home, "/nonexistent");
        assert_eq!(r.to_string(), "nobody (uid 65534, gid 65534)");
        let r = run(Some("nobody"), Some("staff"), root_agent(false)).expect("resolves");
        assert_eq!(r.gid, 50);
        let r = run(Some("app"), Some("7"), root_agent(false)).expect("resolves");
        assert_eq!((r.uid, r.gid), (1000, 7));
        assert_eq!(r.home, "/", "a relative home is not used");
    }

    #[test]
    fn numeric_ids_need_no_entry_but_an_unknown_uid_needs_a_group() {
        let r = run(Some("65534"), None, root_agent(false)).expect("known uid");
        assert_eq!((r.gid, r.name.as_deref()), (65534, Some("nobody")));
        let r = run(Some("4242"), Some("4243"), root_agent(false)).expect("numeric");
        assert_eq!(
            (r.uid, r.gid, r.name, r.home.as_str()),
            (4242, 4243, None, "/")
        );
        assert_eq!(
            run(Some("4242"), None, root_agent(false)),
            Err(Refusal::NoPrimaryGroup { uid: 4242 })
        );
    }

    #[test]
    fn unknown_names_are_refused_by_name() {
        let e = run(Some("ghost"), None, root_agent(true)).expect_err("no such user");
        assert_eq!(e.reason(), "UnknownUser");
        assert!(e.to_string().contains("\"ghost\""), "{e}");
        let e = run(Some("nobody"), Some("ghosts"), root_agent(true)).expect_err("no group");
        assert_eq!(e.reason(), "UnknownGroup");
    }

    #[test]
    fn a_root_agent_refuses_root_unless_allowed() {
        for user in [None, Some("root"), Some("0")] {
            let e = run(user, None, root_agent(false)).expect_err("root refused");
            assert_eq!(e.reason(), "RunAsRootRefused");
            assert!(e.to_string().contains("--allow-root-tasks"), "{e}");
            let r = run(user, None, root_agent(true)).expect("allowed");
            assert_eq!((r.uid, r.switch), (0, user.is_some()));
        }
        // Root's group alone is not root.
        assert!(run(Some("nobody"), Some("root"), root_agent(false)).is_ok());
        // A group alone keeps the agent's uid: still root.
        assert!(run(None, Some("nogroup"), root_agent(false)).is_err());
    }

    #[test]
    fn an_agent_that_is_not_root_runs_tasks_as_itself() {
        let me = Policy {
            agent_uid: 1000,
            agent_gid: 1000,
            allow_root: false,
        };
        let r = run(None, None, me).expect("as the agent");
        assert_eq!((r.uid, r.gid, r.switch), (1000, 1000, false));
        assert_eq!(r.name.as_deref(), Some("app"));
    }

    proptest! {
        /// Without --allow-root-tasks, a root agent never resolves anything to uid 0.
        #[test]
        fn a_root_agent_never_hands_out_root(
            user in proptest::option::of("root|nobody|app|0|1000|65534|[0-9]{1,3}|[a-z]{1,6}"),
            group in proptest::option::of("root|staff|0|[0-9]{1,3}|[a-z]{1,6}"),
        ) {
            if let Ok(r) = run(user.as_deref(), group.as_deref(), root_agent(false)) {
                prop_assert_ne!(r.uid, 0);
            }
        }
    }
}
