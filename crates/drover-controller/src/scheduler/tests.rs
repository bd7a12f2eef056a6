//! Unit and property tests for the pure scheduler.

use super::*;
use proptest::prelude::*;

fn node(name: &str, cpu: u64, mem: u64) -> NodeView {
    NodeView {
        name: name.into(),
        capacity: Capacity {
            cpu_millis: cpu,
            memory_bytes: mem,
        },
        allocated: Capacity::default(),
        labels: BTreeMap::new(),
        drivers: vec!["process".into(), "docker".into()],
        unavailable: None,
        task_counts: BTreeMap::new(),
    }
}

fn req(task: &str, slot: u32, cpu: u64, mem: u64) -> Request {
    Request {
        task: task.into(),
        name: format!("{task}/{slot:05}"),
        priority: 0,
        demand: Capacity {
            cpu_millis: cpu,
            memory_bytes: mem,
        },
        node_selector: BTreeMap::new(),
        driver: "process".into(),
        avoid_node: None,
    }
}

#[test]
fn a_hollow_node_accepts_every_driver_and_others_only_their_own() {
    let mut n = node("h", 4000, 4096);
    n.drivers = vec!["hollow".into()];
    assert!(n.supports("docker") && n.supports("process") && n.supports("hollow"));
    n.drivers = vec!["docker".into()];
    assert!(n.supports("docker") && !n.supports("process"));
}

#[test]
fn six_replicas_on_three_nodes_spread_two_each() {
    let mut s = Scheduler::new(["a", "b", "c"].map(|n| node(n, 4000, 1 << 30)));
    let reqs: Vec<_> = (0..6)
        .map(|i| req("default/web", i, 100, 1 << 20))
        .collect();
    let out = s.schedule_all(&reqs);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for d in out {
        let Decision::Placed(n) = d else {
            panic!("all must fit")
        };
        *per_node.entry(n).or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
}

#[test]
fn least_allocated_breaks_spread_ties() {
    let mut a = node("a", 1000, 1000);
    a.allocated = Capacity {
        cpu_millis: 500,
        memory_bytes: 500,
    };
    let b = node("b", 1000, 1000);
    let mut s = Scheduler::new([a, b]);
    assert_eq!(
        s.place(&req("ns/t", 0, 10, 10)),
        Decision::Placed("b".into())
    );
}

#[test]
fn avoided_node_is_used_only_as_a_last_resort() {
    let mut s = Scheduler::new([node("a", 1000, 1000), node("b", 1000, 1000)]);
    let mut r = req("ns/t", 0, 10, 10);
    r.avoid_node = Some("a".into());
    assert_eq!(s.place(&r), Decision::Placed("b".into()));
    let mut s = Scheduler::new([node("a", 1000, 1000)]);
    assert_eq!(s.place(&r), Decision::Placed("a".into()));
}

#[test]
fn unschedulable_reason_counts_nodes_per_filter() {
    let mut sel = node("a", 1000, 1000);
    sel.labels.insert("disk".into(), "hdd".into());
    let mut cordoned = node("d", 5000, 5000);
    cordoned.unavailable = Some(Unavailable::Cordoned);
    let mut s = Scheduler::new([sel, node("b", 100, 1000), node("c", 100, 1000), cordoned]);
    let mut r = req("ns/t", 0, 500, 10);
    r.node_selector.insert("disk".into(), "ssd".into());
    let d = s.place(&r);
    let Decision::Unschedulable(u) = d else {
        panic!("must not fit")
    };
    // b and c pass the selector? No: they lack the label, so the selector rejects them first.
    assert_eq!(
        u.to_string(),
        "Unschedulable: 0/4 nodes are available: 3 node selector mismatch, 1 cordoned"
    );
    let mut s = Scheduler::new([
        node("b", 100, 1000),
        node("c", 100, 1000),
        node("m", 1000, 1),
    ]);
    let Decision::Unschedulable(u) = s.place(&req("ns/t", 0, 500, 10)) else {
        panic!("must not fit")
    };
    assert_eq!(
        u.to_string(),
        "Unschedulable: 0/3 nodes are available: 2 insufficient cpu, 1 insufficient memory"
    );
    let Decision::Unschedulable(u) = Scheduler::new([]).place(&req("ns/t", 0, 1, 1)) else {
        panic!("no nodes")
    };
    assert_eq!(
        u.to_string(),
        "Unschedulable: 0/0 nodes are available: no live nodes"
    );
}

#[test]
fn driver_must_be_supported() {
    let mut n = node("a", 1000, 1000);
    n.drivers = vec!["docker".into()];
    let mut s = Scheduler::new([n]);
    assert!(matches!(
        s.place(&req("ns/t", 0, 1, 1)),
        Decision::Unschedulable(_)
    ));
}

// ---- property tests -------------------------------------------------------------------------

const LABEL_KEYS: [&str; 2] = ["disk", "zone"];
const LABEL_VALUES: [&str; 2] = ["x", "y"];
const DRIVERS: [&str; 2] = ["process", "docker"];

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(LABEL_KEYS.to_vec()).prop_map(String::from),
        prop::sample::select(LABEL_VALUES.to_vec()).prop_map(String::from),
        0..=2,
    )
}

