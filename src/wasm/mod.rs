//! The wasm side of the npm package (feature `wasm`, wasm32 only): parses a checkpoint's
//! directory and pickle and says where every storage's bytes lie; the JS wrapper
//! (`pkg-template/src/api.mjs`) reads those bytes and makes the `TypedArray`s.
//!
//! This module owns the contract between the two halves, nothing else. Only the container's
//! directory, its small records and the pickle enter wasm memory (for legacy and tar files,
//! whose layout is only known after reading the whole stream, the whole file); tensor bytes
//! stay in JS, except a deflated record while it is inflated and a big-endian one while it is
//! swapped (in 16 MiB slices).
//!
//! Every layout decision is the native one, made here: per storage, whether it is swapped and
//! the alignment it needs to be used in place (`storages()`, from `src/place`); per tensor,
//! whether it is contiguous and the elements it spans (`tree()`, from `src/torch/layout.rs`);
//! and the C-order walk of a strided view ([`RunWalker`], the native [`Runs`]). The JS side only
//! reads bytes and makes views.
//!
//! A distributed checkpoint's folder is [`DcpCheckpoint`] (`dcp.rs`): its files handed in
//! whole, consolidated by the native `src/dcp`.
//!
//! The JS driver loop:
//!
//! ```text
//! const p = new Planner(name, totalBytes, { weightsOnly, encoding, mapLocation, callback });
//! let need;
//! while ((need = p.step(callbackOrUndefined)) !== null)   // [[offset, length], ...]
//!   for (const [offset, length] of need) p.insert(offset, await readSlice(offset, length));
//! const storages = p.storages();                           // [{ key, dtype, device, record, ... }]
//! const tree = p.tree(makeTensor, makeStorage);            // { format, byteOrder, root, tensors, ... }
//! // for each storages[i].record: read it (a view for buffers), p.inflate(i, bytes) if deflated,
//! // swapBytes(bytes, swapUnit) if storages[i].swap; copy it if not at a multiple of `align`
//! p.free();
//! ```
//!
//! `step` returns `null` once the plan is made. It throws an `Error` whose message is the
//! native loader's (`<file>: <what is wrong>`) with `__ptload__: { kind, file, offset }` (the
//! wrapper rethrows it as a `PtloadError`), or rethrows what a `mapLocation` callback threw. A callback is called once per storage, in order of first reference, as torch does;
//! its result (a device string, the storage object it was given = stay on the CPU, or
//! `undefined` = the saved tag) goes through `restore_location` and the device checks, so
//! the errors are torch's.
//!
//! Tests: `tests/wasm.rs` (`cargo test --target wasm32-unknown-unknown --no-default-features
//! --features wasm --test wasm` with `wasm-bindgen-test-runner` as the runner, see
//! `scripts/test`), and the Node suite `tests/node/` over the built package.

mod convert;
mod dcp;

pub use dcp::DcpCheckpoint;
mod write;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use js_sys::{Array, Function, Object, Reflect};
use wasm_bindgen::prelude::*;

use crate::archive::Method;
use crate::error::{Error, ErrorKind};
use crate::location::{restore_location, Device, DeviceSupport, MapLocation, Placement};
use crate::place::{Backend, Placer};
use crate::plan::Plan;
use crate::source::{ByteSource, SparseBytes};
use crate::torch::json::JsonText;
use crate::torch::layout::Runs;
use crate::torch::{Dtype, TensorMeta};
use crate::{Limits, Loader, StringEncoding};

use convert::{numbers, Converter};

/// A native error as a JS `Error` with the same message, marked for the JS wrapper with
/// `__ptload__: { kind, file, offset }` (it rethrows it as a `PtloadError` with those fields).
fn js_error(e: Error) -> JsValue {
    let error: JsValue = JsError::new(&e.to_string()).into();
    let (kind, offset) = (kind_of(e.kind()), e.offset());
    let mark = Object::new();
    // Setting properties of fresh objects cannot fail; if it did, the plain Error still says it all.
    let _ = set(&mark, "kind", &JsValue::from_str(kind));
    let file = e
        .file()
        .map(JsValue::from_str)
        .unwrap_or(JsValue::UNDEFINED);
    let _ = set(&mark, "file", &file);
    let offset = offset
        .map(|o| JsValue::from_f64(o as f64))
        .unwrap_or(JsValue::UNDEFINED);
    let _ = set(&mark, "offset", &offset);
    let _ = set(&error, "__ptload__", &mark);
    error
}

