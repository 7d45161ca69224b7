//! ptload against the Rust peers, on the same files, in one run (issue 14).
//!
//! For each checkpoint `FILE.pt` it measures, page cache warm, best of `--runs`:
//!
//! - `ptload`: `ptload::load(FILE)` — open, map, directory, pickle, tree, plan; storages borrowed
//!   from the map (zero-copy), so this is the metadata path.
//! - `safetensors`: open, map and `SafeTensors::deserialize` of a twin `.safetensors` file holding
//!   the same tensors, written by ptload's own converter into `--twins DIR` when missing (twins are
//!   generated, never committed).
//! - `candle`: `candle_core::pickle::read_all(FILE)` on a thread, given `--cap` seconds; past that
//!   it is reported as "did not finish" (it reads the tensors too, so it is no zero-copy peer).
//! - `memcpy`: copying the file's bytes once into fresh memory (what reading them costs).
//!
//! ptload and safetensors are timed in turns (one load of each, `--runs` times), so that a slow
//! spell of the machine slows both. It prints one Markdown table with the ratio ptload ÷
//! safetensors (the goal: ≤ 1.5).
//!
//! Run: `cargo run --release --manifest-path bench/peers/Cargo.toml -- FILE.pt...`
//! (`scripts/bench-peers` makes the torch-written files and runs it).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Options {
    runs: usize,
    cap: Duration,
    twins: PathBuf,
    files: Vec<PathBuf>,
    /// `--profile N`: only load each file N times with ptload (for a profiler), print nothing.
    profile: usize,
    /// `--in-memory`: also time ptload on the file's bytes already in memory (no open, map or
    /// page faults: what the parse itself costs).
    in_memory: bool,
    /// `--no-peers`: only ptload against the safetensors crate (no candle, no memcpy): quick
    /// enough to run in many processes, for comparing two builds.
    no_peers: bool,
}

/// A file's bytes, shared between loads (`Loader::load_bytes` takes ownership of a handle).
#[derive(Clone)]
struct SharedBytes(std::sync::Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        runs: 5,
        cap: Duration::from_secs(120),
        twins: std::env::temp_dir().join("ptload-peers"),
        files: Vec::new(),
        profile: 0,
        in_memory: false,
        no_peers: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--runs" => options.runs = value("--runs")?.parse().map_err(|e| format!("{e}"))?,
            "--cap" => {
                options.cap =
                    Duration::from_secs_f64(value("--cap")?.parse().map_err(|e| format!("{e}"))?)
            }
            "--twins" => options.twins = value("--twins")?.into(),
            "--in-memory" => options.in_memory = true,
            "--no-peers" => options.no_peers = true,
            "--profile" => {
                options.profile = value("--profile")?.parse().map_err(|e| format!("{e}"))?
            }
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            file => options.files.push(file.into()),
        }
    }
    if options.files.is_empty() || options.runs == 0 {
        return Err("usage: ptload-peers [--runs N] [--cap SECS] [--twins DIR] [--in-memory] [--no-peers] FILE.pt...".into());
    }
    Ok(options)
}

/// One timing of `f` (what it returns is dropped untimed).
fn timed<T>(f: &mut impl FnMut() -> T) -> Duration {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    drop(std::hint::black_box(out));
    took
}

/// The best (smallest) of `runs` timings of `f`.
fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..runs).map(|_| timed(&mut f)).min().expect("runs > 0")
}

/// The best of `runs` timings of `a` and of `b`, taken in turns (a, b, a, b, …): a slow
/// spell of the machine (a busy neighbour on a VM) then slows both, not one of them.
fn best_in_turns<A, B>(
    runs: usize,
    mut a: impl FnMut() -> A,
    mut b: impl FnMut() -> B,
) -> (Duration, Duration) {
    (0..runs)
        .map(|_| (timed(&mut a), timed(&mut b)))
        .fold((Duration::MAX, Duration::MAX), |(x, y), (ta, tb)| {
            (x.min(ta), y.min(tb))
        })
}

