//! A distributed checkpoint's `.metadata`: a protocol-4 pickle of
//! `torch.distributed.checkpoint.metadata.Metadata`, read through the weights-only policy
//! widened by exactly the classes it names ([`METADATA_GLOBALS`]).
//!
//! | attribute | holds |
//! |---|---|
//! | `state_dict_metadata` | flattened key → `TensorStorageMetadata(properties, size, chunks)` or `BytesStorageMetadata()` |
//! | `TensorProperties` state | `(dtype, layout, requires_grad, memory_format, pin_memory)` |
//! | `ChunkStorageMetadata` | `offsets`, `sizes` (`torch.Size`): one block of the tensor |
//! | `planner_data` | flattened key → the tuple of keys/indices it had in the nested state dict |
//! | `storage_data` | `MetadataIndex(fqn, offset, index)` → `_StorageInfo(relative_path, offset, length)`: where each chunk's `torch.save` archive lies |
//!
//! Everything is checked here: chunks inside their tensor, no two overlapping, every element
//! covered, every chunk (and non-tensor value) found in `storage_data`, relative paths plain
//! file names. Nothing else in the pickle (`storage_meta`, `version`) is used.

use std::collections::HashMap;

use crate::error::{Error, ErrorKind, Result};
use crate::torch::{Dict, Dtype, Value};

/// Globals a `.metadata` pickle names, allowed on top of torch's weights-only allowlist when
/// (and only when) it is read. `pathlib` paths hold `StorageMeta.checkpoint_id`.
pub const METADATA_GLOBALS: &[&str] = &[
    "torch.distributed.checkpoint.metadata.Metadata",
    "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
    "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
    "torch.distributed.checkpoint.metadata.TensorProperties",
    "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
    "torch.distributed.checkpoint.metadata.MetadataIndex",
    "torch.distributed.checkpoint.metadata.StorageMeta",
    "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
];

const MODULE: &str = "torch.distributed.checkpoint.metadata";

/// Where one stored item (a `torch.save` archive) lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The file inside the folder (`__0_0.distcp`).
    pub file: String,
    /// Its first byte in that file.
    pub offset: u64,
    /// Its length in bytes.
    pub length: u64,
}

/// One block of a tensor, stored as its own item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Index of its first element in each dimension.
    pub offsets: Vec<u64>,
    /// Its size in each dimension.
    pub sizes: Vec<u64>,
    /// Where it is stored.
    pub item: Item,
}

/// What one flattened key holds.
#[derive(Clone, Debug, PartialEq)]
pub enum EntryKind {
    /// A tensor split into chunks.
    Tensor {
        /// Element type.
        dtype: Dtype,
        /// The full size.
        shape: Vec<u64>,
        /// Its blocks: disjoint, and together covering the whole tensor.
        chunks: Vec<Chunk>,
    },
    /// Any other value, `torch.save`d on its own.
    Bytes(Item),
}

/// One flattened key of the state dict.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The flattened key (`model.embed.weight`).
    pub fqn: String,
    /// The keys and indices it had in the nested state dict (`planner_data`); `[fqn]` when
    /// not given.
    pub path: Vec<Value>,
    /// What it holds.
    pub kind: EntryKind,
}

/// Every entry of a `.metadata`, in its order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    /// The entries.
    pub entries: Vec<Entry>,
}

fn bad(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::NotACheckpoint {
        reason: format!(
            "not a distributed checkpoint's .metadata: {}",
            message.into()
        ),
    })
}

/// The object's attributes, when it is an instance of `class`.
fn attrs<'v>(value: &'v Value, class: &str) -> Result<&'v Dict> {
    match value {
        Value::Object(o) if o.class == class => match &o.state {
            Some(Value::Dict(d)) => Ok(d),
            None => Ok(empty_dict()),
            _ => Err(bad(format!("{class} has an unexpected state"))),
        },
        other => Err(bad(format!(
            "expected a {class}, found {}",
            describe(other)
        ))),
    }
}

fn empty_dict() -> &'static Dict {
    static EMPTY: std::sync::OnceLock<Dict> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Dict::default)
}

fn describe(value: &Value) -> String {
    match value {
        Value::Object(o) => o.class.clone(),
        Value::Global(g) => g.clone(),
        Value::None => "None".into(),
        Value::Dict(_) => "a dict".into(),
        Value::Tuple(_) | Value::List(_) => "a sequence".into(),
        _ => "a plain value".into(),
    }
}

