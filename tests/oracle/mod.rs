//! Independent readers of the same formats as oracles, shared by `tests/oracles.rs` and the
//! fuzz targets `zip_oracle`, `pickle_oracle` and `sparse_plan` (included by path).
//!
//! - zip: our directory reader (`archive::ZipDirectory`) against the `zip` crate: entry names,
//!   compression method, sizes, where the data starts, and the bytes once inflated.
//! - pickle: our VM (`pickle::load_pickle`, no hooks) against `serde-pickle`'s `Value`, on
//!   plain data, rendered to one canonical text (dicts and sets sorted, floats by bits, ints in
//!   decimal, shared memo values expanded).
//! - plans over partial sources: [`ptload::source::SparseBytes`] fed the `NeedBytes` rounds must
//!   give the plan (or the error) the whole buffer gives, in a bounded number of rounds.
//!
//! Where both readers accept, they must agree ([`Outcome::Differ`] is a bug in one of them).
//! Where only one accepts, the outcome says which and why, and the tests check that each such
//! case is a difference we keep on purpose.
#![allow(dead_code)]

use std::io::{Cursor, Read};

use ptload::archive::{Method, ZipDirectory};
use ptload::pickle::{self, Arena, Node, NodeId, PickleLimits, StringEncoding};

/// How two readers compared on one input.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Both accept and agree.
    Same,
    /// Both accept and disagree: a bug.
    Differ(String),
    /// Only ptload accepts (the oracle's reason).
    OnlyOurs(String),
    /// Only the oracle accepts (our reason).
    OnlyTheirs(String),
    /// Both refuse.
    BothRefuse,
    /// They differ where the oracle is known to be wrong (the reason).
    OracleWrong(String),
}

/// Bytes any one entry may inflate to in a comparison (keeps fuzzing fast and bounded).
const MAX_ENTRY: u64 = 1 << 24;

struct Entry {
    name: String,
    deflated: bool,
    size: u64,
    compressed: u64,
    data_start: u64,
    data: Vec<u8>,
}

fn ours_zip(data: &[u8]) -> Result<Vec<Entry>, String> {
    let dir = ZipDirectory::parse(data).map_err(|e| e.to_string())?;
    dir.records()
        .iter()
        .map(|r| {
            let bytes = r.read(data, MAX_ENTRY).map_err(|e| e.to_string())?;
            Ok(Entry {
                name: r.name.to_string(),
                deflated: r.method == Method::Deflated,
                size: r.size,
                compressed: r.stored_len,
                data_start: r.data_offset,
                data: bytes.into_owned(),
            })
        })
        .collect()
}

/// The zip crate's view; `Ok(None)` for an entry's data when only its CRC check fails (torch,
/// and so ptload, never checks CRCs: `no_crc.pt` has none).
fn theirs_zip(data: &[u8]) -> Result<Vec<(Entry, bool)>, String> {
    let mut archive = zip::ZipArchive::new(Cursor::new(data)).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let (name, method, size, compressed, data_start) = {
            let f = archive.by_index_raw(i).map_err(|e| e.to_string())?;
            (
                f.name().to_owned(),
                f.compression(),
                f.size(),
                f.compressed_size(),
                f.data_start(),
            )
        };
        let deflated = match method {
            zip::CompressionMethod::Stored => false,
            zip::CompressionMethod::Deflated => true,
            other => return Err(format!("entry {name}: method {other:?} not read")),
        };
        if size > MAX_ENTRY {
            return Err(format!(
                "entry {name}: {size} bytes, over the comparison cap"
            ));
        }
        let mut bytes = Vec::new();
        let crc_ok = {
            let mut f = archive.by_index(i).map_err(|e| e.to_string())?;
            match (&mut f).take(MAX_ENTRY + 1).read_to_end(&mut bytes) {
                Ok(_) => true,
                Err(e) if e.to_string().contains("checksum") => false,
                Err(e) => return Err(format!("entry {name}: {e}")),
            }
        };
        out.push((
            Entry {
                name,
                deflated,
                size,
                compressed,
                data_start,
                data: bytes,
            },
            crc_ok,
        ));
    }
    Ok(out)
}

