//! The public loading API: [`Loader`] (options), [`Checkpoint`] (the result), [`Tensor`] (a view
//! onto a placed storage), and [`Limits`].
//!
//! A load runs the layers in order: sniff and open the container, read its pickle into a tree
//! (no tensor bytes touched), decide every storage's device from `map_location` (all errors
//! before any byte is read), then place each storage exactly once.

use crate::archive::{self, ByteOrder, Format, Method, Sniffed, ZipDirectory};
use crate::error::{Error, ErrorKind, Result};
use crate::location::{Device, DeviceSupport, MapLocation, StorageInfo};
use crate::pickle::{PickleLimits, StringEncoding};
use crate::place::{cpu::CpuPlacer, Placer, RecordBytes, StorageData};
use crate::source::{ByteSource, Source};
use crate::torch::{self, rebuild::TreeLimits, Dtype, StorageRef, TensorMeta, Value};

/// Safety limits. Each guards time or memory against a hostile file; raise one (or use
/// [`Limits::none`]) for a trusted file that exceeds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest pickle (`data.pkl`) read, in bytes. Real pickles are kilobytes to a few MB.
    pub max_pickle_bytes: u64,
    /// Largest record inflated from a deflated entry, in bytes: a zip bomb is refused before
    /// anything is allocated.
    pub max_record_bytes: u64,
    /// Most objects the pickle may create.
    pub max_pickle_nodes: u64,
    /// Most distinct memo slots.
    pub max_memo_entries: u64,
    /// Deepest container nesting in the tree (Python's own pickler stops near 1000).
    pub max_depth: u64,
    /// Most values in the tree; a value shared through the memo counts each time it is reached,
    /// so a "memo bomb" is stopped here.
    pub max_values: u64,
    /// Most storages in one checkpoint.
    pub max_storages: u64,
    /// Most dimensions of one tensor.
    pub max_rank: u64,
    /// Largest tensor materialized by [`Tensor::to_contiguous_bytes`], in bytes (an expanded
    /// view can describe far more bytes than its storage holds).
    pub max_tensor_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pickle_bytes: 1 << 30,
            max_record_bytes: 64 << 30,
            max_pickle_nodes: 50_000_000,
            max_memo_entries: 10_000_000,
            max_depth: 1000,
            max_values: 5_000_000,
            max_storages: 10_000_000,
            max_rank: 64,
            max_tensor_bytes: if cfg!(target_pointer_width = "32") {
                1 << 31
            } else {
                64 << 30
            },
        }
    }
}

impl Limits {
    /// No limits beyond what the address space allows.
    pub fn none() -> Self {
        Limits {
            max_pickle_bytes: u64::MAX,
            max_record_bytes: u64::MAX,
            max_pickle_nodes: u32::MAX as u64,
            max_memo_entries: u64::MAX,
            max_depth: 100_000,
            max_values: u64::MAX,
            max_storages: u64::MAX,
            max_rank: u64::MAX,
            max_tensor_bytes: u64::MAX,
        }
    }
}

fn cap(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Options for loading checkpoints: the builder behind [`crate::load`].
///
/// ```
/// # fn main() -> Result<(), ptload::Error> {
/// let bytes = std::fs::read("examples/tiny_convnet.pt").unwrap();
/// let ckpt = ptload::Loader::new().map_location("cpu").load_bytes(bytes)?;
/// assert!(ckpt.tensors().count() > 0);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Loader {
    weights_only: bool,
    map_location: MapLocation,
    limits: Limits,
    encoding: StringEncoding,
    support: DeviceSupport,
}

impl Default for Loader {
    fn default() -> Self {
        Loader {
            weights_only: true,
            map_location: MapLocation::Default,
            limits: Limits::default(),
            encoding: StringEncoding::Utf8,
            support: DeviceSupport::default(),
        }
    }
}

impl Loader {
    /// Default options: weights-only, storages where their tags say, default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to refuse globals outside torch's weights-only allowlist (default `true`, as torch
    /// ≥ 2.6). With `false`, such globals load as inert [`crate::Object`]s; nothing in a file is
    /// ever executed either way.
    ///
    /// ```
    /// # let bytes = std::fs::read("examples/tiny_convnet.pt").unwrap();
    /// let ckpt = ptload::Loader::new().weights_only(false).load_bytes(bytes).unwrap();
    /// ```
    pub fn weights_only(&mut self, yes: bool) -> &mut Self {
        self.weights_only = yes;
        self
    }

