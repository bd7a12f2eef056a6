//! Who may do what in etcd: the roles `drover admin bootstrap` creates, as key ranges under the
//! prefix. Pure: built from the key schema, so a change of the schema changes the roles with it.
//!
//! | role | reads | writes |
//! |---|---|---|
//! | `drover-controller` | everything under the prefix | assignments, statuses (deletes), node states, task states, runs, dead letters, events, triggers and requests (deletes), the election, controller records |
//! | `drover-node-<node>` | its own assignments, node key and node record; statuses (its own, and the old `status/<instance>` keys until they are moved) | its own node key and its own node's statuses, nothing else |
//! | `drover-user` | everything under the prefix | tasks, triggers, requests, node records (cordon, drain) |
//!
//! The anchor is Kubernetes' NodeRestriction: a kubelet may modify only its own Node object and
//! the pods bound to it. Here an agent cannot write another node's key or statuses, any
//! assignment (the leader's alone), or any task.

use drover_api::keys::Keys;
use drover_store::{Access, Grant};

/// The controller replicas' role.
pub const CONTROLLER_ROLE: &str = "drover-controller";
/// The role of people and scripts using the CLI.
pub const USER_ROLE: &str = "drover-user";
/// The prefix of every node's role and user (`drover-node-<node>`).
pub const NODE_ROLE_PREFIX: &str = "drover-node-";

/// One role and its grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// The role's name (also the name of the user that holds it).
    pub name: String,
    /// Its permissions.
    pub grants: Vec<Grant>,
}

/// The role (and user) name of `node`'s agent.
#[must_use]
pub fn node_role(node: &str) -> String {
    format!("{NODE_ROLE_PREFIX}{node}")
}

/// The controller's role.
#[must_use]
pub fn controller(keys: &Keys) -> Role {
    let mut grants = vec![Grant::prefix(Access::Read, format!("{}/", keys.prefix()))];
    grants.extend(
        [
            keys.assignments(),
            keys.statuses(),
            keys.nodestates(),
            keys.taskstates(),
            keys.runs(),
            keys.deadletters(),
            keys.events(),
            keys.triggers(),
            keys.requests(),
            keys.election_prefix(),
            keys.controllers(),
        ]
        .into_iter()
        .map(|dir| Grant::prefix(Access::ReadWrite, dir)),
    );
    Role {
        name: CONTROLLER_ROLE.into(),
        grants,
    }
}

/// The role of `node`'s agent.
#[must_use]
pub fn node(keys: &Keys, node: &str) -> Role {
    Role {
        name: node_role(node),
        grants: vec![
            Grant::prefix(Access::Read, keys.node_assignments(node)),
            // Its own statuses are under it; the old `status/<instance>` keys, which it reads
            // when it adopts a copy or confirms a first start, are not under any node.
            Grant::prefix(Access::Read, keys.statuses()),
            Grant::key(Access::Read, keys.nodeinfo(node)),
            Grant::key(Access::ReadWrite, keys.node(node)),
            Grant::prefix(Access::ReadWrite, keys.node_statuses(node)),
        ],
    }
}

/// The CLI users' role.
#[must_use]
pub fn user(keys: &Keys) -> Role {
    let mut grants = vec![Grant::prefix(Access::Read, format!("{}/", keys.prefix()))];
    grants.extend(
        [
            keys.tasks(),
            keys.triggers(),
            keys.requests(),
            keys.nodeinfos(),
        ]
        .into_iter()
        .map(|dir| Grant::prefix(Access::ReadWrite, dir)),
    );
    Role {
        name: USER_ROLE.into(),
        grants,
    }
}

/// Every role for a cluster of `nodes`: the controller's, the user's, one per node.
#[must_use]
pub fn all(keys: &Keys, nodes: &[String]) -> Vec<Role> {
    let mut roles = vec![controller(keys), user(keys)];
    roles.extend(nodes.iter().map(|n| node(keys, n)));
    roles
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `role` may write `key`.
    fn may_write(role: &Role, key: &str) -> bool {
        role.grants.iter().any(|g| g.writes() && g.covers(key))
    }
    use drover_api::InstanceId;
    use proptest::prelude::*;

    fn label() -> impl Strategy<Value = String> {
        "[a-z]([a-z0-9-]{0,10}[a-z0-9])?"
    }

    proptest! {
        /// NodeRestriction: a node's role writes its own node key and statuses, and nothing of
        /// another node, no assignment, no task.
        #[test]
        fn a_node_writes_only_its_own_node_key_and_statuses(
            a in label(), b in label(), ns in label(), task in label(), slot in 0u32..100
        ) {
            prop_assume!(a != b);
            let keys = Keys::new("/drover");
            let role = node(&keys, &a);
            let id = InstanceId::service(&ns, &task, slot).expect("id");
            prop_assert!(may_write(&role, &keys.node(&a)));
            prop_assert!(may_write(&role, &keys.status(&a, &id)));
            prop_assert!(!may_write(&role, &keys.node(&b)));
            prop_assert!(!may_write(&role, &keys.status(&b, &id)));
            prop_assert!(!may_write(&role, &keys.legacy_status(&id)));
            prop_assert!(!may_write(&role, &keys.assignment(&a, &id)));
            prop_assert!(!may_write(&role, &keys.assignment(&b, &id)));
            prop_assert!(!may_write(&role, &keys.task(&ns, &task)));
            prop_assert!(!may_write(&role, &keys.nodeinfo(&a)));
            prop_assert!(!may_write(&role, &keys.taskstate(&ns, &task)));
        }

        /// Users write what people ask for, never what the leader decides.
        #[test]
        fn a_user_writes_tasks_and_requests_but_no_assignment_or_status(
            n in label(), ns in label(), task in label(), slot in 0u32..100
        ) {
            let keys = Keys::new("/drover");
            let role = user(&keys);
            let id = InstanceId::service(&ns, &task, slot).expect("id");
            prop_assert!(may_write(&role, &keys.task(&ns, &task)));
            prop_assert!(may_write(&role, &keys.trigger(&ns, &task, "t1")));
            prop_assert!(may_write(&role, &keys.request(&ns, &task, "r1")));
            prop_assert!(may_write(&role, &keys.nodeinfo(&n)));
            prop_assert!(!may_write(&role, &keys.assignment(&n, &id)));
            prop_assert!(!may_write(&role, &keys.status(&n, &id)));
            prop_assert!(!may_write(&role, &keys.node(&n)));
            prop_assert!(!may_write(&role, &keys.taskstate(&ns, &task)));
            prop_assert!(!may_write(&role, &keys.election()));
        }
    }

    #[test]
    fn the_controller_writes_no_task_node_key_or_node_record() {
        let keys = Keys::new("/drover");
        let role = controller(&keys);
        let id = InstanceId::service("default", "web", 0).expect("id");
        assert!(may_write(&role, &keys.assignment("n1", &id)));
        assert!(may_write(&role, &keys.status("n1", &id)));
        assert!(may_write(&role, &keys.legacy_status(&id)));
        assert!(!may_write(&role, &keys.task("default", "web")));
        assert!(!may_write(&role, &keys.node("n1")));
        assert!(!may_write(&role, &keys.nodeinfo("n1")));
        assert!(!may_write(&role, "/other/tasks/default/web"));
    }
}