/// A name's ASCII characters. A kept difference: a name with non-UTF-8 bytes and no UTF-8
/// flag is CP437 to the `zip` crate (as the zip spec says) and lossy UTF-8 to us (torch, through
/// miniz, treats names as bytes, and every name torch writes is ASCII), so only the ASCII part
/// of names is compared.
fn ascii_part(name: &str) -> String {
    name.chars().filter(char::is_ascii).collect()
}

/// Compares our zip reader with the `zip` crate on `data`.
pub fn zip(data: &[u8]) -> Outcome {
    let (ours, theirs) = match (ours_zip(data), theirs_zip(data)) {
        (Ok(o), Ok(t)) => (o, t),
        (Ok(_), Err(why)) => return Outcome::OnlyOurs(why),
        (Err(why), Ok(_)) => return Outcome::OnlyTheirs(why),
        (Err(_), Err(_)) => return Outcome::BothRefuse,
    };
    if ours.len() != theirs.len() {
        return Outcome::Differ(format!(
            "{} entries, the zip crate sees {}",
            ours.len(),
            theirs.len()
        ));
    }
    for (o, (t, crc_ok)) in ours.iter().zip(&theirs) {
        let mut differ = Vec::new();
        if ascii_part(&o.name) != ascii_part(&t.name) {
            differ.push(format!("name {:?} vs {:?}", o.name, t.name));
        }
        if o.deflated != t.deflated {
            differ.push(format!("deflated {} vs {}", o.deflated, t.deflated));
        }
        if (o.size, o.compressed) != (t.size, t.compressed) {
            differ.push(format!(
                "sizes {}/{} vs {}/{}",
                o.size, o.compressed, t.size, t.compressed
            ));
        }
        if o.data_start != t.data_start {
            differ.push(format!("data at {} vs {}", o.data_start, t.data_start));
        }
        // With a bad CRC the zip crate stops reading; whatever it read must still agree.
        let agree = if *crc_ok {
            o.data == t.data
        } else {
            o.data.starts_with(&t.data)
        };
        if !agree {
            differ.push(format!(
                "data of {} vs {} bytes differ",
                o.data.len(),
                t.data.len()
            ));
        }
        if !differ.is_empty() {
            return Outcome::Differ(format!("entry {}: {}", o.name, differ.join(", ")));
        }
    }
    Outcome::Same
}

/// A rendered dict key or set member as Python compares it: `True`/`False` as 1/0 and an
/// integral float (`f` + bits) as its int, so `{1, True, 1.0}` is one member on both sides
/// (which of them a reader keeps differs: Python keeps the first, serde-pickle the last).
fn member(rendered: String) -> String {
    match rendered.as_str() {
        "True" => return "1".into(),
        "False" => return "0".into(),
        _ => {}
    }
    if let Some(bits) = rendered
        .strip_prefix('f')
        .and_then(|h| u64::from_str_radix(h, 16).ok())
    {
        let x = f64::from_bits(bits);
        if x.fract() == 0.0 && x.abs() < 9.2e18 {
            return (x as i64).to_string();
        }
    }
    rendered
}

/// Deepest tree rendered (deeper plain-data pickles are compared as refused by both).
const MAX_RENDER_DEPTH: usize = 200;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sorted(mut items: Vec<String>, dedup: bool) -> Vec<String> {
    items.sort();
    if dedup {
        items.dedup();
    }
    items
}

