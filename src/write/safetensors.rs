//! The safetensors writer, through the `safetensors` crate (the format's own library).
//!
//! Each tensor becomes one entry under its path: a contiguous tensor in host memory is handed
//! to the crate borrowed (from the mmap, for a file), any other view as a contiguous copy of
//! its elements made when the crate asks for it, so at most one tensor's copy is alive at a
//! time. `__metadata__` holds `{"format": "pt", "source": <file name>}` and, with
//! [`super::Writer::dedup`], one `dropped → kept` entry per alias left out.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use ::safetensors::{Dtype as StDtype, View};

use super::{Chosen, Report, Writer};
use crate::error::{Error, Result};
use crate::loader::{Checkpoint, Tensor};
use crate::torch::Dtype;

/// The safetensors name of a dtype, when the format has one that `safetensors.torch` (0.8)
/// loads. Quantized, `float4_e2m1fn_x2`, `complex32`/`complex128`, `bcomplex32` and the
/// `bits*` types have none; `float8_e8m0fnu` (`F8_E8M0`) has a name but `safetensors.torch`
/// cannot load it, so it is refused too.
pub fn safetensors_dtype(dtype: Dtype) -> Option<StDtype> {
    use Dtype::*;
    Some(match dtype {
        Float64 => StDtype::F64,
        Float32 => StDtype::F32,
        Float16 => StDtype::F16,
        BFloat16 => StDtype::BF16,
        Float8E4M3Fn => StDtype::F8_E4M3,
        Float8E5M2 => StDtype::F8_E5M2,
        Float8E4M3FnUz => StDtype::F8_E4M3FNUZ,
        Float8E5M2FnUz => StDtype::F8_E5M2FNUZ,
        Complex64 => StDtype::C64,
        Int8 => StDtype::I8,
        Int16 => StDtype::I16,
        Int32 => StDtype::I32,
        Int64 => StDtype::I64,
        UInt8 => StDtype::U8,
        UInt16 => StDtype::U16,
        UInt32 => StDtype::U32,
        UInt64 => StDtype::U64,
        Bool => StDtype::BOOL,
        Float8E8M0Fnu | Float4E2M1FnX2 | Complex32 | BComplex32 | Complex128 | QInt8 | QUInt8
        | QInt32 | QUInt4x2 | QUInt2x4 | Bits8 | Bits16 | Bits1x8 | Bits2x4 | Bits4x2 => {
            return None
        }
    })
}

/// The torch dtype of a safetensors dtype name, for reading.
pub(crate) fn torch_dtype(dtype: StDtype) -> Option<Dtype> {
    use Dtype::*;
    Some(match dtype {
        StDtype::F64 => Float64,
        StDtype::F32 => Float32,
        StDtype::F16 => Float16,
        StDtype::BF16 => BFloat16,
        StDtype::F8_E4M3 => Float8E4M3Fn,
        StDtype::F8_E5M2 => Float8E5M2,
        StDtype::F8_E8M0 => Float8E8M0Fnu,
        StDtype::F8_E4M3FNUZ => Float8E4M3FnUz,
        StDtype::F8_E5M2FNUZ => Float8E5M2FnUz,
        StDtype::I8 => Int8,
        StDtype::I16 => Int16,
        StDtype::I32 => Int32,
        StDtype::I64 => Int64,
        StDtype::U8 => UInt8,
        StDtype::U16 => UInt16,
        StDtype::U32 => UInt32,
        StDtype::U64 => UInt64,
        StDtype::BOOL => Bool,
        StDtype::C64 => Complex64,
        _ => return None,
    })
}

/// Shared by the views while the crate writes: the first error met, and progress.
struct State<'w> {
    error: RefCell<Option<Error>>,
    written: Cell<u64>,
    total: u64,
    writer: &'w Writer,
}

/// One tensor as the crate sees it.
struct Entry<'s, 'c> {
    tensor: Tensor<'c>,
    dtype: StDtype,
    shape: Vec<usize>,
    len: usize,
    state: &'s State<'s>,
}

