//! Where a key is in a TOML text, and TOML parse errors said in plain words.
//!
//! Responsible for: key paths (`pop3.mailbox[0].message[2].size`, `account[1].tls`) and
//! their rendering, turning toml's byte spans into the key path and 1-based line an error
//! is about and a key path into the line that holds it (toml_edit's spans of the parsed
//! document), the wording shared by the configuration and scenario loaders for serde's
//! "missing field" and "unknown field", and the integer-or-string [`Scalar`] sizes and
//! durations are written as.
//! Must never: interpret a document (which keys exist is the loaders' business), or fail:
//! an unknown position simply has no line or key.

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml_edit::{ImDocument, Item, Table, Value};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index (array of tables or inline array).
    Index(usize),
}

/// A key path under construction: `KeyPath::root().key("pop3").key("mailbox").index(0)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// The document root.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path followed by a key.
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        Self(v)
    }

    /// This path followed by an array index.
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        Self(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render(&self.0))
    }
}

/// Renders a key path: `pop3.mailbox[0].message[1]."odd key"`.
pub fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
        }
    }
    out
}

/// The 1-based line of a byte offset of `text` (past the end: the last line).
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A TOML parse error, located and in plain words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The byte range toml reported, when it did.
    pub span: Option<Range<usize>>,
    /// The 1-based line of the span's start.
    pub line: Option<usize>,
    /// The key path the error is about (for a missing key: the key itself), when known.
    pub key: Option<String>,
    /// The message on one line: "missing required key" and "unknown key ..." in place of
    /// serde's "missing field" and "unknown field"; any other message as toml gave it
    /// (names still in serde's backticks).
    pub message: String,
}

/// A parsed document and its text, for looking up lines and key paths.
pub struct Locator<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    /// Parses `text` (a text toml_edit cannot parse just has no positions).
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// The 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        line_of(self.text, offset)
    }

    /// The line of the deepest part of `path` that exists in the document (the key itself
    /// when present, else its table).
    pub fn line(&self, path: &[Seg]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut best: Option<Range<usize>> = None;
        let mut cur = Node::Item(doc.as_item());
        for seg in path {
            let Some((span, next)) = cur.step(seg) else {
                break;
            };
            if span.is_some() {
                best = span;
            }
            cur = next;
        }
        best.map(|s| self.line_of(s.start))
    }

    /// True when every step of `path` exists in the document.
    pub fn has(&self, path: &[Seg]) -> bool {
        let Some(doc) = self.doc.as_ref() else {
            return false;
        };
        let mut cur = Node::Item(doc.as_item());
        for seg in path {
            match cur.step(seg) {
                Some((_, next)) => cur = next,
                None => return false,
            }
        }
        true
    }

    /// The key path of the innermost key or value holding `offset`.
    pub fn path_at(&self, offset: usize) -> Option<Vec<Seg>> {
        let doc = self.doc.as_ref()?;
        let mut best = Best::default();
        walk(
            Node::Item(doc.as_item()),
            offset,
            &mut Vec::new(),
            &mut best,
        );
        let path = best.key.or(best.value.map(|(_, p)| p))?;
        (!path.is_empty()).then_some(path)
    }

    /// Where a parse error of this text is, and what it says in plain words (see
    /// [`Located::message`]).
    pub fn locate(&self, e: &toml::de::Error) -> Located {
        let span = e.span();
        let mut message = e.message().trim().lines().collect::<Vec<_>>().join("; ");
        let mut key = span
            .as_ref()
            .and_then(|s| self.path_at(s.start))
            .map(|p| render(&p));
        if let Some(field) = backticked(&message, "missing field ") {
            key = Some(match key {
                Some(k) => format!("{k}.{field}"),
                None => field,
            });
            message = "missing required key".to_string();
        } else if let Some(rest) = message.strip_prefix("unknown field ") {
            message = format!("unknown key {rest}");
        }
        Located {
            line: span.as_ref().map(|s| self.line_of(s.start)),
            span,
            key,
            message,
        }
    }
}

/// The text between the backticks right after `prefix`, e.g. the field of "missing field `x`".
fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    let end = rest.find('`')?;
    Some(rest[..end].to_string())
}

