//! Placement: moving each storage's bytes, once, from the source to its device.
//!
//! Parsing has already decided every storage's device (see `location.rs` and `plan/`). The
//! loader groups the storages by device and hands each group, whole, to that device's
//! [`Placer`] ([`Placer::place_all`]), so a device placer can pipeline its uploads. Every placer
//! shares one contract:
//!
//! - it reads records only through a [`RecordReader`]: [`RecordReader::borrow`] when the bytes
//!   can be used in place, [`RecordReader::stream`] otherwise (inflating and byte-swapping chunk
//!   by chunk, so no placer ever holds a whole record, let alone the file, in host memory);
//! - it keeps the memory in flight bounded (a few chunks);
//! - it reports progress and honours cancellation through a [`Control`];
//! - when it fails or is cancelled, everything it created is freed before it returns.
//!
//! Devices other than the host are [`Backend`]s registered with the loader
//! ([`crate::Loader::backend`]): a backend says which devices it can place on (before any byte
//! is read, with torch's wording when it cannot) and makes the placer. Placed device storages
//! are [`DeviceBuffer`]s, read back by [`crate::Tensor::to_contiguous_bytes`] and `--sha256`.
//!
//! | file | owns |
//! |---|---|
//! | `reader.rs` | [`RecordReader`], [`RecordStream`]: borrow or stream a record with its conversions |
//! | `cpu.rs` | the host placer: borrow in place, copy only when it must |
//! | `pipeline.rs` | [`pipeline::place_staged`]: a ring of staging slots and asynchronous copies, behind the [`pipeline::Staging`] trait |
//! | `parallel.rs` | [`parallel::place_parallel`]: one device's storages in groups, each through its own ring on its own thread |
//! | `cuda.rs` | (feature `cuda`) the CUDA backend: pinned staging ring, one stream, a device allocation per storage |
//! | `wgpu.rs` | (feature `wgpu`) the wgpu backend: bounded `write_buffer` chunks, a `wgpu::Buffer` per storage |
//! | `wgpu_convert.rs` | (feature `wgpu`) float storages to float16/float32 on the GPU (`src/shaders/convert.wgsl`) |

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(target_arch = "wasm32"))]
pub mod parallel;
pub mod pipeline;
mod reader;
#[cfg(feature = "wgpu")]
pub mod wgpu;
#[cfg(feature = "wgpu")]
pub mod wgpu_convert;

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::archive::Record;
use crate::error::{Error, ErrorKind, Result};
use crate::location::Device;
use crate::source::SharedBytes;
use crate::torch::Dtype;

pub use reader::{RecordReader, RecordStream};

/// Whether bytes of a file in `byte_order` must be swapped (in units of `swap_unit`) to be in
/// the host's byte order. The one rule: the native reader and the JS placement use it.
pub fn needs_swap(byte_order: crate::archive::ByteOrder, swap_unit: usize) -> bool {
    byte_order != crate::archive::ByteOrder::native() && swap_unit > 1
}

/// A storage that lives on a device other than the host: CUDA memory, a `wgpu::Buffer`, …
pub trait DeviceBuffer: fmt::Debug + Send + Sync + 'static {
    /// The device holding it, e.g. `Device::Cuda(Some(0))` or `Device::WebGpu`.
    fn device(&self) -> Device;
    /// The storage's size in bytes (not counting any padding the device needed).
    fn nbytes(&self) -> u64;
    /// Copies the storage's bytes `[offset, offset + out.len())` into `out`, in host byte
    /// order. Blocks until they are there.
    fn read_back(&self, offset: u64, out: &mut [u8]) -> Result<()>;
    /// The backend's concrete type, to downcast to (`buffer.as_any().downcast_ref::<T>()`).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Where a placed storage's bytes are.
#[derive(Clone)]
#[non_exhaustive]
pub enum StorageData {
    /// Host memory borrowed from the source (an mmap or the caller's buffer): zero-copy.
    Borrowed {
        /// The source's bytes.
        source: SharedBytes,
        /// The storage's range in them.
        range: Range<usize>,
    },
    /// Host memory of its own (decompressed or byte-swapped).
    Owned(Vec<u8>),
    /// Memory of a device other than the host.
    Device(Arc<dyn DeviceBuffer>),
    /// No data: a meta storage (`map_location="meta"`), or a storage not read.
    Meta,
}

impl StorageData {
    /// The bytes, when on the host.
    pub fn host_bytes(&self) -> Option<&[u8]> {
        match self {
            StorageData::Borrowed { source, range } => Some(&(**source).as_ref()[range.clone()]),
            StorageData::Owned(v) => Some(v),
            StorageData::Device(_) | StorageData::Meta => None,
        }
    }

    /// The device buffer, when on a device other than the host.
    pub fn device_buffer(&self) -> Option<&Arc<dyn DeviceBuffer>> {
        match self {
            StorageData::Device(buffer) => Some(buffer),
            _ => None,
        }
    }

    /// Whether the bytes are borrowed from the source without a copy.
    pub fn is_borrowed(&self) -> bool {
        matches!(self, StorageData::Borrowed { .. })
    }
}

impl fmt::Debug for StorageData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageData::Borrowed { range, .. } => write!(f, "Borrowed({range:?})"),
            StorageData::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
            StorageData::Device(buffer) => write!(f, "Device({buffer:?})"),
            StorageData::Meta => f.write_str("Meta"),
        }
    }
}

