//! The checkpoint tree as plain JS values (DESIGN.md, "JS (npm package)").
//!
//! | [`Value`] | JS |
//! |---|---|
//! | `None` | `null` |
//! | `Bool`, `Float`, `Str` | boolean, number, string |
//! | `Int` | number when within ±(2⁵³ − 1), else `BigInt` (so is `BigInt`) |
//! | `Bytes`, `ByteArray` | `Uint8Array` (a copy) |
//! | `List`, `Tuple` | `Array` |
//! | `Set`, `FrozenSet` | `Set` |
//! | `Dict` with only `str` keys | a plain object (items in file order); attributes such as an `OrderedDict`'s `_metadata` are non-enumerable properties |
//! | other `Dict` | `Map` (attributes as non-enumerable properties) |
//! | `Tensor` | what the JS wrapper's `tensor(meta)` factory returns: one object per distinct tensor (equal metadata: the same tensor saved at two paths), shared by `root` and `tensors()` |
//! | `Storage` | what the `storage(id)` factory returns |
//! | `Object` | `{ __class__, args, state }` (plus `listItems` / `dictItems` when it acted as a list or dict); nothing is run |
//! | `Complex` | `{ __class__: "builtins.complex", args: [re, im], state: null }` |
//! | `Global` | `{ __global__: "module.name" }` (e.g. a saved `torch.float32`) |

use std::collections::HashMap;

use js_sys::{Array, BigInt, Function, Map, Object, Reflect, Set, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};

use crate::torch::json::JsonText;
use crate::torch::layout::element_span;
use crate::torch::{Dict, TensorKind, TensorMeta, Value};

/// Largest integer a JS number holds exactly.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Where a tensor's elements start: its storage and its offset in it.
type ViewStart = (Option<usize>, u64);

/// Builds JS values for a tree, creating one JS tensor per distinct [`TensorMeta`], so that
/// `tensors()` hands out the same objects as `root`, and a tensor the pickle reached twice
/// (memoized, hence cloned in the tree) is one JS object.
pub(crate) struct Converter<'f> {
    make_tensor: &'f Function,
    make_storage: &'f Function,
    /// Tensors made so far, by storage and offset, then compared whole.
    tensors: HashMap<ViewStart, Vec<(TensorMeta, JsValue)>>,
}

/// `Reflect.set` on a fresh object cannot fail; a failure would be a bug, not bad input.
fn set(target: &JsValue, key: &str, value: &JsValue) -> Result<(), JsValue> {
    Reflect::set(target, &JsValue::from_str(key), value).map(|_| ())
}

/// Defines an own property: plain data for items (`__proto__` included, which `set` would
/// treat as the prototype), non-enumerable for attributes.
fn define(target: &Object, key: &str, value: &JsValue, enumerable: bool) -> Result<(), JsValue> {
    let descriptor = Object::new();
    set(&descriptor, "value", value)?;
    set(&descriptor, "writable", &JsValue::TRUE)?;
    set(&descriptor, "configurable", &JsValue::TRUE)?;
    set(&descriptor, "enumerable", &JsValue::from_bool(enumerable))?;
    Reflect::define_property(target, &JsValue::from_str(key), &descriptor).map(|_| ())
}

/// Whether every key of `dict` is a `str` (it becomes a plain object, else a `Map`).
fn string_keys(dict: &Dict) -> bool {
    dict.items.iter().all(|(k, _)| matches!(k, Value::Str(_)))
}

/// A JS number or BigInt for an `i64`.
pub(crate) fn int(i: i64) -> JsValue {
    if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i) {
        JsValue::from_f64(i as f64)
    } else {
        JsValue::from(i)
    }
}

/// A JS array of numbers for shapes, strides (u64, exact below 2⁵³, as every real size is).
pub(crate) fn numbers(values: &[u64]) -> Array {
    values
        .iter()
        .map(|&v| JsValue::from_f64(v as f64))
        .collect()
}

/// A node of the tree being converted: a value, or a tensor's metadata.
#[derive(Clone, Copy)]
enum Node<'v> {
    Value(&'v Value),
    Tensor(&'v TensorMeta),
}

/// A container being converted: its children in conversion order, and their JS values so far.
struct Frame<'v> {
    node: Node<'v>,
    parts: Vec<&'v Value>,
    done: Vec<JsValue>,
    /// For a dict: which attributes become properties (a name an item or an earlier
    /// attribute holds, or a property every object inherits, is skipped).
    attributes: Vec<bool>,
}

impl<'f> Converter<'f> {
    pub(crate) fn new(make_tensor: &'f Function, make_storage: &'f Function) -> Self {
        Converter {
            make_tensor,
            make_storage,
            tensors: HashMap::new(),
        }
    }

    /// The JS value of `value`.
    pub(crate) fn value(&mut self, value: &Value) -> Result<JsValue, JsValue> {
        self.run(Node::Value(value))
    }

