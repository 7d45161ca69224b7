//! The public loading API: [`Loader`] (options), [`Checkpoint`] (the result), [`Tensor`] (a view
//! onto a placed storage), and [`Limits`].
//!
//! A load runs the layers in order: sniff and open the container, read its pickle into a tree
//! (no tensor bytes touched), decide every storage's device from `map_location` (all errors
//! before any byte is read), then place each storage exactly once.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use crate::archive::{ByteOrder, Format};
use crate::error::{Error, Result};
use crate::location::{Device, DeviceSupport, MapLocation};
use crate::pickle::{PickleLimits, StringEncoding};
use crate::place::{
    cpu::CpuPlacer, Backend, Control, PlacementJob, Placer, Progress, ProgressFn, RecordReader,
    StorageData,
};
use crate::plan::{walk_tensors, Plan};
use crate::source::Source;
use crate::torch::{self, layout, rebuild::TreeLimits, Dtype, TensorMeta, Value};

/// Safety limits. Each guards time or memory against a hostile file; raise one (or use
/// [`Limits::none`]) for a trusted file that exceeds it.
///
/// Build one from [`Limits::default`] or [`Limits::none`] with the `with_*` setters (new
/// limits may be added, so the struct cannot be written out literally):
///
/// ```
/// let limits = ptload::Limits::default().with_max_depth(5000).with_max_values(50_000_000);
/// let mut loader = ptload::Loader::new();
/// loader.limits(limits);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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

    /// Sets [`Limits::max_pickle_bytes`].
    pub fn with_max_pickle_bytes(mut self, max_pickle_bytes: u64) -> Self {
        self.max_pickle_bytes = max_pickle_bytes;
        self
    }

    /// Sets [`Limits::max_record_bytes`].
    pub fn with_max_record_bytes(mut self, max_record_bytes: u64) -> Self {
        self.max_record_bytes = max_record_bytes;
        self
    }

    /// Sets [`Limits::max_pickle_nodes`].
    pub fn with_max_pickle_nodes(mut self, max_pickle_nodes: u64) -> Self {
        self.max_pickle_nodes = max_pickle_nodes;
        self
    }

    /// Sets [`Limits::max_memo_entries`].
    pub fn with_max_memo_entries(mut self, max_memo_entries: u64) -> Self {
        self.max_memo_entries = max_memo_entries;
        self
    }

    /// Sets [`Limits::max_depth`].
    pub fn with_max_depth(mut self, max_depth: u64) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// Sets [`Limits::max_values`].
    pub fn with_max_values(mut self, max_values: u64) -> Self {
        self.max_values = max_values;
        self
    }

    /// Sets [`Limits::max_storages`].
    pub fn with_max_storages(mut self, max_storages: u64) -> Self {
        self.max_storages = max_storages;
        self
    }

    /// Sets [`Limits::max_rank`].
    pub fn with_max_rank(mut self, max_rank: u64) -> Self {
        self.max_rank = max_rank;
        self
    }

    /// Sets [`Limits::max_tensor_bytes`].
    pub fn with_max_tensor_bytes(mut self, max_tensor_bytes: u64) -> Self {
        self.max_tensor_bytes = max_tensor_bytes;
        self
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
#[derive(Clone)]
pub struct Loader {
    pub(crate) weights_only: bool,
    pub(crate) map_location: MapLocation,
    pub(crate) limits: Limits,
    pub(crate) encoding: StringEncoding,
    pub(crate) support: DeviceSupport,
    pub(crate) backends: Vec<Arc<dyn Backend>>,
    progress: Option<ProgressFn>,
    cancel: Option<Arc<AtomicBool>>,
    copy_storages: bool,
    threads: Option<usize>,
}

impl fmt::Debug for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("weights_only", &self.weights_only)
            .field("map_location", &self.map_location)
            .field("limits", &self.limits)
            .field("encoding", &self.encoding)
            .field("backends", &self.backends)
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel)
            .field("copy_storages", &self.copy_storages)
            .field("threads", &self.threads)
            .finish()
    }
}

