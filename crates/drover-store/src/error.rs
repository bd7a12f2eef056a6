//! The one error type of the store, shared by every module, and how etcd failures map onto it.
//!
//! All store modules surface the same few failure kinds (etcd unreachable, a request rejected,
//! a value that does not decode, a fenced write), so they share this enum rather than each
//! wrapping the others.

use std::path::PathBuf;
use std::time::Duration;

/// Store result, defaulting to the store [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a store call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The [`StoreConfig`](crate::StoreConfig) is unusable; the message says which field.
    #[error("invalid store config: {0}")]
    InvalidConfig(String),

    /// The write log named in the config could not be opened.
    #[error("opening the write log {path}: {source}")]
    WriteLog {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// A TLS or password file named in the config cannot be used.
    #[error("cannot use the {what} {}: {reason}", path.display())]
    Credentials {
        /// Which file, with the flag that sets it, e.g. `CA file (--etcd-cafile)`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why: the I/O error, or what the contents lack.
        reason: String,
    },

    /// etcd refused to authenticate the configured user (wrong password, unknown user).
    /// Retrying will not help.
    #[error("etcd refused user {user} at {endpoint}: {reason}")]
    AuthFailed {
        /// The user name.
        user: String,
        /// The endpoint that refused it.
        endpoint: String,
        /// etcd's message.
        reason: String,
    },

    /// No endpoint answered while connecting, within the connect timeout.
    #[error("etcd unreachable at {endpoints} (tried for {timeout:?}): {reason}")]
    Unreachable {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// The connect timeout that bounded the attempt.
        timeout: Duration,
        /// The last failure seen.
        reason: String,
    },

    /// A transport failure or timeout talking to etcd; idempotent calls were already retried
    /// (with backoff, over the live endpoints) before this is returned.
    #[error("etcd unavailable during {op} via {endpoint}: {reason}")]
    Unavailable {
        /// The store operation, e.g. `get`.
        op: &'static str,
        /// The endpoint of the last attempt.
        endpoint: String,
        /// The last failure seen.
        reason: String,
    },

    /// A transaction failed in transport, so it may or may not have been applied. Re-read the
    /// keys it compares before deciding to retry it.
    #[error("outcome of {op} via {endpoint} is unknown (re-read before retrying): {reason}")]
    OutcomeUnknown {
        /// The store operation, e.g. `commit`.
        op: &'static str,
        /// The endpoint the request went to.
        endpoint: String,
        /// The transport failure.
        reason: String,
    },

    /// etcd refused the request itself (not a transport problem); retrying will not help.
    #[error("etcd rejected {op}: {reason}")]
    Rejected {
        /// The store operation.
        op: &'static str,
        /// etcd's message.
        reason: String,
    },

    /// The requested revision was compacted away; re-list to get a fresh revision.
    #[error("revision {revision} is compacted (compact revision {compact_revision})")]
    Compacted {
        /// The revision asked for.
        revision: i64,
        /// The oldest revision still available, when etcd reports it (0 when unknown).
        compact_revision: i64,
    },

    /// A stored value is not valid JSON for the requested type.
    #[error("value at key {key} does not decode: {source}")]
    Decode {
        /// The key holding the value.
        key: String,
        /// The revision that wrote the value.
        mod_revision: i64,
        /// The JSON error, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// A value could not be encoded as JSON.
    #[error("value for key {key} does not encode: {source}")]
    Encode {
        /// The key the value was meant for.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// A key returned by etcd is not UTF-8 (the store only handles string keys).
    #[error("key is not UTF-8: {key_lossy}")]
    InvalidKey {
        /// The key, with invalid bytes replaced.
        key_lossy: String,
    },

    /// The write carried a fence that no longer holds: the election key it names was deleted
    /// (resigned, lease expired) or re-created. The writer is not the leader any more and must
    /// stop writing. Distinct from losing an ordinary compare (which is `Ok(false)`-like).
    #[error("fenced: {key} has create revision {actual_create_revision} (0 = absent), the fence expects {expected_create_revision}")]
    Fenced {
        /// The election key of the fence.
        key: String,
        /// The create revision the fence holds.
        expected_create_revision: i64,
        /// The key's create revision now, 0 when it is gone.
        actual_create_revision: i64,
    },

    /// A transaction holds more operations than etcd accepts (`--max-txn-ops`, 128 by default);
    /// use [`Store::commit_batched`](crate::Store::commit_batched) or split it.
    #[error("transaction has {ops} operations or compares, more than the limit of {max}")]
    TooManyOps {
        /// The larger of the compare and operation counts.
        ops: usize,
        /// The configured limit.
        max: usize,
    },

    /// The lease does not exist on the server (expired or revoked).
    #[error("lease {id:x} not found (expired or revoked)")]
    LeaseNotFound {
        /// The lease id.
        id: i64,
    },
}

impl Error {
    /// Whether the caller may retry the operation that failed.
    ///
    /// # Caveats
    ///
    /// [`Error::OutcomeUnknown`] is retryable only after re-reading: the transaction may have
    /// been applied. [`Error::Compacted`] is retryable by re-listing, not by repeating the same
    /// revision.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::Unavailable { .. }
                | Error::OutcomeUnknown { .. }
                | Error::Compacted { .. }
        )
    }
}

