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
            Value::List(items) | Value::Tuple(items) => self.array(items)?.into(),
            Value::Set(items) | Value::FrozenSet(items) => {
                let set = Set::new(&JsValue::UNDEFINED);
                for item in items {
                    set.add(&self.value(item)?);
                }
                set.into()
            }
            Value::Dict(dict) => self.dict(dict)?,
            Value::Tensor(meta) => self.tensor(meta)?,
            Value::Storage(id) => self
                .make_storage
                .call1(&JsValue::NULL, &JsValue::from_f64(*id as f64))?,
            Value::Object(object) => {
                let state = match &object.state {
                    Some(state) => self.value(state)?,
                    None => JsValue::NULL,
                };
                let args = self.array(&object.args)?;
                let out = Self::inert(&object.class, args.into(), state)?;
                if !object.list_items.is_empty() {
                    set(&out, "listItems", &self.array(&object.list_items)?.into())?;
                }
                if !object.dict_items.is_empty() {
                    let map = Map::new();
                    for (k, v) in &object.dict_items {
                        map.set(&self.value(k)?, &self.value(v)?);
                    }
                    set(&out, "dictItems", &map)?;
                }
                out
            }
            Value::Global(name) => {
                let out = Object::new();
                set(&out, "__global__", &JsValue::from_str(name))?;
                out.into()
            }
        })
    }

    fn array(&mut self, items: &[Value]) -> Result<Array, JsValue> {
        let out = Array::new_with_length(items.len() as u32);
        for (i, item) in items.iter().enumerate() {
            out.set(i as u32, self.value(item)?);
        }
        Ok(out)
    }

    fn inert(class: &str, args: JsValue, state: JsValue) -> Result<JsValue, JsValue> {
        let out = Object::new();
        set(&out, "__class__", &JsValue::from_str(class))?;
        set(&out, "args", &args)?;
        set(&out, "state", &state)?;
        Ok(out.into())
    }

    fn dict(&mut self, dict: &Dict) -> Result<JsValue, JsValue> {
        let string_keys = dict.items.iter().all(|(k, _)| matches!(k, Value::Str(_)));
        let out: Object = if string_keys {
            let out = Object::new();
            for (k, v) in &dict.items {
                if let Value::Str(key) = k {
                    let v = self.value(v)?;
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
            for (k, v) in &dict.items {
                map.set(&self.value(k)?, &self.value(v)?);
            }
            map.unchecked_into()
        };
        for (name, v) in &dict.attributes {
            let key = JsValue::from_str(name);
            if !Reflect::has(&out, &key)? {
                define(&out, name, &self.value(v)?, false)?;
            }
        }
        Ok(out.into())
    }

    /// The JS tensor for `meta`, made on first sight.
    pub(crate) fn tensor(&mut self, meta: &TensorMeta) -> Result<JsValue, JsValue> {
        let slot: ViewStart = (meta.storage, meta.storage_offset);
        if let Some((_, existing)) = self
            .tensors
            .get(&slot)
            .and_then(|made| made.iter().find(|(m, _)| m == meta))
        {
            return Ok(existing.clone());
        }
        let m = Object::new();
        let storage = match meta.storage {
            Some(id) => JsValue::from_f64(id as f64),
            None => JsValue::NULL,
        };
        set(&m, "storage", &storage)?;
        set(&m, "dtype", &JsValue::from_str(meta.dtype.name()))?;
        set(
            &m,
            "itemsize",
            &JsValue::from_f64(meta.dtype.element_size() as f64),
        )?;
        set(&m, "shape", &numbers(&meta.shape))?;
        set(&m, "stride", &numbers(&meta.stride))?;
        set(
            &m,
            "storageOffset",
            &JsValue::from_f64(meta.storage_offset as f64),
        )?;
        set(&m, "requiresGrad", &JsValue::from_bool(meta.requires_grad))?;
        // Layout, decided by the native rules (torch/layout.rs): C-contiguous or not, and the
        // storage bytes `[start, end)` from its first element through the last one it reaches.
        set(&m, "contiguous", &JsValue::from_bool(meta.is_contiguous()))?;
        let size = meta.dtype.element_size() as u64;
        let span = element_span(meta)
            .ok_or_else(|| JsValue::from(js_sys::RangeError::new("a tensor's extent overflows")))?;
        let bytes = [
            span.start.saturating_mul(size),
            span.end.saturating_mul(size),
        ];
        set(&m, "span", &numbers(&bytes))?;
        set(&m, "conj", &JsValue::from_bool(meta.conj))?;
        set(&m, "neg", &JsValue::from_bool(meta.neg))?;
        let kind = match meta.kind {
            TensorKind::Tensor => "tensor",
            TensorKind::Parameter => "parameter",
        };
        set(&m, "kind", &JsValue::from_str(kind))?;
        if let Some(q) = &meta.quantizer {
            set(&m, "quantizer", &self.value(q)?)?;
        }
        if let Some(a) = &meta.attributes {
            set(&m, "attributes", &self.value(a)?)?;
        }
        let tensor = self.make_tensor.call1(&JsValue::NULL, &m)?;
        self.tensors
            .entry(slot)
            .or_default()
            .push((meta.clone(), tensor.clone()));
        Ok(tensor)
    }
}