impl Default for Loader {
    fn default() -> Self {
        Loader {
            weights_only: true,
            map_location: MapLocation::Default,
            limits: Limits::default(),
            encoding: StringEncoding::Utf8,
            support: DeviceSupport::default(),
            // The `cuda` feature's backend; it calls the driver only when asked about `cuda`.
            #[cfg(feature = "cuda")]
            backends: vec![Arc::new(crate::place::cuda::CudaBackend::new())],
            #[cfg(not(feature = "cuda"))]
            backends: Vec::new(),
            progress: None,
            cancel: None,
            copy_storages: false,
            threads: None,
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

    /// Registers a device backend (CUDA, wgpu, or your own): storages that `map_location`
    /// sends to a device it claims are placed by it. Later registrations are asked first.
    pub fn backend(&mut self, backend: Arc<dyn Backend>) -> &mut Self {
        self.backends.push(backend);
        self
    }

    /// Places storages mapped to `"webgpu"` (alias `"wgpu"`) on the caller's wgpu `device`, each
    /// in a `wgpu::Buffer` of its own, uploaded through `queue` (feature `wgpu`; see
    /// [`crate::place::wgpu`]).
    #[cfg(feature = "wgpu")]
    pub fn wgpu(&mut self, device: wgpu::Device, queue: wgpu::Queue) -> &mut Self {
        self.backend(Arc::new(crate::place::wgpu::WgpuBackend::new(
            device, queue,
        )))
    }

    /// Calls `f` as storages are placed, with the bytes placed so far and in all.
    ///
    /// ```
    /// # let bytes = std::fs::read("examples/tiny_convnet.pt").unwrap();
    /// use std::sync::{atomic::{AtomicU64, Ordering}, Arc};
    /// let placed = Arc::new(AtomicU64::new(0));
    /// let seen = placed.clone();
    /// let ckpt = ptload::Loader::new()
    ///     .on_progress(move |p| seen.store(p.placed_bytes, Ordering::Relaxed))
    ///     .load_bytes(bytes)
    ///     .unwrap();
    /// let total: u64 = ckpt.storages.iter().map(|s| s.nbytes()).sum();
    /// assert_eq!(placed.load(Ordering::Relaxed), total);
    /// ```
    pub fn on_progress(&mut self, f: impl Fn(Progress) + Send + Sync + 'static) -> &mut Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Cancels loads in progress once `flag` is set: the load fails with
    /// [`crate::ErrorKind::Cancelled`] and frees everything it had placed.
    pub fn cancel_flag(&mut self, flag: Arc<AtomicBool>) -> &mut Self {
        self.cancel = Some(flag);
        self
    }

    /// Copies every CPU storage into memory the checkpoint owns (default `false`: storages that
    /// are stored, aligned and in host byte order borrow from the file or buffer, zero-copy).
    /// With `true`, the checkpoint no longer reads its source once loaded, so the file may
    /// change or go; the copies run on every core ([`Loader::threads`]).
    ///
    /// ```
    /// let ckpt = ptload::Loader::new().copy_storages(true).load("examples/tiny_convnet.pt").unwrap();
    /// assert!(ckpt.storages.iter().all(|s| !s.data.is_borrowed()));
    /// ```
    pub fn copy_storages(&mut self, yes: bool) -> &mut Self {
        self.copy_storages = yes;
        self
    }

    /// How many threads copy host storages (inflating, byte-swapping, or
    /// [`Loader::copy_storages`]); default: as many as the machine runs at once. 1 copies on
    /// the calling thread.
    pub fn threads(&mut self, threads: usize) -> &mut Self {
        self.threads = Some(threads);
        self
    }

    /// Loads a checkpoint file, memory-mapped (with the `mmap` feature, on by default): CPU
    /// storages borrow from the map. A file of at most 64 KiB is read whole instead (one read
    /// costs less than mapping it and faulting it in). A mapped file's metadata is read, not
    /// faulted in, and the local headers of its storage records, when they lie far apart, are
    /// read on a helper thread while the pickle is parsed ([`crate::read_ahead`]).
    ///
    /// The file must not change while the checkpoint is alive: CPU tensors read the map, so
    /// another process truncating or rewriting the file changes their bytes, or ends the
    /// process with `SIGBUS` when a page is gone. For a file that may change under you, read it
    /// yourself and use [`Loader::load_bytes`] (`std::fs::read(path)`), which owns its bytes.
    /// A path that is a folder with a `.metadata` file loads as a distributed checkpoint.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(&self, path: impl AsRef<std::path::Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        if crate::index::is_index(path) && path.is_file() {
            return self.load_index(path); // a sharded checkpoint (crate::index)
        }
        match Source::open_unless_folder(path)? {
            Some(source) => self.load_source(source),
            None => self.open_dcp(path)?.load(), // a distributed checkpoint (crate::dcp)
        }
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

    pub(crate) fn pickle_options(&self) -> torch::PickleOptions {
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
            extra_globals: &[],
        }
    }

    fn load_inner(&self, source: Source) -> Result<Checkpoint> {
        let plan = self.plan_inner(&source)?;
        self.place(plan, &source)
    }

    /// Places every storage of a plan, reading each record exactly once from `source`.
    ///
    /// The storages are grouped by device, and each group goes whole to its device's placer
    /// (the host's, or a registered [`Backend`]'s), so device placers can pipeline. On any
    /// error, everything placed so far is freed.
    pub fn place(&self, mut plan: Plan, source: &Source) -> Result<Checkpoint> {
        let reader = RecordReader::new(
            source.bytes(),
            source.name(),
            plan.byte_order,
            self.limits.max_record_bytes,
        );
        // One job list per device, in storage order. A job borrows its storage's key and
        // record by taking them (the key goes back once placed; the record is not kept).
        let mut groups: Vec<(Device, Vec<PlacementJob>)> = Vec::new();
        let storage_count = plan.storages.len();
        for (index, planned) in plan.storages.iter_mut().enumerate() {
            if planned.device == Device::Meta {
                continue;
            }
            let Some(record) = planned.record.take() else {
                continue;
            };
            let job = PlacementJob {
                index,
                key: std::mem::take(&mut planned.key),
                dtype: planned.dtype,
                nbytes: planned.nbytes(),
                device: planned.device.clone(),
                record,
                swap_unit: planned.swap_unit,
            };
            match groups.iter_mut().find(|(d, _)| *d == planned.device) {
                Some((_, jobs)) => jobs.push(job),
                None => {
                    let mut jobs = Vec::with_capacity(storage_count - index);
                    jobs.push(job);
                    groups.push((planned.device.clone(), jobs))
                }
            }
        }
        let total = groups
            .iter()
            .flat_map(|(_, jobs)| jobs)
            .map(|j| j.nbytes)
            .sum();
        let mut control = Control::new(total, self.progress.as_deref(), self.cancel.as_deref());
        let mut data: Vec<StorageData> = vec![StorageData::Meta; plan.storages.len()];
        for (device, jobs) in &groups {
            let placed = match device {
                Device::Cpu => {
                    let mut placer =
                        CpuPlacer::new(source.shared().clone()).copy_all(self.copy_storages);
                    if let Some(threads) = self.threads {
                        placer = placer.threads(threads);
                    }
                    placer.place_all(&reader, jobs, &mut control)
                }
                other => self
                    .placer_for(other)?
                    .place_all(&reader, jobs, &mut control),
            }?;
            // Dropping `data` on an error above frees what earlier groups placed.
            for (job, placed) in jobs.iter().zip(placed) {
                data[job.index] = placed;
            }
        }
        for job in groups.into_iter().flat_map(|(_, jobs)| jobs) {
            plan.storages[job.index].key = job.key;
        }
        let storages = std::mem::take(&mut plan.storages)
            .into_iter()
            .zip(data)
            .map(|(planned, data)| Storage {
                key: planned.key,
                dtype: planned.dtype,
                numel: planned.numel,
                location: planned.location,
                device: planned.device,
                data,
            })
            .collect();
        Ok(Checkpoint {
            root: std::mem::replace(&mut plan.root, Value::None),
            constants: plan.constants.take(),
            storages,
            format: plan.format,
            byte_order: plan.byte_order,
            max_tensor_bytes: plan.max_tensor_bytes,
            index: OnceLock::new(),
        })
    }

    /// The placer of the backend that claims `device`.
    fn placer_for(&self, device: &Device) -> Result<Box<dyn Placer + '_>> {
        for backend in self.backends.iter().rev() {
            if let Some(checked) = backend.check(device) {
                checked?;
                return backend.placer(device);
            }
        }
        Err(Error::new(crate::ErrorKind::Location {
            message: format!("no placer for device {device} in this build"),
        }))
    }
}

