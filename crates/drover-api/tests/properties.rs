//! Property tests: valid tasks round-trip through YAML and JSON; no input panics the parser.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use drover_api::manifest::parse_manifest;
use drover_api::task::{ExecProbe, HttpProbe, TcpProbe};
use drover_api::{
    ConcurrencyPolicy, Cpu, HealthCheck, HollowScript, HumanDuration, Memory, PortSpec, Protocol,
    Resources, RestartPolicy, Task, TaskSpec, Trigger,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

const LABEL: &str = "[a-z]([a-z0-9-]{0,10}[a-z0-9])?";
/// Printable text, including YAML's troublemakers: quotes, `: `, `#`, leading `-`, spaces.
const TEXT: &str = "[ -~]{0,16}";
const CRONS: [&str; 5] = [
    "*/5 * * * *",
    "0 9 * * 1-5",
    "10-50/20 9,17 * * *",
    "0 0 1 JAN *",
    "@hourly",
];
const ZONES: [&str; 3] = ["UTC", "Europe/Berlin", "America/New_York"];

fn label_value() -> impl Strategy<Value = String> {
    "([A-Za-z0-9]([A-Za-z0-9._-]{0,6}[A-Za-z0-9])?)?"
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map("[a-z]{1,6}(\\.[a-z]{1,4}/[a-z]{1,4})?", label_value(), 0..3)
}

fn health_check() -> impl Strategy<Value = HealthCheck> {
    let probe = prop_oneof![
        ("/[a-z/]{0,8}", 1u16..).prop_map(|(path, port)| (
            Some(HttpProbe { path, port }),
            None,
            None
        )),
        (1u16..).prop_map(|port| (None, Some(TcpProbe { port }), None)),
        vec(TEXT, 0..3).prop_map(|rest| {
            let mut command = vec!["check".to_string()];
            command.extend(rest);
            (None, None, Some(ExecProbe { command }))
        }),
    ];
    (probe, 1u32.., 1u32.., 1u32.., any::<u32>()).prop_map(
        |((http, tcp, exec), period, timeout, threshold, delay)| HealthCheck {
            http,
            tcp,
            exec,
            period_seconds: period,
            timeout_seconds: timeout,
            failure_threshold: threshold,
            initial_delay_seconds: delay,
        },
    )
}

fn ports() -> impl Strategy<Value = Vec<PortSpec>> {
    btree_map((1u16.., any::<bool>()), option::of(LABEL), 0..4).prop_map(|m| {
        let mut used = std::collections::BTreeSet::new();
        m.into_iter()
            .map(|((port, udp), name)| PortSpec {
                container_port: port,
                name: name.filter(|n| used.insert(n.clone())),
                protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
            })
            .collect()
    })
}

fn hollow() -> impl Strategy<Value = HollowScript> {
    // Eighths are exact in binary and short in decimal, so any float formatter round-trips them.
    (
        option::of((0u32..1_000_000).prop_map(|n| f64::from(n) / 8.0)),
        any::<i32>(),
        option::of(TEXT),
    )
        .prop_map(|(run_seconds, exit_code, start_error)| HollowScript {
            run_seconds,
            exit_code,
            start_error,
        })
}

/// How the task runs: restart policy, schedule, every, trigger, timezone and the job fields.
#[derive(Debug, Clone)]
struct Timing {
    restart_policy: RestartPolicy,
    schedule: Option<String>,
    every: Option<HumanDuration>,
    time_zone: Option<String>,
    trigger: Option<Trigger>,
    timeout_seconds: Option<u64>,
    max_retries: u32,
    starting_deadline_seconds: Option<u64>,
    concurrency_policy: ConcurrencyPolicy,
    replicas: u32,
}

fn timing() -> impl Strategy<Value = Timing> {
    let service = (0u32..=1000).prop_map(|replicas| Timing {
        restart_policy: RestartPolicy::Always,
        schedule: None,
        every: None,
        time_zone: None,
        trigger: None,
        timeout_seconds: None,
        max_retries: 0,
        starting_deadline_seconds: None,
        concurrency_policy: ConcurrencyPolicy::Forbid,
        replicas,
    });
    let policy = prop_oneof![Just(RestartPolicy::OnFailure), Just(RestartPolicy::Never)];
    let concurrency = prop_oneof![
        Just(ConcurrencyPolicy::Forbid),
        Just(ConcurrencyPolicy::Allow),
        Just(ConcurrencyPolicy::Replace)
    ];
    // 0 = plain job, 1 = cron, 2 = every, 3 = manual trigger.
    let finishing = (
        policy,
        0u8..4,
        0usize..CRONS.len(),
        option::of(0usize..ZONES.len()),
        1u64..100_000,
        option::of(1u64..100_000),
        any::<u32>(),
        option::of(1u64..10_000),
        concurrency,
        1u32..=1000,
    )
        .prop_map(
            |(
                restart_policy,
                kind,
                cron,
                zone,
                every,
                timeout,
                retries,
                deadline,
                cp,
                replicas,
            )| {
                let periodic = kind > 0;
                Timing {
                    restart_policy,
                    schedule: (kind == 1).then(|| CRONS[cron].to_string()),
                    every: (kind == 2).then(|| HumanDuration::from_secs(every)),
                    time_zone: if kind == 1 {
                        zone.map(|z| ZONES[z].to_string())
                    } else {
                        None
                    },
                    trigger: (kind == 3).then_some(Trigger::Manual),
                    timeout_seconds: timeout,
                    max_retries: retries,
                    starting_deadline_seconds: if periodic { deadline } else { None },
                    concurrency_policy: if periodic {
                        cp
                    } else {
                        ConcurrencyPolicy::Forbid
                    },
                    replicas,
                }
            },
        );
    prop_oneof![service, finishing]
}

prop_compose! {
    fn valid_task()(
        name in LABEL,
        namespace in LABEL,
        meta_labels in labels(),
        generation in any::<u64>(),
        image in option::of("[a-z]{1,10}(/[a-z]{1,6})?(:[a-z0-9.]{1,5})?"),
        command in vec(TEXT, 0..4),
        working_dir in option::of("/[a-z/]{0,10}"),
        account in (option::of("[a-z_][a-z0-9_-]{0,8}|[0-9]{1,5}"), option::of("[a-z_][a-z0-9_-]{0,8}|[0-9]{1,5}")),
        env in btree_map("[A-Z_][A-Z0-9_]{0,8}", TEXT, 0..4),
        ports in ports(),
        resources in (any::<u64>(), any::<u64>()),
        node_selector in labels(),
        scheduling in (0u8..=100, any::<bool>(), any::<u32>(), any::<u32>(), 0u32..=1000),
        health_check in option::of(health_check()),
        timing in timing(),
        refs in (vec(LABEL, 0..3), vec(LABEL, 0..3), option::of(1u32..)),
        hollow in option::of(hollow()),
    ) -> Task {
        let (priority, preemption, max_restarts, grace, history_limit) = scheduling;
        let (depends_on, blocks, max_consecutive_failures) = refs;
        let mut command = command;
        let needs_program = image.is_none() || !command.is_empty();
        if needs_program && command.first().is_none_or(|c| c.is_empty()) {
            command.insert(0, "run".to_string());
        }
        let clean = |v: Vec<String>| {
            let mut seen = std::collections::BTreeSet::new();
            v.into_iter().filter(|d| d != &name && seen.insert(d.clone())).collect::<Vec<_>>()
        };
        // Gates and the circuit breaker are for work that runs to completion, not services.
        let is_service = timing.restart_policy == RestartPolicy::Always;
        let (depends_on, blocks, max_consecutive_failures) = if is_service {
            (Vec::new(), Vec::new(), None)
        } else {
            (depends_on, blocks, max_consecutive_failures)
        };
        let spec = TaskSpec {
            image,
            command,
            working_dir,
            // With an image, a group needs a user (Docker's user[:group]).
            group: account.0.as_ref().and(account.1),
            user: account.0,
            env,
            ports,
            replicas: timing.replicas,
            resources: Resources { cpu: Cpu(resources.0), memory: Memory(resources.1) },
            node_selector,
            priority,
            preemption,
            restart_policy: timing.restart_policy,
            max_restarts,
            health_check,
            termination_grace_period_seconds: grace,
            timeout_seconds: timing.timeout_seconds,
            schedule: timing.schedule,
            every: timing.every,
            time_zone: timing.time_zone,
            concurrency_policy: timing.concurrency_policy,
            starting_deadline_seconds: timing.starting_deadline_seconds,
            trigger: timing.trigger,
            depends_on: clean(depends_on),
            blocks: clean(blocks),
            max_retries: timing.max_retries,
            max_consecutive_failures,
            history_limit,
            hollow,
            // Services only; derived from another drawn field to keep the strategy's arity.
            update: if is_service {
                drover_api::UpdateStrategy {
                    max_surge: drover_api::Budget::Count(max_restarts % 3),
                    ..drover_api::UpdateStrategy::default()
                }
            } else {
                drover_api::UpdateStrategy::default()
            },
        };
        let mut task = Task::new(&namespace, &name, spec);
        task.metadata.labels = meta_labels;
        task.metadata.generation = generation;
        task
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn valid_tasks_round_trip(task in valid_task()) {
        prop_assert!(task.validate().is_empty(), "generated an invalid task: {:?}", task.validate());
        let yaml = serde_saphyr::to_string(&task).expect("serialize");
        let parsed = parse_manifest("prop.yaml", &yaml);
        prop_assert!(parsed.is_ok(), "{}\n---\n{}", parsed.unwrap_err(), yaml);
        prop_assert_eq!(parsed.expect("checked"), vec![task.clone()], "yaml:\n{}", yaml);
        let json = task.to_json_pretty().expect("json");
        let back = Task::from_json("/drover/tasks/x/y", json.as_bytes()).expect("from json");
        prop_assert_eq!(back, task);
    }

    #[test]
    fn several_tasks_in_one_manifest(tasks in vec(valid_task(), 1..4)) {
        // Distinct names, and no dependencies, so the set is valid as a whole.
        let tasks: Vec<Task> = tasks.into_iter().enumerate().map(|(i, mut t)| {
            t.metadata.name = format!("t{i}");
            t.spec.depends_on.clear();
            t.spec.blocks.clear();
            t
        }).collect();
        let text: String = tasks.iter().map(|t| format!("---\n{}", serde_saphyr::to_string(t).expect("yaml"))).collect();
        let parsed = parse_manifest("multi.yaml", &text);
        prop_assert!(parsed.is_ok(), "{}", parsed.unwrap_err());
        prop_assert_eq!(parsed.expect("checked"), tasks);
    }
}

const FRAGMENTS: &[&str] = &[
    "apiVersion: drover.dev/v1\n",
    "kind: Task\n",
    "metadata:\n",
    "  name: x\n",
    "spec:\n",
    "  image: x\n",
    "  replicas: ",
    "  command: [",
    "]",
    "{",
    "}",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!str ",
    "!!binary ",
    "%YAML 1.2\n",
    "---\n",
    "--- ",
    "...\n",
    "- ",
    ": ",
    "\"",
    "'",
    "|\n",
    ">-\n",
    "  ",
    "\t",
    "# c\n",
    "\r\n",
    "\n",
    "cpu: abc",
    "dependsOn: [x]\n",
    "~",
    "null",
    "0x1F",
    "1e999",
    "-1",
    "\u{feff}",
    "é",
    "\\",
    "? ",
    ",",
    "@",
    "`",
    "healthCheck:\n",
    "    http: {port: 0}\n",
    "  schedule: \"* * *\"\n",
    "  every: 1s\n",
    "  restartPolicy: Never\n",
    "99999999999999999999",
];

fn yamlish() -> impl Strategy<Value = String> {
    vec(prop::sample::select(FRAGMENTS), 0..40).prop_map(|v| v.concat())
}

fn mutated_valid() -> impl Strategy<Value = String> {
    let base = include_str!("../../../manifests/examples/three-tasks.yaml");
    (vec(
        (any::<prop::sample::Index>(), any::<char>(), any::<bool>()),
        1..6,
    ))
    .prop_map(move |edits| {
        let mut chars: Vec<char> = base.chars().collect();
        for (at, c, insert) in edits {
            let i = at.index(chars.len().max(1));
            if insert || chars.is_empty() {
                chars.insert(i.min(chars.len()), c);
            } else {
                chars.remove(i.min(chars.len() - 1));
            }
        }
        chars.into_iter().collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics(text in prop_oneof![
        any::<String>(),
        vec(any::<u8>(), 0..256).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        yamlish(),
        mutated_valid(),
    ]) {
        // Ok or Err are both fine; a panic fails the test. Every problem must be reportable.
        if let Err(e) = parse_manifest("fuzz.yaml", &text) {
            for p in e.problems() {
                prop_assert!(p.to_string().starts_with("fuzz.yaml"));
            }
        }
    }
}
