//! Gives torch meaning to the pickle machine's nodes: the rebuild functions (spec §3.4), the
//! other torch and Python globals checkpoints use (§3.5–3.6), and the conversion of the arena
//! into the checkpoint's [`Value`] tree.
//!
//! Rebuild functions are pure constructors of [`TensorMeta`]; nothing is called. Argument lists:
//!
//! | global | arguments |
//! |---|---|
//! | `torch._utils._rebuild_tensor` | storage, offset, size, stride |
//! | `torch._utils._rebuild_tensor_v2` | storage, offset, size, stride, requires_grad, hooks[, metadata] |
//! | `torch._utils._rebuild_tensor_v3` | storage, offset, size, stride, requires_grad, hooks, dtype[, metadata] |
//! | `torch._utils._rebuild_parameter` | tensor, requires_grad, hooks |
//! | `torch._utils._rebuild_parameter_with_state` | tensor, requires_grad, hooks, state |
//! | `torch._tensor._rebuild_from_type_v2` | func, new_type, args, state |
//! | `torch._utils._rebuild_qtensor` | storage, offset, size, stride, qparams, requires_grad, hooks |
//! | `torch._utils._rebuild_meta_tensor_no_storage` | dtype, size, stride, requires_grad |
//!
//! Offsets, sizes and strides are in elements of the tensor's dtype; every view is checked to lie
//! within its storage, with checked arithmetic, before it is accepted.

use super::storage::StorageRef;
use super::value::{Dict, Dims, Object, StorageId, TensorKind, TensorMeta, Value};
use super::Dtype;
use crate::error::{Error, Result};
use crate::pickle::value::bigint_to_decimal;
use crate::pickle::{Arena, Call, Node, NodeId};

use super::storage::{External, StorageView};