/// One storage a placer must place.
#[derive(Clone, Debug)]
pub struct PlacementJob {
    /// The storage's index in the checkpoint's storages.
    pub index: usize,
    /// Its key in the file (`"0"`; the record's full name is `record.name`).
    pub key: crate::StorageKey,
    /// Its dtype (uint8 for untyped storages).
    pub dtype: Dtype,
    /// Its size in bytes once inflated (`numel × element size`).
    pub nbytes: u64,
    /// Where it goes, as the backend's `check` made it (e.g. `Cuda(Some(1))`).
    pub device: Device,
    /// Where its bytes lie in the file.
    pub record: Record,
    /// The unit its bytes are swapped in when the file's byte order is not the host's.
    pub swap_unit: usize,
}

impl PlacementJob {
    /// An error about this storage, naming it and its device.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Placement {
            storage: self.key.to_string(),
            device: self.device.to_string(),
            message: message.into(),
        })
    }
}

/// How far a load's placement has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes placed so far (all devices).
    pub placed_bytes: u64,
    /// Bytes to place in all (storages that are not meta).
    pub total_bytes: u64,
}

/// A progress callback, shared by clones of a loader.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Progress and cancellation for one load, shared by all its placers.
pub struct Control<'a> {
    placed: u64,
    total: u64,
    progress: Option<&'a (dyn Fn(Progress) + Send + Sync)>,
    cancel: Option<&'a AtomicBool>,
}

impl<'a> Control<'a> {
    /// A control for placing `total_bytes`, reporting to `progress`, cancelled once `cancel`
    /// is set.
    pub fn new(
        total_bytes: u64,
        progress: Option<&'a (dyn Fn(Progress) + Send + Sync)>,
        cancel: Option<&'a AtomicBool>,
    ) -> Self {
        Control {
            placed: 0,
            total: total_bytes,
            progress,
            cancel,
        }
    }

    /// A control that reports nothing and is never cancelled.
    pub fn silent(total_bytes: u64) -> Control<'static> {
        Control::new(total_bytes, None, None)
    }

    /// `bytes` more were placed: reports progress, then fails with
    /// [`ErrorKind::Cancelled`] once the load is cancelled.
    pub fn advance(&mut self, bytes: u64) -> Result<()> {
        self.placed = self.placed.saturating_add(bytes);
        if let Some(progress) = self.progress {
            progress(Progress {
                placed_bytes: self.placed,
                total_bytes: self.total,
            });
        }
        self.check()
    }

    /// Fails with [`ErrorKind::Cancelled`] once the load is cancelled.
    pub fn check(&self) -> Result<()> {
        match self.cancel {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(Error::new(ErrorKind::Cancelled)),
            _ => Ok(()),
        }
    }

    /// Bytes placed so far.
    pub fn placed_bytes(&self) -> u64 {
        self.placed
    }
}

/// Places all the storages one device gets.
pub trait Placer {
    /// Places every job, in order, returning one [`StorageData`] per job.
    ///
    /// Called once per device per load with all of that device's storages, so it can
    /// pipeline. It keeps the memory in flight bounded, calls [`Control::advance`] as bytes
    /// land, and on any error frees everything it created before returning the error. Errors
    /// about one storage name it ([`PlacementJob::error`]).
    fn place_all(
        &mut self,
        reader: &RecordReader<'_>,
        jobs: &[PlacementJob],
        control: &mut Control<'_>,
    ) -> Result<Vec<StorageData>>;
}

/// A kind of device a loader can place onto (the host and meta are built in).
pub trait Backend: fmt::Debug + Send + Sync {
    /// `None` when `device` is not this backend's; `Some(Ok(device))` (canonical, e.g. bare
    /// `cuda` as `cuda:0`) when it can place there; `Some(Err(..))`, in torch's wording, when
    /// it cannot. Called for every storage before any byte is read.
    fn check(&self, device: &Device) -> Option<Result<Device>>;

    /// A placer for a device [`Backend::check`] accepted.
    fn placer(&self, device: &Device) -> Result<Box<dyn Placer + '_>>;
}

/// Records to place in tests: a file and its jobs.
#[cfg(test)]
pub(crate) mod testing {
    use std::io::Write;

    use super::PlacementJob;
    use crate::archive::{Method, Record};
    use crate::location::Device;
    use crate::torch::Dtype;

    /// A file of float32 records of the given lengths for `device` (deflated where
    /// `deflated(i)`), after `lead` bytes of padding; their jobs, and their contents as the file
    /// holds them (inflated).
    pub fn records(
        lens: &[usize],
        deflated: impl Fn(usize) -> bool,
        device: Device,
        lead: usize,
    ) -> (Vec<u8>, Vec<PlacementJob>, Vec<Vec<u8>>) {
        let (mut file, mut jobs, mut contents) = (vec![0; lead], Vec::new(), Vec::new());
        for (i, &len) in lens.iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|b| (b * 7 + i * 13 + b / 251) as u8).collect();
            let (method, stored) = if deflated(i) {
                let mut e =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&data).unwrap();
                (Method::Deflated, e.finish().unwrap())
            } else {
                (Method::Stored, data.clone())
            };
            let record = Record {
                name: format!("archive/data/{i}").into(),
                data_offset: file.len() as u64,
                stored_len: stored.len() as u64,
                size: len as u64,
                method,
            };
            file.extend_from_slice(&stored);
            jobs.push(PlacementJob {
                index: i,
                key: i.to_string().into(),
                dtype: Dtype::Float32,
                nbytes: len as u64,
                device: device.clone(),
                record,
                swap_unit: 4,
            });
            contents.push(data);
        }
        (file, jobs, contents)
    }
}
