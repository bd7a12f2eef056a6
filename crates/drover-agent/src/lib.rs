//! Drover's node agent: runs the instances assigned to its node through a [`driver::Driver`]
//! (docker, process or hollow) and reports their status.

pub mod advertise;
pub mod agent;
pub mod config;
pub mod converge;
pub mod deadline;
pub mod driver;
pub mod drivers;
pub mod fence;
pub mod grpc;
pub mod grpc_tls;
pub mod heartbeat;
pub mod hollow_nodes;
mod instance;
mod lifecycle;
pub mod local;
pub mod metrics;
mod node_batch;
pub mod ports;
pub mod probe;
pub mod readiness;
pub mod restart;
pub mod retained;
pub mod status;
mod wiring;

pub use agent::{run, Agent, AgentHandle};
pub use config::AgentConfig;
pub use grpc::{logs_client, AgentEndpoint};
pub use hollow_nodes::{run_hollow, HollowConfig, HollowHandle, HollowNodes};
pub use readiness::NotReady;
