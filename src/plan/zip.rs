//! Planning a zip checkpoint (`torch.save` ≥ 1.6) or TorchScript archive: the small records
//! (`version`, `byteorder`, `data.pkl`, `constants.pkl`) are read, every storage's record is
//! found in the directory; tensor records are not touched.

use crate::archive::{self, Format, ZipDirectory};
use crate::error::{Error, Result};
use crate::source::{ByteSource, Preloaded};
use crate::torch;
use crate::Loader;

use super::{catching_panics, require_all, Plan};

/// The records read before any storage: the format's version, the byte order, the pickles.
const SMALL_RECORDS: [&str; 5] = [
    "version",
    ".data/version",
    "byteorder",
    "data.pkl",
    "constants.pkl",
];

/// Small records this close are read together (torch writes `byteorder` right after
/// `data.pkl`).
const SMALL_RECORDS_GAP: u64 = 4 << 10;

/// The most bytes of small records read at once rather than borrowed from a mapped file: past
/// that, faulting the pages in costs no more than reading them.
const MAX_SMALL_READ: u64 = 4 << 20;

impl Loader {
    pub(super) fn plan_zip(&self, bytes: &(impl ByteSource + ?Sized)) -> Result<Plan> {
        // The storages' local headers are read on a helper while the pickles are parsed; an
        // error in them comes first, as it would had they been read first.
        let (mut dir, deferred) = ZipDirectory::parse_deferring(bytes)?;
        // A mapped file's small records are read (those near each other at once), not faulted
        // in page by page.
        let mut small = Preloaded::new(bytes);
        let ranges = SMALL_RECORDS
            .iter()
            .filter_map(|name| dir.record(name))
            .filter(|r| r.stored_len <= self.limits.max_pickle_bytes)
            .map(|r| (r.data_offset, r.stored_len))
            .collect();
        small.read_all(ranges, SMALL_RECORDS_GAP, MAX_SMALL_READ);
        let (parsed, constants, format, byte_order) = match self.parse_zip_pickles(&dir, &small) {
            Ok(parsed) => parsed,
            Err(e) => {
                dir.finish(bytes, deferred)?;
                return Err(e);
            }
        };
        // The plan is made while the helper may still be reading the storages' local headers:
        // their records get their data offsets once it is done. Its errors come first, as they
        // would had the headers been read first.
        let data_storages = parsed.storages.len() - constants.as_ref().map_or(0, |c| c.1);
        let constants = constants.map(|c| c.0);
        let mut name = String::new();
        // The directory index of each planned record, in plan order.
        let mut indices = Vec::with_capacity(parsed.storages.len());
        let plan = self.finish_plan(parsed, constants, format, byte_order, |id, storage| {
            let folder = if id < data_storages {
                "data/"
            } else {
                "constants/"
            };
            name.clear();
            name.push_str(folder);
            name.push_str(&storage.key);
            let index = dir.require_index(&name)?;
            indices.push(index);
            Ok(dir.records()[index].clone())
        });
        dir.finish(bytes, deferred)?;
        let mut plan = plan.map_err(|e| dir.locate_in_error(e))?;
        let records = plan.storages.iter_mut().filter_map(|s| s.record.as_mut());
        for (record, &index) in records.zip(&indices) {
            record.data_offset = dir.records()[index].data_offset;
        }
        Ok(plan)
    }

    /// The small records of a zip checkpoint (`version`, `byteorder`) and its pickles: the
    /// parsed `data.pkl` with `constants.pkl`'s storages appended, and TorchScript's constants
    /// with the count of their storages.
    ///
    /// Not inlined, so that [`plan_zip`](Self::plan_zip) stays small (see
    /// `pickle::machine::Machine::rare_opcode`).
    #[allow(clippy::type_complexity)]
    #[inline(never)]
    fn parse_zip_pickles(
        &self,
        dir: &ZipDirectory,
        bytes: &(impl ByteSource + ?Sized),
    ) -> Result<(
        torch::Parsed,
        Option<(torch::Value, usize)>,
        Format,
        archive::ByteOrder,
    )> {
        let torchscript = dir.record("constants.pkl").is_some();
        // The small records, all at once (a partial source loads them in one round).
        let small: Vec<&archive::Record> = SMALL_RECORDS
            .iter()
            .filter_map(|name| dir.record(name))
            .collect();
        for record in &small {
            if record.stored_len > self.limits.max_pickle_bytes {
                return Err(Error::limit(
                    "max_pickle_bytes",
                    record.stored_len,
                    self.limits.max_pickle_bytes,
                ));
            }
        }
        require_all(bytes, small.iter().map(|r| (r.data_offset, r.stored_len)))?;
        dir.version(bytes, 64)?;
        let byte_order = dir.byte_order(bytes)?;
        let mut options = self.pickle_options();
        options.torchscript = torchscript;
        let mut parsed = self.parse_record(dir, bytes, "data.pkl", &options)?;
        // TorchScript: tensors of constants.pkl live under `constants/`; their storages follow
        // data.pkl's, and the constants tuple is listed after the module tree.
        let data_storages = parsed.storages.len();
        let mut constants = None;
        if torchscript {
            let mut extra = self.parse_record(dir, bytes, "constants.pkl", &options)?;
            extra.root.shift_storage_ids(data_storages);
            let count = extra.storages.len();
            parsed.storages.append(&mut extra.storages);
            constants = Some((
                std::mem::replace(&mut extra.root, torch::Value::None),
                count,
            ));
        }
        let format = if torchscript {
            Format::TorchScript
        } else {
            Format::Zip
        };
        Ok((parsed, constants, format, byte_order))
    }

