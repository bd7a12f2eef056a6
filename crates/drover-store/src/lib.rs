//! Typed etcd access for Drover: revisions, compare-and-swap, batched and fenced transactions,
//! leases with keep-alive, leader election, a watcher and a reflector cache.
//!
//! The store knows nothing about Drover's resources: values are JSON, every typed call is
//! generic over `Serialize` / `DeserializeOwned`, and keys are plain strings the caller builds.
//!
//! - [`StoreConfig`]: endpoints (`http://` or `https://`), [`TlsConfig`] (CA, client
//!   certificate) and [`UserConfig`] (an etcd user, its password read from a file), timeouts.
//! - [`Store`]: connect, `get`/`list` (paged, one revision), `create`/`put`/`compare_and_swap`/
//!   `delete*`, [`Txn`] commits with an optional [`Fence`], leases ([`Store::keep_alive`]).
//!   Idempotent calls retry with backoff over the live endpoints; txns are sent at most once.
//!   `count`, `db_size`, `compact` and `defragment` for benchmarks and operators.
//! - [`bare_client`]: an etcd-client of its own with the same TLS and user, for benchmarks.
//! - [`Store::ensure_role`], [`Store::ensure_user`], [`Store::enable_auth`]: etcd's users and
//!   roles, for `drover admin bootstrap`.
//! - [`Store::register_metrics`]: request latency, retries and endpoint failovers as
//!   `store_*` families in a Prometheus registry ([`metrics`]).
//! - [`ETCD_SERVER_FLAGS`]: the server flags of every etcd Drover starts itself.
//! - [`Election`]: campaign, [`Leadership`] with its [`Fence`], `leader`/`observe`.
//! - [`watcher()`]: list + watch as a state machine; [`reflector`] keeps a local cache of it, and
//!   [`Relisting`] keeps any [`Sink`] current from it (a re-list swapped in whole).

mod auth_admin;
mod backoff;
mod codec;
mod config;
pub mod election;
mod error;
pub mod lease;
mod maintenance;
pub mod metrics;
mod pool;
pub mod reflector;
mod security;
mod server_flags;
pub mod sink;
mod store;
mod txn;
pub mod watcher;
mod write_log;

pub use auth_admin::{Access, Ensured, Grant};
pub use config::{RetryConfig, StoreConfig, DEFAULT_MAX_REQUEST_BYTES};
pub use election::{Election, LeaderInfo, Leadership};
pub use error::{Error, Result};
pub use lease::{KeepAlive, LeaseId, LeaseLost, LeaseMonitor};
pub use maintenance::{Counted, DbSize};
pub use pool::bare_client;
pub use security::{TlsConfig, UserConfig};
pub use server_flags::{BACKEND_BATCH_INTERVAL, ETCD_SERVER_FLAGS};
pub use sink::{Fed, Relisting, Sink};
pub use store::{Checked, CreateOutcome, InvalidValue, Listing, Store, Versioned};
pub use txn::{ChunkOutcome, Cmp, Fence, Op, PutLease, Txn, TxnOutcome};
pub use watcher::{watcher, Event, WatchEvents};