/// How a raw etcd-client failure should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The connection or the member is gone: try another endpoint; safe to retry when the call
    /// is idempotent.
    EndpointDown,
    /// The cluster is busy or electing (e.g. `leader changed`): retry the same call later.
    Transient,
    /// A compacted revision.
    Compacted,
    /// The lease does not exist.
    LeaseNotFound,
    /// etcd refused the request.
    Rejected,
}

// gRPC status codes (tonic::Code as i32), named here to avoid depending on tonic directly.
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;
const DEADLINE_EXCEEDED: i32 = 4;
const NOT_FOUND: i32 = 5;
const RESOURCE_EXHAUSTED: i32 = 8;
const ABORTED: i32 = 10;
const OUT_OF_RANGE: i32 = 11;
const INTERNAL: i32 = 13;
const UNAVAILABLE: i32 = 14;

/// Classifies an etcd-client error.
pub(crate) fn classify(e: &etcd_client::Error) -> Class {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => Class::EndpointDown,
        E::LeaseKeepAliveError(msg) if msg.contains("not found") => Class::LeaseNotFound,
        E::LeaseKeepAliveError(_) => Class::EndpointDown,
        E::GRpcStatus(status) => classify_status(i32::from(status.code()), status.message()),
        _ => Class::Rejected,
    }
}

/// Classifies a gRPC status by its code (as `i32`) and message.
fn classify_status(code: i32, msg: &str) -> Class {
    match code {
        OUT_OF_RANGE if msg.contains("compacted") => Class::Compacted,
        NOT_FOUND if msg.contains("lease not found") => Class::LeaseNotFound,
        UNAVAILABLE if msg.starts_with("etcdserver:") && !msg.contains("no leader") => {
            Class::Transient
        }
        UNAVAILABLE | CANCELLED | DEADLINE_EXCEEDED => Class::EndpointDown,
        UNKNOWN | INTERNAL if looks_like_transport(msg) => Class::EndpointDown,
        RESOURCE_EXHAUSTED | ABORTED => Class::Transient,
        _ => Class::Rejected,
    }
}

fn looks_like_transport(msg: &str) -> bool {
    let msg = msg.to_ascii_lowercase();
    [
        "transport",
        "connection",
        "h2 protocol",
        "broken pipe",
        "error reading",
        "stream",
    ]
    .iter()
    .any(|needle| msg.contains(needle))
}

/// An etcd-client error with the causes it wraps: tonic's transport errors print only
/// "transport error" themselves, while the reason (a refused connection, a certificate the
/// server or the client did not accept) is in their sources.
pub(crate) fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let mut out = e.to_string();
    let mut next: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::TransportError(t) => t.source(),
        etcd_client::Error::GRpcStatus(s) => s.source(),
        etcd_client::Error::IoError(io) => io.source(),
        _ => None,
    };
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// A [`Error::Compacted`] for `revision` when etcd did not say how far it compacted.
pub(crate) fn compacted(revision: i64) -> Error {
    Error::Compacted {
        revision,
        compact_revision: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_status_codes() {
        let st = classify_status;
        assert_eq!(st(UNAVAILABLE, "tcp connect error"), Class::EndpointDown);
        assert_eq!(
            st(UNAVAILABLE, "etcdserver: leader changed"),
            Class::Transient
        );
        assert_eq!(
            st(UNAVAILABLE, "etcdserver: no leader"),
            Class::EndpointDown
        );
        assert_eq!(
            st(
                OUT_OF_RANGE,
                "etcdserver: mvcc: required revision has been compacted"
            ),
            Class::Compacted
        );
        assert_eq!(
            st(NOT_FOUND, "etcdserver: requested lease not found"),
            Class::LeaseNotFound
        );
        assert_eq!(
            st(3, "etcdserver: too many operations in txn request"),
            Class::Rejected
        );
        assert_eq!(
            st(UNKNOWN, "h2 protocol error: broken pipe"),
            Class::EndpointDown
        );
    }

    #[test]
    fn classifies_client_errors() {
        let io = etcd_client::Error::IoError(std::io::Error::other("reset"));
        assert_eq!(classify(&io), Class::EndpointDown);
        let ka = etcd_client::Error::LeaseKeepAliveError("lease not found".into());
        assert_eq!(classify(&ka), Class::LeaseNotFound);
    }

    #[test]
    fn descriptions_carry_the_causes() {
        let io = std::io::Error::other(std::io::Error::other("certificate required"));
        let text = describe(&etcd_client::Error::IoError(io));
        assert!(text.contains("certificate required"), "{text}");
    }

    #[test]
    fn retryable_kinds() {
        assert!(compacted(3).retryable());
        assert!(!Error::LeaseNotFound { id: 1 }.retryable());
    }
}