    /// torch.load's `map_location`: a device string (`"cpu"`, `"cuda:1"`, `"meta"`), a
    /// [`Device`], a dict ([`MapLocation::map`]) or a callback ([`MapLocation::with`]).
    ///
    /// ```
    /// # let bytes = std::fs::read("examples/tiny_convnet.pt").unwrap();
    /// let ckpt = ptload::Loader::new().map_location("meta").load_bytes(bytes).unwrap();
    /// assert!(ckpt.tensors().all(|(_, t)| t.device() == ptload::Device::Meta));
    /// ```
    pub fn map_location(&mut self, map_location: impl Into<MapLocation>) -> &mut Self {
        self.map_location = map_location.into();
        self
    }

    /// Safety limits.
    pub fn limits(&mut self, limits: Limits) -> &mut Self {
        self.limits = limits;
        self
    }

    /// How Python 2 strings decode (torch.load's `encoding`): UTF-8 by default. A string the
    /// encoding cannot decode fails the load with Python's `UnicodeDecodeError` text.
    ///
    /// ```
    /// use ptload::{Loader, StringEncoding};
    /// // A Python 2 pickle whose dict key is b"caf\xe9" (latin-1, not valid UTF-8 or ASCII).
    /// let path = "tests/fixtures/py2/latin1.pt";
    /// let e = Loader::new().encoding(StringEncoding::Ascii).load(path).unwrap_err();
    /// assert!(e.to_string().contains("'ascii' codec can't decode byte 0xe9 in position 3"));
    /// let ckpt = Loader::new().encoding("latin1".parse().unwrap()).load(path).unwrap();
    /// assert!(ckpt.tensor("café").is_some());
    /// ```
    pub fn encoding(&mut self, encoding: StringEncoding) -> &mut Self {
        self.encoding = encoding;
        self
    }

