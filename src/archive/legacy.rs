//! The legacy pickle stream (`_use_new_zipfile_serialization=False`, torch < 1.6; spec §4.1):
//! a concatenation of pickles and raw storage bytes.
//!
//! | part | content |
//! |---|---|
//! | pickle 1 | the magic number `0x1950A86A20F9469CFC6C` |
//! | pickle 2 | the protocol version, `1001` |
//! | pickle 3 | `sys_info` (read and ignored, as torch does) |
//! | pickle 4 | the object, storages as persistent ids (read by the torch layer) |
//! | pickle 5 | the storage keys, a list (or a tuple from the C++ writer), in data order |
//! | records | per key: int64 little-endian element count, then count × element size bytes |
//!
//! Records are unaligned and always little-endian. The element size of a key is that of the
//! dtype its first reference named, which only the torch layer knows: it passes them in.

use std::collections::HashMap;

use super::{Method, Record};
use crate::error::{Error, ErrorKind, Result};
use crate::pickle::value::bigint_to_decimal;
use crate::pickle::{self, Arena, Hooks, Node, NodeId, PickleLimits, StringEncoding};

/// The magic number, as decimal text.
const MAGIC: &str = "119547037146038801333356";

/// Hooks for the stream's plain-data pickles: no globals, no persistent ids.
struct PlainData;

impl Hooks for PlainData {
    fn find_class<'s>(
        &mut self,
        module: &'s str,
        name: &'s str,
    ) -> std::result::Result<(&'s str, &'s str), String> {
        Err(format!(
            "unexpected global {module}.{name} in the legacy stream header"
        ))
    }
    fn persistent_load(&mut self, _: &mut Arena, _: NodeId) -> std::result::Result<NodeId, String> {
        Err("unexpected persistent id in the legacy stream header".into())
    }
}

fn plain_pickle(data: &[u8], at: usize, what: &str) -> Result<(Arena, NodeId, usize)> {
    let mut arena = Arena::new();
    let limits = PickleLimits {
        max_nodes: 1_000_000,
        max_memo: 1_000_000,
        max_stack: 1_000_000,
    };
    let (root, len) = pickle::load_pickle(
        &data[at..],
        &mut arena,
        &mut PlainData,
        limits,
        StringEncoding::Utf8,
    )
    .map_err(|mut error| {
        error.offset += at as u64;
        Error::pickle(&format!("legacy stream {what}"), error)
    })?;
    Ok((arena, root, at + len))
}

fn is_magic(arena: &Arena, root: NodeId) -> bool {
    match arena.get(root) {
        Node::BigInt(bytes) => bigint_to_decimal(bytes) == MAGIC,
        _ => false,
    }
}

/// Reads the three header pickles; returns the offset of the main pickle.
pub fn read_header(data: &[u8]) -> Result<usize> {
    let not_legacy = || {
        Error::new(ErrorKind::NotACheckpoint {
            reason: "Invalid magic number; corrupt file? (neither a zip archive nor a torch pickle stream)".into(),
        })
    };
    let (arena, root, at) = plain_pickle(data, 0, "magic number").map_err(|_| not_legacy())?;
    if !is_magic(&arena, root) {
        return Err(not_legacy());
    }
    let (arena, root, at) = plain_pickle(data, at, "protocol version")?;
    match arena.get(root) {
        Node::Int(1001) => {}
        _ => {
            return Err(Error::new(ErrorKind::NotACheckpoint {
                reason: format!("Invalid protocol version: {}", describe(&arena, root)),
            }))
        }
    }
    let (_, _, at) = plain_pickle(data, at, "sys_info")?;
    Ok(at)
}

fn describe(arena: &Arena, id: NodeId) -> String {
    match arena.get(id) {
        Node::Int(i) => i.to_string(),
        Node::BigInt(b) => bigint_to_decimal(b),
        // Python's str(): no quotes (torch 2.15: "Invalid protocol version: 1001" for '1001').
        Node::Str(s) => arena.text(*s).to_owned(),
        _ => arena.kind_name(id).to_owned(),
    }
}

