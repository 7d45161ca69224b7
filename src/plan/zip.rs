//! Planning a zip checkpoint (`torch.save` ≥ 1.6) or TorchScript archive: the small records
//! (`version`, `byteorder`, `data.pkl`, `constants.pkl`) are read, every storage's record is
//! found in the directory; tensor records are not touched.

use crate::archive::{self, Format, ZipDirectory};
use crate::error::{Error, Result};
use crate::source::ByteSource;
use crate::torch;
use crate::Loader;

use super::{on_big_stack, require_all, Plan};

impl Loader {
    pub(super) fn plan_zip(&self, bytes: &(impl ByteSource + ?Sized)) -> Result<Plan> {
        let dir = ZipDirectory::parse(bytes)?;
        let torchscript = dir.record("constants.pkl").is_some();
        // The small records, all at once (a partial source loads them in one round).
        let small: Vec<&archive::Record> = [
            "version",
            ".data/version",
            "byteorder",
            "data.pkl",
            "constants.pkl",
        ]
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
        let mut parsed = self.parse_record(&dir, bytes, "data.pkl", &options)?;
        // TorchScript: tensors of constants.pkl live under `constants/`; their storages follow
        // data.pkl's, and the constants tuple is listed after the module tree.
        let data_storages = parsed.storages.len();
        let mut constants = None;
        if torchscript {
            let mut extra = self.parse_record(&dir, bytes, "constants.pkl", &options)?;
            extra.root.shift_storage_ids(data_storages);
            parsed.storages.append(&mut extra.storages);
            constants = Some(std::mem::replace(&mut extra.root, torch::Value::None));
        }
        let format = if torchscript {
            Format::TorchScript
        } else {
            Format::Zip
        };
        self.finish_plan(parsed, constants, format, byte_order, |id, storage| {
            let folder = if id < data_storages {
                "data"
            } else {
                "constants"
            };
            Ok(dir.require(&format!("{folder}/{}", storage.key))?.clone())
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
        on_big_stack(&record.name, || {
            torch::parse_pickle(&pickle, &record.name, options)
        })
    }
}
