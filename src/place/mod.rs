//! Placement: moving each storage's bytes, once, from the source to its device.
//!
//! Parsing has already decided every storage's device (see `location.rs`); a [`Placer`] for
//! that device receives the storage's record bytes and returns [`StorageData`]. The CPU placer
//! borrows whenever it can; the meta placer reads nothing.

pub mod cpu;

use std::borrow::Cow;
use std::ops::Range;

use crate::archive::ByteOrder;
use crate::error::Result;
use crate::location::Device;
use crate::source::SharedBytes;
use crate::torch::Dtype;

/// Where a placed storage's bytes are.
#[derive(Clone)]
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
    /// No data: a meta storage (`map_location="meta"`), or a storage not read.
    Meta,
}

impl StorageData {
    /// The bytes, when on the host.
    pub fn host_bytes(&self) -> Option<&[u8]> {
        match self {
            StorageData::Borrowed { source, range } => Some(&(**source).as_ref()[range.clone()]),
            StorageData::Owned(v) => Some(v),
            StorageData::Meta => None,
        }
    }

    /// Whether the bytes are borrowed from the source without a copy.
    pub fn is_borrowed(&self) -> bool {
        matches!(self, StorageData::Borrowed { .. })
    }
}

impl std::fmt::Debug for StorageData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageData::Borrowed { range, .. } => write!(f, "Borrowed({range:?})"),
            StorageData::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
            StorageData::Meta => f.write_str("Meta"),
        }
    }
}

/// One storage's bytes as the container holds them, ready to be placed.
pub struct RecordBytes<'a> {
    /// The storage's dtype.
    pub dtype: Dtype,
    /// Its bytes: borrowed from the source when stored, owned when they had to be inflated.
    pub bytes: Cow<'a, [u8]>,
    /// Offset of `bytes` within the source when borrowed.
    pub source_offset: Option<usize>,
    /// The byte order of the file.
    pub byte_order: ByteOrder,
    /// The unit to swap in when the byte order differs from the host's (1: never).
    pub swap_unit: usize,
}

/// Puts storages onto one device.
pub trait Placer {
    /// The device this placer fills.
    fn device(&self) -> Device;

    /// Places one storage, reading its bytes once.
    fn place(&mut self, source: &SharedBytes, record: RecordBytes<'_>) -> Result<StorageData>;
}
