//! The metric names dashboards rely on, end to end: a controller, a real agent, a hollow agent
//! and `drover up` (real processes on a real etcd) each serve one registry whose `drover_*`
//! families are exactly those `docs/metrics.md` lists for that process, with the documented
//! types and labels; no doubled prefix, counters end `_total`, durations `_seconds`, sizes
//! `_bytes`; and etcd request latency has samples after an apply.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::{manifest, task_doc, Cli, Daemon};
use drover_testkit::{free_port, wait_for, EtcdServer};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long a daemon may take to be ready and serve what the test waits for.
const READY: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// One documented family: a row of the table in `docs/metrics.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Documented {
    kind: String,
    labels: BTreeSet<String>,
    processes: BTreeSet<String>,
}

/// One family as served: its type, the label names its samples carry, and its samples.
#[derive(Debug, Default)]
struct Served {
    kind: String,
    labels: BTreeSet<String>,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The `| \`drover_…\` | type | labels | process | meaning |` rows of docs/metrics.md.
fn documented() -> BTreeMap<String, Documented> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md");
    let text = std::fs::read_to_string(path).expect("docs/metrics.md exists");
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let Some(name) = cells
            .first()
            .and_then(|c| c.strip_prefix("`drover_"))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        assert_eq!(
            cells.len(),
            5,
            "docs/metrics.md row of drover_{name}: {line}"
        );
        let list = |cell: &str| -> BTreeSet<String> {
            cell.split(',')
                .map(|s| s.trim().trim_matches('`').to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let previous = rows.insert(
            format!("drover_{name}"),
            Documented {
                kind: cells[1].to_string(),
                labels: list(cells[2]),
                processes: list(cells[3]),
            },
        );
        assert!(previous.is_none(), "drover_{name} is documented twice");
    }
    assert!(!rows.is_empty(), "no rows found in docs/metrics.md");
    rows
}

/// The name a family's samples are queried by: counters carry `_total`.
fn query_name(family: &str, kind: &str) -> String {
    if kind == "counter" {
        format!("{family}_total")
    } else {
        family.to_string()
    }
}

/// Parses `name{a="x",b="y"} value` (label values may hold spaces, commas and escapes).
fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).expect("a sample has a value");
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next().expect("label set closes");
            match c {
                '}' => break i,
                ',' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                    let mut value = String::new();
                    loop {
                        match chars.next().expect("label value closes") {
                            (_, '\\') => value.extend(chars.next().map(|(_, c)| c)),
                            (_, '"') => break,
                            (_, c) => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        };
        rest = &inner[end + 1..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("sample value: {line}"));
    Sample {
        name,
        labels,
        value,
    }
}

/// The families of an exposition, keyed by family name (counters without `_total`).
fn parse_exposition(text: &str) -> BTreeMap<String, Served> {
    let mut families: BTreeMap<String, Served> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            let previous = families.insert(
                name.to_string(),
                Served {
                    kind: kind.to_string(),
                    ..Served::default()
                },
            );
            assert!(previous.is_none(), "family {name} is served twice");
            current = name.to_string();
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let sample = parse_sample(line);
            let family = families
                .get_mut(&current)
                .unwrap_or_else(|| panic!("sample outside a family: {line}"));
            let allowed: &[&str] = match family.kind.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[""],
            };
            let suffix = sample.name.strip_prefix(current.as_str());
            assert!(
                suffix.is_some_and(|s| allowed.contains(&s)),
                "sample {} does not fit {} family {current}",
                sample.name,
                family.kind
            );
            family.labels.extend(
                sample
                    .labels
                    .keys()
                    .filter(|k| !(family.kind == "histogram" && *k == "le"))
                    .cloned(),
            );
            family.samples.push(sample);
        }
    }
    families
}

/// The naming rules, for a name as queried.
fn check_name(name: &str, kind: &str, whose: &str) {
    assert!(name.starts_with("drover_"), "{whose}: {name} lacks drover_");
    assert!(
        !name.contains("drover_drover"),
        "{whose}: doubled prefix in {name}"
    );
    assert_eq!(
        name.ends_with("_total"),
        kind == "counter",
        "{whose}: {name} ({kind}): counters, and only counters, end in _total"
    );
    assert!(!name.ends_with("_total_total"), "{whose}: {name}");
    // Whole words of the name, so `agent` does not read as `age`.
    let base = name.strip_suffix("_total").unwrap_or(name);
    let words: Vec<&str> = base.split('_').collect();
    for (word, unit) in [
        ("duration", "seconds"),
        ("latency", "seconds"),
        ("time", "seconds"),
        ("age", "seconds"),
        ("size", "bytes"),
        ("bytes", "bytes"),
    ] {
        if words.contains(&word) {
            assert_eq!(
                words.last(),
                Some(&unit),
                "{whose}: {name} must end in _{unit}"
            );
        }
    }
}

