//! The path layer of `-o jsonpath`: kubectl's JSONPath subset (`.a.b`, `['a']`, `[0]`, `[-1]`,
//! `[1:3]`, `[*]`, `.*`, `..a`, `[?(@.a.b=="x")]`), parsed into steps and evaluated over a
//! `serde_json::Value`.

use std::cmp::Ordering;

use serde_json::Value;

use super::JsonPathError;

/// Where a path starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// `$`: the whole document.
    Document,
    /// `@` or a leading `.`: the current item (the document, or the `range` item).
    Current,
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `.name` or `['name']`.
    Field(String),
    /// `[n]`; negative counts from the end.
    Index(i64),
    /// `[start:end]`, either bound optional, negative from the end.
    Slice(Option<i64>, Option<i64>),
    /// `[*]` or `.*`: every element or member value.
    Wildcard,
    /// `..name`: `name` at any depth.
    Descend(String),
    /// `[?(...)]`: the elements for which the filter holds.
    Filter(Filter),
}

/// A filter's test, kubectl's forms: a comparison with a literal, or the existence of a path.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `@.path OP literal`.
    Compare(Path, Op, Value),
    /// `@.path`: the path exists (and is not `false` or null).
    Exists(Path),
}

/// Comparison operators in filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// Where it starts.
    pub root: Root,
    /// The steps from there.
    pub steps: Vec<Step>,
}

impl Path {
    /// Parses a path such as `.items[*].metadata.name` or `$.items[0]`.
    pub fn parse(text: &str) -> Result<Path, JsonPathError> {
        let mut parser = Parser {
            text,
            pos: 0,
            chars: text.char_indices().collect(),
        };
        let path = parser.path()?;
        if parser.pos < parser.chars.len() {
            return Err(parser.error("unexpected text after the path"));
        }
        Ok(path)
    }

    /// Every value the path selects, in document order. A missing field selects nothing
    /// (kubectl's default, `--allow-missing-template-keys`).
    pub fn select<'a>(&self, document: &'a Value, current: &'a Value) -> Vec<&'a Value> {
        let start = match self.root {
            Root::Document => document,
            Root::Current => current,
        };
        let mut values = vec![start];
        for step in &self.steps {
            let mut next = Vec::new();
            for value in values {
                apply(step, document, value, &mut next);
            }
            values = next;
        }
        values
    }
}

fn apply<'a>(step: &Step, document: &'a Value, value: &'a Value, out: &mut Vec<&'a Value>) {
    match step {
        Step::Field(name) => out.extend(value.get(name.as_str())),
        Step::Index(i) => {
            if let Value::Array(items) = value {
                if let Some(at) = resolve(*i, items.len()) {
                    out.extend(items.get(at));
                }
            }
        }
        Step::Slice(start, end) => {
            if let Value::Array(items) = value {
                let len = items.len();
                let from = start.map_or(0, |s| clamp(s, len));
                let to = end.map_or(len, |e| clamp(e, len));
                if from < to {
                    out.extend(&items[from..to]);
                }
            }
        }
        Step::Wildcard => match value {
            Value::Array(items) => out.extend(items.iter()),
            Value::Object(map) => out.extend(map.values()),
            _ => {}
        },
        Step::Descend(name) => descend(name, value, out),
        Step::Filter(filter) => {
            let items: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                Value::Object(map) => map.values().collect(),
                _ => Vec::new(),
            };
            out.extend(
                items
                    .into_iter()
                    .filter(|item| holds(filter, document, item)),
            );
        }
    }
}

/// Index `i` of a list of `len` (negative from the end), if inside it.
fn resolve(i: i64, len: usize) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let at = if i < 0 { len + i } else { i };
    usize::try_from(at).ok().filter(|&a| (a as i64) < len)
}

/// A slice bound, negative from the end, clamped into `0..=len`.
fn clamp(i: i64, len: usize) -> usize {
    let signed = i64::try_from(len).unwrap_or(i64::MAX);
    let at = if i < 0 { signed + i } else { i };
    usize::try_from(at.clamp(0, signed)).unwrap_or(len)
}

fn descend<'a>(name: &str, value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            if let Some(found) = map.get(name) {
                out.push(found);
            }
            for child in map.values() {
                descend(name, child, out);
            }
        }
        Value::Array(items) => {
            for child in items {
                descend(name, child, out);
            }
        }
        _ => {}
    }
}

fn holds(filter: &Filter, document: &Value, item: &Value) -> bool {
    match filter {
        Filter::Exists(path) => path
            .select(document, item)
            .iter()
            .any(|v| !matches!(v, Value::Null | Value::Bool(false))),
        Filter::Compare(path, op, literal) => path
            .select(document, item)
            .iter()
            .any(|v| compare(v, *op, literal)),
    }
}

