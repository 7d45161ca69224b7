//! Load speed as ratios against baselines measured in the same run.
//!
//! - `memcpy`: copying the file's bytes once — what any loader that reads the file must at least
//!   pay; `ptload/copy_all` (load, then materialize every tensor) is compared with it.
//! - `ptload/zero_copy`: load only (storages borrowed from the buffer): a small fraction of a
//!   memcpy, independent of the data size.
//! - `pickle/many_tensors`: parsing a state_dict pickle of 10 000 tensors (the part that scales
//!   with the number of tensors, not their size).
//!
//! Run: `cargo bench --bench load`. Compare with torch.load and safetensors on the same machine
//! with `scripts/bench-vs-torch`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Pickle, ZipBuilder};

/// A checkpoint of `count` float32 tensors of `numel` elements each, as torch lays it out.
fn checkpoint(count: usize, numel: i64) -> Vec<u8> {
    let mut p = Pickle::new().op(b"}(");
    for i in 0..count {
        p = p.str(&format!("layer{i}.weight")).tensor(
            "FloatStorage",
            &i.to_string(),
            numel,
            0,
            &[numel],
            &[1],
        );
    }
    let pickle = p.op(b"u").stop();
    let data: Vec<Vec<u8>> = (0..count)
        .map(|i| (0..numel * 4).map(|b| (b as usize + i) as u8).collect())
        .collect();
    let keys: Vec<String> = (0..count).map(|i| i.to_string()).collect();
    let records: Vec<(&str, &[u8])> = keys
        .iter()
        .zip(&data)
        .map(|(k, d)| (k.as_str(), d.as_slice()))
        .collect();
    ZipBuilder::checkpoint(&pickle, &records)
}

fn bench(c: &mut Criterion) {
    // 16 tensors × 4 MiB = 64 MiB.
    let file: Arc<[u8]> = checkpoint(16, 1 << 20).into();
    let mut group = c.benchmark_group("64MiB");
    group.throughput(Throughput::Bytes(file.len() as u64));
    group.sample_size(20);
    group.bench_function("memcpy", |b| b.iter(|| black_box(file.to_vec())));
    group.bench_function("ptload/zero_copy", |b| {
        b.iter(|| black_box(ptload::load_bytes(file.clone()).unwrap()))
    });
    group.bench_function("ptload/copy_all", |b| {
        b.iter(|| {
            let ckpt = ptload::load_bytes(file.clone()).unwrap();
            let bytes: Vec<Vec<u8>> = ckpt
                .tensors()
                .map(|(_, t)| t.to_contiguous_bytes().unwrap())
                .collect();
            black_box(bytes)
        })
    });
    group.finish();

    let many: Arc<[u8]> = checkpoint(10_000, 4).into();
    let mut group = c.benchmark_group("pickle");
    group.sample_size(20);
    group.bench_function("many_tensors", |b| {
        b.iter(|| black_box(ptload::load_bytes(many.clone()).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
