//! What the snapshot holds per instance status, against the statuses themselves: at 100,000
//! instances the leader keeps every status in memory, so what it costs per status decides
//! most of the leader's size. Measured by the process's resident set (this file's one test
//! runs alone in its process), as a ratio against the same statuses kept in a plain `Vec` in
//! the same run: no absolute figure, which would depend on the allocator and the machine.

use drover_api::{InstanceId, Keys};
use drover_controller::Snapshot;
use drover_store::Versioned;
use serde_json::value::RawValue;

const STATUSES: usize = 40_000;

/// Resident bytes of this process.
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn status_text(id: &InstanceId, node: &str) -> String {
    serde_json::json!({
        "id": id.to_string(), "node": node, "phase": "Running", "generation": 1,
        "attempt": 1, "restartCount": 0, "health": "Healthy",
        "containerId": format!("hollow-{id}"),
        "updatedAt": "2026-01-01T00:00:00Z", "startedAt": "2026-01-01T00:00:00Z"
    })
    .to_string()
}

#[test]
fn the_snapshot_holds_a_status_in_at_most_four_times_what_the_status_itself_takes() {
    let keys = Keys::new("/m");
    let ids: Vec<(InstanceId, String)> = (0..STATUSES)
        .map(|i| {
            let id = InstanceId::service("default", &format!("t{}", i / 1000), (i % 1000) as u32)
                .expect("id");
            (id, format!("hollow-{}", i % 2000))
        })
        .collect();
    let texts: Vec<(String, String)> = ids
        .iter()
        .map(|(id, node)| (keys.status(node, id), status_text(id, node)))
        .collect();

    // The statuses themselves, decoded, in a Vec.
    let before = resident();
    let plain: Vec<Versioned<drover_api::instance::InstanceStatus>> = texts
        .iter()
        .enumerate()
        .map(|(i, (key, text))| Versioned {
            key: key.clone(),
            value: serde_json::from_str(text).expect("decodes"),
            create_revision: i as i64 + 1,
            mod_revision: i as i64 + 1,
            version: 1,
            lease: None,
        })
        .collect();
    let plain_bytes = resident().saturating_sub(before).max(1);

    // The same statuses applied to a snapshot, as the leader's mirror does.
    let before = resident();
    let mut snapshot = Snapshot::default();
    for (i, (key, text)) in texts.iter().enumerate() {
        let value: Box<RawValue> = RawValue::from_string(text.clone()).expect("JSON");
        snapshot
            .apply(
                &keys,
                Versioned {
                    key: key.clone(),
                    value,
                    create_revision: i as i64 + 1,
                    mod_revision: i as i64 + 1,
                    version: 1,
                    lease: None,
                },
            )
            .expect("decodes");
    }
    let snapshot_bytes = resident().saturating_sub(before);
    assert_eq!(snapshot.statuses.len(), STATUSES);
    let ratio = snapshot_bytes as f64 / plain_bytes as f64;
    eprintln!(
        "{STATUSES} statuses: plain {} B each, in the snapshot {} B each ({ratio:.2}x)",
        plain_bytes / STATUSES,
        snapshot_bytes / STATUSES
    );
    assert!(
        ratio <= 4.0,
        "the snapshot holds a status in {ratio:.2}x what the status takes by itself"
    );
    drop(plain);
}
