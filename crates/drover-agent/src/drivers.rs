//! The set of drivers an agent runs instances with, and which one a task goes to.

use std::path::Path;
use std::sync::Arc;

use bollard::Docker;
use drover_api::task::{DriverKind, TaskSpec};

use crate::config::DriverChoice;
use crate::driver::docker::DockerDriver;
use crate::driver::hollow::HollowDriver;
use crate::driver::process::{Launch, Policy, ProcessDriver};
use crate::driver::{Driver, StartRequest};

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Building the driver set failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--driver docker` was asked for and the daemon does not answer.
    #[error("docker driver unavailable: {0}")]
    Docker(#[source] crate::driver::Error),
    /// The process driver's state dir could not be created.
    #[error("process driver: {0}")]
    Process(#[source] crate::driver::Error),
}

/// The drivers of one agent. Cheap to clone.
#[derive(Clone)]
pub struct DriverSet {
    drivers: Vec<(DriverKind, Arc<dyn Driver>)>,
    docker: Option<Docker>,
    allow_root_tasks: bool,
}

impl DriverSet {
    /// Builds the drivers `choice` asks for (see [`DriverChoice`]). `allow_root_tasks` lets
    /// the process driver of an agent running as root run processes as root.
    pub async fn new(
        choice: DriverChoice,
        state_dir: &Path,
        publish_ip: &str,
        allow_root_tasks: bool,
    ) -> Result<Self> {
        let process = || -> Result<(DriverKind, Arc<dyn Driver>)> {
            let p = ProcessDriver::new(state_dir.join("process"))
                .map_err(Error::Process)?
                .allow_root_tasks(allow_root_tasks);
            Ok((DriverKind::Process, Arc::new(p)))
        };
        let docker = match choice {
            DriverChoice::Hollow => return Ok(DriverSet::hollow(HollowDriver::new())),
            DriverChoice::Process => None,
            DriverChoice::Docker => Some(DockerDriver::connect().await.map_err(Error::Docker)?),
            DriverChoice::Auto => match DockerDriver::connect().await {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::info!(error = %e, "docker unavailable; using the process driver only");
                    None
                }
            },
        };
        let mut drivers = Vec::new();
        let client = docker.as_ref().map(|d| d.client().clone());
        if let Some(d) = docker {
            drivers.push((
                DriverKind::Docker,
                Arc::new(d.with_host_ip(publish_ip)) as Arc<dyn Driver>,
            ));
        }
        drivers.push(process()?);
        Ok(DriverSet {
            drivers,
            docker: client,
            allow_root_tasks,
        })
    }

    /// Only the hollow driver: every task runs simulated.
    pub fn hollow(driver: HollowDriver) -> Self {
        DriverSet {
            drivers: vec![(DriverKind::Hollow, Arc::new(driver))],
            docker: None,
            allow_root_tasks: false,
        }
    }

    /// One driver of `kind` (tests wrap a driver to script its timing).
    #[cfg(test)]
    pub(crate) fn single(kind: DriverKind, driver: Arc<dyn Driver>) -> Self {
        DriverSet {
            drivers: vec![(kind, driver)],
            docker: None,
            allow_root_tasks: false,
        }
    }

    /// The kinds available, for the node record.
    pub fn kinds(&self) -> Vec<DriverKind> {
        self.drivers.iter().map(|(k, _)| *k).collect()
    }

    /// The driver kind that runs `spec` here: hollow for everything on a hollow agent,
    /// otherwise the spec's own (docker with an image, process without).
    pub fn kind_for(&self, spec: &TaskSpec) -> DriverKind {
        if self.get(DriverKind::Hollow).is_some() {
            DriverKind::Hollow
        } else {
            spec.driver()
        }
    }

    /// The driver of `kind`, when this agent has it.
    pub fn get(&self, kind: DriverKind) -> Option<&Arc<dyn Driver>> {
        self.drivers
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, d)| d)
    }

    /// Every driver this agent has, with its kind.
    pub fn all(&self) -> &[(DriverKind, Arc<dyn Driver>)] {
        &self.drivers
    }

    /// How a process instance's processes run here (its exec probes run the same way as the
    /// instance itself, never as the agent).
    pub fn process_launch(&self, req: &StartRequest) -> crate::driver::Result<Launch> {
        Launch::prepare(req, Policy::of_this_process(self.allow_root_tasks))
    }

    /// The Docker client, for exec probes.
    pub fn docker_client(&self) -> Option<Docker> {
        self.docker.clone()
    }
}