    /// Loads a checkpoint file (memory-mapped: CPU storages borrow from the map).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(&self, path: impl AsRef<std::path::Path>) -> Result<Checkpoint> {
        let source = Source::open(path)?;
        self.load_source(source)
    }

    /// Loads a checkpoint from bytes the caller hands over (`Vec<u8>`, `Arc<[u8]>`,
    /// `&'static [u8]`, …); CPU storages borrow from them.
    pub fn load_bytes(
        &self,
        bytes: impl AsRef<[u8]> + Send + Sync + 'static,
    ) -> Result<Checkpoint> {
        self.load_source(Source::from_bytes("<memory>", bytes))
    }

    /// Loads a checkpoint from a [`Source`].
    pub fn load_source(&self, source: Source) -> Result<Checkpoint> {
        let name = source.name().to_owned();
        self.load_inner(source).map_err(|e| e.in_file(&name))
    }

    #[doc(hidden)]
    pub fn fuzz_pickle_options(&self) -> torch::PickleOptions {
        let mut loader = self.clone();
        loader.limits = crate::fuzzing::limits();
        loader.pickle_options()
    }

    fn pickle_options(&self) -> torch::PickleOptions {
        torch::PickleOptions {
            weights_only: self.weights_only,
            encoding: self.encoding,
            pickle_limits: PickleLimits {
                max_nodes: cap(self.limits.max_pickle_nodes).min(u32::MAX as usize - 1),
                max_memo: cap(self.limits.max_memo_entries),
                max_stack: cap(self.limits.max_pickle_nodes),
            },
            tree_limits: TreeLimits {
                max_depth: cap(self.limits.max_depth),
                max_values: self.limits.max_values,
                max_rank: cap(self.limits.max_rank),
            },
            max_storages: cap(self.limits.max_storages),
            torchscript: false,
        }
    }

    /// Plans a load: reads the container's directory and pickles from `bytes`, decides every
    /// storage's device, and says where each storage's bytes lie — reading no tensor byte.
    ///
    /// `bytes` may be partial ([`crate::source::SparseBytes`]): for zip files only the tail,
    /// the central directory, the local headers and the small records are needed; each missing
    /// range comes back as [`ErrorKind::NeedBytes`], to be loaded before trying again. Legacy
    /// and tar files need all their bytes.
    pub fn plan(&self, name: &str, bytes: &(impl ByteSource + ?Sized)) -> Result<Plan> {
        self.plan_inner(bytes).map_err(|e| e.in_file(name))
    }

    fn plan_inner(&self, bytes: &(impl ByteSource + ?Sized)) -> Result<Plan> {
        let len = bytes.len();
        if len == 0 {
            return Err(Error::new(ErrorKind::NotACheckpoint {
                reason: "the file is empty".into(),
            }));
        }
        let head = bytes.get(0, len.min(262))?;
        // Files that are no torch archive say what they are (archive/detect.rs).
        match archive::sniff(head) {
            Sniffed::Zip => self
                .plan_zip(bytes)
                .map_err(|e| archive::detect::zip_error(bytes, e)),
            Sniffed::Tar => {
                let data = bytes.get(0, len)?;
                self.plan_tar(data)
                    .map_err(|e| archive::detect::tar_error(data, e))
            }
            Sniffed::Pickle => {
                archive::detect::check(bytes, head)?;
                self.plan_legacy(bytes.get(0, len)?)
            }
        }
    }

    fn load_inner(&self, source: Source) -> Result<Checkpoint> {
        let plan = self.plan_inner(&source)?;
        self.place(plan, &source)
    }

    fn plan_zip(&self, bytes: &(impl ByteSource + ?Sized)) -> Result<Plan> {
        let dir = ZipDirectory::parse(bytes)?;
        let torchscript = dir.record("constants.pkl").is_some();
        // The small records, all at once (a partial source loads them in one round).
        let small: Vec<&archive::Record> = [
            "version",
            ".data/version",
            "byteorder",
            "data.pkl",
            "constants.pkl",
        ]
        .iter()
        .filter_map(|name| dir.record(name))
        .collect();
        for record in &small {
            if record.stored_len > self.limits.max_pickle_bytes {
                return Err(Error::limit(
                    "max_pickle_bytes",
                    record.stored_len,
                    self.limits.max_pickle_bytes,
                ));
            }
        }
        require_all(bytes, small.iter().map(|r| (r.data_offset, r.stored_len)))?;
        dir.version(bytes, 64)?;
        let byte_order = dir.byte_order(bytes)?;
        let mut options = self.pickle_options();
        options.torchscript = torchscript;
        let mut parsed = self.parse_record(&dir, bytes, "data.pkl", &options)?;
        // TorchScript: tensors of constants.pkl live under `constants/`; their storages follow
        // data.pkl's, and the constants tuple is listed after the module tree.
        let data_storages = parsed.storages.len();
        let mut constants = None;
        if torchscript {
            let mut extra = self.parse_record(&dir, bytes, "constants.pkl", &options)?;
            extra.root.shift_storage_ids(data_storages);
            parsed.storages.append(&mut extra.storages);
            constants = Some(extra.root);
        }
        let format = if torchscript {
            Format::TorchScript
        } else {
            Format::Zip
        };
        self.finish_plan(parsed, constants, format, byte_order, |id, storage| {
            let folder = if id < data_storages {
                "data"
            } else {
                "constants"
            };
            Ok(dir.require(&format!("{folder}/{}", storage.key))?.clone())
        })
    }

    fn plan_tar(&self, data: &[u8]) -> Result<Plan> {
        let members = archive::tar::members(data)?;
        let member = |name: &str| {
            members.get(name).cloned().ok_or_else(|| {
                Error::new(ErrorKind::MissingRecord {
                    name: format!("tar member '{name}'"),
                })
            })
        };
        let (storages, tensors, pickle) =
            (member("storages")?, member("tensors")?, member("pickle")?);
        let options = self.pickle_options();
        let (parsed, records) = on_big_stack("a tar checkpoint", || {
            torch::tar::parse(data, storages, tensors, pickle, &options)
        })?;
        self.finish_plan(parsed, None, Format::Tar, ByteOrder::Little, |id, _| {
            Ok(records[id].clone())
        })
    }

    fn plan_legacy(&self, data: &[u8]) -> Result<Plan> {
        let main = archive::legacy::read_header(data)?;
        let pickle = &data[main..];
        let parsed = on_big_stack("legacy stream pickle", || {
            torch::parse_pickle(pickle, "legacy stream pickle", &self.pickle_options())
        })?;
        let sizes = parsed
            .storages
            .iter()
            .map(|s| (s.key.clone(), (s.dtype.element_size(), s.numel)))
            .collect();
        let records = archive::legacy::read_records(data, main + parsed.end, &sizes)?;
        self.finish_plan(
            parsed,
            None,
            Format::Legacy,
            ByteOrder::Little,
            |_, storage| {
                records.get(&storage.key).cloned().ok_or_else(|| {
                    Error::new(ErrorKind::MissingRecord {
                        name: format!("storage {} (not in the key list)", storage.key),
                    })
                })
            },
        )
    }

    /// Reads one pickle record of a zip archive into a tree.
    fn parse_record(
        &self,
        dir: &ZipDirectory,
        bytes: &(impl ByteSource + ?Sized),
        name: &str,
        options: &torch::PickleOptions,
    ) -> Result<torch::Parsed> {
        let record = dir.require(name)?;
        if record.size > self.limits.max_pickle_bytes {
            return Err(Error::limit(
                "max_pickle_bytes",
                record.size,
                self.limits.max_pickle_bytes,
            ));
        }
        let pickle = record.read(bytes, self.limits.max_pickle_bytes)?;
        on_big_stack(&record.name, || {
            torch::parse_pickle(&pickle, &record.name, options)
        })
    }

    /// Decides every storage's device (all errors before any byte is read), then finds the
    /// record of each storage that needs bytes.
    fn finish_plan(
        &self,
        parsed: torch::Parsed,
        constants: Option<Value>,
        format: Format,
        byte_order: ByteOrder,
        record_of: impl Fn(usize, &StorageRef) -> Result<archive::Record>,
    ) -> Result<Plan> {
        let devices = self.decide_devices(&parsed.storages)?;
        let roots: Vec<&Value> = std::iter::once(&parsed.root)
            .chain(constants.as_ref())
            .collect();
        let swap_units = swap_units(&roots, &parsed.storages);
        let mut storages = Vec::with_capacity(parsed.storages.len());
        for (id, (storage, device)) in parsed.storages.into_iter().zip(devices).enumerate() {
            let record = match device {
                Device::Meta => None,
                _ => {
                    let record = record_of(id, &storage)?;
                    // Every view was checked against the declared size; the bytes must match it.
                    if Some(record.size) != storage.nbytes() {
                        return Err(Error::new(ErrorKind::StorageSize {
                            record: record.name.clone(),
                            offset: record.data_offset,
                            numel: storage.numel,
                            dtype: storage.dtype,
                            actual: record.size,
                        }));
                    }
                    Some(record)
                }
            };
            storages.push(PlannedStorage {
                key: storage.key,
                dtype: storage.dtype,
                numel: storage.numel,
                location: storage.location,
                device,
                record,
                swap_unit: swap_units[id],
            });
        }
        Ok(Plan {
            format,
            byte_order,
            root: parsed.root,
            constants,
            storages,
            max_tensor_bytes: self.limits.max_tensor_bytes,
        })
    }

    /// Places every storage of a plan, reading each record exactly once from `source`.
    pub fn place(&self, plan: Plan, source: &Source) -> Result<Checkpoint> {
        let data = source.bytes();
        let mut cpu = CpuPlacer;
        let mut storages = Vec::with_capacity(plan.storages.len());
        for planned in plan.storages {
            let data = match (&planned.device, &planned.record) {
                (Device::Meta, _) | (_, None) => StorageData::Meta,
                (_, Some(record)) => {
                    let bytes = record.read(data, self.limits.max_record_bytes)?;
                    let request = RecordBytes {
                        dtype: planned.dtype,
                        bytes,
                        source_offset: (record.method == Method::Stored)
                            .then_some(record.data_offset as usize),
                        byte_order: plan.byte_order,
                        swap_unit: planned.swap_unit,
                    };
                    cpu.place(source.shared(), request)?
                }
            };
            storages.push(Storage {
                key: planned.key,
                dtype: planned.dtype,
                numel: planned.numel,
                location: planned.location,
                device: planned.device,
                data,
            });
        }
        Ok(Checkpoint {
            root: plan.root,
            constants: plan.constants,
            storages,
            format: plan.format,
            byte_order: plan.byte_order,
            max_tensor_bytes: plan.max_tensor_bytes,
        })
    }

    /// Every storage's device, decided (and checked to exist) before any byte is read.
    fn decide_devices(&self, storages: &[StorageRef]) -> Result<Vec<Device>> {
        if self.map_location.is_meta() {
            return Ok(vec![Device::Meta; storages.len()]);
        }
        storages
            .iter()
            .map(|s| {
                let info = StorageInfo {
                    key: s.key.clone(),
                    dtype: s.dtype,
                    nbytes: s.nbytes().unwrap_or(u64::MAX),
                    location: s.location.clone(),
                };
                let device = self.map_location.resolve(&info)?;
                let device = self.support.check(&device)?;
                match device {
                    Device::Cpu | Device::Meta => Ok(device),
                    other => Err(Error::new(ErrorKind::Location {
                        message: format!("no placer for device {other} in this build"),
                    })),
                }
            })
            .collect()
    }
}

