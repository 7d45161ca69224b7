//! Containers: which format a file is (sniffed from its first bytes, never its name) and where
//! each record's bytes lie. Knows nothing of pickle or torch.
//!
//! | format | signature | module |
//! |---|---|---|
//! | zip (`torch.save` ≥ 1.6, `torch.jit.save`) | `PK\3\4` at 0 | `zip.rs` |
//! | tar (torch ≤ 0.1) | `ustar` at 257 | `tar.rs` |
//! | legacy pickle stream (1001) | a pickle of the magic number at 0 | `legacy.rs` |
//!
//! Files of other formats (safetensors, GGUF, ONNX, gzip, …) are named by `detect.rs` when
//! refused.

// Internals, public for the fuzz targets, tests and benches only (not a stable API).
#[doc(hidden)]
pub mod detect;
#[doc(hidden)]
pub mod legacy;
#[doc(hidden)]
pub mod tar;
#[doc(hidden)]
pub mod zip;
#[doc(hidden)]
pub mod zip_spec;

use std::fmt;

#[doc(hidden)]
pub use self::zip::{DeferredHeaders, Method, ZipDirectory};

/// The container a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// The zip format of `torch.save` (default since 1.6).
    Zip,
    /// The legacy pickle stream (`_use_new_zipfile_serialization=False`).
    Legacy,
    /// The tar format of torch ≤ 0.1.
    Tar,
    /// A TorchScript archive (`torch.jit.save`).
    TorchScript,
    /// A distributed checkpoint folder (`torch.distributed.checkpoint`): a `.metadata` and
    /// `.distcp` files of `torch.save` items.
    Dcp,
    /// A `.safetensors` file (read by `ptload convert`, not by [`crate::Loader::load`]).
    Safetensors,
}

impl Format {
    /// The name used by the CLI and JS API.
    pub fn name(self) -> &'static str {
        match self {
            Format::Zip => "zip",
            Format::Legacy => "legacy",
            Format::Tar => "tar",
            Format::TorchScript => "torchscript",
            Format::Dcp => "dcp",
            Format::Safetensors => "safetensors",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Byte order of the tensor data in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// Little-endian (every legacy file, and zip files from little-endian machines).
    Little,
    /// Big-endian (zip files written on big-endian machines).
    Big,
}

impl ByteOrder {
    /// `little` or `big`.
    pub fn name(self) -> &'static str {
        match self {
            ByteOrder::Little => "little",
            ByteOrder::Big => "big",
        }
    }

    /// The byte order of the machine running this code.
    pub fn native() -> ByteOrder {
        if cfg!(target_endian = "big") {
            ByteOrder::Big
        } else {
            ByteOrder::Little
        }
    }
}

/// Where one record's bytes lie in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Full name inside the container (`archive/data/0`), shared by every copy of the record
    /// (a plan's copy costs no allocation).
    pub name: RecordName,
    /// Absolute offset of the (possibly compressed) data.
    pub data_offset: u64,
    /// Bytes the data occupies in the file.
    pub stored_len: u64,
    /// Bytes once decompressed.
    pub size: u64,
    /// How the bytes are encoded.
    pub method: Method,
}

/// A record's name: a slice of one buffer that every name of a directory shares, so that a
/// directory of many records allocates its names once, and a copy of a name costs no
/// allocation. It derefs to `str`.
#[derive(Clone)]
pub struct RecordName {
    /// The buffer (a zip directory's names, one after another; or this name alone).
    all: std::sync::Arc<str>,
    /// Where the name lies in `all`.
    start: usize,
    end: usize,
}

impl RecordName {
    /// The name `range` of `all` (`None` when it is not a range of whole characters of it).
    pub fn in_shared(all: &std::sync::Arc<str>, range: std::ops::Range<usize>) -> Option<Self> {
        all.get(range.clone())?;
        Some(RecordName {
            all: all.clone(),
            start: range.start,
            end: range.end,
        })
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        self.all.get(self.start..self.end).unwrap_or_default()
    }
}

impl std::ops::Deref for RecordName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for RecordName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for RecordName {
    fn from(name: &str) -> Self {
        RecordName {
            all: name.into(),
            start: 0,
            end: name.len(),
        }
    }
}

impl From<String> for RecordName {
    fn from(name: String) -> Self {
        let end = name.len();
        RecordName {
            all: name.into(),
            start: 0,
            end,
        }
    }
}

impl PartialEq for RecordName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RecordName {}

impl PartialEq<str> for RecordName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for RecordName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for RecordName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for RecordName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the first bytes of a file say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[doc(hidden)]
pub enum Sniffed {
    /// `PK\3\4`: a zip archive.
    Zip,
    /// `ustar` at 257: a tar archive.
    Tar,
    /// Anything else: torch tries the legacy pickle stream.
    Pickle,
}

/// Sniffs a file's container from its first bytes, as torch.load does (spec §1).
#[doc(hidden)]
pub fn sniff(data: &[u8]) -> Sniffed {
    if data.starts_with(b"PK\x03\x04") {
        Sniffed::Zip
    } else if data.len() >= 262 && &data[257..262] == b"ustar" {
        Sniffed::Tar
    } else {
        Sniffed::Pickle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_display_as_the_names_the_cli_and_js_api_print() {
        for (format, name) in [
            (Format::Zip, "zip"),
            (Format::Legacy, "legacy"),
            (Format::Tar, "tar"),
            (Format::TorchScript, "torchscript"),
            (Format::Dcp, "dcp"),
            (Format::Safetensors, "safetensors"),
        ] {
            assert_eq!(format.name(), name);
            assert_eq!(format.to_string(), name);
        }
        assert_eq!(ByteOrder::Little.name(), "little");
        assert_eq!(ByteOrder::Big.name(), "big");
    }

    #[test]
    fn a_record_name_is_its_slice_of_the_shared_names() {
        let all: std::sync::Arc<str> = "archive/data.pklarchive/data/0".into();
        let pickle = RecordName::in_shared(&all, 0..16).unwrap();
        let data = RecordName::in_shared(&all, 16..30).unwrap();
        assert_eq!(pickle.as_str(), "archive/data.pkl");
        assert_eq!(&*data, "archive/data/0");
        assert_eq!(data.as_ref() as &str, "archive/data/0");
        assert_eq!(data.to_string(), "archive/data/0");
        assert_eq!(format!("{data:?}"), "\"archive/data/0\"");
        // Equal by text, wherever the text lies.
        assert_eq!(data, RecordName::from("archive/data/0"));
        assert_eq!(data, RecordName::from(String::from("archive/data/0")));
        assert_ne!(data, pickle);
        assert!(data == *"archive/data/0" && data == "archive/data/0");
        assert!(data != "archive/data/1" && data != *"archive/data/1");
        // No copy of the text: both share the one buffer.
        assert!(std::sync::Arc::ptr_eq(&pickle.all, &data.all));
        assert!(std::sync::Arc::ptr_eq(&data.clone().all, &all));
        // A range outside the buffer, or not on character boundaries, names nothing.
        assert!(RecordName::in_shared(&all, 16..31).is_none());
        let accented: std::sync::Arc<str> = "é".into();
        assert!(RecordName::in_shared(&accented, 0..1).is_none());
        assert_eq!(
            RecordName::in_shared(&accented, 0..2).unwrap().as_str(),
            "é"
        );
    }
}
