//! The one public error type: what went wrong ([`ErrorKind`]) and in which file.
//!
//! Every message names the file (a path, or `<memory>`), and where the structure is at fault,
//! the record and byte offset. Wording follows torch where users will search for it.

use std::fmt;
use std::io;

use crate::pickle::PickleError;
use crate::torch::Dtype;

/// Result with ptload's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure to load a checkpoint. `Display` gives one line: `<file>: <what is wrong>`.
#[derive(Debug)]
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: Option<String>,
    kind: ErrorKind,
    /// The record and byte offset (within it) the error is about, when the kind does not say.
    at: Option<(String, u64)>,
    /// The path of the tensor the error is about.
    tensor_path: Option<String>,
}

/// What went wrong. `Display` gives the message without the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading the file failed.
    #[error("{0}")]
    Io(#[source] io::Error),
    /// The bytes are not a checkpoint of any known format.
    #[error("not a PyTorch checkpoint: {reason}")]
    NotACheckpoint {
        /// Why not.
        reason: String,
    },
    /// The zip container is malformed.
    #[error("zip container, byte 0x{offset:X}: {message}")]
    Zip {
        /// Absolute byte offset of the faulty structure.
        offset: u64,
        /// What is wrong there.
        message: String,
    },
    /// A record the format requires is absent.
    #[error("record '{name}' is missing from the archive")]
    MissingRecord {
        /// The record's full name inside the container.
        name: String,
    },
    /// The archive's `version` record is out of the range torch reads.
    #[error(
        "Attempted to read a PyTorch file with version {version}, but the {} supported version for reading is {}",
        if *version < 1 { "minimum" } else { "maximum" },
        if *version < 1 { 1 } else { 10 }
    )]
    UnsupportedVersion {
        /// The version the file declares.
        version: u64,
    },
    /// The `byteorder` record is neither `little` nor `big`.
    #[error("Unknown endianness type: {value}")]
    UnknownByteOrder {
        /// The record's content.
        value: String,
    },
    /// The pickle could not be read.
    #[error("{record} {error}")]
    Pickle {
        /// The record holding the pickle (`archive/data.pkl`).
        record: String,
        /// Where and what.
        #[source]
        error: PickleError,
    },
    /// Weights-only loading refused a global (torch's wording, plus how to opt out).
    #[error("{message}")]
    WeightsOnly {
        /// The full message.
        message: String,
    },
    /// A storage's record does not hold the bytes the pickle declares.
    #[error(
        "storage '{record}' (data at byte 0x{offset:X}): record size ({actual} bytes) does not match expected size ({} bytes = {numel} elements * {} bytes/element) for dtype {}",
        numel.saturating_mul(dtype.element_size() as u64),
        dtype.element_size(),
        dtype.scalar_type_name()
    )]
    StorageSize {
        /// The record's full name.
        record: String,
        /// Absolute offset of the record's data.
        offset: u64,
        /// Elements the pickle declares.
        numel: u64,
        /// The storage's dtype.
        dtype: Dtype,
        /// Bytes the record holds.
        actual: u64,
    },
    /// A record's bytes could not be read (bad deflate stream, out of the file, …).
    #[error("record '{record}' (data at byte 0x{offset:X}): {message}")]
    Record {
        /// The record's full name.
        record: String,
        /// Absolute offset of the record's data.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// A tensor's metadata is invalid (bounds, rank, overflow, bad arguments).
    #[error("{message}")]
    InvalidTensor {
        /// What is wrong, naming the rebuild function or tensor.
        message: String,
    },
    /// The file uses something ptload does not support.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What.
        what: String,
    },
    /// Bytes that a partial source ([`crate::source::SparseBytes`]) has not loaded yet:
    /// load these `(offset, len)` ranges and try again.
    #[error("needs bytes not loaded yet:{}", ranges_text(ranges))]
    NeedBytes {
        /// The missing ranges.
        ranges: Vec<(u64, u64)>,
    },
    /// A safety limit was exceeded.
    #[error(
        "limit {limit} exceeded: {value} > {max} (raise it with Loader::limits if the file is trusted)"
    )]
    LimitExceeded {
        /// The limit's name, as in [`crate::Limits`].
        limit: &'static str,
        /// The value met.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// A distributed checkpoint's `.metadata` does not describe its items consistently
    /// (chunks overlapping, leaving part of a tensor uncovered, missing items or files).
    #[error("key '{key}' of the distributed checkpoint: {message}")]
    Dcp {
        /// The flattened key (`model.embed.weight`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A sharded checkpoint's index names a shard that is missing, or a tensor its shard does
    /// not hold.
    #[error("shard '{shard}': {message}")]
    Index {
        /// The shard file, as the index names it.
        shard: String,
        /// What is wrong.
        message: String,
    },
    /// A storage cannot be placed where `map_location` sends it (torch's wording).
    #[error("{message}")]
    Location {
        /// The full message.
        message: String,
    },
    /// Placing a storage on its device failed (out of memory, a buffer over the device's
    /// limit, a lost device, a bad record found while streaming it).
    #[error("placing storage '{storage}' on {device}: {message}")]
    Placement {
        /// The storage's key in the file.
        storage: String,
        /// The device it was going to.
        device: String,
        /// What went wrong.
        message: String,
    },
    /// The load was cancelled (see [`crate::Loader::cancel_flag`]); everything it had placed
    /// was freed.
    #[error("the load was cancelled")]
    Cancelled,
}

impl Error {
    /// An error of this kind, not yet tied to a file.
    pub fn new(kind: ErrorKind) -> Self {
        Error {
            inner: Box::new(Inner {
                file: None,
                kind,
                at: None,
                tensor_path: None,
            }),
        }
    }

    /// The error for a pickle that could not be read: [`ErrorKind::LimitExceeded`] when one of
    /// the machine's bounds stopped it (at the opcode's offset), else [`ErrorKind::Pickle`].
    pub(crate) fn pickle(record: &str, error: PickleError) -> Self {
        match error.limit {
            Some(hit) => Error::limit(hit.limit, hit.value, hit.max).at(record, error.offset),
            None => Error::new(ErrorKind::Pickle {
                record: record.to_owned(),
                error,
            }),
        }
    }

    /// Ties the error to a byte offset within a record (a pickle's opcode).
    pub(crate) fn at(mut self, record: &str, offset: u64) -> Self {
        self.inner.at = Some((record.to_owned(), offset));
        self
    }

    /// Ties the error to the tensor at `path`.
    pub(crate) fn for_tensor(mut self, path: impl Into<String>) -> Self {
        self.inner.tensor_path = Some(path.into());
        self
    }

    /// The byte offset the error is about, when one is known: absolute in the file for the
    /// container's structures and records ([`ErrorKind::Zip`], [`ErrorKind::Record`],
    /// [`ErrorKind::StorageSize`]); within the pickle's record ([`Error::record`]) for pickle
    /// errors, weights-only refusals and the pickle machine's limits.
    pub fn offset(&self) -> Option<u64> {
        match &self.inner.kind {
            ErrorKind::Zip { offset, .. }
            | ErrorKind::Record { offset, .. }
            | ErrorKind::StorageSize { offset, .. } => Some(*offset),
            ErrorKind::Pickle { error, .. } => Some(error.offset),
            _ => self.inner.at.as_ref().map(|(_, offset)| *offset),
        }
    }

    /// The record (`archive/data.pkl`, `archive/data/0`) the error is about, when known.
    pub fn record(&self) -> Option<&str> {
        match &self.inner.kind {
            ErrorKind::Record { record, .. }
            | ErrorKind::StorageSize { record, .. }
            | ErrorKind::Pickle { record, .. } => Some(record),
            ErrorKind::MissingRecord { name } => Some(name),
            _ => self.inner.at.as_ref().map(|(record, _)| record.as_str()),
        }
    }

    /// The `.`-joined path of the tensor the error is about (as [`crate::Checkpoint::tensors`]
    /// would have named it), when the error is about one tensor.
    pub fn tensor_path(&self) -> Option<&str> {
        self.inner.tensor_path.as_deref()
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.inner.kind
    }

    /// The file the error is about (a path, or `<memory>`), once known.
    pub fn file(&self) -> Option<&str> {
        self.inner.file.as_deref()
    }

    /// Ties the error to a file, unless it already names one.
    pub fn in_file(mut self, file: &str) -> Self {
        if self.inner.file.is_none() {
            self.inner.file = Some(file.to_owned());
        }
        self
    }

    pub(crate) fn zip(offset: u64, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Zip {
            offset,
            message: message.into(),
        })
    }

    pub(crate) fn invalid_tensor(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidTensor {
            message: message.into(),
        })
    }

    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported { what: what.into() })
    }

    pub(crate) fn limit(limit: &'static str, value: u64, max: u64) -> Self {
        Error::new(ErrorKind::LimitExceeded { limit, value, max })
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error::new(kind)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::new(ErrorKind::Io(e))
    }
}

/// `NeedBytes`' ranges as text: the first eight, then how many more.
fn ranges_text(ranges: &[(u64, u64)]) -> String {
    let mut text = String::new();
    for (offset, len) in ranges.iter().take(8) {
        text.push_str(&format!(" {offset}..{}", offset.saturating_add(*len)));
    }
    if ranges.len() > 8 {
        text.push_str(&format!(" and {} more ranges", ranges.len() - 8));
    }
    text
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.inner.file {
            write!(f, "{file}: ")?;
        }
        // Where in a record, unless the kind's own text is torch's (weights-only refusals).
        if let (Some((record, offset)), false) = (
            &self.inner.at,
            matches!(self.inner.kind, ErrorKind::WeightsOnly { .. }),
        ) {
            write!(f, "{record} byte 0x{offset:X}: ")?;
        }
        write!(f, "{}", self.inner.kind)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.inner.kind {
            ErrorKind::Io(e) => Some(e),
            ErrorKind::Pickle { error, .. } => Some(error),
            _ => None,
        }
    }
}
