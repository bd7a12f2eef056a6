//! Manifest parsing end to end: every rejection names the file, document, line and field.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use drover_api::{
    parse_manifest, parse_many, Cpu, ManifestError, Memory, Mode, Problem, Protocol, Task,
    MAX_DOCUMENTS, MAX_MANIFEST_BYTES,
};

const HEAD: &str = "apiVersion: drover.dev/v1\nkind: Task\n";

/// A valid first document (lines 1-6) so that the document under test is document 2.
const FIRST: &str = "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: first\nspec:\n  image: busybox\n---\n";
/// The line on which document 2 starts.
const DOC2: usize = 8;

fn problems(source: &str, text: &str) -> Vec<Problem> {
    match parse_manifest(source, text) {
        Ok(tasks) => panic!("expected problems, parsed {tasks:?}"),
        Err(ManifestError::Invalid(p)) => p,
        Err(other) => panic!("unexpected error {other}"),
    }
}

/// Asserts there is exactly one problem and that it is at `document`, `line`, `field` and
/// that its display names all of them and contains `needle`.
fn one(
    source: &str,
    text: &str,
    document: usize,
    line: usize,
    field: &str,
    needle: &str,
) -> Problem {
    let ps = problems(source, text);
    assert_eq!(
        ps.len(),
        1,
        "expected one problem, got:\n{}",
        ManifestError::Invalid(ps.clone())
    );
    let p = ps.into_iter().next().unwrap();
    let shown = p.to_string();
    assert_eq!(p.source, source, "{shown}");
    assert_eq!(p.document, document, "{shown}");
    assert_eq!(p.line, Some(line), "{shown}");
    assert_eq!(p.field, field, "{shown}");
    assert!(
        shown.starts_with(&format!("{source}: document {document}, line {line}")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(": {field}: ")) || field.is_empty(),
        "{shown}"
    );
    assert!(shown.contains(needle), "{shown} does not contain {needle}");
    p
}

#[test]
fn the_documented_example_message() {
    let text = format!(
        "{FIRST}{HEAD}metadata:\n  name: echo\nspec:\n  image: x\n  resources:\n    cpu: abc\n"
    );
    let p = one(
        "echo.yaml",
        &text,
        2,
        DOC2 + 7,
        "spec.resources.cpu",
        "invalid CPU quantity",
    );
    assert_eq!(
        p.to_string(),
        format!(
            "echo.yaml: document 2, line {}, column 5: spec.resources.cpu: invalid CPU quantity \"abc\" (expected e.g. 250m or 1.5)",
            DOC2 + 7
        )
    );
}

#[test]
fn unknown_field_with_suggestion() {
    let text = format!("{FIRST}{HEAD}metadata:\n  name: echo\nspec:\n  image: x\n  replica: 3\n");
    let p = one(
        "a.yaml",
        &text,
        2,
        DOC2 + 6,
        "spec.replica",
        "unknown field \"replica\", did you mean \"replicas\"?",
    );
    assert_eq!(p.column, Some(3));
    // Nested, in flow style.
    let text = format!("{HEAD}metadata: {{name: echo}}\nspec:\n  image: x\n  healthCheck: {{http: {{port: 80, pth: /}}}}\n");
    one(
        "b.yaml",
        &text,
        1,
        6,
        "spec.healthCheck.http.pth",
        "did you mean \"path\"?",
    );
    // Top level, and without a close match.
    let text = format!("{HEAD}metadata: {{name: echo}}\nspec: {{image: x}}\nzzzzzz: 1\n");
    one(
        "c.yaml",
        &text,
        1,
        5,
        "zzzzzz",
        "known fields: apiVersion, kind, metadata, spec",
    );
    // Inside a list item.
    let text = format!("{HEAD}metadata: {{name: echo}}\nspec:\n  image: x\n  ports:\n    - containerPort: 80\n      hostPort: 1\n");
    one(
        "d.yaml",
        &text,
        1,
        8,
        "spec.ports[0].hostPort",
        "unknown field \"hostPort\"",
    );
}

#[test]
fn unknown_enum_value_with_suggestion() {
    let text =
        format!("{HEAD}metadata: {{name: echo}}\nspec:\n  image: x\n  restartPolicy: Alway\n");
    one(
        "e.yaml",
        &text,
        1,
        6,
        "spec.restartPolicy",
        "did you mean \"Always\"?",
    );
}

