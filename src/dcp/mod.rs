//! Distributed checkpoints (`torch.distributed.checkpoint`, "DCP"): a folder with a `.metadata`
//! pickle and `__<rank>_<n>.distcp` files, each a sequence of items; every item is a
//! `torch.save` archive (the zip format) at an `(offset, length)` the metadata gives.
//!
//! A tensor is stored as chunks (DTensor shards: row or column blocks, a replicated copy,
//! uneven splits), each chunk one item holding a tensor of the chunk's size. Any other value
//! (`step`, a learning rate, a string) is one item of its own.
//!
//! [`Loader::open_dcp`] reads and checks the `.metadata` only ([`metadata`]): chunks must tile
//! every tensor, and every item must lie inside an existing file. Then
//!
//! - [`DcpFolder::load`] (what [`Loader::load`] does for a folder) reassembles every tensor at
//!   its full size, decodes the other values, and applies `map_location` with every storage
//!   tagged `cpu` (DCP stores no device);
//! - [`DcpFolder::select`] plans a sub-block of one tensor (a rank's slice): only the items of
//!   the chunks that overlap it are opened (their zip headers), and [`DcpFolder::read`] reads
//!   only the bytes inside the block ([`Selection::reads`] lists them).
//!
//! ```
//! # fn main() -> Result<(), ptload::Error> {
//! let folder = ptload::Loader::new().open_dcp("tests/fixtures/dcp/sharded")?;
//! // Rows 2..4 of a tensor split by rows over two ranks: 2 rows of 4 float32.
//! let rows = folder.select("layers.rows", &[2..4, 0..4])?;
//! assert_eq!(folder.read(&rows)?.len(), 2 * 4 * 4);
//! # Ok(()) }
//! ```

pub mod chunks;
pub mod metadata;

use std::collections::HashMap;
use std::ops::Range;

use self::chunks::{plan_copies, ChunkView, Copy};
use self::metadata::{chunk_error, Chunk, Entry, EntryKind, Item, Metadata, METADATA_GLOBALS};
use crate::archive::{ByteOrder, Format, Method, Record};
use crate::error::{Error, ErrorKind, Result};
use crate::loader::{Checkpoint, Loader};
use crate::location::Device;
use crate::plan::{catching_panics, Plan, PlannedStorage};
use crate::source::{Source, SparseBytes};
use crate::torch::{Dict, Dtype, StorageRef, TensorMeta, Value};

/// Random access to the files of a checkpoint folder (a directory, or files held elsewhere).
pub trait FolderReader: Send + Sync {
    /// The folder's name, used in errors.
    fn name(&self) -> &str;
    /// The length of `file` (a plain name inside the folder); an error when it is missing.
    fn len(&self, file: &str) -> Result<u64>;
    /// Fills `out` with the bytes of `file` at `offset`.
    fn read_at(&self, file: &str, offset: u64, out: &mut [u8]) -> Result<()>;
}

/// A directory on disk; each file is memory-mapped once, when first read.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
pub struct DirReader {
    dir: std::path::PathBuf,
    name: String,
    files: std::sync::Mutex<HashMap<String, Source>>,
}

#[cfg(not(target_arch = "wasm32"))]
impl DirReader {
    /// Reads the files of `dir`.
    pub fn new(dir: impl Into<std::path::PathBuf>) -> Self {
        let dir = dir.into();
        DirReader {
            name: dir.display().to_string(),
            dir,
            files: Default::default(),
        }
    }

    fn source(&self, file: &str) -> Result<Source> {
        let mut files = self
            .files
            .lock()
            .map_err(|_| Error::unsupported("a poisoned folder reader"))?;
        if let Some(source) = files.get(file) {
            return Ok(source.clone());
        }
        let source = Source::open(self.dir.join(file))?;
        files.insert(file.to_owned(), source.clone());
        Ok(source)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl FolderReader for DirReader {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self, file: &str) -> Result<u64> {
        Ok(self.source(file)?.bytes().len() as u64)
    }

    fn read_at(&self, file: &str, offset: u64, out: &mut [u8]) -> Result<()> {
        let source = self.source(file)?;
        let bytes = crate::source::ByteSource::get(&source, offset, out.len() as u64)
            .map_err(|e| e.in_file(source.name()))?;
        out.copy_from_slice(bytes);
        Ok(())
    }
}

/// An opened distributed checkpoint: its `.metadata` read and checked, no item read yet.
pub struct DcpFolder {
    reader: Box<dyn FolderReader>,
    loader: Loader,
    metadata: Metadata,
    /// Entry index by flattened key.
    index: HashMap<String, usize>,
    /// Every file the items name, in first-use order.
    files: Vec<String>,
}

impl std::fmt::Debug for DcpFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DcpFolder")
            .field("folder", &self.reader.name())
            .field("entries", &self.metadata.entries.len())
            .field("files", &self.files)
            .finish()
    }
}