/// The name of an [`ErrorKind`] variant (`PtloadError.kind` in JS); the offset comes from
/// [`Error::offset`].
fn kind_of(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Io(_) => "Io",
        ErrorKind::NotACheckpoint { .. } => "NotACheckpoint",
        ErrorKind::Zip { .. } => "Zip",
        ErrorKind::MissingRecord { .. } => "MissingRecord",
        ErrorKind::UnsupportedVersion { .. } => "UnsupportedVersion",
        ErrorKind::UnknownByteOrder { .. } => "UnknownByteOrder",
        ErrorKind::Pickle { .. } => "Pickle",
        ErrorKind::WeightsOnly { .. } => "WeightsOnly",
        ErrorKind::StorageSize { .. } => "StorageSize",
        ErrorKind::Record { .. } => "Record",
        ErrorKind::InvalidTensor { .. } => "InvalidTensor",
        ErrorKind::Unsupported { .. } => "Unsupported",
        ErrorKind::NeedBytes { .. } => "NeedBytes",
        ErrorKind::LimitExceeded { .. } => "LimitExceeded",
        ErrorKind::Dcp { .. } => "Dcp",
        ErrorKind::Location { .. } => "Location",
        ErrorKind::Placement { .. } => "Placement",
        ErrorKind::Cancelled => "Cancelled",
        ErrorKind::Index { .. } => "Index",
    }
}

fn get(options: &JsValue, key: &str) -> Result<JsValue, JsValue> {
    if options.is_object() {
        Reflect::get(options, &JsValue::from_str(key))
    } else {
        Ok(JsValue::UNDEFINED)
    }
}

fn set(target: &JsValue, key: &str, value: &JsValue) -> Result<(), JsValue> {
    Reflect::set(target, &JsValue::from_str(key), value).map(|_| ())
}

/// The fields every storage object has, from a plan ([`Planner::storages`]) or a consolidated
/// distributed checkpoint (`DcpCheckpoint::storages`): `key, dtype, itemsize, numel, location,
/// device`.
fn storage_fields(
    j: &mut JsonText,
    key: &str,
    dtype: Dtype,
    numel: u64,
    location: &str,
    device: &Device,
) {
    j.str("key", key);
    j.str("dtype", dtype.name());
    j.uint("itemsize", dtype.element_size() as u64);
    j.uint("numel", numel);
    j.str("location", location);
    j.str("device", &device.to_string());
}

fn type_error(message: &str) -> JsValue {
    js_sys::TypeError::new(message).into()
}

/// The `map_location` other than a callback: `null` | a string | `[[from, to], ...]`.
fn map_location(spec: &JsValue) -> Result<MapLocation, JsValue> {
    if spec.is_undefined() || spec.is_null() {
        return Ok(MapLocation::Default);
    }
    if let Some(target) = spec.as_string() {
        return Ok(MapLocation::To(target));
    }
    if Array::is_array(spec) {
        let mut pairs = Vec::new();
        for pair in Array::from(spec).iter() {
            let pair = Array::from(&pair);
            match (pair.get(0).as_string(), pair.get(1).as_string()) {
                (Some(from), Some(to)) => pairs.push((from, to)),
                _ => {
                    return Err(type_error(
                        "mapLocation: every {from: to} value must be a string",
                    ))
                }
            }
        }
        return Ok(MapLocation::Map(pairs));
    }
    Err(type_error(
        "mapLocation must be a device string, a {from: to} object or a function",
    ))
}

/// A loader with the options both planners take: `weightsOnly`, `encoding`, `mapLocation`
/// (not a callback).
fn loader_from(options: &JsValue) -> Result<Loader, JsValue> {
    let mut loader = Loader::new();
    let weights_only = get(options, "weightsOnly")?;
    loader.weights_only(weights_only.as_bool().unwrap_or(true));
    if let Some(name) = get(options, "encoding")?.as_string() {
        loader.encoding(name.parse::<StringEncoding>().map_err(|e| type_error(&e))?);
    }
    loader.map_location(map_location(&get(options, "mapLocation")?)?);
    Ok(loader)
}