#[test]
fn wrong_type_and_out_of_range() {
    let text = format!("{HEAD}metadata: {{name: echo}}\nspec:\n  image: x\n  replicas: -3\n");
    one(
        "f.yaml",
        &text,
        1,
        6,
        "spec.replicas",
        "invalid value \"-3\"",
    );
    let text = format!("{HEAD}metadata: {{name: echo}}\nspec:\n  image: x\n  priority: 300\n");
    one("f.yaml", &text, 1, 6, "spec.priority", "0 to 255");
    let text = format!("{HEAD}metadata: {{name: echo}}\nspec:\n  image: x\n  priority: 101\n");
    one("f.yaml", &text, 1, 6, "spec.priority", "between 0 and 100");
}

#[test]
fn missing_required_field() {
    let text = format!("{HEAD}metadata: {{name: echo}}\nspec:\n  image: x\n  healthCheck:\n    http:\n      path: /\n");
    one(
        "g.yaml",
        &text,
        1,
        7,
        "spec.healthCheck.http.port",
        "missing required field \"port\"",
    );
    let text = format!("{HEAD}metadata: {{namespace: x}}\nspec: {{image: x}}\n");
    one(
        "g.yaml",
        &text,
        1,
        3,
        "metadata.name",
        "missing required field \"name\"",
    );
}

#[test]
fn bad_name() {
    let text = format!("{FIRST}{HEAD}metadata:\n  name: Echo_1\nspec:\n  image: x\n");
    one(
        "n.yaml",
        &text,
        2,
        DOC2 + 3,
        "metadata.name",
        "invalid task name \"Echo_1\"",
    );
    let text = format!("{HEAD}metadata:\n  name: echo\n  namespace: -ns\nspec:\n  image: x\n");
    one(
        "n.yaml",
        &text,
        1,
        5,
        "metadata.namespace",
        "must start with",
    );
    let text =
        format!("{HEAD}metadata:\n  name: echo\nspec:\n  image: x\n  dependsOn: [ok, Not/OK]\n  restartPolicy: Never\n");
    one(
        "n.yaml",
        &text,
        1,
        7,
        "spec.dependsOn[1]",
        "invalid task name",
    );
    let text = format!(
        "{HEAD}metadata:\n  name: echo\n  labels:\n    \"bad key\": v\nspec:\n  image: x\n"
    );
    one(
        "n.yaml",
        &text,
        1,
        6,
        "metadata.labels.bad key",
        "invalid label key",
    );
    let text =
        format!("{HEAD}metadata:\n  name: echo\nspec:\n  image: x\n  env:\n    BAD-NAME: v\n");
    one(
        "n.yaml",
        &text,
        1,
        8,
        "spec.env.BAD-NAME",
        "environment variable name",
    );
}

#[test]
fn bad_quantity() {
    let text = format!(
        "{HEAD}metadata: {{name: echo}}\nspec:\n  image: x\n  resources:\n    memory: 12Xi\n"
    );
    one(
        "q.yaml",
        &text,
        1,
        7,
        "spec.resources.memory",
        "unknown memory suffix \"Xi\"",
    );
    let text =
        format!("{HEAD}metadata: {{name: echo}}\nspec:\n  image: x\n  resources: {{cpu: -1}}\n");
    one(
        "q.yaml",
        &text,
        1,
        6,
        "spec.resources.cpu",
        "must not be negative",
    );
}

#[test]
fn bad_cron() {
    let text = format!("{FIRST}{HEAD}metadata: {{name: tick}}\nspec:\n  command: [date]\n  restartPolicy: Never\n  schedule: \"0 61 * * *\"\n");
    one(
        "cron.yaml",
        &text,
        2,
        DOC2 + 6,
        "spec.schedule",
        "invalid hour field \"61\"",
    );
    let text = format!("{HEAD}metadata: {{name: tick}}\nspec:\n  command: [date]\n  restartPolicy: Never\n  schedule: \"0 0 * * * *\"\n");
    one(
        "cron.yaml",
        &text,
        1,
        7,
        "spec.schedule",
        "has 6 fields, expected 5",
    );
}

