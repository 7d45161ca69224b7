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
    pub name: std::sync::Arc<str>,
    /// Absolute offset of the (possibly compressed) data.
    pub data_offset: u64,
    /// Bytes the data occupies in the file.
    pub stored_len: u64,
    /// Bytes once decompressed.
    pub size: u64,
    /// How the bytes are encoded.
    pub method: Method,
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
}
