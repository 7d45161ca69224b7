//! Planning a load: from a container's directory and pickles to a [`Plan`] that says, for
//! every storage, where it goes (map_location decided, every device checked) and where its
//! bytes lie (record, byte range, inflate, byte-swap unit) — reading no tensor byte. Every
//! placer, native or JS, consumes the same plan.
//!
//! | file | container |
//! |---|---|
//! | `zip.rs` | the zip format of `torch.save` and TorchScript archives |
//! | `legacy.rs` | the legacy pickle stream |
//! | `tar.rs` | the tar format of torch ≤ 0.1 |
//! | `safetensors.rs` | a `.safetensors` file (for `ptload convert`) |

mod legacy;
mod safetensors;
mod tar;
mod zip;

use crate::archive::{self, ByteOrder, Format, Sniffed};
use crate::error::{Error, ErrorKind, Result};
use crate::location::{Device, StorageInfo};
use crate::source::{ByteSource, Preloaded};
use crate::torch::value::Segment;
use crate::torch::{self, Dtype, StorageRef, TensorMeta, Value};
use crate::Loader;

/// How much of a mapped file's start is read at once before planning: the sniffed head, and
/// a zip file's first records (`data.pkl` of a few hundred tensors, `byteorder`).
const HEAD_READ: u64 = 32 << 10;

/// How much of a mapped zip file's end is read at once: the end records, the directory of a
/// few hundred entries and the records before it.
const TAIL_READ: u64 = 32 << 10;

impl Loader {
    /// Plans a load: reads the container's directory and pickles from `bytes`, decides every
    /// storage's device, and says where each storage's bytes lie — reading no tensor byte.
    ///
    /// `bytes` may be partial ([`crate::source::SparseBytes`]): for zip files only the tail,
    /// the central directory, the local headers and the small records are needed; each missing
    /// range comes back as [`ErrorKind::NeedBytes`], to be loaded before trying again. Legacy
    /// and tar files need all their bytes.
    pub fn plan(&self, name: &str, bytes: &(impl ByteSource + ?Sized)) -> Result<Plan> {
        self.plan_inner(bytes).map_err(|e| e.in_file(name))
    }

    pub(crate) fn plan_inner(&self, bytes: &(impl ByteSource + ?Sized)) -> Result<Plan> {
        let len = bytes.len();
        if len == 0 {
            return Err(Error::new(ErrorKind::NotACheckpoint {
                reason: "the file is empty".into(),
            }));
        }
        // A mapped file's first and last bytes are read, not faulted in (see `Preloaded`): the
        // head for sniffing, and in a zip file the first records (`data.pkl`, `byteorder`),
        // the directory and the records just before it (`version`).
        let mut known = Preloaded::new(bytes);
        known.read(0, len.min(HEAD_READ), HEAD_READ);
        let head = known.get(0, len.min(262))?;
        // Files that are no torch archive say what they are (archive/detect.rs).
        match archive::sniff(head) {
            Sniffed::Zip => {
                let tail = len.min(TAIL_READ);
                known.read(len - tail, tail, TAIL_READ);
                self.plan_zip(&known)
                    .map_err(|e| archive::detect::zip_error(bytes, e))
            }
            Sniffed::Tar => {
                let data = bytes.get(0, len)?;
                self.plan_tar(data)
                    .map_err(|e| archive::detect::tar_error(data, e))
            }
            Sniffed::Pickle => {
                archive::detect::check(bytes, head)?;
                self.plan_legacy(bytes.get(0, len)?)
            }
        }
    }

    /// Decides every storage's device (all errors before any byte is read), then finds the
    /// record of each storage that needs bytes. Not inlined, so that its callers stay small
    /// (see `pickle::machine::Machine::rare_opcode`).
    #[inline(never)]
    fn finish_plan(
        &self,
        mut parsed: torch::Parsed,
        constants: Option<Value>,
        format: Format,
        byte_order: ByteOrder,
        mut record_of: impl FnMut(usize, &StorageRef) -> Result<archive::Record>,
    ) -> Result<Plan> {
        let devices = self.decide_devices(&parsed.storages)?;
        let roots: Vec<&Value> = std::iter::once(&parsed.root)
            .chain(constants.as_ref())
            .collect();
        let swap_units = swap_units(&roots, &parsed.storages);
        let mut storages = Vec::with_capacity(parsed.storages.len());
        let parsed_storages = std::mem::take(&mut parsed.storages);
        for (id, (storage, device)) in parsed_storages.into_iter().zip(devices).enumerate() {
            let record = match device {
                Device::Meta => None,
                _ => {
                    let record = record_of(id, &storage)?;
                    // Every view was checked against the declared size; the bytes must match it.
                    if Some(record.size) != storage.nbytes() {
                        return Err(Error::new(ErrorKind::StorageSize {
                            record: record.name.to_string(),
                            offset: record.data_offset,
                            numel: storage.numel,
                            dtype: storage.dtype,
                            actual: record.size,
                        }));
                    }
                    Some(record)
                }
            };
            storages.push(PlannedStorage {
                key: storage.key,
                dtype: storage.dtype,
                numel: storage.numel,
                location: storage.location,
                device,
                record,
                swap_unit: swap_units[id],
            });
        }
        Ok(Plan {
            format,
            byte_order,
            root: std::mem::replace(&mut parsed.root, Value::None),
            constants,
            storages,
            max_tensor_bytes: self.limits.max_tensor_bytes,
        })
    }

