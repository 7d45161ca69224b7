//! The whole object `torch.load` would return: an indented text tree (`ptload inspect --tree`)
//! and the `root` field of `ptload inspect --json`.
//!
//! Both walk the tree as [`Checkpoint::tensors`] does (dict items, list indices, the state of
//! inert objects), so a tensor's path here is its `path` in the tensor list. Output depends on
//! the file alone: dicts keep file order, and nothing is sorted or hashed.
//!
//! The text tree: one line per value, `label: summary`, children indented two spaces. Labels are
//! Python reprs of dict keys (`'epoch'`, `3`), `[i]` for list items and `.name` for attributes.
//! Scalars show their value; short lists of scalars stay on one line; tensors are one line
//! (`tensor float32 [4, 3] cpu 48 B`); containers longer than `--max-items` show that many items
//! and `... N more items`.
//!
//! `root` in JSON is written by [`ptload::torch::json`] (its module docs give the mapping), so
//! that every surface can print the same text.

use std::fmt::Write as _;

use ptload::torch::json::float_repr;
use ptload::torch::value::key_segment;
use ptload::{Checkpoint, Device, TensorKind, TensorMeta, Value};

/// Options of the text tree.
pub struct TextOptions {
    /// Items shown per container before `... N more items` (0: all).
    pub max_items: usize,
    /// Add each tensor's SHA-256.
    pub sha256: bool,
}

/// Strings longer than this are cut in the text tree (with their length).
const MAX_STR_CHARS: usize = 120;
/// Bytes shown of a `bytes` value in the text tree.
const MAX_BYTES: usize = 48;
/// Widest one-line rendering of a list or tuple of scalars.
const MAX_INLINE: usize = 80;

/// Where a value sits: its path, and whether [`Checkpoint::tensors`] walks it.
#[derive(Clone, Copy)]
struct At<'p> {
    path: &'p str,
    listed: bool,
}

impl At<'_> {
    fn child(&self, segment: &str) -> String {
        if self.path.is_empty() {
            segment.to_owned()
        } else {
            format!("{}.{segment}", self.path)
        }
    }
}

/// How a child is labelled in the text tree.
enum Label<'v> {
    /// A dict item: its key.
    Key(&'v Value),
    /// A list item.
    Index(usize),
    /// An attribute (an object's state, a dict's `_metadata`).
    Attr(&'v str),
    /// An object's constructor argument.
    Arg(usize),
    /// An object's state that is not a dict (or the i-th such part of a tuple state).
    State(Option<usize>),
}

/// One child of a value.
struct Child<'v> {
    label: Label<'v>,
    /// The path segment, when [`Value::children`] walks it (its tensors are listed).
    segment: Option<String>,
    value: &'v Value,
}

/// Every child of a value: those [`Value::children`] walks, in its order and with its
/// segments, plus what it skips (object arguments, non-dict state, dict attributes).
fn children(value: &Value) -> Vec<Child<'_>> {
    fn items(items: &[Value]) -> impl Iterator<Item = Child<'_>> {
        items.iter().enumerate().map(|(i, v)| Child {
            label: Label::Index(i),
            segment: Some(i.to_string()),
            value: v,
        })
    }
    fn dict_items(items: &[(Value, Value)], attrs: bool) -> impl Iterator<Item = Child<'_>> {
        items.iter().map(move |(k, v)| Child {
            label: match k {
                Value::Str(s) if attrs => Label::Attr(s),
                other => Label::Key(other),
            },
            segment: Some(key_segment(k)),
            value: v,
        })
    }
    let mut out = Vec::new();
    match value {
        Value::List(v) | Value::Tuple(v) | Value::Set(v) | Value::FrozenSet(v) => {
            out.extend(items(v))
        }
        Value::Dict(d) => {
            out.extend(dict_items(&d.items, false));
            out.extend(d.attributes.iter().map(|(name, v)| Child {
                label: Label::Attr(name),
                segment: None,
                value: v,
            }));
        }
        Value::Object(o) => {
            out.extend(o.args.iter().enumerate().map(|(i, v)| Child {
                label: Label::Arg(i),
                segment: None,
                value: v,
            }));
            match &o.state {
                None => {}
                Some(Value::Dict(d)) => out.extend(dict_items(&d.items, true)),
                // (dict, slots), as Python's default __reduce_ex__ writes it.
                Some(Value::Tuple(parts)) => {
                    for (i, part) in parts.iter().enumerate() {
                        match part {
                            Value::Dict(d) => out.extend(dict_items(&d.items, true)),
                            Value::None => {}
                            other => out.push(Child {
                                label: Label::State(Some(i)),
                                segment: None,
                                value: other,
                            }),
                        }
                    }
                }
                Some(other) => out.push(Child {
                    label: Label::State(None),
                    segment: None,
                    value: other,
                }),
            }
            out.extend(dict_items(&o.dict_items, false));
            out.extend(items(&o.list_items));
        }
        _ => {}
    }
    out
}

