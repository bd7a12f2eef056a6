//! Node death, leader failover in steady state, failure escalation to dead letters, and drain,
//! through the running controller against a real etcd.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{eventually, service, within, Env, FakeAgent, TTL};
use drover_api::records::DeadLetterRecord;
use drover_api::{Event, Instance, InstanceId, NodeInfo, NodeState, Phase};
use tokio::time::Instant;

const NODE_TTL: Duration = Duration::from_secs(10);

async fn settled(env: &Env, task: &str, n: usize) {
    eventually("all instances Running", TTL * 4, || async {
        let a = env.assignments().await;
        let s = env.statuses().await;
        let mine: Vec<_> = a.values().filter(|i| i.task == task).collect();
        (mine.len() == n
            && mine
                .iter()
                .all(|i| s.get(&i.id).is_some_and(|s| s.phase == Phase::Running)))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_dead_nodes_instances_are_reassigned_within_ttl_plus_3s() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    let short = Duration::from_secs(2);
    env.node(&agent, "doomed", 4000, &[], short).await;
    env.node(&agent, "n2", 4000, &[], NODE_TTL).await;
    env.node(&agent, "n3", 4000, &[], NODE_TTL).await;
    let c = env.replica("c1").await;
    env.apply("web", service(6, 100)).await;
    settled(&env, "web", 6).await;
    let before = env.assignments().await;
    let doomed: BTreeSet<_> = before
        .values()
        .filter(|i| i.node == "doomed")
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(doomed.len(), 2);

    agent.revoke("doomed").await;
    let deleted = Instant::now();
    eventually(
        "every instance reassigned to live nodes",
        short + Duration::from_secs(3),
        || async {
            let a = env.assignments().await;
            let gone = doomed.iter().all(|id| !a.contains_key(id));
            let live = a
                .values()
                .filter(|i| i.task == "web" && i.node != "doomed")
                .count();
            (gone && live == 6).then_some(())
        },
    )
    .await;
    tracing::info!(delay = ?deleted.elapsed(), "node key deleted -> last reassignment");
    eprintln!(
        "node death: key deleted -> last reassignment in {:?}",
        deleted.elapsed()
    );
    let info = eventually("dead since recorded", TTL, || async {
        let i = env
            .store
            .get::<NodeState>(&env.keys.nodestate("doomed"))
            .await
            .ok()??;
        i.value.dead_since.is_some().then_some(i)
    })
    .await;
    assert_eq!(info.value.name, "doomed");
    let events = within(
        "events",
        env.store.list::<Event>(&env.keys.events_in("default")),
    )
    .await
    .expect("events");
    assert!(events.items.iter().any(|e| e.value.reason == "NodeDead"));
    c.stop().await;
}

#[tokio::test]
async fn leader_failover_in_steady_state_moves_no_instance() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    for n in ["n1", "n2", "n3"] {
        env.node(&agent, n, 4000, &[], NODE_TTL).await;
    }
    let (a, b) = (env.replica("a").await, env.replica("b").await);
    env.apply("web", service(5, 100)).await;
    env.apply("api", service(3, 200)).await;
    settled(&env, "web", 5).await;
    settled(&env, "api", 3).await;
    let before = env.assignments().await;
    let rev_before = within("list", env.store.list_raw(&env.keys.assignments()))
        .await
        .expect("list");

    let pair = [&a, &b];
    let leader = eventually("a leader", TTL * 2, || async {
        Env::leaders(&pair).first().map(|s| (*s).to_owned())
    })
    .await;
    let (old, new) = if leader == a.id { (&a, &b) } else { (&b, &a) };
    old.crash();
    eventually(
        "standby leads and has synced",
        TTL + Duration::from_secs(3),
        || async {
            let s = *new.status.borrow();
            (s.leader && s.synced).then_some(())
        },
    )
    .await;
    // Give the new leader a few reconcile rounds to (not) do anything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = env.assignments().await;
    assert_eq!(before, after, "a leader change must not move any instance");
    let rev_after = within("list", env.store.list_raw(&env.keys.assignments()))
        .await
        .expect("list");
    let mods = |l: &drover_store::Listing<Vec<u8>>| {
        l.items
            .iter()
            .map(|i| (i.key.clone(), i.mod_revision))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        mods(&rev_before),
        mods(&rev_after),
        "no assignment was even rewritten"
    );
}

#[tokio::test]
async fn failed_instances_are_rescheduled_up_to_the_limit_then_dead_lettered() {
    let env = Env::start().await;
    let agent = FakeAgent::start(&env, Duration::ZERO);
    env.node(&agent, "n1", 4000, &[], NODE_TTL).await;
    env.node(&agent, "n2", 4000, &[], NODE_TTL).await;
    let c = env.replica("c1").await;
    env.apply("crashy", service(1, 100)).await;
    let limit = 3; // the default reschedule limit
    let mut seen = BTreeSet::new();
    for attempt in 1..=limit + 1 {
        settled(&env, "crashy", 1).await;
        let a = env.assignments().await;
        let i = a
            .values()
            .find(|i| i.task == "crashy")
            .expect("one instance")
            .clone();
        assert_eq!(i.attempt, attempt, "attempt counter");
        assert!(seen.insert(i.id.clone()), "every placement has a new id");
        agent.fail(&i).await;
        eventually("the failed instance is removed", TTL * 3, || async {
            (!env.assignments().await.contains_key(&i.id)).then_some(())
        })
        .await;
    }
    let last = seen.iter().next_back().expect("ids").clone();
    let dl = eventually("a dead letter", TTL * 2, || async {
        env.store
            .get::<DeadLetterRecord>(&env.keys.deadletter("default", &last))
            .await
            .ok()?
    })
    .await;
    assert_eq!(dl.value.letter.attempts, limit + 1);
    assert_eq!(dl.value.letter.exit_code, Some(3));
    assert!(dl.value.letter.last_error.contains("CrashLoopBackOff"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        env.per_node("crashy").await.is_empty(),
        "a dead-lettered slot is not refilled"
    );
    let events = within(
        "events",
        env.store.list::<Event>(&env.keys.events_in("default")),
    )
    .await
    .expect("events");
    let reasons: BTreeSet<_> = events
        .items
        .iter()
        .map(|e| e.value.reason.clone())
        .collect();
    assert!(
        reasons.contains("Rescheduled") && reasons.contains("DeadLettered"),
        "{reasons:?}"
    );

    // A fixed spec supersedes the letter: it is removed and the slot is filled again.
    env.apply("crashy", service(1, 200)).await;
    eventually("the superseded dead letter is removed", TTL * 2, || async {
        env.store
            .get_raw(&env.keys.deadletter("default", &last))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    settled(&env, "crashy", 1).await;
    c.stop().await;
}

/// With surge room a drain replaces first: Running never drops below `replicas`, and the copies
/// that may be live (any status but a terminal one) never exceed `replicas + maxSurge`.
#[tokio::test]
async fn drain_with_surge_moves_everything_and_never_drops_below_replicas_running() {
    let env = Env::start().await;
    // New instances become Running only after a delay, like real containers.
    let agent = FakeAgent::start(&env, Duration::from_millis(300));
    for n in ["n1", "n2", "n3"] {
        env.node(&agent, n, 4000, &[], NODE_TTL).await;
    }
    let c = env.replica("c1").await;
    let replicas = 6;
    let surge = 2;
    let mut spec = service(replicas, 100);
    spec.update.max_surge = drover_api::Budget::Count(surge);
    spec.update.min_healthy_seconds = 0;
    env.apply("web", spec).await;
    settled(&env, "web", replicas as usize).await;

    // The operator's side of a drain (what `drover drain` writes): its own nodeinfo record.
    let on_n1 = |a: &BTreeMap<InstanceId, Instance>| a.values().filter(|i| i.node == "n1").count();
    assert_eq!(on_n1(&env.assignments().await), 2);
    let info = NodeInfo {
        name: "n1".into(),
        cordoned: true,
        draining: true,
        ..NodeInfo::default()
    };
    within(
        "drain",
        env.store.put(&env.keys.nodeinfo("n1"), &info, None),
    )
    .await
    .expect("drain");
    let started = Instant::now();
    let mut samples = 0;
    loop {
        let a = env.assignments().await;
        let s = env.statuses().await;
        let running = a
            .values()
            .filter(|i| i.task == "web" && s.get(&i.id).is_some_and(|s| s.phase == Phase::Running))
            .count();
        let live = a
            .values()
            .filter(|i| i.task == "web" && !s.get(&i.id).is_some_and(|s| s.phase.is_terminal()))
            .count();
        samples += 1;
        assert!(
            running >= replicas as usize,
            "only {running} Running during the drain"
        );
        assert!(
            live <= (replicas + surge) as usize,
            "{live} live copies during the drain"
        );
        let left = on_n1(&a);
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "drain did not finish: {left} instance(s) left on n1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(took = ?started.elapsed(), samples, "drain complete");
    settled(&env, "web", replicas as usize).await;
    assert!(!env.per_node("web").await.contains_key("n1"));
    c.stop().await;
}
