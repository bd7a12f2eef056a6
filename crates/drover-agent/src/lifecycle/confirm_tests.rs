//! What a start confirms against etcd, decided on values read back, foreign ones included.

use drover_api::instance::{Health, InstanceStatus, Phase, StopRequest};
use drover_api::names::InstanceId;
use drover_store::Versioned;

use super::tests::instance;
use super::{ended_status, is_still_assigned};
use crate::local::Slot;

fn raw(create_revision: i64, value: Vec<u8>) -> Option<Versioned<Vec<u8>>> {
    Some(Versioned {
        key: "/k".into(),
        value,
        create_revision,
        mod_revision: create_revision,
        version: 1,
        lease: None,
    })
}

fn id() -> InstanceId {
    InstanceId::service("default", "t", 0).expect("id")
}

fn status(phase: Phase, node: &str, attempt: u32) -> Option<Versioned<Vec<u8>>> {
    let s = InstanceStatus {
        id: id(),
        node: node.to_string(),
        phase,
        reason: None,
        message: None,
        container_id: None,
        restart_count: 0,
        exit_code: None,
        health: Health::Unknown,
        ports: Vec::new(),
        generation: 1,
        attempt,
        started_at: None,
        healthy_since: None,
        finished_at: None,
        updated_at: chrono::Utc::now(),
    };
    raw(3, serde_json::to_vec(&s).expect("encode"))
}

#[test]
fn only_the_same_decodable_unstopped_assignment_may_start() {
    let assigned = instance(&id());
    let json = serde_json::to_vec(&assigned).expect("encode");
    assert!(is_still_assigned(&raw(7, json.clone()), 7));
    assert!(!is_still_assigned(&None, 7), "absent");
    assert!(!is_still_assigned(&raw(8, json), 7), "placed anew");
    assert!(
        !is_still_assigned(&raw(7, b"\xffnot json".to_vec()), 7),
        "a foreign value that does not decode"
    );
    let mut stopping = assigned;
    stopping.stop = Some(StopRequest {
        reason: "Drained".into(),
        requested_at: chrono::Utc::now(),
    });
    let json = serde_json::to_vec(&stopping).expect("encode");
    assert!(!is_still_assigned(&raw(7, json), 7), "asked to stop");
}

#[test]
fn only_an_ended_status_of_this_node_and_attempt_keeps_a_copy_from_starting() {
    let assigned = instance(&id());
    let slot = Slot {
        node: assigned.node.as_str().into(),
        id: id(),
    };
    let (node, attempt) = (assigned.node.clone(), assigned.attempt);
    let ended = |found| ended_status(found, &slot, &assigned).is_some();
    assert!(ended(status(Phase::Succeeded, &node, attempt)));
    assert!(ended(status(Phase::Failed, &node, attempt)));
    assert!(
        !ended(status(Phase::Stopped, &node, attempt)),
        "stopped for the agent's sake"
    );
    assert!(
        !ended(status(Phase::Failed, "elsewhere", attempt)),
        "another node's"
    );
    assert!(
        !ended(status(Phase::Failed, &node, attempt + 1)),
        "another attempt's"
    );
    assert!(!ended(None), "no status");
    assert!(
        !ended(raw(3, b"{\"phase\":".to_vec())),
        "a status that does not decode ends nothing"
    );
}
