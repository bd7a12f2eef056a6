//! A Task document as `apply` reads it: the Task's own fields, and a top-level `status` that
//! is accepted and ignored, so that what `drover get -o yaml|json` prints (status included)
//! applies back unchanged, as with kubectl. Status is observed state, never desired state.

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::task::{ObjectMeta, Task, TaskSpec};

/// [`Task`] plus an ignored `status`.
///
/// # Caveats
///
/// Mirrors the top level of [`Task`] (`apiVersion`, `kind`, `metadata`, `spec`); a field added
/// there must be added here too, or apply would refuse it (the round-trip test in
/// `manifest/tests.rs` fails first).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Document {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: TaskSpec,
    /// Whatever `get` printed as observed state: read and dropped.
    #[serde(default, rename = "status")]
    _status: Option<IgnoredAny>,
}

impl From<Document> for Task {
    fn from(document: Document) -> Task {
        Task {
            api_version: document.api_version,
            kind: document.kind,
            metadata: document.metadata,
            spec: document.spec,
        }
    }
}
