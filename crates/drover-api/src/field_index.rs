//! Where each field of a YAML document is: field paths mapped to lines and columns.
//!
//! serde-saphyr locates its own errors, but semantic validation runs on the typed value, which
//! has forgotten where it came from. So each document is also parsed into a generic tree of
//! [`serde_saphyr::Spanned`] nodes, and every key and value is recorded under its path
//! (`spec.ports[0].containerPort`). Lookups then go both ways: path → location for semantic
//! errors, location → path for serde errors (which carry a location but no path).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// A 1-based `(line, column)` position in the whole source text.
pub(crate) type Pos = (usize, usize);

/// One key or sequence item of a document.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    /// Position of the mapping key (`None` for sequence items and the root).
    key: Option<Pos>,
    /// Position of the value.
    value: Pos,
    /// Is the value a mapping?
    is_map: bool,
    /// Text of a scalar value.
    scalar: Option<String>,
}

/// Field paths of one document and their positions.
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldIndex {
    entries: Vec<Entry>,
}

impl FieldIndex {
    /// Indexes `doc` (one YAML document) whose first line is line `first_line` of the source.
    /// `None` when the document is not valid YAML (its syntax error is reported elsewhere).
    pub(crate) fn build(doc: &str, first_line: usize) -> Option<Self> {
        let root: Option<Spanned<Node>> = serde_saphyr::from_str(doc).ok()?;
        let root = root?;
        let mut index = Self::default();
        index.add(String::new(), None, &root, first_line.saturating_sub(1));
        Some(index)
    }

    fn add(&mut self, path: String, key: Option<Pos>, node: &Spanned<Node>, offset: usize) {
        let pos = |loc: &serde_saphyr::Location| {
            (
                usize::try_from(loc.line())
                    .unwrap_or(0)
                    .saturating_add(offset),
                usize::try_from(loc.column()).unwrap_or(0),
            )
        };
        let value = pos(&node.referenced);
        let (is_map, scalar) = match &node.value {
            Node::Map(_) => (true, None),
            Node::Scalar(s) => (false, Some(s.clone())),
            Node::Seq(_) | Node::Null => (false, None),
        };
        self.entries.push(Entry {
            path: path.clone(),
            key,
            value,
            is_map,
            scalar,
        });
        match &node.value {
            Node::Map(items) => {
                for (k, v) in items {
                    let child = if path.is_empty() {
                        k.value.0.clone()
                    } else {
                        format!("{path}.{}", k.value.0)
                    };
                    self.add(child, Some(pos(&k.referenced)), v, offset);
                }
            }
            Node::Seq(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.add(format!("{path}[{i}]"), None, v, offset);
                }
            }
            Node::Scalar(_) | Node::Null => {}
        }
    }

    /// Position of the field at `path`, or of its nearest present ancestor (a defaulted field
    /// is reported at its parent). Keys are preferred over values, so `spec.replicas` points at
    /// `replicas:`. `None` only when nothing on the path exists.
    pub(crate) fn locate(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(e) = self.entries.iter().find(|e| e.path == p && !p.is_empty()) {
                return Some(e.key.unwrap_or(e.value));
            }
            p = parent(p)?;
        }
    }

    /// The scalar text at `path`, if it is a scalar.
    pub(crate) fn scalar(&self, path: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.path == path)?
            .scalar
            .as_deref()
    }

    /// The path of the key written at `pos`.
    pub(crate) fn path_of_key(&self, pos: Pos) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.key == Some(pos))
            .map(|e| e.path.as_str())
    }

    /// The path of the mapping whose value starts at `pos` (the innermost one).
    pub(crate) fn path_of_map(&self, pos: Pos) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.is_map && e.value == pos)
            .map(|e| e.path.as_str())
    }

    /// The path of the value at `pos`, falling back to the key at `pos`.
    pub(crate) fn path_of_value(&self, pos: Pos) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.value == pos && !e.path.is_empty())
            .or_else(|| self.entries.iter().find(|e| e.key == Some(pos)))
            .map(|e| e.path.as_str())
    }
}

/// `a.b[0].c` → `a.b[0]` → `a.b` → `a` → `None`.
pub(crate) fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// A generic YAML node whose children carry their positions.
#[derive(Debug)]
enum Node {
    Scalar(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
    Null,
}

/// A mapping key, any scalar rendered as text.
#[derive(Debug)]
struct Key(String);

struct ScalarText;

impl Visitor<'_> for ScalarText {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Ok("null".to_string())
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarText).map(Key)
    }
}

struct NodeVisitor;

macro_rules! scalar_via_text {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, v: $ty) -> Result<Node, E> {
            ScalarText.$name(v).map(Node::Scalar)
        })*
    };
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    scalar_via_text!(visit_str: &str, visit_bool: bool, visit_i64: i64, visit_u64: u64,
        visit_i128: i128, visit_u128: u128, visit_f64: f64);

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(key) = map.next_key()? {
            let value = map.next_value()?;
            items.push((key, value));
        }
        Ok(Node::Map(items))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_both_ways() {
        let doc = "a: 1\nb:\n  c: [1, {d: 2}]\n  e:\n    - x: y\n";
        let idx = FieldIndex::build(doc, 10).unwrap();
        assert_eq!(idx.locate("a"), Some((10, 1)));
        assert_eq!(idx.locate("b.c"), Some((12, 3)));
        assert_eq!(idx.locate("b.c[1].d"), Some((12, 11)));
        assert_eq!(idx.locate("b.e[0].x"), Some((14, 7)));
        // Missing fields resolve to their nearest ancestor.
        assert_eq!(idx.locate("b.missing.deeper"), Some((11, 1)));
        assert_eq!(idx.locate("zzz"), None);
        assert_eq!(idx.path_of_key((12, 11)), Some("b.c[1].d"));
        assert_eq!(idx.path_of_value((10, 4)), Some("a"));
        assert_eq!(idx.path_of_map((12, 3)), Some("b"));
        assert_eq!(idx.scalar("b.c[1].d"), Some("2"));
        assert_eq!(parent("a.b[0].c"), Some("a.b[0]"));
        assert_eq!(parent("a.b[0]"), Some("a.b"));
        assert_eq!(parent("a"), Some(""));
    }

    #[test]
    fn invalid_yaml_has_no_index() {
        assert!(FieldIndex::build("a: [", 1).is_none());
        assert!(FieldIndex::build("", 1).is_none());
    }
}
