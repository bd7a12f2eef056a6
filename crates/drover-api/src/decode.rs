//! The one decoder of the values under Drover's prefix. Every reader (the leader's snapshot, the
//! CLI's view of the cluster) turns a key and its JSON into a typed [`Record`] here, so a value
//! means the same to all of them and one that does not decode is the same error everywhere.

use serde::de::DeserializeOwned;

use crate::event::Event;
use crate::instance::{Instance, InstanceStatus};
use crate::keys::{Key, Keys};
use crate::names::InstanceId;
use crate::node::{Node, NodeInfo, NodeState};
use crate::records::{ControllerInfo, DeadLetterRecord, TaskRef, TaskStateRecord};
use crate::request::TaskRequest;
use crate::run::{RunRecord, TriggerRequest};
use crate::task::Task;

/// A value under the prefix that does not decode as its key says it should.
#[derive(Debug, thiserror::Error)]
#[error("{key}: does not decode as {kind}: {source}")]
pub struct DecodeError {
    /// The key.
    pub key: String,
    /// What it should have held (`Task`, `Instance`, ...).
    pub kind: &'static str,
    /// The JSON error.
    #[source]
    pub source: serde_json::Error,
}

/// A decoded value, with the identity its key gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// `tasks/<ns>/<name>`.
    Task(TaskRef, Task),
    /// `assignments/<node>/<instance>`: `node` and `id` of the value are the key's (the key is
    /// what the agent watches, so it is the truth about placement).
    Assignment(Instance),
    /// `status/<node>/<instance>`: `node` and `id` of the value are the key's (a status is
    /// about the copy on the node whose agent wrote it).
    Status(InstanceId, InstanceStatus),
    /// `status/<instance>`, where statuses were before they moved under their node.
    LegacyStatus(InstanceId, InstanceStatus),
    /// `nodes/<node>`.
    Node(String, Node),
    /// `nodeinfo/<node>`.
    NodeInfo(String, NodeInfo),
    /// `nodestate/<node>`.
    NodeState(String, NodeState),
    /// `taskstate/<ns>/<name>`.
    TaskState(TaskRef, TaskStateRecord),
    /// `deadletter/<ns>/<instance>`.
    DeadLetter(InstanceId, DeadLetterRecord),
    /// `runs/<ns>/<task>/<run>`.
    Run(TaskRef, u64, RunRecord),
    /// `triggers/<ns>/<task>/<id>`.
    Trigger(TaskRef, String, TriggerRequest),
    /// `requests/<ns>/<task>/<id>`.
    Request(TaskRef, String, TaskRequest),
    /// `revisions/<ns>/<task>/<n>`.
    Revision(TaskRef, u64, crate::rollout::RevisionRecord),
    /// `controllers/<id>`.
    Controller(String, ControllerInfo),
    /// `events/<ns>/<id>`.
    Event(Event),
}

/// What a key of this kind holds, as errors and `Invalid` rows name it.
pub fn kind_of(key: &Key) -> &'static str {
    match key {
        Key::Task { .. } => "Task",
        Key::Assignment { .. } => "Instance",
        Key::Status { .. } | Key::LegacyStatus(_) => "InstanceStatus",
        Key::Node(_) => "Node",
        Key::NodeInfo(_) => "NodeInfo",
        Key::NodeState(_) => "NodeState",
        Key::TaskState { .. } => "TaskState",
        Key::DeadLetter { .. } => "DeadLetter",
        Key::Run { .. } => "RunRecord",
        Key::Trigger { .. } => "TriggerRequest",
        Key::Request { .. } => "TaskRequest",
        Key::Revision { .. } => "RevisionRecord",
        Key::Controller(_) => "ControllerInfo",
        Key::Event { .. } => "Event",
    }
}

/// Decodes the value of `key`. `None` for a key outside the schema (an election key, a key
/// of a kind this version does not know): readers ignore those.
pub fn decode(
    keys: &Keys,
    key: &str,
    value: serde_json::Value,
) -> Option<Result<Record, DecodeError>> {
    Some(decode_parsed(keys.parse(key)?, key, value))
}

