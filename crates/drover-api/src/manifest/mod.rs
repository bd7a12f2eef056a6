//! Manifest parsing: multi-document YAML in, validated [`Task`]s or every problem found out.
//!
//! A bad manifest never writes anything, so the user gets the whole list of problems at once,
//! each as `file: document N, line L, column C: field.path: message`.
//!
//! # How locations are found
//!
//! The text is split into documents at `---` / `...` marker lines (a marker at column 0
//! always ends a document in YAML, even inside a block scalar, so the split is exact). Each
//! document is parsed twice with serde-saphyr: into [`Task`], and into a generic tree that
//! remembers the position of every key (see `field_index`). serde errors carry a position but
//! no field path, semantic errors carry a field path but no position; the tree translates
//! between the two. A field that is absent (defaulted) is reported at its nearest present
//! parent, and when nothing matches, at the document's first line.
//!
//! # Caveats
//!
//! serde stops at the first error inside one document, so a document reports one
//! deserialization problem (an unknown field, a bad quantity) or all its semantic problems,
//! never both; other documents are still checked.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_saphyr::{Error as YamlError, MessageFormatter, UserMessageFormatter};

use crate::field_index::{parent, FieldIndex, Pos};
use crate::task::{Task, API_VERSION, KIND};

use set::cross_apply_cycles;
pub use set::{validate_set, validate_stored};

/// Largest manifest file accepted: 1 MiB. Each task is stored as its own etcd value, far below
/// etcd's default 1.5 MiB request limit; a manifest larger than this is almost certainly a
/// mistake (a generated file, a binary), and rejecting it bounds the parser's work.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// Most documents accepted in one manifest file.
pub const MAX_DOCUMENTS: usize = 500;

/// One problem in a manifest, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    /// File name, or `<stdin>`.
    pub source: String,
    /// 1-based index of the document in the file (0 when the problem is about the whole file).
    pub document: usize,
    /// 1-based line in the file.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// Path of the field, e.g. `spec.resources.cpu`; empty when not about one field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    /// `echo.yaml: document 2, line 7, column 5: spec.resources.cpu: invalid CPU quantity ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)?;
        let mut parts = Vec::new();
        if self.document > 0 {
            parts.push(format!("document {}", self.document));
        }
        if let Some(line) = self.line {
            parts.push(format!("line {line}"));
        }
        if let Some(column) = self.column {
            parts.push(format!("column {column}"));
        }
        if !parts.is_empty() {
            write!(f, ": {}", parts.join(", "))?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

fn list_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Errors of manifest parsing and of Task encoding/decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The manifests have problems; all of them are listed, one per line.
    #[error("{}", list_problems(.0))]
    Invalid(Vec<Problem>),
    /// A stored value is not a valid Task JSON document.
    #[error("cannot decode task stored at {key}: {message}")]
    Decode {
        /// The etcd key the value came from.
        key: String,
        /// What serde_json said, with line and column.
        message: String,
    },
    /// A Task could not be encoded (not expected for valid tasks).
    #[error("cannot encode task {name}: {message}")]
    Encode {
        /// `namespace/name` of the task.
        name: String,
        /// What the encoder said.
        message: String,
    },
}

impl ManifestError {
    /// The problems, for [`ManifestError::Invalid`]; empty otherwise.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ManifestError::Invalid(p) => p,
            _ => &[],
        }
    }
}

/// Where a parsed task came from, for reporting problems about it later (see
/// [`validate_set`]).
#[derive(Debug, Clone, Default)]
pub struct Location {
    /// File name, or `<stdin>`.
    pub source: String,
    /// 1-based document index.
    pub document: usize,
    /// First line of the document.
    pub line: Option<usize>,
    /// Column of the document's first line.
    pub column: Option<usize>,
    fields: Option<Arc<FieldIndex>>,
}

