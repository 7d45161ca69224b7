//! CUDA placement (feature `cuda`): `map_location="cuda:N"` puts every storage in device memory
//! through a pipeline of pinned host buffers and asynchronous copies, with the driver API of
//! [`cudarc`] loaded at run time (building needs no CUDA toolkit).
//!
//! - [`CudaBackend`] answers "can storages go to `cuda:N`?" before any byte is read: the driver
//!   library must be present (checked with `is_culib_present` first, because cudarc panics on
//!   the first call into a missing library), and `N` below the device count. Its errors are
//!   torch's (`torch.cuda.is_available() is False`, `torch.cuda.device_count() is 1`).
//! - Its placer streams a device's storages with [`place_staged`](super::pipeline::place_staged):
//!   the host fills one of a ring of page-locked slots (inflating and byte-swapping on the way)
//!   while the copies out of the slots filled before it run on the ring's CUDA stream; an event
//!   per slot says when a slot may be filled again. Large loads are split into groups, each with
//!   its own ring, stream and fill thread ([`place_parallel`]: one core fills ~10 GB/s, a PCIe 5
//!   link takes ~50). Memory in flight is the rings in use (up to 4 × 4 × 8 MiB by default),
//!   never the checkpoint.
//! - Each storage gets its own device allocation ([`CudaBuffer`], a `CudaSlice<u8>`), taken from
//!   the stream-ordered memory pool (`cuMemAllocAsync`) where the device has one. One arena per
//!   device would save an allocation call per storage, but tie every storage's lifetime to all
//!   the others and hand cudarc users views instead of slices; pool allocations cost a few
//!   microseconds against milliseconds of copying per megabyte-sized storage
//!   (`scripts/bench-cuda` measures both on the checkpoint it loads).
//! - A failure part way (out of memory, a bad record) drops every allocation made so far:
//!   the pipeline drops the buffers, and a `CudaSlice` frees itself on drop.
//! - Kept for the process, as torch keeps its own: each device's primary context (creating one
//!   takes a tenth of a second or more) and a few staging rings per device (pinning takes
//!   milliseconds), so repeated loads pay for neither.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

pub use cudarc;
use cudarc::driver::{
    sys, CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DeviceSlice, DriverError,
    PinnedHostSlice,
};

use super::parallel::{group_count, place_parallel};
use super::pipeline::Staging;
use super::{Backend, Control, DeviceBuffer, PlacementJob, Placer, RecordReader, StorageData};
use crate::error::{Error, ErrorKind, Result};
use crate::location::{Device, DeviceSupport};

/// The oldest driver API the bindings were generated for (cudarc's `cuda-12000`): CUDA 12.0.
const MIN_DRIVER_VERSION: i32 = 12000;

/// Staging slots in the ring: one being filled, the others copying.
const DEFAULT_SLOTS: usize = 4;
/// Fill threads (and rings) per device at most: one core fills ~10 GB/s, a PCIe 5 link takes ~50.
const DEFAULT_THREADS: usize = 4;
/// Storage bytes per fill thread at least, by default: smaller loads are not worth a thread and
/// a ring.
const MIN_GROUP_BYTES: u64 = 64 << 20;
/// Bytes per staging slot: large enough that a copy's fixed cost (~10 µs) is small next to its
/// transfer time, small enough that the ring stays a few tens of MiB.
const DEFAULT_SLOT_LEN: usize = 8 << 20;

/// Places storages on CUDA devices (register with [`crate::Loader::backend`]; with the `cuda`
/// feature the loader registers one by default).
///
/// ```no_run
/// # fn main() -> Result<(), ptload::Error> {
/// let ckpt = ptload::Loader::new().map_location("cuda:0").load("model.pt")?;
/// for storage in &ckpt.storages {
///     let buffer = storage.data.device_buffer().and_then(|b| {
///         b.as_any().downcast_ref::<ptload::place::cuda::CudaBuffer>()
///     });
///     if let Some(cuda) = buffer {
///         println!("{} on cuda:{} at {:#x}", storage.key, cuda.ordinal(), cuda.device_ptr());
///     }
/// }
/// # Ok(()) }
/// ```
pub struct CudaBackend {
    devices: Devices,
    slots: usize,
    slot_len: usize,
    threads: usize,
    group_bytes: u64,
}