/// Stack for reading a pickle: the tree is built recursively, up to [`Limits::max_depth`] deep
/// (1000 by default, the depth Python's own pickler reaches), which needs more than the 2 MiB a
/// spawned thread gets by default. Only the touched pages are ever committed.
#[cfg(not(target_arch = "wasm32"))]
const PARSE_STACK_BYTES: usize = 256 << 20;

/// Runs `f` (pickle reading) on a thread with a large stack (native targets). A panic there,
/// which would be a bug, becomes an error rather than taking the caller down.
#[cfg(not(target_arch = "wasm32"))]
fn on_big_stack<T: Send>(what: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("ptload-parse".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, f)?;
        worker.join().unwrap_or_else(|_| {
            Err(Error::unsupported(format!(
                "internal error while reading {what}"
            )))
        })
    })
}

/// Runs `f` on the current stack (wasm has no threads; its limits are lower).
#[cfg(target_arch = "wasm32")]
fn on_big_stack<T>(_what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    f()
}

/// Each storage's byte-swap unit: from the dtype of the first tensor that views it (so
/// untyped v3 storages swap by their tensor's dtype, which torch itself gets wrong), else
/// from the storage's own dtype.
fn swap_units(roots: &[&Value], storages: &[StorageRef]) -> Vec<usize> {
    let mut units: Vec<Option<usize>> = vec![None; storages.len()];
    for root in roots {
        walk_tensors(root, &mut String::new(), &mut |_, meta| {
            if let Some(id) = meta.storage {
                units[id].get_or_insert(meta.dtype.swap_unit());
            }
        });
    }
    units
        .into_iter()
        .zip(storages)
        .map(|(u, s)| u.unwrap_or(s.dtype.swap_unit()))
        .collect()
}