#[derive(Clone, Copy)]
enum Node<'d> {
    Item(&'d Item),
    Value(&'d Value),
    Table(&'d Table),
}

impl<'d> Node<'d> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(Item::Table(t)) | Node::Table(t) => t.span(),
            Node::Item(Item::Value(v)) | Node::Value(v) => v.span(),
            Node::Item(Item::ArrayOfTables(a)) => a.span(),
            Node::Item(Item::None) => None,
        }
    }

    /// The child at `seg`: (the best span for it, the child).
    fn step(self, seg: &Seg) -> Option<(Option<Range<usize>>, Node<'d>)> {
        match (self, seg) {
            (Node::Item(Item::Table(t)), Seg::Key(k)) | (Node::Table(t), Seg::Key(k)) => {
                table_child(t, k)
            }
            (Node::Item(Item::Value(Value::InlineTable(t))), Seg::Key(k))
            | (Node::Value(Value::InlineTable(t)), Seg::Key(k)) => {
                let (key, item) = t.get_key_value(k)?;
                let node = Node::Item(item);
                Some((key.span().or_else(|| node.span()), node))
            }
            (Node::Item(Item::ArrayOfTables(a)), Seg::Index(i)) => {
                let t = a.get(*i)?;
                Some((t.span(), Node::Table(t)))
            }
            (Node::Item(Item::Value(Value::Array(a))), Seg::Index(i))
            | (Node::Value(Value::Array(a)), Seg::Index(i)) => {
                let v = a.get(*i)?;
                Some((v.span(), Node::Value(v)))
            }
            _ => None,
        }
    }

    /// Children with their key spans (tables) or none (arrays).
    fn children(self) -> Vec<(Seg, Option<Range<usize>>, Node<'d>)> {
        let mut out = Vec::new();
        match self {
            Node::Item(Item::Table(t)) | Node::Table(t) => {
                for (name, _) in t.iter() {
                    if let Some((key, item)) = t.get_key_value(name) {
                        out.push((Seg::Key(name.to_string()), key.span(), Node::Item(item)));
                    }
                }
            }
            Node::Item(Item::Value(Value::InlineTable(t))) | Node::Value(Value::InlineTable(t)) => {
                for (name, _) in t.iter() {
                    if let Some((key, item)) = t.get_key_value(name) {
                        out.push((Seg::Key(name.to_string()), key.span(), Node::Item(item)));
                    }
                }
            }
            Node::Item(Item::ArrayOfTables(a)) => {
                for (i, t) in a.iter().enumerate() {
                    out.push((Seg::Index(i), None, Node::Table(t)));
                }
            }
            Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                for (i, v) in a.iter().enumerate() {
                    out.push((Seg::Index(i), None, Node::Value(v)));
                }
            }
            _ => {}
        }
        out
    }
}

fn table_child<'d>(t: &'d Table, k: &str) -> Option<(Option<Range<usize>>, Node<'d>)> {
    let (key, item) = t.get_key_value(k)?;
    let node = Node::Item(item);
    Some((key.span().or_else(|| node.span()), node))
}

#[derive(Default)]
struct Best {
    key: Option<Vec<Seg>>,
    value: Option<(usize, Vec<Seg>)>,
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    (span.start <= offset && offset < span.end) || (span.is_empty() && span.start == offset)
}

fn walk(node: Node<'_>, offset: usize, path: &mut Vec<Seg>, best: &mut Best) {
    for (seg, key_span, child) in node.children() {
        path.push(seg);
        if best.key.is_none() && key_span.as_ref().is_some_and(|s| contains(s, offset)) {
            best.key = Some(path.clone());
        }
        if let Some(s) = child.span().filter(|s| contains(s, offset)) {
            let len = s.end - s.start;
            if best.value.as_ref().is_none_or(|(l, _)| len <= *l) {
                best.value = Some((len, path.clone()));
            }
        }
        walk(child, offset, path, best);
        path.pop();
    }
}

/// An integer or a string, as sizes (`"10MB"`) and durations (`"30s"`) may be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    /// A bare number (octets or seconds).
    Int(i64),
    /// Text with a unit.
    Text(String),
}

impl Scalar {
    /// Reads a scalar; a type error says `expecting`, an integer beyond `i64` `too_large`.
    pub fn deserialize_as<'de, D: Deserializer<'de>>(
        d: D,
        expecting: &'static str,
        too_large: &'static str,
    ) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor {
            expecting,
            too_large,
        })
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::deserialize_as(
            d,
            "a number or a string such as \"10MB\" or \"30s\"",
            "number too large",
        )
    }
}

struct ScalarVisitor {
    expecting: &'static str,
    too_large: &'static str,
}

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        i64::try_from(v)
            .map(Scalar::Int)
            .map_err(|_| E::custom(self.too_large))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_render_and_locate() {
        let text = "a = 1\n[b]\nc = [1, {d = 2}]\n[[e]]\nf = 1\n[[e]]\n\"odd key\" = 'x'\n";
        let loc = Locator::new(text);
        let at = |needle: &str| loc.path_at(text.find(needle).unwrap()).map(|p| render(&p));
        assert_eq!(at("a =").as_deref(), Some("a"));
        assert_eq!(at("d =").as_deref(), Some("b.c[1].d"));
        assert_eq!(at("'x'").as_deref(), Some("e[1].\"odd key\""));
        let path = KeyPath::root().key("e").index(1).key("odd key");
        assert_eq!(loc.line(&path.0), Some(7));
        assert!(loc.has(&path.0));
        assert!(!loc.has(&KeyPath::root().key("e").index(2).0));
        assert_eq!(Locator::new("x = \"unterminated\n").path_at(4), None);
    }

    #[test]
    fn missing_and_unknown_fields_are_reworded() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            x: Inner,
        }
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            y: i64,
        }
        let locate = |text: &str| {
            let e = toml::from_str::<T>(text).unwrap_err();
            Locator::new(text).locate(&e)
        };
        let l = locate("[x]\nz = 1\n");
        assert_eq!((l.line, l.key.as_deref()), (Some(2), Some("x.z")));
        assert!(l.message.starts_with("unknown key `z`"), "{}", l.message);
        let l = locate("[x]\n");
        assert_eq!(l.key.as_deref(), Some("x.y"));
        assert_eq!(l.message, "missing required key");
    }
}
