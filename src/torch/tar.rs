//! The torch meaning of the tar format's members (spec §4.3), read before the main pickle.
//!
//! `storages`: pickle `N`; N × (pickle `(key, location, storage_class)`, int64 LE element
//! count, the bytes); then a pickle list of views `(target_key, root_key, offset, numel)`, each
//! a slice of its root. `tensors`: pickle `N`; N × (pickle `(key, storage_key, tensor_class)`,
//! int32 ndim, 4 padding bytes, ndim × int64 sizes, ndim × int64 strides, int64 offset), all
//! little-endian. The main pickle (`pickle` member) names both by decimal-string persistent ids.

use compact_str::ToCompactString;
use std::ops::Range;

use super::rebuild::view_bounds_error;
use super::storage::{External, StorageRef, StorageTable, StorageView};
use super::value::TensorMeta;
use super::{run_pickle, Dtype, Parsed, PickleOptions};
use crate::archive::{Method, Record};
use crate::error::{Error, ErrorKind, Result};
use crate::pickle::{Arena, Node, NodeId};

/// A reader of one member: pickles and little-endian numbers in sequence.
struct Member<'a> {
    data: &'a [u8],
    /// Absolute offset of `data` in the file.
    base: usize,
    pos: usize,
    name: &'static str,
    options: &'a PickleOptions,
}

impl<'a> Member<'a> {
    fn new(
        data: &'a [u8],
        range: Range<usize>,
        name: &'static str,
        options: &'a PickleOptions,
    ) -> Self {
        Member {
            base: range.start,
            data: &data[range],
            pos: 0,
            name,
            options,
        }
    }

    /// The next pickle, which must be a 3-tuple (the header of each storage or tensor entry).
    fn triple(&mut self, what: &str) -> Result<(Arena, Vec<NodeId>)> {
        let at = self.pos;
        let (arena, root) = self.pickle()?;
        match arena.tuple(root) {
            Some(fields) if fields.len() == 3 => {
                let fields = fields.to_vec();
                Ok((arena, fields))
            }
            // The offset of the pickle that is no 3-tuple, not of what follows it.
            _ => Err(self.error_at(at, format!("expected {what}"))),
        }
    }

    fn error(&self, message: impl Into<String>) -> Error {
        self.error_at(self.pos, message)
    }