impl Location {
    /// A location without field positions (e.g. for a task read back from etcd).
    pub fn new(source: &str, document: usize, line: Option<usize>) -> Self {
        Self {
            source: source.to_string(),
            document,
            line,
            column: None,
            fields: None,
        }
    }

    /// Line and column of `field`, best effort: its key, its nearest present parent, or the
    /// document's first line.
    pub fn position_of(&self, field: &str) -> (Option<usize>, Option<usize>) {
        match self.fields.as_ref().and_then(|f| f.locate(field)) {
            Some((line, column)) => (Some(line), Some(column)),
            None => (self.line, self.column),
        }
    }

    /// A problem about `field` of this document.
    pub fn problem(&self, field: &str, message: impl Into<String>) -> Problem {
        let (line, column) = self.position_of(field);
        Problem {
            source: self.source.clone(),
            document: self.document,
            line,
            column,
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// One document of a multi-document text.
struct Chunk<'a> {
    text: &'a str,
    /// Line number of the chunk's first line.
    first_line: usize,
    /// First line with content (not blank, comment, marker or directive), if any.
    content: Option<Pos>,
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// Splits `text` into documents at `---` and `...` lines. Directive lines (`%YAML`) go with
/// the document that follows them.
fn split_documents<'a>(text: &'a str) -> Vec<Chunk<'a>> {
    let mut chunks = Vec::new();
    let mut start = (0usize, 1usize); // (byte, line) of the current chunk
    let mut directives: Option<(usize, usize)> = None;
    let mut content: Option<Pos> = None;
    let mut byte = 0usize;
    let push =
        |chunks: &mut Vec<Chunk<'a>>, from: (usize, usize), to: usize, content: Option<Pos>| {
            if to > from.0 || content.is_some() {
                chunks.push(Chunk {
                    text: text.get(from.0..to).unwrap_or(""),
                    first_line: from.1,
                    content,
                });
            }
        };
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line_no = i + 1;
        let line = raw.trim_end_matches(['\n', '\r']);
        if is_marker(line, "---") {
            let cut = directives.take().unwrap_or((byte, line_no));
            push(&mut chunks, start, cut.0, content.take());
            start = cut;
            let rest = line[3..].trim_start();
            if !rest.is_empty() && !rest.starts_with('#') {
                content = Some((line_no, 1));
            }
        } else if is_marker(line, "...") {
            directives = None;
            push(&mut chunks, start, byte + raw.len(), content.take());
            start = (byte + raw.len(), line_no + 1);
        } else if line.starts_with('%') {
            directives.get_or_insert((byte, line_no));
        } else if !is_blank_or_comment(line) {
            directives = None;
            if content.is_none() {
                let column = line.chars().take_while(|c| *c == ' ').count() + 1;
                content = Some((line_no, column));
            }
        }
        byte += raw.len();
    }
    push(&mut chunks, start, text.len(), content);
    chunks
}