/// [`decode`] for a key the caller has parsed already (`raw` is its text, for errors).
pub fn decode_parsed(key: Key, raw: &str, value: serde_json::Value) -> Result<Record, DecodeError> {
    let kind = kind_of(&key);
    record(key, value).map_err(|source| DecodeError {
        key: raw.to_string(),
        kind,
        source,
    })
}

/// Decodes raw bytes (JSON) of `key`, as read from etcd: see [`decode`].
pub fn decode_bytes(keys: &Keys, key: &str, bytes: &[u8]) -> Option<Result<Record, DecodeError>> {
    let parsed = keys.parse(key)?;
    let kind = kind_of(&parsed);
    let value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(source) => {
            return Some(Err(DecodeError {
                key: key.to_string(),
                kind,
                source,
            }))
        }
    };
    decode(keys, key, value)
}

/// [`decode_parsed`] from the value's JSON text as etcd holds it, decoded in one pass into the
/// record's type: no `serde_json::Value` tree is built, which for an assignment (a whole task
/// spec) costs several times the text's size in allocations.
///
/// # Caveats
/// Stricter than decoding a parsed tree in one respect: a JSON object that repeats one of the
/// record's fields is refused ("duplicate field"), where a tree keeps the last of them.
pub fn decode_parsed_raw(
    key: Key,
    raw: &str,
    value: &serde_json::value::RawValue,
) -> Result<Record, DecodeError> {
    let kind = kind_of(&key);
    record(key, value).map_err(|source| DecodeError {
        key: raw.to_string(),
        kind,
        source,
    })
}

/// Where a record's fields are read from: a parsed JSON tree, or the JSON text itself.
trait Source {
    fn into_record<T: DeserializeOwned>(self) -> Result<T, serde_json::Error>;
}

impl Source for serde_json::Value {
    fn into_record<T: DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self)
    }
}

impl Source for &serde_json::value::RawValue {
    fn into_record<T: DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.get())
    }
}