/// Calls `f(path, tensor)` for every tensor in the tree, in file order.
pub(crate) fn walk_tensors<'v>(
    value: &'v Value,
    path: &mut String,
    f: &mut dyn FnMut(&str, &'v TensorMeta),
) {
    if let Value::Tensor(meta) = value {
        f(path, meta);
        return;
    }
    for (segment, child) in value.children() {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(&segment);
        walk_tensors(child, path, f);
        path.truncate(len);
    }
}

/// Where every storage of a checkpoint goes and where its bytes lie: the result of
/// [`Loader::plan`], before any tensor byte is read.
#[derive(Debug)]
pub struct Plan {
    /// The container format.
    pub format: Format,
    /// The byte order of the file's tensor data.
    pub byte_order: ByteOrder,
    /// The object tree.
    pub root: Value,
    /// TorchScript only: the `constants.pkl` tuple.
    pub constants: Option<Value>,
    /// Storages in order of first reference.
    pub storages: Vec<PlannedStorage>,
    max_tensor_bytes: u64,
}

impl Plan {
    /// Every tensor with its path, in file order (as [`Checkpoint::tensors`]).
    pub fn tensors(&self) -> Vec<(String, &TensorMeta)> {
        tensors_of(&self.root, self.constants.as_ref())
    }
}

/// One storage of a [`Plan`].
#[derive(Clone, Debug)]
pub struct PlannedStorage {
    /// Its key in the file.
    pub key: String,
    /// Its dtype (uint8 for untyped storages).
    pub dtype: Dtype,
    /// Elements of `dtype`.
    pub numel: u64,
    /// The device tag it was saved with.
    pub location: String,
    /// Where it goes.
    pub device: Device,
    /// Where its bytes lie; `None` when nothing needs reading (meta).
    pub record: Option<archive::Record>,
    /// Bytes are swapped in units of this when the file's byte order is not the host's (1: never).
    pub swap_unit: usize,
}

