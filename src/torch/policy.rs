//! The weights-only policy (spec §6): which globals a checkpoint may name.
//!
//! With `weights_only` (the default, as in torch ≥ 2.6) a global outside torch's allowlist is
//! refused when the pickle names it, with torch's wording so users can search for it. Without
//! it every global is accepted, but nothing is ever imported or run: unknown classes become
//! inert [`super::Object`]s. Module names are first mapped as Python 3's unpickler does for
//! protocol-2 files (`__builtin__` → `builtins`, `copy_reg` → `copyreg`).
//!
//! Only globals are restricted: torch's weights-only unpickler also refuses every opcode outside
//! a subset (spec §6.4, "Unsupported operand N"), which ptload's machine, executing nothing,
//! has no need to.

use super::Dtype;

/// Modules that can never be allowlisted in torch (spec §6.2).
const BLOCKED_MODULES: [&str; 4] = ["sys", "os", "posix", "nt"];

/// Non-torch globals torch allows by default.
const ALLOWED_PLAIN: [&str; 11] = [
    "collections.OrderedDict",
    "collections.Counter",
    "torch.nn.parameter.Parameter",
    "torch.serialization._get_layout",
    "torch.Size",
    "torch.Tensor",
    "torch.device",
    "_codecs.encode",
    "builtins.bytearray",
    "builtins.set",
    "builtins.complex",
];

const REBUILD_FUNCTIONS: [&str; 12] = [
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_sparse_tensor",
    "torch._utils._rebuild_meta_tensor_no_storage",
    "torch._utils._rebuild_wrapper_subclass",
    "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor",
    "torch._tensor._rebuild_from_type_v2",
];

const QSCHEMES: [&str; 5] = [
    "per_tensor_affine",
    "per_channel_affine",
    "per_tensor_symmetric",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
];

const LEGACY_TENSOR_CLASSES: [&str; 10] = [
    "DoubleTensor",
    "FloatTensor",
    "HalfTensor",
    "BFloat16Tensor",
    "LongTensor",
    "IntTensor",
    "ShortTensor",
    "CharTensor",
    "ByteTensor",
    "BoolTensor",
];

/// Python 3's renames of Python 2 modules, as `pickle`'s `fix_imports` applies them.
pub fn python3_module(module: &str) -> &str {
    match module {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        "Queue" => "queue",
        "cPickle" => "pickle",
        "UserDict" | "UserList" | "UserString" => "collections",
        other => other,
    }
}

/// Whether torch's weights-only unpickler allows `module.name` by default.
pub fn is_allowed(module: &str, name: &str) -> bool {
    // The globals of nearly every checkpoint first, without scanning the lists (each is also
    // allowed below: the order changes nothing but the time).
    if matches!(
        (module, name),
        ("torch._utils", "_rebuild_tensor_v2") | ("collections", "OrderedDict")
    ) || (module == "torch" && Dtype::from_storage_class(name).is_some())
    {
        return true;
    }
    // `module.name` compared in place: no string made per global.
    if is_listed(&ALLOWED_PLAIN, module, name) || is_listed(&REBUILD_FUNCTIONS, module, name) {
        return true;
    }
    match module {
        "torch" => {
            Dtype::from_name(name).is_some()
                || is_sub_byte_int(name)
                || QSCHEMES.contains(&name)
                || LEGACY_TENSOR_CLASSES.contains(&name)
                || Dtype::from_storage_class(name).is_some()
        }
        "torch.cuda" | "torch.sparse" | "torch.cuda.sparse" => {
            LEGACY_TENSOR_CLASSES.contains(&name)
                || (module == "torch.cuda" && Dtype::from_storage_class(name).is_some())
        }
        "torch.storage" => name == "UntypedStorage" || name == "TypedStorage",
        _ => false,
    }
}

/// Whether `module.name` is one of `list` (each entry `module.name`).
pub fn is_listed(list: &[&str], module: &str, name: &str) -> bool {
    list.iter().any(|full| {
        full.strip_suffix(name)
            .and_then(|m| m.strip_suffix('.'))
            .is_some_and(|m| m == module)
    })
}

/// Whether a module belongs to TorchScript's own pickles: compiled classes (`__torch__.*`) and
/// the list/type helpers of `torch.jit._pickle`. They are data, never code, in ptload.
pub fn is_torchscript(module: &str) -> bool {
    module == "__torch__" || module.starts_with("__torch__.") || module == "torch.jit._pickle"
}

