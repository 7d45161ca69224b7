//! # ptload
//!
//! Loads PyTorch checkpoints (`torch.save` files) without Python and places their storages
//! where the caller asks, following `torch.load`'s `map_location` rules.
//!
//! ```
//! # fn main() -> Result<(), ptload::Error> {
//! let ckpt = ptload::load("examples/tiny_convnet.pt")?;
//! for (path, tensor) in ckpt.tensors() {
//!     println!("{path}: {} {:?} on {}", tensor.dtype(), tensor.shape(), tensor.device());
//! }
//! # Ok(()) }
//! ```
//!
//! ## Layers
//!
//! `source` (bytes) → `archive` (containers) → `pickle` (a general pickle VM) → `torch`
//! (rebuild functions, dtypes, weights-only policy) → `location` (map_location) → `place`
//! (bytes moved once). Parsing never touches tensor bytes; placing reads each storage once.
//!
//! ## Supported containers
//!
//! - the zip format of `torch.save` (torch ≥ 1.6), stored or deflated records, zip64, any
//!   folder name, either byte order;
//! - the legacy pickle stream (torch < 1.6), including protocol-0 files torch cannot read back;
//! - the tar format of torch ≤ 0.1;
//! - TorchScript archives (`torch.jit.save`), as an inert module tree.
//!
//! Also: a sharded checkpoint's `*.index.json` (`weight_map`; [`index`]) loads as one
//! checkpoint, a distributed checkpoint's folder ([`dcp`]) too, and `.safetensors` files load
//! with [`Loader::load_safetensors`].
//!
//! ## Writing
//!
//! [`Writer`] (shortcuts [`save`] and [`save_safetensors`]) writes a checkpoint's tensors as a
//! `.pt` in torch.save's zip format (storages whole, views and tied weights kept) or as
//! `.safetensors` through the `safetensors` crate (views as contiguous copies), optionally
//! sharded as transformers does; always under a temporary name, renamed when complete.
//!
//! ## Safety limits
//!
//! [`Limits`] bounds the pickle size, inflated record sizes (and deflate's 1032:1 ratio), memo
//! entries, nesting depth, the number of values built (a memo bomb stops there), storages,
//! tensor rank and the bytes one tensor may materialize. Each has a test with a hostile file
//! that asserts the [`ErrorKind::LimitExceeded`] naming it (`tests/error_kinds.rs`,
//! `tests/bad_input.rs`, `tests/zip_container.rs`).
//!
//! ## What is refused
//!
//! - under weights-only (the default): any global outside torch's allowlist, with torch's
//!   message (`posix.system`, `argparse.Namespace`, `__main__.Net`, …);
//! - a tensor whose dtype cannot have gradients (int, bool, quantized) saved with
//!   `requires_grad=True`, with torch's message ("only Tensors of floating point and complex
//!   dtype can require gradients");
//! - sparse, nested and wrapper-subclass tensors (named in the error), out-of-band buffers,
//!   the copyreg extension registry;
//! - files of other formats, named in [`ErrorKind::NotACheckpoint`] (`archive/detect.rs`):
//!   safetensors, GGUF, ONNX, gzip (a `.tar.gz` or `.gz` of a checkpoint), bzip2/xz/zstd/7z,
//!   HDF5, NumPy; a zip without `data.pkl` or a tar without torch's members (naming the
//!   checkpoint inside); a directory (naming `pytorch_model.bin` or an `*.index.json` in it).
//!
//! ## Safety
//!
//! - Nothing in a file is ever imported or executed. By default (as torch ≥ 2.6) only torch's
//!   weights-only allowlist of globals is accepted; [`Loader::weights_only`]`(false)` keeps
//!   other globals as inert [`Object`]s. Unlike torch, the weights-only mode restricts globals,
//!   not opcodes: a file torch's weights-only unpickler refuses only for an opcode outside its
//!   subset ("Unsupported operand N": protocol 4/5 `FRAME`, `BINSTRING`, `SHORT_BINBYTES`, …)
//!   loads here, since ptload's pickle machine executes nothing. For the same reason the tar
//!   format of torch ≤ 0.1 loads under weights-only when its globals are allowed, where torch
//!   refuses every tar file ("Cannot use ``weights_only=True`` with files saved in the legacy
//!   .tar format").
//! - Every length, count and view is checked before use; [`Limits`] bounds memory and time.
//! - Bad input is an [`Error`] naming the file and what is wrong, never a panic.

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod archive;
pub mod dcp;
mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod index;
pub mod loader;
pub mod location;
pub mod pickle;
pub mod place;
pub mod plan;
#[cfg(all(unix, feature = "mmap"))]
pub mod read_ahead;
pub mod source;
pub mod torch;
#[cfg(all(feature = "wasm", target_arch = "wasm32"))]
pub mod wasm;
pub mod write;

pub use archive::{ByteOrder, Format};
pub use dcp::{DcpFolder, Selection};
pub use error::{Error, ErrorKind, Result};
pub use loader::{Checkpoint, Limits, Loader, Storage, Tensor};
pub use location::{Device, MapLocation, Placement, StorageInfo};
pub use pickle::StringEncoding;
pub use place::{Backend, DeviceBuffer, Progress, StorageData};
pub use plan::{Plan, PlannedStorage};
pub use source::Source;
pub use torch::{Dict, Dims, Dtype, Object, StorageKey, TensorKind, TensorMeta, Text, Value};
pub use write::{Report, Writer};

