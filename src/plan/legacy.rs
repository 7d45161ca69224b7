//! Planning a legacy pickle stream (torch < 1.6): magic, protocol, sys_info, the main pickle,
//! then the storage records in the key list's order.

use crate::archive::{self, ByteOrder, Format};
use crate::error::{Error, ErrorKind, Result};
use crate::torch;
use crate::Loader;

use super::{catching_panics, Plan};

impl Loader {
    pub(super) fn plan_legacy(&self, data: &[u8]) -> Result<Plan> {
        let main = archive::legacy::read_header(data)?;
        let pickle = &data[main..];
        let parsed = catching_panics("legacy stream pickle", || {
            torch::parse_pickle(pickle, "legacy stream pickle", &self.pickle_options())
        })?;
        let sizes = parsed
            .storages
            .iter()
            .map(|s| (s.key.to_string(), (s.dtype.element_size(), s.numel)))
            .collect();
        let records = archive::legacy::read_records(data, main + parsed.end, &sizes)?;
        self.finish_plan(
            parsed,
            None,
            Format::Legacy,
            ByteOrder::Little,
            |_, storage| {
                records.get(storage.key.as_str()).cloned().ok_or_else(|| {
                    Error::new(ErrorKind::MissingRecord {
                        name: format!("storage {} (not in the key list)", storage.key),
                    })
                })
            },
        )
    }
}