/// The object tree as JS values: `{ format, byteOrder, root, constants, tensors }` (see
/// [`Planner::tree`]).
fn tree_js(
    format: crate::archive::Format,
    byte_order: crate::archive::ByteOrder,
    root: &crate::torch::Value,
    constants: Option<&crate::torch::Value>,
    make_tensor: &Function,
    make_storage: &Function,
) -> Result<JsValue, JsValue> {
    let mut convert = Converter::new(make_tensor, make_storage);
    let out = Object::new();
    set(&out, "format", &JsValue::from_str(format.name()))?;
    set(&out, "byteOrder", &JsValue::from_str(byte_order.name()))?;
    set(&out, "root", &convert.value(root)?)?;
    let constants_js = match constants {
        Some(c) => convert.value(c)?,
        None => JsValue::UNDEFINED,
    };
    set(&out, "constants", &constants_js)?;
    let tensors = Array::new();
    for (path, meta) in crate::plan::tensors_of(root, constants) {
        let tensor = convert.tensor(meta)?;
        tensors.push(&Array::of2(&JsValue::from_str(&path), &tensor));
    }
    set(&out, "tensors", &tensors)?;
    Ok(out.into())
}

/// Converts `value` to JS as [`Planner::tree`] does (for tests of deep trees, which no loader
/// with limits produces; not part of the API).
#[doc(hidden)]
pub fn value_to_js(
    value: &crate::torch::Value,
    make_tensor: &Function,
    make_storage: &Function,
) -> Result<JsValue, JsValue> {
    Converter::new(make_tensor, make_storage).value(value)
}

/// Whether the JS side can put a storage on `device`: the host, `meta`, and `webgpu` when the
/// caller gave a GPUDevice (JS places those storages; the plan only decides where they go).
fn placeable(device: Device, webgpu: bool) -> Result<Device, Error> {
    match device {
        Device::Cpu | Device::Meta => Ok(device),
        Device::WebGpu if webgpu => Ok(device),
        Device::WebGpu => Err(Error::new(ErrorKind::Location {
            message: NO_GPU_DEVICE.to_string(),
        })),
        other => Err(Error::new(ErrorKind::Location {
            message: format!("no placer for device {other} in this build"),
        })),
    }
}

const NO_GPU_DEVICE: &str =
    "map_location places storages on \"webgpu\", but no device was given: pass { device: GPUDevice } to load()";

/// Lets the planner map storages to `webgpu` (or refuses them with [`NO_GPU_DEVICE`]); the
/// storages are placed by the JS side, never through [`Backend::placer`].
#[derive(Debug)]
struct JsWebGpu {
    device_given: bool,
}

impl Backend for JsWebGpu {
    fn check(&self, device: &Device) -> Option<crate::Result<Device>> {
        match device {
            Device::WebGpu => Some(placeable(Device::WebGpu, self.device_given)),
            _ => None,
        }
    }

    fn placer(&self, _: &Device) -> crate::Result<Box<dyn Placer + '_>> {
        Err(Error::new(ErrorKind::Location {
            message: "WebGPU storages are placed by the JS side of the package".to_string(),
        }))
    }
}

/// What [`Planner::stream`] was given.
struct Streamed {
    prefix: String,
    pickle: Vec<u8>,
    byte_order: Option<Vec<u8>>,
}

/// Plans a load of one checkpoint from the byte ranges the JS side hands in.
#[wasm_bindgen]
pub struct Planner {
    name: String,
    loader: Loader,
    /// Set when `map_location` is a JS function: its devices, once called for every storage.
    callback: bool,
    /// Whether the caller gave a GPUDevice (so `webgpu` is a device storages may go to).
    webgpu: bool,
    devices: Option<Arc<Vec<Device>>>,
    /// Set by [`Planner::stream`]: plan from these instead of `bytes`.
    streamed: Option<Streamed>,
    bytes: SparseBytes,
    plan: Option<Plan>,
    limits: Limits,
}

