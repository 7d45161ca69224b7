//! Sharded checkpoints: an index file (`model.safetensors.index.json`,
//! `pytorch_model.bin.index.json`) whose `weight_map` names, for each tensor, the shard file
//! holding it, loads as one checkpoint.
//!
//! ```json
//! {"metadata": {"total_size": 123}, "weight_map": {"embed.weight": "model-00001-of-00002.safetensors", ...}}
//! ```
//!
//! Each shard is loaded once (a `.safetensors` shard by the safetensors reader, any other by
//! [`Loader::load`], so `map_location` applies to all), and the result is an `OrderedDict` of
//! the tensors in `weight_map` order. A shard that is missing, or that lacks a tensor the index
//! lists, is an error naming the index, the shard and the tensor.

use std::collections::HashMap;
use std::path::Path;

use crate::archive::detect::{foreign, Foreign};
use crate::error::{Error, ErrorKind, Result};
use crate::loader::{Checkpoint, Storage};
use crate::plan::walk_tensors;
use crate::torch::{Dict, TensorMeta, Value};
use crate::Loader;

/// Most bytes of an index file read (real ones are well under a megabyte).
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// Whether `path` names an index file of a sharded checkpoint (by its name).
pub fn is_index(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".index.json"))
}

/// The `weight_map` of an index file: `(tensor, shard file)` in the file's order.
pub fn read_weight_map(path: &Path) -> Result<Vec<(String, String)>> {
    let bad = |message: String| {
        Error::new(ErrorKind::NotACheckpoint {
            reason: format!("not a sharded checkpoint's index: {message}"),
        })
    };
    let len = std::fs::metadata(path)?.len();
    if len > MAX_INDEX_BYTES {
        return Err(bad(format!(
            "{len} bytes, more than an index may hold ({MAX_INDEX_BYTES})"
        )));
    }
    let text = std::fs::read(path)?;
    // serde_json's `Value` keeps object order only with `preserve_order`; the entries are
    // streamed instead, so that the index's order is kept.
    let json: IndexFile = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if json.weight_map.0.is_empty() {
        return Err(bad("its weight_map is empty".into()));
    }
    Ok(json.weight_map.0)
}

/// The parts of an index file ptload reads (`metadata` and anything else are skipped).
struct IndexFile {
    weight_map: OrderedMap,
}

impl<'de> serde::Deserialize<'de> for IndexFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = IndexFile;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object with a weight_map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<IndexFile, A::Error> {
                let mut weight_map = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "weight_map" {
                        weight_map = Some(map.next_value::<OrderedMap>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                let weight_map =
                    weight_map.ok_or_else(|| serde::de::Error::missing_field("weight_map"))?;
                Ok(IndexFile { weight_map })
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// A JSON object of strings, in file order.
struct OrderedMap(Vec<(String, String)>);

impl<'de> serde::Deserialize<'de> for OrderedMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OrderedMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of tensor name → shard file")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<OrderedMap, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

impl Loader {
    /// Loads a sharded checkpoint from its index file.
    pub fn load_index(&self, path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let name = path.display().to_string();
        self.load_index_inner(path).map_err(|e| e.in_file(&name))
    }

    fn load_index_inner(&self, path: &Path) -> Result<Checkpoint> {
        let weight_map = read_weight_map(path)?;
        let folder = path.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<&str> = Vec::new();
        for (_, shard) in &weight_map {
            if shard.contains('/') || shard.contains('\\') || shard == ".." {
                return Err(Error::unsupported(format!(
                    "shard '{shard}': shard names must be files beside the index"
                )));
            }
            if !shards.contains(&shard.as_str()) {
                shards.push(shard);
            }
        }
        for shard in &shards {
            if !folder.join(shard).is_file() {
                return Err(Error::new(ErrorKind::Index {
                    shard: shard.to_string(),
                    message: format!("no such file in {}", folder.display()),
                }));
            }
        }
        let mut storages: Vec<Storage> = Vec::new();
        let mut tensors: HashMap<&str, TensorMeta> = HashMap::new();
        let mut first: Option<(crate::Format, crate::ByteOrder)> = None;
        let mut max_tensor_bytes = self.limits.max_tensor_bytes;
        for shard in &shards {
            let file = folder.join(shard);
            let mut ckpt = if is_safetensors(&file) {
                self.load_safetensors(&file)?
            } else {
                self.load(&file)?
            };
            first.get_or_insert((ckpt.format, ckpt.byte_order));
            max_tensor_bytes = ckpt.max_tensor_bytes();
            let base = storages.len();
            let mut found: HashMap<String, TensorMeta> = HashMap::new();
            walk_tensors(&ckpt.root, &mut String::new(), &mut |p, _, meta| {
                let mut meta = meta.clone();
                meta.storage = meta.storage.map(|id| id + base);
                found.entry(p.to_owned()).or_insert(meta);
            });
            for (tensor, s) in &weight_map {
                if s != shard {
                    continue;
                }
                let meta = found.remove(tensor).ok_or_else(|| {
                    Error::new(ErrorKind::Index {
                        shard: shard.to_string(),
                        message: format!(
                            "the index places tensor '{tensor}' here, but the shard does not \
                             hold it"
                        ),
                    })
                })?;
                tensors.insert(tensor, meta);
            }
            storages.extend(std::mem::take(&mut ckpt.storages));
        }
        let items = weight_map
            .iter()
            .filter_map(|(tensor, _)| {
                let meta = tensors.remove(tensor.as_str())?;
                Some((
                    Value::Str(tensor.as_str().into()),
                    Value::Tensor(Box::new(meta)),
                ))
            })
            .collect();
        let root = Value::Dict(Box::new(Dict {
            class: "collections.OrderedDict".into(),
            items,
            attributes: Vec::new(),
        }));
        let (format, byte_order) = first.unwrap_or((crate::Format::Zip, crate::ByteOrder::Little));
        Ok(Checkpoint::from_parts(
            root,
            storages,
            format,
            byte_order,
            max_tensor_bytes,
        ))
    }
}

/// Whether `path` is a safetensors file (by its first bytes, not its name).
pub fn is_safetensors(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut head = Vec::with_capacity(262);
    if file.by_ref().take(262).read_to_end(&mut head).is_err() {
        return false;
    }
    matches!(foreign(&head, len), Some(Foreign::Safetensors))
}
