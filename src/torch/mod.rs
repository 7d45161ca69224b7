//! torch's meaning on top of the pickle machine: dtypes, storage references, the rebuild
//! functions, the weights-only policy, and the checkpoint tree. Knows nothing of devices.

pub mod dtype;
pub mod json;
pub mod layout;
// Internals, public for the fuzz targets, tests and benches only (not a stable API).
#[doc(hidden)]
pub mod policy;
#[doc(hidden)]
pub mod rebuild;
#[doc(hidden)]
pub mod storage;
#[doc(hidden)]
pub mod tar;
pub mod value;

pub use dtype::Dtype;
pub use storage::StorageKey;
#[doc(hidden)]
pub use storage::{StorageRef, StorageTable};
pub use value::{Dict, Dims, Object, StorageId, TensorKind, TensorMeta, Text, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::pickle::{self, Arena, Hooks, NodeId, PickleLimits, StringEncoding};

/// Options for reading one pickle as torch does.
#[derive(Clone, Copy, Debug)]
#[doc(hidden)]
pub struct PickleOptions {
    /// Refuse globals outside torch's allowlist (spec §6).
    pub weights_only: bool,
    /// How Python 2 strings decode.
    pub encoding: StringEncoding,
    /// Bounds for the machine.
    pub pickle_limits: PickleLimits,
    /// Bounds for the tree.
    pub tree_limits: rebuild::TreeLimits,
    /// Most storages one checkpoint may declare.
    pub max_storages: usize,
    /// The pickle is a TorchScript archive's (`__torch__.*` classes and `torch.jit._pickle`
    /// helpers are accepted as inert, under either policy).
    pub torchscript: bool,
    /// Globals (`module.name`) allowed under weights-only beyond torch's allowlist, for
    /// pickles that are not checkpoints (a distributed checkpoint's `.metadata`); empty for
    /// checkpoints.
    pub extra_globals: &'static [&'static str],
}

/// The result of reading a checkpoint's main pickle.
#[derive(Debug)]
#[doc(hidden)]
pub struct Parsed {
    /// The object tree.
    pub root: Value,
    /// Storages in order of first reference.
    pub storages: Vec<StorageRef>,
    /// Offset just past the pickle's `STOP` (where a legacy stream's key list starts).
    pub end: usize,
}

impl Drop for Parsed {
    fn drop(&mut self) {
        self.root.dismantle(); // a deep tree must not overflow the dropping thread's stack
    }
}

/// The hooks torch gives the pickle machine.
struct TorchHooks {
    weights_only: bool,
    torchscript: bool,
    extra_globals: &'static [&'static str],
    table: StorageTable,
    max_storages: usize,
    refused: Option<String>,
    /// Set when `max_storages` stopped the pickle (its value).
    storage_limit: Option<usize>,
}

impl Hooks for TorchHooks {
    fn find_class<'s>(
        &mut self,
        module: &'s str,
        name: &'s str,
    ) -> std::result::Result<(&'s str, &'s str), String> {
        let mut module = policy::python3_module(module);
        if self.weights_only {
            let allowed = policy::is_allowed(module, name)
                || (self.torchscript && policy::is_torchscript(module))
                || policy::is_listed(self.extra_globals, module, name);
            if !allowed {
                let message = policy::refusal(module, name);
                self.refused = Some(message.clone());
                return Err(message);
            }
        } else if module == "torch.tensor" {
            module = "torch._tensor";
        }
        Ok((module, name))
    }

    fn persistent_load(
        &mut self,
        arena: &mut Arena,
        pid: NodeId,
    ) -> std::result::Result<NodeId, String> {
        if let Some(fields) = arena.tuple(pid) {
            // ('module', cls, source_file, source): full-module pickles of the legacy stream;
            // the result is the class, as torch returns it (spec §4.2).
            if fields.len() == 4 && arena.str(fields[0]) == Some("module") {
                return Ok(fields[1]);
            }
            // The tar format's module ids: (cls, source_file, source), untagged.
            if fields.len() == 3 && !self.table.by_id.is_empty() {
                return Ok(fields[0]);
            }
        }
        let max = self.max_storages;
        self.table
            .persistent_load(arena, pid, max)
            .inspect_err(|message| {
                if message.starts_with("limit max_storages exceeded") {
                    self.storage_limit = Some(max);
                }
            })
    }
}

/// Reads `bytes` (the record `record`, for errors) as a torch pickle and builds its tree.
#[doc(hidden)]
pub fn parse_pickle(bytes: &[u8], record: &str, options: &PickleOptions) -> Result<Parsed> {
    parse_pickle_with(bytes, record, options, StorageTable::default())
}

/// Runs one pickle with torch's hooks over `table`; returns the arena, the root and the end.
fn run_pickle(
    bytes: &[u8],
    record: &str,
    options: &PickleOptions,
    table: StorageTable,
) -> Result<(Arena, NodeId, usize, StorageTable)> {
    let mut arena = Arena::for_input(bytes.len());
    let mut table = table;
    // A torch pickle spends some 150 bytes per storage it names: room for them up front.
    table.reserve(bytes.len().min(MAX_STORAGES_RESERVED * 150) / 150);
    let mut hooks = TorchHooks {
        weights_only: options.weights_only,
        torchscript: options.torchscript,
        extra_globals: options.extra_globals,
        table,
        max_storages: options.max_storages,
        refused: None,
        storage_limit: None,
    };
    match pickle::load_pickle(
        bytes,
        &mut arena,
        &mut hooks,
        options.pickle_limits,
        options.encoding,
    ) {
        Ok((root, end)) => Ok((arena, root, end, hooks.table)),
        Err(error) => Err(match hooks.refused {
            Some(message) => {
                Error::new(ErrorKind::WeightsOnly { message }).at(record, error.offset)
            }
            None => match hooks.storage_limit {
                Some(max) => Error::limit("max_storages", max as u64 + 1, max as u64)
                    .at(record, error.offset),
                None => Error::pickle(record, error),
            },
        }),
    }
}

/// The most storages [`run_pickle`] makes room for before it runs.
const MAX_STORAGES_RESERVED: usize = 1 << 16;

/// [`parse_pickle`] with storages (and tar objects) already known.
#[doc(hidden)]
pub fn parse_pickle_with(
    bytes: &[u8],
    record: &str,
    options: &PickleOptions,
    table: StorageTable,
) -> Result<Parsed> {
    let (arena, root, end, table) = run_pickle(bytes, record, options, table)?;
    let mut interpreter = rebuild::Interpreter::new(
        &arena,
        &table.storages,
        &table.externals,
        options.tree_limits,
    );
    let root = interpreter.convert(root)?;
    Ok(Parsed {
        root,
        storages: table.storages,
        end,
    })
}
