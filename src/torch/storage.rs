//! Storage references: what a pickle's persistent ids say about each storage (spec §3.2).
//!
//! A zip checkpoint names every storage with the persistent id
//! `('storage', storage_type, key, location, numel)`:
//!
//! | field | meaning |
//! |---|---|
//! | `storage_type` | a global: `torch FloatStorage` (typed, any module) or `torch.storage UntypedStorage` |
//! | `key` | opaque str; the bytes are record `data/<key>` |
//! | `location` | the device tag at save time (`cpu`, `cuda:0`, …) |
//! | `numel` | elements of the storage type; **bytes** for `UntypedStorage` |
//!
//! The legacy stream adds a sixth field, `view_metadata` (spec §4.2). Every key maps to one
//! [`StorageRef`], shared by all tensors that reference it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;

use super::Dtype;
use crate::pickle::{Arena, Node, NodeId};

use super::value::{StorageId, TensorMeta};

/// A storage's key (`"0"`, or a pointer number in older files): up to 24 bytes inline (every key
/// torch writes), so a key costs no allocation of its own. It derefs to `str`; build one from a
/// `&str` or a `String` (`"0".into()`).
pub type StorageKey = compact_str::CompactString;

/// One storage as the pickle declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageRef {
    /// The key (`"0"`, or a pointer number in older files).
    pub key: StorageKey,
    /// The dtype of its first reference (uint8 for `UntypedStorage`).
    pub dtype: Dtype,
    /// Elements of `dtype`.
    pub numel: u64,
    /// The device tag saved with it (the common tags are static: one of those per storage
    /// costs no allocation).
    pub location: Cow<'static, str>,
}

/// A saved device tag, static when it is one of the common ones.
pub(crate) fn device_tag(tag: &str) -> Cow<'static, str> {
    const COMMON: [&str; 6] = ["cpu", "cuda", "cuda:0", "cuda:1", "mps", "meta"];
    match COMMON.iter().find(|&&common| common == tag) {
        Some(&common) => Cow::Borrowed(common),
        None => Cow::Owned(tag.to_owned()),
    }
}

impl StorageRef {
    /// Bytes the storage holds, or `None` on overflow.
    pub fn nbytes(&self) -> Option<u64> {
        self.numel.checked_mul(self.dtype.element_size() as u64)
    }
}

/// A storage as one reference sees it: torch lets two references of the same key read the same
/// bytes as different dtypes when their sizes agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageView {
    /// Which storage.
    pub id: StorageId,
    /// The dtype this reference named (uint8 for untyped).
    pub dtype: Dtype,
    /// Whether the reference was an `UntypedStorage` (numel in bytes; tensor dtype comes later).
    pub untyped: bool,
}

/// What a persistent id stood for: a storage (zip, legacy) or, in the tar format, a tensor
/// read from the `tensors` member.
#[derive(Clone, Debug, PartialEq)]
pub enum External {
    /// A storage, as this reference sees it.
    Storage(StorageView),
    /// A tensor built outside the pickle.
    Tensor(Box<TensorMeta>),
}

/// The storages met while unpickling, by key.
#[derive(Debug, Default)]
pub struct StorageTable {
    /// Storages in order of first reference.
    pub storages: Vec<StorageRef>,
    /// The first storage of each key (found by the key it holds: no second copy of it).
    by_key: hashbrown::HashTable<StorageId>,
    hasher: foldhash::fast::RandomState,
    /// Persistent-id results handed to the pickle machine (`Node::External(i)` is `externals[i]`).
    pub externals: Vec<External>,
    /// Objects the persistent ids of a tar checkpoint name, by their decimal key.
    pub by_id: HashMap<String, External>,
}