    /// An error at `pos` of the member (its offset in the file).
    fn error_at(&self, pos: usize, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Record {
            record: self.name.to_owned(),
            offset: (self.base + pos) as u64,
            message: message.into(),
        })
    }

    fn pickle(&mut self) -> Result<(Arena, NodeId)> {
        let (arena, root, len, _) = run_pickle(
            &self.data[self.pos..],
            self.name,
            self.options,
            StorageTable::default(),
        )
        .map_err(|e| match e.kind() {
            ErrorKind::Pickle { error, .. } => self.error(error.to_string()),
            _ => e,
        })?;
        self.pos += len;
        Ok((arena, root))
    }

    fn bytes(&mut self, n: u64) -> Result<&'a [u8]> {
        let end = (self.pos as u64)
            .checked_add(n)
            .filter(|&e| e <= self.data.len() as u64);
        let Some(end) = end else {
            return Err(self.error(format!(
                "needs {n} bytes but the member ends first (truncated?)"
            )));
        };
        let out = &self.data[self.pos..end as usize];
        self.pos = end as usize;
        Ok(out)
    }

    fn i64(&mut self) -> Result<i64> {
        let b = self.bytes(8)?;
        Ok(i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    fn count(&mut self, what: &str) -> Result<u64> {
        let (arena, root) = self.pickle()?;
        match arena.get(root) {
            Node::Int(n) if *n >= 0 => Ok(*n as u64),
            _ => Err(self.error(format!("{what} count must be a non-negative int"))),
        }
    }
}

fn int(arena: &Arena, id: NodeId) -> Option<i64> {
    arena.int(id)
}

/// Reads the `storages` and `tensors` members, then the main pickle. Returns the parse and,
/// for each storage, the record holding its bytes.
pub fn parse(
    data: &[u8],
    storages: Range<usize>,
    tensors: Range<usize>,
    pickle: Range<usize>,
    options: &PickleOptions,
) -> Result<(Parsed, Vec<Record>)> {
    let mut table = StorageTable::default();
    let mut records: Vec<Record> = Vec::new();

    let mut m = Member::new(data, storages, "tar member 'storages'", options);
    let n = m.count("storage")?;
    for _ in 0..n {
        let (arena, fields) = m.triple("(key, location, storage type)")?;
        let key = int(&arena, fields[0]).ok_or_else(|| m.error("storage key must be an int"))?;
        let location = arena
            .str(fields[1])
            .ok_or_else(|| m.error("storage location must be a str"))?
            .to_owned();
        let dtype = arena
            .global(fields[2])
            .and_then(|(_, name)| Dtype::from_storage_class(name))
            .ok_or_else(|| {
                m.error(format!(
                    "unknown storage type ({})",
                    arena.kind_name(fields[2])
                ))
            })?;
        let count = m.i64()?;
        let count =
            u64::try_from(count).map_err(|_| m.error(format!("negative element count {count}")))?;
        let nbytes = count
            .checked_mul(dtype.element_size() as u64)
            .ok_or_else(|| m.error(format!("element count {count} overflows")))?;
        let start = m.base + m.pos;
        m.bytes(nbytes)?;
        let id = table
            .add(
                StorageRef {
                    key: key.to_compact_string(),
                    dtype,
                    numel: count,
                    location: super::storage::device_tag(&location),
                },
                options.max_storages,
            )
            .map_err(|e| m.error(e))?;
        records.push(Record {
            name: format!("storage {key}").into(),
            data_offset: start as u64,
            stored_len: nbytes,
            size: nbytes,
            method: Method::Stored,
        });
        table.by_id.insert(
            key.to_string(),
            External::Storage(StorageView {
                id,
                dtype,
                untyped: false,
            }),
        );
    }
    // Views: slices of a root storage, each its own storage over the same file bytes.
    let (arena, root) = m.pickle()?;
    let views = match arena.sequence(root) {
        Some(items) => items.to_vec(),
        None => return Err(m.error("the storage views must be a list")),
    };
    for view in views {
        let fields = arena
            .tuple(view)
            .filter(|f| f.len() == 4)
            .ok_or_else(|| m.error("a storage view must be (target, root, offset, numel)"))?;
        let [target, root_key, offset, numel] = [0, 1, 2, 3].map(|i| int(&arena, fields[i]));
        let (Some(target), Some(root_key), Some(offset), Some(numel)) =
            (target, root_key, offset, numel)
        else {
            return Err(m.error("a storage view holds non-int fields"));
        };
        let Some(External::Storage(root_view)) = table.by_id.get(&root_key.to_string()).cloned()
        else {
            return Err(m.error(format!(
                "storage view {target} names a missing root storage {root_key}"
            )));
        };
        let root_ref = table.storages[root_view.id].clone();
        let size = root_ref.dtype.element_size() as u64;
        let (Ok(offset), Ok(numel)) = (u64::try_from(offset), u64::try_from(numel)) else {
            return Err(m.error("a storage view has a negative offset or size"));
        };
        if offset
            .checked_add(numel)
            .is_none_or(|end| end > root_ref.numel)
        {
            return Err(m.error(format!(
                "storage view {target} ({numel} elements at {offset}) lies outside its root of {} elements",
                root_ref.numel
            )));
        }
        let root_record = records[root_view.id].clone();
        let id = table
            .add(
                StorageRef {
                    key: target.to_compact_string(),
                    dtype: root_ref.dtype,
                    numel,
                    location: root_ref.location.clone(),
                },
                options.max_storages,
            )
            .map_err(|e| m.error(e))?;
        records.push(Record {
            name: format!("storage {target} (view of {root_key})").into(),
            data_offset: root_record.data_offset + offset * size,
            stored_len: numel * size,
            size: numel * size,
            method: Method::Stored,
        });
        table.by_id.insert(
            target.to_string(),
            External::Storage(StorageView {
                id,
                dtype: root_ref.dtype,
                untyped: false,
            }),
        );
    }

    let mut m = Member::new(data, tensors, "tar member 'tensors'", options);
    let n = m.count("tensor")?;
    for _ in 0..n {
        let (arena, fields) = m.triple("(key, storage key, tensor type)")?;
        let key = int(&arena, fields[0]).ok_or_else(|| m.error("tensor key must be an int"))?;
        let storage_key =
            int(&arena, fields[1]).ok_or_else(|| m.error("storage key must be an int"))?;
        let Some(External::Storage(view)) = table.by_id.get(&storage_key.to_string()).cloned()
        else {
            return Err(m.error(format!(
                "tensor {key} names a missing storage {storage_key}"
            )));
        };
        let ndim_bytes = m.bytes(8)?;
        let ndim = i32::from_le_bytes(ndim_bytes[..4].try_into().unwrap_or([0; 4]));
        if ndim < 0 || ndim as usize > options.tree_limits.max_rank {
            return Err(m.error(format!("tensor {key} has {ndim} dimensions")));
        }
        let mut dims = Vec::with_capacity(2 * ndim as usize);
        for _ in 0..2 * ndim {
            let v = m.i64()?;
            dims.push(
                u64::try_from(v).map_err(|_| {
                    m.error(format!("tensor {key} has a negative size or stride {v}"))
                })?,
            );
        }
        let offset = m.i64()?;
        let offset = u64::try_from(offset)
            .map_err(|_| m.error(format!("tensor {key} has a negative offset")))?;
        let stride = dims.split_off(ndim as usize);
        let meta = TensorMeta::view(Some(view.id), view.dtype, dims, stride, offset);
        let storage_bytes = table.storages[view.id].nbytes().unwrap_or(u64::MAX);
        if let Some(message) = view_bounds_error(&meta, storage_bytes) {
            return Err(Error::invalid_tensor(format!(
                "tar tensor {key}: {message}"
            )));
        }
        table
            .by_id
            .insert(key.to_string(), External::Tensor(Box::new(meta)));
    }

    let parsed = super::parse_pickle_with(&data[pickle], "tar member 'pickle'", options, table)?;
    Ok((parsed, records))
}
