//! wgpu placement (feature `wgpu`): `map_location="webgpu"` (alias `wgpu`) puts every storage in
//! its own `wgpu::Buffer` on the caller's device ([`crate::Loader::wgpu`]) or on the default
//! adapter ([`WgpuBackend::default_adapter`], what the CLI uses), on Vulkan, Metal or DX12.
//!
//! - Each storage gets one buffer (`STORAGE | COPY_SRC | COPY_DST`, its size rounded up to
//!   [`wgpu::COPY_BUFFER_ALIGNMENT`]), shared by every tensor that views it. A storage larger
//!   than the device's `max_buffer_size` is refused, naming it, its size and the limit, before
//!   any buffer is created.
//! - Bytes go up with `Queue::write_buffer`, chunk by chunk: straight from the source where the
//!   record can be borrowed (stored, host byte order), otherwise through one host slot that the
//!   [`RecordReader`] fills (inflating and byte-swapping on the way). `write_buffer` copies into
//!   wgpu's own staging memory, which is freed once the submission that carries it completes: the
//!   placer submits every `in_flight / 2` bytes and waits for the submission before, so staging
//!   memory stays near `in_flight` (64 MiB by default; at most `in_flight` plus two chunks) while
//!   the GPU copies one half as the host fills the other.
//! - Errors (out of memory, a bad record, cancellation) destroy every buffer created so far before
//!   the error is returned; device errors are caught with error scopes, never left to wgpu's
//!   default handler (which panics).
//! - [`WgpuBuffer::to_dtype`] (and [`super::wgpu_convert::Converter`]) converts a floating
//!   storage to `float16` / `float32` on the GPU, bit-exactly as torch's `.to(dtype)`.
//! - [`WgpuBuffer::read_back`] copies the range (widened to 4-byte bounds) into a `MAP_READ` buffer
//!   in bounded chunks and maps it.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};

pub use wgpu;

use super::{Backend, Control, DeviceBuffer, PlacementJob, Placer, RecordReader, StorageData};
use crate::error::{Error, ErrorKind, Result};
use crate::location::Device;
use crate::torch::Dtype;

/// Bytes per chunk written: a multiple of 16 (byte swaps never straddle two chunks).
const DEFAULT_CHUNK: usize = 8 << 20;
/// Staging bytes in flight at most, by default.
const DEFAULT_IN_FLIGHT: u64 = 64 << 20;
/// Bytes read back per `MAP_READ` copy at most.
const READ_BACK_CHUNK: u64 = 32 << 20;

/// Places storages on a wgpu device (register with [`crate::Loader::wgpu`] or
/// [`crate::Loader::backend`]).
///
/// ```no_run
/// # fn main() -> Result<(), ptload::Error> {
/// use ptload::place::wgpu::{WgpuBackend, WgpuBuffer};
/// let backend = WgpuBackend::default_adapter()?;
/// let (device, queue) = (backend.device().clone(), backend.queue().clone());
/// let ckpt = ptload::Loader::new().map_location("webgpu").wgpu(device, queue).load("model.pt")?;
/// for (path, tensor) in ckpt.tensors() {
///     let buffer = tensor.device_buffer().and_then(|b| b.as_any().downcast_ref::<WgpuBuffer>());
///     if let Some(gpu) = buffer {
///         println!("{path}: {:?} at byte {}", gpu.buffer(), tensor.byte_offset());
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WgpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    chunk_len: usize,
    in_flight: u64,
}

impl fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("chunk_len", &self.chunk_len)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl WgpuBackend {
    /// A backend placing on `device`, writing through `queue` (the caller's; wgpu handles are
    /// shared, so the caller keeps using them).
    pub fn new(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        WgpuBackend {
            device,
            queue,
            chunk_len: DEFAULT_CHUNK,
            in_flight: DEFAULT_IN_FLIGHT,
        }
    }

    /// A backend on wgpu's default adapter (`Instance::request_adapter` with default options,
    /// backends as `WGPU_BACKEND` says), with a device that has the adapter's own limits (so
    /// buffers may be as large as the adapter allows). Fails with one line when there is none.
    pub fn default_adapter() -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter =
            pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
                .map_err(|e| no_adapter(&e.to_string()))?;
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("ptload"),
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))
            .map_err(|e| no_adapter(&format!("requesting a device failed: {e}")))?;
        Ok(WgpuBackend::new(device, queue))
    }

    /// Bytes per chunk written (rounded up to a multiple of 16; default 8 MiB) and staging bytes
    /// in flight at most (at least two chunks; default 64 MiB).
    pub fn staging(mut self, chunk_len: usize, in_flight: u64) -> Self {
        self.chunk_len = chunk_len.max(16).div_ceil(16) * 16;
        self.in_flight = in_flight.max(2 * self.chunk_len as u64);
        self
    }

    /// The device storages are placed on.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue the uploads go through.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }
}

