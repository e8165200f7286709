//! Where a key is in a scenario's TOML text: key paths to 1-based lines and back.
//!
//! Responsible for: turning toml's byte spans into the key path an error is about
//! (`pop3.mailbox[0].message[2].size`) and a key path into the line that holds it, using
//! toml_edit's spans of the parsed document.
//! Must never: interpret the scenario (that is `schema`), or fail: an unknown position
//! simply has no line.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// A table key.
    Key(String),
    /// An array index (array of tables or inline array).
    Index(usize),
}

/// A key path under construction: `KeyPath::root().key("pop3").key("mailbox").index(0)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(pub(crate) Vec<Seg>);

impl KeyPath {
    /// The document root.
    pub(crate) fn root() -> Self {
        Self(Vec::new())
    }

    /// This path followed by a key.
    pub(crate) fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        Self(v)
    }

    /// This path followed by an array index.
    pub(crate) fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        Self(v)
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&render(&self.0))
    }
}

/// Renders a key path: `pop3.mailbox[0].message[1]."odd key"`.
pub(crate) fn render(path: &[Seg]) -> String {
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

/// A parsed document and its text, for looking up lines and key paths.
pub(crate) struct Locator<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    /// Parses `text` (a text toml_edit cannot parse just has no positions).
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// The 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    /// The line of the deepest part of `path` that exists in the document (the key itself
    /// when present, else its table).
    pub(crate) fn line(&self, path: &[Seg]) -> Option<usize> {
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
    pub(crate) fn has(&self, path: &[Seg]) -> bool {
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
    pub(crate) fn path_at(&self, offset: usize) -> Option<Vec<Seg>> {
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