#[test]
fn bad_time_zone() {
    let text = format!(
        "{HEAD}metadata: {{name: tick}}\nspec:\n  command: [date]\n  restartPolicy: Never\n  schedule: \"0 9 * * *\"\n  timeZone: Europe/Berlim\n"
    );
    one(
        "tz.yaml",
        &text,
        1,
        8,
        "spec.timeZone",
        "unknown time zone \"Europe/Berlim\"",
    );
}

#[test]
fn bad_duration() {
    let text = format!("{HEAD}metadata: {{name: tick}}\nspec:\n  command: [date]\n  restartPolicy: Never\n  every: 5 minutes\n");
    one("d.yaml", &text, 1, 7, "spec.every", "invalid duration");
}

#[test]
fn service_with_schedule() {
    let text =
        format!("{HEAD}metadata: {{name: web}}\nspec:\n  image: x\n  schedule: \"* * * * *\"\n");
    one(
        "s.yaml",
        &text,
        1,
        6,
        "spec.schedule",
        "not allowed for a service",
    );
}

#[test]
fn self_dependency() {
    let text = format!("{FIRST}{HEAD}metadata:\n  name: loop\nspec:\n  image: x\n  dependsOn:\n    - other\n    - loop\n  restartPolicy: Never\n");
    one(
        "self.yaml",
        &text,
        2,
        DOC2 + 8,
        "spec.dependsOn[1]",
        "cannot depend on itself",
    );
    let text = format!("{HEAD}metadata:\n  name: loop\nspec:\n  image: x\n  blocks: [loop]\n  restartPolicy: Never\n");
    one(
        "self.yaml",
        &text,
        1,
        7,
        "spec.blocks[0]",
        "cannot block itself",
    );
}

#[test]
fn cycle_within_one_apply() {
    let doc = |name: &str, dep: &str| {
        format!("---\n{HEAD}metadata:\n  name: {name}\nspec:\n  image: x\n  dependsOn: [{dep}]\n  restartPolicy: Never\n")
    };
    // Documents start at lines 1, 10, 19; dependsOn is the 8th line of each.
    let text = format!("{}{}{}", doc("a", "b"), doc("b", "c"), doc("c", "a"));
    one(
        "cycle.yaml",
        &text,
        1,
        8,
        "spec.dependsOn[0]",
        "dependency cycle: a -> b -> c -> a",
    );
    // A dependency outside the set is fine, and so is a diamond.
    let text = format!(
        "{}{}{}",
        doc("a", "b"),
        doc("b", "elsewhere"),
        doc("c", "b")
    );
    assert_eq!(parse_manifest("ok.yaml", &text).unwrap().len(), 3);
    // Across files.
    let inputs = vec![
        ("x.yaml".to_string(), doc("x", "y")),
        ("y.yaml".to_string(), doc("y", "x")),
    ];
    let err = parse_many(&inputs).unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    assert_eq!(
        err.to_string(),
        "x.yaml: document 1, line 8, column 15: spec.dependsOn[0]: dependency cycle: x -> y -> x"
    );
}

#[test]
fn duplicate_name() {
    let doc = |ns: &str| {
        format!("---\n{HEAD}metadata:\n  name: dup\n  namespace: {ns}\nspec:\n  image: x\n")
    };
    let text = format!("{}{}{}", doc("a"), doc("b"), doc("a"));
    let p = one(
        "dup.yaml",
        &text,
        3,
        21,
        "metadata.name",
        "duplicate task a/dup",
    );
    assert!(p.message.contains("dup.yaml document 1"), "{p}");
    let inputs = vec![
        ("one.yaml".to_string(), doc("a")),
        ("two.yaml".to_string(), doc("a")),
    ];
    let err = parse_many(&inputs).unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    assert_eq!(err.problems()[0].source, "two.yaml");
}