/// A planned read of a sub-block of one tensor: which bytes of which files land where.
#[derive(Clone, Debug)]
pub struct Selection {
    /// The tensor's flattened key.
    pub key: String,
    /// Element type.
    pub dtype: Dtype,
    /// The block's shape.
    pub shape: Vec<u64>,
    files: Vec<String>,
    copies: Vec<Copy>,
    nbytes: u64,
}

impl Selection {
    /// The block's size in bytes (C-contiguous).
    pub fn nbytes(&self) -> u64 {
        self.nbytes
    }

    /// Every read [`DcpFolder::read`] will make: `(file, offset, length)`.
    pub fn reads(&self) -> impl Iterator<Item = (&str, u64, u64)> + '_ {
        self.copies
            .iter()
            .map(|c| (self.files[c.file].as_str(), c.offset, c.len))
    }
}

impl Loader {
    /// Opens the distributed checkpoint in folder `dir` (see [`crate::dcp`]): reads and
    /// checks its `.metadata`, nothing else.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dcp(&self, dir: impl AsRef<std::path::Path>) -> Result<DcpFolder> {
        self.open_dcp_reader(Box::new(DirReader::new(dir.as_ref())))
    }

    /// [`Loader::open_dcp`] over any [`FolderReader`].
    pub fn open_dcp_reader(&self, reader: Box<dyn FolderReader>) -> Result<DcpFolder> {
        let meta_name = format!("{}/.metadata", reader.name());
        let metadata = self
            .read_metadata(reader.as_ref())
            .map_err(|e| e.in_file(&meta_name))?;
        let mut files: Vec<String> = Vec::new();
        let mut lens: HashMap<String, u64> = HashMap::new();
        for entry in &metadata.entries {
            let items: Vec<(&Item, String)> = match &entry.kind {
                EntryKind::Bytes(item) => vec![(item, "the value".to_owned())],
                EntryKind::Tensor { chunks, .. } => chunks
                    .iter()
                    .map(|c| (&c.item, format!("the chunk at offsets {:?}", c.offsets)))
                    .collect(),
            };
            for (item, what) in items {
                let len = match lens.get(&item.file) {
                    Some(&len) => len,
                    None => {
                        let len = reader.len(&item.file).map_err(|e| {
                            chunk_error(
                                &entry.fqn,
                                format!(
                                    "{what} is stored in '{}', which cannot be read ({})",
                                    item.file,
                                    e.kind()
                                ),
                            )
                            .in_file(&meta_name)
                        })?;
                        files.push(item.file.clone());
                        lens.insert(item.file.clone(), len);
                        len
                    }
                };
                if item
                    .offset
                    .checked_add(item.length)
                    .is_none_or(|end| end > len)
                {
                    return Err(chunk_error(
                        &entry.fqn,
                        format!(
                            "{what} is stored at bytes {}..{} of '{}', past its end ({len} bytes; truncated?)",
                            item.offset,
                            item.offset.saturating_add(item.length),
                            item.file
                        ),
                    )
                    .in_file(&meta_name));
                }
            }
        }
        let index = metadata
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.fqn.clone(), i))
            .collect();
        Ok(DcpFolder {
            reader,
            loader: self.clone(),
            metadata,
            index,
            files,
        })
    }

    fn read_metadata(&self, reader: &dyn FolderReader) -> Result<Metadata> {
        let len = reader.len(".metadata")?;
        let max = self.limits.max_pickle_bytes;
        if len > max {
            return Err(Error::limit("max_pickle_bytes", len, max));
        }
        let mut bytes = vec![0u8; len as usize];
        reader.read_at(".metadata", 0, &mut bytes)?;
        let mut options = self.pickle_options();
        options.extra_globals = METADATA_GLOBALS;
        let parsed = catching_panics(".metadata", || {
            crate::torch::parse_pickle(&bytes, ".metadata", &options)
        })?;
        if !parsed.storages.is_empty() {
            return Err(Error::new(ErrorKind::NotACheckpoint {
                reason: "a distributed checkpoint's .metadata references storages".into(),
            }));
        }
        metadata::parse(&parsed.root)
    }
}