/// One storage after placement.
#[derive(Debug)]
pub struct Storage {
    /// Its key in the file.
    pub key: crate::StorageKey,
    /// Its dtype (uint8 for untyped storages).
    pub dtype: Dtype,
    /// Elements of `dtype`.
    pub numel: u64,
    /// The device tag it was saved with.
    pub location: std::borrow::Cow<'static, str>,
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
pub struct Checkpoint {
    /// The object `torch.load` would have returned (for TorchScript: the module tree of
    /// `data.pkl`, with attributes as path segments).
    ///
    /// [`Checkpoint::tensors`] and [`Checkpoint::tensor`] use an index of the tree built on
    /// first use: change the tree before that, not after.
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
    index: OnceLock<TensorIndex>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("root", &self.root)
            .field("constants", &self.constants)
            .field("storages", &self.storages)
            .field("format", &self.format)
            .field("byte_order", &self.byte_order)
            .finish_non_exhaustive()
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        // A deep tree must not overflow the dropping thread's stack.
        self.root.dismantle();
        if let Some(constants) = &mut self.constants {
            constants.dismantle();
        }
    }
}

/// Every tensor's path, and where it lies: which tree (0: `root`, 1: `constants`), then the
/// child positions down to it ([`Value::child_at`]). Built once, on first use.
#[derive(Debug, Default)]
struct TensorIndex {
    entries: Vec<(Box<str>, Box<[u32]>)>,
    /// Path → the first entry with that path.
    by_path: HashMap<Box<str>, usize>,
}