/// Places on wgpu's default adapter ([`WgpuBackend::default_adapter`]), requested the first time
/// a storage is mapped to `webgpu` and kept: what the CLI registers. Without an adapter, `check`
/// fails before any byte is read.
#[derive(Debug, Default)]
pub struct DefaultAdapterBackend {
    backend: OnceLock<std::result::Result<WgpuBackend, String>>,
}

impl DefaultAdapterBackend {
    /// A backend that has not looked for an adapter yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The adapter's backend, found once.
    pub fn get(&self) -> Result<&WgpuBackend> {
        self.backend
            .get_or_init(|| WgpuBackend::default_adapter().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|message| location_error(message.clone()))
    }
}

impl Backend for DefaultAdapterBackend {
    fn check(&self, device: &Device) -> Option<Result<Device>> {
        match device {
            Device::WebGpu => Some(self.get().map(|_| Device::WebGpu)),
            _ => None,
        }
    }

    fn placer(&self, device: &Device) -> Result<Box<dyn Placer + '_>> {
        self.get()?.placer(device)
    }
}

/// The error when no adapter (or no device on it) can be had.
fn no_adapter(why: &str) -> Error {
    location_error(format!(
        "Attempting to deserialize object on a WebGPU device, but no wgpu adapter is available \
         ({why}). Use map_location=\"cpu\" (CLI: --map-location cpu) to load on the CPU."
    ))
}

fn location_error(message: String) -> Error {
    Error::new(ErrorKind::Location { message })
}

impl Backend for WgpuBackend {
    fn check(&self, device: &Device) -> Option<Result<Device>> {
        match device {
            Device::WebGpu => Some(Ok(Device::WebGpu)),
            _ => None,
        }
    }

    fn placer(&self, device: &Device) -> Result<Box<dyn Placer + '_>> {
        match device {
            Device::WebGpu => Ok(Box::new(WgpuPlacer { backend: self })),
            other => Err(location_error(format!(
                "the wgpu backend cannot place on {other}"
            ))),
        }
    }
}

/// Places one load's webgpu storages.
struct WgpuPlacer<'b> {
    backend: &'b WgpuBackend,
}

/// `n` rounded up to [`wgpu::COPY_BUFFER_ALIGNMENT`].
pub(super) fn padded(n: u64) -> u64 {
    n.div_ceil(wgpu::COPY_BUFFER_ALIGNMENT) * wgpu::COPY_BUFFER_ALIGNMENT
}

/// Waits for the device's error scope (pushed by the caller) and turns an error into ours.
pub(super) fn scope_error(scope: wgpu::ErrorScopeGuard) -> Option<String> {
    pollster::block_on(scope.pop()).map(|e| e.to_string())
}