/// Where the device count comes from.
#[derive(Clone, Debug)]
enum Devices {
    /// Asks the driver (once per process).
    Driver,
    /// A fixed answer (tests): a count, or why there is no device.
    Fixed(std::result::Result<usize, String>),
}

impl fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaBackend")
            .field("devices", &self.devices)
            .field("slots", &self.slots)
            .field("slot_len", &self.slot_len)
            .field("threads", &self.threads)
            .field("group_bytes", &self.group_bytes)
            .finish()
    }
}

impl Default for CudaBackend {
    fn default() -> Self {
        CudaBackend::new()
    }
}

impl CudaBackend {
    /// A backend that asks the CUDA driver which devices exist. Creating it calls nothing.
    pub fn new() -> Self {
        CudaBackend {
            devices: Devices::Driver,
            slots: DEFAULT_SLOTS,
            slot_len: DEFAULT_SLOT_LEN,
            threads: DEFAULT_THREADS,
            group_bytes: MIN_GROUP_BYTES,
        }
    }

    /// A backend whose `check` answers from `count` (a device count, or the reason there is no
    /// device) instead of asking the driver: for tests of the device-count rules. Placing still
    /// needs the driver and fails cleanly without it.
    pub fn with_device_count(count: std::result::Result<usize, String>) -> Self {
        CudaBackend {
            devices: Devices::Fixed(count),
            ..CudaBackend::new()
        }
    }

    /// The staging ring: `slots` page-locked buffers (at least 2) of `slot_len` bytes (rounded up
    /// to a multiple of 16) each. Defaults: 4 × 8 MiB.
    pub fn staging(mut self, slots: usize, slot_len: usize) -> Self {
        self.slots = slots.max(2);
        self.slot_len = slot_len.max(16).div_ceil(16) * 16;
        self
    }

    /// Fill threads per device (at least 1; default 4): each streams a group of storages
    /// through a ring of its own. A load uses one per [`CudaBackend::group_bytes`] of storage,
    /// up to this many.
    pub fn fill_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Storage bytes per fill thread at least (default 64 MiB): smaller loads use fewer threads,
    /// since each costs a thread start and a ring.
    pub fn group_bytes(mut self, bytes: u64) -> Self {
        self.group_bytes = bytes.max(1);
        self
    }

    /// How many CUDA devices there are (from the driver, asked once per process), or why none
    /// can be used (no driver library, a driver too old, `cuInit` failed). Never panics.
    pub fn device_count(&self) -> std::result::Result<usize, String> {
        match &self.devices {
            Devices::Driver => driver_device_count(),
            Devices::Fixed(count) => count.clone(),
        }
    }
}

/// The context of device `ordinal`: its primary context, retained once and kept for the process
/// (as torch keeps its own), since creating one costs a tenth of a second or more.
fn context(ordinal: usize) -> Result<Arc<CudaContext>> {
    static CONTEXTS: OnceLock<Mutex<HashMap<usize, Arc<CudaContext>>>> = OnceLock::new();
    // A driver must be there before cudarc is called at all (it panics otherwise), and the
    // device must exist, whatever count `check` was given.
    support(driver_device_count()).check(&Device::Cuda(Some(ordinal)))?;
    let mut contexts = CONTEXTS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(ctx) = contexts.get(&ordinal) {
        return Ok(ctx.clone());
    }
    let ctx = CudaContext::new(ordinal)
        .map_err(|e| device_error(ordinal, "creating a CUDA context", e))?;
    contexts.insert(ordinal, ctx.clone());
    Ok(ctx)
}

/// Staging rings given back by finished placers, a few per device, so that the next load does
/// not pin memory again (pinning tens of MiB takes milliseconds).
static RINGS: Mutex<Vec<CudaStaging>> = Mutex::new(Vec::new());
/// Rings kept per device.
const KEPT_RINGS: usize = 8;

/// A ring for `ordinal` of this shape: a kept one, or a new one.
fn take_ring(ordinal: usize, slots: usize, slot_len: usize) -> Result<CudaStaging> {
    {
        let mut rings = RINGS.lock().unwrap_or_else(PoisonError::into_inner);
        let fits = |r: &CudaStaging| {
            r.ordinal == ordinal && r.slots.len() == slots && r.slot_len == slot_len
        };
        if let Some(at) = rings.iter().position(fits) {
            return Ok(rings.swap_remove(at));
        }
    }
    CudaStaging::new(context(ordinal)?, slots, slot_len)
}