    /// The JS tensor for `meta`, made on first sight.
    pub(crate) fn tensor(&mut self, meta: &TensorMeta) -> Result<JsValue, JsValue> {
        self.run(Node::Tensor(meta))
    }

    /// Converts a tree depth-first with a stack of its own, so that the depth of the tree
    /// costs heap, never the (small, unguarded) wasm stack: each container is made once all
    /// its children are, in the order the children appear.
    fn run(&mut self, node: Node<'_>) -> Result<JsValue, JsValue> {
        let mut stack: Vec<Frame<'_>> = Vec::new();
        let mut made = self.enter(node, &mut stack)?;
        loop {
            if let Some(value) = made.take() {
                match stack.last_mut() {
                    None => return Ok(value),
                    Some(top) => top.done.push(value),
                }
            }
            let Some(top) = stack.last() else {
                return Ok(JsValue::UNDEFINED);
            };
            if let Some(&child) = top.parts.get(top.done.len()) {
                made = self.enter(Node::Value(child), &mut stack)?;
            } else if let Some(frame) = stack.pop() {
                made = Some(self.assemble(frame)?);
            }
        }
    }

    /// A leaf's JS value, or `None` after pushing the frame of a container (or of a tensor
    /// with values to convert) onto `stack`.
    fn enter<'v>(
        &mut self,
        node: Node<'v>,
        stack: &mut Vec<Frame<'v>>,
    ) -> Result<Option<JsValue>, JsValue> {
        let mut attributes = Vec::new();
        let parts: Vec<&Value> = match node {
            Node::Tensor(meta) => {
                if let Some(made) = self.made(meta) {
                    return Ok(Some(made));
                }
                meta.quantizer
                    .iter()
                    .chain(&meta.attributes)
                    .map(|b| &**b)
                    .collect()
            }
            Node::Value(value) => match value {
                Value::Tensor(meta) => return self.enter(Node::Tensor(meta), stack),
                Value::List(items)
                | Value::Tuple(items)
                | Value::Set(items)
                | Value::FrozenSet(items) => items.iter().collect(),
                Value::Dict(dict) => {
                    let string_keys = string_keys(dict);
                    let mut parts = Vec::with_capacity(dict.items.len() * 2);
                    for (k, v) in &dict.items {
                        if !string_keys {
                            parts.push(k);
                        }
                        parts.push(v);
                    }
                    // What `Reflect.has` would say on the finished object: its items, the
                    // attributes before, and what every plain object (or Map) inherits.
                    let probe: JsValue = if string_keys {
                        Object::new().into()
                    } else {
                        Map::new().into()
                    };
                    let mut taken: Vec<&str> = Vec::new();
                    for (name, v) in &dict.attributes {
                        let held = (string_keys
                            && dict
                                .items
                                .iter()
                                .any(|(k, _)| matches!(k, Value::Str(s) if s == name)))
                            || taken.contains(&name.as_str())
                            || Reflect::has(&probe, &JsValue::from_str(name))?;
                        attributes.push(!held);
                        if !held {
                            taken.push(name);
                            parts.push(v);
                        }
                    }
                    parts
                }
                Value::Object(object) => {
                    let mut parts: Vec<&Value> = object.state.iter().collect();
                    parts.extend(&object.args);
                    parts.extend(&object.list_items);
                    for (k, v) in &object.dict_items {
                        parts.push(k);
                        parts.push(v);
                    }
                    parts
                }
                leaf => return self.leaf(leaf).map(Some),
            },
        };
        stack.push(Frame {
            node,
            done: Vec::with_capacity(parts.len()),
            parts,
            attributes,
        });
        Ok(None)
    }

    /// The JS value of a value without children.
    fn leaf(&mut self, value: &Value) -> Result<JsValue, JsValue> {
        Ok(match value {
            Value::None => JsValue::NULL,
            Value::Bool(b) => JsValue::from_bool(*b),
            Value::Int(i) => int(*i),
            Value::BigInt(text) => BigInt::new(&JsValue::from_str(text))?.into(),
            Value::Float(x) => JsValue::from_f64(*x),
            Value::Complex(re, im) => {
                let args: Array = [JsValue::from_f64(*re), JsValue::from_f64(*im)]
                    .iter()
                    .collect();
                Self::inert("builtins.complex", args.into(), JsValue::NULL)?
            }
            Value::Str(s) => JsValue::from_str(s),
            Value::Bytes(b) | Value::ByteArray(b) => Uint8Array::from(b.as_slice()).into(),
            Value::Storage(id) => self
                .make_storage
                .call1(&JsValue::NULL, &JsValue::from_f64(*id as f64))?,
            Value::Global(name) => {
                let out = Object::new();
                set(&out, "__global__", &JsValue::from_str(name))?;
                out.into()
            }
            // Containers and tensors have frames of their own (`enter`).
            _ => JsValue::UNDEFINED,
        })
    }

    /// A container's (or tensor's) JS value from its children's.
    fn assemble(&mut self, frame: Frame<'_>) -> Result<JsValue, JsValue> {
        let mut done = frame.done.into_iter();
        let mut next = || done.next().unwrap_or(JsValue::UNDEFINED);
        let value = match frame.node {
            Node::Tensor(meta) => {
                let quantizer = meta.quantizer.as_ref().map(|_| next());
                let attributes = meta.attributes.as_ref().map(|_| next());
                return self.make(meta, quantizer, attributes);
            }
            Node::Value(value) => value,
        };
        Ok(match value {
            Value::List(items) | Value::Tuple(items) => {
                let out = Array::new_with_length(items.len() as u32);
                for i in 0..items.len() {
                    out.set(i as u32, next());
                }
                out.into()
            }
            Value::Set(items) | Value::FrozenSet(items) => {
                let out = Set::new(&JsValue::UNDEFINED);
                for _ in items {
                    out.add(&next());
                }
                out.into()
            }
            Value::Dict(dict) => {
                let out: Object = if string_keys(dict) {
                    let out = Object::new();
                    for (k, _) in &dict.items {
                        let v = next();
                        if let Value::Str(key) = k {
                            if key == "__proto__" {
                                define(&out, key, &v, true)?;
                            } else {
                                set(&out, key, &v)?;
                            }
                        }
                    }
                    out
                } else {
                    let map = Map::new();
                    for _ in &dict.items {
                        let k = next();
                        map.set(&k, &next());
                    }
                    map.unchecked_into()
                };
                for ((name, _), &shown) in dict.attributes.iter().zip(&frame.attributes) {
                    if shown {
                        define(&out, name, &next(), false)?;
                    }
                }
                out.into()
            }
            Value::Object(object) => {
                let state = match &object.state {
                    Some(_) => next(),
                    None => JsValue::NULL,
                };
                let args: Array = object.args.iter().map(|_| next()).collect();
                let out = Self::inert(&object.class, args.into(), state)?;
                if !object.list_items.is_empty() {
                    let items: Array = object.list_items.iter().map(|_| next()).collect();
                    set(&out, "listItems", &items)?;
                }
                if !object.dict_items.is_empty() {
                    let map = Map::new();
                    for _ in &object.dict_items {
                        let k = next();
                        map.set(&k, &next());
                    }
                    set(&out, "dictItems", &map)?;
                }
                out
            }
            leaf => self.leaf(leaf)?,
        })
    }

    fn inert(class: &str, args: JsValue, state: JsValue) -> Result<JsValue, JsValue> {
        let out = Object::new();
        set(&out, "__class__", &JsValue::from_str(class))?;
        set(&out, "args", &args)?;
        set(&out, "state", &state)?;
        Ok(out.into())
    }

    /// The tensor already made for `meta`, if any.
    fn made(&self, meta: &TensorMeta) -> Option<JsValue> {
        self.tensors
            .get(&(meta.storage, meta.storage_offset))
            .and_then(|made| made.iter().find(|(m, _)| m == meta))
            .map(|(_, tensor)| tensor.clone())
    }

    /// Makes the JS tensor for `meta` (its quantizer and attributes converted already).
    fn make(
        &mut self,
        meta: &TensorMeta,
        quantizer: Option<JsValue>,
        attributes: Option<JsValue>,
    ) -> Result<JsValue, JsValue> {
        // One JSON.parse, not a call across the boundary per property (json::JsonText).
        let mut j = JsonText::new();
        j.open_object();
        match meta.storage {
            Some(id) => j.uint("storage", id as u64),
            None => j.null("storage"),
        }
        j.str("dtype", meta.dtype.name());
        j.uint("itemsize", meta.dtype.element_size() as u64);
        j.uints("shape", &meta.shape);
        j.uints("stride", &meta.stride);
        j.uint("storageOffset", meta.storage_offset);
        j.bool("requiresGrad", meta.requires_grad);
        // Layout, decided by the native rules (torch/layout.rs): C-contiguous or not, and the
        // storage elements `[first, end)` from its first element through the last one it
        // reaches (elements, so that a dtype converted on the GPU keeps them).
        j.bool("contiguous", meta.is_contiguous());
        let span = element_span(meta)
            .ok_or_else(|| JsValue::from(js_sys::RangeError::new("a tensor's extent overflows")))?;
        j.uints("span", &[span.start, span.end]);
        j.bool("conj", meta.conj);
        j.bool("neg", meta.neg);
        let kind = match meta.kind {
            TensorKind::Tensor => "tensor",
            TensorKind::Parameter => "parameter",
        };
        j.str("kind", kind);
        j.close_object();
        let m = js_sys::JSON::parse(j.as_str())?;
        if let Some(q) = quantizer {
            set(&m, "quantizer", &q)?;
        }
        if let Some(a) = attributes {
            set(&m, "attributes", &a)?;
        }
        let tensor = self.make_tensor.call1(&JsValue::NULL, &m)?;
        self.tensors
            .entry((meta.storage, meta.storage_offset))
            .or_default()
            .push((meta.clone(), tensor.clone()));
        Ok(tensor)
    }
}