#[wasm_bindgen]
impl Planner {
    /// A planner for a file of `total_len` bytes named `name` (in errors). `options`:
    /// `{ weightsOnly?: boolean = true, encoding?: "utf8" | "ascii" | "latin1" | "bytes" (or
    ///    Python's other names for them), mapLocation?: null | string | [from, to][],
    ///    callback?: boolean }`.
    #[wasm_bindgen(constructor)]
    pub fn new(name: String, total_len: f64, options: JsValue) -> Result<Planner, JsValue> {
        if !(0.0..=9_007_199_254_740_991.0).contains(&total_len) {
            return Err(type_error("the input size must be a byte count"));
        }
        let mut loader = loader_from(&options)?;
        let callback = get(&options, "callback")?.as_bool().unwrap_or(false);
        let webgpu = get(&options, "webgpu")?.as_bool().unwrap_or(false);
        loader.backend(Arc::new(JsWebGpu {
            device_given: webgpu,
        }));
        if callback {
            // First pass: only the storages' tags are needed, no record.
            loader.map_location("meta");
        }
        Ok(Planner {
            name,
            loader,
            callback,
            webgpu,
            devices: None,
            streamed: None,
            bytes: SparseBytes::new(total_len as u64),
            plan: None,
            limits: Limits::default(),
        })
    }

    /// Hands in the bytes found at `offset` (copied into wasm memory).
    pub fn insert(&mut self, offset: f64, bytes: Vec<u8>) {
        self.bytes.insert(offset as u64, bytes);
    }

    /// Bytes handed in so far.
    pub fn loaded(&self) -> f64 {
        self.bytes.loaded() as f64
    }

    /// Tries to make the plan: `null` when done, else the `[offset, length]` ranges to hand in
    /// before trying again. `callback` is the `mapLocation` function, if there is one.
    pub fn step(&mut self, callback: Option<Function>) -> Result<JsValue, JsValue> {
        if self.plan.is_some() {
            return Ok(JsValue::NULL);
        }
        let mut loader = self.loader.clone();
        if let Some(devices) = &self.devices {
            let devices = devices.clone();
            let next = AtomicUsize::new(0);
            loader.map_location(MapLocation::with(move |_, _| {
                let i = next.fetch_add(1, Ordering::Relaxed);
                devices.get(i).cloned().map(Placement)
            }));
        }
        let planned = match &self.streamed {
            Some(s) => loader
                .plan_streamed(&s.prefix, &s.pickle, s.byte_order.as_deref())
                .map_err(|e| e.in_file(&self.name)),
            None => loader.plan(&self.name, &self.bytes),
        };
        match planned {
            Ok(plan) => {
                if self.callback && self.devices.is_none() {
                    let Some(f) = callback else {
                        return Err(type_error("mapLocation: the callback is missing"));
                    };
                    self.devices = Some(Arc::new(self.call_back(&plan, &f)?));
                    return self.step(None);
                }
                self.plan = Some(plan);
                Ok(JsValue::NULL)
            }
            Err(e) => match e.kind() {
                ErrorKind::NeedBytes { ranges } => Ok(ranges
                    .iter()
                    .map(|&(offset, len)| -> JsValue { numbers(&[offset, len]).into() })
                    .collect::<Array>()
                    .into()),
                _ => Err(js_error(e)),
            },
        }
    }

    /// Plans from a zip checkpoint read as a stream, in file order: the folder name (`archive`),
    /// `data.pkl`'s bytes, and the `byteorder` record's if it came before the first tensor
    /// record. [`Planner::step`] then plans without asking for bytes; each storage's record is
    /// named `<folder>/data/<key>`, has the size its storage needs and offset 0 (the caller
    /// matches records by name as they stream by).
    pub fn stream(&mut self, prefix: String, pickle: Vec<u8>, byte_order: Option<Vec<u8>>) {
        self.streamed = Some(Streamed {
            prefix,
            pickle,
            byte_order,
        });
    }