/// Keeps `ring` for the next load once its copies are done (a failed stream is dropped).
fn give_back_ring(ring: CudaStaging) {
    if ring.stream.synchronize().is_err() {
        return;
    }
    let mut rings = RINGS.lock().unwrap_or_else(PoisonError::into_inner);
    if rings.iter().filter(|r| r.ordinal == ring.ordinal).count() < KEPT_RINGS {
        rings.push(ring);
    }
}

impl Backend for CudaBackend {
    fn check(&self, device: &Device) -> Option<Result<Device>> {
        let Device::Cuda(_) = device else {
            return None;
        };
        Some(support(self.device_count()).check(device))
    }

    fn placer(&self, device: &Device) -> Result<Box<dyn Placer + '_>> {
        let Device::Cuda(index) = device else {
            return Err(location_error(format!(
                "the CUDA backend cannot place on {device}"
            )));
        };
        let ordinal = index.unwrap_or(0);
        // One ring now, so that a missing driver or device fails before any byte is read.
        let ring = take_ring(ordinal, self.slots, self.slot_len)?;
        Ok(Box::new(CudaPlacer {
            ordinal,
            slots: self.slots,
            slot_len: self.slot_len,
            threads: self.threads,
            group_bytes: self.group_bytes,
            rings: vec![ring],
        }))
    }
}

/// torch's rules for a device count, or for the reason there is no device.
fn support(count: std::result::Result<usize, String>) -> DeviceSupport {
    match count {
        Ok(count) => DeviceSupport {
            cuda_devices: count,
            ..DeviceSupport::default()
        },
        Err(reason) => DeviceSupport {
            cuda_devices: 0,
            cuda_reason: Some(reason),
            ..DeviceSupport::default()
        },
    }
}

/// The device count the driver reports, asked once per process; `Err` says why there is none.
fn driver_device_count() -> std::result::Result<usize, String> {
    static COUNT: OnceLock<std::result::Result<usize, String>> = OnceLock::new();
    COUNT
        .get_or_init(|| {
            // cudarc panics where a symbol is missing from an unexpected driver library: that
            // must become "no CUDA", not take the caller down.
            std::panic::catch_unwind(|| {
                // SAFETY: only tries to open the driver library by its usual names.
                probe_driver(|| unsafe { sys::is_culib_present() })
            })
            .unwrap_or_else(|_| Err("the CUDA driver library could not be used".to_string()))
        })
        .clone()
}

