//! The environment of a process task: a documented minimal set, Drover's own variables and the
//! spec's `env` — never the agent's environment, which may hold credentials (etcd passwords,
//! tokens) the task has no business seeing.

use std::collections::BTreeMap;

use drover_api::instance::PortBinding;

use super::identity::RunAs;

/// `PATH` unless the spec's `env` sets one: the usual system directories, as Docker and
/// systemd give a service.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything a child starts with, later entries winning:
///
/// 1. `PATH` ([`DEFAULT_PATH`]), `HOME` (the user's home, `/` when unknown) and, when the node
///    knows the user's name, `USER` and `LOGNAME`;
/// 2. `drover` (`DROVER_INSTANCE`, `DROVER_NODE`, `DROVER_NAMESPACE`, `DROVER_TASK`) and
///    `DROVER_PORT_<containerPort>` = the host port, for each of `ports`;
/// 3. the spec's `env`.
pub(crate) fn child_env(
    drover: impl IntoIterator<Item = (String, String)>,
    ports: &[PortBinding],
    run_as: &RunAs,
    spec_env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        ("HOME".to_string(), run_as.home.clone()),
    ]);
    if let Some(name) = &run_as.name {
        env.insert("USER".into(), name.clone());
        env.insert("LOGNAME".into(), name.clone());
    }
    env.extend(drover);
    env.extend(ports.iter().map(|p| {
        (
            format!("DROVER_PORT_{}", p.container_port),
            p.host_port.to_string(),
        )
    }));
    env.extend(spec_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nobody() -> RunAs {
        RunAs {
            uid: 65534,
            gid: 65534,
            name: Some("nobody".into()),
            home: "/nonexistent".into(),
            switch: true,
        }
    }

    #[test]
    fn the_minimal_set_then_drover_then_the_spec() {
        let drover = [("DROVER_TASK".to_string(), "web".to_string())];
        let ports = [PortBinding {
            container_port: 80,
            host_port: 20001,
        }];
        let spec = BTreeMap::from([
            ("PATH".to_string(), "/opt/bin".to_string()),
            ("GREETING".to_string(), "hi".to_string()),
        ]);
        let env = child_env(drover, &ports, &nobody(), &spec);
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "DROVER_PORT_80",
                "DROVER_TASK",
                "GREETING",
                "HOME",
                "LOGNAME",
                "PATH",
                "USER"
            ]
        );
        assert_eq!(env["PATH"], "/opt/bin", "the spec wins");
        assert_eq!(env["HOME"], "/nonexistent");
        assert_eq!(env["DROVER_PORT_80"], "20001");
    }

    #[test]
    fn nothing_of_the_agent_and_no_user_name_when_unknown() {
        let mut who = nobody();
        who.name = None;
        who.home = "/".into();
        let env = child_env([], &[], &who, &BTreeMap::new());
        assert_eq!(
            env,
            BTreeMap::from([
                ("HOME".to_string(), "/".to_string()),
                ("PATH".to_string(), DEFAULT_PATH.to_string()),
            ])
        );
    }
}