fn compare(value: &Value, op: Op, literal: &Value) -> bool {
    let ordering = match (value, literal) {
        (Value::Number(a), Value::Number(b)) => a
            .as_f64()
            .zip(b.as_f64())
            .and_then(|(a, b)| a.partial_cmp(&b)),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (a, b) if a == b => Some(Ordering::Equal),
        _ => None,
    };
    match op {
        Op::Eq => ordering == Some(Ordering::Equal),
        Op::Ne => ordering != Some(Ordering::Equal),
        Op::Lt => ordering == Some(Ordering::Less),
        Op::Le => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
        Op::Gt => ordering == Some(Ordering::Greater),
        Op::Ge => matches!(ordering, Some(Ordering::Greater | Ordering::Equal)),
    }
}

/// A recursive-descent parser over the path's characters.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
    chars: Vec<(usize, char)>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).map(|(_, c)| *c)
    }

    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).map(|(_, c)| *c)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), JsonPathError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("expected {c:?}")))
        }
    }

    fn error(&self, message: &str) -> JsonPathError {
        JsonPathError::Path {
            path: self.text.to_string(),
            column: self.pos + 1,
            message: message.to_string(),
        }
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn path(&mut self) -> Result<Path, JsonPathError> {
        let root = if self.eat('$') {
            Root::Document
        } else {
            self.eat('@');
            Root::Current
        };
        let mut steps = Vec::new();
        loop {
            match self.peek() {
                Some('.') if self.peek_at(1) == Some('.') => {
                    self.pos += 2;
                    steps.push(Step::Descend(self.name()?));
                }
                Some('.') => {
                    self.pos += 1;
                    if self.eat('*') {
                        steps.push(Step::Wildcard);
                    } else if self.peek().is_none() && steps.is_empty() {
                        // `{.}` is the current item itself.
                        break;
                    } else {
                        steps.push(Step::Field(self.name()?));
                    }
                }
                Some('[') => {
                    self.pos += 1;
                    steps.push(self.bracket()?);
                }
                _ => break,
            }
        }
        Ok(Path { root, steps })
    }

    /// A field name after `.`: letters, digits, `_`, `-` and `/` (label keys).
    fn name(&mut self) -> Result<String, JsonPathError> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '/'))
        {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error("expected a field name"));
        }
        Ok(self.chars[start..self.pos].iter().map(|(_, c)| c).collect())
    }

    fn bracket(&mut self) -> Result<Step, JsonPathError> {
        self.skip_spaces();
        let step = match self.peek() {
            Some('*') => {
                self.pos += 1;
                Step::Wildcard
            }
            Some('\'' | '"') => Step::Field(self.quoted()?),
            Some('?') => {
                self.pos += 1;
                self.expect('(')?;
                let filter = self.filter()?;
                self.skip_spaces();
                self.expect(')')?;
                Step::Filter(filter)
            }
            _ => {
                let start = self.integer()?;
                self.skip_spaces();
                if self.eat(':') {
                    self.skip_spaces();
                    let end = self.integer()?;
                    Step::Slice(start, end)
                } else {
                    Step::Index(start.ok_or_else(|| self.error("expected an index"))?)
                }
            }
        };
        self.skip_spaces();
        self.expect(']')?;
        Ok(step)
    }

    fn integer(&mut self) -> Result<Option<i64>, JsonPathError> {
        let start = self.pos;
        self.eat('-');
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits: String = self.chars[start..self.pos].iter().map(|(_, c)| c).collect();
        if digits.is_empty() {
            return Ok(None);
        }
        digits
            .parse()
            .map(Some)
            .map_err(|_| self.error("expected an integer"))
    }

    /// A quoted string, `'...'` or `"..."`, with `\` escaping the next character.
    fn quoted(&mut self) -> Result<String, JsonPathError> {
        let quote = self.peek().ok_or_else(|| self.error("expected a string"))?;
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    self.pos += 1;
                    let c = self
                        .peek()
                        .ok_or_else(|| self.error("unterminated string"))?;
                    out.push(c);
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn filter(&mut self) -> Result<Filter, JsonPathError> {
        self.skip_spaces();
        if self.peek() != Some('@') && self.peek() != Some('$') {
            return Err(self.error("a filter starts with @ (the element), as in ?(@.a==\"x\")"));
        }
        let path = self.path()?;
        self.skip_spaces();
        let op = match (self.peek(), self.peek_at(1)) {
            (Some('='), Some('=')) => Op::Eq,
            (Some('!'), Some('=')) => Op::Ne,
            (Some('<'), Some('=')) => Op::Le,
            (Some('>'), Some('=')) => Op::Ge,
            (Some('<'), _) => Op::Lt,
            (Some('>'), _) => Op::Gt,
            _ => return Ok(Filter::Exists(path)),
        };
        self.pos += if matches!(op, Op::Lt | Op::Gt) { 1 } else { 2 };
        self.skip_spaces();
        let literal = self.literal()?;
        Ok(Filter::Compare(path, op, literal))
    }

    fn literal(&mut self) -> Result<Value, JsonPathError> {
        match self.peek() {
            Some('\'' | '"') => Ok(Value::String(self.quoted()?)),
            _ => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|c| c.is_alphanumeric() || matches!(c, '-' | '+' | '.'))
                {
                    self.pos += 1;
                }
                let word: String = self.chars[start..self.pos].iter().map(|(_, c)| c).collect();
                match word.as_str() {
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    "null" => Ok(Value::Null),
                    _ => serde_json::from_str::<serde_json::Number>(&word)
                        .map(Value::Number)
                        .map_err(|_| {
                            self.error("expected a literal: a quoted string, a number, true, false or null")
                        }),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn select(path: &str, doc: &Value) -> Vec<Value> {
        Path::parse(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .select(doc, doc)
            .into_iter()
            .cloned()
            .collect()
    }

    fn doc() -> Value {
        json!({"items": [
            {"metadata": {"name": "a", "labels": {"app": "web"}}, "status": {"phase": "Running", "ready": 2}},
            {"metadata": {"name": "b"}, "status": {"phase": "Pending", "ready": 0}},
            {"metadata": {"name": "c"}, "status": {"phase": "Running", "ready": 1}},
        ]})
    }

    #[test]
    fn steps_select_as_kubectl() {
        let d = doc();
        assert_eq!(
            select(".items[*].metadata.name", &d),
            [json!("a"), json!("b"), json!("c")]
        );
        assert_eq!(select(".items[0].status.phase", &d), [json!("Running")]);
        assert_eq!(select(".items[-1].metadata.name", &d), [json!("c")]);
        assert_eq!(select(".items[5].metadata.name", &d), Vec::<Value>::new());
        assert_eq!(
            select(".items[1:].metadata.name", &d),
            [json!("b"), json!("c")]
        );
        assert_eq!(select(".items[:1].metadata.name", &d), [json!("a")]);
        assert_eq!(select("$.items[0]['metadata'].name", &d), [json!("a")]);
        assert_eq!(select("..name", &d), [json!("a"), json!("b"), json!("c")]);
        assert_eq!(select(".items[0].metadata.labels.*", &d), [json!("web")]);
        assert_eq!(select(".missing.field", &d), Vec::<Value>::new());
        assert_eq!(select(".", &d), std::slice::from_ref(&d));
    }

    #[test]
    fn filters_compare_and_test_existence() {
        let d = doc();
        let names = |p: &str| select(&format!(".items[?({p})].metadata.name"), &d);
        assert_eq!(
            names("@.status.phase==\"Running\""),
            [json!("a"), json!("c")]
        );
        assert_eq!(names("@.status.phase != 'Running'"), [json!("b")]);
        assert_eq!(names("@.status.ready>=1"), [json!("a"), json!("c")]);
        assert_eq!(names("@.status.ready<1"), [json!("b")]);
        assert_eq!(names("@.metadata.labels"), [json!("a")]);
    }

    #[test]
    fn bad_paths_say_where() {
        for bad in [
            ".items[",
            ".items[x]",
            ".items[?(x)]",
            ".a[?(@.b==)]",
            ".a.",
            ".items['x",
        ] {
            let error = Path::parse(bad).expect_err(bad).to_string();
            assert!(error.contains("column"), "{bad}: {error}");
        }
    }

    proptest::proptest! {
        /// Arbitrary text never panics the parser, and a parsed path never panics on any doc.
        #[test]
        fn arbitrary_paths_never_panic(text in "[.\\[\\]*?@$()'\"a-c0-9:=!<>-]{0,24}") {
            if let Ok(path) = Path::parse(&text) {
                let d = doc();
                let _ = path.select(&d, &d);
            }
        }

        /// `[i]` is the i-th element of `[*]`, for every index inside the list.
        #[test]
        fn index_agrees_with_wildcard(len in 0usize..6, i in -7i64..7) {
            let d = json!({"a": (0..len).collect::<Vec<_>>()});
            let all = select(".a[*]", &d);
            let one = select(&format!(".a[{i}]"), &d);
            let expected: Vec<Value> = resolve(i, len).map(|at| all[at].clone()).into_iter().collect();
            proptest::prop_assert_eq!(one, expected);
        }
    }
}