    /// The storages of the plan, in order of first reference: `{ key, dtype, itemsize, numel,
    /// location, device, swapUnit, swap, align, record: { name, dataOffset, storedLen, size,
    /// deflated } | null }`. A stored record may be used in place when `swap` is false and its
    /// bytes lie at a multiple of `align`; else it is copied (inflated, swapped with
    /// [`swap_bytes`], realigned), as the native CPU placer does.
    pub fn storages(&self) -> Result<Array, JsValue> {
        let plan = self.planned()?;
        // One JSON.parse, not a call across the boundary per property (json::JsonText).
        let mut j = JsonText::new();
        j.open_array();
        for s in &plan.storages {
            j.open_object();
            storage_fields(&mut j, &s.key, s.dtype, s.numel, &s.location, &s.device);
            j.uint("swapUnit", s.swap_unit as u64);
            // The native placer's decisions (src/place): swap in units of `swapUnit` or not,
            // and the alignment at which stored bytes may be used in place.
            j.bool(
                "swap",
                crate::place::needs_swap(plan.byte_order, s.swap_unit),
            );
            let align = crate::place::cpu::alignment(s.dtype, s.swap_unit);
            j.uint("align", align as u64);
            match &s.record {
                Some(r) => {
                    j.key("record");
                    j.open_object();
                    j.str("name", &r.name);
                    j.uint("dataOffset", r.data_offset);
                    j.uint("storedLen", r.stored_len);
                    j.uint("size", r.size);
                    j.bool("deflated", r.method == Method::Deflated);
                    j.close_object();
                }
                None => j.null("record"),
            }
            j.close_object();
        }
        j.close_array();
        Ok(js_sys::JSON::parse(j.as_str())?.unchecked_into())
    }

    /// The object tree as JS values: `{ format, byteOrder, root, constants, tensors }`, where
    /// `tensors` is `[path, tensor][]` in file order. `make_tensor(meta)` makes each tensor
    /// (once, however many paths reach it), `make_storage(index)` each storage saved alone.
    pub fn tree(
        &self,
        make_tensor: &Function,
        make_storage: &Function,
    ) -> Result<JsValue, JsValue> {
        let plan = self.planned()?;
        tree_js(
            plan.format,
            plan.byte_order,
            &plan.root,
            plan.constants.as_ref(),
            make_tensor,
            make_storage,
        )
    }

    /// The object tree as the JSON text of `ptload inspect --json`'s `root` field (the native
    /// CLI's own writer, [`crate::torch::json::tree`], so both print the same bytes).
    #[wasm_bindgen(js_name = rootJson)]
    pub fn root_json(&self) -> Result<String, JsValue> {
        let plan = self.planned()?;
        Ok(crate::torch::json::tree(&plan.root, &|id| {
            plan.storages.get(id).map(|s| s.key.to_string())
        }))
    }

    /// Inflates the deflated record of storage `index` from its `compressed` bytes, with the
    /// native loader's checks (declared size, `max_record_bytes`) and messages.
    pub fn inflate(&self, index: usize, compressed: Vec<u8>) -> Result<Vec<u8>, JsValue> {
        let record = self
            .plan
            .as_ref()
            .and_then(|p| p.storages.get(index))
            .and_then(|s| s.record.as_ref())
            .ok_or_else(|| type_error("inflate: no such record"))?;
        let mut bytes = SparseBytes::new(self.bytes.len());
        bytes.insert(record.data_offset, compressed);
        record
            .read(&bytes, self.limits.max_record_bytes)
            .map(|b| b.into_owned())
            .map_err(|e| js_error(e.in_file(&self.name)))
    }
}

/// Why a directory holding the files `names` is no checkpoint file (the native loader's
/// words, [`crate::archive::detect::explain_directory`]): Node's `load(path)` of a folder
/// that is no distributed checkpoint says it.
#[wasm_bindgen(js_name = explainDirectory)]
pub fn explain_directory(names: Vec<String>) -> String {
    let mut names = names;
    names.sort();
    crate::archive::detect::explain_directory(&names)
}

/// Swaps `bytes` in place in units of `unit` (the native placer's [`swap_in_place`]; JS hands
/// a big storage in slices, each a multiple of the unit).
///
/// [`swap_in_place`]: crate::place::cpu::swap_in_place
#[wasm_bindgen(js_name = swapBytes)]
pub fn swap_bytes(bytes: &mut [u8], unit: usize) {
    crate::place::cpu::swap_in_place(bytes, unit);
}