/// Loads a checkpoint file with default options: `Loader::new().load(path)`.
#[cfg(not(target_arch = "wasm32"))]
pub fn load(path: impl AsRef<std::path::Path>) -> Result<Checkpoint> {
    Loader::new().load(path)
}

/// Writes a checkpoint's tensors as a `.pt` file in torch.save's zip format, with default
/// options: `Writer::new().save(ckpt, path)`.
#[cfg(not(target_arch = "wasm32"))]
pub fn save(ckpt: &Checkpoint, path: impl AsRef<std::path::Path>) -> Result<Report> {
    Writer::new().save(ckpt, path)
}

/// Writes a checkpoint's tensors as a `.safetensors` file, with default options:
/// `Writer::new().save_safetensors(ckpt, path)`.
#[cfg(not(target_arch = "wasm32"))]
pub fn save_safetensors(ckpt: &Checkpoint, path: impl AsRef<std::path::Path>) -> Result<Report> {
    Writer::new().save_safetensors(ckpt, path)
}

/// Loads a checkpoint from bytes with default options: `Loader::new().load_bytes(bytes)`.
pub fn load_bytes(bytes: impl AsRef<[u8]> + Send + Sync + 'static) -> Result<Checkpoint> {
    Loader::new().load_bytes(bytes)
}

/// Entry points for the fuzz targets in `fuzz/` (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    use crate::{Limits, Loader};

    /// Small caps, so that the fuzzer finds logic errors rather than legitimate large
    /// allocations.
    pub fn limits() -> Limits {
        Limits {
            max_pickle_bytes: 1 << 24,
            max_record_bytes: 1 << 24,
            max_pickle_nodes: 1_000_000,
            max_memo_entries: 100_000,
            max_depth: 1000,
            max_values: 200_000,
            max_storages: 100_000,
            max_rank: 64,
            max_tensor_bytes: 1 << 24,
        }
    }

    /// Reads `data` as a torch pickle (the interpreter included).
    pub fn parse_pickle(data: &[u8], weights_only: bool) -> bool {
        let loader = Loader::new();
        let mut options = loader.fuzz_pickle_options();
        options.weights_only = weights_only;
        crate::torch::parse_pickle(data, "fuzz", &options).is_ok()
    }

    /// Loads `data`; when it loads, writes its tensors as a `.pt` and as a `.safetensors` in
    /// memory (what the writers refuse is fine) and checks that each reads back with the same
    /// dtype, shape, stride, offset and elements. A difference is a panic: a fuzzer finding.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn write_round_trip(data: &[u8]) {
        let mut loader = Loader::new();
        loader.limits(limits());
        let Ok(ckpt) = loader.load_bytes(data.to_vec()) else {
            return;
        };
        let mut writer = crate::Writer::new();
        writer.skip_unsupported(true);
        if let Ok((bytes, report)) = writer.to_pt_bytes(&ckpt) {
            let back = loader.load_bytes(bytes);
            assert!(
                back.is_ok(),
                "the .pt written does not load: {:?}",
                back.err()
            );
            let back = back.unwrap_or_else(|_| unreachable!());
            for path in &report.written {
                let (a, b) = (ckpt.tensor(path), back.tensor(path));
                assert!(a.is_some() && b.is_some(), "{path} lost in the .pt");
                let (Some(a), Some(b)) = (a, b) else { continue };
                assert_eq!(
                    (a.dtype(), a.shape(), a.stride(), a.storage_offset()),
                    (b.dtype(), b.shape(), b.stride(), b.storage_offset()),
                    "{path}"
                );
                assert_eq!(
                    a.to_contiguous_bytes().ok(),
                    b.to_contiguous_bytes().ok(),
                    "{path}"
                );
            }
        }
        if let Ok((bytes, report)) = writer.to_safetensors_bytes(&ckpt) {
            let file = safetensors::SafeTensors::deserialize(&bytes);
            assert!(file.is_ok(), "the .safetensors written does not parse");
            let Ok(file) = file else { return };
            for path in &report.written {
                let view = file.tensor(path);
                assert!(view.is_ok(), "{path} lost in the .safetensors");
                let (Ok(view), Some(t)) = (view, ckpt.tensor(path)) else {
                    continue;
                };
                assert_eq!(
                    Some(view.data()),
                    t.to_contiguous_bytes().ok().as_deref(),
                    "{path}"
                );
            }
        }
    }

    /// Loads `data` and hashes every tensor (under the caps).
    pub fn load_and_hash(data: &[u8]) {
        let mut loader = Loader::new();
        loader
            .limits(limits())
            .weights_only(data.last().is_some_and(|b| b & 1 == 0));
        if let Ok(ckpt) = loader.load_bytes(data.to_vec()) {
            for (_, t) in ckpt.tensors() {
                let _ = t.sha256();
            }
        }
    }
}