/// Checks `served` against the rows of docs/metrics.md for `process`, both ways.
fn check_against_docs(process: &str, served: &BTreeMap<String, Served>) {
    let docs = documented();
    for (name, doc) in &docs {
        check_name(name, &doc.kind, "docs/metrics.md");
    }
    let mut exposed = BTreeSet::new();
    for (family, family_served) in served {
        let name = query_name(family, &family_served.kind);
        check_name(&name, &family_served.kind, process);
        let doc = docs.get(&name).unwrap_or_else(|| {
            panic!("{process} serves {name}, which docs/metrics.md does not list")
        });
        assert!(
            doc.processes.contains(process),
            "{process} serves {name}, documented for {:?} only",
            doc.processes
        );
        assert_eq!(doc.kind, family_served.kind, "{process}: type of {name}");
        assert_eq!(
            doc.labels, family_served.labels,
            "{process}: labels of {name}"
        );
        exposed.insert(name);
    }
    for (name, doc) in &docs {
        if doc.processes.contains(process) {
            assert!(
                exposed.contains(name),
                "docs/metrics.md lists {name} for {process}, which does not serve it; served: \
                 {exposed:?}"
            );
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let reply = drover_runtime::http::get(addr, path, Duration::from_secs(5))
        .await
        .ok()?;
    Some((
        reply.status,
        String::from_utf8_lossy(&reply.body).into_owned(),
    ))
}

/// Waits until `/readyz` answers 200 and `/metrics` satisfies `until`; returns the families.
async fn scrape_when<F>(
    addr: SocketAddr,
    what: &str,
    logs: impl Fn() -> String,
    until: F,
) -> BTreeMap<String, Served>
where
    F: Fn(&BTreeMap<String, Served>) -> bool,
{
    let until = &until;
    wait_for(READY, POLL, || async move {
        if get(addr, "/readyz").await?.0 != 200 {
            return None;
        }
        let (status, text) = get(addr, "/metrics").await?;
        let families = parse_exposition(&text);
        (status == 200 && until(&families)).then_some(families)
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{what} at {addr}: not ready with the metrics awaited; log:\n{}",
            logs()
        )
    })
}

/// The sum of a family's samples named `sample` whose labels include `with`.
fn total(
    families: &BTreeMap<String, Served>,
    family: &str,
    sample: &str,
    with: &[(&str, &str)],
) -> f64 {
    families
        .get(family)
        .map(|f| {
            f.samples
                .iter()
                .filter(|s| s.name == sample)
                .filter(|s| {
                    with.iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|s| s.value)
                .sum()
        })
        .unwrap_or(0.0)
}

fn store_requests(families: &BTreeMap<String, Served>, with: &[(&str, &str)]) -> f64 {
    total(
        families,
        "drover_store_request_duration_seconds",
        "drover_store_request_duration_seconds_count",
        with,
    )
}

fn build_info_is_one(process: &str, families: &BTreeMap<String, Served>) {
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        total(
            families,
            "drover_build_info",
            "drover_build_info",
            &[("version", version)]
        ),
        1.0,
        "{process}: drover_build_info{{version=\"{version}\"}} 1"
    );
}

/// Reads `lines` (keeping them in `seen`) until `find` recognizes one, within [`READY`].
async fn next_line<T>(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: &mut Vec<String>,
    find: impl Fn(&str) -> Option<T>,
) -> T {
    let found = tokio::time::timeout(READY, async {
        while let Some(line) = lines.recv().await {
            seen.push(line.clone());
            if let Some(found) = find(&line) {
                return Some(found);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    found.unwrap_or_else(|| panic!("the line awaited did not come; stderr so far: {seen:#?}"))
}

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[tokio::test]
async fn controller_agent_and_hollow_agent_serve_the_documented_names() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let (controller_addr, agent_addr, hollow_addr) = (addr(), addr(), addr());
    let state = tempfile::tempdir().expect("tempdir");
    let controller = Daemon::start(
        &cli,
        &[
            "controller",
            "--id",
            "c1",
            "--metrics-addr",
            &controller_addr.to_string(),
        ],
    );
    let agent = Daemon::start(
        &cli,
        &[
            "agent",
            "--node",
            "n0",
            "--driver",
            "process",
            // Tests run as root; their tasks set no spec.user.
            "--allow-root-tasks",
            "--state-dir",
            state.path().to_str().expect("utf-8"),
            "--metrics-addr",
            &agent_addr.to_string(),
        ],
    );
    let hollow = Daemon::start(
        &cli,
        &[
            "agent",
            "--hollow-nodes",
            "3",
            "--node",
            "hollow",
            "--metrics-addr",
            &hollow_addr.to_string(),
        ],
    );

    // A scenario with etcd traffic on every side: the controller places, the agents run.
    let (_dir, path) = manifest(&task_doc("names", 4));
    cli.ok(&["apply", "-f", path.to_str().expect("utf-8")])
        .await;

    let controller_families = scrape_when(
        controller_addr,
        "controller",
        || controller.log_text(),
        |f| {
            store_requests(f, &[("op", "commit")]) > 0.0
                && total(
                    f,
                    "drover_controller_commits",
                    "drover_controller_commits_total",
                    &[("result", "ok")],
                ) > 0.0
        },
    )
    .await;
    let agent_families = scrape_when(
        agent_addr,
        "agent",
        || agent.log_text(),
        |f| {
            store_requests(f, &[]) > 0.0
                && total(
                    f,
                    "drover_agent_registrations",
                    "drover_agent_registrations_total",
                    &[],
                ) >= 1.0
        },
    )
    .await;
    // The hollow agent's registry is the one its nodes count in: all three registered.
    let hollow_families = scrape_when(
        hollow_addr,
        "hollow agent",
        || hollow.log_text(),
        |f| {
            store_requests(f, &[("op", "lease_grant")]) >= 3.0
                && total(
                    f,
                    "drover_agent_registrations",
                    "drover_agent_registrations_total",
                    &[],
                ) >= 3.0
        },
    )
    .await;

    for (process, families) in [
        ("controller", &controller_families),
        ("agent", &agent_families),
        ("hollow", &hollow_families),
    ] {
        check_against_docs(process, families);
        build_info_is_one(process, families);
    }
    // Failover counters exist for the one endpoint from the start (at zero here).
    let endpoint = server.endpoints()[0].clone();
    assert!(
        controller_families["drover_store_endpoint_failovers"]
            .samples
            .iter()
            .any(|s| s.labels.get("endpoint") == Some(&endpoint)),
        "a failover series for {endpoint}"
    );
}

#[tokio::test]
async fn up_serves_one_registry_on_the_address_it_prints() {
    let server = EtcdServer::start().await;
    let cli = Cli::new(server.endpoints());
    let cwd = tempfile::tempdir().expect("tempdir");
    // A process task as nobody: `up` runs it with no image and without --allow-root-tasks.
    let doc = "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: upnames\nspec:\n  command: [\"sleep\", \"3600\"]\n  user: nobody\n";
    let (_dir, path) = manifest(doc);
    let mut up = cli
        .command(&[
            "up",
            "-f",
            path.to_str().expect("utf-8"),
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .current_dir(cwd.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("drover up starts");
    let stderr = up.stderr.take().expect("piped stderr");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let printed: SocketAddr = next_line(&mut lines, &mut seen, |line| {
        line.strip_prefix("metrics at http://")
            .and_then(|rest| rest.split_once("/metrics"))
            .and_then(|(addr, _)| addr.parse().ok())
    })
    .await;

    let families = scrape_when(printed, "up", String::new, |f| {
        store_requests(f, &[("op", "commit")]) > 0.0
            && total(
                f,
                "drover_agent_status_writes",
                "drover_agent_status_writes_total",
                &[("outcome", "ok")],
            ) > 0.0
    })
    .await;
    check_against_docs("up", &families);
    build_info_is_one("up", &families);
    assert_eq!(get(printed, "/healthz").await.map(|r| r.0), Some(200));

    // Interrupted only once up is up: an interrupt while it brings the cluster up is a failure.
    next_line(&mut lines, &mut seen, |line| {
        line.contains("drover is up").then_some(())
    })
    .await;
    let pid = up.id().expect("up still runs");
    let pid =
        rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid fits")).expect("pid > 0");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let status = tokio::time::timeout(READY, up.wait())
        .await
        .expect("up stops after SIGINT")
        .expect("wait");
    assert!(status.success(), "up exits cleanly: {status}");
}
