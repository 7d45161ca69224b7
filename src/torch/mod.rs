//! torch's meaning on top of the pickle machine: dtypes, storage references, the rebuild
//! functions, the weights-only policy, and the checkpoint tree. Knows nothing of devices.

pub mod dtype;
pub mod policy;
pub mod rebuild;
pub mod storage;
pub mod value;

pub use dtype::Dtype;
pub use storage::{StorageRef, StorageTable};
pub use value::{Dict, Object, StorageId, TensorKind, TensorMeta, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::pickle::{self, Arena, Hooks, NodeId, PickleLimits, StringEncoding};

/// Options for reading one pickle as torch does.
#[derive(Clone, Copy, Debug)]
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
}

/// The result of reading a checkpoint's main pickle.
#[derive(Debug)]
pub struct Parsed {
    /// The object tree.
    pub root: Value,
    /// Storages in order of first reference.
    pub storages: Vec<StorageRef>,
    /// Offset just past the pickle's `STOP` (where a legacy stream's key list starts).
    pub end: usize,
}

/// The hooks torch gives the pickle machine.
struct TorchHooks {
    weights_only: bool,
    torchscript: bool,
    table: StorageTable,
    max_storages: usize,
    refused: Option<String>,
}

impl Hooks for TorchHooks {
    fn find_class(
        &mut self,
        module: &str,
        name: &str,
    ) -> std::result::Result<(String, String), String> {
        let mut module = policy::python3_module(module);
        if self.weights_only {
            let allowed = policy::is_allowed(module, name)
                || (self.torchscript && policy::is_torchscript(module));
            if !allowed {
                let message = policy::refusal(module, name);
                self.refused = Some(message.clone());
                return Err(message);
            }
        } else if module == "torch.tensor" {
            module = "torch._tensor";
        }
        Ok((module.to_owned(), name.to_owned()))
    }

    fn persistent_load(
        &mut self,
        arena: &mut Arena,
        pid: NodeId,
    ) -> std::result::Result<NodeId, String> {
        self.table.persistent_load(arena, pid, self.max_storages)
    }
}

/// Reads `bytes` (the record `record`, for errors) as a torch pickle and builds its tree.
pub fn parse_pickle(bytes: &[u8], record: &str, options: &PickleOptions) -> Result<Parsed> {
    let mut arena = Arena::new();
    let mut hooks = TorchHooks {
        weights_only: options.weights_only,
        torchscript: options.torchscript,
        table: StorageTable::default(),
        max_storages: options.max_storages,
        refused: None,
    };
    let (root, end) = match pickle::load_pickle(
        bytes,
        &mut arena,
        &mut hooks,
        options.pickle_limits,
        options.encoding,
    ) {
        Ok(found) => found,
        Err(error) => {
            return Err(match hooks.refused {
                Some(message) => Error::new(ErrorKind::WeightsOnly { message }),
                None => Error::new(ErrorKind::Pickle {
                    record: record.to_owned(),
                    error,
                }),
            })
        }
    };
    let TorchHooks { table, .. } = hooks;
    let mut interpreter =
        rebuild::Interpreter::new(&arena, &table.storages, &table.views, options.tree_limits);
    let root = interpreter.convert(root)?;
    Ok(Parsed {
        root,
        storages: table.storages,
        end,
    })
}