impl DcpFolder {
    /// The checked `.metadata`.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    fn entry(&self, key: &str) -> Result<&Entry> {
        self.index
            .get(key)
            .and_then(|&i| self.metadata.entries.get(i))
            .ok_or_else(|| chunk_error(key, "no such key in the .metadata".into()))
    }

    /// Plans reading the block `ranges` (one `start..end` per dimension) of tensor `key`:
    /// opens the items of the chunks that overlap it (their zip headers only) and lists the
    /// bytes inside the block.
    pub fn select(&self, key: &str, ranges: &[Range<u64>]) -> Result<Selection> {
        let entry = self.entry(key)?;
        let (dtype, shape, chunks) = match &entry.kind {
            EntryKind::Tensor {
                dtype,
                shape,
                chunks,
            } => (*dtype, shape, chunks),
            EntryKind::Bytes(_) => {
                return Err(chunk_error(key, "is not a tensor".into()));
            }
        };
        if ranges.len() != shape.len()
            || ranges
                .iter()
                .zip(shape)
                .any(|(r, &d)| r.start > r.end || r.end > d)
        {
            return Err(chunk_error(
                key,
                format!("the block {ranges:?} is not inside the tensor's size {shape:?}"),
            ));
        }
        let block: Vec<u64> = ranges.iter().map(|r| r.end - r.start).collect();
        let numel: u64 = block.iter().product();
        let nbytes = numel.saturating_mul(dtype.element_size() as u64);
        let max = self.loader.limits.max_tensor_bytes;
        if nbytes > max {
            return Err(Error::limit("max_tensor_bytes", nbytes, max));
        }
        let mut copies = Vec::new();
        if numel > 0 {
            for chunk in chunks {
                let touches = chunk
                    .offsets
                    .iter()
                    .zip(&chunk.sizes)
                    .zip(ranges)
                    .all(|((&o, &s), r)| r.start.max(o) < r.end.min(o + s));
                if !touches {
                    continue;
                }
                let view = self.open_chunk(key, dtype, chunk)?;
                let file = self
                    .files
                    .iter()
                    .position(|f| *f == chunk.item.file)
                    .ok_or_else(|| chunk_error(key, "a chunk's file was never opened".into()))?;
                plan_copies(ranges, chunk, &view, file, &mut copies);
            }
        }
        Ok(Selection {
            key: key.to_owned(),
            dtype,
            shape: block,
            files: self.files.clone(),
            copies,
            nbytes,
        })
    }

    /// Reads a planned block: its elements in C-contiguous order, host byte order.
    pub fn read(&self, selection: &Selection) -> Result<Vec<u8>> {
        let mut out = vec![0u8; selection.nbytes as usize];
        self.read_into(selection, &mut out)?;
        Ok(out)
    }

    /// [`DcpFolder::read`] into `out` (at least [`Selection::nbytes`] long).
    pub fn read_into(&self, selection: &Selection, out: &mut [u8]) -> Result<()> {
        for copy in &selection.copies {
            let file = &selection.files[copy.file];
            let dst = usize::try_from(copy.dst)
                .ok()
                .zip(usize::try_from(copy.dst + copy.len).ok())
                .and_then(|(start, end)| out.get_mut(start..end))
                .ok_or_else(|| {
                    Error::invalid_tensor(format!(
                        "a read of '{}' reaches byte {} of a {}-byte block",
                        selection.key,
                        copy.dst + copy.len,
                        selection.nbytes
                    ))
                })?;
            self.reader
                .read_at(file, copy.offset, dst)
                .map_err(|e| e.in_file(&format!("{}/{file}", self.reader.name())))?;
            if copy.swap_unit > 1 {
                dst.chunks_exact_mut(copy.swap_unit)
                    .for_each(|unit| unit.reverse());
            }
        }
        Ok(())
    }

    /// Plans one chunk's item (a `torch.save` archive) from its zip headers, reading only them.
    fn open_chunk(&self, key: &str, dtype: Dtype, chunk: &Chunk) -> Result<ChunkView> {
        let item = &chunk.item;
        let name = format!(
            "{}/{} (item at byte {})",
            self.reader.name(),
            item.file,
            item.offset
        );
        let mut loader = self.loader.clone();
        loader.map_location("cpu");
        let plan = self.plan_item(&loader, item, &name)?;
        let wrong = |what: String| chunk_error(key, what).in_file(&name);
        let meta = match &plan.root {
            Value::Tensor(meta) => meta,
            _ => return Err(wrong("the chunk's item does not hold a tensor".into())),
        };
        let storage = meta
            .storage
            .and_then(|id| plan.storages.get(id))
            .ok_or_else(|| wrong("the chunk's tensor has no storage".into()))?;
        let record = storage
            .record
            .as_ref()
            .ok_or_else(|| wrong("the chunk's tensor has no record".into()))?;
        if record.method != Method::Stored {
            return Err(Error::unsupported(format!(
                "chunk of '{key}': compressed records in distributed checkpoints"
            ))
            .in_file(&name));
        }
        if meta.dtype != dtype || meta.shape[..] != chunk.sizes[..] {
            return Err(wrong(format!(
                "the .metadata declares a {} chunk of size {:?}, the item holds a {} tensor of size {:?}",
                dtype, chunk.sizes, meta.dtype, meta.shape
            )));
        }
        if meta.conj || meta.neg || meta.quantizer.is_some() {
            return Err(Error::unsupported(format!(
                "chunk of '{key}': conjugated, negated or quantized chunks"
            ))
            .in_file(&name));
        }
        Ok(ChunkView {
            stride: meta.stride.to_vec(),
            storage_offset: meta.storage_offset,
            data_offset: item.offset + record.data_offset,
            element_size: dtype.element_size() as u64,
            swap_unit: if plan.byte_order == ByteOrder::native() {
                1
            } else {
                storage.swap_unit
            },
        })
    }

    /// Plans an item, reading only the byte ranges the planner asks for.
    fn plan_item(&self, loader: &Loader, item: &Item, name: &str) -> Result<Plan> {
        let mut bytes = SparseBytes::new(item.length);
        // A zip needs a few rounds: head, end records, directory, headers and pickles.
        for _ in 0..16 {
            match loader.plan(name, &bytes) {
                Err(e) => match e.kind() {
                    ErrorKind::NeedBytes { ranges } => {
                        for &(offset, len) in ranges {
                            let mut buf = vec![0u8; len as usize];
                            self.reader
                                .read_at(&item.file, item.offset + offset, &mut buf)
                                .map_err(|e| e.in_file(name))?;
                            bytes.insert(offset, buf);
                        }
                    }
                    _ => return Err(e),
                },
                ok => return ok,
            }
        }
        Err(Error::unsupported("an item whose headers never end").in_file(name))
    }

    /// Reassembles every tensor at its full size and decodes every other value: one
    /// checkpoint whose tree is the nested state dict, with `map_location` applied (every
    /// storage tagged `cpu`). The tensors are assembled in host memory, then placed as any
    /// checkpoint's storages are (borrowed there for the CPU, handed to a backend otherwise).
    pub fn load(&self) -> Result<Checkpoint> {
        let meta_name = format!("{}/.metadata", self.reader.name());
        let tensors: Vec<(&Entry, StorageRef)> = self
            .metadata
            .entries
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::Tensor { dtype, shape, .. } => Some((
                    e,
                    StorageRef {
                        key: e.fqn.as_str().into(),
                        dtype: *dtype,
                        numel: shape.iter().product(),
                        location: "cpu".into(),
                    },
                )),
                EntryKind::Bytes(_) => None,
            })
            .collect();
        let refs: Vec<StorageRef> = tensors.iter().map(|(_, r)| r.clone()).collect();
        let devices = self
            .loader
            .decide_devices(&refs)
            .map_err(|e| e.in_file(&meta_name))?;
        // Every tensor placed anywhere but meta, at 64-byte aligned offsets of one buffer.
        let mut storages = Vec::with_capacity(tensors.len());
        let mut selections = Vec::new();
        let mut end = 0u64;
        for ((entry, storage), device) in tensors.iter().zip(devices) {
            let record = match device {
                Device::Meta => None,
                _ => {
                    let full: Vec<Range<u64>> = tensor_shape(entry).iter().map(|&d| 0..d).collect();
                    let selection = self.select(&entry.fqn, &full)?;
                    let offset = end.next_multiple_of(64);
                    end = offset + selection.nbytes();
                    let record = Record {
                        name: entry.fqn.as_str().into(),
                        data_offset: offset,
                        stored_len: selection.nbytes(),
                        size: selection.nbytes(),
                        method: Method::Stored,
                    };
                    selections.push((offset, selection));
                    Some(record)
                }
            };
            storages.push(PlannedStorage {
                key: storage.key.clone(),
                dtype: storage.dtype,
                numel: storage.numel,
                location: storage.location.clone(),
                device,
                record,
                swap_unit: 1,
            });
        }
        let mut buffer = vec![
            0u8;
            usize::try_from(end).map_err(|_| Error::limit(
                "max_tensor_bytes",
                end,
                usize::MAX as u64
            ))?
        ];
        for (offset, selection) in &selections {
            self.read_into(selection, &mut buffer[*offset as usize..])?;
        }
        // The tree, in entry order; values' own storages (if any) come after the tensors'.
        let mut root = Value::Dict(Box::new(Dict {
            class: "dict".into(),
            ..Dict::default()
        }));
        let mut extra = Vec::new();
        let mut next_tensor = 0;
        for entry in &self.metadata.entries {
            let value = match &entry.kind {
                EntryKind::Tensor { dtype, shape, .. } => {
                    next_tensor += 1;
                    Value::Tensor(Box::new(TensorMeta::view(
                        Some(next_tensor - 1),
                        *dtype,
                        shape.clone(),
                        contiguous_strides(shape),
                        0,
                    )))
                }
                EntryKind::Bytes(item) => {
                    let mut ckpt = self.load_value(item)?;
                    let mut value = std::mem::replace(&mut ckpt.root, Value::None);
                    value.shift_storage_ids(tensors.len() + extra.len());
                    extra.append(&mut ckpt.storages);
                    value
                }
            };
            insert(&mut root, &entry.path, value);
        }
        let plan = Plan {
            format: Format::Dcp,
            byte_order: ByteOrder::native(),
            root,
            constants: None,
            storages,
            max_tensor_bytes: self.loader.limits.max_tensor_bytes,
        };
        let source = Source::from_bytes(self.reader.name().to_owned(), buffer);
        let mut ckpt = self.loader.place(plan, &source)?;
        ckpt.storages.extend(extra);
        Ok(ckpt)
    }

    /// A non-tensor value: its item loaded as any checkpoint.
    fn load_value(&self, item: &Item) -> Result<Checkpoint> {
        let name = format!(
            "{}/{} (item at byte {})",
            self.reader.name(),
            item.file,
            item.offset
        );
        let mut bytes = vec![0u8; item.length as usize];
        self.reader
            .read_at(&item.file, item.offset, &mut bytes)
            .map_err(|e| e.in_file(&name))?;
        self.loader.load_source(Source::from_bytes(name, bytes))
    }
}

