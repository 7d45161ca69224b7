//! The checkpoint tree: plain values, tensors (metadata only) and inert objects.
//!
//! A [`Value`] is what `torch.load` would have returned, minus behaviour: dicts keep insertion
//! order and any key, tensors are [`TensorMeta`] pointing at a storage by [`StorageId`], and
//! anything torch would have constructed from an unknown class is an [`Object`] holding what
//! the pickle said (class name, arguments, state), never run.

use std::fmt;

use super::Dtype;

/// Index of a storage in its checkpoint.
pub type StorageId = usize;

/// Whether a tensor was saved as a plain tensor or an `nn.Parameter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// `torch.Tensor`
    Tensor,
    /// `torch.nn.Parameter`
    Parameter,
}

/// A shape or a stride: up to four dimensions inline (no allocation of their own), more on the
/// heap. It derefs to `[u64]`; build one from a `Vec<u64>`, a slice or an iterator
/// (`Dims::from_slice(&[2, 3])`, `vec.into()`, `iter.collect()`).
pub type Dims = smallvec::SmallVec<[u64; 4]>;

/// Everything about a tensor except its bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMeta {
    /// The storage it views; `None` for meta tensors saved without storage.
    pub storage: Option<StorageId>,
    /// Element type.
    pub dtype: Dtype,
    /// Size of each dimension.
    pub shape: Dims,
    /// Stride of each dimension, in elements.
    pub stride: Dims,
    /// Offset of the first element in the storage, in elements of `dtype`.
    pub storage_offset: u64,
    /// `requires_grad` as saved.
    pub requires_grad: bool,
    /// The conjugate bit: the logical value is the complex conjugate of the stored one.
    pub conj: bool,
    /// The negative bit: the logical value is the negation of the stored one.
    pub neg: bool,
    /// Tensor or Parameter.
    pub kind: TensorKind,
    /// For quantized tensors, the quantizer parameters as saved (`(qscheme, scale, zero_point)`
    /// or `(qscheme, scales, zero_points, axis)`).
    pub quantizer: Option<Box<Value>>,
    /// Python attributes saved with the tensor (`_rebuild_from_type_v2` / parameter state).
    pub attributes: Option<Box<Value>>,
}

impl TensorMeta {
    /// A plain tensor view (no grad, no conj/neg bits, no quantizer or attributes).
    pub fn view(
        storage: Option<StorageId>,
        dtype: Dtype,
        shape: impl Into<Dims>,
        stride: impl Into<Dims>,
        storage_offset: u64,
    ) -> Self {
        TensorMeta {
            storage,
            dtype,
            shape: shape.into(),
            stride: stride.into(),
            storage_offset,
            requires_grad: false,
            conj: false,
            neg: false,
            kind: TensorKind::Tensor,
            quantizer: None,
            attributes: None,
        }
    }

    /// Number of elements (the product of the shape; 1 for a scalar).
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Whether the elements lie in C order without gaps (dimensions of size 1 are ignored).
    pub fn is_contiguous(&self) -> bool {
        if self.shape.contains(&0) {
            return true;
        }
        let mut expected = 1u64;
        for (&size, &stride) in self.shape.iter().zip(&self.stride).rev() {
            if size == 1 {
                continue;
            }
            if stride != expected {
                return false;
            }
            expected *= size;
        }
        true
    }
}

/// A Python `str` in a tree ([`Value::Str`]): up to 24 bytes of text are kept inline, with no
/// allocation of their own (every state_dict key torch writes for common models fits); longer
/// text is on the heap. It derefs to `str`.
pub type Text = compact_str::CompactString;

