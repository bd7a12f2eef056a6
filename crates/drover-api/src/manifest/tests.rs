//! Unit tests for manifest parsing: document splitting, suggestions, locations and Lists.
use super::*;

#[test]
fn splits_documents() {
    let text = "# c\n---\na: 1\n---\n---\n# only a comment\n...\n%YAML 1.2\n---\nb: 2\n...\nc: 3\n";
    let chunks = split_documents(text);
    let with_content: Vec<_> = chunks.iter().filter_map(|c| c.content).collect();
    assert_eq!(with_content, [(3, 1), (10, 1), (12, 1)]);
    let b = chunks.iter().find(|c| c.content == Some((10, 1))).unwrap();
    assert!(b.text.starts_with("%YAML 1.2\n---\nb: 2"), "{:?}", b.text);
    assert_eq!(b.first_line, 8);
}

#[test]
fn suggestions() {
    let known = [
        "replicas",
        "resources",
        "restartPolicy",
        "nodeSelector",
        "image",
    ];
    assert_eq!(suggest("replica", &known), Some("replicas"));
    assert_eq!(suggest("node_selector", &known), Some("nodeSelector"));
    assert_eq!(suggest("Image", &known), Some("image"));
    assert_eq!(suggest("restartpolicy", &known), Some("restartPolicy"));
    assert_eq!(suggest("zzzzzz", &known), None);
    assert_eq!(distance("kitten", "sitting"), 3);
}

#[test]
fn a_list_document_applies_each_item_and_locates_their_problems() {
    let task = |name: &str| {
        Task::new(
            "default",
            name,
            crate::task::TaskSpec {
                command: vec!["true".into()],
                ..Default::default()
            },
        )
    };
    let list = List::new(vec![task("one"), task("two")]);
    let json = serde_json::to_string_pretty(&list).expect("encodes");
    let parsed = parse_manifest("list.json", &json).expect("a List parses");
    assert_eq!(parsed, vec![task("one"), task("two")]);

    let mut bad = list.clone();
    bad.items[1].spec.priority = 101;
    let json = serde_json::to_string_pretty(&bad).expect("encodes");
    let err = parse_manifest("list.json", &json).expect_err("priority 101 is invalid");
    let text = err.to_string();
    assert!(text.contains("list.json: document 1, line"), "{text}");
    assert!(text.contains("items[1].spec.priority"), "{text}");
}

#[test]
fn problem_display() {
    let p = Problem {
        source: "echo.yaml".into(),
        document: 2,
        line: Some(7),
        column: Some(5),
        field: "spec.resources.cpu".into(),
        message: "invalid CPU quantity \"abc\" (expected e.g. 250m or 1.5)".into(),
    };
    assert_eq!(
        p.to_string(),
        "echo.yaml: document 2, line 7, column 5: spec.resources.cpu: invalid CPU quantity \"abc\" (expected e.g. 250m or 1.5)"
    );
    let p = Problem {
        document: 0,
        line: None,
        column: None,
        field: String::new(),
        ..p
    };
    assert_eq!(
        p.to_string(),
        "echo.yaml: invalid CPU quantity \"abc\" (expected e.g. 250m or 1.5)"
    );
}

#[test]
fn a_cycle_through_stored_tasks_is_refused_at_the_new_task() {
    let doc = |name: &str, dep: &str| {
        format!(
            "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n  command: [\"true\"]\n  restartPolicy: Never\n  dependsOn: [{dep}]\n"
        )
    };
    let stored = parse_manifest("old.yaml", &doc("fetch", "process")).expect("valid alone");
    let inputs = vec![("new.yaml".to_string(), doc("process", "fetch"))];
    assert!(
        parse_many(&inputs).is_ok(),
        "no cycle within the apply itself"
    );
    let err = parse_many_against(&inputs, &stored).expect_err("cycle across applies");
    let text = err.to_string();
    assert!(text.contains("new.yaml: document 1, line"), "{text}");
    assert!(text.contains("spec.dependsOn[0]"), "{text}");
    assert!(text.contains("process -> fetch -> process"), "{text}");
    // Redefining the stored task without the back edge is fine.
    let fixed = vec![
        ("new.yaml".to_string(), doc("process", "fetch")),
        ("fetch.yaml".to_string(), doc("fetch", "other")),
    ];
    assert!(parse_many_against(&fixed, &stored).is_ok());
}

#[test]
fn a_top_level_status_is_ignored_on_apply_and_anything_else_still_refused() {
    let with_status = "apiVersion: drover.dev/v1\nkind: Task\nmetadata:\n  name: web\nspec:\n  command: [\"true\"]\nstatus:\n  phase: Running\n  conditions: [{type: Available, status: \"True\"}]\n";
    let tasks = parse_manifest("t.yaml", with_status).unwrap();
    let plain = parse_manifest(
        "t.yaml",
        &with_status[..with_status.find("status:").unwrap()],
    )
    .unwrap();
    assert_eq!(tasks, plain);
    let list = r#"{"apiVersion":"drover.dev/v1","kind":"List","items":[{"apiVersion":"drover.dev/v1","kind":"Task","metadata":{"name":"web"},"spec":{"command":["true"]},"status":{"phase":"Suspended","state":{"suspended":true}}}]}"#;
    assert_eq!(parse_manifest("l.json", list).unwrap(), plain);
    let unknown = with_status.replace("status:", "statuz:");
    let error = parse_manifest("t.yaml", &unknown).unwrap_err().to_string();
    assert!(error.contains("statuz"), "{error}");
}