    /// Plans a zip checkpoint read as a stream, in file order: from `data.pkl` (the first
    /// record torch writes) and the `byteorder` record when it came before the first tensor
    /// record (`None`: little-endian, as files without one), before any tensor record has been
    /// seen. Each storage's record is `<prefix>/data/<key>` with the size its storage needs and
    /// no known offset (0): the caller matches records by name as they stream by, checks their
    /// sizes, and reports the ones that never came.
    // Used by the wasm planner (and this module's tests).
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn plan_streamed(
        &self,
        prefix: &str,
        pickle: &[u8],
        byte_order: Option<&[u8]>,
    ) -> Result<Plan> {
        if pickle.len() as u64 > self.limits.max_pickle_bytes {
            return Err(Error::limit(
                "max_pickle_bytes",
                pickle.len() as u64,
                self.limits.max_pickle_bytes,
            ));
        }
        let byte_order = match byte_order {
            None | Some(b"little") => archive::ByteOrder::Little,
            Some(b"big") => archive::ByteOrder::Big,
            Some(other) => {
                return Err(Error::new(crate::ErrorKind::UnknownByteOrder {
                    value: String::from_utf8_lossy(other).into_owned(),
                }))
            }
        };
        let name = format!("{prefix}/data.pkl");
        let parsed = catching_panics(&name, || {
            torch::parse_pickle(pickle, &name, &self.pickle_options())
        })?;
        self.finish_plan(parsed, None, Format::Zip, byte_order, |_, storage| {
            let size = storage.nbytes().unwrap_or(u64::MAX);
            Ok(archive::Record {
                name: format!("{prefix}/data/{}", storage.key).into(),
                data_offset: 0,
                stored_len: size,
                size,
                method: archive::Method::Stored,
            })
        })
    }

    /// Reads one pickle record of a zip archive into a tree.
    fn parse_record(
        &self,
        dir: &ZipDirectory,
        bytes: &(impl ByteSource + ?Sized),
        name: &str,
        options: &torch::PickleOptions,
    ) -> Result<torch::Parsed> {
        let record = dir.require(name)?;
        if record.size > self.limits.max_pickle_bytes {
            return Err(Error::limit(
                "max_pickle_bytes",
                record.size,
                self.limits.max_pickle_bytes,
            ));
        }
        let pickle = record.read(bytes, self.limits.max_pickle_bytes)?;
        catching_panics(&record.name, || {
            torch::parse_pickle(&pickle, &record.name, options)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::archive::ZipDirectory;
    use crate::Loader;

    /// A streamed plan (pickle only, records by name) decides what the whole-file plan does.
    #[test]
    fn a_streamed_plan_matches_the_whole_plan() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/tiny_convnet.pt"
        ))
        .unwrap();
        let dir = ZipDirectory::parse(&bytes[..]).unwrap();
        let pickle = dir
            .require("data.pkl")
            .unwrap()
            .read(&bytes[..], 1 << 20)
            .unwrap();
        let mut loader = Loader::new();
        loader.map_location("meta");
        let whole = loader.plan("f", &bytes[..]).unwrap();
        let streamed = loader.plan_streamed(&dir.prefix, &pickle, None).unwrap();
        assert_eq!(whole.storages.len(), streamed.storages.len());
        assert!(whole.storages.iter().all(|s| s.record.is_none()));
        let mut loader = Loader::new();
        loader.map_location("cpu");
        let whole = loader.plan("f", &bytes[..]).unwrap();
        let streamed = loader
            .plan_streamed(&dir.prefix, &pickle, Some(b"little"))
            .unwrap();
        for (a, b) in whole.storages.iter().zip(&streamed.storages) {
            let (ra, rb) = (a.record.as_ref().unwrap(), b.record.as_ref().unwrap());
            assert_eq!(
                (&a.key, a.dtype, a.numel, &a.device),
                (&b.key, b.dtype, b.numel, &b.device)
            );
            assert_eq!((&ra.name, ra.size), (&rb.name, rb.size));
        }
        assert_eq!(format!("{:?}", whole.root), format!("{:?}", streamed.root));
        assert!(loader
            .plan_streamed(&dir.prefix, &pickle, Some(b"middle"))
            .is_err());
    }
}