/// A value of the checkpoint tree.
///
/// Walks over a tree ([`Value::children`] with an explicit stack, `Display`,
/// [`Value::shift_storage_ids`]) never recurse, and [`crate::Checkpoint`] and [`crate::Plan`]
/// drop their trees without recursion. The derived `Clone`, `Debug`, `PartialEq` and `Drop`
/// do recurse, once per level: on a tree you moved out of a checkpoint that may be deeper than
/// the thread's stack allows (only with raised [`crate::Limits::max_depth`]), call
/// [`Value::dismantle`] before dropping it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`
    None,
    /// `bool`
    Bool(bool),
    /// An `int` within 64 bits.
    Int(i64),
    /// A larger `int`, as decimal text.
    BigInt(String),
    /// `float`
    Float(f64),
    /// `complex`
    Complex(f64, f64),
    /// `str`
    Str(Text),
    /// `bytes`
    Bytes(Vec<u8>),
    /// `bytearray`
    ByteArray(Vec<u8>),
    /// `list`
    List(Vec<Value>),
    /// `tuple` (also `torch.Size`)
    Tuple(Vec<Value>),
    /// `dict`, `OrderedDict`, `Counter`, …
    Dict(Box<Dict>),
    /// `set`
    Set(Vec<Value>),
    /// `frozenset`
    FrozenSet(Vec<Value>),
    /// A tensor.
    Tensor(Box<TensorMeta>),
    /// A storage saved on its own (`torch.save(t.untyped_storage())`).
    Storage(StorageId),
    /// An instance of a class ptload does not interpret, kept inert.
    Object(Box<Object>),
    /// A global name (a dtype such as `torch.float32`, a class, a function), as `module.name`.
    Global(String),
}

/// A dict with insertion order and, for `OrderedDict`, attributes set on it (`_metadata`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dict {
    /// The class: `dict`, `collections.OrderedDict`, `collections.Counter`, …
    pub class: std::borrow::Cow<'static, str>,
    /// Items in insertion order.
    pub items: Vec<(Value, Value)>,
    /// Attributes (e.g. `_metadata` on a `state_dict()`), in the order set.
    pub attributes: Vec<(String, Value)>,
}

impl Dict {
    /// The value for a `str` key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.items
            .iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
            .map(|(_, v)| v)
    }
}

/// An inert instance: what the pickle said about it, nothing executed.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// `module.name` of its class or factory (`argparse.Namespace`, `__main__.Net`).
    pub class: String,
    /// The arguments of the call that made it.
    pub args: Vec<Value>,
    /// The state given to `BUILD` (usually the instance `__dict__`), or `None`.
    pub state: Option<Value>,
    /// Items appended to it (it acted as a list).
    pub list_items: Vec<Value>,
    /// Items set on it (it acted as a dict).
    pub dict_items: Vec<(Value, Value)>,
}

impl Value {
    /// The text of a `str` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The tensor metadata of a tensor value.
    pub fn as_tensor(&self) -> Option<&TensorMeta> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The value at a `.`-joined path (dict keys, list/tuple indices, object attributes).
    pub fn get_path(&self, path: &str) -> Option<&Value> {
        if path.is_empty() {
            return Some(self);
        }
        let mut current = self;
        for segment in path.split('.') {
            current = current
                .children()
                .find(|(s, _)| s == segment)
                .map(|(_, v)| v)?;
        }
        Some(current)
    }