/// The twin `.safetensors` of `file` in `dir`, written by ptload when missing.
fn twin(file: &Path, dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let stem = file.file_stem().ok_or("a file name")?;
    let path = dir.join(stem).with_extension("safetensors");
    if !path.exists() {
        ptload::save_safetensors(&ptload::load(file)?, &path)?;
    }
    Ok(path)
}

/// The safetensors crate's load: map the file, parse and check its header
/// (`SafeTensors::deserialize` is this plus a struct holding both). The map and the metadata
/// are returned, so that, as for ptload's checkpoint, dropping them is not timed.
fn safetensors_load(path: &Path) -> (memmap2::Mmap, safetensors::tensor::Metadata) {
    let file = std::fs::File::open(path).expect("twin opens");
    // SAFETY: the twin is this benchmark's own file, not changed while mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.expect("twin maps");
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&map).expect("twin parses");
    (map, metadata)
}

fn memcpy(path: &Path) -> Vec<u8> {
    let file = std::fs::File::open(path).expect("file opens");
    // SAFETY: as above.
    let map = unsafe { memmap2::Mmap::map(&file) }.expect("file maps");
    map.to_vec()
}

/// `candle_core::pickle::read_all`, or `None` when it did not finish within `cap`.
fn candle(path: &Path, cap: Duration) -> Option<Result<(Duration, usize), String>> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_path_buf();
    // Not joined: a run past the cap is left behind (the process exits at the end).
    std::thread::spawn(move || {
        let start = Instant::now();
        let out = candle_core::pickle::read_all(&path);
        let took = start.elapsed();
        let _ = tx.send(out.map(|t| (took, t.len())).map_err(|e| e.to_string()));
    });
    rx.recv_timeout(cap).ok()
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{ms:.3} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = parse_args()?;
    if options.profile > 0 {
        for file in &options.files {
            for _ in 0..options.profile {
                drop(std::hint::black_box(ptload::load(file)?));
            }
        }
        return Ok(());
    }
    println!(
        "best of {} runs, page cache warm; candle capped at {:.0} s",
        options.runs,
        options.cap.as_secs_f64()
    );
    println!();
    println!("| file | tensors | size | ptload load (zero-copy) | safetensors crate (mmap + deserialize) | ratio | candle `pickle::read_all` | memcpy of the file |");
    println!("|---|---|---|---|---|---|---|---|");
    for file in &options.files {
        let twin = twin(file, &options.twins)?;
        let size = std::fs::metadata(file)?.len();
        let tensors = ptload::load(file)?.tensors().count();
        // Warm the page cache for both.
        drop(memcpy(file));
        drop(memcpy(&twin));
        let (ptload_t, st_t) = best_in_turns(
            options.runs,
            || ptload::load(file).expect("ptload loads"),
            || safetensors_load(&twin),
        );
        if options.in_memory {
            let bytes = SharedBytes(std::sync::Arc::new(std::fs::read(file)?));
            let loader = ptload::Loader::new();
            let in_memory_t = best(options.runs, || {
                loader.load_bytes(bytes.clone()).expect("ptload loads")
            });
            eprintln!(
                "{}: ptload on the bytes in memory: {}",
                file.display(),
                ms(in_memory_t)
            );
        }
        let (candle_t, copy_t) = if options.no_peers {
            ("–".to_string(), "–".to_string())
        } else {
            let copy_t = ms(best(options.runs, || memcpy(file)));
            let candle_t = match candle(file, options.cap) {
                Some(Ok((took, n))) if n == tensors => ms(took),
                Some(Ok((took, n))) => format!("{} ({n} tensors)", ms(took)),
                Some(Err(e)) => format!("error: {e}"),
                None => format!("did not finish in {:.0} s", options.cap.as_secs_f64()),
            };
            (candle_t, copy_t)
        };
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        println!(
            "| {name} | {tensors} | {:.1} MiB | {} | {} | {:.2}× | {candle_t} | {copy_t} |",
            size as f64 / (1 << 20) as f64,
            ms(ptload_t),
            ms(st_t),
            ptload_t.as_secs_f64() / st_t.as_secs_f64(),
        );
    }
    // A candle run past its cap may still be going: don't wait for it.
    std::process::exit(0);
}
