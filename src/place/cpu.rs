//! The CPU placer: borrow in place when the record is stored, aligned for its element type and
//! already in host byte order; copy (and swap) only when it must.

use std::borrow::Cow;

use super::{Placer, RecordBytes, StorageData};
use crate::archive::ByteOrder;
use crate::error::Result;
use crate::location::Device;
use crate::source::SharedBytes;

/// Places storages in host memory.
#[derive(Debug, Default)]
pub struct CpuPlacer;

impl Placer for CpuPlacer {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn place(&mut self, source: &SharedBytes, record: RecordBytes<'_>) -> Result<StorageData> {
        let swap = record.byte_order != ByteOrder::native() && record.swap_unit > 1;
        let align = record.dtype.element_size().max(record.swap_unit);
        match (record.bytes, record.source_offset) {
            (Cow::Borrowed(bytes), Some(offset)) if !swap && offset % align == 0 => {
                Ok(StorageData::Borrowed {
                    source: source.clone(),
                    range: offset..offset + bytes.len(),
                })
            }
            (bytes, _) => {
                let mut owned = bytes.into_owned();
                if swap {
                    swap_in_place(&mut owned, record.swap_unit);
                }
                Ok(StorageData::Owned(owned))
            }
        }
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
