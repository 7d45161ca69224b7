//! `ptload inspect`: a readable table of a checkpoint's tensors, the whole object as a tree
//! (`--tree`, see [`super::tree`]), or the JSON contract of DESIGN.md (`--json`, with the tree as
//! `root`), optionally with SHA-256 digests of each tensor's elements.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Value as Json};

use ptload::{Checkpoint, Loader, MapLocation, StringEncoding};

use super::tree;

/// Options of `ptload inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Print one JSON object instead of a table: the tensors, and the whole tree as `root`.
    #[arg(long)]
    json: bool,
    /// Add the SHA-256 of each tensor's elements (C order, little-endian).
    #[arg(long)]
    sha256: bool,
    /// Where storages go: a device (`cpu`, `cuda:1`, `meta`, `webgpu`) or a mapping `FROM=TO` (repeatable).
    #[arg(long = "map-location", value_name = "LOC")]
    map_location: Vec<String>,
    /// Accept globals outside torch's weights-only allowlist (they load as inert objects;
    /// nothing is ever executed).
    #[arg(long)]
    no_weights_only: bool,
    /// Print the whole object torch.load would return as an indented tree (dict keys, list
    /// items, scalars with their values, objects with their state, tensors as one line).
    #[arg(long)]
    tree: bool,
    /// With --tree: items shown per container before `... N more items` (0: all).
    #[arg(long, value_name = "N", default_value_t = 10)]
    max_items: usize,
    /// How Python 2 strings decode, as torch.load's `encoding`: utf-8 (default), ascii, latin1
    /// or bytes.
    #[arg(long, value_name = "NAME")]
    encoding: Option<String>,
    /// The checkpoint: a file, or a distributed checkpoint's folder (with `.metadata`).
    file: PathBuf,
}

/// Builds the `MapLocation` from the repeated `--map-location` values.
fn map_location(values: &[String]) -> Result<MapLocation, String> {
    let (pairs, plain): (Vec<&String>, Vec<&String>) = values.iter().partition(|v| v.contains('='));
    match (pairs.is_empty(), plain.as_slice()) {
        (true, []) => Ok(MapLocation::Default),
        (true, [one]) => Ok(MapLocation::To((*one).clone())),
        (true, _) => Err("--map-location takes one device, or several FROM=TO mappings".into()),
        (false, []) => Ok(MapLocation::map(pairs.iter().map(|p| {
            let (from, to) = p.split_once('=').unwrap_or((p.as_str(), ""));
            (from.to_owned(), to.to_owned())
        }))),
        (false, _) => Err("--map-location: a device and FROM=TO mappings cannot be mixed".into()),
    }
}

/// Runs the subcommand; `Err` is the one-line message for stderr.
pub fn run(args: &InspectArgs) -> Result<(), String> {
    let in_file = |e: String| format!("{}: {e}", args.file.display());
    let location = map_location(&args.map_location).map_err(in_file)?;
    let encoding = match &args.encoding {
        Some(name) => name.parse::<StringEncoding>().map_err(in_file)?,
        None => StringEncoding::default(),
    };
    let mut loader = Loader::new();
    // `webgpu` storages go to wgpu's default adapter, looked for only when one is mapped there.
    #[cfg(feature = "wgpu")]
    loader.backend(std::sync::Arc::new(
        ptload::place::wgpu::DefaultAdapterBackend::new(),
    ));
    let ckpt = loader
        .weights_only(!args.no_weights_only)
        .map_location(location)
        .encoding(encoding)
        .load(&args.file)
        .map_err(|e| e.to_string())?;
    let out = if args.json {
        json_report(&ckpt, args.sha256.then(|| Digester::new(&ckpt)).as_ref())
            .map_err(|e| format!("{}: {e}", args.file.display()))?
    } else if args.tree {
        let options = tree::TextOptions {
            max_items: args.max_items,
            sha256: args.sha256,
        };
        tree::text(&ckpt, &options).map_err(|e| format!("{}: {e}", args.file.display()))?
    } else {
        table_report(
            &ckpt,
            &args.file,
            args.sha256.then(|| Digester::new(&ckpt)).as_ref(),
        )
        .map_err(|e| format!("{}: {e}", args.file.display()))?
    };
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = stdout.write_all(out.as_bytes());
    Ok(())
}

/// SHA-256 of tensors' elements, with a progress bar on a terminal for large checkpoints
/// (digests read every byte: on a GPU, back from the device).
struct Digester {
    bar: Option<indicatif::ProgressBar>,
}