impl StorageTable {
    /// Resolves a persistent id node to a new `External` node, registering the storage.
    pub fn persistent_load(
        &mut self,
        arena: &mut Arena,
        pid: NodeId,
        max_storages: usize,
    ) -> Result<NodeId, String> {
        // Tar checkpoints: the id is the decimal key of a storage or tensor read beforehand.
        if !self.by_id.is_empty() {
            let key = match arena.get(pid) {
                Node::Str(s) => Some(arena.text(*s).to_owned()),
                Node::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
                Node::Int(i) => Some(i.to_string()),
                _ => None,
            };
            if let Some(key) = key {
                let found =
                    self.by_id.get(&key).cloned().ok_or_else(|| {
                        format!("persistent id {key:?} names no storage or tensor")
                    })?;
                return Ok(self.external(arena, found));
            }
        }
        // Protocol 0 can only write text persistent ids, so torch.save(..., pickle_protocol=0)
        // writes the tuple's repr, which torch itself cannot load back. Read it.
        let pid = match arena.get(pid) {
            Node::Str(text) if arena.text(*text).starts_with("('storage',") => {
                let text = arena.text(*text).to_owned();
                parse_pid_repr(arena, &text)
                    .ok_or_else(|| format!("unreadable text persistent id {text:?}"))?
            }
            _ => pid,
        };
        let Some(fields) = arena.tuple(pid) else {
            return Err(format!(
                "persistent id must be a tuple, not a {}",
                arena.kind_name(pid)
            ));
        };
        let text = |id: NodeId| -> Option<Cow<'_, str>> {
            match arena.get(id) {
                Node::Str(s) => Some(Cow::Borrowed(arena.text(*s))),
                Node::Bytes(b) if b.is_ascii() => Some(String::from_utf8_lossy(b)),
                Node::Int(i) => Some(Cow::Owned(i.to_string())),
                _ => None,
            }
        };
        if fields.is_empty() || text(fields[0]).as_deref() != Some("storage") {
            return Err("unsupported persistent id: only ('storage', …) ids are understood".into());
        }
        if fields.len() != 5 && fields.len() != 6 {
            return Err(format!(
                "a storage persistent id has 5 fields, not {}",
                fields.len()
            ));
        }
        if fields.len() == 6 && !matches!(arena.get(fields[5]), Node::None) {
            return Err(
                "storage views in persistent ids (legacy view_metadata) are not supported yet"
                    .into(),
            );
        }
        let (dtype, untyped) = match arena.global(fields[1]) {
            Some((module, "UntypedStorage")) if module.starts_with("torch") => (Dtype::UInt8, true),
            Some((module, name)) => match Dtype::from_storage_class(name) {
                Some(d) => (d, false),
                None => return Err(format!("unknown storage type {module}.{name}")),
            },
            None => {
                return Err(format!(
                    "storage type must be a global, not a {}",
                    arena.kind_name(fields[1])
                ))
            }
        };
        // A zip checkpoint's record is f"data/{key}": a bytes key is its repr (`data/b'0'`, a
        // record torch then fails to find), an int its decimal text. The legacy stream (six
        // fields) matches keys against its key list instead, read as text here.
        let key = match arena.get(fields[2]) {
            Node::Bytes(b) if fields.len() == 5 => Cow::Owned(python_bytes_repr(b)),
            _ => text(fields[2]).ok_or("storage key must be a str")?,
        };
        let location = text(fields[3]).ok_or("storage location must be a str")?;
        let numel = match arena.get(fields[4]) {
            Node::Int(n) if *n >= 0 => *n as u64,
            Node::Int(n) => return Err(format!("storage '{key}' has a negative size {n}")),
            _ => return Err(format!("storage '{key}' size must be an int")),
        };
        if numel.checked_mul(dtype.element_size() as u64).is_none() {
            return Err(format!(
                "storage '{key}' size {numel} × {} bytes overflows",
                dtype.element_size()
            ));
        }
        let (key, location) = (StorageKey::from(&*key), device_tag(&location));
        let hash = self.hasher.hash_one(&key);
        let storages = &self.storages;
        let first = self
            .by_key
            .find(hash, |&id| storages[id].key == key)
            .copied();
        let id = match first {
            Some(id) => {
                let existing = &self.storages[id];
                let nbytes = numel * dtype.element_size() as u64;
                if existing.nbytes() == Some(nbytes) {
                    id
                } else {
                    // torch: a separate storage (only possible for empty records).
                    self.push(key, dtype, numel, location, max_storages)?
                }
            }
            None => {
                let id = self.push(key, dtype, numel, location, max_storages)?;
                let (storages, hasher) = (&self.storages, &self.hasher);
                self.by_key
                    .insert_unique(hash, id, |&id| hasher.hash_one(&storages[id].key));
                id
            }
        };
        Ok(self.external(arena, External::Storage(StorageView { id, dtype, untyped })))
    }

    /// Makes room for `additional` more storages (and their persistent-id results).
    pub fn reserve(&mut self, additional: usize) {
        self.storages.reserve(additional);
        self.externals.reserve(additional);
        let (storages, hasher) = (&self.storages, &self.hasher);
        self.by_key
            .reserve(additional, |&id| hasher.hash_one(&storages[id].key));
    }

    /// Registers an external object and returns the node that stands for it.
    pub fn external(&mut self, arena: &mut Arena, external: External) -> NodeId {
        self.externals.push(external);
        arena.push(Node::External((self.externals.len() - 1) as u64))
    }

    /// Adds a storage declared outside a pickle (the tar format's `storages` member).
    pub fn add(&mut self, storage: StorageRef, max: usize) -> Result<StorageId, String> {
        let StorageRef {
            key,
            dtype,
            numel,
            location,
        } = storage;
        self.push(key, dtype, numel, location, max)
    }

    fn push(
        &mut self,
        key: StorageKey,
        dtype: Dtype,
        numel: u64,
        location: Cow<'static, str>,
        max: usize,
    ) -> Result<StorageId, String> {
        if self.storages.len() >= max {
            return Err(format!(
                "limit max_storages exceeded: more than {max} storages"
            ));
        }
        self.storages.push(StorageRef {
            key,
            dtype,
            numel,
            location,
        });
        Ok(self.storages.len() - 1)
    }
}