    /// Every storage's device, decided (and checked to exist) before any byte is read: the
    /// host and meta are built in; any other device must be claimed by a registered
    /// [`crate::place::Backend`], else torch's "not available" messages apply.
    pub(crate) fn decide_devices(&self, storages: &[StorageRef]) -> Result<Vec<Device>> {
        if self.map_location.is_meta() {
            return Ok(vec![Device::Meta; storages.len()]);
        }
        let mut devices = Vec::with_capacity(storages.len());
        for s in storages {
            devices.push({
                let device = match self.map_location.resolve_saved(&s.location) {
                    Some(device) => device?,
                    // A callback sees the whole storage.
                    None => self.map_location.resolve(&StorageInfo {
                        key: s.key.clone(),
                        dtype: s.dtype,
                        nbytes: s.nbytes().unwrap_or(u64::MAX),
                        location: s.location.clone(),
                    })?,
                };
                self.check_device(&device)?
            });
        }
        Ok(devices)
    }

    /// Whether `device` can be placed onto: the host and meta always; others when a
    /// registered backend claims them (the latest registration first).
    pub(crate) fn check_device(&self, device: &Device) -> Result<Device> {
        if matches!(device, Device::Cpu | Device::Meta) {
            return Ok(device.clone());
        }
        for backend in self.backends.iter().rev() {
            if let Some(checked) = backend.check(device) {
                return checked;
            }
        }
        // No backend: torch's messages for a missing device, else ours.
        let device = self.support.check(device)?;
        Err(Error::new(ErrorKind::Location {
            message: format!("no placer for device {device} in this build"),
        }))
    }
}

/// Runs `f` (pickle reading) so that a panic there, which would be a bug, becomes an error
/// rather than taking the caller down. (Deep trees need no special thread: the conversion grows
/// its stack on demand.)
pub(crate) fn catching_panics<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::unsupported(format!(
            "internal error while reading {what}"
        )))
    })
}

/// Each storage's byte-swap unit: from the dtype of the first tensor that views it (so
/// untyped v3 storages swap by their tensor's dtype, which torch itself gets wrong), else
/// from the storage's own dtype.
fn swap_units(roots: &[&Value], storages: &[StorageRef]) -> Vec<usize> {
    let mut units: Vec<Option<usize>> = vec![None; storages.len()];
    for root in roots {
        for_each_tensor(root, |meta| {
            if let Some(unit) = meta.storage.and_then(|id| units.get_mut(id)) {
                unit.get_or_insert(meta.dtype.swap_unit());
            }
        });
    }
    units
        .into_iter()
        .zip(storages)
        .map(|(u, s)| u.unwrap_or(s.dtype.swap_unit()))
        .collect()
}

/// The children of a container still to visit, in [`Value::child_entries`] order.
enum Children<'v> {
    Values(std::slice::Iter<'v, Value>),
    Pairs(std::slice::Iter<'v, (Value, Value)>),
    /// An object's (few): as `child_entries` lists them.
    Entries(Box<dyn Iterator<Item = (Segment<'v>, &'v Value)> + 'v>),
}

impl<'v> Children<'v> {
    /// The children of `value`, when it is a container.
    fn of(value: &'v Value) -> Option<Self> {
        Some(match value {
            Value::List(items)
            | Value::Tuple(items)
            | Value::Set(items)
            | Value::FrozenSet(items) => Children::Values(items.iter()),
            Value::Dict(d) => Children::Pairs(d.items.iter()),
            Value::Object(_) => Children::Entries(value.child_entries()),
            _ => return None,
        })
    }
}

impl<'v> Iterator for Children<'v> {
    type Item = &'v Value;
    fn next(&mut self) -> Option<&'v Value> {
        match self {
            Children::Values(items) => items.next(),
            Children::Pairs(items) => items.next().map(|(_, v)| v),
            Children::Entries(entries) => entries.next().map(|(_, v)| v),
        }
    }
}

/// Calls `f` for every tensor in the tree, in the order of [`walk_tensors`], without the paths
/// (nor the work of building them). The walk keeps its own stack on the heap.
fn for_each_tensor<'v>(value: &'v Value, mut f: impl FnMut(&'v TensorMeta)) {
    let mut stack: Vec<Children<'v>> = match Children::of(value) {
        Some(children) => vec![children],
        None => {
            if let Value::Tensor(meta) = value {
                f(meta);
            }
            return;
        }
    };
    while let Some(top) = stack.last_mut() {
        match top.next() {
            Some(Value::Tensor(meta)) => f(meta),
            Some(child) => stack.extend(Children::of(child)),
            None => {
                stack.pop();
            }
        }
    }
}

