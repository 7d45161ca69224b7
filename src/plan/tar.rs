//! Planning a tar checkpoint (torch ≤ 0.1): the `storages`, `tensors` and `pickle` members.

use crate::archive::{self, ByteOrder, Format};
use crate::error::{Error, ErrorKind, Result};
use crate::torch;
use crate::Loader;

use super::{catching_panics, Plan};

impl Loader {
    pub(super) fn plan_tar(&self, data: &[u8]) -> Result<Plan> {
        let members = archive::tar::members(data)?;
        let member = |name: &str| {
            members.get(name).cloned().ok_or_else(|| {
                Error::new(ErrorKind::MissingRecord {
                    name: format!("tar member '{name}'"),
                })
            })
        };
        let (storages, tensors, pickle) =
            (member("storages")?, member("tensors")?, member("pickle")?);
        let options = self.pickle_options();
        let (parsed, records) = catching_panics("a tar checkpoint", || {
            torch::tar::parse(data, storages, tensors, pickle, &options)
        })?;
        self.finish_plan(parsed, None, Format::Tar, ByteOrder::Little, |id, _| {
            Ok(records[id].clone())
        })
    }
}