/// Reads the key list at `at` (just after the main pickle) and the records after it.
/// `element_sizes` gives, for every key the main pickle referenced, its element size and
/// element count. Returns one [`Record`] per key, named by the key.
pub fn read_records(
    data: &[u8],
    at: usize,
    element_sizes: &HashMap<String, (usize, u64)>,
) -> Result<HashMap<String, Record>> {
    let (arena, root, mut pos) = plain_pickle(data, at, "storage key list")?;
    let keys: Vec<String> = match arena.sequence(root) {
        Some(items) => items
            .iter()
            .map(|&k| match arena.get(k) {
                Node::Str(s) => Ok(arena.text(*s).to_owned()),
                Node::Bytes(b) => Ok(String::from_utf8_lossy(b).into_owned()),
                Node::Int(i) => Ok(i.to_string()),
                _ => Err(Error::unsupported(format!(
                    "a legacy storage key of type {}",
                    arena.kind_name(k)
                ))),
            })
            .collect::<Result<_>>()?,
        _ => {
            return Err(Error::new(ErrorKind::NotACheckpoint {
                reason: format!(
                    "the legacy stream's storage key list is a {}, not a list",
                    arena.kind_name(root)
                ),
            }))
        }
    };
    let mut records = HashMap::with_capacity(keys.len());
    for key in keys {
        let Some(&(size, numel)) = element_sizes.get(&key) else {
            return Err(Error::new(ErrorKind::Record {
                record: format!("storage {key}"),
                offset: pos as u64,
                message: "the key list names a storage that the pickle never references".into(),
            }));
        };
        let count_bytes = data
            .get(pos..pos + 8)
            .ok_or_else(|| truncated(&key, pos, 8, data.len()))?;
        let count = u64::from_le_bytes(count_bytes.try_into().unwrap_or([0; 8]));
        let start = pos + 8;
        if count != numel {
            return Err(Error::new(ErrorKind::Record {
                record: format!("storage {key}"),
                offset: pos as u64,
                message: format!(
                    "storage has wrong byte size: expected {} got {}",
                    numel.saturating_mul(size as u64),
                    count.saturating_mul(size as u64)
                ),
            }));
        }
        let nbytes = count
            .checked_mul(size as u64)
            .filter(|&n| n <= (data.len() - start) as u64);
        let Some(nbytes) = nbytes else {
            return Err(truncated(
                &key,
                start,
                count.saturating_mul(size as u64),
                data.len(),
            ));
        };
        records.insert(
            key.clone(),
            Record {
                name: format!("storage {key}").into(),
                data_offset: start as u64,
                stored_len: nbytes,
                size: nbytes,
                method: Method::Stored,
            },
        );
        pos = start + nbytes as usize;
    }
    Ok(records)
}

fn truncated(key: &str, at: usize, need: u64, len: usize) -> Error {
    Error::new(ErrorKind::Record {
        record: format!("storage {key}"),
        offset: at as u64,
        message: format!("needs {need} bytes but the file ends at byte {len} (truncated?)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_of_a_protocol_2_stream() {
        let data = with_sys_info(b"\x80\x02}q\x00.");
        assert_eq!(read_header(&data).unwrap(), data.len());
    }

    #[test]
    fn header_of_a_protocol_0_stream() {
        let mut data = b"L119547037146038801333356L\n.".to_vec();
        data.extend_from_slice(b"I1001\n.(dp0\n.");
        assert_eq!(read_header(&data).unwrap(), data.len());
    }

    #[test]
    fn wrong_magic_and_protocol() {
        let e = read_header(b"\x80\x02K\x05.").unwrap_err();
        assert!(
            e.to_string()
                .contains("Invalid magic number; corrupt file?"),
            "{e}"
        );
        // The version as torch 2.15 prints it: an int, a str (without quotes), an int past 64
        // bits (LONG1 of 2**64) in Python's decimal.
        for (version, want) in [
            (&b"\x80\x02M\xea\x03."[..], "1002"),
            (b"\x80\x02X\x04\x00\x00\x001001.", "1001"),
            (
                b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.",
                "18446744073709551616",
            ),
        ] {
            let mut data = MAGIC_PICKLE.to_vec();
            data.extend_from_slice(version);
            let e = read_header(&data).unwrap_err();
            assert!(
                e.to_string()
                    .ends_with(&format!("Invalid protocol version: {want}")),
                "{e}"
            );
        }
    }

    const MAGIC_PICKLE: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";

    /// The magic and version pickles, then `sys_info`.
    fn with_sys_info(sys_info: &[u8]) -> Vec<u8> {
        let mut data = MAGIC_PICKLE.to_vec();
        data.extend_from_slice(b"\x80\x02M\xe9\x03.");
        data.extend_from_slice(sys_info);
        data
    }

    #[test]
    fn header_pickles_hold_plain_data_only() {
        let e = read_header(&with_sys_info(b"\x80\x02cos\nsystem\n.")).unwrap_err();
        assert!(
            e.to_string()
                .contains("unexpected global os.system in the legacy stream header"),
            "{e}"
        );
        let e = read_header(&with_sys_info(b"\x80\x02K\x01Q.")).unwrap_err();
        assert!(
            e.to_string()
                .contains("unexpected persistent id in the legacy stream header"),
            "{e}"
        );
    }

    #[test]
    fn header_errors_give_offsets_in_the_file() {
        // sys_info starts at byte 21; its opcode 0xff is its third byte.
        let data = with_sys_info(b"\x80\x02\xff.");
        assert_eq!(MAGIC_PICKLE.len() + 6, 21);
        let e = read_header(&data).unwrap_err();
        assert_eq!(e.offset(), Some(23), "{e}");
        assert!(e.to_string().contains("legacy stream sys_info"), "{e}");
    }
}