/// `uint1`…`uint7`, `int1`…`int7`: dtypes torch allows as globals but cannot save.
fn is_sub_byte_int(name: &str) -> bool {
    let digits = name
        .strip_prefix("uint")
        .or_else(|| name.strip_prefix("int"));
    matches!(digits, Some(d) if d.len() == 1 && (b'1'..=b'7').contains(&d.as_bytes()[0]))
}

/// The message for a global refused under weights-only: torch's searchable sentence, then how
/// to opt out in ptload.
pub fn refusal(module: &str, name: &str) -> String {
    let shown = if module == "builtins" {
        name.to_owned()
    } else {
        format!("{module}.{name}")
    };
    let what = if BLOCKED_MODULES.contains(&module) {
        format!(
            "Trying to load unsupported GLOBAL {module}.{name} whose module {module} is blocked."
        )
    } else {
        format!("Unsupported global: GLOBAL {shown} was not an allowed global by default.")
    };
    format!(
        "Weights only load failed. WeightsUnpickler error: {what} Only load this file without \
         weights_only if you trust its source (Loader::weights_only(false), CLI --no-weights-only, \
         JS weightsOnly: false): ptload then keeps such globals as inert objects and never runs them."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortcut_allows_only_what_the_lists_allow() {
        let listed = |module, name| {
            is_listed(&ALLOWED_PLAIN, module, name) || is_listed(&REBUILD_FUNCTIONS, module, name)
        };
        assert!(listed("torch._utils", "_rebuild_tensor_v2"));
        assert!(listed("collections", "OrderedDict"));
        // Storage classes are allowed under `torch` (and only there, not `torch.cuda` aside).
        assert!(is_allowed("torch", "BFloat16Storage"));
        assert!(!is_allowed("torch.nn", "FloatStorage"));
        assert!(!is_allowed("torch", "FloatStorageX"));
        assert!(!is_allowed("collections", "_rebuild_tensor_v2"));
        assert!(!is_allowed("torch._utils", "OrderedDict"));
    }

    #[test]
    fn allowlist() {
        assert!(is_allowed("torch._utils", "_rebuild_tensor_v2"));
        assert!(is_allowed("collections", "OrderedDict"));
        assert!(is_allowed("torch", "bfloat16"));
        assert!(is_allowed("torch", "uint3"));
        assert!(is_allowed("torch", "FloatStorage"));
        assert!(is_allowed("torch.cuda", "HalfStorage"));
        // torch 2.15's _get_allowed_globals(): storage classes under torch and torch.cuda only.
        assert!(is_allowed("torch.sparse", "FloatTensor"));
        assert!(!is_allowed("torch.sparse", "FloatStorage"));
        assert!(!is_allowed("torch.cuda.sparse", "FloatStorage"));
        assert!(is_allowed("torch.storage", "TypedStorage"));
        assert!(is_allowed("torch.storage", "UntypedStorage"));
        assert!(!is_allowed("torch.storage", "_load_from_bytes"));
        assert!(is_allowed("torch", "per_channel_affine"));
        assert!(!is_allowed("torch._utils", "_rebuild_nested_tensor"));
        assert!(!is_allowed("builtins", "frozenset"));
        assert!(!is_allowed("argparse", "Namespace"));
        assert!(!is_allowed("torch.torch_version", "TorchVersion"));
        assert!(!is_allowed("posix", "system"));
    }

    #[test]
    fn torchscript_modules_are_its_classes_and_pickle_helpers_only() {
        for module in ["__torch__", "__torch__.model.Net", "torch.jit._pickle"] {
            assert!(is_torchscript(module), "{module}");
        }
        for module in ["__torch__x", "torch.jit", "os", "builtins"] {
            assert!(!is_torchscript(module), "{module}");
        }
    }

    #[test]
    fn extra_globals_are_exact_names() {
        let list = [
            "torch.distributed.checkpoint.metadata.Metadata",
            "pathlib.PosixPath",
        ];
        assert!(is_listed(
            &list,
            "torch.distributed.checkpoint.metadata",
            "Metadata"
        ));
        assert!(is_listed(&list, "pathlib", "PosixPath"));
        assert!(!is_listed(&list, "pathlib", "Path"));
        assert!(!is_listed(
            &list,
            "torch.distributed.checkpoint.metadat",
            "aMetadata"
        ));
        // Outside a .metadata, the DCP classes are not allowed.
        assert!(!is_allowed(
            "torch.distributed.checkpoint.metadata",
            "Metadata"
        ));
    }

    #[test]
    fn refusal_texts() {
        let m = refusal("argparse", "Namespace");
        assert!(m.contains(
            "Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default."
        ));
        assert!(refusal("builtins", "frozenset").contains("GLOBAL frozenset was"));
        assert!(refusal("posix", "system").contains(
            "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
        ));
    }
}