impl Digester {
    /// Below this many bytes in all, no bar: it would only flicker.
    const BAR_BYTES: u64 = 64 << 20;

    fn new(ckpt: &Checkpoint) -> Self {
        let total: u64 = ckpt
            .tensors()
            .map(|(_, t)| t.numel() * t.dtype().element_size() as u64)
            .sum();
        let bar = (total >= Self::BAR_BYTES)
            .then(|| super::progress_bar(false))
            .flatten();
        if let Some(bar) = &bar {
            bar.set_length(total);
        }
        Digester { bar }
    }

    fn sha256(&self, t: &ptload::Tensor<'_>) -> ptload::Result<String> {
        let digest = t.sha256();
        if let Some(bar) = &self.bar {
            bar.inc(t.numel() * t.dtype().element_size() as u64);
        }
        digest
    }
}

impl Drop for Digester {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn json_report(ckpt: &Checkpoint, digests: Option<&Digester>) -> ptload::Result<String> {
    let mut tensors = Vec::new();
    for (path, t) in ckpt.tensors() {
        let mut entry = json!({
            "path": path,
            "dtype": t.dtype().name(),
            "shape": t.shape(),
            "stride": t.stride(),
            "storage_offset": t.storage_offset(),
            "storage": t.storage().map(|s| Json::from(s.key.as_str())).unwrap_or(Json::Null),
            "device": t.device().to_string(),
            "requires_grad": t.requires_grad(),
        });
        if let Some(digests) = digests {
            entry["sha256"] = match t.device() {
                ptload::Device::Meta => Json::Null,
                _ => Json::from(digests.sha256(&t)?),
            };
        }
        tensors.push(entry);
    }
    // Keys in alphabetical order, as serde_json writes an object (and the npm CLI its report);
    // `root` is JSON text of its own, which keeps the file's key order.
    Ok(format!(
        "{{\"byte_order\":{},\"format\":{},\"root\":{},\"tensors\":{}}}\n",
        Json::from(ckpt.byte_order.name()),
        Json::from(ckpt.format.name()),
        tree::json(ckpt),
        Json::from(tensors)
    ))
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn table_report(
    ckpt: &Checkpoint,
    file: &std::path::Path,
    digests: Option<&Digester>,
) -> ptload::Result<String> {
    let sha256 = digests.is_some();
    let mut rows = Vec::new();
    let mut total_elements = 0u64;
    let mut total_bytes = 0u64;
    for (path, t) in ckpt.tensors() {
        let bytes = t.numel() * t.dtype().element_size() as u64;
        total_elements += t.numel();
        total_bytes += bytes;
        let shape = format!(
            "[{}]",
            t.shape()
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut row = vec![
            path.to_owned(),
            t.dtype().name().to_owned(),
            shape,
            t.device().to_string(),
            human_bytes(bytes),
        ];
        if let Some(digests) = digests {
            row.push(match t.device() {
                ptload::Device::Meta => "-".into(),
                _ => digests.sha256(&t)?,
            });
        }
        rows.push(row);
    }
    let mut header = vec!["path", "dtype", "shape", "device", "bytes"];
    if sha256 {
        header.push("sha256");
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let storage_bytes: u64 = ckpt.storages.iter().map(|s| s.nbytes()).sum();
    out.push_str(&format!(
        "{}: {} format, {}-endian, {} tensors in {} storages ({})\n\n",
        file.display(),
        ckpt.format,
        ckpt.byte_order.name(),
        rows.len(),
        ckpt.storages.len(),
        human_bytes(storage_bytes)
    ));
    let line = |cells: Vec<&str>| -> String {
        let mut s = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    out.push_str(&line(header.clone()));
    for row in &rows {
        out.push_str(&line(row.iter().map(|s| s.as_str()).collect()));
    }
    out.push_str(&format!(
        "\ntotal: {} tensors, {} elements, {}\n",
        rows.len(),
        total_elements,
        human_bytes(total_bytes)
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_location_forms() {
        assert!(matches!(map_location(&[]).unwrap(), MapLocation::Default));
        assert!(matches!(map_location(&["cpu".into()]).unwrap(), MapLocation::To(t) if t == "cpu"));
        assert!(matches!(
            map_location(&["cuda:0=cpu".into(), "cuda:1=cpu".into()]).unwrap(),
            MapLocation::Map(m) if m.len() == 2
        ));
        assert!(map_location(&["cpu".into(), "cuda:0=cpu".into()]).is_err());
        assert!(map_location(&["cpu".into(), "meta".into()]).is_err());
    }
}