/// One container being walked: its children still to visit, and where its path ends.
struct Frame<'v> {
    children: Box<dyn Iterator<Item = (Segment<'v>, &'v Value)> + 'v>,
    path_len: usize,
    next: u32,
}

/// Calls `f(path, positions, tensor)` for every tensor in the tree, in file order. `path` is
/// `.`-joined and starts with what `path` holds on entry; `positions` are the child indices
/// ([`Value::child_at`]) from `value` down to the tensor.
///
/// The walk keeps its own stack on the heap: a tree of any depth walks on any thread.
pub(crate) fn walk_tensors<'v>(
    value: &'v Value,
    path: &mut String,
    f: &mut dyn FnMut(&str, &[u32], &'v TensorMeta),
) {
    let mut positions: Vec<u32> = Vec::new();
    if let Value::Tensor(meta) = value {
        f(path, &positions, meta);
        return;
    }
    let mut stack = vec![Frame {
        children: value.child_entries(),
        path_len: path.len(),
        next: 0,
    }];
    while let Some(top) = stack.last_mut() {
        let Some((segment, child)) = top.children.next() else {
            stack.pop();
            continue;
        };
        let index = top.next;
        top.next = top.next.saturating_add(1);
        path.truncate(top.path_len);
        if !path.is_empty() {
            path.push('.');
        }
        // Written in place: no string per segment.
        segment.push_to(path);
        positions.truncate(stack.len() - 1);
        positions.push(index);
        match child {
            Value::Tensor(meta) => f(path, &positions, meta),
            _ if child.has_children() => stack.push(Frame {
                children: child.child_entries(),
                path_len: path.len(),
                next: 0,
            }),
            _ => {}
        }
    }
}

/// Where every storage of a checkpoint goes and where its bytes lie: the result of
/// [`Loader::plan`], before any tensor byte is read.
#[derive(Debug)]
pub struct Plan {
    /// The container format.
    pub format: Format,
    /// The byte order of the file's tensor data.
    pub byte_order: ByteOrder,
    /// The object tree.
    pub root: Value,
    /// TorchScript only: the `constants.pkl` tuple.
    pub constants: Option<Value>,
    /// Storages in order of first reference.
    pub storages: Vec<PlannedStorage>,
    pub(crate) max_tensor_bytes: u64,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // A deep tree must not overflow the dropping thread's stack.
        self.root.dismantle();
        if let Some(constants) = &mut self.constants {
            constants.dismantle();
        }
    }
}

impl Plan {
    /// Every tensor with its path, in file order (as [`crate::Checkpoint::tensors`]).
    pub fn tensors(&self) -> Vec<(String, &TensorMeta)> {
        tensors_of(&self.root, self.constants.as_ref())
    }
}

/// One storage of a [`Plan`].
#[derive(Clone, Debug)]
pub struct PlannedStorage {
    /// Its key in the file.
    pub key: crate::StorageKey,
    /// Its dtype (uint8 for untyped storages).
    pub dtype: Dtype,
    /// Elements of `dtype`.
    pub numel: u64,
    /// The device tag it was saved with.
    pub location: std::borrow::Cow<'static, str>,
    /// Where it goes.
    pub device: Device,
    /// Where its bytes lie; `None` when nothing needs reading (meta).
    pub record: Option<archive::Record>,
    /// Bytes are swapped in units of this when the file's byte order is not the host's (1: never).
    pub swap_unit: usize,
}

impl PlannedStorage {
    /// Its size in bytes (`numel × element size`; saturating, as sizes were checked when
    /// planned).
    pub fn nbytes(&self) -> u64 {
        self.numel.saturating_mul(self.dtype.element_size() as u64)
    }
}