#[test]
fn oversized_manifest() {
    let mut text = format!("{HEAD}metadata: {{name: big}}\nspec:\n  image: x\n");
    while text.len() <= MAX_MANIFEST_BYTES {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    let ps = problems("big.yaml", &text);
    assert_eq!(ps.len(), 1);
    let shown = ps[0].to_string();
    assert_eq!(ps[0].document, 1);
    assert!(ps[0].line.is_some_and(|l| l > 1000), "{shown}");
    assert!(shown.starts_with("big.yaml: document 1, line "), "{shown}");
    assert!(shown.contains("over the limit of 1048576 bytes"), "{shown}");
}

#[test]
fn too_many_documents() {
    let doc = |i: usize| format!("---\n{HEAD}metadata: {{name: t{i}}}\nspec: {{image: x}}\n");
    let text: String = (0..=MAX_DOCUMENTS).map(doc).collect();
    let ps = problems("many.yaml", &text);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].document, MAX_DOCUMENTS + 1);
    assert_eq!(ps[0].line, Some(MAX_DOCUMENTS * 5 + 2));
    assert!(
        ps[0]
            .to_string()
            .contains("too many documents (501): at most 500"),
        "{}",
        ps[0]
    );
    let text: String = (0..MAX_DOCUMENTS).map(doc).collect();
    assert_eq!(
        parse_manifest("many.yaml", &text).unwrap().len(),
        MAX_DOCUMENTS
    );
}

#[test]
fn wrong_api_version_and_kind() {
    let text = format!("{FIRST}apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\nspec:\n  replicas: 2\n  template: {{}}\n");
    let ps = problems("k8s.yaml", &text);
    assert_eq!(ps.len(), 2, "{}", ManifestError::Invalid(ps.clone()));
    assert_eq!(
        ps[0].to_string(),
        format!("k8s.yaml: document 2, line {DOC2}, column 1: apiVersion: unsupported apiVersion \"apps/v1\" (supported: drover.dev/v1)")
    );
    assert_eq!(ps[1].field, "kind");
    assert_eq!(ps[1].line, Some(DOC2 + 1));
    assert!(ps[1].message.contains("supported: Task"), "{}", ps[1]);
    let text = "apiVersion: drover.dev/v1\nkind: Job\nmetadata: {name: x}\nspec: {image: x}\n";
    one("k.yaml", text, 1, 2, "kind", "unsupported kind \"Job\"");
    let text = "kind: Task\nmetadata: {name: x}\nspec: {image: x}\n";
    one(
        "k.yaml",
        text,
        1,
        1,
        "apiVersion",
        "missing required field \"apiVersion\"",
    );
}

#[test]
fn missing_image_and_command() {
    let text = format!("{FIRST}{HEAD}metadata:\n  name: nothing\nspec:\n  replicas: 2\n");
    one(
        "m.yaml",
        &text,
        2,
        DOC2 + 4,
        "spec",
        "either spec.image (docker driver) or spec.command (process driver) is required",
    );
    // No spec at all.
    let text = format!("{HEAD}metadata:\n  name: nothing\n");
    one(
        "m.yaml",
        &text,
        1,
        1,
        "spec",
        "missing required field \"spec\"",
    );
}

#[test]
fn two_probes() {
    let text = format!(
        "{FIRST}{HEAD}metadata:\n  name: web\nspec:\n  image: x\n  healthCheck:\n    http: {{path: /health, port: 80}}\n    tcp: {{port: 80}}\n"
    );
    one(
        "p.yaml",
        &text,
        2,
        DOC2 + 6,
        "spec.healthCheck",
        "exactly one of http, tcp or exec",
    );
    let text = format!(
        "{HEAD}metadata:\n  name: web\nspec:\n  image: x\n  healthCheck:\n    tcp: {{port: 0}}\n"
    );
    one(
        "p.yaml",
        &text,
        1,
        8,
        "spec.healthCheck.tcp.port",
        "between 1 and 65535",
    );
}

#[test]
fn syntax_error_is_located() {
    let text = format!("{FIRST}{HEAD}metadata:\n  name: [broken\nspec:\n  image: x\n");
    let ps = problems("syn.yaml", &text);
    assert_eq!(ps.len(), 1, "{}", ManifestError::Invalid(ps.clone()));
    assert_eq!(ps[0].document, 2);
    assert!(ps[0].line.is_some_and(|l| l >= DOC2 + 3), "{}", ps[0]);
}

