//! Sharded safetensors output, named as transformers names it: tensors are packed in order
//! into shards of at most `max_shard_size` bytes (a larger tensor gets a shard of its own, as
//! `huggingface_hub.split_torch_state_dict_into_shards` does), written as
//! `model-00001-of-0000N.safetensors`, plus `model.safetensors.index.json`
//! (`{"metadata": {"total_size"}, "weight_map"}`, keys sorted, indented by 2). A single shard is
//! written as `model.safetensors`, with no index. Every file is written under a temporary name
//! and all are renamed only once every one is complete.

use std::path::Path;

use super::safetensors::total_bytes;
use super::{Chosen, Output, Report, Writer};
use crate::error::{Error, Result};
use crate::loader::Checkpoint;

/// Parses a shard size as transformers accepts it: `5GB` (10⁹), `500MB`, `2GiB` (2³⁰), `100KB`,
/// or a number of bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        "TIB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * scale;
    (bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Splits tensors (with their sizes) into shards, in order.
fn split(sizes: &[u64], max: u64) -> Vec<Vec<usize>> {
    let mut shards = Vec::new();
    let mut current = Vec::new();
    let mut current_size = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        if size > max {
            shards.push(vec![i]);
            continue;
        }
        if current_size + size > max && !current.is_empty() {
            shards.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current.push(i);
        current_size += size;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    shards
}

impl Writer {
    /// Writes the tensors as sharded safetensors files plus their index into `folder`
    /// (created if missing), each shard at most `max_shard_bytes` (unless one tensor is larger).
    pub fn save_sharded_safetensors(
        &self,
        ckpt: &Checkpoint,
        folder: impl AsRef<Path>,
        max_shard_bytes: u64,
    ) -> Result<Report> {
        let folder = folder.as_ref();
        let name = folder.display().to_string();
        self.save_sharded_inner(ckpt, folder, max_shard_bytes)
            .map_err(|e| super::output_error(e, &name))
    }

    fn save_sharded_inner(
        &self,
        ckpt: &Checkpoint,
        folder: &Path,
        max_shard_bytes: u64,
    ) -> Result<Report> {
        let (chosen, mut report, metadata) = self.prepare(ckpt)?;
        if folder.is_file() {
            return Err(Error::from(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the output of a sharded conversion is a folder, and this is a file",
            )));
        }
        std::fs::create_dir_all(folder)?;
        let sizes: Vec<u64> = chosen
            .iter()
            .map(|c| total_bytes(std::slice::from_ref(c), ckpt.max_tensor_bytes()))
            .collect::<Result<_>>()?;
        let total: u64 = sizes.iter().sum();
        let shards = split(&sizes, max_shard_bytes.max(1));
        let n = shards.len();
        let file_name = |i: usize| {
            if n == 1 {
                "model.safetensors".to_owned()
            } else {
                format!("model-{:05}-of-{n:05}.safetensors", i + 1)
            }
        };
        let mut outputs: Vec<Output> = Vec::new();
        let mut weight_map = serde_json::Map::new();
        let mut done = 0u64;
        for (i, shard) in shards.iter().enumerate() {
            let members: Vec<Chosen<'_>> = shard
                .iter()
                .map(|&j| Chosen {
                    path: chosen[j].path.clone(),
                    tensor: chosen[j].tensor,
                })
                .collect();
            let file = file_name(i);
            let path = folder.join(&file);
            let output = self
                .write_file(&members, metadata.clone(), &path, done, total)
                .map_err(|e| e.in_file(&path.display().to_string()))?;
            outputs.push(output);
            done += shard.iter().map(|&j| sizes[j]).sum::<u64>();
            for m in &members {
                weight_map.insert(m.path.clone(), serde_json::Value::String(file.clone()));
            }
        }
        if n > 1 {
            // serde_json's map is sorted by key: transformers writes `sort_keys=True`.
            let index = serde_json::json!({
                "metadata": {"total_size": total},
                "weight_map": weight_map,
            });
            let mut text = serde_json::to_string_pretty(&index)
                .map_err(|e| Error::from(std::io::Error::other(e.to_string())))?;
            text.push('\n');
            let path = folder.join("model.safetensors.index.json");
            let output = Output::create(&path, self.force)?;
            std::io::Write::write_all(&mut output.file(), text.as_bytes())?;
            outputs.push(output);
        }
        for output in outputs {
            output.finish()?;
        }
        self.progress(total, total);
        report.written = chosen.into_iter().map(|c| c.path).collect();
        report.bytes = total;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_transformers_reads_them() {
        assert_eq!(parse_size("5GB"), Some(5_000_000_000));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1.5KB"), Some(1500));
        assert_eq!(parse_size("5 parsecs"), None);
        assert_eq!(parse_size("0"), None);
    }

    #[test]
    fn an_oversized_tensor_gets_its_own_shard_first() {
        // As huggingface_hub: the big tensor's shard is appended before the current one ends.
        assert_eq!(split(&[4, 4, 20, 4], 10), [vec![2], vec![0, 1], vec![3]]);
        assert_eq!(split(&[6, 6, 6], 10), [vec![0], vec![1], vec![2]]);
        assert_eq!(split(&[5, 5, 5], 10), [vec![0, 1], vec![2]]);
    }
}
