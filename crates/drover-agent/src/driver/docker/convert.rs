//! Translations between Drover's driver types and the Docker Engine API's: the create body,
//! container state, labels and errors.

use std::collections::HashMap;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig,
    PortBinding,
};
use chrono::{DateTime, Datelike, Utc};
use drover_api::task::Protocol;

use crate::driver::{Error, Handle, InstanceMeta, Result, StartRequest, TaskState};

/// The container for `req`: labels, env, command, published ports, limits, and `init`.
pub(super) fn create_body(req: &StartRequest, image: String, host_ip: &str) -> ContainerCreateBody {
    let spec = &req.spec;
    let env = req
        .meta
        .env()
        .into_iter()
        .chain(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let port_key = |p: &drover_api::instance::PortBinding| {
        let proto = match req.protocol_of(p) {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        format!("{}/{proto}", p.container_port)
    };
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &req.ports {
        bindings
            .entry(port_key(p))
            .or_default()
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: Some(host_ip.to_string()),
                host_port: Some(p.host_port.to_string()),
            });
    }
    let cpu_millis = spec.resources.cpu.as_millis();
    let memory = spec.resources.memory.as_bytes();
    ContainerCreateBody {
        image: Some(image),
        // `command` replaces the image's CMD; its ENTRYPOINT stays.
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(env),
        working_dir: spec.working_dir.clone(),
        user: container_user(spec),
        labels: Some(req.meta.labels().into_iter().collect()),
        exposed_ports: Some(req.ports.iter().map(port_key).collect()),
        host_config: Some(HostConfig {
            port_bindings: Some(bindings),
            // 0 means "no limit" to Docker, which is what an unset resource means to us.
            nano_cpus: i64::try_from(cpu_millis.saturating_mul(1_000_000)).ok(),
            memory: i64::try_from(memory).ok(),
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Docker's `--user`: `user` or `user:group` from the spec; `None` keeps the image's user.
/// (A group without a user is refused by the API's validation for image tasks.)
fn container_user(spec: &drover_api::task::TaskSpec) -> Option<String> {
    let user = spec.user.as_deref()?;
    Some(match spec.group.as_deref() {
        Some(group) => format!("{user}:{group}"),
        None => user.to_string(),
    })
}

/// Classifies a bollard error: 404 is `NotFound`, transport failures are `DaemonUnavailable`.
pub(super) fn map_err(e: BollardError, id: &str) -> Error {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => Error::NotFound { id: id.to_string() },
        BollardError::DockerResponseServerError { message, .. } => Error::Runtime { message },
        e @ (BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::RequestTimeoutError
        | BollardError::SocketNotFoundError(_)) => Error::DaemonUnavailable {
            message: e.to_string(),
        },
        other => Error::Runtime {
            message: other.to_string(),
        },
    }
}

pub(super) fn meta_of(c: &ContainerInspectResponse) -> Option<InstanceMeta> {
    let labels = c.config.as_ref()?.labels.as_ref()?;
    InstanceMeta::from_labels(|k| labels.get(k).map(String::as_str))
}

pub(super) fn handle_of(c: &ContainerInspectResponse, id: &str) -> Result<Handle> {
    let meta = meta_of(c).ok_or_else(|| Error::Runtime {
        message: format!("container {id} has no drover labels"),
    })?;
    let started_at = c
        .state
        .as_ref()
        .and_then(|s| parse_time(s.started_at.as_deref()))
        .unwrap_or_else(Utc::now);
    Ok(Handle {
        instance: meta.instance,
        id: c.id.clone().unwrap_or_else(|| id.to_string()),
        started_at,
    })
}

pub(super) fn state_of(c: &ContainerInspectResponse) -> TaskState {
    let Some(state) = &c.state else {
        return TaskState::NotFound;
    };
    match state.status {
        Some(
            ContainerStateStatusEnum::RUNNING
            | ContainerStateStatusEnum::PAUSED
            | ContainerStateStatusEnum::RESTARTING,
        ) => TaskState::Running,
        // Created but never started: nothing ran, so there is no exit code.
        Some(ContainerStateStatusEnum::CREATED) => TaskState::Exited {
            code: None,
            finished_at: None,
        },
        _ if state.running == Some(true) => TaskState::Running,
        _ => TaskState::Exited {
            code: state.exit_code.and_then(|c| i32::try_from(c).ok()),
            finished_at: parse_time(state.finished_at.as_deref()),
        },
    }
}

/// Docker writes `0001-01-01T00:00:00Z` for "never"; that is `None`.
pub(super) fn parse_time(text: Option<&str>) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(text?)
        .ok()?
        .with_timezone(&Utc);
    (t.year() > 1).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_api::task::TaskSpec;

    #[test]
    fn the_container_user_is_user_or_user_colon_group() {
        let mut spec = TaskSpec::default();
        assert_eq!(container_user(&spec), None, "the image's own user");
        spec.user = Some("nobody".into());
        assert_eq!(container_user(&spec).as_deref(), Some("nobody"));
        spec.group = Some("65534".into());
        assert_eq!(container_user(&spec).as_deref(), Some("nobody:65534"));
    }
}
