//! Snapshot unit tests: applying and removing keys of every kind, undecodable values, and
//! which status the planner reads when several keys claim one instance.

use super::*;
use drover_api::{Phase, TaskSpec};

fn raw(key: String, value: serde_json::Value, rev: i64) -> Versioned<Box<RawValue>> {
    Versioned {
        key,
        value: serde_json::value::to_raw_value(&value).expect("JSON"),
        create_revision: rev,
        mod_revision: rev,
        version: 1,
        lease: None,
    }
}

#[test]
fn a_request_status_or_letter_that_stops_decoding_is_void_not_stale() {
    let keys = Keys::new("/t");
    let mut s = Snapshot::default();
    let id = InstanceId::service("default", "web", 0).expect("id");
    let request =
        serde_json::json!({"action":"enable","requestedAt":"2026-01-01T00:00:00Z","by":"ops"});
    s.apply(&keys, raw(keys.request("default", "web", "r1"), request, 2))
        .expect("decodes");
    let status = serde_json::json!({"id": id.to_string(), "node": "n1", "phase": "Stopped",
        "generation": 1, "attempt": 1, "updatedAt": "2026-01-01T00:00:00Z"});
    s.apply(&keys, raw(keys.status("n1", &id), status, 3))
        .expect("decodes");
    assert_eq!(s.requests.len(), 1);
    let bad = serde_json::json!({"action": 7});
    assert!(s
        .apply(
            &keys,
            raw(keys.request("default", "web", "r1"), bad.clone(), 4)
        )
        .is_err());
    assert!(s.apply(&keys, raw(keys.status("n1", &id), bad, 5)).is_err());
    assert!(
        s.requests.is_empty(),
        "a request that no longer decodes is not acted on"
    );
    assert!(
        !s.statuses.contains_key(&id),
        "nor is a stale terminal status trusted"
    );
}

fn status_json(id: &InstanceId, node: &str, phase: &str) -> serde_json::Value {
    serde_json::json!({"id": id.to_string(), "node": node, "phase": phase,
        "generation": 1, "attempt": 0, "updatedAt": "2026-01-01T00:00:00Z"})
}

#[test]
fn a_legacy_status_stands_in_until_its_node_has_one_and_is_then_superseded() {
    let keys = Keys::new("/t");
    let mut s = Snapshot::default();
    let id = InstanceId::service("default", "web", 0).expect("id");
    let legacy = keys.legacy_status(&id);
    let own = keys.status("n1", &id);
    s.apply(
        &keys,
        raw(legacy.clone(), status_json(&id, "n1", "Running"), 3),
    )
    .expect("decodes");
    assert_eq!(s.statuses[&id].value.phase, Phase::Running);
    assert_eq!(s.status_key_of(&id), Some(StatusKey::Legacy));
    assert_eq!(s.superseded_legacy_statuses().count(), 0);

    s.apply(&keys, raw(own.clone(), status_json(&id, "n1", "Failed"), 4))
        .expect("decodes");
    // An agent not yet upgraded writes the old key again: the node's status still wins.
    s.apply(
        &keys,
        raw(legacy.clone(), status_json(&id, "n1", "Running"), 5),
    )
    .expect("decodes");
    assert_eq!(s.statuses[&id].value.phase, Phase::Failed);
    assert_eq!(s.status_key_of(&id), Some(StatusKey::Node("n1".into())));
    assert_eq!(
        s.superseded_legacy_statuses().collect::<Vec<_>>(),
        vec![(&id, 5)]
    );

    // Deleting the node's status lets the legacy one stand in again; deleting that leaves
    // nothing.
    s.remove(&keys, &own, 6);
    assert_eq!(s.statuses[&id].value.phase, Phase::Running);
    assert_eq!(s.status_key_of(&id), Some(StatusKey::Legacy));
    s.remove(&keys, &legacy, 7);
    assert!(!s.statuses.contains_key(&id) && s.status_keys.is_empty());
}

#[test]
fn a_status_is_about_the_node_of_its_key_whatever_its_value_says() {
    let keys = Keys::new("/t");
    let mut s = Snapshot::default();
    let id = InstanceId::service("default", "web", 0).expect("id");
    s.apply(
        &keys,
        raw(keys.status("n2", &id), status_json(&id, "n1", "Failed"), 3),
    )
    .expect("decodes");
    assert_eq!(s.statuses[&id].value.node, "n2");
    assert_eq!(
        s.terminal_status(&id, "n1"),
        None,
        "n1's copy is not shown gone"
    );
    assert_eq!(s.terminal_status(&id, "n2"), Some(3));
}

/// removing a status under another node's key must not forget the
/// status the instance's own node wrote.
#[test]
fn deleting_another_nodes_status_key_keeps_this_nodes_status() {
    let keys = Keys::new("/t");
    let mut s = Snapshot::default();
    let id = InstanceId::service("default", "web", 0).expect("id");
    s.apply(
        &keys,
        raw(keys.status("n1", &id), status_json(&id, "n1", "Failed"), 3),
    )
    .expect("decodes");
    // A foreign write (n2's role may write status/n2/<anything>) and its removal.
    s.apply(
        &keys,
        raw(keys.status("n2", &id), status_json(&id, "n2", "Running"), 4),
    )
    .expect("decodes");
    s.remove(&keys, &keys.status("n2", &id), 5);
    assert_eq!(
        s.statuses
            .get(&id)
            .map(|v| (v.value.node.clone(), v.value.phase)),
        Some(("n1".to_string(), Phase::Failed)),
        "n1's own status is lost"
    );
}

