//! `ptload convert [--select PATH] [--dedup] [--skip-unsupported] [--force] [--quiet] IN OUT`:
//! any checkpoint ptload reads (a file, a distributed checkpoint's folder) or a
//! `.safetensors` file or a sharded checkpoint's index, written as `.safetensors`, as a `.pt`
//! in torch.save's zip format, or (`--max-shard-size`) as sharded safetensors in a folder.
//! The output is written under a temporary name in its folder and renamed when complete.

use std::path::{Path, PathBuf};

use clap::Args;

use ptload::{Checkpoint, Loader, Report, Writer};

/// Options of `ptload convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Convert only the subtree at this `.`-joined path (e.g. `state_dict`, `model`).
    #[arg(long, value_name = "PATH")]
    select: Option<String>,
    /// safetensors: write tied weights (tensors covering one whole storage) once, listing each
    /// dropped name in `__metadata__` as `dropped → kept`, as transformers does.
    #[arg(long)]
    dedup: bool,
    /// Leave out tensors whose dtype the output format cannot store, instead of failing.
    #[arg(long)]
    skip_unsupported: bool,
    /// Overwrite OUT if it exists.
    #[arg(long)]
    force: bool,
    /// No progress bar and no summary.
    #[arg(long)]
    quiet: bool,
    /// Write sharded safetensors into the folder OUT (`model-00001-of-0000N.safetensors` and
    /// `model.safetensors.index.json`, as transformers names them), each shard at most SIZE
    /// (`5GB`, `500MB`, `2GiB`, or bytes).
    #[arg(long, value_name = "SIZE")]
    max_shard_size: Option<String>,
    /// The checkpoint: a file ptload reads, a distributed checkpoint's folder, a sharded
    /// checkpoint's `*.index.json`, or a `.safetensors` file.
    input: PathBuf,
    /// The output: `*.safetensors`, `*.pt` (also `.pth`, `.bin`) for torch.save's format, or a
    /// folder with --max-shard-size.
    output: PathBuf,
}

/// What OUT's extension asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutFormat {
    Safetensors,
    Torch,
}

fn out_format(path: &Path) -> Result<OutFormat, String> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Ok(OutFormat::Safetensors),
        Some("pt" | "pth" | "bin") => Ok(OutFormat::Torch),
        _ => Err(format!(
            "{}: the output must end in .safetensors or .pt (.pth, .bin)",
            path.display()
        )),
    }
}

/// Loads IN: a safetensors file, or anything `Loader::load` reads (an index file included).
pub fn load_input(path: &Path) -> Result<Checkpoint, String> {
    let loader = Loader::new();
    let loaded = if path.is_file() && ptload::index::is_safetensors(path) {
        loader.load_safetensors(path)
    } else {
        loader.load(path)
    };
    loaded.map_err(|e| e.to_string())
}

/// Runs the subcommand; `Err` is the one-line message for stderr.
pub fn run(args: &ConvertArgs) -> Result<(), String> {
    let shard_size = match &args.max_shard_size {
        Some(text) => Some(ptload::write::parse_size(text).ok_or_else(|| {
            format!("--max-shard-size: '{text}' is not a size (5GB, 500MB, 2GiB, or bytes)")
        })?),
        None => None,
    };
    let format = match shard_size {
        Some(_) => OutFormat::Safetensors,
        None => out_format(&args.output)?,
    };
    let ckpt = load_input(&args.input)?;
    let mut writer = Writer::new();
    writer
        .force(args.force)
        .dedup(args.dedup)
        .skip_unsupported(args.skip_unsupported);
    if let Some(select) = &args.select {
        writer.select(select.clone());
    }
    if let Some(name) = args.input.file_name() {
        writer.source_name(name.to_string_lossy());
    }
    let bar = super::progress_bar(args.quiet);
    if let Some(bar) = bar.clone() {
        writer.on_progress(move |p| {
            bar.set_length(p.total_bytes);
            bar.set_position(p.placed_bytes);
        });
    }
    let result = match (format, shard_size) {
        (_, Some(max)) => writer.save_sharded_safetensors(&ckpt, &args.output, max),
        (OutFormat::Safetensors, None) => writer.save_safetensors(&ckpt, &args.output),
        (OutFormat::Torch, None) => writer.save(&ckpt, &args.output),
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = result.map_err(|e| {
        // Errors about the input's contents name the input; about the output, the output.
        let text = e.to_string();
        if e.file().is_some() {
            text
        } else {
            format!("{}: {text}", args.input.display())
        }
    })?;
    if !args.quiet {
        summary(&report, &args.output);
    }
    Ok(())
}

fn summary(report: &Report, output: &Path) {
    eprintln!(
        "wrote {} tensors ({} bytes) to {}",
        report.written.len(),
        report.bytes,
        output.display()
    );
    if !report.skipped_values.is_empty() {
        eprintln!(
            "skipped {} non-tensor values: {}",
            report.skipped_values.len(),
            list(report.skipped_values.iter().cloned())
        );
    }
    if !report.skipped_unsupported.is_empty() {
        eprintln!(
            "skipped {} tensors of unsupported dtypes: {}",
            report.skipped_unsupported.len(),
            list(
                report
                    .skipped_unsupported
                    .iter()
                    .map(|(p, d)| format!("{p} ({d})"))
            )
        );
    }
    for (dropped, kept) in &report.aliases {
        eprintln!("deduplicated: {dropped} is written as {kept}");
    }
}

/// Up to 20 items, comma-separated, then how many more.
fn list(items: impl ExactSizeIterator<Item = String>) -> String {
    let n = items.len();
    let mut shown: Vec<String> = items.take(20).collect();
    if n > 20 {
        shown.push(format!("and {} more", n - 20));
    }
    shown.join(", ")
}
