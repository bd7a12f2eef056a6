//! The drover CLI's client verbs: command-line types, one module per verb, input and output.
//! They read and write etcd in `drover-api` terms (requests, triggers, tasks) and reach agents
//! through their gRPC service; the daemons themselves live in the `drover` binary crate.

pub mod agent_access;
pub mod cli;
pub mod cmd;
pub mod etcd_access;
pub mod exit;
pub mod input;
pub mod jsonpath;
pub mod output;
pub mod selector;