/// Python's `repr` of a `str`.
fn py_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr` of `bytes`.
fn py_bytes(b: &[u8]) -> String {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    let mut out = format!("b{}", quote as char);
    for &byte in b {
        match byte {
            b'\\' => out.push_str("\\\\"),
            _ if byte == quote => {
                out.push('\\');
                out.push(byte as char);
            }
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(byte as char),
            _ => {
                let _ = write!(out, "\\x{byte:02x}");
            }
        }
    }
    out.push(quote as char);
    out
}

/// A scalar's one-line rendering (`None` for containers, tensors and objects).
fn scalar(value: &Value) -> Option<String> {
    Some(match value {
        Value::None | Value::Bool(_) | Value::Int(_) | Value::BigInt(_) => value.to_string(),
        Value::Float(x) => float_repr(*x),
        Value::Complex(..) | Value::Global(_) => value.to_string(),
        Value::Str(s) => {
            let n = s.chars().count();
            if n > MAX_STR_CHARS {
                let cut: String = s.chars().take(MAX_STR_CHARS).collect();
                format!("{}... ({n} chars)", py_str(&cut))
            } else {
                py_str(s)
            }
        }
        Value::Bytes(b) | Value::ByteArray(b) => {
            let shown = py_bytes(&b[..b.len().min(MAX_BYTES)]);
            let shown = if b.len() > MAX_BYTES {
                format!("{shown}... ({} bytes)", b.len())
            } else {
                shown
            };
            match value {
                Value::ByteArray(_) => format!("bytearray({shown})"),
                _ => shown,
            }
        }
        _ => return None,
    })
}

/// A dict key as a label: Python's repr for scalars.
fn key_label(key: &Value) -> String {
    scalar(key).unwrap_or_else(|| key.to_string())
}

/// `1 item`, `3 items`.
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A list/tuple/set of scalars on one line, if it fits.
fn inline_sequence(value: &Value) -> Option<String> {
    let (open, items, close) = match value {
        Value::List(v) => ("[", v, "]"),
        Value::Tuple(v) => ("(", v, ")"),
        Value::Set(v) if !v.is_empty() => ("{", v, "}"),
        Value::Set(_) => return Some("set()".into()),
        Value::FrozenSet(v) => ("frozenset({", v, "})"),
        _ => return None,
    };
    let mut parts = Vec::with_capacity(items.len());
    let mut width = open.len() + close.len();
    for item in items {
        let s = scalar(item)?;
        width += s.len() + 2;
        if width > MAX_INLINE {
            return None;
        }
        parts.push(s);
    }
    let trailing = if open == "(" && parts.len() == 1 {
        ","
    } else {
        ""
    };
    Some(format!("{open}{}{trailing}{close}", parts.join(", ")))
}

fn human_bytes(n: u64) -> String {
    super::inspect::human_bytes(n)
}

/// The device a tensor's storage is on.
fn device_of(ckpt: &Checkpoint, meta: &TensorMeta) -> Device {
    meta.storage
        .and_then(|id| ckpt.storages.get(id))
        .map(|s| s.device.clone())
        .unwrap_or(Device::Meta)
}

struct Text<'c> {
    ckpt: &'c Checkpoint,
    options: &'c TextOptions,
    out: String,
}

impl Text<'_> {
    fn tensor_line(&self, meta: &TensorMeta, at: At<'_>) -> ptload::Result<String> {
        let kind = match meta.kind {
            TensorKind::Tensor => "tensor",
            TensorKind::Parameter => "Parameter",
        };
        let shape = meta
            .shape
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let bytes = meta.numel() * meta.dtype.element_size() as u64;
        let mut line = format!(
            "{kind} {} [{shape}] {} {}",
            meta.dtype,
            device_of(self.ckpt, meta),
            human_bytes(bytes)
        );
        if meta.requires_grad {
            line.push_str(" requires_grad");
        }
        if meta.conj {
            line.push_str(" conj");
        }
        if meta.neg {
            line.push_str(" neg");
        }
        if self.options.sha256 && at.listed {
            if let Some(t) = self.ckpt.tensor(at.path) {
                if t.device() != Device::Meta {
                    let _ = write!(line, " sha256={}", t.sha256()?);
                }
            }
        }
        Ok(line)
    }

    fn summary(&self, value: &Value, at: At<'_>) -> ptload::Result<String> {
        if let Some(s) = scalar(value) {
            return Ok(s);
        }
        if let Some(s) = inline_sequence(value) {
            return Ok(s);
        }
        Ok(match value {
            Value::List(v) => format!("list, {}", count(v.len(), "item")),
            Value::Tuple(v) => format!("tuple, {}", count(v.len(), "item")),
            Value::Set(v) => format!("set, {}", count(v.len(), "item")),
            Value::FrozenSet(v) => format!("frozenset, {}", count(v.len(), "item")),
            Value::Dict(d) if d.items.is_empty() => format!("{}, empty", d.class),
            Value::Dict(d) => format!("{}, {}", d.class, count(d.items.len(), "item")),
            Value::Tensor(meta) => self.tensor_line(meta, at)?,
            Value::Storage(id) => match self.ckpt.storages.get(*id) {
                Some(s) => format!(
                    "storage {} [{}] {} {} (key {})",
                    s.dtype,
                    s.numel,
                    s.device,
                    human_bytes(s.nbytes()),
                    py_str(&s.key)
                ),
                None => format!("storage #{id}"),
            },
            Value::Object(o) => match (o.args.is_empty(), inline_args(&o.args)) {
                (true, _) => o.class.clone(),
                (false, Some(args)) => format!("{}{args}", o.class),
                (false, None) => o.class.clone(),
            },
            other => other.to_string(),
        })
    }

    /// Writes the lines of `value` and everything under it. The walk keeps its own stack on
    /// the heap: a tree of any depth is written on any thread.
    fn node(&mut self, label: String, value: &Value, at: At<'_>) -> ptload::Result<()> {
        let mut stack = vec![Line::Node {
            label,
            value,
            path: at.path.to_owned(),
            listed: at.listed,
            depth: 0,
        }];
        while let Some(line) = stack.pop() {
            match line {
                Line::More { depth, more } => {
                    let _ = writeln!(
                        self.out,
                        "{}  ... {more} more {}",
                        "  ".repeat(depth),
                        if more == 1 { "item" } else { "items" }
                    );
                }
                Line::Node {
                    label,
                    value,
                    path,
                    listed,
                    depth,
                } => {
                    let at = At {
                        path: &path,
                        listed,
                    };
                    let first = stack.len();
                    self.one_node(&label, value, at, depth, &mut stack)?;
                    stack[first..].reverse();
                }
            }
        }
        Ok(())
    }

    /// Writes the line of `value`, and pushes what goes under it onto `next` (in order).
    fn one_node<'v>(
        &mut self,
        label: &str,
        value: &'v Value,
        at: At<'_>,
        depth: usize,
        next: &mut Vec<Line<'v>>,
    ) -> ptload::Result<()> {
        let summary = self.summary(value, at)?;
        let indent = "  ".repeat(depth);
        if label.is_empty() {
            let _ = writeln!(self.out, "{indent}{summary}");
        } else {
            let _ = writeln!(self.out, "{indent}{label}: {summary}");
        }
        if scalar(value).is_some() || inline_sequence(value).is_some() {
            return Ok(());
        }
        let inline = match value {
            Value::Object(o) => inline_args(&o.args).is_some(),
            _ => false,
        };
        let mut shown = Vec::new();
        for c in children(value) {
            let label = match c.label {
                Label::Key(k) => key_label(k),
                Label::Index(i) => format!("[{i}]"),
                Label::Attr(name) => format!(".{name}"),
                Label::Arg(_) if inline => continue,
                Label::Arg(i) => format!("args[{i}]"),
                Label::State(None) => "state".into(),
                Label::State(Some(i)) => format!("state[{i}]"),
            };
            shown.push((label, c.value, c.segment));
        }
        let total = shown.len();
        let limit = match self.options.max_items {
            0 => total,
            n => n,
        };
        for (label, child, segment) in shown.into_iter().take(limit) {
            let (path, listed) = match segment {
                Some(segment) => (at.child(&segment), at.listed),
                None => (String::new(), false),
            };
            next.push(Line::Node {
                label,
                value: child,
                path,
                listed,
                depth: depth + 1,
            });
        }
        if total > limit {
            next.push(Line::More {
                depth,
                more: total - limit,
            });
        }
        Ok(())
    }
}

/// A line of the text tree still to write: a value (and all under it) or `... N more items`.
enum Line<'v> {
    Node {
        label: String,
        value: &'v Value,
        path: String,
        listed: bool,
        depth: usize,
    },
    More {
        depth: usize,
        more: usize,
    },
}

/// An object's constructor arguments on one line, if they are scalars and fit.
fn inline_args(args: &[Value]) -> Option<String> {
    let joined = args
        .iter()
        .map(scalar)
        .collect::<Option<Vec<_>>>()?
        .join(", ");
    (joined.len() + 2 <= MAX_INLINE).then(|| format!("({joined})"))
}

/// The text tree of the checkpoint's root (and TorchScript constants).
pub fn text(ckpt: &Checkpoint, options: &TextOptions) -> ptload::Result<String> {
    let mut t = Text {
        ckpt,
        options,
        out: String::new(),
    };
    t.node(
        String::new(),
        &ckpt.root,
        At {
            path: "",
            listed: true,
        },
    )?;
    if let Some(constants) = &ckpt.constants {
        t.node(
            "constants".into(),
            constants,
            At {
                path: "constants",
                listed: true,
            },
        )?;
    }
    Ok(t.out)
}

/// The `root` field of `--json`: the tree as JSON text ([`ptload::torch::json`]).
pub fn json(ckpt: &Checkpoint) -> String {
    ptload::torch::json::tree(&ckpt.root, &|id| {
        ckpt.storages.get(id).map(|s| s.key.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each expected text is Python 3.11's `repr`.
    #[test]
    fn reprs_as_python_writes_them() {
        assert_eq!(py_str("it's"), "\"it's\"");
        assert_eq!(py_str("a'\"\n\u{1}é"), "'a\\'\"\\n\\x01é'");
        assert_eq!(py_bytes(b"\x00\xffab'\\"), "b\"\\x00\\xffab'\\\\\"");
        assert_eq!(py_bytes(b"'\""), "b'\\'\"'");
    }
}