/// Tensors of a tree (and TorchScript constants, as `constants.<i>`), in file order.
pub(crate) fn tensors_of<'v>(
    root: &'v Value,
    constants: Option<&'v Value>,
) -> Vec<(String, &'v TensorMeta)> {
    let mut out = Vec::new();
    walk_tensors(root, &mut String::new(), &mut |path, _, meta| {
        out.push((path.to_owned(), meta))
    });
    if let Some(constants) = constants {
        walk_tensors(
            constants,
            &mut "constants".to_owned(),
            &mut |path, _, meta| out.push((path.to_owned(), meta)),
        );
    }
    out
}

/// Checks that every `(offset, len)` range is loaded; otherwise one `NeedBytes` error naming
/// all the missing ones.
fn require_all(
    bytes: &(impl ByteSource + ?Sized),
    ranges: impl Iterator<Item = (u64, u64)>,
) -> Result<()> {
    let mut missing = Vec::new();
    for (offset, len) in ranges {
        if let Err(e) = bytes.get(offset, len) {
            match e.kind() {
                ErrorKind::NeedBytes { ranges } => missing.extend_from_slice(ranges),
                _ => return Err(e),
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::NeedBytes { ranges: missing }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torch::{Dict, Object};

    fn tensor(storage: usize, dtype: Dtype) -> Value {
        Value::Tensor(Box::new(TensorMeta::view(
            Some(storage),
            dtype,
            vec![1],
            vec![1],
            0,
        )))
    }

    fn dict(items: Vec<(&str, Value)>) -> Value {
        Value::Dict(Box::new(Dict {
            class: "dict".into(),
            items: items
                .into_iter()
                .map(|(k, v)| (Value::Str(k.into()), v))
                .collect(),
            attributes: vec![("ignored".into(), tensor(99, Dtype::Int8))],
        }))
    }

    /// Every tensor `walk_tensors` reaches, in its order (by address: the same values).
    fn walked(root: &Value) -> Vec<*const TensorMeta> {
        let mut out = Vec::new();
        walk_tensors(root, &mut String::new(), &mut |_, _, meta| {
            out.push(meta as *const _)
        });
        out
    }

    fn each(root: &Value) -> Vec<*const TensorMeta> {
        let mut out = Vec::new();
        for_each_tensor(root, |meta| out.push(meta as *const _));
        out
    }

    #[test]
    fn the_tensor_walk_without_paths_visits_what_the_walk_with_paths_does() {
        let object = Value::Object(Box::new(Object {
            class: "__main__.Net".into(),
            args: vec![tensor(50, Dtype::Int8)],
            state: Some(Value::Tuple(vec![
                dict(vec![("w", tensor(3, Dtype::Float16))]),
                dict(vec![("slot", tensor(4, Dtype::Int32))]),
            ])),
            list_items: vec![tensor(5, Dtype::Int64)],
            dict_items: vec![(Value::Int(1), tensor(6, Dtype::Float32))],
        }));
        let root = dict(vec![
            ("a", tensor(0, Dtype::Float32)),
            (
                "b",
                Value::List(vec![
                    Value::Tuple(vec![tensor(1, Dtype::Int16), Value::None]),
                    Value::Set(vec![tensor(2, Dtype::UInt8)]),
                    Value::FrozenSet(vec![]),
                    Value::Int(7),
                ]),
            ),
            ("net", object),
            ("empty", dict(vec![])),
            ("again", tensor(0, Dtype::Int8)),
        ]);
        let order = each(&root);
        assert_eq!(order.len(), 8);
        assert_eq!(order, walked(&root));
        let lone = tensor(0, Dtype::Float64);
        assert_eq!(each(&lone), walked(&lone));
        assert_eq!(each(&lone).len(), 1);
        assert!(each(&Value::Int(1)).is_empty());
        // The first tensor to view a storage gives its swap unit (the second view of storage
        // 0 is int8; object arguments are not walked).
        let storages: Vec<StorageRef> = (0..7)
            .map(|i| StorageRef {
                key: i.to_string().into(),
                dtype: Dtype::UInt8,
                numel: 1,
                location: "cpu".into(),
            })
            .collect();
        assert_eq!(swap_units(&[&root], &storages), vec![4, 2, 1, 2, 4, 8, 4]);
        // A storage no tensor views swaps by its own dtype.
        let unviewed = vec![StorageRef {
            dtype: Dtype::Float64,
            ..storages[0].clone()
        }];
        assert_eq!(swap_units(&[&Value::None], &unviewed), vec![8]);
    }
}