/// a status under the node that no longer decodes says nothing (the
/// copy may be live); it must not bring back a stale legacy status that says it ended.
#[test]
fn an_undecodable_node_status_does_not_revive_a_stale_terminal_legacy_one() {
    let keys = Keys::new("/t");
    let mut s = Snapshot::default();
    let id = InstanceId::service("default", "web", 0).expect("id");
    s.apply(
        &keys,
        raw(
            keys.legacy_status(&id),
            status_json(&id, "n1", "Stopped"),
            3,
        ),
    )
    .expect("decodes");
    s.apply(
        &keys,
        raw(keys.status("n1", &id), status_json(&id, "n1", "Running"), 4),
    )
    .expect("decodes");
    assert_eq!(s.terminal_status(&id, "n1"), None);
    let bad = serde_json::json!({"phase": "Sideways"});
    assert!(s.apply(&keys, raw(keys.status("n1", &id), bad, 5)).is_err());
    assert_eq!(
        s.terminal_status(&id, "n1"),
        None,
        "the stale legacy Stopped now reads as 'the copy on n1 is gone'"
    );
}

#[test]
fn applies_and_removes_by_key_kind() {
    let keys = Keys::new("/t");
    let mut s = Snapshot::default();
    let task = Task::new("default", "web", TaskSpec::default());
    let v = serde_json::to_value(&task).expect("encodes");
    s.apply(&keys, raw(keys.task("default", "web"), v, 5))
        .expect("decodes");
    s.apply(
        &keys,
        raw(keys.event("default", "x"), serde_json::json!({}), 6),
    )
    .expect("ignored");
    assert_eq!(s.tasks.len(), 1);
    assert_eq!(s.revision, 6);
    let bad = s.apply(&keys, raw(keys.node("n1"), serde_json::json!({"x": 1}), 7));
    assert!(bad.is_err());
    s.remove(&keys, &keys.task("default", "web"), 8);
    assert!(s.tasks.is_empty());
    assert_eq!(s.revision, 8);
}

#[test]
fn undecodable_nodes_and_assignments_stay_present_until_fixed_or_deleted() {
    let keys = Keys::new("/t");
    let mut s = Snapshot::default();
    let bad_node = serde_json::json!({"name": "n2", "drivers": ["warp-drive"]});
    assert!(s.apply(&keys, raw(keys.node("n2"), bad_node, 3)).is_err());
    assert!(s.node_present("n2") && !s.nodes.contains_key("n2"));
    let id = InstanceId::service("default", "web", 4).expect("id");
    let akey = keys.assignment("n2", &id);
    assert!(s
        .apply(&keys, raw(akey.clone(), serde_json::json!({"spec": 1}), 4))
        .is_err());
    assert_eq!(
        s.opaque_assignments.get(&id),
        Some(&OpaqueAssignment {
            node: "n2".into(),
            mod_revision: 4
        })
    );
    assert_eq!(s.undecodable.len(), 2);

    // One event per key and revision, naming the key.
    let mut reported = BTreeMap::new();
    let events = s.undecodable_events(&keys, &mut reported, Utc::now());
    assert_eq!(events.len(), 2);
    assert!(events
        .iter()
        .any(|e| e.name == "n2" && e.message.contains(&keys.node("n2"))));
    assert!(s
        .undecodable_events(&keys, &mut reported, Utc::now())
        .is_empty());

    s.remove(&keys, &akey, 5);
    assert!(s.opaque_assignments.is_empty());
    let node = Node {
        name: "n2".into(),
        address: "a:1".into(),
        capacity: drover_api::Capacity::default(),
        labels: BTreeMap::new(),
        drivers: vec![],
        version: "v".into(),
        tls: false,
        started_at: Utc::now(),
    };
    let good = serde_json::to_value(&node).expect("encodes");
    s.apply(&keys, raw(keys.node("n2"), good, 6))
        .expect("decodes");
    assert!(s.opaque_nodes.is_empty() && s.undecodable.is_empty());
    assert!(s.node_present("n2"));
}

#[test]
fn a_revision_record_that_lies_about_its_number_or_template_is_invalid() {
    let keys = Keys::new("/t");
    let mut s = Snapshot::default();
    let spec = TaskSpec {
        command: vec!["/bin/web".into()],
        ..TaskSpec::default()
    };
    let record = |revision: u64, hash: String| {
        serde_json::to_value(drover_api::RevisionRecord {
            revision,
            template_hash: hash,
            spec: spec.clone(),
            generation: 1,
            created_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        })
        .expect("encodes")
    };
    let task = TaskRef::new("default", "web");
    s.apply(
        &keys,
        raw(
            keys.revision("default", "web", 1),
            record(1, spec.template_hash()),
            2,
        ),
    )
    .expect("a true record decodes");
    assert!(s.revisions[&task].contains_key(&1));
    // Another client's record claiming the spec's template under a number it does not hold,
    // or a template its spec does not have: Invalid, its number taken, never planned from.
    for (n, value) in [
        (2, record(3, spec.template_hash())),
        (3, record(3, "0000000000000000".into())),
    ] {
        assert!(s
            .apply(
                &keys,
                raw(keys.revision("default", "web", n), value, 3 + n as i64)
            )
            .is_err());
        assert!(!s.revisions[&task].contains_key(&n));
        assert!(s.opaque_revisions[&task].contains_key(&n));
    }
}