/// The byte offsets of a strided view's contiguous runs, in C order ([`Runs`], the native
/// walk), in groups of evenly spaced runs: `contiguousBytes()` of a view that is not
/// contiguous copies run by run.
#[wasm_bindgen]
pub struct RunWalker {
    runs: Runs,
}

#[wasm_bindgen]
impl RunWalker {
    /// The runs of a `dtype` view (shape, stride, offset in elements), offsets from the
    /// storage's first byte.
    #[wasm_bindgen(constructor)]
    pub fn new(
        dtype: &str,
        shape: Vec<f64>,
        stride: Vec<f64>,
        storage_offset: f64,
    ) -> Result<RunWalker, JsValue> {
        let dtype = Dtype::from_name(dtype)
            .ok_or_else(|| type_error(&format!("RunWalker: unknown dtype {dtype}")))?;
        let ints = |v: Vec<f64>| v.into_iter().map(|x| x as u64).collect::<Vec<u64>>();
        if shape.len() != stride.len() {
            return Err(type_error("RunWalker: shape and stride differ in length"));
        }
        let meta = TensorMeta::view(
            None,
            dtype,
            ints(shape),
            ints(stride),
            storage_offset as u64,
        );
        let runs = Runs::new(&meta, 0).map_err(js_error)?;
        Ok(RunWalker { runs })
    }

    /// Bytes of each run.
    #[wasm_bindgen(getter, js_name = runBytes)]
    pub fn run_bytes(&self) -> f64 {
        self.runs.run_bytes() as f64
    }

    /// The next groups of runs ([`Runs::next_group`]), at most `max` of them, flattened:
    /// `[first byte, runs, step in bytes, ...]`; empty once every run was given.
    pub fn next(&mut self, max: u32) -> Vec<f64> {
        let mut out = Vec::new();
        for _ in 0..max {
            let Some((first, count, step)) = self.runs.next_group() else {
                break;
            };
            out.extend([first as f64, count as f64, step as f64]);
        }
        out
    }
}

impl Planner {
    fn planned(&self) -> Result<&Plan, JsValue> {
        self.plan.as_ref().ok_or_else(|| {
            type_error("the plan is not made yet: call step() until it returns null")
        })
    }

    /// Calls the JS `map_location` function for every storage, in order, with torch's rules
    /// for its result; stops at the first failure, as torch does.
    fn call_back(&self, plan: &Plan, f: &Function) -> Result<Vec<Device>, JsValue> {
        let support = DeviceSupport::default();
        let mut devices = Vec::with_capacity(plan.storages.len());
        for s in &plan.storages {
            let info = Object::new();
            set(&info, "key", &JsValue::from_str(&s.key))?;
            set(&info, "dtype", &JsValue::from_str(s.dtype.name()))?;
            set(&info, "numel", &JsValue::from_f64(s.numel as f64))?;
            let nbytes = s.numel.saturating_mul(s.dtype.element_size() as u64);
            set(&info, "nbytes", &JsValue::from_f64(nbytes as f64))?;
            set(&info, "location", &JsValue::from_str(&s.location))?;
            set(&info, "device", &JsValue::from_str("cpu"))?;
            let location = JsValue::from_str(&s.location);
            let result = f.call2(&JsValue::NULL, &info, &location)?;
            let device = if result.is_undefined() || result.is_null() {
                restore_location(&s.location)
            } else if Object::is(&result, &info) {
                // `(storage) => storage`: the storage handed in is a CPU one (torch's too).
                Ok(Device::Cpu)
            } else if let Some(target) = result.as_string() {
                restore_location(&target)
            } else {
                return Err(type_error(
                    "a mapLocation function must return a device string, the storage it was given, or undefined",
                ));
            };
            let device = device
                .and_then(|d| match d {
                    Device::WebGpu => Ok(d),
                    _ => support.check(&d),
                })
                .and_then(|d| placeable(d, self.webgpu))
                .map_err(|e| js_error(e.in_file(&self.name)))?;
            devices.push(device);
        }
        Ok(devices)
    }
}