#[test]
fn collects_problems_from_all_documents() {
    let text = format!(
        "{HEAD}metadata: {{name: a}}\nspec: {{image: x, replica: 1}}\n---\n{HEAD}metadata: {{name: B}}\nspec: {{image: x, priority: 200}}\n---\n{HEAD}metadata: {{name: c}}\nspec: {{}}\n"
    );
    let ps = problems("all.yaml", &text);
    let summary: Vec<(usize, &str)> = ps.iter().map(|p| (p.document, p.field.as_str())).collect();
    assert_eq!(
        summary,
        [
            (1, "spec.replica"),
            (2, "metadata.name"),
            (2, "spec.priority"),
            (3, "spec")
        ]
    );
    let shown = ManifestError::Invalid(ps).to_string();
    assert_eq!(shown.lines().count(), 4, "{shown}");
}

#[test]
fn defaults_are_applied() {
    let text = "apiVersion: drover.dev/v1\nkind: Task\nmetadata: {name: tiny}\nspec: {command: [sleep, \"1\"]}\n";
    let tasks = parse_manifest("<stdin>", text).unwrap();
    let t = &tasks[0];
    assert_eq!(t.metadata.namespace, "default");
    assert_eq!(t.metadata.generation, 0);
    assert_eq!(t.spec.replicas, 1);
    assert_eq!(t.spec.resources.cpu, Cpu(100));
    assert_eq!(t.spec.resources.memory, Memory(64 << 20));
    assert_eq!(t.spec.priority, 50);
    assert_eq!(t.spec.mode(), Mode::Service);
}

#[test]
fn empty_documents_are_skipped() {
    let text = "# nothing\n---\n---\n# still nothing\n...\n---\napiVersion: drover.dev/v1\nkind: Task\nmetadata: {name: x}\nspec: {image: x}\n---\n~\n";
    assert_eq!(parse_manifest("e.yaml", text).unwrap().len(), 1);
    assert!(parse_manifest("e.yaml", "").unwrap().is_empty());
}

#[test]
fn scalars_into_strings() {
    // Unquoted numbers and YAML-1.1 booleans in env and labels stay the text written.
    let text = format!("{HEAD}metadata:\n  name: x\n  labels: {{v: 1.10}}\nspec:\n  image: x\n  env: {{PORT: 7777, DEBUG: yes, RATIO: 0.50}}\n");
    let t = &parse_manifest("s.yaml", &text).unwrap()[0];
    assert_eq!(t.spec.env["PORT"], "7777");
    assert_eq!(t.spec.env["DEBUG"], "yes");
    assert_eq!(t.spec.env["RATIO"], "0.50");
    assert_eq!(t.metadata.labels["v"], "1.10");
}