impl TensorIndex {
    fn build(root: &Value, constants: Option<&Value>) -> Self {
        let mut index = TensorIndex::default();
        let mut add = |tree: u32, path: &str, positions: &[u32]| {
            let at: Box<[u32]> = std::iter::once(tree)
                .chain(positions.iter().copied())
                .collect();
            index
                .by_path
                .entry(path.into())
                .or_insert(index.entries.len());
            index.entries.push((path.into(), at));
        };
        walk_tensors(root, &mut String::new(), &mut |path, positions, _| {
            add(0, path, positions)
        });
        if let Some(constants) = constants {
            walk_tensors(
                constants,
                &mut "constants".to_owned(),
                &mut |path, positions, _| add(1, path, positions),
            );
        }
        index
    }
}

impl Checkpoint {
    /// A checkpoint assembled from parts (the shards of an index file).
    pub(crate) fn from_parts(
        root: Value,
        storages: Vec<Storage>,
        format: Format,
        byte_order: ByteOrder,
        max_tensor_bytes: u64,
    ) -> Self {
        Checkpoint {
            root,
            constants: None,
            storages,
            format,
            byte_order,
            max_tensor_bytes,
            index: OnceLock::new(),
        }
    }

    /// The largest tensor [`Tensor::to_contiguous_bytes`] materializes (from the loader's
    /// [`Limits`]).
    pub(crate) fn max_tensor_bytes(&self) -> u64 {
        self.max_tensor_bytes
    }

    fn index(&self) -> &TensorIndex {
        self.index
            .get_or_init(|| TensorIndex::build(&self.root, self.constants.as_ref()))
    }