fn record<S: Source>(key: Key, value: S) -> Result<Record, serde_json::Error> {
    fn from<T: DeserializeOwned, S: Source>(value: S) -> Result<T, serde_json::Error> {
        value.into_record()
    }
    Ok(match key {
        Key::Task { namespace, name } => Record::Task(TaskRef::new(namespace, name), from(value)?),
        Key::Assignment { node, instance } => {
            let mut assignment: Instance = from(value)?;
            assignment.node = node;
            assignment.id = instance;
            Record::Assignment(assignment)
        }
        Key::Status { node, instance } => {
            let mut status: InstanceStatus = from(value)?;
            status.node = node;
            status.id = instance.clone();
            Record::Status(instance, status)
        }
        Key::LegacyStatus(id) => Record::LegacyStatus(id, from(value)?),
        Key::Node(node) => Record::Node(node, from(value)?),
        Key::NodeInfo(node) => Record::NodeInfo(node, from(value)?),
        Key::NodeState(node) => Record::NodeState(node, from(value)?),
        Key::TaskState { namespace, name } => {
            Record::TaskState(TaskRef::new(namespace, name), from(value)?)
        }
        Key::DeadLetter { instance, .. } => Record::DeadLetter(instance, from(value)?),
        Key::Run {
            namespace,
            task,
            run,
        } => Record::Run(TaskRef::new(namespace, task), run, from(value)?),
        Key::Trigger {
            namespace,
            task,
            id,
        } => Record::Trigger(TaskRef::new(namespace, task), id, from(value)?),
        Key::Request {
            namespace,
            task,
            id,
        } => Record::Request(TaskRef::new(namespace, task), id, from(value)?),
        Key::Revision {
            namespace,
            task,
            revision,
        } => Record::Revision(TaskRef::new(namespace, task), revision, from(value)?),
        Key::Controller(id) => Record::Controller(id, from(value)?),
        Key::Event { .. } => Record::Event(from(value)?),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_takes_node_and_id_from_its_key() {
        let keys = Keys::new("/p");
        let id: InstanceId = "default.web.0".parse().unwrap();
        let written = serde_json::json!({
            "id": "default.web.1", "namespace": "default", "task": "web", "slot": 0,
            "node": "elsewhere", "generation": 1, "attempt": 0,
            "spec": {"command": ["true"]}, "assignedAt": "2026-01-01T00:00:00Z"
        });
        let record = decode(&keys, &keys.assignment("n1", &id), written)
            .unwrap()
            .unwrap();
        let Record::Assignment(a) = record else {
            panic!("{record:?}")
        };
        assert_eq!((a.node.as_str(), &a.id), ("n1", &id));
    }

    #[test]
    fn a_foreign_value_is_an_error_naming_key_and_kind() {
        let keys = Keys::new("/p");
        let key = keys.node("n1");
        let error = decode_bytes(&keys, &key, b"not json").unwrap().unwrap_err();
        assert_eq!(error.kind, "Node");
        assert!(
            error
                .to_string()
                .starts_with("/p/nodes/n1: does not decode as Node"),
            "{error}"
        );
        let error = decode(&keys, &key, serde_json::json!({"name": 7}))
            .unwrap()
            .unwrap_err();
        assert_eq!(error.key, key);
    }

    fn from_text(keys: &Keys, key: &str, text: &str) -> Result<Record, DecodeError> {
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(text).expect("JSON");
        decode_parsed_raw(keys.parse(key).expect("in the schema"), key, &raw)
    }

    /// The text path (the controller's mirror) decodes what the tree path decodes, to the
    /// same record, and refuses what it refuses, naming the key: a foreign writer's value of
    /// the wrong shape, a wrong type, a bare JSON string.
    #[test]
    fn the_raw_text_path_decodes_exactly_what_the_tree_path_does() {
        let keys = Keys::new("/p");
        let id: InstanceId = "default.web.0".parse().unwrap();
        let assignment = keys.assignment("n1", &id);
        let status = keys.status("n1", &id);
        let cases = [
            (
                assignment.clone(),
                r#"{"id": "default.web.1", "namespace": "default", "task": "web", "slot": 0,
                    "node": "elsewhere", "generation": 1, "attempt": 0, "revision": 3,
                    "spec": {"command": ["true"], "env": {"A": "1"}},
                    "assignedAt": "2026-01-01T00:00:00Z"}"#,
            ),
            (
                status.clone(),
                r#"{"id": "default.web.0", "node": "n1", "phase": "Running", "generation": 1,
                    "attempt": 1, "updatedAt": "2026-01-01T00:00:00Z", "unknownField": [1]}"#,
            ),
            (keys.node("n1"), r#"{"name": 7}"#),
            (assignment.clone(), r#""written by someone else""#),
            (status.clone(), r#"{"phase": "Sleeping"}"#),
            (keys.task("default", "web"), r#"[1, 2, 3]"#),
        ];
        for (key, text) in cases {
            let tree: serde_json::Value = serde_json::from_str(text).unwrap();
            let by_tree = decode(&keys, &key, tree).unwrap();
            let by_text = from_text(&keys, &key, text);
            match (by_tree, by_text) {
                (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{key}"),
                (Err(a), Err(b)) => {
                    assert_eq!((a.key.as_str(), a.kind), (b.key.as_str(), b.kind));
                    assert_eq!(b.key, key);
                }
                (a, b) => panic!("{key}: the tree gave {a:?}, the text {b:?}"),
            }
        }
    }

    #[test]
    fn keys_outside_the_schema_are_not_decoded() {
        let keys = Keys::new("/p");
        assert!(decode_bytes(&keys, "/p/leader/694d", b"x").is_none());
        assert!(decode_bytes(&keys, "/elsewhere/tasks/a/b", b"{}").is_none());
    }
}
