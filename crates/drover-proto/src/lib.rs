//! Drover's gRPC types and service stubs, generated at build time from `proto/` (see `build.rs`).
//!
//! - [`agent::v1`]: the agent service (`Ping`, `Logs`), served by `drover agent` and used by
//!   `drover logs`.
//! - [`client`]: the client side of that service, for the CLI and tests.
//! - [`tls`]: the PEM files and client settings of that service over mutual TLS.

pub mod client;
pub mod tls;

/// Services of the node agent.
pub mod agent {
    /// Version 1 of the agent API (`drover.agent.v1`).
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
        tonic::include_proto!("drover.agent.v1");
    }
}