    /// The tensor at index positions `at` (see [`TensorIndex`]).
    fn tensor_at(&self, at: &[u32]) -> Option<Tensor<'_>> {
        let (tree, positions) = at.split_first()?;
        let mut value = match tree {
            0 => &self.root,
            _ => self.constants.as_ref()?,
        };
        for &i in positions {
            value = value.child_at(i as usize)?;
        }
        value.as_tensor().map(|meta| self.tensor_view(meta))
    }

    /// Every tensor with its `.`-joined path, in file order. A tensor reachable by two paths
    /// (the same object saved twice) is listed at both.
    ///
    /// The paths are computed once per checkpoint (on first use of this or
    /// [`Checkpoint::tensor`]); iterating allocates nothing.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, Tensor<'_>)> + '_ {
        self.index()
            .entries
            .iter()
            .filter_map(|(path, at)| Some((&**path, self.tensor_at(at)?)))
    }

    /// The tensor at `path`, as [`Checkpoint::tensors`] names it (dict keys may hold dots:
    /// `"0.weight"` is one key of a `state_dict`). When two tensors share a path, the first.
    pub fn tensor(&self, path: &str) -> Option<Tensor<'_>> {
        let index = self.index();
        let &entry = index.by_path.get(path)?;
        self.tensor_at(&index.entries[entry].1)
    }

    pub(crate) fn tensor_view<'c>(&'c self, meta: &'c TensorMeta) -> Tensor<'c> {
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

    /// The device buffer holding its storage, when it is on a device other than the host.
    pub fn device_buffer(&self) -> Option<&'c Arc<dyn crate::place::DeviceBuffer>> {
        self.storage.and_then(|s| s.data.device_buffer())
    }

    /// Its byte offset into its storage (`storage_offset × element size`).
    pub fn byte_offset(&self) -> u64 {
        self.meta
            .storage_offset
            .saturating_mul(self.dtype().element_size() as u64)
    }

    fn check_size(&self) -> Result<u64> {
        let total = self
            .numel()
            .saturating_mul(self.dtype().element_size() as u64);
        if total > self.max_bytes {
            return Err(Error::limit("max_tensor_bytes", total, self.max_bytes));
        }
        Ok(total)
    }

    /// Calls `f` with the tensor's bytes in C-contiguous order, run by run, without
    /// materializing them (hashing a huge expanded view costs no memory). A tensor on a device
    /// is read back first (just the part of its storage the view spans).
    /// Views larger than [`Limits::max_tensor_bytes`] are refused: an expanded view can
    /// describe far more elements than any storage holds.
    pub fn for_each_run(&self, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        self.check_size()?;
        if let Some(buffer) = self.device_buffer() {
            let size = self.dtype().element_size() as u64;
            let span = layout::element_span(self.meta)
                .ok_or_else(|| Error::invalid_tensor("the view's extent overflows"))?;
            let len = (span.end - span.start).saturating_mul(size);
            let len = usize::try_from(len)
                .map_err(|_| Error::invalid_tensor("the view does not fit in host memory"))?;
            let mut bytes = Vec::new();
            bytes.try_reserve_exact(len).map_err(|_| {
                Error::invalid_tensor(format!("out of host memory reading back {len} bytes"))
            })?;
            bytes.resize(len, 0);
            buffer.read_back(span.start.saturating_mul(size), &mut bytes)?;
            return layout::for_each_run(self.meta, &bytes, span.start, f);
        }
        let bytes = self.host_storage()?;
        layout::for_each_run(self.meta, bytes, 0, f)
    }

    /// The elements in C-contiguous order, in host byte order (`bool` as one byte). Borrows
    /// nothing; refuses views larger than [`Limits::max_tensor_bytes`].
    pub fn to_contiguous_bytes(&self) -> Result<Vec<u8>> {
        let total = self.check_size()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_options_and_the_checkpoint() {
        let mut loader = Loader::new();
        loader.weights_only(false).threads(3);
        let text = format!("{loader:?}");
        for field in ["weights_only: false", "limits: Limits", "threads: Some(3)"] {
            assert!(text.contains(field), "{field} not in {text}");
        }
        let ckpt = loader
            .load_bytes(std::fs::read("examples/tiny_convnet.pt").unwrap())
            .unwrap();
        let text = format!("{ckpt:?}");
        for field in ["root: Dict", "storages: [Storage", "format: Zip"] {
            assert!(text.contains(field), "{field} not in {text}");
        }
    }
}
