//! Promise 7 for every key kind: a value another etcd client wrote under any key the controller
//! reads, one that does not decode, never stalls the leader. With poison under every kind, the
//! leader still replaces a dead node's instances and places a task applied afterwards.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{eventually, service, within, Env, FakeAgent, T};
use drover_api::{InstanceId, Phase};

const NODE_TTL: Duration = Duration::from_secs(30);

/// One undecodable value per key kind the controller reads; `live` is an instance of a live
/// node and `doomed` one of the node about to die.
fn poison(
    env: &Env,
    (live_node, live): (&str, &InstanceId),
    doomed: &InstanceId,
) -> Vec<(String, &'static str)> {
    let k = &env.keys;
    let ghost = InstanceId::service("default", "ghost", 0).expect("id");
    let letter = InstanceId::service("default", "web", 99).expect("id");
    vec![
        (
            k.task("default", "bad-task"),
            r#"{"apiVersion":"drover.dev/v1","kind":"Task","metadata":{"name":"bad-task"},"spec":{"replicas":"many"}}"#,
        ),
        (k.node("ghost"), r#"{"name":"ghost","capacity":"big"}"#),
        (k.nodeinfo("doomed"), r#"{"cordoned":"yes"}"#),
        (k.nodeinfo("n2"), r#"{"cordoned":"yes"}"#),
        (k.nodestate("doomed"), r#"{"deadSince":"yesterday"}"#),
        (k.assignment("n3", &ghost), r#""not an instance""#),
        (k.status(live_node, live), r#"{"phase":"Sideways"}"#),
        (k.status("doomed", doomed), "not json at all"),
        (
            k.legacy_status(live),
            "{a status from before statuses moved",
        ),
        (k.taskstate("default", "held"), r#"{"suspended":"maybe"}"#),
        (k.deadletter("default", &letter), "[1,2,3]"),
        (k.run("default", "web", 1), r#"{"run":"first"}"#),
        (k.trigger("default", "web", "foreign"), "\u{1}\u{2}binary"),
        (
            k.request("default", "web", "foreign"),
            r#"{"action":"explode"}"#,
        ),
        (k.event("default", "foreign"), r#"{"reason":7}"#),
        (k.controller("foreign"), "{"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_under_every_key_kind_stalls_nothing() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    let short = Duration::from_secs(2);
    env.node(&agent, "doomed", 4000, &[], short).await;
    env.node(&agent, "n2", 4000, &[], NODE_TTL).await;
    env.node(&agent, "n3", 4000, &[], NODE_TTL).await;
    let _leader = env.replica("c1").await;
    env.apply("web", service(6, 100)).await;
    env.apply("held", service(1, 100)).await;
    let placed = eventually("6 web instances Running", T, || async {
        let a = env.assignments().await;
        let s = env.statuses().await;
        let web: Vec<_> = a.into_values().filter(|i| i.task == "web").collect();
        (web.len() == 6
            && web
                .iter()
                .all(|i| s.get(&i.id).is_some_and(|s| s.phase == Phase::Running)))
        .then_some(web)
    })
    .await;
    let on_doomed: BTreeSet<InstanceId> = placed
        .iter()
        .filter(|i| i.node == "doomed")
        .map(|i| i.id.clone())
        .collect();
    let (live_node, live) = placed
        .iter()
        .find(|i| i.node != "doomed")
        .map(|i| (i.node.clone(), i.id.clone()))
        .expect("an instance on a live node");
    let doomed = on_doomed
        .iter()
        .next()
        .expect("an instance on doomed")
        .clone();

    eventually("held has its instance", T, || async {
        let a = env.assignments().await;
        (a.values().filter(|i| i.task == "held").count() == 1).then_some(())
    })
    .await;
    for (key, value) in poison(&env, (&live_node, &live), &doomed) {
        within(
            "put poison",
            env.store.put_raw(&key, value.as_bytes().to_vec(), None),
        )
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    agent.revoke("doomed").await;
    eventually(
        "the dead node's instances run on live nodes",
        short + Duration::from_secs(8),
        || async {
            let a = env.assignments().await;
            let web: Vec<_> = a.values().filter(|i| i.task == "web").collect();
            let moved = on_doomed.iter().all(|id| !a.contains_key(id));
            (moved && web.len() == 6 && web.iter().all(|i| i.node != "doomed")).then_some(())
        },
    )
    .await;

    // A task whose controller-owned state does not decode is held, not planned as new.
    env.apply("held", service(3, 100)).await;
    env.apply("after", service(2, 100)).await;
    eventually("a task applied after the poison is placed", T, || async {
        let a = env.assignments().await;
        (a.values().filter(|i| i.task == "after").count() == 2).then_some(())
    })
    .await;
    let a = env.assignments().await;
    assert!(
        a.contains_key(&live),
        "an instance whose status does not decode is not replaced"
    );
    assert_eq!(
        a.values().filter(|i| i.task == "held").count(),
        1,
        "a task whose state does not decode is held: not scaled, not restarted"
    );
}

/// A task as another etcd client would write it: JSON that decodes, no `apply` checks.
fn raw_task(name: &str, spec: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "drover.dev/v1",
        "kind": "Task",
        "metadata": {"name": name, "namespace": "default", "generation": 1},
        "spec": spec,
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_written_around_apply_are_validated_and_held() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    env.node(&agent, "n1", 4000, &[], NODE_TTL).await;
    let _leader = env.replica("c1").await;
    let cmd = serde_json::json!(["/bin/true"]);
    let writes = [
        (
            "badcron",
            serde_json::json!({"command": cmd, "schedule": "every tuesday", "restartPolicy": "Never"}),
        ),
        // x -> y -> x: neither can ever run.
        (
            "x",
            serde_json::json!({"command": cmd, "restartPolicy": "Never", "dependsOn": ["y"]}),
        ),
        (
            "y",
            serde_json::json!({"command": cmd, "restartPolicy": "Never", "dependsOn": ["x"]}),
        ),
        // A service whose key and metadata disagree.
        (
            "misnamed",
            serde_json::json!({"command": cmd, "replicas": 1}),
        ),
    ];
    for (name, spec) in writes {
        let key = env.keys.task("default", name);
        let mut bytes = raw_task(name, spec);
        if name == "misnamed" {
            bytes = raw_task(
                "other-name",
                serde_json::json!({"command": cmd, "replicas": 1}),
            );
        }
        within("put", env.store.put_raw(&key, bytes, None))
            .await
            .expect("put");
    }
    env.apply("fine", service(2, 100)).await;

    let events = eventually("each invalid task is reported", T, || async {
        let events: Vec<drover_api::Event> = env.decodable(&env.keys.events()).await;
        let invalid: Vec<_> = events
            .into_iter()
            .filter(|e| e.reason == "Invalid")
            .collect();
        (invalid.len() >= 4).then_some(invalid)
    })
    .await;
    let about = |name: &str, needle: &str| {
        events
            .iter()
            .any(|e| e.name == name && e.message.contains(needle))
    };
    assert!(about("badcron", "spec.schedule"), "{events:?}");
    assert!(about("x", "dependency cycle"), "{events:?}");
    assert!(about("y", "dependency cycle"), "{events:?}");
    assert!(
        about("misnamed", "key names default/misnamed"),
        "{events:?}"
    );

    eventually("the valid task is placed", T, || async {
        let a = env.assignments().await;
        (a.values().filter(|i| i.task == "fine").count() == 2).then_some(())
    })
    .await;
    let a = env.assignments().await;
    assert!(
        a.values().all(|i| i.task == "fine"),
        "nothing of an invalid task is planned: {a:?}"
    );
    let runs = within("runs", env.store.list_raw(&env.keys.runs()))
        .await
        .expect("runs");
    assert!(runs.items.is_empty(), "no run of an invalid task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_keeps_the_instances_of_a_task_whose_value_does_not_decode() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    env.node(&agent, "n1", 4000, &[], NODE_TTL).await;
    let first = env.replica("c1").await;
    env.apply("keep", service(2, 100)).await;
    eventually("keep has 2 instances", T, || async {
        let a = env.assignments().await;
        (a.values().filter(|i| i.task == "keep").count() == 2).then_some(())
    })
    .await;
    first.stop().await;
    let keys_before: Vec<(String, i64)> =
        within("list", env.store.list_raw(&env.keys.assignments()))
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|v| (v.key, v.create_revision))
            .collect();
    // Another client overwrites the task with something this controller cannot read.
    within(
        "put",
        env.store.put_raw(
            &env.keys.task("default", "keep"),
            b"{\"spec\":7}".to_vec(),
            None,
        ),
    )
    .await
    .expect("put");

    // A fresh leader lists everything: it has no last good value of the task.
    let second = env.replica("c2").await;
    eventually("new leader synced", T, || async {
        let s = *second.status.borrow();
        (s.leader && s.synced).then_some(())
    })
    .await;
    // A task applied now is placed: the plan was made and committed.
    env.apply("later", service(1, 100)).await;
    eventually("later placed", T, || async {
        let a = env.assignments().await;
        (a.values().any(|i| i.task == "later")).then_some(())
    })
    .await;
    let keys_after: Vec<(String, i64)> =
        within("list", env.store.list_raw(&env.keys.assignments()))
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|v| (v.key, v.create_revision))
            .filter(|(k, _)| k.contains("default.keep."))
            .collect();
    assert_eq!(
        keys_after, keys_before,
        "an undecodable task is not taken for deleted: its instances stay"
    );
    second.stop().await;
}

/// A live node's key rewritten by another client with bytes that are not JSON at all: a leader
/// that lists the cluster afresh (after a leader change) must still count the node alive and
/// leave its instances where they are, exactly as for JSON of the wrong shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_key_that_is_not_json_keeps_its_instances_across_a_leader_change() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    env.node(&agent, "n1", 4000, &[], NODE_TTL).await;
    let first = env.replica("c1").await;
    env.apply("web", service(2, 100)).await;
    let placed = eventually("2 web instances on n1", T, || async {
        let a = env.assignments().await;
        let web: BTreeSet<InstanceId> = a
            .into_values()
            .filter(|i| i.task == "web" && i.node == "n1")
            .map(|i| i.id)
            .collect();
        (web.len() == 2).then_some(web)
    })
    .await;

    within(
        "put poison",
        env.store
            .put_raw(&env.keys.node("n1"), b"\x00\x01 not json".to_vec(), None),
    )
    .await
    .expect("put");
    first.crash();
    let _second = env.replica("c2").await;
    // The new leader has listed and planned once a task applied now is placed.
    env.node(&agent, "n2", 4000, &[], NODE_TTL).await;
    env.apply("after", service(1, 100)).await;
    eventually("the new leader places a new task", T, || async {
        let a = env.assignments().await;
        a.values().any(|i| i.task == "after").then_some(())
    })
    .await;
    // It read the node key as undecodable (alive, unschedulable), and said so.
    eventually("an Undecodable event for the node key", T, || async {
        let events: Vec<drover_api::Event> = env.decodable(&env.keys.events()).await;
        events
            .iter()
            .any(|e| e.reason == "Undecodable" && e.name == "n1")
            .then_some(())
    })
    .await;
    assert!(
        within("nodestate", env.store.get_raw(&env.keys.nodestate("n1")))
            .await
            .expect("get")
            .is_none(),
        "n1 is never recorded dead"
    );
    let a = env.assignments().await;
    for id in &placed {
        assert_eq!(
            a.get(id).map(|i| i.node.as_str()),
            Some("n1"),
            "{id} stays on its live node"
        );
    }
}