/// A dict key or set member as Python compares it (`1 == True == 1.0`), for the kinds
/// checkpoints use; other values (NaN, tuples, objects) are never merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum KeyRepr<'v> {
    Int(i64),
    Float(u64),
    BigInt(&'v str),
    Str(&'v str),
    Bytes(&'v [u8]),
}

impl<'v> KeyRepr<'v> {
    fn of(key: &'v Value) -> Option<KeyRepr<'v>> {
        Some(match key {
            Value::Int(i) => KeyRepr::Int(*i),
            Value::Bool(b) => KeyRepr::Int(*b as i64),
            Value::Float(x) if x.is_nan() => return None,
            // An integral float equals the int (-0.0 == 0.0 == 0): within i64 (where `as` is
            // exact) as an `Int`; past it (every float there is integral) as the float, which
            // is also what an equal big int becomes. Others compare by value.
            Value::Float(x) if x.fract() == 0.0 && (-I64_END..I64_END).contains(x) => {
                KeyRepr::Int(*x as i64)
            }
            Value::Float(x) => KeyRepr::Float(x.to_bits()),
            Value::BigInt(s) => match exact_float(s) {
                Some(x) => KeyRepr::Float(x.to_bits()),
                None => KeyRepr::BigInt(s),
            },
            Value::Str(s) => KeyRepr::Str(s),
            Value::Bytes(b) => KeyRepr::Bytes(b),
            _ => return None,
        })
    }
}

/// 2**63: the floats in `-I64_END..I64_END` convert to `i64` exactly.
const I64_END: f64 = 9_223_372_036_854_775_808.0;

/// The float equal to a big int's decimal text, if one is (`2**64` is `2.0**64`).
fn exact_float(decimal: &str) -> Option<f64> {
    let x: f64 = decimal.parse().ok()?;
    (x.is_finite() && format!("{x:.0}") == decimal).then_some(x)
}

/// Finds, among the items kept so far, the one a new key equals as Python compares them: one
/// hash lookup per item, and no copy of any key. The few items of a small dict (most of them:
/// a module's `{'version': 1}`) are scanned instead, with no table built.
/// (`S` is the hasher of keys; tests choose one that makes every hash collide.)
#[derive(Default)]
struct EqualIndex<S = foldhash::fast::RandomState> {
    hasher: S,
    /// A key's hash → the position of the first kept item with that hash.
    first: foldhash::HashMap<u64, usize>,
    /// How many kept items `first` has seen.
    indexed: usize,
    /// How many items the caller expects to keep at most (room for them in `first`, made when
    /// the first table is built).
    expected: usize,
}

/// Up to this many kept items, [`EqualIndex`] scans them.
const SCANNED_KEYS: usize = 8;

impl<S: std::hash::BuildHasher + Default> EqualIndex<S> {
    /// An index for up to `expected` items (a hint: more are fine).
    fn for_items(expected: usize) -> Self {
        EqualIndex {
            expected,
            ..Self::default()
        }
    }
}

impl<S: std::hash::BuildHasher> EqualIndex<S> {
    /// The position in `kept` of an item whose key (`key_of`) equals `key`. Items are only
    /// ever added to the end of `kept`.
    fn find<T>(&mut self, kept: &[T], key_of: fn(&T) -> &Value, key: &Value) -> Option<usize> {
        let repr = KeyRepr::of(key)?;
        let equal = |item: &T| KeyRepr::of(key_of(item)) == Some(repr);
        if kept.len() <= SCANNED_KEYS {
            return kept.iter().position(equal);
        }
        if self.indexed == 0 {
            self.first.reserve(self.expected.max(kept.len()));
        }
        for (at, item) in kept.iter().enumerate().skip(self.indexed) {
            if let Some(kept_repr) = KeyRepr::of(key_of(item)) {
                self.first
                    .entry(self.hasher.hash_one(kept_repr))
                    .or_insert(at);
            }
        }
        self.indexed = kept.len();
        match self.first.get(&self.hasher.hash_one(repr)) {
            Some(&at) if equal(&kept[at]) => Some(at),
            // Two keys with one 64-bit hash: rare enough for a scan.
            Some(_) => kept.iter().position(equal),
            None => None,
        }
    }
}

/// A set's members with Python's rule: a member equal to an earlier one is dropped (the first
/// is kept, so `{1, True}` is `{1}`).
fn distinct(items: Vec<Value>) -> Vec<Value> {
    let mut index: EqualIndex = EqualIndex::for_items(items.len());
    let mut kept = Vec::with_capacity(items.len());
    for item in items {
        if index.find(&kept, |v| v, &item).is_none() {
            kept.push(item);
        }
    }
    kept
}

/// Stack that must remain for one more level of conversion (a level is a few frames of well
/// under 1 KiB each); below it, [`STACK_SEGMENT`] more is allocated.
#[cfg(not(target_arch = "wasm32"))]
const STACK_RED_ZONE: usize = 64 << 10;
#[cfg(not(target_arch = "wasm32"))]
const STACK_SEGMENT: usize = 2 << 20;

/// Bounds on the tree built from a pickle.
#[derive(Clone, Copy, Debug)]
pub struct TreeLimits {
    /// Deepest nesting of containers.
    pub max_depth: usize,
    /// Most values in the tree (a memo-shared value counts each time it is reached).
    pub max_values: u64,
    /// Most tensor dimensions.
    pub max_rank: usize,
}

/// Converts an arena into a [`Value`] tree.
pub struct Interpreter<'a> {
    arena: &'a Arena,
    storages: &'a [StorageRef],
    externals: &'a [External],
    limits: TreeLimits,
    values: u64,
    /// Where the value being converted sits, rendered only when an error names it.
    path: Vec<Step>,
    /// Each global of the arena (by [`Node::Global`] index) as [`Common`] knows it.
    common: Vec<Common>,
}

/// One step of [`Interpreter::path`].
#[derive(Clone, Copy, Debug)]
enum Step {
    /// The `i`-th item of a sequence.
    Index(usize),
    /// The value under a dict key (the key's node).
    Key(NodeId),
}

/// The globals most calls of a checkpoint name, told apart once per pickle rather than by
/// their text at every call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Common {
    /// `collections.OrderedDict` (a state dict; every tensor's backward hooks).
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2` (every tensor).
    RebuildTensorV2,
    /// Any other.
    Other,
}

impl Common {
    fn of(module: &str, name: &str) -> Common {
        match (module, name) {
            ("collections", "OrderedDict") => Common::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Common::RebuildTensorV2,
            _ => Common::Other,
        }
    }
}

/// What a call's callable is, once resolved.
enum Callee<'n> {
    Global(&'n str, &'n str),
    Other(&'static str),
}

impl<'a> Interpreter<'a> {
    /// An interpreter over `arena`, whose `External` nodes index `externals`.
    pub fn new(
        arena: &'a Arena,
        storages: &'a [StorageRef],
        externals: &'a [External],
        limits: TreeLimits,
    ) -> Self {
        Interpreter {
            arena,
            storages,
            externals,
            limits,
            values: 0,
            path: Vec::new(),
            common: arena
                .globals()
                .map(|(module, name)| Common::of(module, name))
                .collect(),
        }
    }

    /// The node `id` as [`Common`] knows it (`Other` when it is no global).
    fn common(&self, id: NodeId) -> Common {
        match *self.arena.get(id) {
            Node::Global(index) => self
                .common
                .get(index as usize)
                .copied()
                .unwrap_or(Common::Other),
            _ => Common::Other,
        }
    }

    /// Converts the node `root` and everything it reaches.
    pub fn convert(&mut self, root: NodeId) -> Result<Value> {
        self.value(root, 0)
    }

    fn here(&self) -> String {
        if self.path.is_empty() {
            "<root>".to_owned()
        } else {
            self.path_text()
        }
    }

    /// The path as [`crate::Checkpoint::tensors`] names it (`.`-joined segments).
    fn path_text(&self) -> String {
        let segments: Vec<String> = self
            .path
            .iter()
            .map(|step| match *step {
                Step::Index(i) => i.to_string(),
                Step::Key(key) => self.key_text(key),
            })
            .collect();
        segments.join(".")
    }

    /// A dict key's path segment, from its node converted again (keys are small; this runs
    /// only for error messages).
    fn key_text(&self, key: NodeId) -> String {
        let mut again = Interpreter::new(self.arena, self.storages, self.externals, self.limits);
        match again.value(key, 0) {
            Ok(key) => super::value::key_segment(&key),
            Err(_) => "?".to_owned(),
        }
    }

    /// torch refuses `requires_grad` on a tensor that cannot have gradients, in the words of the
    /// call that sets it: the `requires_grad` setter of the rebuild functions (`only …`), or
    /// `Parameter` and `empty_strided` (`Only …`).
    fn check_requires_grad(&self, meta: &TensorMeta, setter: bool) -> Result<()> {
        if !meta.requires_grad || meta.dtype.can_require_grad() {
            return Ok(());
        }
        Err(self.tensor_error(format!(
            "{} Tensors of floating point and complex dtype can require gradients",
            if setter { "only" } else { "Only" }
        )))
    }

    fn tensor_error(&self, message: impl std::fmt::Display) -> Error {
        Error::invalid_tensor(format!("tensor '{}': {message}", self.here()))
            .for_tensor(self.path_text())
    }

    fn count(&mut self) -> Result<()> {
        self.values += 1;
        if self.values > self.limits.max_values {
            return Err(Error::limit(
                "max_values",
                self.values,
                self.limits.max_values,
            ));
        }
        Ok(())
    }

    /// Converts one node. The conversion recurses once per level of nesting (up to
    /// [`TreeLimits::max_depth`]); natively the stack grows on demand, so a tree of any allowed
    /// depth converts on any thread.
    fn value(&mut self, id: NodeId, depth: usize) -> Result<Value> {
        #[cfg(not(target_arch = "wasm32"))]
        return stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || self.value_here(id, depth));
        #[cfg(target_arch = "wasm32")]
        self.value_here(id, depth)
    }

    fn value_here(&mut self, id: NodeId, depth: usize) -> Result<Value> {
        if depth > self.limits.max_depth {
            return Err(Error::limit(
                "max_depth",
                depth as u64,
                self.limits.max_depth as u64,
            ));
        }
        self.count()?;
        let arena = self.arena;
        Ok(match arena.get(id) {
            Node::None => Value::None,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::Int(*i),
            Node::BigInt(bytes) => Value::BigInt(bigint_to_decimal(bytes)),
            Node::Float(x) => Value::Float(*x),
            Node::Str(s) => Value::Str(arena.text(*s).into()),
            Node::Bytes(b) => Value::Bytes(b.clone()),
            Node::ByteArray(b) => Value::ByteArray(b.clone()),
            Node::List(items) => Value::List(self.seq(items, depth)?),
            Node::Tuple(items) => Value::Tuple(self.seq(arena.items(*items), depth)?),
            Node::Set(items) => Value::Set(distinct(self.seq(items, depth)?)),
            Node::FrozenSet(items) => Value::FrozenSet(distinct(self.seq(items, depth)?)),
            Node::Dict(items) => Value::Dict(Box::new(Dict {
                class: "dict".into(),
                items: self.pairs(items, depth)?,
                attributes: Vec::new(),
            })),
            Node::Global(_) => {
                let (module, name) = arena.global(id).unwrap_or_default();
                Value::Global(format!("{module}.{name}"))
            }
            Node::External(i) => match &self.externals[*i as usize] {
                External::Storage(view) => Value::Storage(view.id),
                External::Tensor(meta) => Value::Tensor(meta.clone()),
            },
            Node::Call(call) => self.call(arena.call(*call), depth)?,
        })
    }

    fn seq(&mut self, items: &[NodeId], depth: usize) -> Result<Vec<Value>> {
        let mut out = Vec::with_capacity(items.len());
        for (i, &item) in items.iter().enumerate() {
            self.path.push(Step::Index(i));
            out.push(self.value(item, depth + 1)?);
            self.path.pop();
        }
        Ok(out)
    }

    /// A dict's items, with Python's rule for a repeated key: the value is replaced in place,
    /// the first key kept. Keys compare by value for str, int (bool as 0/1) and bytes; other
    /// keys are kept apart. Linear: one hash lookup per item.
    fn pairs(&mut self, items: &[(NodeId, NodeId)], depth: usize) -> Result<Vec<(Value, Value)>> {
        let mut out: Vec<(Value, Value)> = Vec::with_capacity(items.len());
        let mut index: EqualIndex = EqualIndex::for_items(items.len());
        for &(k, v) in items {
            let key = self.value(k, depth + 1)?;
            self.path.push(Step::Key(k));
            let value = self.value(v, depth + 1)?;
            self.path.pop();
            match index.find(&out, |(k, _)| k, &key) {
                Some(i) => out[i].1 = value,
                None => out.push((key, value)),
            }
        }
        Ok(out)
    }

    fn args(&mut self, call: &Call, depth: usize) -> Result<Vec<Value>> {
        let items = self.arena.tuple(call.args).unwrap_or(&[]);
        self.seq(items, depth)
    }

    fn call(&mut self, call: &Call, depth: usize) -> Result<Value> {
        // The calls of every tensor first, without comparing their globals' text (the general
        // match below treats them the same).
        match self.common(call.callable) {
            Common::OrderedDict => return self.dict_object("collections.OrderedDict", call, depth),
            Common::RebuildTensorV2 if self.plain_rebuild_v2(call, depth).is_some() => {
                return self.rebuild_plain_v2(call, depth)
            }
            _ => {}
        }
        let callee = match self.arena.global(call.callable) {
            Some((module, name)) => Callee::Global(module, name),
            None => Callee::Other(self.arena.kind_name(call.callable)),
        };
        let (module, name) = match callee {
            Callee::Global(m, n) => (m, n),
            Callee::Other(kind) => {
                return Err(Error::unsupported(format!(
                    "at '{}': a call whose callable is a {kind}, not a global",
                    self.here()
                )))
            }
        };
        match (module, name) {
            // One of these per tensor (its backward hooks) in every state dict: the class
            // name is static, no allocation.
            ("collections", "OrderedDict") => {
                self.dict_object("collections.OrderedDict", call, depth)
            }
            ("collections", "Counter") => self.dict_object("collections.Counter", call, depth),
            ("collections", "defaultdict") => {
                self.dict_object("collections.defaultdict", call, depth)
            }
            ("torch._utils", "_rebuild_tensor_v2")
                if self.plain_rebuild_v2(call, depth).is_some() =>
            {
                self.rebuild_plain_v2(call, depth)
            }
            (
                "torch._utils",
                "_rebuild_tensor_v2" | "_rebuild_tensor" | "_rebuild_tensor_v3"
                | "_rebuild_qtensor",
            ) => {
                let view = self.first_arg_view(call);
                let args = self.args(call, depth)?;
                self.rebuild_tensor(name, &args, view)
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                let args = self.args(call, depth)?;
                self.rebuild_parameter(name, args)
            }
            ("torch.nn.parameter", "Parameter") => {
                let args = self.args(call, depth)?;
                let mut it = args.into_iter();
                let tensor = it.next().unwrap_or(Value::None);
                let requires_grad = it.next().unwrap_or(Value::Bool(true));
                self.rebuild_parameter("Parameter", vec![tensor, requires_grad, Value::None])
            }
            ("torch._tensor", "_rebuild_from_type_v2") => self.rebuild_from_type(call, depth),
            ("torch._utils", "_rebuild_meta_tensor_no_storage") => {
                let args = self.args(call, depth)?;
                self.rebuild_meta(&args)
            }
            (
                "torch._utils",
                "_rebuild_sparse_tensor"
                | "_rebuild_nested_tensor"
                | "_rebuild_wrapper_subclass"
                | "_rebuild_device_tensor_from_numpy"
                | "_rebuild_device_tensor_from_cpu_tensor"
                | "_rebuild_xla_tensor",
            ) => Err(Error::unsupported(format!(
                "tensor '{}' is built by torch._utils.{name}, which ptload does not support yet",
                self.here()
            ))),
            ("torch", "Size") => {
                let args = self.args(call, depth)?;
                match args.into_iter().next() {
                    Some(Value::Tuple(dims)) | Some(Value::List(dims)) => Ok(Value::Tuple(dims)),
                    _ => Err(Error::invalid_tensor(format!(
                        "at '{}': torch.Size needs a tuple",
                        self.here()
                    ))),
                }
            }
            ("builtins", "set" | "frozenset") => {
                let args = self.args(call, depth)?;
                let items = match args.into_iter().next() {
                    Some(
                        Value::List(v) | Value::Tuple(v) | Value::Set(v) | Value::FrozenSet(v),
                    ) => v,
                    None => Vec::new(),
                    Some(other) => return Err(self.bad_args(module, name, &other)),
                };
                let items = distinct(items);
                Ok(if name == "set" {
                    Value::Set(items)
                } else {
                    Value::FrozenSet(items)
                })
            }
            ("builtins", "complex") => {
                let args = self.args(call, depth)?;
                let num = |v: Option<&Value>| match v {
                    Some(Value::Float(x)) => Some(*x),
                    Some(Value::Int(i)) => Some(*i as f64),
                    None => Some(0.0),
                    _ => None,
                };
                match (num(args.first()), num(args.get(1))) {
                    (Some(re), Some(im)) => Ok(Value::Complex(re, im)),
                    _ => Err(self.bad_args(module, name, &Value::Tuple(args))),
                }
            }
            ("builtins", "bytearray") => {
                let args = self.args(call, depth)?;
                match args.as_slice() {
                    [] => Ok(Value::ByteArray(Vec::new())),
                    [Value::Bytes(b)] | [Value::ByteArray(b)] => Ok(Value::ByteArray(b.clone())),
                    [Value::Str(s), Value::Str(enc)] => Ok(Value::ByteArray(self.encode(s, enc)?)),
                    _ => Err(self.bad_args(module, name, &Value::Tuple(args))),
                }
            }
            ("_codecs", "encode") => {
                let args = self.args(call, depth)?;
                match args.as_slice() {
                    [Value::Str(s)] => Ok(Value::Bytes(s.as_bytes().to_vec())),
                    [Value::Str(s), Value::Str(enc)] => Ok(Value::Bytes(self.encode(s, enc)?)),
                    _ => Err(self.bad_args(module, name, &Value::Tuple(args))),
                }
            }
            // TorchScript's typed containers: the value is the argument itself.
            (
                "torch.jit._pickle",
                "build_intlist" | "build_tensorlist" | "build_doublelist" | "build_boollist"
                | "restore_type_tag",
            ) => {
                let args = self.args(call, depth)?;
                match args.into_iter().next() {
                    Some(value) => Ok(value),
                    None => Err(self.bad_args(module, name, &Value::None)),
                }
            }
            ("torch.serialization", "_get_layout") => {
                let args = self.args(call, depth)?;
                match args.first() {
                    Some(Value::Str(s)) => Ok(Value::Global(s.to_string())),
                    _ => Err(self.bad_args(module, name, &Value::Tuple(args))),
                }
            }
            _ => self.object(format!("{module}.{name}"), call, depth),
        }
    }

    fn bad_args(&self, module: &str, name: &str, got: &Value) -> Error {
        Error::invalid_tensor(format!(
            "at '{}': unexpected arguments for {module}.{name}: {got}",
            self.here()
        ))
    }

    fn encode(&self, s: &str, encoding: &str) -> Result<Vec<u8>> {
        match encoding.to_ascii_lowercase().replace('_', "-").as_str() {
            "latin1" | "latin-1" | "iso-8859-1" => s
                .chars()
                .map(|c| u8::try_from(c as u32).ok())
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| {
                    Error::invalid_tensor(format!(
                        "at '{}': a latin-1 bytes literal holds a character above U+00FF",
                        self.here()
                    ))
                }),
            "utf-8" | "utf8" => Ok(s.as_bytes().to_vec()),
            other => Err(Error::unsupported(format!(
                "at '{}': bytes encoded as {other}",
                self.here()
            ))),
        }
    }

    /// `class` is `collections.` and one of `OrderedDict`, `Counter`, `defaultdict`.
    fn dict_object(&mut self, class: &'static str, call: &Call, depth: usize) -> Result<Value> {
        let (module, name) = class.split_once('.').unwrap_or(("", class));
        let args = self.args(call, depth)?;
        let mut items = Vec::new();
        match args.into_iter().next() {
            None | Some(Value::None) => {}
            Some(Value::Dict(d)) => items = d.items,
            Some(Value::List(pairs)) if name == "OrderedDict" => {
                for pair in pairs {
                    match pair {
                        Value::Tuple(mut kv) | Value::List(mut kv) if kv.len() == 2 => {
                            let v = kv.pop().unwrap_or(Value::None);
                            let k = kv.pop().unwrap_or(Value::None);
                            items.push((k, v));
                        }
                        other => return Err(self.bad_args(module, name, &other)),
                    }
                }
            }
            // defaultdict(factory): the factory is a global; keep nothing of it.
            Some(Value::Global(_)) if name == "defaultdict" => {}
            Some(other) => return Err(self.bad_args(module, name, &other)),
        }
        let set_items = self.pairs(&call.dict_items, depth)?;
        if items.is_empty() {
            items = set_items;
        } else {
            items.extend(set_items);
        }
        let mut attributes = Vec::new();
        for &state in &call.state {
            match self.value(state, depth + 1)? {
                Value::Dict(d) => {
                    attributes.reserve(d.items.len());
                    for (k, v) in d.items {
                        let name = match k {
                            Value::Str(name) => name.into_string(),
                            other => super::value::key_segment(&other),
                        };
                        attributes.push((name, v));
                    }
                }
                Value::None => {}
                other => attributes.push(("__state__".into(), other)),
            }
        }
        Ok(Value::Dict(Box::new(Dict {
            class: class.into(),
            items,
            attributes,
        })))
    }

    fn object(&mut self, class: String, call: &Call, depth: usize) -> Result<Value> {
        let args = self.args(call, depth)?;
        let state = match call.state.as_slice() {
            [] => None,
            [.., last] => Some(self.object_state(*last, depth)?),
        };
        let dict_items = self.pairs(&call.dict_items, depth)?;
        let list_items = self.seq(&call.list_items, depth)?;
        if let Some(kwargs) = call.kwargs {
            let _ = kwargs; // keyword arguments of NEWOBJ_EX are not kept
        }
        Ok(Value::Object(Box::new(Object {
            class,
            args,
            state,
            list_items,
            dict_items,
        })))
    }

    /// An object's `BUILD` state; its dict keys become path segments (attribute names).
    fn object_state(&mut self, state: NodeId, depth: usize) -> Result<Value> {
        self.value(state, depth + 1)
    }

    /// Whether `call` is `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
    /// backward_hooks)` exactly as torch.save writes it (a storage, a non-negative int, two
    /// tuples of non-negative ints of one rank within `max_rank`, a bool), within the depth and
    /// value limits, so that [`Interpreter::rebuild_plain_v2`] can read it straight from the
    /// nodes. Anything else takes the general path, which converts the arguments and reports.
    fn plain_rebuild_v2(&self, call: &Call, depth: usize) -> Option<()> {
        let arena = self.arena;
        let &[_, offset, size, stride, requires_grad, _] = arena.tuple(call.args)? else {
            return None;
        };
        self.first_arg_view(call)?;
        let natural = |id: NodeId| matches!(arena.get(id), Node::Int(n) if *n >= 0);
        let dims = |id: NodeId| {
            let items = arena.tuple(id)?;
            (items.len() <= self.limits.max_rank && items.iter().all(|&i| natural(i)))
                .then_some(items.len())
        };
        let rank = dims(size)?;
        let fits = natural(offset)
            && dims(stride)? == rank
            && matches!(arena.get(requires_grad), Node::Bool(_))
            && depth + 2 <= self.limits.max_depth
            && self.values + Self::plain_v2_values(rank) <= self.limits.max_values;
        fits.then_some(())
    }

    /// Whether `id` is `collections.OrderedDict()` with nothing added: it converts to one
    /// value, an empty dict, whatever the limits (depth aside, which the caller checked).
    fn is_empty_ordered_dict(&self, id: NodeId) -> bool {
        let Node::Call(call) = *self.arena.get(id) else {
            return false;
        };
        let call = self.arena.call(call);
        self.common(call.callable) == Common::OrderedDict
            && self
                .arena
                .tuple(call.args)
                .is_some_and(<[NodeId]>::is_empty)
            && call.kwargs.is_none()
            && call.state.is_empty()
            && call.list_items.is_empty()
            && call.dict_items.is_empty()
    }

    /// The values the general path counts for a plain `_rebuild_tensor_v2`'s first five
    /// arguments: one each, and one per dimension of size and stride.
    fn plain_v2_values(rank: usize) -> u64 {
        5 + 2 * rank as u64
    }

    /// A call [`Interpreter::plain_rebuild_v2`] accepted, as the general path would build it
    /// (same counts, same checks, same errors), without a `Value` per argument.
    fn rebuild_plain_v2(&mut self, call: &Call, depth: usize) -> Result<Value> {
        let arena = self.arena;
        let args = arena.tuple(call.args).unwrap_or_default();
        let (view, int) = (self.first_arg_view(call), |id: NodeId| {
            match arena.get(id) {
                Node::Int(n) => *n as u64,
                _ => 0,
            }
        });
        let dims = |id: NodeId| -> Dims {
            arena
                .tuple(id)
                .unwrap_or_default()
                .iter()
                .map(|&i| int(i))
                .collect()
        };
        let (shape, stride) = (dims(args[2]), dims(args[3]));
        self.values += Self::plain_v2_values(shape.len());
        // The backward hooks: torch writes an empty `OrderedDict()`, which converts to one value
        // and is then dropped; anything else converts as usual, for its checks.
        if self.is_empty_ordered_dict(args[5]) {
            self.count()?;
        } else {
            self.path.push(Step::Index(5));
            self.value(args[5], depth + 1)?;
            self.path.pop();
        }
        let view = view.ok_or_else(|| self.tensor_error("the first argument must be a storage"))?;
        let meta = TensorMeta {
            requires_grad: matches!(arena.get(args[4]), Node::Bool(true)),
            ..TensorMeta::view(Some(view.id), view.dtype, shape, stride, int(args[1]))
        };
        self.check_bounds(&meta, view.id)?;
        self.check_requires_grad(&meta, true)?;
        Ok(Value::Tensor(Box::new(meta)))
    }

    /// The storage view when a call's first argument is a persistent-id result: each reference
    /// carries the dtype its own storage type named.
    fn first_arg_view(&self, call: &Call) -> Option<StorageView> {
        let first = *self.arena.tuple(call.args)?.first()?;
        match self.arena.get(first) {
            Node::External(i) => match self.externals.get(*i as usize)? {
                External::Storage(view) => Some(*view),
                External::Tensor(_) => None,
            },
            _ => None,
        }
    }

    fn dims(&self, v: &Value, what: &str) -> Result<Dims> {
        let items = match v {
            Value::Tuple(items) | Value::List(items) => items,
            other => {
                return Err(
                    self.tensor_error(format!("{what} must be a tuple of ints, not {other}"))
                )
            }
        };
        if items.len() > self.limits.max_rank {
            return Err(
                Error::limit("max_rank", items.len() as u64, self.limits.max_rank as u64)
                    .for_tensor(self.path_text()),
            );
        }
        items
            .iter()
            .map(|item| match item {
                Value::Int(i) if *i >= 0 => Ok(*i as u64),
                Value::Int(i) => Err(self.tensor_error(format!("negative {what} {i} in {v}"))),
                other => Err(self.tensor_error(format!("{what} must hold ints, not {other}"))),
            })
            .collect()
    }

    fn rebuild_tensor(
        &self,
        name: &str,
        args: &[Value],
        view: Option<StorageView>,
    ) -> Result<Value> {
        let arity = match name {
            "_rebuild_tensor" => 4..=4,
            "_rebuild_tensor_v2" => 6..=7,
            "_rebuild_tensor_v3" => 7..=8,
            _ => 7..=7, // _rebuild_qtensor
        };
        if !arity.contains(&args.len()) {
            return Err(self.tensor_error(format!(
                "torch._utils.{name} takes {} arguments, got {}",
                if arity.start() == arity.end() {
                    arity.start().to_string()
                } else {
                    format!("{} or {}", arity.start(), arity.end())
                },
                args.len()
            )));
        }
        let view = view.ok_or_else(|| {
            self.tensor_error(format!(
                "the first argument must be a storage, not {}",
                args[0]
            ))
        })?;
        let dtype = if name == "_rebuild_tensor_v3" {
            match &args[6] {
                Value::Global(g) => g
                    .strip_prefix("torch.")
                    .and_then(Dtype::from_name)
                    .ok_or_else(|| self.tensor_error(format!("unknown dtype {g}")))?,
                other => {
                    return Err(
                        self.tensor_error(format!("dtype must be a torch dtype, not {other}"))
                    )
                }
            }
        } else {
            view.dtype
        };
        let offset = match &args[1] {
            Value::Int(i) if *i >= 0 => *i as u64,
            other => {
                return Err(self.tensor_error(format!(
                    "storage offset must be a non-negative int, not {other}"
                )))
            }
        };
        let shape = self.dims(&args[2], "size")?;
        let stride = self.dims(&args[3], "stride")?;
        if shape.len() != stride.len() {
            return Err(self.tensor_error(format!(
                "size has {} dimensions but stride has {}",
                shape.len(),
                stride.len()
            )));
        }
        let requires_grad = match name {
            "_rebuild_tensor" => false,
            "_rebuild_qtensor" => matches!(args[5], Value::Bool(true)),
            _ => matches!(args[4], Value::Bool(true)),
        };
        let metadata = match name {
            "_rebuild_tensor_v2" => args.get(6),
            "_rebuild_tensor_v3" => args.get(7),
            _ => None,
        };
        let flag = |key: &str| match metadata {
            Some(Value::Dict(d)) => matches!(d.get(key), Some(Value::Bool(true))),
            _ => false,
        };
        let quantizer = (name == "_rebuild_qtensor").then(|| Box::new(args[4].clone()));
        let meta = TensorMeta {
            requires_grad,
            conj: flag("conj"),
            neg: flag("neg"),
            quantizer,
            ..TensorMeta::view(Some(view.id), dtype, shape, stride, offset)
        };
        self.check_bounds(&meta, view.id)?;
        self.check_requires_grad(&meta, true)?;
        Ok(Value::Tensor(Box::new(meta)))
    }

    /// torch's `set_` check: the view's last element must lie inside the storage.
    fn check_bounds(&self, meta: &TensorMeta, id: StorageId) -> Result<()> {
        let storage_bytes = self.storages[id].nbytes().unwrap_or(u64::MAX);
        match view_bounds_error(meta, storage_bytes) {
            None => Ok(()),
            Some(message) => Err(self.tensor_error(message)),
        }
    }

    fn rebuild_parameter(&self, name: &str, args: Vec<Value>) -> Result<Value> {
        let mut it = args.into_iter();
        let tensor = it.next();
        let requires_grad = it.next();
        let _hooks = it.next();
        let state = it.next();
        let Some(Value::Tensor(mut meta)) = tensor else {
            return Err(self.tensor_error(format!("{name} needs a tensor as its first argument")));
        };
        meta.kind = TensorKind::Parameter;
        meta.requires_grad = matches!(requires_grad, Some(Value::Bool(true)));
        self.check_requires_grad(&meta, false)?;
        if let Some(state) = state.filter(|s| !is_empty_state(s)) {
            meta.attributes = Some(Box::new(state));
        }
        Ok(Value::Tensor(meta))
    }

    fn rebuild_from_type(&mut self, call: &Call, depth: usize) -> Result<Value> {
        let parts = self.arena.tuple(call.args).unwrap_or(&[]);
        let [func, new_type, args, state] = parts else {
            return Err(self.tensor_error(format!(
                "_rebuild_from_type_v2 takes 4 arguments, got {}",
                parts.len()
            )));
        };
        let inner = Call {
            callable: *func,
            args: *args,
            kwargs: None,
            kind: crate::pickle::CallKind::Reduce,
            state: Vec::new(),
            list_items: Vec::new(),
            dict_items: Vec::new(),
        };
        let mut value = self.call(&inner, depth)?;
        let state = self.value(*state, depth + 1)?;
        let new_type = self.value(*new_type, depth + 1)?;
        if let Value::Tensor(meta) = &mut value {
            let plain = matches!(&new_type, Value::Global(g) if g == "torch.Tensor" || g == "torch.nn.parameter.Parameter");
            if !is_empty_state(&state) {
                meta.attributes = Some(Box::new(state));
            }
            if !plain {
                let class = Value::Dict(Box::new(Dict {
                    class: "dict".into(),
                    items: vec![(Value::Str("__class__".into()), new_type)],
                    attributes: Vec::new(),
                }));
                meta.attributes.get_or_insert(Box::new(class));
            }
        }
        Ok(value)
    }

    fn rebuild_meta(&self, args: &[Value]) -> Result<Value> {
        let [dtype, size, stride, requires_grad] = args else {
            return Err(self.tensor_error("_rebuild_meta_tensor_no_storage takes 4 arguments"));
        };
        let dtype = match dtype {
            Value::Global(g) => g.strip_prefix("torch.").and_then(Dtype::from_name),
            _ => None,
        }
        .ok_or_else(|| self.tensor_error(format!("unknown dtype {dtype}")))?;
        let shape = self.dims(size, "size")?;
        let stride = self.dims(stride, "stride")?;
        if shape.len() != stride.len() {
            return Err(self.tensor_error("size and stride differ in length"));
        }
        let meta = TensorMeta {
            requires_grad: matches!(requires_grad, Value::Bool(true)),
            ..TensorMeta::view(None, dtype, shape, stride, 0)
        };
        self.check_requires_grad(&meta, false)?;
        Ok(Value::Tensor(Box::new(meta)))
    }
}

fn is_empty_state(state: &Value) -> bool {
    match state {
        Value::None => true,
        Value::Dict(d) => d.items.is_empty(),
        Value::Tuple(parts) => parts.iter().all(is_empty_state),
        _ => false,
    }
}

/// torch's `set_` check for a view over a storage of `storage_bytes` bytes: `None` when the view
/// lies inside it, else torch's message. All arithmetic is checked.
pub fn view_bounds_error(meta: &TensorMeta, storage_bytes: u64) -> Option<String> {
    let itemsize = meta.dtype.element_size() as u64;
    let mut numel: u64 = 1;
    for &s in &meta.shape {
        match numel.checked_mul(s) {
            Some(n) => numel = n,
            None => {
                return Some(format!(
                    "the element count of size {:?} overflows",
                    meta.shape
                ))
            }
        }
    }
    let required = if numel == 0 {
        Some(0)
    } else {
        meta.shape
            .iter()
            .zip(&meta.stride)
            .try_fold(
                meta.storage_offset.checked_add(1),
                |acc, (&size, &stride)| Some(acc?.checked_add((size - 1).checked_mul(stride)?)),
            )
            .flatten()
            .and_then(|elements| elements.checked_mul(itemsize))
    };
    match required {
        Some(bytes) if bytes <= storage_bytes => None,
        _ => Some(format!(
            "setStorage: sizes {:?}, strides {:?}, storage offset {}, and itemsize {itemsize} requiring a storage size of {} are out of bounds for storage of size {storage_bytes}",
            meta.shape,
            meta.stride,
            meta.storage_offset,
            required.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_globals_are_told_apart_by_module_and_name() {
        assert_eq!(
            Common::of("collections", "OrderedDict"),
            Common::OrderedDict
        );
        assert_eq!(
            Common::of("torch._utils", "_rebuild_tensor_v2"),
            Common::RebuildTensorV2
        );
        for (module, name) in [
            ("collections", "Counter"),
            ("torch._utils", "_rebuild_tensor"),
            ("torch._utils", "OrderedDict"),
            ("collections", "_rebuild_tensor_v2"),
        ] {
            assert_eq!(Common::of(module, name), Common::Other, "{module}.{name}");
        }
    }

    #[test]
    fn a_short_str_is_kept_inline_and_a_long_one_whole() {
        // {'layer1.0.conv1.weight': 'x' * 40}, protocol 2.
        let long = "x".repeat(40);
        let mut pickle =
            b"\x80\x02}X\x15\x00\x00\x00layer1.0.conv1.weightX\x28\x00\x00\x00".to_vec();
        pickle.extend_from_slice(long.as_bytes());
        pickle.extend_from_slice(b"s.");
        let options = crate::Loader::new().pickle_options();
        let parsed = crate::torch::parse_pickle(&pickle, "data.pkl", &options).unwrap();
        let Value::Dict(d) = &parsed.root else {
            panic!("not a dict: {:?}", parsed.root)
        };
        let [(Value::Str(key), Value::Str(value))] = &d.items[..] else {
            panic!("not one str pair: {:?}", d.items)
        };
        assert_eq!(
            (key.as_str(), value.as_str()),
            ("layer1.0.conv1.weight", &*long)
        );
        // A key of up to 24 bytes costs no allocation of its own.
        assert!(!key.is_heap_allocated());
        assert!(value.is_heap_allocated());
    }

    /// A hasher under which every key has one hash: every lookup past the scanned few is a
    /// collision.
    #[derive(Default)]
    struct OneHash;

    impl std::hash::BuildHasher for OneHash {
        type Hasher = OneHasher;
        fn build_hasher(&self) -> OneHasher {
            OneHasher
        }
    }

    struct OneHasher;

    impl std::hash::Hasher for OneHasher {
        fn finish(&self) -> u64 {
            7
        }
        fn write(&mut self, _: &[u8]) {}
    }

    #[test]
    fn keys_with_one_hash_are_still_told_apart() {
        let mut index = EqualIndex::<OneHash>::default();
        let mut kept: Vec<Value> = Vec::new();
        for i in 0..20 {
            // Each new key is found in none of the kept ones, then found where it was kept.
            let key = Value::Int(i);
            assert_eq!(index.find(&kept, |v| v, &key), None, "{i}");
            kept.push(key);
            for (at, earlier) in kept.iter().enumerate() {
                assert_eq!(index.find(&kept, |v| v, earlier), Some(at), "{i}");
            }
        }
        assert_eq!(index.find(&kept, |v| v, &Value::Float(5.0)), Some(5));
        assert_eq!(index.find(&kept, |v| v, &Value::Bool(true)), Some(1));
    }
}