/// Our tree as canonical text, or why it is not plain data.
fn render_ours(arena: &Arena, id: NodeId, depth: usize) -> Result<String, String> {
    if depth > MAX_RENDER_DEPTH {
        return Err("deeper than the comparison renders".into());
    }
    let r = |id: NodeId| render_ours(arena, id, depth + 1);
    Ok(match arena.get(id) {
        Node::None => "None".into(),
        Node::Bool(b) => if *b { "True" } else { "False" }.into(),
        Node::Int(i) => i.to_string(),
        Node::BigInt(le) => num_bigint::BigInt::from_signed_bytes_le(le).to_string(),
        Node::Float(f) => format!("f{:016x}", f.to_bits()),
        Node::Str(s) => format!("s{:?}", arena.text(*s)),
        Node::Bytes(b) => format!("b{}", hex(b)),
        Node::List(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|&i| r(i))
                .collect::<Result<Vec<_>, _>>()?
                .join(", ")
        ),
        Node::Tuple(items) => format!(
            "({})",
            arena
                .items(*items)
                .iter()
                .map(|&i| r(i))
                .collect::<Result<Vec<_>, _>>()?
                .join(", ")
        ),
        Node::Dict(pairs) => {
            // The machine keeps a repeated key's every SETITEM (the tree merges them later);
            // Python keeps the last value, as serde-pickle does.
            let mut merged: std::collections::BTreeMap<String, String> = Default::default();
            for &(k, v) in pairs {
                merged.insert(member(r(k)?), r(v)?);
            }
            let items = merged
                .into_iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            format!("{{{}}}", sorted(items, false).join(", "))
        }
        Node::Set(items) => format!(
            "set{{{}}}",
            sorted(
                items
                    .iter()
                    .map(|&i| r(i).map(member))
                    .collect::<Result<_, _>>()?,
                true
            )
            .join(", ")
        ),
        Node::FrozenSet(items) => format!(
            "frozenset{{{}}}",
            sorted(
                items
                    .iter()
                    .map(|&i| r(i).map(member))
                    .collect::<Result<_, _>>()?,
                true
            )
            .join(", ")
        ),
        other => return Err(format!("not plain data: {}", kind(other))),
    })
}

fn kind(node: &Node) -> &'static str {
    match node {
        Node::Global(_) => "a global",
        Node::ByteArray(_) => "a bytearray",
        _ => "a call or object",
    }
}

fn render_theirs(v: &serde_pickle::Value, depth: usize) -> Result<String, String> {
    use serde_pickle::Value as V;
    if depth > MAX_RENDER_DEPTH {
        return Err("deeper than the comparison renders".into());
    }
    let r = |v: &V| render_theirs(v, depth + 1);
    let all = |items: &[V]| items.iter().map(r).collect::<Result<Vec<_>, _>>();
    Ok(match v {
        V::None => "None".into(),
        V::Bool(b) => if *b { "True" } else { "False" }.into(),
        V::I64(i) => i.to_string(),
        V::Int(i) => i.to_string(),
        V::F64(f) => format!("f{:016x}", f.to_bits()),
        V::String(s) => format!("s{s:?}"),
        V::Bytes(b) => format!("b{}", hex(b)),
        V::List(items) => format!("[{}]", all(items)?.join(", ")),
        V::Tuple(items) => format!("({})", all(items)?.join(", ")),
        V::Dict(map) => {
            // Keys equal in Python (1, True, 1.0) are one key: the last value wins.
            let mut merged: std::collections::BTreeMap<String, String> = Default::default();
            for (k, v) in map {
                merged.insert(member(r(&k.clone().into_value())?), r(v)?);
            }
            let items = merged
                .into_iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            format!("{{{}}}", sorted(items, false).join(", "))
        }
        V::Set(items) => format!(
            "set{{{}}}",
            sorted(
                items
                    .iter()
                    .map(|k| r(&k.clone().into_value()).map(member))
                    .collect::<Result<_, _>>()?,
                true
            )
            .join(", ")
        ),
        V::FrozenSet(items) => format!(
            "frozenset{{{}}}",
            sorted(
                items
                    .iter()
                    .map(|k| r(&k.clone().into_value()).map(member))
                    .collect::<Result<_, _>>()?,
                true
            )
            .join(", ")
        ),
    })
}