    /// Adds `offset` to every storage id in the tree (to merge the storages of two pickles).
    pub fn shift_storage_ids(&mut self, offset: StorageId) {
        // An explicit stack: a tree of any depth, on any thread.
        let mut stack: Vec<&mut Value> = vec![self];
        while let Some(value) = stack.pop() {
            match value {
                Value::Tensor(t) => {
                    if let Some(id) = &mut t.storage {
                        *id += offset;
                    }
                }
                Value::Storage(id) => *id += offset,
                Value::List(items)
                | Value::Tuple(items)
                | Value::Set(items)
                | Value::FrozenSet(items) => stack.extend(items.iter_mut()),
                Value::Dict(d) => {
                    for (k, v) in &mut d.items {
                        stack.push(k);
                        stack.push(v);
                    }
                    stack.extend(d.attributes.iter_mut().map(|(_, v)| v));
                }
                Value::Object(o) => {
                    stack.extend(o.args.iter_mut());
                    stack.extend(o.state.as_mut());
                    stack.extend(o.list_items.iter_mut());
                    for (k, v) in &mut o.dict_items {
                        stack.push(k);
                        stack.push(v);
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether [`Value::children`] may yield anything (lists, tuples, sets, dicts, objects).
    pub fn has_children(&self) -> bool {
        matches!(
            self,
            Value::List(_)
                | Value::Tuple(_)
                | Value::Set(_)
                | Value::FrozenSet(_)
                | Value::Dict(_)
                | Value::Object(_)
        )
    }

    /// The `i`-th child in [`Value::children`]'s order, without building its path segment.
    pub fn child_at(&self, i: usize) -> Option<&Value> {
        match self {
            Value::List(items)
            | Value::Tuple(items)
            | Value::Set(items)
            | Value::FrozenSet(items) => items.get(i),
            Value::Dict(d) => d.items.get(i).map(|(_, v)| v),
            Value::Object(o) => {
                let mut i = i;
                let state_dicts: &[Value] = match &o.state {
                    Some(v @ Value::Dict(_)) => std::slice::from_ref(v),
                    Some(Value::Tuple(parts)) => parts,
                    _ => &[],
                };
                for part in state_dicts {
                    if let Value::Dict(d) = part {
                        match d.items.get(i) {
                            Some((_, v)) => return Some(v),
                            None => i -= d.items.len(),
                        }
                    }
                }
                match o.dict_items.get(i) {
                    Some((_, v)) => Some(v),
                    None => o.list_items.get(i - o.dict_items.len()),
                }
            }
            _ => None,
        }
    }

    /// Empties the tree without recursion, so that dropping a tree of any depth cannot
    /// overflow the stack (the derived drop recurses once per level). Leaves `Value::None`.
    pub fn dismantle(&mut self) {
        // Values that hold no other value (a key, a plain tensor) are dropped at once; only
        // the others wait on the stack to be emptied.
        fn sink(stack: &mut Vec<Value>, value: Value) {
            if value.holds_values() {
                stack.push(value);
            }
        }
        let mut stack = vec![std::mem::replace(self, Value::None)];
        while let Some(mut value) = stack.pop() {
            match &mut value {
                Value::List(items)
                | Value::Tuple(items)
                | Value::Set(items)
                | Value::FrozenSet(items) => {
                    for item in items.drain(..) {
                        sink(&mut stack, item);
                    }
                }
                Value::Dict(d) => {
                    for (k, v) in d.items.drain(..) {
                        sink(&mut stack, k);
                        sink(&mut stack, v);
                    }
                    for (_, v) in d.attributes.drain(..) {
                        sink(&mut stack, v);
                    }
                }
                Value::Tensor(t) => {
                    stack.extend(t.quantizer.take().map(|q| *q));
                    stack.extend(t.attributes.take().map(|a| *a));
                }
                Value::Object(o) => {
                    stack.append(&mut o.args);
                    stack.extend(o.state.take());
                    stack.append(&mut o.list_items);
                    for (k, v) in o.dict_items.drain(..) {
                        stack.push(k);
                        stack.push(v);
                    }
                }
                _ => {}
            }
            // `value` has no children left: dropping it recurses no further.
        }
    }

    /// Whether dropping it drops other values (a container, an object, a tensor with
    /// quantizer parameters or attributes).
    fn holds_values(&self) -> bool {
        match self {
            Value::List(_)
            | Value::Tuple(_)
            | Value::Set(_)
            | Value::FrozenSet(_)
            | Value::Dict(_)
            | Value::Object(_) => true,
            Value::Tensor(t) => t.quantizer.is_some() || t.attributes.is_some(),
            _ => false,
        }
    }

    /// Direct children with their path segments, in file order.
    pub fn children(&self) -> Box<dyn Iterator<Item = (String, &Value)> + '_> {
        Box::new(
            self.child_entries()
                .map(|(segment, child)| (segment.to_string(), child)),
        )
    }

    /// [`Value::children`] with each path segment not yet rendered (no allocation per child).
    pub(crate) fn child_entries(&self) -> Box<dyn Iterator<Item = (Segment<'_>, &Value)> + '_> {
        fn keyed(items: &[(Value, Value)]) -> impl Iterator<Item = (Segment<'_>, &Value)> {
            items.iter().map(|(k, v)| (Segment::Key(k), v))
        }
        fn indexed(items: &[Value]) -> impl Iterator<Item = (Segment<'_>, &Value)> {
            items
                .iter()
                .enumerate()
                .map(|(i, v)| (Segment::Index(i), v))
        }
        match self {
            Value::List(items)
            | Value::Tuple(items)
            | Value::Set(items)
            | Value::FrozenSet(items) => Box::new(indexed(items)),
            Value::Dict(d) => Box::new(keyed(&d.items)),
            Value::Object(o) => {
                let state: Box<dyn Iterator<Item = (Segment<'_>, &Value)>> = match &o.state {
                    Some(Value::Dict(d)) => Box::new(keyed(&d.items)),
                    // (dict, slots) state, as Python's default __reduce_ex__ writes it.
                    Some(Value::Tuple(parts)) => Box::new(parts.iter().flat_map(|p| {
                        let items: &[(Value, Value)] = match p {
                            Value::Dict(d) => &d.items,
                            _ => &[],
                        };
                        keyed(items)
                    })),
                    _ => Box::new(std::iter::empty()),
                };
                Box::new(
                    state
                        .chain(keyed(&o.dict_items))
                        .chain(indexed(&o.list_items)),
                )
            }
            _ => Box::new(std::iter::empty()),
        }
    }
}

/// Where a child sits in its parent ([`Value::child_entries`]): rendered, the path segment of
/// [`Value::children`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Segment<'v> {
    /// The `i`-th item of a sequence (or of the items appended to an object).
    Index(usize),
    /// The value under a dict key (or an attribute's name).
    Key(&'v Value),
}

impl Segment<'_> {
    /// Appends the rendered segment to `out` (a str key without the formatting machinery).
    pub(crate) fn push_to(self, out: &mut String) {
        match self {
            Segment::Key(Value::Str(s)) => out.push_str(s),
            other => {
                use fmt::Write;
                let _ = write!(out, "{other}");
            }
        }
    }
}

impl fmt::Display for Segment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Segment::Index(i) => write!(f, "{i}"),
            Segment::Key(Value::Str(s)) => f.write_str(s),
            Segment::Key(Value::Int(i)) => write!(f, "{i}"),
            Segment::Key(Value::BigInt(s)) => f.write_str(s),
            Segment::Key(Value::Bool(true)) => f.write_str("True"),
            Segment::Key(Value::Bool(false)) => f.write_str("False"),
            Segment::Key(Value::None) => f.write_str("None"),
            Segment::Key(other) => write!(f, "{other}"),
        }
    }
}

/// The path segment for a dict key: str as is, ints in decimal, bools as Python prints them.
pub fn key_segment(key: &Value) -> String {
    Segment::Key(key).to_string()
}

impl fmt::Display for Value {
    /// A short Python-like rendering (tensors and objects abbreviated). Written with an explicit
    /// stack: a value of any depth displays on any thread.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Text still to write: punctuation, or a value.
        enum Part<'v> {
            Text(&'static str),
            Value(&'v Value),
        }
        fn seq<'v>(
            parts: &mut Vec<Part<'v>>,
            open: &'static str,
            items: &'v [Value],
            close: &'static str,
        ) {
            parts.push(Part::Text(open));
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    parts.push(Part::Text(", "));
                }
                parts.push(Part::Value(v));
            }
            if open == "(" && items.len() == 1 {
                parts.push(Part::Text(","));
            }
            parts.push(Part::Text(close));
        }
        let mut stack = vec![Part::Value(self)];
        let mut next = Vec::new();
        while let Some(part) = stack.pop() {
            let value = match part {
                Part::Text(text) => {
                    f.write_str(text)?;
                    continue;
                }
                Part::Value(value) => value,
            };
            match value {
                Value::None => f.write_str("None")?,
                Value::Bool(b) => f.write_str(if *b { "True" } else { "False" })?,
                Value::Int(i) => write!(f, "{i}")?,
                Value::BigInt(s) => f.write_str(s)?,
                // Python's repr (`1e-05`, `1e+16`, `2.0`), as the JSON tree writes it.
                Value::Float(x) => f.write_str(&super::json::float_repr(*x))?,
                Value::Complex(re, im) => write!(f, "({re}{im:+}j)")?,
                Value::Str(s) => write!(f, "{s:?}")?,
                Value::Bytes(b) => write!(f, "b{:?}", String::from_utf8_lossy(b))?,
                Value::ByteArray(b) => write!(f, "bytearray(b{:?})", String::from_utf8_lossy(b))?,
                Value::List(items) => seq(&mut next, "[", items, "]"),
                Value::Tuple(items) => seq(&mut next, "(", items, ")"),
                Value::Set(items) => seq(&mut next, "{", items, "}"),
                Value::FrozenSet(items) => seq(&mut next, "frozenset({", items, "})"),
                Value::Dict(d) => {
                    next.push(Part::Text("{"));
                    for (i, (k, v)) in d.items.iter().enumerate() {
                        if i > 0 {
                            next.push(Part::Text(", "));
                        }
                        next.push(Part::Value(k));
                        next.push(Part::Text(": "));
                        next.push(Part::Value(v));
                    }
                    next.push(Part::Text("}"));
                }
                Value::Tensor(t) => write!(f, "tensor({} {:?})", t.dtype, t.shape)?,
                Value::Storage(id) => write!(f, "storage#{id}")?,
                Value::Object(o) => write!(f, "<{} object>", o.class)?,
                Value::Global(name) => f.write_str(name)?,
            }
            stack.extend(next.drain(..).rev());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(shape: &[u64], stride: &[u64]) -> TensorMeta {
        TensorMeta::view(Some(0), Dtype::Float32, shape.to_vec(), stride.to_vec(), 0)
    }

    #[test]
    fn contiguity() {
        assert!(meta(&[2, 3], &[3, 1]).is_contiguous());
        assert!(!meta(&[2, 3], &[1, 2]).is_contiguous());
        assert!(meta(&[], &[]).is_contiguous());
        assert!(meta(&[1, 3], &[99, 1]).is_contiguous());
        assert!(!meta(&[4, 3], &[0, 1]).is_contiguous());
        assert!(meta(&[0, 3], &[0, 7]).is_contiguous());
    }

    #[test]
    fn values_stay_small() {
        // The tree budget (Limits::max_values) assumes about 32 bytes a value.
        assert!(
            std::mem::size_of::<Value>() <= 32,
            "{}",
            std::mem::size_of::<Value>()
        );
    }

    #[test]
    fn paths_and_display() {
        let v = Value::Dict(Box::new(Dict {
            class: "dict".into(),
            items: vec![
                (
                    Value::Int(3),
                    Value::List(vec![Value::None, Value::Float(1.0)]),
                ),
                (
                    Value::Str("a".into()),
                    Value::Tuple(vec![Value::Bool(true)]),
                ),
            ],
            attributes: vec![],
        }));
        assert_eq!(v.get_path("3.1"), Some(&Value::Float(1.0)));
        assert_eq!(v.child_at(1), Some(&Value::Tuple(vec![Value::Bool(true)])));
        assert_eq!(v.to_string(), "{3: [None, 1.0], \"a\": (True,)}");
    }

    #[test]
    fn child_at_follows_children_order() {
        let d = |k: &str| {
            Value::Dict(Box::new(Dict {
                class: "dict".into(),
                items: vec![(Value::Str(k.into()), Value::Int(k.len() as i64))],
                attributes: vec![],
            }))
        };
        for state in [
            None,
            Some(d("s")),
            Some(Value::Tuple(vec![d("a"), Value::None, d("bb")])),
        ] {
            let o = Value::Object(Box::new(Object {
                class: "m.C".into(),
                args: vec![Value::Int(9)],
                state,
                list_items: vec![Value::Str("l".into())],
                dict_items: vec![(Value::Str("k".into()), Value::Float(2.0))],
            }));
            let n = o.children().count();
            for (i, (_, child)) in o.children().enumerate() {
                assert_eq!(o.child_at(i), Some(child), "{o:?} {i}");
            }
            assert_eq!(o.child_at(n), None);
        }
    }

    #[test]
    fn floats_display_as_python_reprs_them() {
        // Python 3.11's repr of each.
        for (x, want) in [
            (0.25, "0.25"),
            (2.0, "2.0"),
            (1e16, "1e+16"),
            (1e-5, "1e-05"),
            (-0.0, "-0.0"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            assert_eq!(Value::Float(x).to_string(), want);
        }
    }

    #[test]
    fn deep_dicts_objects_and_tensor_attributes_are_dismantled_without_recursion() {
        const DEPTH: usize = 200_000;
        let dict = |v: Value| {
            Value::Dict(Box::new(Dict {
                class: "dict".into(),
                items: vec![(Value::Int(0), v)],
                attributes: vec![],
            }))
        };
        let object = |v: Value| {
            Value::Object(Box::new(Object {
                class: "m.C".into(),
                args: vec![v],
                state: None,
                list_items: vec![],
                dict_items: vec![],
            }))
        };
        let with_attributes = |v: Value| {
            let mut m = meta(&[1], &[1]);
            m.attributes = Some(Box::new(v));
            Value::List(vec![Value::Tensor(Box::new(m))])
        };
        let wraps: [&dyn Fn(Value) -> Value; 3] = [&dict, &object, &with_attributes];
        for wrap in wraps {
            let mut v = Value::None;
            for _ in 0..DEPTH {
                v = wrap(v);
            }
            // On a 2 MiB stack: the derived drop of any of these would overflow it.
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || {
                    v.dismantle();
                    assert_eq!(v, Value::None);
                })
                .unwrap()
                .join()
                .unwrap();
        }
    }

    #[test]
    fn shifting_reaches_every_storage_id() {
        let t = |id| {
            let mut m = meta(&[1], &[1]);
            m.storage = Some(id);
            Value::Tensor(Box::new(m))
        };
        let mut v = Value::Tuple(vec![
            Value::Storage(0),
            Value::Set(vec![t(1)]),
            Value::Dict(Box::new(Dict {
                class: "dict".into(),
                items: vec![(Value::Storage(2), t(3))],
                attributes: vec![("_metadata".into(), Value::Storage(4))],
            })),
            Value::Object(Box::new(Object {
                class: "m.C".into(),
                args: vec![t(5)],
                state: Some(Value::Storage(6)),
                list_items: vec![t(7)],
                dict_items: vec![(Value::Storage(8), t(9))],
            })),
            Value::FrozenSet(vec![Value::List(vec![Value::Storage(10)])]),
        ]);
        v.shift_storage_ids(100);
        let mut ids = Vec::new();
        let mut stack = vec![&v];
        while let Some(value) = stack.pop() {
            match value {
                Value::Storage(id) => ids.push(*id),
                Value::Tensor(m) => ids.push(m.storage.unwrap()),
                Value::List(items)
                | Value::Tuple(items)
                | Value::Set(items)
                | Value::FrozenSet(items) => stack.extend(items),
                Value::Dict(d) => {
                    stack.extend(d.items.iter().flat_map(|(k, v)| [k, v]));
                    stack.extend(d.attributes.iter().map(|(_, v)| v));
                }
                Value::Object(o) => {
                    stack.extend(&o.args);
                    stack.extend(o.state.as_ref());
                    stack.extend(&o.list_items);
                    stack.extend(o.dict_items.iter().flat_map(|(k, v)| [k, v]));
                }
                _ => {}
            }
        }
        ids.sort();
        assert_eq!(ids, (100..111).collect::<Vec<_>>());
    }

    #[test]
    fn deep_trees_are_dismantled_and_shifted_without_recursion() {
        let mut v = Value::Tensor(Box::new(meta(&[1], &[1])));
        for _ in 0..200_000 {
            v = Value::List(vec![v]);
        }
        v.shift_storage_ids(3);
        let mut inner = &v;
        while let Value::List(items) = inner {
            inner = &items[0];
        }
        let shifted = inner.as_tensor().and_then(|t| t.storage);
        let text = v.to_string();
        let want = format!(
            "{}tensor(float32 [1]){}",
            "[".repeat(200_000),
            "]".repeat(200_000)
        );
        v.dismantle(); // before any assertion: unwinding would drop the tree recursively
        assert!(text == want, "{} bytes", text.len());
        assert_eq!(shifted, Some(3));
        assert_eq!(v, Value::None);
    }
}
