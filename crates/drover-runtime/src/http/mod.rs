//! Drover's one HTTP/1.1 stack: a small client ([`get`], [`post`]) for health probes and `drover
//! up`, and [`serve`], the accept loop every Drover HTTP server runs (the admin endpoint,
//! echo-server), so read timeouts and head limits are set in one place.
//!
//! Both sides are hyper 1 (the version tonic already brings) on one connection per call: the
//! callers talk to one address now and then, so a connection pool would only add state.

mod client;
mod server;

pub use client::{get, post, Error, Response, Result, MAX_BODY};
pub use server::{serve, HEADER_READ_TIMEOUT, MAX_HEAD};