impl WgpuPlacer<'_> {
    /// Every storage must fit in one buffer: refused before anything is created.
    fn check_sizes(&self, jobs: &[PlacementJob]) -> Result<()> {
        let limit = self.backend.device.limits().max_buffer_size;
        for job in jobs {
            if padded(job.nbytes) > limit {
                return Err(job.error(format!(
                    "the storage is {} bytes, over the device's max_buffer_size of {limit} bytes",
                    job.nbytes
                )));
            }
        }
        Ok(())
    }

    fn create(&self, job: &PlacementJob) -> Result<wgpu::Buffer> {
        let device = &self.backend.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(&job.key),
            size: padded(job.nbytes),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        match scope_error(scope) {
            None => Ok(buffer),
            Some(e) => {
                buffer.destroy();
                Err(job.error(format!(
                    "allocating a {}-byte buffer failed: {e}",
                    job.nbytes
                )))
            }
        }
    }

    /// Streams every job into its buffer, pushing each created buffer to `buffers`.
    fn upload_all(
        &self,
        reader: &RecordReader<'_>,
        jobs: &[PlacementJob],
        control: &mut Control<'_>,
        buffers: &mut Vec<wgpu::Buffer>,
    ) -> Result<()> {
        let mut writer = Writer {
            device: &self.backend.device,
            queue: &self.backend.queue,
            unsubmitted: 0,
            submit_every: self.backend.in_flight / 2,
            previous: None,
        };
        let chunk_len = self.backend.chunk_len;
        let mut slot: Vec<u8> = Vec::new();
        for job in jobs {
            control.check()?;
            let buffer = self.create(job)?;
            buffers.push(buffer.clone());
            if job.nbytes == 0 {
                continue;
            }
            if let Some(bytes) = reader.borrow(job) {
                let mut offset = 0u64;
                for chunk in bytes.chunks(chunk_len) {
                    writer.write(&buffer, offset, chunk, &mut slot)?;
                    offset += chunk.len() as u64;
                    control.advance(chunk.len() as u64)?;
                }
                continue;
            }
            if slot.len() < chunk_len + 4 {
                slot.resize(chunk_len + 4, 0);
            }
            let mut stream = reader.stream(job)?;
            let mut offset = 0u64;
            while stream.remaining() > 0 {
                let n = stream.read(&mut slot[..chunk_len])?;
                if n == 0 {
                    break;
                }
                // The last chunk may end off a 4-byte bound: zero-pad it (the buffer is padded).
                let len = padded(n as u64) as usize;
                slot[n..len].fill(0);
                writer.write_aligned(&buffer, offset, &slot[..len])?;
                offset += n as u64;
                control.advance(n as u64)?;
            }
        }
        writer.finish()
    }
}

/// Writes chunks through the queue, submitting every `submit_every` bytes and waiting for the
/// submission before, so wgpu's staging memory stays bounded.
struct Writer<'d> {
    device: &'d wgpu::Device,
    queue: &'d wgpu::Queue,
    unsubmitted: u64,
    submit_every: u64,
    previous: Option<wgpu::SubmissionIndex>,
}

impl Writer<'_> {
    /// Writes `chunk` (any length) at `offset` (a multiple of 4); a tail off a 4-byte bound goes
    /// through `pad`, zero-padded.
    fn write(
        &mut self,
        buffer: &wgpu::Buffer,
        offset: u64,
        chunk: &[u8],
        pad: &mut Vec<u8>,
    ) -> Result<()> {
        let whole = chunk.len() & !3;
        if whole > 0 {
            self.write_aligned(buffer, offset, &chunk[..whole])?;
        }
        let tail = &chunk[whole..];
        if !tail.is_empty() {
            pad.clear();
            pad.extend_from_slice(tail);
            pad.resize(4, 0);
            self.write_aligned(buffer, offset + whole as u64, &pad[..4])?;
        }
        Ok(())
    }

    /// Writes `bytes` (a multiple of 4 long) at `offset` (a multiple of 4).
    fn write_aligned(&mut self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) -> Result<()> {
        self.queue.write_buffer(buffer, offset, bytes);
        self.unsubmitted += bytes.len() as u64;
        if self.unsubmitted >= self.submit_every {
            let index = self.queue.submit([]);
            self.unsubmitted = 0;
            if let Some(before) = self.previous.replace(index) {
                self.wait(Some(before))?;
            }
        }
        Ok(())
    }

    fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: index,
                timeout: None,
            })
            .map(|_| ())
            .map_err(|e| location_error(format!("webgpu: waiting for the uploads failed: {e}")))
    }

    /// Submits what is left and waits for every upload.
    fn finish(&mut self) -> Result<()> {
        let index = self.queue.submit([]);
        self.previous = None;
        self.wait(Some(index))
    }
}

impl Placer for WgpuPlacer<'_> {
    fn place_all(
        &mut self,
        reader: &RecordReader<'_>,
        jobs: &[PlacementJob],
        control: &mut Control<'_>,
    ) -> Result<Vec<StorageData>> {
        self.check_sizes(jobs)?;
        let device = &self.backend.device;
        // Errors of the writes (out of staging memory, a device lost) land here, not in wgpu's
        // default handler, which panics.
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut buffers = Vec::with_capacity(jobs.len());
        let mut result = self.upload_all(reader, jobs, control, &mut buffers);
        if result.is_err() {
            // Wait for what was submitted (it writes to the buffers) before destroying them.
            let _ = device.poll(wgpu::PollType::wait_indefinitely());
        }
        for scope in [validation, memory, internal] {
            if let (Ok(()), Some(e)) = (&result, scope_error(scope)) {
                result = Err(location_error(format!("webgpu: uploading failed: {e}")));
            }
        }
        if let Err(e) = result {
            for buffer in &buffers {
                buffer.destroy();
            }
            return Err(e);
        }
        Ok(buffers
            .into_iter()
            .zip(jobs)
            .map(|(buffer, job)| {
                StorageData::Device(Arc::new(WgpuBuffer {
                    buffer,
                    device: self.backend.device.clone(),
                    queue: self.backend.queue.clone(),
                    nbytes: job.nbytes,
                    dtype: job.dtype,
                }))
            })
            .collect())
    }
}