/// Asks the driver how many devices there are, calling into it only when `present` says the
/// library can be loaded.
fn probe_driver(present: impl Fn() -> bool) -> std::result::Result<usize, String> {
    if !present() {
        return Err("no CUDA driver library (libcuda.so) was found".to_string());
    }
    let mut version = 0;
    // SAFETY: writes one int; may be called before cuInit.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|e| format!("cuDriverGetVersion failed: {}", driver_message(e)))?;
    if version < MIN_DRIVER_VERSION {
        return Err(format!(
            "the CUDA driver supports CUDA {}.{}; ptload needs 12.0 or newer",
            version / 1000,
            version % 1000 / 10
        ));
    }
    cudarc::driver::result::init().map_err(|e| format!("cuInit failed: {}", driver_message(e)))?;
    let count = cudarc::driver::result::device::get_count()
        .map_err(|e| format!("cuDeviceGetCount failed: {}", driver_message(e)))?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// A driver error as `CUDA_ERROR_OUT_OF_MEMORY (out of memory)`.
fn driver_message(e: DriverError) -> String {
    match e.error_string() {
        Ok(text) => format!("{:?} ({})", e.0, text.to_string_lossy()),
        Err(_) => format!("{:?}", e.0),
    }
}

fn location_error(message: String) -> Error {
    Error::new(ErrorKind::Location { message })
}

/// An error of device `ordinal` while doing `what`.
fn device_error(ordinal: usize, what: &str, e: DriverError) -> Error {
    location_error(format!(
        "cuda:{ordinal}: {what} failed: {}",
        driver_message(e)
    ))
}

/// Sizes as torch prints them in its out-of-memory message (`2.00 GiB`).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// Places one device's storages through staging rings (one per fill thread in use), kept for
/// the next load when done.
struct CudaPlacer {
    ordinal: usize,
    slots: usize,
    slot_len: usize,
    threads: usize,
    group_bytes: u64,
    rings: Vec<CudaStaging>,
}

impl Drop for CudaPlacer {
    fn drop(&mut self) {
        for ring in self.rings.drain(..) {
            give_back_ring(ring);
        }
    }
}

impl Placer for CudaPlacer {
    fn place_all(
        &mut self,
        reader: &RecordReader<'_>,
        jobs: &[PlacementJob],
        control: &mut Control<'_>,
    ) -> Result<Vec<StorageData>> {
        let groups = group_count(jobs, self.threads, self.group_bytes);
        while self.rings.len() < groups {
            let ring = take_ring(self.ordinal, self.slots, self.slot_len)?;
            self.rings.push(ring);
        }
        place_parallel(
            &mut self.rings[..groups],
            reader,
            jobs,
            control,
            self.group_bytes,
        )
    }
}

/// One staging slot: page-locked host memory and the event recorded after its last copy.
struct Slot {
    host: PinnedHostSlice<u8>,
    copied: CudaEvent,
}

/// The CUDA side of a staged upload: a ring of pinned slots and one stream.
struct CudaStaging {
    ordinal: usize,
    stream: Arc<CudaStream>,
    slots: Vec<Slot>,
    slot_len: usize,
    /// The storage being uploaded (the last one allocated), for errors.
    current: Option<PlacementJob>,
}

impl CudaStaging {
    fn new(ctx: Arc<CudaContext>, slots: usize, slot_len: usize) -> Result<Self> {
        let ordinal = ctx.ordinal();
        let stream = ctx
            .new_stream()
            .map_err(|e| device_error(ordinal, "creating a stream", e))?;
        let slots = (0..slots)
            .map(|_| {
                // Not write-combined: byte swapping reads the slot back on the host.
                // SAFETY: the slot's bytes are only read after being filled.
                let host = unsafe { ctx.alloc_pinned_with_flags::<u8>(slot_len, 0) }
                    .map_err(|e| device_error(ordinal, "allocating pinned host memory", e))?;
                let copied = ctx
                    .new_event(None)
                    .map_err(|e| device_error(ordinal, "creating an event", e))?;
                Ok(Slot { host, copied })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CudaStaging {
            ordinal,
            stream,
            slots,
            slot_len,
            current: None,
        })
    }

    /// A failed driver call while copying: names the storage being copied when there is one.
    fn copy_error(&self, what: &str, e: DriverError) -> Error {
        copy_error(self.current.as_ref(), self.ordinal, what, e)
    }
}

fn copy_error(job: Option<&PlacementJob>, ordinal: usize, what: &str, e: DriverError) -> Error {
    match job {
        Some(job) => job.error(format!("{what} failed: {}", driver_message(e))),
        None => device_error(ordinal, what, e),
    }
}

fn no_slot(slot: usize, count: usize) -> Error {
    location_error(format!("staging slot {slot} of {count} does not exist"))
}

impl Staging for CudaStaging {
    /// `None` for an empty storage (the driver refuses zero-byte allocations).
    type Buffer = Option<CudaSlice<u8>>;

    fn slot_count(&self) -> usize {
        self.slots.len()
    }

    fn slot_len(&self) -> usize {
        self.slot_len
    }

    fn allocate(&mut self, job: &PlacementJob) -> Result<Self::Buffer> {
        self.current = Some(job.clone());
        if job.nbytes == 0 {
            return Ok(None);
        }
        let len = usize::try_from(job.nbytes).map_err(|_| {
            job.error(format!(
                "{} bytes do not fit in this machine's address space",
                job.nbytes
            ))
        })?;
        // SAFETY: every byte is written by the copies before the buffer is handed out.
        match unsafe { self.stream.alloc::<u8>(len) } {
            Ok(slice) => Ok(Some(slice)),
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => Err(job.error(format!(
                "CUDA out of memory. Tried to allocate {} (GPU {})",
                human_bytes(job.nbytes),
                self.ordinal
            ))),
            Err(e) => Err(job.error(format!(
                "allocating {} bytes failed: {}",
                job.nbytes,
                driver_message(e)
            ))),
        }
    }

    fn slot(&mut self, slot: usize) -> Result<&mut [u8]> {
        let CudaStaging {
            ordinal,
            slots,
            current,
            ..
        } = self;
        let count = slots.len();
        let s = slots.get_mut(slot).ok_or_else(|| no_slot(slot, count))?;
        let waited = s.copied.synchronize();
        waited.map_err(|e| copy_error(current.as_ref(), *ordinal, "waiting for a copy", e))?;
        // Its own event is never recorded (copies use `copied`): this cannot wait.
        s.host
            .as_mut_slice()
            .map_err(|e| copy_error(current.as_ref(), *ordinal, "lending a staging slot", e))
    }

    fn upload(
        &mut self,
        slot: usize,
        len: usize,
        dst: &mut Self::Buffer,
        dst_offset: u64,
    ) -> Result<()> {
        let s = self
            .slots
            .get(slot)
            .ok_or_else(|| no_slot(slot, self.slots.len()))?;
        let out_of_range = || {
            let message =
                format!("a copy of {len} bytes to offset {dst_offset} is out of the storage");
            match &self.current {
                Some(job) => job.error(message),
                None => location_error(format!("cuda:{}: {message}", self.ordinal)),
            }
        };
        let dst = dst.as_mut().ok_or_else(out_of_range)?;
        let start = usize::try_from(dst_offset).map_err(|_| out_of_range())?;
        let end = start.checked_add(len).ok_or_else(out_of_range)?;
        let mut view = dst.try_slice_mut(start..end).ok_or_else(out_of_range)?;
        let host = s
            .host
            .as_slice()
            .map_err(|e| self.copy_error("reading a staging slot", e))?;
        let src = host.get(..len).ok_or_else(out_of_range)?;
        // The slot is page-locked, so this copy is asynchronous; `copied` marks its end.
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(|e| self.copy_error("copying to the device", e))?;
        s.copied
            .record(&self.stream)
            .map_err(|e| self.copy_error("recording a copy's event", e))
    }

    fn finish(&mut self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| self.copy_error("finishing the copies", e))
    }

    fn storage_data(&mut self, buffer: Self::Buffer, job: &PlacementJob) -> Result<StorageData> {
        Ok(StorageData::Device(Arc::new(CudaBuffer {
            ordinal: self.ordinal,
            nbytes: job.nbytes,
            slice: buffer,
        })))
    }
}

/// A storage in CUDA device memory: its own allocation, freed when the last reference goes.
pub struct CudaBuffer {
    ordinal: usize,
    nbytes: u64,
    slice: Option<CudaSlice<u8>>,
}

impl CudaBuffer {
    /// The device's ordinal (`N` of `cuda:N`).
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The storage's device memory, for cudarc users; `None` for an empty storage.
    pub fn slice(&self) -> Option<&CudaSlice<u8>> {
        self.slice.as_ref()
    }

    /// The address of the storage's first byte in device memory (0 for an empty storage). A
    /// tensor's data starts `storage_offset × element size` bytes further.
    pub fn device_ptr(&self) -> u64 {
        match &self.slice {
            Some(slice) => {
                let (ptr, _sync) = slice.device_ptr(slice.stream());
                ptr
            }
            None => 0,
        }
    }
}

impl fmt::Debug for CudaBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CudaBuffer(cuda:{}, {} bytes)",
            self.ordinal, self.nbytes
        )
    }
}

