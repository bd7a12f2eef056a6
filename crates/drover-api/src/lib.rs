//! Drover's resource types, manifest parsing and validation, and the etcd key schema.
//!
//! A pure crate: serde, chrono, croner and thiserror only; no I/O, no async, no etcd. Reading
//! files is the caller's job, so every parser takes `(source_name, text)`.
//!
//! - [`keys`]: the whole etcd key schema, documented in one table.
//! - [`decode`]: the one decoder of the values under those keys, for every reader.
//! - [`view`]: the read verbs' [`view::ClusterView`], built and kept current through it.
//! - [`task`]: the Task resource and its semantic validation.
//! - [`manifest`]: multi-document YAML manifests → validated tasks, or every problem found.
//! - [`names`], [`quantity`], [`duration`], [`schedule`]: the value types tasks are made of.
//! - [`node`], [`instance`], [`event`], [`deadletter`], [`taskstate`], [`run`], [`rollout`]:
//!   the records the controller and the agents write.

pub mod deadletter;
pub mod decode;
pub mod duration;
pub mod event;
mod field_index;
pub mod instance;
pub mod keys;
pub mod manifest;
pub mod names;
pub mod node;
pub mod quantity;
pub mod records;
pub mod request;
pub mod rollout;
pub mod run;
pub mod schedule;
pub mod task;
pub mod taskstate;
pub mod view;

pub use deadletter::DeadLetter;
pub use duration::HumanDuration;
pub use event::{Event, EventKind};
pub use instance::{Health, Instance, InstanceStatus, Phase, PortBinding, StopRequest};
pub use keys::Keys;
pub use manifest::{
    parse_documents, parse_manifest, parse_many, validate_set, Location, ManifestError, Problem,
    MAX_DOCUMENTS, MAX_MANIFEST_BYTES,
};
pub use names::{InstanceId, NameError};
pub use node::{Capacity, Node, NodeInfo, NodeState};
pub use quantity::{Cpu, Memory, QuantityError};
pub use request::{RequestAction, TaskRequest};
pub use rollout::{RevisionRecord, Rollout, RolloutFailure, RolloutPhase};
pub use run::{RunCause, RunOutcome, RunRecord, TriggerRequest};
pub use schedule::{Schedule, ScheduleError};
pub use task::{
    Budget, ConcurrencyPolicy, DriverKind, HealthCheck, HollowScript, Mode, ObjectMeta, PortSpec,
    Protocol, Resources, RestartPolicy, Task, TaskError, TaskSpec, Trigger, UpdateStrategy,
};
pub use taskstate::TaskState;