fn arb_node(i: usize) -> impl Strategy<Value = NodeView> {
    (
        0u64..4000,
        0u64..4000,
        0u64..=100,
        labels(),
        prop::sample::subsequence(DRIVERS.to_vec(), 1..=2),
        prop::option::weighted(
            0.15,
            prop_oneof![Just(Unavailable::Cordoned), Just(Unavailable::Draining)],
        ),
    )
        .prop_map(
            move |(cpu, mem, used_pct, labels, drivers, unavailable)| NodeView {
                name: format!("node-{i:02}"),
                capacity: Capacity {
                    cpu_millis: cpu,
                    memory_bytes: mem,
                },
                allocated: Capacity {
                    cpu_millis: cpu * used_pct / 100,
                    memory_bytes: mem * used_pct / 100,
                },
                labels,
                drivers: drivers.into_iter().map(String::from).collect(),
                unavailable,
                task_counts: BTreeMap::new(),
            },
        )
}

fn arb_nodes() -> impl Strategy<Value = Vec<NodeView>> {
    (0usize..7).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>())
}

/// Tasks: (demand cpu, demand mem, selector, driver, priority, replicas).
fn arb_requests() -> impl Strategy<Value = Vec<Request>> {
    prop::collection::vec(
        (
            0u64..1500,
            0u64..1500,
            prop::collection::btree_map(
                prop::sample::select(LABEL_KEYS.to_vec()).prop_map(String::from),
                prop::sample::select(LABEL_VALUES.to_vec()).prop_map(String::from),
                0..=1,
            ),
            prop::sample::select(DRIVERS.to_vec()),
            0u8..=100,
            1u32..6,
        ),
        0..5,
    )
    .prop_map(|tasks| {
        let mut out = Vec::new();
        for (t, (cpu, mem, sel, driver, prio, replicas)) in tasks.into_iter().enumerate() {
            for slot in 0..replicas {
                let mut r = req(&format!("ns/task-{t}"), slot, cpu, mem);
                r.node_selector = sel.clone();
                r.driver = driver.into();
                r.priority = prio;
                out.push(r);
            }
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_node_is_over_committed(nodes in arb_nodes(), reqs in arb_requests()) {
        let mut s = Scheduler::new(nodes.clone());
        let out = s.schedule_all(&reqs);
        let mut added: BTreeMap<String, Capacity> = BTreeMap::new();
        for (d, r) in out.iter().zip(&reqs) {
            if let Decision::Placed(n) = d {
                let e = added.entry(n.clone()).or_default();
                *e = e.saturating_add(r.demand);
            }
        }
        for n in &nodes {
            let total = n.allocated.saturating_add(added.get(&n.name).copied().unwrap_or_default());
            prop_assert!(total.cpu_millis <= n.capacity.cpu_millis, "cpu over-committed on {}", n.name);
            prop_assert!(total.memory_bytes <= n.capacity.memory_bytes, "memory over-committed on {}", n.name);
            prop_assert_eq!(s.nodes()[&n.name].allocated, total);
        }
    }

    #[test]
    fn node_selector_driver_and_availability_are_honoured(nodes in arb_nodes(), reqs in arb_requests()) {
        let by_name: BTreeMap<_, _> = nodes.iter().map(|n| (n.name.clone(), n.clone())).collect();
        let out = Scheduler::new(nodes).schedule_all(&reqs);
        for (d, r) in out.iter().zip(&reqs) {
            if let Decision::Placed(n) = d {
                let node = &by_name[n];
                for (k, v) in &r.node_selector {
                    prop_assert_eq!(node.labels.get(k), Some(v));
                }
                prop_assert!(node.supports(&r.driver));
                prop_assert!(node.unavailable.is_none());
            }
        }
    }

    #[test]
    fn spread_never_doubles_up_while_an_eligible_node_is_empty(nodes in arb_nodes(), reqs in arb_requests()) {
        let mut s = Scheduler::new(nodes);
        let out = s.schedule_all(&reqs);
        let finals = s.nodes();
        for (d, r) in out.iter().zip(&reqs) {
            let Decision::Placed(on) = d else { continue };
            if finals[on].task_counts.get(&r.task).copied().unwrap_or(0) < 2 {
                continue;
            }
            // Allocations only grow, so a node that can take `r` now could take it then.
            for other in finals.values() {
                let empty = other.task_counts.get(&r.task).copied().unwrap_or(0) == 0;
                prop_assert!(
                    !(empty && Scheduler::reject(other, r).is_none()),
                    "{} holds 2+ of {} while {} is eligible and empty", on, r.task, other.name
                );
            }
        }
    }

    #[test]
    fn priority_order_is_respected_when_capacity_is_short(
        cpu in prop::collection::vec(0u64..2000, 1..4),
        prios in prop::collection::vec(0u8..=100, 1..20),
        demand in 1u64..700,
    ) {
        let nodes: Vec<_> = cpu.iter().enumerate().map(|(i, c)| node(&format!("n{i}"), *c, 1 << 30)).collect();
        let reqs: Vec<_> = prios.iter().enumerate().map(|(i, p)| {
            let mut r = req(&format!("ns/t{}", i % 3), u32::try_from(i).unwrap_or(0), demand, 1);
            r.priority = *p;
            r
        }).collect();
        let out = Scheduler::new(nodes).schedule_all(&reqs);
        let placed_min = out.iter().zip(&reqs).filter(|(d, _)| matches!(d, Decision::Placed(_))).map(|(_, r)| r.priority).min();
        let unplaced_max = out.iter().zip(&reqs).filter(|(d, _)| matches!(d, Decision::Unschedulable(_))).map(|(_, r)| r.priority).max();
        if let (Some(lo), Some(hi)) = (placed_min, unplaced_max) {
            prop_assert!(hi <= lo, "priority {} left pending while {} was placed", hi, lo);
        }
    }
}

/// The one-request-at-a-time reference `schedule_all` must agree with: the same order, each
/// request placed by [`Scheduler::place`] over every node.
fn schedule_one_by_one(s: &mut Scheduler, requests: &[Request]) -> Vec<Decision> {
    let mut out: Vec<Option<Decision>> = vec![None; requests.len()];
    for i in placement_order(requests) {
        out[i] = Some(s.place(&requests[i]));
    }
    out.into_iter().flatten().collect()
}

/// Requests with many replicas per task (so runs are long), some avoiding a node, some
/// sharing a priority with another task.
fn arb_runs() -> impl Strategy<Value = Vec<Request>> {
    prop::collection::vec(
        (
            0u64..900,
            0u64..900,
            prop::sample::select(DRIVERS.to_vec()),
            prop::sample::select(vec![0u8, 0, 50]),
            1u32..25,
            prop::collection::vec(prop::option::weighted(0.3, 0usize..7), 25),
        ),
        0..5,
    )
    .prop_map(|tasks| {
        let mut out = Vec::new();
        for (t, (cpu, mem, driver, prio, replicas, avoid)) in tasks.into_iter().enumerate() {
            for slot in 0..replicas {
                let mut r = req(&format!("ns/task-{t}"), slot, cpu, mem);
                r.driver = driver.into();
                r.priority = prio;
                r.avoid_node = avoid[slot as usize % avoid.len()].map(|n| format!("node-{n:02}"));
                out.push(r);
            }
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn schedule_all_decides_exactly_as_placing_one_by_one(
        nodes in arb_nodes(),
        runs in arb_runs(),
        mixed in arb_requests(),
    ) {
        for reqs in [runs.clone(), mixed, [runs.clone(), runs].concat()] {
            let mut fast = Scheduler::new(nodes.clone());
            let mut slow = Scheduler::new(nodes.clone());
            prop_assert_eq!(fast.schedule_all(&reqs), schedule_one_by_one(&mut slow, &reqs));
            prop_assert_eq!(fast.nodes(), slow.nodes());
        }
    }
}

#[test]
fn a_run_of_replicas_costs_one_pass_over_the_nodes_not_one_per_replica() {
    // Not a timing: the decisions of 2,000 replicas on 500 nodes equal the reference's, and
    // spread them four per node.
    let nodes: Vec<_> = (0..500)
        .map(|i| node(&format!("n{i:04}"), 4000, 1 << 34))
        .collect();
    let reqs: Vec<_> = (0..2000).map(|i| req("ns/big", i, 10, 1 << 20)).collect();
    let mut fast = Scheduler::new(nodes.clone());
    let mut slow = Scheduler::new(nodes);
    let out = fast.schedule_all(&reqs);
    assert_eq!(out, schedule_one_by_one(&mut slow, &reqs));
    assert!(fast.nodes().values().all(|n| n.task_counts["ns/big"] == 4));
}
