//! torch.save's zip container, written with the `zip` crate: stored records whose data start
//! at multiples of 64 bytes, in torch 2.15's order (spec §2.1):
//!
//! | record | content |
//! |---|---|
//! | `archive/data.pkl` | the pickle (`pickle.rs`) |
//! | `archive/.format_version` | `1` |
//! | `archive/.storage_alignment` | `64` |
//! | `archive/byteorder` | `little` (the host's order) |
//! | `archive/data/<key>` | one whole storage, keys `0…n` in order of first reference |
//! | `archive/version` | `3\n` |
//! | `archive/.data/serialization_id` | 40 ASCII digits |
//!
//! Storages are written whole, and tensors as the views they are, so views and tied weights
//! stay shared as in torch. A storage viewed with one dtype that has a typed storage class is
//! written as that class (`_rebuild_tensor_v2`); any other as `UntypedStorage`
//! (`_rebuild_tensor_v3`), as torch does for newer dtypes.

use std::io::Write;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::pickle::{storage_class, Pickler, StorageName};
use super::{Chosen, Report, Writer};
use crate::error::{Error, Result};
use crate::loader::{Checkpoint, Storage};

/// Alignment of every record's data, as torch writes it.
const ALIGNMENT: u16 = 64;
/// Bytes written between progress reports.
const CHUNK: usize = 16 << 20;

/// One storage to write, under its new key.
struct Planned<'c> {
    storage: &'c Storage,
    name: StorageName,
}

fn zip_error(e: zip::result::ZipError) -> Error {
    Error::from(std::io::Error::other(format!(
        "writing the zip container: {e}"
    )))
}

impl Writer {
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn save_torch_inner(
        &self,
        ckpt: &Checkpoint,
        path: &std::path::Path,
    ) -> Result<Report> {
        let (chosen, mut report) =
            self.choose(ckpt, |t| !t.dtype().is_quantized(), "a .pt file")?;
        let (pickle, storages) = plan(&chosen)?;
        let output = super::Output::create(path, self.force)?;
        let total: u64 = storages.iter().map(|s| s.storage.nbytes()).sum();
        let mut zip = ZipWriter::new(std::io::BufWriter::with_capacity(1 << 20, output.file()));
        self.write_records(&mut zip, &pickle, &storages, total)?;
        let mut file = zip.finish().map_err(zip_error)?;
        file.flush()?;
        drop(file);
        output.finish()?;
        report.written = chosen.into_iter().map(|c| c.path).collect();
        report.bytes = total;
        Ok(report)
    }

    /// The tensors as the bytes of a `.pt` file (the whole file in memory: for the JS API and
    /// small checkpoints).
    pub fn to_pt_bytes(&self, ckpt: &Checkpoint) -> Result<(Vec<u8>, Report)> {
        let (chosen, mut report) =
            self.choose(ckpt, |t| !t.dtype().is_quantized(), "a .pt file")?;
        let (pickle, storages) = plan(&chosen)?;
        let total: u64 = storages.iter().map(|s| s.storage.nbytes()).sum();
        let mut zip = ZipWriter::new(std::io::Cursor::new(Vec::new()));
        self.write_records(&mut zip, &pickle, &storages, total)?;
        let bytes = zip.finish().map_err(zip_error)?.into_inner();
        report.written = chosen.into_iter().map(|c| c.path).collect();
        report.bytes = total;
        Ok((bytes, report))
    }