impl DeviceBuffer for CudaBuffer {
    fn device(&self) -> Device {
        Device::Cuda(Some(self.ordinal))
    }

    fn nbytes(&self) -> u64 {
        self.nbytes
    }

    fn read_back(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        if out.is_empty() {
            return Ok(()); // an empty view reads nothing, wherever it points
        }
        let len = out.len();
        let out_of_range = || {
            location_error(format!(
                "cuda:{}: reading {len} bytes at offset {offset} of a {}-byte storage",
                self.ordinal, self.nbytes
            ))
        };
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let end = start.checked_add(len).ok_or_else(out_of_range)?;
        let view = self
            .slice
            .as_ref()
            .and_then(|slice| slice.try_slice(start..end))
            .ok_or_else(out_of_range)?;
        let stream = view.stream();
        stream
            .memcpy_dtoh(&view, out)
            .and_then(|()| stream.synchronize())
            .map_err(|e| device_error(self.ordinal, "reading back from the device", e))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(backend: &CudaBackend, device: Device) -> String {
        match backend.check(&device) {
            Some(Err(e)) => e.to_string(),
            other => panic!("{device}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn claims_only_cuda() {
        let backend = CudaBackend::with_device_count(Ok(1));
        assert!(backend.check(&Device::Cpu).is_none());
        assert!(backend.check(&Device::Meta).is_none());
        assert!(backend.check(&Device::WebGpu).is_none());
        assert!(backend.check(&Device::Cuda(Some(0))).is_some());
    }

    #[test]
    fn no_device_is_torchs_not_available() {
        let msg = message(&CudaBackend::with_device_count(Ok(0)), Device::Cuda(None));
        assert!(
            msg.starts_with("Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False"),
            "{msg}"
        );
        let msg = message(
            &CudaBackend::with_device_count(Err(
                "no CUDA driver library (libcuda.so) was found".into()
            )),
            Device::Cuda(Some(0)),
        );
        assert!(
            msg.contains("torch.cuda.is_available() is False (no CUDA driver library (libcuda.so) was found)"),
            "{msg}"
        );
    }

    #[test]
    fn device_count_rules() {
        let one = CudaBackend::with_device_count(Ok(1));
        assert_eq!(
            message(&one, Device::Cuda(Some(1))),
            "Attempting to deserialize object on CUDA device 1 but torch.cuda.device_count() is 1. \
             Please use map_location to map your storages to an existing device."
        );
        let two = CudaBackend::with_device_count(Ok(2));
        assert_eq!(
            two.check(&Device::Cuda(None)).unwrap().unwrap(),
            Device::Cuda(Some(0))
        );
        assert_eq!(
            two.check(&Device::Cuda(Some(1))).unwrap().unwrap(),
            Device::Cuda(Some(1))
        );
        assert!(message(&two, Device::Cuda(Some(2))).contains("device_count() is 2"));
    }

    #[test]
    fn probe_calls_nothing_without_the_library() {
        // Were any driver function called, cudarc would panic here (no libcuda on CI).
        assert_eq!(
            probe_driver(|| false),
            Err("no CUDA driver library (libcuda.so) was found".to_string())
        );
    }

    #[test]
    fn placer_without_a_driver_is_an_error() {
        // The fake count says cuda:0 exists; the placer still asks the real driver first.
        let backend = CudaBackend::with_device_count(Ok(1));
        let result = backend.placer(&Device::Cuda(Some(0)));
        match driver_device_count() {
            Err(reason) => {
                let msg = result.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(msg.contains("torch.cuda.is_available() is False"), "{msg}");
                assert!(msg.contains(&reason), "{msg}");
            }
            Ok(0) => assert!(result.is_err()),
            Ok(_) => assert!(result.is_ok(), "{:?}", result.err()),
        }
    }

    #[test]
    fn empty_buffers_read_nothing_and_refuse_more() {
        let empty = CudaBuffer {
            ordinal: 1,
            nbytes: 0,
            slice: None,
        };
        assert_eq!(empty.device(), Device::Cuda(Some(1)));
        assert_eq!(empty.device_ptr(), 0);
        assert!(empty.read_back(0, &mut []).is_ok());
        assert!(empty.read_back(64, &mut []).is_ok());
        let err = empty.read_back(0, &mut [0u8; 4]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cuda:1: reading 4 bytes at offset 0 of a 0-byte storage"
        );
        assert!(empty.read_back(u64::MAX, &mut [0u8; 1]).is_err());
    }

    #[test]
    fn staging_sizes_are_clamped() {
        let b = CudaBackend::new().staging(1, 17);
        assert_eq!((b.slots, b.slot_len), (2, 32));
        let b = CudaBackend::new().staging(3, 0);
        assert_eq!((b.slots, b.slot_len), (3, 16));
        assert_eq!(CudaBackend::new().threads, DEFAULT_THREADS);
        assert_eq!(CudaBackend::new().fill_threads(0).threads, 1);
    }

    #[test]
    fn sizes_print_as_torch_does() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(20 << 20), "20.00 MiB");
        assert_eq!(human_bytes(3 << 29), "1.50 GiB");
    }
}
