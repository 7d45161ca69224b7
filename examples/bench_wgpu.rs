//! ptload → webgpu against `queue.write_buffer` of the same bytes from one host buffer, measured
//! in one run on wgpu's default adapter.
//!
//! ```text
//! cargo run --release --features wgpu --example bench_wgpu -- [FILE|MiB] [RUNS]
//! ```
//!
//! Without FILE it places an in-memory checkpoint of 16 float32 storages, MiB in all (default
//! 256). Prints one JSON object: the best of RUNS (after a warm-up) for a full placement, for
//! `write_buffer` of every storage into its own buffer from one host buffer, and for one
//! `write_buffer` into one buffer of the whole size; `ratio` is the baseline's time over ours
//! (1.0: as fast as the bare copy).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use ptload::place::wgpu::{wgpu, WgpuBackend};
use ptload::{Checkpoint, Loader};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn best(runs: usize, mut f: impl FnMut() -> Res<f64>) -> Res<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..runs + 1 {
        best = best.min(f()?); // the first run warms up
    }
    Ok(best)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench_wgpu: {e}");
        std::process::exit(1);
    }
}

/// A checkpoint of 16 float32 storages, `mib` MiB in all (distinct patterns).
fn checkpoint(mib: usize) -> Vec<u8> {
    let count = 16;
    let len = (mib << 20) / count / 4 * 4;
    let mut pickle = common::Pickle::new().op(b"(");
    let keys: Vec<String> = (0..count).map(|i| i.to_string()).collect();
    for key in &keys {
        pickle = pickle.storage_at("FloatStorage", key, "cpu", (len / 4) as i64);
    }
    let pickle = pickle.op(b"t").stop();
    let data: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            (0..len)
                .map(|b| {
                    (b as u32)
                        .wrapping_mul(2_654_435_761)
                        .wrapping_add(i as u32) as u8
                })
                .collect()
        })
        .collect();
    let records: Vec<(&str, &[u8])> = keys
        .iter()
        .zip(&data)
        .map(|(k, d)| (k.as_str(), &d[..]))
        .collect();
    common::ZipBuilder::checkpoint(&pickle, &records)
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = args.first().cloned().unwrap_or_else(|| "256".into());
    let runs: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let bytes: Arc<[u8]> = match target.parse::<usize>() {
        Ok(mib) => checkpoint(mib).into(),
        Err(_) => Arc::from(Vec::new()),
    };
    let load = |loader: &Loader| -> Res<Checkpoint> {
        Ok(match target.parse::<usize>() {
            Ok(_) => loader.load_bytes(bytes.clone())?,
            Err(_) => loader.load(&target)?,
        })
    };

    let backend = Arc::new(WgpuBackend::default_adapter()?);
    let (device, queue) = (backend.device().clone(), backend.queue().clone());

    // The storages' bytes, once, in one host buffer.
    let host = load(Loader::new().map_location("cpu"))?;
    let sizes: Vec<u64> = host.storages.iter().map(|s| s.nbytes()).collect();
    let total: u64 = sizes.iter().sum();
    let mut all = Vec::with_capacity(total as usize);
    for s in &host.storages {
        all.extend_from_slice(s.data.host_bytes().ok_or("a storage has no host bytes")?);
    }
    drop(host);

    let mut webgpu = Loader::new();
    webgpu.map_location("webgpu").backend(backend.clone());
    let placed = best(runs, || {
        let start = Instant::now();
        let ckpt = load(&webgpu)?;
        let seconds = start.elapsed().as_secs_f64();
        drop(ckpt);
        Ok(seconds)
    })?;

    let wait = |device: &wgpu::Device| device.poll(wgpu::PollType::wait_indefinitely());
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let create = |size: u64| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: size.div_ceil(4) * 4,
            usage,
            mapped_at_creation: false,
        })
    };
    let per_storage = best(runs, || {
        let start = Instant::now();
        let mut at = 0usize;
        let mut buffers = Vec::new();
        for &size in &sizes {
            let buffer = create(size);
            let len = (size as usize) / 4 * 4; // the bench's storages are float32
            queue.write_buffer(&buffer, 0, &all[at..at + len]);
            at += size as usize;
            buffers.push(buffer);
        }
        queue.submit([]);
        wait(&device)?;
        Ok(start.elapsed().as_secs_f64())
    })?;
    let one_buffer = if total.div_ceil(4) * 4 <= device.limits().max_buffer_size {
        let len = all.len() / 4 * 4;
        Some(best(runs, || {
            let start = Instant::now();
            let buffer = create(total);
            queue.write_buffer(&buffer, 0, &all[..len]);
            queue.submit([]);
            wait(&device)?;
            Ok(start.elapsed().as_secs_f64())
        })?)
    } else {
        None
    };
    let mib = total as f64 / (1 << 20) as f64;
    let info = backend.device().adapter_info();
    println!(
        "{{\"adapter\":{:?},\"backend\":\"{:?}\",\"storages\":{},\"mib\":{mib:.1},\
         \"ptload_s\":{placed:.4},\"write_buffer_per_storage_s\":{per_storage:.4},\
         \"write_buffer_one_s\":{},\"ptload_mib_s\":{:.0},\"ratio\":{:.3}}}",
        info.name,
        info.backend,
        sizes.len(),
        one_buffer.map_or("null".into(), |s| format!("{s:.4}")),
        mib / placed,
        per_storage / placed,
    );
    Ok(())
}