/// Tensors of a tree (and TorchScript constants, as `constants.<i>`), in file order.
fn tensors_of<'v>(root: &'v Value, constants: Option<&'v Value>) -> Vec<(String, &'v TensorMeta)> {
    let mut out = Vec::new();
    walk_tensors(root, &mut String::new(), &mut |path, meta| {
        out.push((path.to_owned(), meta))
    });
    if let Some(constants) = constants {
        walk_tensors(constants, &mut "constants".to_owned(), &mut |path, meta| {
            out.push((path.to_owned(), meta))
        });
    }
    out
}

/// Checks that every `(offset, len)` range is loaded; otherwise one `NeedBytes` error naming
/// all the missing ones.
fn require_all(
    bytes: &(impl ByteSource + ?Sized),
    ranges: impl Iterator<Item = (u64, u64)>,
) -> Result<()> {
    let mut missing = Vec::new();
    for (offset, len) in ranges {
        if let Err(e) = bytes.get(offset, len) {
            match e.kind() {
                ErrorKind::NeedBytes { ranges } => missing.extend_from_slice(ranges),
                _ => return Err(e),
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::NeedBytes { ranges: missing }))
    }
}

/// One storage after placement.
#[derive(Debug)]
pub struct Storage {
    /// Its key in the file.
    pub key: String,
    /// Its dtype (uint8 for untyped storages).
    pub dtype: Dtype,
    /// Elements of `dtype`.
    pub numel: u64,
    /// The device tag it was saved with.
    pub location: String,
    /// Where it was placed.
    pub device: Device,
    /// Its bytes.
    pub data: StorageData,
}

impl Storage {
    /// Bytes it holds.
    pub fn nbytes(&self) -> u64 {
        self.numel * self.dtype.element_size() as u64
    }
}

/// A loaded checkpoint: the object tree and its placed storages.
#[derive(Debug)]
pub struct Checkpoint {
    /// The object `torch.load` would have returned (for TorchScript: the module tree of
    /// `data.pkl`, with attributes as path segments).
    pub root: Value,
    /// TorchScript only: the tuple of `constants.pkl`, whose tensors [`Checkpoint::tensors`]
    /// lists after the module's as `constants.<i>`.
    pub constants: Option<Value>,
    /// Storages, in order of first reference.
    pub storages: Vec<Storage>,
    /// The container format.
    pub format: Format,
    /// The byte order of the file's tensor data (as stored; loaded data is in host order).
    pub byte_order: ByteOrder,
    max_tensor_bytes: u64,
}

impl Checkpoint {
    /// Every tensor with its `.`-joined path, in file order. A tensor reachable by two paths
    /// (the same object saved twice) is listed at both.
    pub fn tensors(&self) -> impl Iterator<Item = (String, Tensor<'_>)> + '_ {
        tensors_of(&self.root, self.constants.as_ref())
            .into_iter()
            .map(move |(path, meta)| (path, self.tensor_view(meta)))
    }

    /// The tensor at `path`, if there is one.
    pub fn tensor(&self, path: &str) -> Option<Tensor<'_>> {
        let found = match (path.strip_prefix("constants."), &self.constants) {
            (Some(rest), Some(constants)) => constants.get_path(rest),
            _ => self.root.get_path(path),
        };
        found?.as_tensor().map(|m| self.tensor_view(m))
    }

    fn tensor_view<'c>(&'c self, meta: &'c TensorMeta) -> Tensor<'c> {
        Tensor {
            meta,
            storage: meta.storage.map(|id| &self.storages[id]),
            max_bytes: self.max_tensor_bytes,
        }
    }
}

/// A tensor of a loaded checkpoint: metadata plus its placed storage.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'c> {
    meta: &'c TensorMeta,
    storage: Option<&'c Storage>,
    max_bytes: u64,
}

