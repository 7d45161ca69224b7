//! The writers for JS (`save(tensors)`, `ckpt.toSafetensors()` in `pkg-template/src/save.mjs`):
//! contiguous tensors handed over as `[name, dtype, shape, Uint8Array]` entries become the bytes
//! of a `.safetensors` or `.pt` file, written by the same [`crate::Writer`] as the CLI's.
//!
//! The tensor bytes are copied into wasm memory and the file is built there, so a file is
//! bounded by wasm memory (4 GiB); the JS side passes only contiguous C-order bytes.

use js_sys::{Array, Uint8Array};
use wasm_bindgen::prelude::*;

use crate::torch::Dtype;
use crate::{Checkpoint, Writer};

fn type_error(message: String) -> JsValue {
    js_sys::TypeError::new(&message).into()
}

/// `writeTensors(entries, format, sourceName)`: `entries` is an array of
/// `[name, dtype, shape, bytes]` (`dtype` as torch names it without `torch.`, `shape` an array
/// of numbers, `bytes` a `Uint8Array` of the elements in C order, little-endian); `format` is
/// `"safetensors"` or `"pt"`. Returns the file's bytes; throws an `Error` with the writer's
/// message (an unsupported dtype is named).
#[wasm_bindgen(js_name = writeTensors)]
pub fn write_tensors(
    entries: Array,
    format: &str,
    source_name: Option<String>,
) -> Result<Uint8Array, JsValue> {
    let mut tensors = Vec::with_capacity(entries.length() as usize);
    for entry in entries.iter() {
        let entry = Array::from(&entry);
        let name = entry
            .get(0)
            .as_string()
            .ok_or_else(|| type_error("writeTensors: a tensor name must be a string".into()))?;
        let dtype_name = entry.get(1).as_string().unwrap_or_default();
        let dtype = Dtype::from_name(&dtype_name).ok_or_else(|| {
            type_error(format!(
                "writeTensors: tensor '{name}': unknown dtype '{dtype_name}'"
            ))
        })?;
        let mut shape = Vec::new();
        for d in Array::from(&entry.get(2)).iter() {
            let d = d
                .as_f64()
                .filter(|d| *d >= 0.0 && d.fract() == 0.0)
                .ok_or_else(|| {
                    type_error(format!(
                        "writeTensors: tensor '{name}': the shape must hold non-negative integers"
                    ))
                })?;
            shape.push(d as u64);
        }
        let bytes = entry.get(3).dyn_into::<Uint8Array>().map_err(|_| {
            type_error(format!(
                "writeTensors: tensor '{name}': bytes must be a Uint8Array"
            ))
        })?;
        tensors.push((name, dtype, shape, bytes.to_vec()));
    }
    let to_js = |e: crate::Error| -> JsValue { JsError::new(&e.to_string()).into() };
    let ckpt = Checkpoint::from_tensors(tensors).map_err(to_js)?;
    let mut writer = Writer::new();
    if let Some(name) = source_name {
        writer.source_name(name);
    }
    let bytes = match format {
        "safetensors" => writer.to_safetensors_bytes(&ckpt).map_err(to_js)?.0,
        "pt" => writer.to_pt_bytes(&ckpt).map_err(to_js)?.0,
        other => {
            return Err(type_error(format!(
                "writeTensors: format must be \"safetensors\" or \"pt\", not \"{other}\""
            )))
        }
    };
    Ok(Uint8Array::from(bytes.as_slice()))
}