fn field<'v>(dict: &'v Dict, class: &str, name: &str) -> Result<&'v Value> {
    dict.get(name)
        .ok_or_else(|| bad(format!("{class} has no attribute '{name}'")))
}

fn int(value: &Value, what: &str) -> Result<u64> {
    match value {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        _ => Err(bad(format!("{what} is not a non-negative int"))),
    }
}

/// A `torch.Size` (a tuple of ints).
fn size(value: &Value, what: &str) -> Result<Vec<u64>> {
    match value {
        Value::Tuple(items) | Value::List(items) => items.iter().map(|v| int(v, what)).collect(),
        _ => Err(bad(format!("{what} is not a torch.Size"))),
    }
}

fn items(value: &Value, what: &str) -> Result<Vec<(Value, Value)>> {
    match value {
        Value::Dict(d) => Ok(d.items.clone()),
        _ => Err(bad(format!("{what} is not a dict"))),
    }
}

/// The dtype and layout check of a `TensorProperties`.
fn properties(value: &Value, fqn: &str) -> Result<Dtype> {
    let class = format!("{MODULE}.TensorProperties");
    let state = match value {
        Value::Object(o) if o.class == class => o.state.as_ref(),
        _ => None,
    };
    let (dtype, layout) = match state {
        // __getstate__: (dtype, layout, requires_grad, memory_format, pin_memory, ...)
        Some(Value::Tuple(fields)) if fields.len() >= 2 => (&fields[0], &fields[1]),
        Some(Value::Dict(d)) => (field(d, &class, "dtype")?, field(d, &class, "layout")?),
        _ => return Err(bad(format!("'{fqn}': TensorProperties expected"))),
    };
    let dtype = match dtype {
        Value::Global(g) => g.strip_prefix("torch.").and_then(Dtype::from_name),
        _ => None,
    }
    .ok_or_else(|| bad(format!("'{fqn}': the dtype is not a torch dtype")))?;
    match layout {
        Value::Global(g) if g == "torch.strided" => Ok(dtype),
        other => Err(Error::unsupported(format!(
            "'{fqn}' has layout {}: only strided tensors are read from distributed checkpoints",
            describe(other)
        ))),
    }
}

fn storage_info(value: &Value) -> Result<Item> {
    let class = "torch.distributed.checkpoint.filesystem._StorageInfo";
    let d = attrs(value, class)?;
    if let Some(t) = d.get("transform_descriptors") {
        if !matches!(t, Value::None)
            && !matches!(t, Value::List(v) | Value::Tuple(v) if v.is_empty())
        {
            return Err(Error::unsupported(
                "stored items with transforms (compressed or encrypted distributed checkpoints)",
            ));
        }
    }
    let file = match field(d, class, "relative_path")? {
        Value::Str(s) => s.to_string(),
        _ => return Err(bad("a relative_path is not a str")),
    };
    // A plain file name: a `.metadata` never sends reads outside its folder.
    if file.is_empty()
        || file == "."
        || file == ".."
        || file.contains(['/', '\\', '\0'])
        || file.contains(':')
    {
        return Err(bad(format!(
            "relative_path '{file}' is not a file name in the checkpoint's folder"
        )));
    }
    Ok(Item {
        file,
        offset: int(field(d, class, "offset")?, "an item offset")?,
        length: int(field(d, class, "length")?, "an item length")?,
    })
}

