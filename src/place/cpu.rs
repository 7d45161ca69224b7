//! The CPU placer: borrow in place when the record is stored, aligned for its element type and
//! already in host byte order; copy (inflating and swapping on the way) only when it must.

use super::{Control, PlacementJob, Placer, RecordReader, StorageData};
use crate::error::Result;
use crate::source::SharedBytes;
use crate::torch::Dtype;

/// Places storages in host memory.
pub struct CpuPlacer {
    source: SharedBytes,
}

impl std::fmt::Debug for CpuPlacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CpuPlacer")
    }
}

impl CpuPlacer {
    /// A placer whose borrowed storages share `source` (the bytes the reader reads).
    pub fn new(source: SharedBytes) -> Self {
        CpuPlacer { source }
    }

    fn place_one(
        &self,
        reader: &RecordReader<'_>,
        job: &PlacementJob,
        control: &mut Control<'_>,
    ) -> Result<StorageData> {
        let align = alignment(job.dtype, job.swap_unit);
        if let Some(bytes) = reader.borrow(job) {
            let base = (*self.source).as_ref().as_ptr() as usize;
            let start = bytes.as_ptr() as usize;
            if start % align == 0 && start >= base {
                let offset = start - base;
                control.advance(job.nbytes)?;
                return Ok(StorageData::Borrowed {
                    source: self.source.clone(),
                    range: offset..offset + bytes.len(),
                });
            }
        }
        let len = usize::try_from(job.nbytes)
            .map_err(|_| job.error("the storage does not fit in this address space"))?;
        let mut owned = Vec::new();
        owned
            .try_reserve_exact(len)
            .map_err(|_| job.error(format!("out of host memory for {len} bytes")))?;
        owned.resize(len, 0);
        let mut stream = reader.stream(job)?;
        let mut filled = 0;
        while filled < len {
            let end = (filled + COPY_CHUNK).min(len);
            let n = stream.read(&mut owned[filled..end])?;
            if n == 0 {
                break;
            }
            filled += n;
            control.advance(n as u64)?;
        }
        Ok(StorageData::Owned(owned))
    }
}

/// The alignment host bytes of a storage need to be used in place: its element size, or its
/// swap unit (the element size of the tensor dtype viewing it) when wider. The one rule: the
/// CPU placer and the JS placement (`src/wasm`) use it.
pub fn alignment(dtype: Dtype, swap_unit: usize) -> usize {
    dtype.element_size().max(swap_unit).max(1)
}

/// Bytes copied between progress reports (a multiple of every swap unit).
const COPY_CHUNK: usize = 16 << 20;

impl Placer for CpuPlacer {
    fn place_all(
        &mut self,
        reader: &RecordReader<'_>,
        jobs: &[PlacementJob],
        control: &mut Control<'_>,
    ) -> Result<Vec<StorageData>> {
        let mut placed = Vec::with_capacity(jobs.len());
        for job in jobs {
            control.check()?;
            placed.push(self.place_one(reader, job, control)?);
        }
        Ok(placed)
    }
}

/// Reverses the bytes of each `unit`-sized element (a trailing partial element is left alone).
pub fn swap_in_place(bytes: &mut [u8], unit: usize) {
    if unit > 1 {
        for chunk in bytes.chunks_exact_mut(unit) {
            chunk.reverse();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_by_unit() {
        let mut b = [1, 2, 3, 4, 5, 6, 7, 8];
        swap_in_place(&mut b, 4);
        assert_eq!(b, [4, 3, 2, 1, 8, 7, 6, 5]);
        swap_in_place(&mut b, 1);
        assert_eq!(b, [4, 3, 2, 1, 8, 7, 6, 5]);
    }
}
