//! `-o jsonpath=TEMPLATE`: kubectl's template layer — literal text, `{PATH}`, `{"text"}` and
//! `{range PATH}...{end}` — over the path subset in [`path`].
//!
//! Own code rather than a JSONPath crate: the crates on crates.io implement RFC 9535 (`$`-rooted
//! queries returning node lists), while what scripts written for kubectl use is the template
//! around the paths (`{}` blocks, `range`/`end`, how results are joined and printed) plus a
//! small path subset; the template layer would have been ours either way, and the subset is a
//! few hundred lines with no new dependency.

pub mod path;

use serde_json::Value;

use path::Path;

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonPathError {
    /// A path inside `{}` is malformed.
    #[error("jsonpath {path:?}, column {column}: {message}")]
    Path {
        /// The path as written.
        path: String,
        /// 1-based column in the path.
        column: usize,
        /// What was expected.
        message: String,
    },
    /// The template's `{}` structure is malformed.
    #[error("jsonpath template {template:?}: {message}")]
    Template {
        /// The template as written.
        template: String,
        /// What is wrong.
        message: String,
    },
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// Text printed as is.
    Text(String),
    /// `{PATH}`: the selected values, space-separated.
    Path(Path),
    /// `{range PATH}BODY{end}`: BODY once per selected value, with it as the current item.
    Range(Path, Vec<Node>),
}

/// A parsed `-o jsonpath` template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

impl Template {
    /// Parses a template. A template without any `{` is taken as one path (`kubectl` requires
    /// the braces; accepting `.items[0].metadata.name` bare costs nothing and helps).
    ///
    /// # Guarantees
    ///
    /// Never panics; a `{range}` without its `{end}` (or the reverse) is an error.
    pub fn parse(text: &str) -> Result<Template, JsonPathError> {
        let template_error = |message: &str| JsonPathError::Template {
            template: text.to_string(),
            message: message.to_string(),
        };
        if !text.contains('{') {
            return Ok(Template {
                nodes: vec![Node::Path(Path::parse(text.trim())?)],
            });
        }
        // A stack of open ranges: each frame is (its path, the nodes of its body so far).
        let mut stack: Vec<(Option<Path>, Vec<Node>)> = vec![(None, Vec::new())];
        let mut rest = text;
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                push(&mut stack, Node::Text(rest.to_string()));
                break;
            };
            if open > 0 {
                push(&mut stack, Node::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = closing_brace(after).ok_or_else(|| template_error("a { is not closed"))?;
            let inner = after[..close].trim();
            rest = &after[close + 1..];
            if inner == "end" {
                let (path, body) = stack
                    .pop()
                    .filter(|(path, _)| path.is_some())
                    .ok_or_else(|| template_error("{end} without a {range}"))?;
                if let Some(path) = path {
                    push(&mut stack, Node::Range(path, body));
                }
            } else if let Some(range) = inner.strip_prefix("range ") {
                stack.push((Some(Path::parse(range.trim())?), Vec::new()));
            } else if inner.starts_with('"') || inner.starts_with('\'') {
                push(
                    &mut stack,
                    Node::Text(
                        unquote(inner)
                            .ok_or_else(|| template_error("a quoted string in {} is not closed"))?,
                    ),
                );
            } else if inner.is_empty() {
                return Err(template_error("an empty {}"));
            } else {
                push(&mut stack, Node::Path(Path::parse(inner)?));
            }
        }
        match stack.pop() {
            Some((None, nodes)) if stack.is_empty() => Ok(Template { nodes }),
            _ => Err(template_error("a {range} is not closed by {end}")),
        }
    }

    /// The text the template makes of `document`.
    pub fn render(&self, document: &Value) -> String {
        let mut out = String::new();
        render_nodes(&self.nodes, document, document, &mut out);
        out
    }
}

fn push(stack: &mut [(Option<Path>, Vec<Node>)], node: Node) {
    if let Some((_, nodes)) = stack.last_mut() {
        nodes.push(node);
    }
}

/// The index of the `}` closing a block, skipping braces inside quoted strings.
fn closing_brace(text: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '}') => return Some(i),
            (None, _) => {}
        }
    }
    None
}

/// A `"..."` or `'...'` literal with `\n`, `\t`, `\r` and `\\`-escapes, as kubectl reads it.
fn unquote(text: &str) -> Option<String> {
    let quote = text.chars().next()?;
    let body = text.strip_prefix(quote)?.strip_suffix(quote)?;
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            other => out.push(other),
        }
    }
    Some(out)
}

fn render_nodes(nodes: &[Node], document: &Value, current: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Path(path) => {
                let values: Vec<String> = path
                    .select(document, current)
                    .into_iter()
                    .map(print_value)
                    .collect();
                out.push_str(&values.join(" "));
            }
            Node::Range(path, body) => {
                for item in path.select(document, current) {
                    render_nodes(body, document, item, out);
                }
            }
        }
    }
}

/// How kubectl prints one selected value: strings bare, everything else as JSON.
fn print_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({"kind": "List", "items": [
            {"metadata": {"name": "a"}, "status": {"phase": "Running", "ready": 2}},
            {"metadata": {"name": "b"}, "status": {"phase": "Suspended", "ready": 0}},
        ]})
    }

    fn render(template: &str) -> String {
        Template::parse(template)
            .unwrap_or_else(|e| panic!("{template}: {e}"))
            .render(&doc())
    }

    #[test]
    fn kubectl_templates_render_as_kubectl_does() {
        assert_eq!(render("{.items[*].metadata.name}"), "a b");
        assert_eq!(render("{.items[0].status.phase}"), "Running");
        assert_eq!(
            render(r#"{range .items[*]}{.metadata.name}{"\n"}{end}"#),
            "a\nb\n"
        );
        assert_eq!(
            render(r#"{range .items[*]}{.metadata.name}={.status.ready}{"\t"}{end}"#),
            "a=2\tb=0\t"
        );
        assert_eq!(
            render(r#"{.items[?(@.status.phase=="Suspended")].metadata.name}"#),
            "b"
        );
        assert_eq!(render("kind: {.kind}!"), "kind: List!");
        assert_eq!(
            render("{.items[0].status}"),
            r#"{"phase":"Running","ready":2}"#
        );
        assert_eq!(render(".items[1].metadata.name"), "b");
        assert_eq!(render("{.nothing}"), "");
        assert_eq!(
            render("{range .items[*]}[{range .metadata}{.}{end}]{end}"),
            r#"[{"name":"a"}][{"name":"b"}]"#
        );
        assert_eq!(render(r#"{range .items[*]}{$.kind} {end}"#), "List List ");
    }

    #[test]
    fn malformed_templates_are_errors() {
        for bad in [
            "{.items",
            "{range .items[*]}{.a}",
            "{end}",
            "{}",
            "{\"x}",
            "{.a[}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// Arbitrary templates never panic the parser or the renderer.
        #[test]
        fn arbitrary_templates_never_panic(text in "[{}.\\[\\]*@$\"'a-c0-9 :=?()\\\\]{0,30}|\\{range [.a-c\\[\\]*]{0,8}\\}.{0,8}\\{end\\}") {
            if let Ok(template) = Template::parse(&text) {
                let _ = template.render(&doc());
            }
        }

        /// A template of plain text (no braces inside the text) prints itself.
        #[test]
        fn text_outside_braces_is_printed_as_is(text in "[a-z ,:-]{0,20}") {
            let template = Template::parse(&format!("{text}{{.kind}}")).unwrap();
            proptest::prop_assert_eq!(template.render(&doc()), format!("{text}List"));
        }
    }
}
