//! Unit and property tests of the web view's pages: paging bounds, counts per state, and
//! values Drover did not write shown as Invalid with their key.

use super::*;
use drover_store::Versioned;
use proptest::prelude::*;

fn raw(
    key: String,
    value: serde_json::Value,
    rev: i64,
) -> Versioned<Box<serde_json::value::RawValue>> {
    Versioned {
        key,
        value: serde_json::value::to_raw_value(&value).expect("JSON"),
        create_revision: rev,
        mod_revision: rev,
        version: 1,
        lease: None,
    }
}

fn task_json(name: &str, replicas: u32) -> serde_json::Value {
    serde_json::json!({"apiVersion": "drover.dev/v1", "kind": "Task",
        "metadata": {"name": name, "namespace": "default", "generation": 1},
        "spec": {"command": ["/bin/sleep", "1000"], "replicas": replicas}})
}

fn node_json(name: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "address": "127.0.0.1:7400",
        "capacity": {"cpu": "2000m", "memory": "1Gi"}, "labels": {"zone": "a"},
        "startedAt": "2026-01-01T00:00:00Z"})
}

fn assignment_json(id: &InstanceId, node: &str) -> serde_json::Value {
    serde_json::json!({"id": id.to_string(), "namespace": id.namespace(), "task": id.task(),
        "slot": 0, "node": node, "generation": 1, "attempt": 1,
        "spec": {"command": ["/bin/sleep", "1000"]}, "assignedAt": "2026-01-01T00:00:00Z"})
}

fn status_json(id: &InstanceId, node: &str, phase: &str) -> serde_json::Value {
    serde_json::json!({"id": id.to_string(), "node": node, "phase": phase,
        "generation": 1, "attempt": 1, "updatedAt": "2026-01-01T00:00:00Z"})
}

/// A cluster of `nodes` nodes and one task `web` of `instances` instances, the first
/// `running` of them Running.
fn cluster(nodes: usize, instances: u32, running: u32) -> (Keys, Snapshot) {
    let keys = Keys::new("/t");
    let mut s = Snapshot::default();
    let mut rev = 1;
    let mut put = |s: &mut Snapshot, key: String, value: serde_json::Value| {
        rev += 1;
        s.apply(&keys, raw(key, value, rev)).expect("decodes");
    };
    for n in 0..nodes {
        let name = format!("n{n}");
        put(&mut s, keys.node(&name), node_json(&name));
    }
    put(
        &mut s,
        keys.task("default", "web"),
        task_json("web", instances),
    );
    for slot in 0..instances {
        let id = InstanceId::service("default", "web", slot).expect("id");
        let node = format!("n{}", slot as usize % nodes.max(1));
        put(
            &mut s,
            keys.assignment(&node, &id),
            assignment_json(&id, &node),
        );
        if slot < running {
            put(
                &mut s,
                keys.status(&node, &id),
                status_json(&id, &node, "Running"),
            );
        }
    }
    (keys, s)
}

fn replica() -> Replica {
    Replica {
        id: "c0".into(),
        leader: true,
    }
}

#[test]
fn paging_reads_the_query_and_clamps() {
    assert_eq!(Paging::from_query(None), Paging::default());
    assert_eq!(
        Paging::from_query(Some("page=3&limit=20")),
        Paging { page: 3, limit: 20 }
    );
    assert_eq!(
        Paging::from_query(Some("page=0&limit=100000&x=1")),
        Paging {
            page: 1,
            limit: MAX_LIMIT
        }
    );
    assert_eq!(
        Paging::from_query(Some("page=abc&limit=")),
        Paging::default()
    );
}

#[test]
fn summary_counts_per_state() {
    let (_, s) = cluster(3, 10, 4);
    let sum = summary(&s, replica(), &Ring::default());
    assert_eq!(sum.nodes["total"], 3);
    assert_eq!(sum.nodes["alive"], 3);
    assert_eq!(sum.tasks["total"], 1);
    assert_eq!(sum.tasks["service"], 1);
    assert_eq!(sum.instances["total"], 10);
    assert_eq!(sum.instances["Running"], 4);
    assert_eq!(sum.instances["NoStatus"], 6);
}

#[test]
fn tasks_and_instances_pages() {
    let (keys, s) = cluster(2, 250, 250);
    let page = tasks(&s, &keys, Paging::default());
    assert_eq!(page.total, 1);
    let row = &page.items[0];
    assert_eq!(
        (row.desired, row.running, row.instances),
        (Some(250), 250, 250)
    );
    assert_eq!(row.mode.as_deref(), Some("service"));

    let web = TaskRef::new("default", "web");
    let inst = task_instances(
        &s,
        &keys,
        &web,
        Paging {
            page: 3,
            limit: 100,
        },
    );
    assert_eq!(
        (inst.page.page, inst.page.pages, inst.page.items.len()),
        (3, 3, 50)
    );
    assert_eq!(inst.phases["Running"], 250);
    assert!(inst.page.items.iter().all(|r| r.phase == "Running"));
    let none = task_instances(
        &s,
        &keys,
        &TaskRef::new("default", "nope"),
        Paging::default(),
    );
    assert!(none.task.is_none());
    assert_eq!(none.page.total, 0);
}