/// Python's `repr` of a bytes object: `b'...'`, or `b"..."` when it holds `'` and no `"`.
fn python_bytes_repr(bytes: &[u8]) -> String {
    let quote = if bytes.contains(&b'\'') && !bytes.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    let mut out = String::with_capacity(bytes.len() + 3);
    out.push('b');
    out.push(quote as char);
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            _ if b == quote => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push(quote as char);
    out
}

/// Parses the repr of a storage persistent id, as protocol 0 writes it:
/// `('storage', <class 'torch.FloatStorage'>, '140000000000000', 'cpu', 2, None)`.
/// Returns a tuple node of the same fields (the class as a global; nothing is imported).
fn parse_pid_repr(arena: &mut Arena, text: &str) -> Option<NodeId> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    let mut fields = Vec::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let (node, after) = if let Some(r) = rest.strip_prefix("<class '") {
            let end = r.find("'>")?;
            let (module, name) = r[..end].rsplit_once('.')?;
            (arena.global_node(module, name), &r[end + 2..])
        } else if let Some(r) = rest.strip_prefix('\'') {
            let end = r.find('\'')?;
            (arena.str_node(&r[..end]), &r[end + 1..])
        } else if let Some(r) = rest.strip_prefix("None") {
            (Node::None, r)
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            (Node::Int(rest[..end].trim().parse().ok()?), &rest[end..])
        };
        fields.push(arena.push(node));
        rest = after.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    let tuple = arena.tuple_node(&fields);
    Some(arena.push(tuple))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_keys_read_as_python_s_repr() {
        // repr(b) in CPython 3.11.
        for (bytes, repr) in [
            (&b"0"[..], r"b'0'"),
            (b"it's", r#"b"it's""#),
            (b"a\"b'c", r#"b'a"b\'c'"#),
            (b"\x00\xff\t\n\r\\ ~", r"b'\x00\xff\t\n\r\\ ~'"),
        ] {
            assert_eq!(python_bytes_repr(bytes), repr);
        }
    }

    #[test]
    fn pid_reprs() {
        let mut arena = Arena::new();
        let id = parse_pid_repr(
            &mut arena,
            "('storage', <class 'torch.FloatStorage'>, '14', 'cpu', 2, None)",
        )
        .unwrap();
        let fields = arena.tuple(id).unwrap().to_vec();
        assert_eq!(arena.global(fields[1]), Some(("torch", "FloatStorage")));
        assert_eq!(arena.str(fields[2]), Some("14"));
        assert_eq!(arena.int(fields[4]), Some(2));
        for bad in [
            "('storage', <class 'x",
            "('storage', 'a",
            "('storage', 1x)",
            "(",
            "('storage', <class 'nodot'>)",
        ] {
            assert!(parse_pid_repr(&mut arena, bad).is_none(), "{bad}");
        }
    }
}