/// Small caps, so that fuzzing stays fast; real pickles of the tests fit easily.
fn pickle_limits() -> PickleLimits {
    PickleLimits {
        max_nodes: 2_000_000,
        max_memo: 200_000,
        max_stack: 2_000_000,
    }
}

/// Our VM's reading of `data` as canonical text (`Err`: refused, or not plain data).
pub fn ours_pickle(data: &[u8]) -> Result<String, String> {
    let mut arena = Arena::default();
    let (root, _) = pickle::load_pickle(
        data,
        &mut arena,
        &mut pickle::NoHooks,
        pickle_limits(),
        StringEncoding::Utf8,
    )
    .map_err(|e| e.to_string())?;
    render_ours(&arena, root, 0)
}

/// serde-pickle's reading of `data` as canonical text.
pub fn theirs_pickle(data: &[u8]) -> Result<String, String> {
    let value =
        serde_pickle::value_from_slice(data, serde_pickle::DeOptions::new().decode_strings())
            .map_err(|e| e.to_string())?;
    render_theirs(&value, 0)
}

/// Compares our pickle VM with serde-pickle on `data`.
pub fn pickle(data: &[u8]) -> Outcome {
    match (ours_pickle(data), theirs_pickle(data)) {
        (Ok(o), Ok(t)) if o == t => Outcome::Same,
        // serde-pickle resolves memo references when the pickle ends (a rebound memo index
        // changes what earlier references read) and copies on DUP (a list appended to after a
        // DUP is empty in one place); Python, and we, share the one object.
        (Ok(_), Ok(_)) if pickle::shares_beyond_memo(data, pickle_limits()) => {
            Outcome::OracleWrong("a memo index is rebound or an object DUPed".into())
        }
        (Ok(o), Ok(t)) => Outcome::Differ(format!("ours {o:.300}\ntheirs {t:.300}")),
        (Ok(_), Err(why)) => Outcome::OnlyOurs(why),
        (Err(why), Ok(_)) => Outcome::OnlyTheirs(why),
        (Err(_), Err(_)) => Outcome::BothRefuse,
    }
}

/// Plans `data` whole and through `SparseBytes` rounds; `Err` describes a disagreement or
/// rounds that do not terminate.
pub fn sparse_plan(data: &[u8]) -> Result<(), String> {
    use ptload::source::SparseBytes;
    use ptload::ErrorKind;
    let mut loader = ptload::Loader::new();
    loader.limits(ptload::fuzzing::limits());
    let whole = loader.plan("f", data).map(|p| format!("{p:?}"));
    let mut sparse = SparseBytes::new(data.len() as u64);
    let mut rounds = 0;
    let partial = loop {
        match loader.plan("f", &sparse) {
            Err(e) => match e.kind() {
                ErrorKind::NeedBytes { ranges } => {
                    rounds += 1;
                    if rounds > 32 {
                        return Err(format!("{rounds} rounds and still asking for {ranges:?}"));
                    }
                    let before = sparse.loaded();
                    for &(offset, len) in ranges {
                        let end = offset.checked_add(len).filter(|&e| e <= data.len() as u64);
                        let Some(end) = end else {
                            return Err(format!("asked for {offset}+{len}, past the end"));
                        };
                        sparse.insert(offset, data[offset as usize..end as usize].to_vec());
                    }
                    if sparse.loaded() == before && !ranges.iter().any(|r| r.1 > 0) {
                        return Err("a round asked for nothing new".into());
                    }
                }
                _ => break Err(e.to_string()),
            },
            Ok(plan) => break Ok(format!("{plan:?}")),
        }
    };
    let whole = whole.map_err(|e| e.to_string());
    if whole == partial {
        Ok(())
    } else {
        Err(format!(
            "whole: {:.400}\nsparse after {rounds} rounds: {:.400}",
            format!("{whole:?}"),
            format!("{partial:?}")
        ))
    }
}