fn tensor_shape(entry: &Entry) -> &[u64] {
    match &entry.kind {
        EntryKind::Tensor { shape, .. } => shape,
        EntryKind::Bytes(_) => &[],
    }
}

/// C-contiguous strides of `shape`.
fn contiguous_strides(shape: &[u64]) -> Vec<u64> {
    let mut stride = vec![1u64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        stride[d] = stride[d + 1].saturating_mul(shape[d + 1]);
    }
    stride
}

/// Puts `value` at `path` in a nested state dict, as torch's `unflatten_state_dict` does: a
/// `str` key makes a dict, an index a list (padded with `None`).
fn insert(root: &mut Value, path: &[Value], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = root;
    for (i, key) in parents.iter().enumerate() {
        let next_is_index = matches!(path[i + 1], Value::Int(_));
        let empty = if next_is_index {
            Value::List(Vec::new())
        } else {
            Value::Dict(Box::new(Dict {
                class: "dict".into(),
                ..Dict::default()
            }))
        };
        node = child(node, key, empty);
    }
    *child(node, last, Value::None) = value;
}

/// The child of `node` at `key`, created as `empty` when absent.
fn child<'v>(node: &'v mut Value, key: &Value, empty: Value) -> &'v mut Value {
    match (node, key) {
        (Value::List(items), Value::Int(i)) => {
            let i = *i as usize;
            if items.len() <= i {
                items.resize(i + 1, Value::None);
            }
            if matches!(items[i], Value::None) {
                items[i] = empty;
            }
            &mut items[i]
        }
        (node, key) => {
            if !matches!(node, Value::Dict(_)) {
                *node = Value::Dict(Box::default());
            }
            match node {
                Value::Dict(dict) => {
                    let at = match dict.items.iter().position(|(k, _)| k == key) {
                        Some(at) => at,
                        None => {
                            dict.items.push((key.clone(), empty));
                            dict.items.len() - 1
                        }
                    };
                    &mut dict.items[at].1
                }
                other => other,
            }
        }
    }
}
