//! ptload → cuda:0 against the raw pinned host-to-device bandwidth of the same bytes, measured
//! in one run on one GPU; `scripts/bench-cuda` runs it next to torch and safetensors.
//!
//! ```text
//! cargo run --release --features cuda --example bench_cuda -- FILE [RUNS] [SLOTS] [SLOT_MIB] [THREADS]
//! ```
//!
//! Prints one JSON object: the best of RUNS (after one warm-up load that creates the context
//! and the staging ring) for a full load onto cuda:0, for one pinned copy of all the storage
//! bytes, and for allocating the storages one by one versus as one arena.

use std::sync::Arc;
use std::time::Instant;

use ptload::place::cuda::cudarc::driver::CudaContext;
use ptload::place::cuda::{CudaBackend, CudaBuffer};
use ptload::{Loader, StorageData};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn best(runs: usize, mut f: impl FnMut() -> Res<f64>) -> Res<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        best = best.min(f()?);
    }
    Ok(best)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench_cuda: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_cuda FILE [RUNS] [SLOTS] [SLOT_MIB] [THREADS]";
    let path = args.first().ok_or(usage)?.clone();
    let arg = |i: usize, default: usize| -> Res<usize> {
        Ok(args
            .get(i)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let (runs, slots, slot_mib, threads) = (arg(1, 5)?, arg(2, 4)?, arg(3, 8)?, arg(4, 4)?);

    // Page cache hot, as for the other loaders.
    let file_bytes = std::io::copy(&mut std::fs::File::open(&path)?, &mut std::io::sink())?;

    let backend = Arc::new(
        CudaBackend::new()
            .staging(slots, slot_mib << 20)
            .fill_threads(threads),
    );
    let load = || -> Res<(f64, Vec<usize>)> {
        let start = Instant::now();
        let ckpt = Loader::new()
            .backend(backend.clone())
            .map_location("cuda:0")
            .load(&path)?;
        let seconds = start.elapsed().as_secs_f64();
        let mut sizes = Vec::new();
        for s in &ckpt.storages {
            let on_gpu = match &s.data {
                StorageData::Device(b) => b.as_any().downcast_ref::<CudaBuffer>().is_some(),
                _ => false,
            };
            if !on_gpu {
                return Err(format!("storage {} is not on cuda:0", s.key).into());
            }
            sizes.push(usize::try_from(s.nbytes())?);
        }
        Ok((seconds, sizes))
    };
    let (_, sizes) = load()?;
    let ptload_s = best(runs, || Ok(load()?.0))?;
    let storage_bytes: usize = sizes.iter().sum();

    let ctx = CudaContext::new(0)?;
    let stream = ctx.new_stream()?;
    // The same number of bytes, one copy out of page-locked memory (not write-combined, as
    // ptload's slots).
    // SAFETY: filled before use.
    let mut host = unsafe { ctx.alloc_pinned_with_flags::<u8>(storage_bytes.max(1), 0) }?;
    host.as_mut_slice()?.fill(0x3c);
    // SAFETY: only written to.
    let mut device = unsafe { stream.alloc::<u8>(storage_bytes.max(1)) }?;
    let raw_s = best(runs, || {
        let start = Instant::now();
        stream.memcpy_htod(&host, &mut device)?;
        stream.synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    })?;
    drop(device);
    drop(host);

    // The allocation choice: one allocation per storage (what ptload does) or one arena.
    let per_storage_s = best(runs, || {
        let start = Instant::now();
        let buffers = sizes
            .iter()
            .filter(|&&n| n > 0)
            // SAFETY: never read.
            .map(|&n| unsafe { stream.alloc::<u8>(n) })
            .collect::<Result<Vec<_>, _>>()?;
        stream.synchronize()?;
        let seconds = start.elapsed().as_secs_f64();
        drop(buffers);
        stream.synchronize()?;
        Ok(seconds)
    })?;
    let arena_s = best(runs, || {
        let start = Instant::now();
        // SAFETY: never read.
        let arena = unsafe { stream.alloc::<u8>(storage_bytes.max(1)) }?;
        stream.synchronize()?;
        let seconds = start.elapsed().as_secs_f64();
        drop(arena);
        stream.synchronize()?;
        Ok(seconds)
    })?;

    println!(
        "{{\"file_bytes\": {file_bytes}, \"storage_bytes\": {storage_bytes}, \"storages\": {}, \
         \"runs\": {runs}, \"slots\": {slots}, \"slot_mib\": {slot_mib}, \"threads\": {threads}, \
         \"ptload_s\": {ptload_s}, \
         \"raw_pinned_htod_s\": {raw_s}, \"alloc_per_storage_s\": {per_storage_s}, \
         \"alloc_arena_s\": {arena_s}, \"device\": {:?}}}",
        sizes.len(),
        ctx.name()?
    );
    Ok(())
}
