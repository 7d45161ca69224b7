//! Planning a `.safetensors` file (for `ptload convert`, not `Loader::load`): the header is
//! parsed and validated by the `safetensors` crate; each tensor becomes one storage over its
//! own byte range, and the root an `OrderedDict` of the tensors in file order.
//!
//! | bytes | content |
//! |---|---|
//! | 0..8 | `n`, the header's length (u64 little-endian) |
//! | 8..8+n | JSON: `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__"?}` |
//! | 8+n.. | the tensors' bytes, little-endian, C order, offsets relative to here |

use ::safetensors::SafeTensors;

use crate::archive::zip::Method;
use crate::archive::{ByteOrder, Format, Record};
use crate::error::{Error, ErrorKind, Result};
use crate::torch::{self, Dict, StorageRef, TensorMeta, Value};
use crate::write::torch_dtype;
use crate::Loader;

use super::Plan;

impl Loader {
    /// Plans a load of a `.safetensors` file held whole in `bytes` (an mmap, or a buffer).
    pub fn plan_safetensors(&self, name: &str, bytes: &[u8]) -> Result<Plan> {
        self.plan_safetensors_inner(bytes)
            .map_err(|e| e.in_file(name))
    }

    fn plan_safetensors_inner(&self, bytes: &[u8]) -> Result<Plan> {
        let (n, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| {
            Error::new(ErrorKind::NotACheckpoint {
                reason: format!("not a valid safetensors file: {e}"),
            })
        })?;
        let data_start = 8 + n as u64;
        let infos = metadata.tensors();
        let mut names = metadata.offset_keys();
        names.sort_by_key(|k| infos.get(k).map(|i| i.data_offsets.0));
        let mut storages = Vec::with_capacity(names.len());
        let mut records = Vec::with_capacity(names.len());
        let mut items = Vec::with_capacity(names.len());
        for (id, name) in names.into_iter().enumerate() {
            let Some(info) = infos.get(&name) else {
                continue;
            };
            let dtype = torch_dtype(info.dtype).ok_or_else(|| {
                Error::unsupported(format!(
                    "tensor '{name}' has safetensors dtype {:?}, which torch has no dtype for",
                    info.dtype
                ))
            })?;
            let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
            let mut stride = vec![0u64; shape.len()];
            let mut acc = 1u64;
            for (s, &d) in stride.iter_mut().zip(&shape).rev() {
                *s = acc;
                acc = acc.saturating_mul(d.max(1));
            }
            let (begin, end) = info.data_offsets;
            let size = (end - begin) as u64;
            let numel = size / dtype.element_size() as u64;
            storages.push(StorageRef {
                key: name.as_str().into(),
                dtype,
                numel,
                location: "cpu".into(),
            });
            records.push(Record {
                name: name.as_str().into(),
                data_offset: data_start + begin as u64,
                stored_len: size,
                size,
                method: Method::Stored,
            });
            let meta = TensorMeta::view(Some(id), dtype, shape, stride, 0);
            items.push((Value::Str(name.into()), Value::Tensor(Box::new(meta))));
        }
        let root = Value::Dict(Box::new(Dict {
            class: "collections.OrderedDict".into(),
            items,
            attributes: Vec::new(),
        }));
        let parsed = torch::Parsed {
            root,
            storages,
            end: 0,
        };
        self.finish_plan(
            parsed,
            None,
            Format::Safetensors,
            ByteOrder::Little,
            |id, _| Ok(records[id].clone()),
        )
    }
}

impl Loader {
    /// Loads a `.safetensors` file as a checkpoint whose root is an `OrderedDict` of its
    /// tensors (memory-mapped: CPU storages borrow from the map).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_safetensors(&self, path: impl AsRef<std::path::Path>) -> Result<crate::Checkpoint> {
        let source = crate::Source::open(path)?;
        let name = source.name().to_owned();
        let plan = self.plan_safetensors(&name, source.bytes())?;
        self.place(plan, &source).map_err(|e| e.in_file(&name))
    }
}
