//! Drover's reconcile machinery: trigger streams → de-duplicating delay queue → runner.
//!
//! Generic over the key type and independent of etcd, so the controller and the agent share it.
//! The pieces, in the order a key travels through them:
//! - [`Reconciler`] gathers inputs: streams of keys (from watchers) and [`Trigger`] handles.
//! - [`WorkQueue`] merges requests per key (earliest wins) and holds keys that are running.
//! - The runner spawns at most `concurrency` reconciles, one per key at a time, each in its own
//!   tracing span, and turns the result into the next schedule: [`Action`] on success,
//!   exponential [`backoff`] on failure.
//! - [`Metrics`] exports what happens, into a caller-supplied Prometheus registry.
//!
//! It also holds the daemons' other shared plumbing: the [`admin`] endpoint (`/metrics`,
//! `/healthz`, `/readyz`), the one metrics [`registry`] of a process, and Drover's one HTTP
//! client and server, [`http`].

pub mod action;
pub mod admin;
pub mod backoff;
pub mod http;
pub mod metrics;
pub mod queue;
pub mod reconciler;
pub mod registry;
mod runner;

pub use action::Action;
pub use backoff::BackoffConfig;
pub use metrics::Metrics;
pub use queue::{Reason, WorkQueue};
pub use reconciler::{Error, KeyStream, Reconciler, ReconcilerConfig, Result, Trigger};
pub use registry::process_registry;