#[test]
fn values_that_do_not_decode_are_rows_marked_invalid_with_their_key() {
    let (keys, mut s) = cluster(2, 2, 2);
    let bad = serde_json::json!({"what": "a foreign writer"});
    let _ = s.apply(&keys, raw(keys.node("n1"), bad.clone(), 100));
    let _ = s.apply(&keys, raw(keys.task("default", "other"), bad.clone(), 101));
    let id = InstanceId::service("default", "web", 0).expect("id");
    let _ = s.apply(&keys, raw(keys.status("n0", &id), bad.clone(), 102));
    let _ = s.apply_not_json(
        &keys,
        &keys.nodeinfo("n0"),
        103,
        serde_json::from_slice::<serde_json::Value>(b"{oops").expect_err("not json"),
    );

    let nodes = nodes(&s, &keys, Paging::default());
    let n1 = nodes
        .items
        .iter()
        .find(|n| n.name == "n1")
        .expect("n1 is a row");
    assert!(n1.alive, "an undecodable node counts as alive");
    assert_eq!(
        n1.invalid.as_ref().map(|i| i.key.as_str()),
        Some("/t/nodes/n1")
    );
    let n0 = nodes
        .items
        .iter()
        .find(|n| n.name == "n0")
        .expect("n0 is a row");
    assert_eq!(
        n0.invalid.as_ref().map(|i| i.key.as_str()),
        Some("/t/nodeinfo/n0")
    );

    let tasks = tasks(&s, &keys, Paging::default());
    let other = tasks.items.iter().find(|t| t.name == "other").expect("row");
    assert_eq!(
        other.invalid.as_ref().map(|i| i.key.as_str()),
        Some("/t/tasks/default/other")
    );
    assert!(other.mode.is_none());

    let inst = task_instances(
        &s,
        &keys,
        &TaskRef::new("default", "web"),
        Paging::default(),
    );
    let row = inst
        .page
        .items
        .iter()
        .find(|r| r.id == id.to_string())
        .expect("row");
    assert_eq!(row.phase, "Invalid");
    assert_eq!(
        row.invalid.as_ref().map(|i| i.key.clone()),
        Some(keys.status("n0", &id))
    );
    assert_eq!(inst.phases["Invalid"], 1);

    let all = invalid(&s, &keys, Paging::default());
    assert_eq!(all.total, 4);
    let sum = summary(&s, replica(), &Ring::default());
    assert_eq!(sum.invalid_keys, 4);
    assert_eq!(sum.instances["Invalid"], 1);
    assert_eq!(sum.tasks["invalid"], 1);
}

#[test]
fn a_task_breaking_applys_rules_is_invalid_with_the_reason() {
    let (keys, mut s) = cluster(1, 0, 0);
    let mut t = task_json("mismatch", 1);
    t["metadata"]["name"] = "elsewhere".into();
    s.apply(&keys, raw(keys.task("default", "mismatch"), t, 50))
        .expect("decodes");
    s.revalidate();
    let page = tasks(&s, &keys, Paging::default());
    let row = page
        .items
        .iter()
        .find(|t| t.name == "mismatch")
        .expect("row");
    assert!(row.invalid.is_some(), "{row:?}");
}

#[test]
fn events_page_newest_first() {
    use drover_store::watcher::Event as WatchEvent;
    let keys = Keys::new("/t");
    let mut recent = super::super::recent::RecentEvents::default();
    for i in 0..3 {
        let e = serde_json::json!({"time": "2026-01-01T00:00:00Z", "namespace": "default",
            "kind": "Node", "name": format!("n{i}"), "reason": "NodeDead", "message": "m",
            "source": "controller"});
        let key = keys.event("default", &format!("e{i}"));
        recent.observe(&keys, &Ok(WatchEvent::Apply(raw(key, e, i + 1))));
    }
    let page = events(recent.live(), Paging::default());
    assert_eq!(page.total, 3);
    assert_eq!(page.items[0].object.as_deref(), Some("n2"));
}

proptest! {
    /// Every page holds at most `limit` rows, pages cover the list exactly once, and the
    /// page number is clamped into range.
    #[test]
    fn paginate_covers_the_list_once(total in 0usize..1000, limit in 1usize..200, page in 1usize..50) {
        let p = paginate(0..total, total, Paging { page, limit }, |i| i);
        prop_assert!(p.items.len() <= limit);
        prop_assert!(p.page >= 1 && p.page <= p.pages);
        prop_assert_eq!(p.pages, total.div_ceil(limit).max(1));
        let all: Vec<usize> = (1..=p.pages)
            .flat_map(|n| paginate(0..total, total, Paging { page: n, limit }, |i| i).items)
            .collect();
        prop_assert_eq!(all, (0..total).collect::<Vec<_>>());
    }

    /// The summary's per-phase counts add up to the instances, whatever the mix.
    #[test]
    fn phase_counts_add_up(nodes in 1usize..5, instances in 0u32..60, running in 0u32..60) {
        let (_, s) = cluster(nodes, instances, running.min(instances));
        let sum = summary(&s, replica(), &Ring::default());
        let phases: usize = sum.instances.iter().filter(|(k, _)| **k != "total").map(|(_, v)| v).sum();
        prop_assert_eq!(phases, instances as usize);
        prop_assert_eq!(sum.instances.get("Running").copied().unwrap_or(0), running.min(instances) as usize);
    }
}

/// A page builds its own rows only: the rows of earlier pages are skipped unbuilt, so the
/// last page of 100,000 instances costs what the first does (the mirror's lock is held
/// while a page is built, and the leader's planner waits for it).
#[test]
fn a_page_builds_only_its_own_rows() {
    let built = std::cell::Cell::new(0usize);
    let total = 1000;
    let p = paginate(
        0..total,
        total,
        Paging {
            page: 10,
            limit: 100,
        },
        |i| {
            built.set(built.get() + 1);
            i
        },
    );
    assert_eq!(p.items, (900..1000).collect::<Vec<_>>());
    assert_eq!(built.get(), 100, "rows built for a page of 100");
}