/// Levenshtein distance over chars.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known name closest to `given`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(given: &str, known: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_lowercase().replace(['_', '-'], "");
    let g = norm(given);
    if let Some(exact) = known.iter().find(|k| norm(k) == g) {
        return Some(exact);
    }
    let limit = (given.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (distance(&g, &k.to_lowercase()), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn join_path(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

fn describe_type(ty: &str) -> String {
    match ty {
        "u8" => "an integer from 0 to 255".into(),
        "u16" => "an integer from 0 to 65535".into(),
        "u32" => "an integer from 0 to 4294967295".into(),
        "u64" => "a non-negative integer".into(),
        "i32" | "i64" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "bool" => "true or false".into(),
        other => other.to_string(),
    }
}

/// Turns a serde-saphyr error into a problem with a field path.
fn yaml_problem(err: &YamlError, loc: &Location, offset: usize) -> Problem {
    let err = err.without_snippet();
    let pos: Option<Pos> = err.location().and_then(|l| {
        let line = usize::try_from(l.line()).ok().filter(|n| *n > 0)?;
        Some((line + offset, usize::try_from(l.column()).unwrap_or(1)))
    });
    let idx = loc.fields.as_deref();
    let at = |f: fn(&FieldIndex, Pos) -> Option<&str>| -> Option<String> {
        Some(f(idx?, pos?)?.to_string())
    };
    let (field, message) = match err {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => {
            let path = at(FieldIndex::path_of_key).unwrap_or_else(|| field.clone());
            let message = match suggest(field, expected) {
                Some(s) => format!("unknown field {field:?}, did you mean {s:?}?"),
                None => format!(
                    "unknown field {field:?} (known fields: {})",
                    expected.join(", ")
                ),
            };
            (path, message)
        }
        YamlError::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            let path = at(FieldIndex::path_of_value).unwrap_or_default();
            let mut message = format!(
                "unknown value {variant:?} (expected one of {})",
                expected.join(", ")
            );
            if let Some(s) = suggest(variant, expected) {
                message.push_str(&format!("; did you mean {s:?}?"));
            }
            (path, message)
        }
        YamlError::SerdeMissingField { field, .. } => {
            // serde-saphyr reports a missing field at the last key of the mapping.
            let parent = at(FieldIndex::path_of_key)
                .map(|p| parent(&p).unwrap_or_default().to_string())
                .or_else(|| at(FieldIndex::path_of_map))
                .unwrap_or_default();
            let message = format!("missing required field {field:?}");
            if parent.is_empty() {
                return loc.problem(field, message);
            }
            (join_path(&parent, field), message)
        }
        YamlError::InvalidScalar { ty, .. } => {
            let path = at(FieldIndex::path_of_value).unwrap_or_default();
            let message = match idx.and_then(|i| i.scalar(&path)) {
                Some(text) => format!("invalid value {text:?} (expected {})", describe_type(ty)),
                None => format!("invalid value (expected {})", describe_type(ty)),
            };
            (path, message)
        }
        other => {
            let path = at(FieldIndex::path_of_value)
                .or_else(|| at(FieldIndex::path_of_key))
                .unwrap_or_default();
            (
                path,
                UserMessageFormatter.format_message(other).into_owned(),
            )
        }
    };
    // Point at the field's key when we know the field (as semantic errors do); otherwise at
    // what the parser pointed at.
    let (line, column) = match (idx.and_then(|i| i.locate(&field)), pos) {
        (Some(p), _) if !field.is_empty() => (Some(p.0), Some(p.1)),
        (_, Some(p)) => (Some(p.0), Some(p.1)),
        _ => (loc.line, loc.column),
    };
    Problem {
        source: loc.source.clone(),
        document: loc.document,
        line,
        column,
        field,
        message: sanitize(&message),
    }
}

/// Checks `apiVersion` and `kind` before the full parse, so that another kind of resource gets
/// one clear message instead of a cascade of unknown fields.
fn header_problems(loc: &Location) -> Vec<Problem> {
    let Some(idx) = loc.fields.as_deref() else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    if let Some(v) = idx.scalar("apiVersion").filter(|v| *v != API_VERSION) {
        problems.push(loc.problem(
            "apiVersion",
            format!("unsupported apiVersion {v:?} (supported: {API_VERSION})"),
        ));
    }
    if let Some(k) = idx.scalar("kind").filter(|k| *k != KIND && *k != LIST_KIND) {
        problems.push(loc.problem(
            "kind",
            format!("unsupported kind {k:?} (supported: {KIND}, {LIST_KIND})"),
        ));
    }
    problems
}

/// The `kind` of a [`List`] document.
pub const LIST_KIND: &str = "List";

/// A list of objects in one document, as `drover get -o json` prints it (kubectl's `List`);
/// `apply` accepts it, so what `get` prints can be applied back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct List<T> {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always [`LIST_KIND`].
    pub kind: String,
    /// The objects.
    pub items: Vec<T>,
}

impl<T> List<T> {
    /// A list of `items`.
    pub fn new(items: Vec<T>) -> Self {
        List {
            api_version: API_VERSION.to_string(),
            kind: LIST_KIND.to_string(),
            items,
        }
    }
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { with_snippet: false }
}

/// Parses and validates each document of one file, without the cross-document checks of
/// [`validate_set`]. Returns the tasks with their locations, and the problems found.
fn parse_file(source_name: &str, text: &str) -> (Vec<(Location, Task)>, Vec<Problem>) {
    let mut tasks = Vec::new();
    let mut problems = Vec::new();
    let file_problem = |document: usize, line: Option<usize>, message: String| Problem {
        source: source_name.to_string(),
        document,
        line,
        column: None,
        field: String::new(),
        message,
    };
    let chunks: Vec<Chunk<'_>> = split_documents(text)
        .into_iter()
        .filter(|c| c.content.is_some())
        .collect();
    if text.len() > MAX_MANIFEST_BYTES {
        let line = text.as_bytes()[..MAX_MANIFEST_BYTES]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        let document = chunks
            .iter()
            .filter(|c| c.first_line <= line)
            .count()
            .max(1);
        problems.push(file_problem(
            document,
            Some(line),
            format!(
                "manifest is {} bytes, over the limit of {MAX_MANIFEST_BYTES} bytes (1 MiB); split it into several files",
                text.len()
            ),
        ));
        return (tasks, problems);
    }
    if chunks.len() > MAX_DOCUMENTS {
        let line = chunks[MAX_DOCUMENTS].content.map(|p| p.0);
        problems.push(file_problem(
            MAX_DOCUMENTS + 1,
            line,
            format!(
                "too many documents ({}): at most {MAX_DOCUMENTS} per file; split it into several files",
                chunks.len()
            ),
        ));
        return (tasks, problems);
    }
    for (i, chunk) in chunks.iter().enumerate() {
        let offset = chunk.first_line - 1;
        let loc = Location {
            source: source_name.to_string(),
            document: i + 1,
            line: chunk.content.map(|p| p.0),
            column: chunk.content.map(|p| p.1),
            fields: FieldIndex::build(chunk.text, chunk.first_line).map(Arc::new),
        };
        let header = header_problems(&loc);
        if !header.is_empty() {
            problems.extend(header);
            continue;
        }
        let is_list = loc
            .fields
            .as_deref()
            .and_then(|idx| idx.scalar("kind"))
            .is_some_and(|k| k == LIST_KIND);
        if is_list {
            match serde_saphyr::from_str_with_options::<List<document::Document>>(
                chunk.text,
                yaml_options(),
            ) {
                Ok(list) => {
                    for (j, task) in list.items.into_iter().map(Task::from).enumerate() {
                        problems.extend(task.validate().iter().map(|e| {
                            loc.problem(&format!("items[{j}].{}", e.field()), e.message())
                        }));
                        tasks.push((loc.clone(), task));
                    }
                }
                Err(e) => problems.push(yaml_problem(&e, &loc, offset)),
            }
            continue;
        }
        match serde_saphyr::from_str_with_options::<Option<document::Document>>(
            chunk.text,
            yaml_options(),
        ) {
            Ok(None) => {}
            Ok(Some(task)) => {
                let task = Task::from(task);
                problems.extend(
                    task.validate()
                        .iter()
                        .map(|e| loc.problem(e.field(), e.message())),
                );
                tasks.push((loc, task));
            }
            Err(e) => problems.push(yaml_problem(&e, &loc, offset)),
        }
    }
    (tasks, problems)
}

fn finish<T>(value: T, problems: Vec<Problem>) -> Result<T, ManifestError> {
    if problems.is_empty() {
        return Ok(value);
    }
    // Self-dependencies are found both per task and per set: report each problem once.
    let mut seen = BTreeSet::new();
    let mut unique: Vec<Problem> = problems
        .into_iter()
        .filter(|p| {
            seen.insert((
                p.source.clone(),
                p.document,
                p.field.clone(),
                p.message.clone(),
            ))
        })
        .collect();
    // Files in input order, then documents and lines in reading order.
    let mut rank: HashMap<String, usize> = HashMap::new();
    for p in &unique {
        let next = rank.len();
        rank.entry(p.source.clone()).or_insert(next);
    }
    unique.sort_by_key(|p| (rank.get(&p.source).copied(), p.document, p.line, p.column));
    Err(ManifestError::Invalid(unique))
}

/// Parses one manifest file: multi-document YAML, empty documents skipped, defaults applied,
/// every task validated, then [`validate_set`] over the file's tasks.
///
/// # Guarantees
///
/// Returns every problem found, not only the first, each naming the file, the document, the
/// line and the field. Never panics, whatever the input. Inputs over [`MAX_MANIFEST_BYTES`] or
/// [`MAX_DOCUMENTS`] are rejected before parsing.
pub fn parse_manifest(source_name: &str, text: &str) -> Result<Vec<Task>, ManifestError> {
    let (tasks, mut problems) = parse_file(source_name, text);
    if let Err(e) = validate_set(&tasks) {
        problems.extend(e.problems().iter().cloned());
    }
    finish(tasks.into_iter().map(|(_, t)| t).collect(), problems)
}

/// Like [`parse_manifest`], keeping each task's [`Location`] (for reporting or for a later
/// [`validate_set`] together with other files).
pub fn parse_documents(
    source_name: &str,
    text: &str,
) -> Result<Vec<(Location, Task)>, ManifestError> {
    let (tasks, mut problems) = parse_file(source_name, text);
    if let Err(e) = validate_set(&tasks) {
        problems.extend(e.problems().iter().cloned());
    }
    finish(tasks, problems)
}

/// Parses several files `(source_name, text)` as one apply (`drover apply -f DIR`): each file
/// is checked, then [`validate_set`] runs over all their tasks together, so a duplicate or a
/// dependency cycle across files is found too.
pub fn parse_many(inputs: &[(String, String)]) -> Result<Vec<Task>, ManifestError> {
    parse_many_against(inputs, &[])
}

/// [`parse_many`], and also refuses `dependsOn` cycles that close through tasks already
/// `stored` (applied earlier): a cycle across applies is reported at the new task that closes
/// it, like a cycle within one apply. Stored tasks the inputs redefine are replaced by them.
pub fn parse_many_against(
    inputs: &[(String, String)],
    stored: &[Task],
) -> Result<Vec<Task>, ManifestError> {
    let mut all = Vec::new();
    let mut problems = Vec::new();
    for (source, text) in inputs {
        let (tasks, p) = parse_file(source, text);
        all.extend(tasks);
        problems.extend(p);
    }
    if let Err(e) = validate_set(&all) {
        problems.extend(e.problems().iter().cloned());
    }
    if problems.is_empty() && !stored.is_empty() {
        problems.extend(cross_apply_cycles(&all, stored));
    }
    finish(all.into_iter().map(|(_, t)| t).collect(), problems)
}

impl Task {
    /// Pretty JSON, the form stored in etcd (readable with `etcdctl get`).
    pub fn to_json_pretty(&self) -> Result<String, ManifestError> {
        serde_json::to_string_pretty(self).map_err(|e| self.encode_error(e.to_string()))
    }

    /// YAML, as `drover get -o yaml` shows it.
    pub fn to_yaml(&self) -> Result<String, ManifestError> {
        serde_saphyr::to_string(self).map_err(|e| self.encode_error(e.to_string()))
    }

    fn encode_error(&self, message: String) -> ManifestError {
        ManifestError::Encode {
            name: format!("{}/{}", self.metadata.namespace, self.metadata.name),
            message,
        }
    }

    /// Decodes a Task stored at etcd key `key`. Does not validate: call [`Task::validate`] to
    /// find out whether a task written by hand is acceptable.
    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Task, ManifestError> {
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Decode {
            key: key.to_string(),
            message: e.to_string(),
        })
    }
}

mod document;
mod set;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
