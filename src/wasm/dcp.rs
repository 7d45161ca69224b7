//! Distributed checkpoints (`torch.distributed.checkpoint` folders) in the npm package: the
//! folder's files are handed in from JS (`.metadata` and the `__<rank>_<n>.distcp` files, by
//! name), and the native [`crate::dcp`] consolidates them into one checkpoint, every tensor
//! reassembled at its full size from its chunks.
//!
//! The files are held in wasm memory while the checkpoint is built, and each storage's bytes
//! are copied out once ([`DcpCheckpoint::bytes`]); the JS wrapper makes the tensors as for any
//! checkpoint.

use std::collections::HashMap;

use js_sys::{Array, Function, Uint8Array};
use wasm_bindgen::prelude::*;

use super::{get, js_error, loader_from, storage_fields, tree_js, type_error};
use crate::dcp::FolderReader;
use crate::error::{Error, ErrorKind, Result};
use crate::loader::Checkpoint;
use crate::torch::json::JsonText;

/// A folder held in memory: file name → bytes.
struct MemoryFolder {
    name: String,
    files: HashMap<String, Vec<u8>>,
}

impl FolderReader for MemoryFolder {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self, file: &str) -> Result<u64> {
        self.files
            .get(file)
            .map(|b| b.len() as u64)
            .ok_or_else(|| missing(file))
    }

    fn read_at(&self, file: &str, offset: u64, out: &mut [u8]) -> Result<()> {
        let bytes = self.files.get(file).ok_or_else(|| missing(file))?;
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(out.len())?));
        let src = range.and_then(|r| bytes.get(r)).ok_or_else(|| {
            Error::new(ErrorKind::Record {
                record: file.to_owned(),
                offset,
                message: format!(
                    "{} bytes at byte {offset} are past the end of the file ({} bytes)",
                    out.len(),
                    bytes.len()
                ),
            })
        })?;
        out.copy_from_slice(src);
        Ok(())
    }
}

/// The error for a file the folder does not hold (the OS's words, as on disk).
fn missing(file: &str) -> Error {
    Error::new(ErrorKind::Io(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "No such file or directory (os error 2)",
    )))
    .in_file(file)
}

/// A distributed checkpoint, consolidated: the JS wrapper reads its storages, tree and bytes,
/// then frees it.
#[wasm_bindgen]
pub struct DcpCheckpoint {
    ckpt: Checkpoint,
}

#[wasm_bindgen]
impl DcpCheckpoint {
    /// Consolidates the folder `name` (in errors) whose files are `names[i]` → `contents[i]`
    /// (each a `Uint8Array`, copied in). `options` as [`super::Planner::new`]'s, without a
    /// `mapLocation` callback.
    #[wasm_bindgen(constructor)]
    pub fn new(
        name: String,
        names: Array,
        contents: Array,
        options: JsValue,
    ) -> Result<DcpCheckpoint, JsValue> {
        if get(&options, "callback")?.as_bool().unwrap_or(false) {
            return Err(type_error(
                "mapLocation: a distributed checkpoint takes a device string or a {from: to} object, not a function",
            ));
        }
        let loader = loader_from(&options)?;
        let mut files = HashMap::new();
        for (file, bytes) in names.iter().zip(contents.iter()) {
            let file = file
                .as_string()
                .ok_or_else(|| type_error("a folder's file names must be strings"))?;
            let bytes: Uint8Array = bytes
                .dyn_into()
                .map_err(|_| type_error("a folder's files must be bytes"))?;
            files.insert(file, bytes.to_vec());
        }
        let folder = MemoryFolder { name, files };
        let ckpt = loader
            .open_dcp_reader(Box::new(folder))
            .and_then(|d| d.load())
            .map_err(js_error)?;
        Ok(DcpCheckpoint { ckpt })
    }

    /// The storages, as [`super::Planner::storages`] gives them (no record: the bytes come from
    /// [`DcpCheckpoint::bytes`]).
    pub fn storages(&self) -> Result<Array, JsValue> {
        // One JSON.parse, as Planner::storages.
        let mut j = JsonText::new();
        j.open_array();
        for s in &self.ckpt.storages {
            j.open_object();
            storage_fields(&mut j, &s.key, s.dtype, s.numel, &s.location, &s.device);
            j.null("record");
            j.close_object();
        }
        j.close_array();
        Ok(js_sys::JSON::parse(j.as_str())?.unchecked_into())
    }

    /// The object tree as JS values, as [`super::Planner::tree`] gives it.
    pub fn tree(
        &self,
        make_tensor: &Function,
        make_storage: &Function,
    ) -> Result<JsValue, JsValue> {
        tree_js(
            self.ckpt.format,
            self.ckpt.byte_order,
            &self.ckpt.root,
            self.ckpt.constants.as_ref(),
            make_tensor,
            make_storage,
        )
    }

    /// A copy of storage `index`'s bytes (host byte order), or `undefined` on `meta`.
    pub fn bytes(&self, index: usize) -> Option<Vec<u8>> {
        self.ckpt
            .storages
            .get(index)
            .and_then(|s| s.data.host_bytes())
            .map(<[u8]>::to_vec)
    }

    /// The tree as `ptload inspect --json`'s `root` (see [`super::Planner::root_json`]).
    #[wasm_bindgen(js_name = rootJson)]
    pub fn root_json(&self) -> String {
        let storages = &self.ckpt.storages;
        crate::torch::json::tree(&self.ckpt.root, &|id| {
            storages.get(id).map(|s| s.key.to_string())
        })
    }
}