impl View for Entry<'_, '_> {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let state = self.state;
        state.writer.progress(state.written.get(), state.total);
        state.written.set(state.written.get() + self.len as u64);
        if state.error.borrow().is_some() {
            return Cow::Owned(vec![0; self.len]);
        }
        if let Some(bytes) = self.tensor.as_bytes() {
            crate::source::prefault(bytes);
            return Cow::Borrowed(bytes);
        }
        match self.tensor.to_contiguous_bytes() {
            Ok(bytes) if bytes.len() == self.len => Cow::Owned(bytes),
            Ok(bytes) => {
                *state.error.borrow_mut() = Some(Error::invalid_tensor(format!(
                    "a tensor gave {} bytes where {} were expected",
                    bytes.len(),
                    self.len
                )));
                Cow::Owned(vec![0; self.len])
            }
            Err(e) => {
                // The crate cannot be told; the file is discarded afterwards.
                *state.error.borrow_mut() = Some(e);
                Cow::Owned(vec![0; self.len])
            }
        }
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

impl Writer {
    /// The entries to write, with aliases dropped under `dedup`, and the `__metadata__`.
    pub(crate) fn prepare<'c>(
        &self,
        ckpt: &'c Checkpoint,
    ) -> Result<(Vec<Chosen<'c>>, Report, HashMap<String, String>)> {
        let (mut chosen, mut report) = self.choose(
            ckpt,
            |t| safetensors_dtype(t.dtype()).is_some(),
            "safetensors",
        )?;
        // The format keeps `__metadata__` for itself: a tensor of that name would make a file
        // no reader parses (found by the writer_roundtrip fuzzer).
        if let Some(c) = chosen.iter().find(|c| c.path == "__metadata__") {
            return Err(Error::unsupported(format!(
                "tensor '{}': the name __metadata__ is reserved by the safetensors format \
                 (--select another subtree, or write a .pt)",
                c.path
            )));
        }
        let mut metadata = HashMap::new();
        metadata.insert("format".to_owned(), "pt".to_owned());
        if let Some(source) = &self.source_name {
            metadata.insert("source".to_owned(), source.clone());
        }
        if self.dedup {
            let aliases = aliases(&chosen);
            for (dropped, kept) in &aliases {
                metadata
                    .entry(dropped.clone())
                    .or_insert_with(|| kept.clone());
            }
            chosen.retain(|c| !aliases.iter().any(|(d, _)| *d == c.path));
            report.aliases = aliases;
        }
        Ok((chosen, report, metadata))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn save_safetensors_inner(
        &self,
        ckpt: &Checkpoint,
        path: &std::path::Path,
    ) -> Result<Report> {
        let (chosen, mut report, metadata) = self.prepare(ckpt)?;
        let total = total_bytes(&chosen, ckpt.max_tensor_bytes())?;
        let output = self.write_file(&chosen, metadata, path, 0, total)?;
        output.finish()?;
        self.progress(total, total);
        report.written = chosen.into_iter().map(|c| c.path).collect();
        report.bytes = total;
        Ok(report)
    }

    /// Writes `chosen` to a temporary file for `path`, not yet renamed; progress counts from
    /// `done` of `total`.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn write_file(
        &self,
        chosen: &[Chosen<'_>],
        metadata: HashMap<String, String>,
        path: &std::path::Path,
        done: u64,
        total: u64,
    ) -> Result<super::Output> {
        // The crate writes a file of its own and renames it to the path it is given.
        let output = super::Output::create_path(path, self.force)?;
        let state = State {
            error: RefCell::new(None),
            written: Cell::new(done),
            total,
            writer: self,
        };
        let entries = entries(chosen, &state)?;
        ::safetensors::serialize_to_file(entries, Some(metadata), output.path())
            .map_err(|e| Error::from(std::io::Error::other(e.to_string())))?;
        if let Some(e) = state.error.into_inner() {
            return Err(e); // `output` is dropped: the partial file is deleted.
        }
        Ok(output)
    }

    /// The tensors as the bytes of a `.safetensors` file (the whole file in memory: for the JS
    /// API and small checkpoints).
    pub fn to_safetensors_bytes(&self, ckpt: &Checkpoint) -> Result<(Vec<u8>, Report)> {
        let (chosen, mut report, metadata) = self.prepare(ckpt)?;
        let total = total_bytes(&chosen, ckpt.max_tensor_bytes())?;
        let state = State {
            error: RefCell::new(None),
            written: Cell::new(0),
            total,
            writer: self,
        };
        let entries = entries(&chosen, &state)?;
        let bytes = ::safetensors::serialize(entries, Some(metadata))
            .map_err(|e| Error::from(std::io::Error::other(e.to_string())))?;
        if let Some(e) = state.error.into_inner() {
            return Err(e);
        }
        report.written = chosen.into_iter().map(|c| c.path).collect();
        report.bytes = total;
        Ok((bytes, report))
    }
}

/// Bytes the chosen tensors take in a `.safetensors` file. Each one is written as its
/// contiguous elements (views are copied), so each is held to the loader's
/// [`crate::Limits::max_tensor_bytes`], as `to_contiguous_bytes` is: an expanded view of a few
/// bytes cannot make a file of gigabytes.
pub(crate) fn total_bytes(chosen: &[Chosen<'_>], max_tensor_bytes: u64) -> Result<u64> {
    chosen.iter().try_fold(0u64, |sum, c| {
        let n = c
            .tensor
            .numel()
            .checked_mul(c.tensor.dtype().element_size() as u64)
            .ok_or_else(|| Error::invalid_tensor(format!("tensor '{}' is too large", c.path)))?;
        if n > max_tensor_bytes {
            return Err(Error::limit("max_tensor_bytes", n, max_tensor_bytes));
        }
        Ok(sum.saturating_add(n))
    })
}

fn entries<'s, 'c>(
    chosen: &[Chosen<'c>],
    state: &'s State<'s>,
) -> Result<Vec<(String, Entry<'s, 'c>)>> {
    chosen
        .iter()
        .map(|c| {
            let too_large = || Error::invalid_tensor(format!("tensor '{}' is too large", c.path));
            let dtype = safetensors_dtype(c.tensor.dtype()).ok_or_else(too_large)?;
            let shape = c
                .tensor
                .shape()
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| too_large()))
                .collect::<Result<Vec<_>>>()?;
            let len = c
                .tensor
                .numel()
                .checked_mul(c.tensor.dtype().element_size() as u64)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(too_large)?;
            Ok((
                c.path.clone(),
                Entry {
                    tensor: c.tensor,
                    dtype,
                    shape,
                    len,
                    state,
                },
            ))
        })
        .collect()
}

/// Tied weights: among tensors that each cover one whole storage with the same dtype and
/// shape, all but the first name in sorted order, as `(dropped, kept)`. Views of part of a
/// storage are written as copies (transformers would drop them too, and re-tie on load).
fn aliases(chosen: &[Chosen<'_>]) -> Vec<(String, String)> {
    let mut groups: Vec<(usize, Vec<&Chosen<'_>>)> = Vec::new();
    for c in chosen {
        let Some(id) = c.tensor.meta().storage else {
            continue;
        };
        if !complete(&c.tensor) {
            continue;
        }
        match groups.iter_mut().find(|(g, _)| *g == id) {
            Some((_, members)) => members.push(c),
            None => groups.push((id, vec![c])),
        }
    }
    let mut out = Vec::new();
    for (_, mut members) in groups {
        if members.len() < 2 {
            continue;
        }
        members.sort_by(|a, b| a.path.cmp(&b.path));
        let kept = members[0];
        for m in &members[1..] {
            if m.tensor.dtype() == kept.tensor.dtype() && m.tensor.shape() == kept.tensor.shape() {
                out.push((m.path.clone(), kept.path.clone()));
            }
        }
    }
    out
}

/// Whether the view covers its whole storage, in order (safetensors' `_is_complete`).
fn complete(t: &Tensor<'_>) -> bool {
    let Some(storage) = t.storage() else {
        return false;
    };
    t.meta().is_contiguous()
        && t.storage_offset() == 0
        && t.numel().saturating_mul(t.dtype().element_size() as u64) == storage.nbytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ckpt() -> Checkpoint {
        Checkpoint::from_tensors(vec![
            ("b".into(), Dtype::Int16, vec![3], vec![1, 0, 2, 0, 3, 0]),
            ("a".into(), Dtype::BFloat16, vec![1, 1], vec![0x80, 0x3f]),
        ])
        .unwrap()
    }

    #[test]
    fn bytes_read_back_with_the_crate() {
        let mut writer = Writer::new();
        writer.source_name("x.pt");
        let (bytes, report) = writer.to_safetensors_bytes(&ckpt()).unwrap();
        assert_eq!(report.written, ["b", "a"]);
        let st = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("b").unwrap().data(), [1, 0, 2, 0, 3, 0]);
        assert_eq!(st.tensor("a").unwrap().dtype(), StDtype::BF16);
        let (_, meta) = ::safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["format"], "pt");
        assert_eq!(meta["source"], "x.pt");
    }

    #[test]
    fn unsupported_dtype_is_named() {
        let c =
            Checkpoint::from_tensors(vec![("q".into(), Dtype::Complex128, vec![1], vec![0; 16])])
                .unwrap();
        let err = Writer::new().to_safetensors_bytes(&c).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported: tensor 'q' has dtype complex128, which safetensors cannot store (use \
             --skip-unsupported to leave it out)"
        );
        let (_, report) = Writer::new()
            .skip_unsupported(true)
            .to_safetensors_bytes(&c)
            .unwrap();
        assert_eq!(
            report.skipped_unsupported,
            [("q".to_owned(), Dtype::Complex128)]
        );
    }
}