/// A storage in a `wgpu::Buffer` of its own (its size padded to 4 bytes), freed when the last
/// handle to it goes.
pub struct WgpuBuffer {
    buffer: wgpu::Buffer,
    device: wgpu::Device,
    queue: wgpu::Queue,
    nbytes: u64,
    dtype: Dtype,
}

impl WgpuBuffer {
    /// The storage's dtype (uint8 for untyped storages).
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The queue it was written through.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Another buffer of the same device: `nbytes` of `dtype` in `buffer`.
    pub(super) fn with_buffer(&self, buffer: wgpu::Buffer, dtype: Dtype, nbytes: u64) -> Self {
        WgpuBuffer {
            buffer,
            device: self.device.clone(),
            queue: self.queue.clone(),
            nbytes,
            dtype,
        }
    }

    /// The buffer (`STORAGE | COPY_SRC | COPY_DST`). A tensor's bytes start at its
    /// [`crate::Tensor::byte_offset`] in it.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// The device it lives on.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// Copies `[start, end)` (4-byte bounds, within the buffer) into `out`.
    fn read_aligned(&self, start: u64, end: u64, out: &mut [u8]) -> Result<()> {
        let fail = |what: String| location_error(format!("webgpu: reading back failed: {what}"));
        let size = end - start;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("ptload read-back"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = scope_error(scope) {
            staging.destroy();
            return Err(fail(e));
        }
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        encoder.copy_buffer_to_buffer(&self.buffer, start, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        let result = match (polled, rx.recv()) {
            (Err(e), _) => Err(fail(e.to_string())),
            (_, Err(_)) => Err(fail("the mapping never finished".into())),
            (_, Ok(Err(e))) => Err(fail(e.to_string())),
            (Ok(_), Ok(Ok(()))) => match staging.slice(..).get_mapped_range() {
                Ok(view) => {
                    out.copy_from_slice(&view[..out.len()]);
                    Ok(())
                }
                Err(e) => Err(fail(e.to_string())),
            },
        };
        staging.destroy();
        result
    }
}

impl fmt::Debug for WgpuBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WgpuBuffer(webgpu, {}, {} bytes)",
            self.dtype.name(),
            self.nbytes
        )
    }
}

impl DeviceBuffer for WgpuBuffer {
    fn device(&self) -> Device {
        Device::WebGpu
    }

    fn nbytes(&self) -> u64 {
        self.nbytes
    }

    fn read_back(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        if out.is_empty() {
            return Ok(()); // an empty view reads nothing, wherever it points
        }
        let len = out.len() as u64;
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.nbytes)
            .ok_or_else(|| {
                location_error(format!(
                    "webgpu: reading {len} bytes at offset {offset} of a {}-byte storage",
                    self.nbytes
                ))
            })?;
        let align = wgpu::COPY_BUFFER_ALIGNMENT;
        let mut at = offset;
        let mut out = out;
        while at < end {
            let start = at / align * align;
            let stop = end.min(start + READ_BACK_CHUNK);
            let (head, rest) = out.split_at_mut((stop - at) as usize);
            let mut bytes = vec![0u8; (padded(stop) - start) as usize];
            self.read_aligned(start, padded(stop), &mut bytes)?;
            let skip = (at - start) as usize;
            head.copy_from_slice(&bytes[skip..skip + head.len()]);
            out = rest;
            at = stop;
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_pad_to_the_copy_alignment() {
        assert_eq!(padded(0), 0);
        assert_eq!(padded(1), 4);
        assert_eq!(padded(4), 4);
        assert_eq!(padded(13), 16);
    }

    #[test]
    fn no_adapter_is_one_clear_line() {
        let msg = no_adapter("No suitable graphics adapter found").to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("no wgpu adapter is available"), "{msg}");
        assert!(msg.contains("No suitable graphics adapter found"), "{msg}");
        assert!(msg.contains("--map-location cpu"), "{msg}");
    }
}