    fn write_records<W: Write + std::io::Seek>(
        &self,
        zip: &mut ZipWriter<W>,
        pickle: &[u8],
        storages: &[Planned<'_>],
        total: u64,
    ) -> Result<()> {
        let small = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .with_alignment(ALIGNMENT);
        let put = |zip: &mut ZipWriter<W>, name: &str, data: &[u8]| -> Result<()> {
            zip.start_file(
                format!("archive/{name}"),
                small.large_file(data.len() as u64 >= 0xFFFF_FFFF),
            )
            .map_err(zip_error)?;
            zip.write_all(data)?;
            Ok(())
        };
        put(zip, "data.pkl", pickle)?;
        put(zip, ".format_version", b"1")?;
        put(zip, ".storage_alignment", b"64")?;
        let order: &[u8] = if cfg!(target_endian = "little") {
            b"little"
        } else {
            b"big"
        };
        put(zip, "byteorder", order)?;
        let mut written = 0u64;
        let mut id_hash = Fnv::new();
        for s in storages {
            let nbytes = s.storage.nbytes();
            let name = format!("archive/data/{}", s.name.key);
            id_hash.add(name.as_bytes());
            id_hash.add(&nbytes.to_le_bytes());
            zip.start_file(name, small.large_file(nbytes >= 0xFFFF_FFFF))
                .map_err(zip_error)?;
            self.write_storage(zip, s, &mut written, total)?;
        }
        put(zip, "version", b"3\n")?;
        let id = format!("{:020}{:020}", id_hash.0, Fnv::of(pickle).0);
        put(zip, ".data/serialization_id", &id.as_bytes()[..40])?;
        self.progress(total, total);
        Ok(())
    }

    fn write_storage<W: Write>(
        &self,
        out: &mut W,
        s: &Planned<'_>,
        written: &mut u64,
        total: u64,
    ) -> Result<()> {
        let nbytes = s.storage.nbytes();
        if let Some(bytes) = s.storage.data.host_bytes() {
            for chunk in bytes.chunks(CHUNK) {
                crate::source::prefault(chunk);
                out.write_all(chunk)?;
                *written += chunk.len() as u64;
                self.progress(*written, total);
            }
            return Ok(());
        }
        let Some(buffer) = s.storage.data.device_buffer() else {
            return Err(Error::unsupported(format!(
                "storage '{}' has no data (meta): there are no bytes to write",
                s.storage.key
            )));
        };
        // Read back from the device one chunk at a time.
        let mut chunk = vec![0u8; CHUNK.min(usize::try_from(nbytes).unwrap_or(CHUNK))];
        let mut offset = 0u64;
        while offset < nbytes {
            let n = chunk
                .len()
                .min(usize::try_from(nbytes - offset).unwrap_or(CHUNK));
            buffer.read_back(offset, &mut chunk[..n])?;
            out.write_all(&chunk[..n])?;
            offset += n as u64;
            *written += n as u64;
            self.progress(*written, total);
        }
        Ok(())
    }
}

/// The pickle and the storages to write, keyed `0…n` in order of first reference.
fn plan<'c>(chosen: &[Chosen<'c>]) -> Result<(Vec<u8>, Vec<Planned<'c>>)> {
    let mut ids: Vec<usize> = Vec::new();
    let mut planned: Vec<Planned<'c>> = Vec::new();
    for c in chosen {
        let (Some(id), Some(storage)) = (c.tensor.meta().storage, c.tensor.storage()) else {
            continue;
        };
        let dtype = c.tensor.dtype();
        match ids.iter().position(|&i| i == id) {
            Some(i) => {
                // Another dtype over the same storage: name it untyped for every view.
                let name = &mut planned[i].name;
                if name.class.is_some() && name.class != storage_class(dtype) {
                    name.class = None;
                    name.numel = storage.nbytes();
                }
            }
            None => {
                let nbytes = storage.nbytes();
                let size = dtype.element_size() as u64;
                let class = storage_class(dtype).filter(|_| nbytes % size == 0);
                let numel = if class.is_some() {
                    nbytes / size
                } else {
                    nbytes
                };
                ids.push(id);
                planned.push(Planned {
                    storage,
                    name: StorageName {
                        key: (planned.len()).to_string(),
                        class,
                        numel,
                    },
                });
            }
        }
    }
    let mut pickler = Pickler::new();
    for c in chosen {
        let Some(id) = c.tensor.meta().storage else {
            continue;
        };
        let Some(i) = ids.iter().position(|&x| x == id) else {
            continue;
        };
        pickler.tensor(&c.path, c.tensor.meta(), &planned[i].name);
    }
    Ok((pickler.finish(), planned))
}

/// FNV-1a, for the informational `serialization_id`.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
    fn of(bytes: &[u8]) -> Self {
        let mut h = Fnv::new();
        h.add(bytes);
        h
    }
}
