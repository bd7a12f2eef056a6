//! Test support for Drover: real etcd servers and clusters, wait helpers and fault injection.
//!
//! Everything here starts real processes or sockets on loopback; nothing is mocked.
//!
//! - [`EtcdServer`]: one `etcd` on free loopback ports with a tmpfs data dir (when `/dev/shm`
//!   exists), which a test can [`kill`](EtcdServer::kill) (SIGKILL) and
//!   [`restart`](EtcdServer::restart) on the same ports and data.
//! - [`EtcdCluster`]: several members forming one cluster, each killable and restartable.
//! - [`EtcdOptions`]: either of them over TLS with client-certificate auth (certificates made
//!   for the test, [`TlsFiles`]), and with etcd's auth turned on
//!   ([`EtcdServer::enable_auth`], [`EtcdUser`]).
//! - [`TcpProxy`]: a loopback TCP forwarder that can [`cut`](TcpProxy::cut) (drop and refuse
//!   connections) or [`blackhole`](TcpProxy::blackhole) (stall bytes, like a partition) traffic.
//! - [`wait_for`], [`unique_prefix`], [`init_tracing`]: small helpers so tests poll instead of
//!   sleeping and never collide on keys.
//!
//! # Caveats
//!
//! The API panics (with a message saying what to do) when the environment is broken, for example
//! when `etcd` is not installed: this is test support, and a panic is the clearest failure.

mod certs;
mod cluster;
mod etcd;
mod ports;
mod process;
mod proxy;
mod secure;
mod wait;

pub use certs::{TlsFiles, CLIENT_CN};
pub use cluster::EtcdCluster;
pub use etcd::{EtcdServer, EtcdctlError, ETCD_SERVER_FLAGS};
pub use ports::free_port;
pub use process::process_alive;
pub use proxy::TcpProxy;
pub use secure::{EtcdOptions, EtcdUser};
pub use wait::{init_tracing, unique_prefix, wait_for, TimedOut};