#[test]
fn json_helpers() {
    let text = std::fs::read_to_string(examples_dir().join("echo.yaml")).unwrap();
    let task = parse_manifest("echo.yaml", &text).unwrap().remove(0);
    let json = task.to_json_pretty().unwrap();
    assert!(json.contains("\"apiVersion\": \"drover.dev/v1\""), "{json}");
    assert!(json.contains("\"memory\": \"32Mi\""), "{json}");
    let back = Task::from_json("/drover/tasks/default/echo", json.as_bytes()).unwrap();
    assert_eq!(back, task);
    let err = Task::from_json("/drover/tasks/default/echo", b"{\"apiVersion\": 1}").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("/drover/tasks/default/echo") && msg.contains("line 1"),
        "{msg}"
    );
    let mut changed = back.clone();
    changed.metadata.generation = 4;
    assert!(changed.spec_equal_ignoring_generation(&task));
    let yaml = task.to_yaml().unwrap();
    assert_eq!(parse_manifest("y", &yaml).unwrap(), vec![task]);
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/examples")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // Deliberately broken manifests (for CLI tests) live under an `invalid` folder.
            if path.file_name().is_some_and(|n| n != "invalid") {
                yaml_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_shipped_manifest_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    assert!(files.len() >= 2, "found {files:?}");
    let inputs: Vec<(String, String)> = files
        .iter()
        .map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap()))
        .collect();
    for (name, text) in &inputs {
        if let Err(e) = parse_manifest(name, text) {
            panic!("{e}");
        }
    }
    let echo = parse_manifest(
        "echo.yaml",
        &std::fs::read_to_string(examples_dir().join("echo.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(echo.len(), 1);
    let e = &echo[0].spec;
    assert_eq!(e.image.as_deref(), Some("drover/echo-server:latest"));
    assert_eq!(e.ports[0].container_port, 7777);
    assert_eq!(e.ports[0].protocol, Protocol::Tcp);
    assert_eq!(e.resources.memory, Memory(32 << 20));
    assert_eq!(
        e.health_check
            .as_ref()
            .and_then(|h| h.http.as_ref())
            .map(|h| h.port),
        Some(7777)
    );
    let three = parse_manifest(
        "three",
        &std::fs::read_to_string(examples_dir().join("three-tasks.yaml")).unwrap(),
    )
    .unwrap();
    let modes: Vec<Mode> = three.iter().map(|t| t.spec.mode()).collect();
    assert_eq!(modes, [Mode::Service, Mode::Job, Mode::Scheduled]);
}

#[test]
fn stored_tasks_are_validated_with_apply_rules_and_old_services_are_grandfathered() {
    let task = |name: &str, extra: &str| {
        parse_manifest(
            "t.yaml",
            &format!("{HEAD}metadata:\n  name: {name}\nspec:\n  image: x\n  restartPolicy: Never\n{extra}"),
        )
        .expect("valid")
        .remove(0)
    };
    let x = task("x", "  dependsOn: [y]\n");
    let y = task("y", "  dependsOn: [x]\n");
    let ok = task("ok", "");
    let mut cron = task("cron", "");
    cron.spec.schedule = Some("every tuesday".into());
    let mut old_service = task("svc", "");
    old_service.spec.restart_policy = drover_api::RestartPolicy::Always;
    old_service.spec.depends_on = vec!["ok".into()];
    let key = |t: &drover_api::Task| (t.metadata.namespace.clone(), t.metadata.name.clone());
    let stored: Vec<((String, String), &drover_api::Task)> = [&x, &y, &ok, &cron, &old_service]
        .into_iter()
        .map(|t| (key(t), t))
        .collect();
    let mut misnamed = stored.clone();
    misnamed.push((("default".into(), "elsewhere".into()), &ok));
    let invalid = drover_api::manifest::validate_stored(&misnamed);
    let reason = |name: &str| invalid.get(&("default".to_string(), name.to_string()));
    assert!(
        reason("x").is_some_and(|r| r.contains("dependency cycle")),
        "{invalid:?}"
    );
    assert!(
        reason("y").is_some_and(|r| r.contains("dependency cycle")),
        "{invalid:?}"
    );
    assert!(
        reason("cron").is_some_and(|r| r.contains("spec.schedule")),
        "{invalid:?}"
    );
    assert!(
        reason("elsewhere").is_some_and(|r| r.contains("key names")),
        "{invalid:?}"
    );
    assert!(reason("ok").is_none(), "{invalid:?}");
    assert!(
        reason("svc").is_none(),
        "a service stored before the rule is not held: {invalid:?}"
    );
}

#[test]
fn a_bad_user_or_group_or_a_relative_working_dir_is_refused_with_its_field() {
    let text = format!(
        "{FIRST}{HEAD}metadata:\n  name: job\nspec:\n  command: [/bin/true]\n  user: \"root:root\"\n"
    );
    one(
        "u.yaml",
        &text,
        2,
        DOC2 + 6,
        "spec.user",
        "invalid user \"root:root\"",
    );
    let text = format!(
        "{HEAD}metadata: {{name: job}}\nspec:\n  command: [/bin/true]\n  group: 99999999999\n"
    );
    one("g.yaml", &text, 1, 6, "spec.group", "out of range");
    let text = format!(
        "{HEAD}metadata: {{name: job}}\nspec:\n  command: [/bin/true]\n  workingDir: srv/data\n"
    );
    one(
        "w.yaml",
        &text,
        1,
        6,
        "spec.workingDir",
        "must be an absolute path",
    );
    // Names and numeric ids are both fine.
    let text = format!(
        "{HEAD}metadata: {{name: job}}\nspec:\n  command: [/bin/true]\n  user: nobody\n  group: \"65534\"\n"
    );
    let tasks = parse_manifest("ok.yaml", &text).unwrap();
    assert_eq!(tasks[0].spec.user.as_deref(), Some("nobody"));
    assert_eq!(tasks[0].spec.group.as_deref(), Some("65534"));
}
