//! Staged uploads: every storage of a device streams through a small ring of staging slots
//! (pinned host memory for CUDA) while earlier slots are being copied to the device
//! asynchronously. Memory in flight is `slot_count × slot_len`, whatever the checkpoint's size.
//!
//! The device side is the [`Staging`] trait, so the scheduling here is the same code for every
//! device, and [`HostStaging`] (host memory standing in for a device, with a count of live
//! allocations) tests it on machines without one.
//!
//! ```text
//! slot:   0        1        2        0 (waits for copy 0)  1 ...
//! fill:   |a0|     |a1|     |b0|     |b1|
//! copy:       a0->A    a1->A    b0->B    b1->B
//! ```

use super::{Control, PlacementJob, RecordReader, StorageData};
use crate::error::Result;

/// The device side of a staged upload.
pub trait Staging {
    /// A device allocation holding one storage.
    type Buffer;

    /// How many staging slots the ring has (at least 1).
    fn slot_count(&self) -> usize;

    /// Bytes per slot (a multiple of 16, so byte swaps never straddle two slots).
    fn slot_len(&self) -> usize;

    /// Allocates device memory for one storage (`job.nbytes` bytes).
    fn allocate(&mut self, job: &PlacementJob) -> Result<Self::Buffer>;

    /// Waits until `slot`'s previous copy has finished, then lends it to be filled.
    fn slot(&mut self, slot: usize) -> Result<&mut [u8]>;

    /// Starts copying `slot[..len]` into `dst` at `dst_offset`. The slot stays busy until the
    /// next [`Staging::slot`] call for it returns.
    fn upload(
        &mut self,
        slot: usize,
        len: usize,
        dst: &mut Self::Buffer,
        dst_offset: u64,
    ) -> Result<()>;

    /// Waits for every copy started so far.
    fn finish(&mut self) -> Result<()>;

    /// Turns a fully uploaded buffer into the storage's data (after [`Staging::finish`]).
    fn storage_data(&mut self, buffer: Self::Buffer, job: &PlacementJob) -> Result<StorageData>;
}

/// Streams every job through the staging ring: slot `i` is filled (inflated and byte-swapped
/// on the way) while the copies out of the other slots run. On error or cancellation the
/// copies in flight are waited for and every buffer allocated so far is dropped (freed)
/// before the error is returned.
pub fn place_staged<S: Staging>(
    staging: &mut S,
    reader: &RecordReader<'_>,
    jobs: &[PlacementJob],
    control: &mut Control<'_>,
) -> Result<Vec<StorageData>> {
    let mut buffers = Vec::with_capacity(jobs.len());
    let streamed = stream_all(staging, reader, jobs, control, &mut buffers);
    // Copies still in flight read from the slots and write to the buffers: wait for them
    // before anything is freed, also on the error path.
    let finished = staging.finish();
    streamed?;
    finished?;
    let mut placed = Vec::with_capacity(jobs.len());
    for (buffer, job) in buffers.into_iter().zip(jobs) {
        placed.push(staging.storage_data(buffer, job)?);
    }
    Ok(placed)
}

fn stream_all<S: Staging>(
    staging: &mut S,
    reader: &RecordReader<'_>,
    jobs: &[PlacementJob],
    control: &mut Control<'_>,
    buffers: &mut Vec<S::Buffer>,
) -> Result<()> {
    let slots = staging.slot_count().max(1);
    let mut next_slot = 0;
    for job in jobs {
        control.check()?;
        let mut buffer = staging.allocate(job)?;
        let mut stream = reader.stream(job)?;
        let mut offset = 0u64;
        while stream.remaining() > 0 {
            let slot = next_slot;
            next_slot = (next_slot + 1) % slots;
            let dst = staging.slot(slot)?;
            let n = stream.read(dst)?;
            if n == 0 {
                break;
            }
            staging.upload(slot, n, &mut buffer, offset)?;
            offset += n as u64;
            control.advance(n as u64)?;
        }
        buffers.push(buffer);
    }
    Ok(())
}

/// Host memory standing in for a device: slots and "device" buffers are `Vec`s, an upload is a
/// copy made when the slot is next waited for (as a real asynchronous copy would land), and
/// live allocations are counted. Used to test the pipeline, and by device backends' tests.
#[derive(Debug)]
pub struct HostStaging {
    slots: Vec<Vec<u8>>,
    pending: Vec<Option<Pending>>,
    live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Fail the allocation of the storage with this index (to test cleanup).
    pub fail_allocation_of: Option<usize>,
    /// Most slots ever busy at once.
    pub max_busy: usize,
}

#[derive(Debug)]
struct Pending {
    len: usize,
    dst: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    dst_offset: usize,
}

/// A [`HostStaging`] "device" allocation; dropping it frees it.
#[derive(Debug)]
pub struct HostBuffer {
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        self.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl HostStaging {
    /// A ring of `slot_count` slots of `slot_len` bytes.
    pub fn new(slot_count: usize, slot_len: usize) -> Self {
        HostStaging {
            slots: vec![vec![0; slot_len]; slot_count],
            pending: (0..slot_count).map(|_| None).collect(),
            live: Default::default(),
            fail_allocation_of: None,
            max_busy: 0,
        }
    }

    /// Allocations alive now.
    pub fn live_buffers(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn land(&mut self, slot: usize) {
        if let Some(p) = self.pending[slot].take() {
            let mut dst = p.dst.lock().unwrap_or_else(|e| e.into_inner());
            dst[p.dst_offset..p.dst_offset + p.len].copy_from_slice(&self.slots[slot][..p.len]);
        }
    }
}

impl Staging for HostStaging {
    type Buffer = HostBuffer;

    fn slot_count(&self) -> usize {
        self.slots.len()
    }

    fn slot_len(&self) -> usize {
        self.slots.first().map_or(0, Vec::len)
    }

    fn allocate(&mut self, job: &PlacementJob) -> Result<HostBuffer> {
        if self.fail_allocation_of == Some(job.index) {
            return Err(job.error("out of memory (simulated)"));
        }
        self.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(HostBuffer {
            bytes: std::sync::Arc::new(std::sync::Mutex::new(vec![0; job.nbytes as usize])),
            live: self.live.clone(),
        })
    }

    fn slot(&mut self, slot: usize) -> Result<&mut [u8]> {
        self.land(slot);
        Ok(&mut self.slots[slot])
    }

    fn upload(
        &mut self,
        slot: usize,
        len: usize,
        dst: &mut HostBuffer,
        dst_offset: u64,
    ) -> Result<()> {
        self.pending[slot] = Some(Pending {
            len,
            dst: dst.bytes.clone(),
            dst_offset: dst_offset as usize,
        });
        let busy = self.pending.iter().filter(|p| p.is_some()).count();
        self.max_busy = self.max_busy.max(busy);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        for slot in 0..self.slots.len() {
            self.land(slot);
        }
        Ok(())
    }

    fn storage_data(&mut self, buffer: HostBuffer, _job: &PlacementJob) -> Result<StorageData> {
        let bytes = std::mem::take(&mut *buffer.bytes.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(StorageData::Owned(bytes))
    }
}