impl<'c> Tensor<'c> {
    /// All metadata.
    pub fn meta(&self) -> &'c TensorMeta {
        self.meta
    }
    /// Element type.
    pub fn dtype(&self) -> Dtype {
        self.meta.dtype
    }
    /// Size of each dimension.
    pub fn shape(&self) -> &'c [u64] {
        &self.meta.shape
    }
    /// Stride of each dimension, in elements.
    pub fn stride(&self) -> &'c [u64] {
        &self.meta.stride
    }
    /// Offset into the storage, in elements.
    pub fn storage_offset(&self) -> u64 {
        self.meta.storage_offset
    }
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.meta.numel()
    }
    /// `requires_grad` as saved.
    pub fn requires_grad(&self) -> bool {
        self.meta.requires_grad
    }
    /// The storage it views (`None` for meta tensors saved without one).
    pub fn storage(&self) -> Option<&'c Storage> {
        self.storage
    }
    /// Where its data lives.
    pub fn device(&self) -> Device {
        match self.storage {
            Some(s) => s.device.clone(),
            None => Device::Meta,
        }
    }

    fn host_storage(&self) -> Result<&'c [u8]> {
        match self.storage.and_then(|s| s.data.host_bytes()) {
            Some(bytes) => Ok(bytes),
            None => Err(Error::invalid_tensor(format!(
                "the tensor is on the {} device: it has no data in host memory",
                self.device()
            ))),
        }
    }

    /// Its bytes, borrowed, when it is contiguous and in host memory (in host byte order).
    pub fn as_bytes(&self) -> Option<&'c [u8]> {
        if !self.meta.is_contiguous() {
            return None;
        }
        let bytes = self.host_storage().ok()?;
        let size = self.dtype().element_size() as u64;
        let start = self.meta.storage_offset.checked_mul(size)?;
        let len = self.numel().checked_mul(size)?;
        bytes.get(usize::try_from(start).ok()?..usize::try_from(start.checked_add(len)?).ok()?)
    }

    /// Calls `f` with the tensor's bytes in C-contiguous order, run by run, without
    /// materializing them (hashing a huge expanded view costs no memory).
    /// Views larger than [`Limits::max_tensor_bytes`] are refused: an expanded view can
    /// describe far more elements than any storage holds.
    pub fn for_each_run(&self, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        let total = self
            .numel()
            .saturating_mul(self.dtype().element_size() as u64);
        if total > self.max_bytes {
            return Err(Error::limit("max_tensor_bytes", total, self.max_bytes));
        }
        let bytes = self.host_storage()?;
        let size = self.dtype().element_size();
        let shape = &self.meta.shape;
        let stride = &self.meta.stride;
        if self.numel() == 0 {
            return Ok(());
        }
        // Merge trailing dimensions that are contiguous into one run.
        let mut run = 1u64;
        let mut outer = shape.len();
        while outer > 0 && stride[outer - 1] == run {
            run *= shape[outer - 1];
            outer -= 1;
        }
        let run_bytes = run as usize * size;
        let mut index = vec![0u64; outer];
        let mut offset = self.meta.storage_offset;
        loop {
            let start = offset as usize * size;
            // Views are checked against their storage when parsed and storages against their
            // records when planned, so this never fails; it is still checked, not assumed.
            let run_bytes = bytes.get(start..start + run_bytes).ok_or_else(|| {
                Error::invalid_tensor(format!(
                    "a view reaches byte {} of a {}-byte storage",
                    start + run_bytes,
                    bytes.len()
                ))
            })?;
            f(run_bytes);
            // Advance the outer index like an odometer.
            let mut d = outer;
            loop {
                if d == 0 {
                    return Ok(());
                }
                d -= 1;
                index[d] += 1;
                offset += stride[d];
                if index[d] < shape[d] {
                    break;
                }
                offset -= stride[d] * shape[d];
                index[d] = 0;
            }
        }
    }

    /// The elements in C-contiguous order, in host byte order (`bool` as one byte). Borrows
    /// nothing; refuses views larger than [`Limits::max_tensor_bytes`].
    pub fn to_contiguous_bytes(&self) -> Result<Vec<u8>> {
        let total = self
            .numel()
            .saturating_mul(self.dtype().element_size() as u64);
        if total > self.max_bytes {
            return Err(Error::limit("max_tensor_bytes", total, self.max_bytes));
        }
        if let Some(bytes) = self.as_bytes() {
            return Ok(bytes.to_vec());
        }
        let mut out = Vec::with_capacity(total as usize);
        self.for_each_run(&mut |chunk| out.extend_from_slice(chunk))?;
        Ok(out)
    }

    /// SHA-256 of [`Tensor::to_contiguous_bytes`], computed run by run, as lowercase hex.
    pub fn sha256(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        self.for_each_run(&mut |chunk| hasher.update(chunk))?;
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }
}