/// Reads a `.metadata` tree (as the pickle machine built it) into [`Metadata`], checking every
/// chunk layout.
pub fn parse(root: &Value) -> Result<Metadata> {
    let class = format!("{MODULE}.Metadata");
    let top = attrs(root, &class)?;
    // storage_data: (fqn, offsets or None) → item.
    let mut stored: HashMap<(String, Option<Vec<u64>>), Item> = HashMap::new();
    if let Some(storage) = top.get("storage_data") {
        for (index, info) in items(storage, "storage_data")? {
            let index_class = format!("{MODULE}.MetadataIndex");
            let d = attrs(&index, &index_class)?;
            let fqn = match field(d, &index_class, "fqn")? {
                Value::Str(s) => s.to_string(),
                _ => return Err(bad("a MetadataIndex fqn is not a str")),
            };
            let offset = match d.get("offset") {
                None | Some(Value::None) => None,
                Some(v) => Some(size(v, "a MetadataIndex offset")?),
            };
            stored.insert((fqn, offset), storage_info(&info)?);
        }
    }
    let metadata = items(
        field(top, &class, "state_dict_metadata")?,
        "state_dict_metadata",
    )?;
    let mut planner: HashMap<String, Vec<Value>> = HashMap::new();
    if let Some(Value::Dict(d)) = top.get("planner_data") {
        for (k, v) in &d.items {
            if let (Value::Str(k), Value::Tuple(path)) = (k, v) {
                if path_is_plain(path) {
                    check_indices(k, path, metadata.len())?;
                    planner.insert(k.to_string(), path.clone());
                }
            }
        }
    }
    let mut entries = Vec::new();
    for (key, md) in metadata {
        let fqn = match key {
            Value::Str(s) => s.into_string(),
            _ => return Err(bad("a state_dict_metadata key is not a str")),
        };
        let kind = match &md {
            Value::Object(o) if o.class == format!("{MODULE}.BytesStorageMetadata") => {
                let item = stored.remove(&(fqn.clone(), None)).ok_or_else(|| {
                    chunk_error(&fqn, "storage_data has no item for this value".into())
                })?;
                EntryKind::Bytes(item)
            }
            _ => tensor_entry(&fqn, &md, &mut stored)?,
        };
        let path = planner
            .get(&fqn)
            .cloned()
            .unwrap_or_else(|| vec![Value::Str(fqn.as_str().into())]);
        entries.push(Entry { fqn, path, kind });
    }
    Ok(Metadata { entries })
}

/// A list index in a nested path is below the number of entries: every element of a list in
/// the saved state dict is an entry of its own, so a larger index is no checkpoint torch wrote
/// (and the list it asks for could exhaust memory).
fn check_indices(fqn: &str, path: &[Value], entries: usize) -> Result<()> {
    for v in path {
        if let Value::Int(i) = v {
            if usize::try_from(*i).map_or(true, |i| i >= entries) {
                return Err(chunk_error(
                    fqn,
                    format!(
                        "planner_data puts it at list index {i}, but the checkpoint has {entries} entries"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn path_is_plain(path: &[Value]) -> bool {
    !path.is_empty()
        && path
            .iter()
            .all(|v| matches!(v, Value::Str(_)) || matches!(v, Value::Int(i) if *i >= 0))
}

pub(crate) fn chunk_error(fqn: &str, message: String) -> Error {
    Error::new(ErrorKind::Dcp {
        key: fqn.to_owned(),
        message,
    })
}

fn tensor_entry(
    fqn: &str,
    md: &Value,
    stored: &mut HashMap<(String, Option<Vec<u64>>), Item>,
) -> Result<EntryKind> {
    let class = format!("{MODULE}.TensorStorageMetadata");
    let d = attrs(md, &class)?;
    let dtype = properties(field(d, &class, "properties")?, fqn)?;
    let shape = size(field(d, &class, "size")?, "a tensor size")?;
    let chunk_class = format!("{MODULE}.ChunkStorageMetadata");
    let list = match field(d, &class, "chunks")? {
        Value::List(v) | Value::Tuple(v) => v,
        _ => return Err(bad(format!("'{fqn}': chunks is not a list"))),
    };
    let mut chunks = Vec::with_capacity(list.len());
    for chunk in list {
        let c = attrs(chunk, &chunk_class)?;
        let offsets = size(field(c, &chunk_class, "offsets")?, "chunk offsets")?;
        let sizes = size(field(c, &chunk_class, "sizes")?, "chunk sizes")?;
        let item = stored
            .get(&(fqn.to_owned(), Some(offsets.clone())))
            .cloned()
            .ok_or_else(|| {
                chunk_error(
                    fqn,
                    format!("storage_data has no item for the chunk at offsets {offsets:?}"),
                )
            })?;
        chunks.push(Chunk {
            offsets,
            sizes,
            item,
        });
    }
    super::chunks::check_layout(fqn, &shape, &chunks)?;
    Ok(EntryKind::Tensor {
        dtype,
        shape,
        chunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nested_path_is_keys_and_list_indices_below_the_entries() {
        let key = || Value::Str("layers".into());
        assert!(!path_is_plain(&[]));
        assert!(path_is_plain(&[key()]));
        assert!(path_is_plain(&[key(), Value::Int(0), key()]));
        assert!(!path_is_plain(&[key(), Value::Int(-1)]));
        assert!(!path_is_plain(&[key(), Value::Float(0.0)]));
        assert!(check_indices("w", &[key(), Value::Int(2)], 3).is_ok());
        let e = check_indices("w", &[key(), Value::Int(3)], 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "key 'w' of the distributed checkpoint: planner_data puts it at list index 3, but the checkpoint has 3 entries"
        );
    }
}
