//! GPU tests of the `cuda` feature, run by `scripts/test-cuda` on a machine with an NVIDIA GPU
//! (`--include-ignored`). Plain `cargo test --features cuda` lists them as ignored (CI has no
//! GPU); where scripts/test-cuda finds no GPU they fail, as any missing prerequisite does.

mod common;

use std::sync::Arc;

use common::{compare, fixture_json, root};
use ptload::place::cuda::cudarc::driver::{result as cu, CudaContext};
use ptload::place::cuda::{CudaBackend, CudaBuffer};
use ptload::{Checkpoint, Device, Loader, MapLocation, StorageData, StringEncoding};
use serde_json::Value as Json;

/// Fails (never skips) where there is no GPU, saying why.
fn require_gpu() {
    match CudaBackend::new().device_count() {
        Ok(n) if n > 0 => {}
        Ok(_) => panic!("these tests need an NVIDIA GPU: the driver reports no device"),
        Err(reason) => panic!("these tests need an NVIDIA GPU: {reason}"),
    }
}

fn cuda_buffer(data: &StorageData) -> Option<&CudaBuffer> {
    match data {
        StorageData::Device(b) => b.as_any().downcast_ref::<CudaBuffer>(),
        _ => None,
    }
}

/// Every non-empty storage is a CUDA allocation on `ordinal` of the storage's size.
fn all_on_gpu(ckpt: &Checkpoint, ordinal: usize, what: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for s in &ckpt.storages {
        if s.nbytes() == 0 {
            continue;
        }
        match cuda_buffer(&s.data) {
            Some(b) if b.ordinal() == ordinal => {
                if b.slice().map(|s| s.len() as u64) != Some(s.nbytes()) || b.device_ptr() == 0 {
                    problems.push(format!("{what}: storage {} has a bad allocation", s.key));
                }
            }
            _ => problems.push(format!(
                "{what}: storage {} is {:?}, not on cuda:{ordinal}",
                s.key, s.data
            )),
        }
        if s.device != Device::Cuda(Some(ordinal)) {
            problems.push(format!("{what}: storage {} says {}", s.key, s.device));
        }
    }
    problems
}

/// Torch's digests, by tensor path, against ours.
fn digests_by_path(ckpt: &Checkpoint, want: &Json, what: &str) -> Vec<String> {
    let ours: std::collections::HashMap<&str, ptload::Tensor<'_>> = ckpt.tensors().collect();
    let mut problems = Vec::new();
    for w in want["tensors"].as_array().unwrap() {
        let path = w["path"].as_str().unwrap();
        match ours.get(path).map(|t| t.sha256()) {
            Some(Ok(sha)) if w["sha256"] == sha.as_str() => {}
            other => problems.push(format!("{what}: {path}: {other:?}, torch {}", w["sha256"])),
        }
    }
    problems
}

fn loader(backend: &Arc<CudaBackend>, rel: &str, want: &Json) -> Loader {
    let mut loader = Loader::new();
    loader
        .backend(backend.clone())
        .map_location("cuda:0")
        .weights_only(!rel.starts_with("modules/"));
    match want.get("encoding").and_then(Json::as_str) {
        Some("latin1") => {
            loader.encoding(StringEncoding::Latin1);
        }
        Some("bytes") => {
            loader.encoding(StringEncoding::Bytes);
        }
        _ => {}
    }
    loader
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/test-cuda"]
fn every_fixture_on_cuda0_reads_back_as_torch() {
    require_gpu();
    // The default rings; a tiny one that splits every record across slots; tiny ones filled
    // by three threads at once (every load in groups).
    let backends = [
        Arc::new(CudaBackend::new()),
        Arc::new(CudaBackend::new().staging(2, 48)),
        Arc::new(
            CudaBackend::new()
                .staging(2, 48)
                .fill_threads(3)
                .group_bytes(1),
        ),
    ];
    let mut problems = Vec::new();
    let mut files = 0;
    for backend in &backends {
        for table in ["expected.json", "expected_formats.json"] {
            let expected = fixture_json(table);
            for (rel, want) in expected["files"].as_object().unwrap() {
                files += 1;
                let what = format!("{rel} ({backend:?})");
                let path = root().join("tests/fixtures").join(rel);
                match loader(backend, rel, want).load(&path) {
                    Ok(ckpt) => {
                        problems.extend(all_on_gpu(&ckpt, 0, &what));
                        problems.extend(digests_by_path(&ckpt, want, &what));
                        if table == "expected.json" {
                            problems.extend(compare(&ckpt, want, &what));
                        }
                    }
                    Err(e) => problems.push(format!("{what}: {e}")),
                }
            }
        }
    }
    assert!(files >= 120, "{files} fixture loads");
    common::assert_no_problems(&problems);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/test-cuda"]
fn cli_digests_what_it_reads_back_from_the_gpu() {
    require_gpu();
    let expected = fixture_json("expected.json");
    for rel in [
        "zip/dtypes.pt",
        "zip/big_endian.pt",
        "zip/deflated.pt",
        "zip/views.pt",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ptload"))
            .args(["inspect", "--json", "--sha256", "--map-location", "cuda:0"])
            .arg(root().join("tests/fixtures").join(rel))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{rel}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Json = serde_json::from_slice(&out.stdout).unwrap();
        let want = expected["files"][rel]["tensors"].as_array().unwrap();
        let got = report["tensors"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{rel}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g["sha256"], w["sha256"], "{rel}: {}", w["path"]);
            if w["storage_group"].is_i64() {
                assert_eq!(g["device"], "cuda:0", "{rel}: {}", w["path"]);
            }
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/test-cuda"]
fn cuda1_maps_to_cuda0_and_callbacks_mix_devices() {
    require_gpu();
    let table = fixture_json("locations.json");
    for rel in ["locations/zip_cuda1.pt", "locations/legacy_cuda1.pt"] {
        let ckpt = Loader::new()
            .map_location(MapLocation::map([("cuda:1", "cuda:0")]))
            .load(root().join("tests/fixtures").join(rel))
            .unwrap();
        common::assert_no_problems(&all_on_gpu(&ckpt, 0, rel));
        let want = &table["files"][rel]["sha256"];
        let got: Vec<_> = ckpt.tensors().map(|(_, t)| t.sha256().unwrap()).collect();
        assert_eq!(Json::from(got), *want, "{rel}");
    }
    // torch's bare "cuda" is the current device, 0.
    let ckpt = Loader::new()
        .map_location("cuda")
        .load(root().join("tests/fixtures/locations/zip_cpu.pt"))
        .unwrap();
    common::assert_no_problems(&all_on_gpu(&ckpt, 0, "zip_cpu.pt to cuda"));
    // A callback keeps "cpu" storages on the host and sends the others to cuda:0.
    let rel = "locations/zip_mixed.pt";
    let ckpt = Loader::new()
        .map_location(MapLocation::with(|s, tag| {
            Some(if tag == "cpu" { s.cpu() } else { s.cuda(0) })
        }))
        .load(root().join("tests/fixtures").join(rel))
        .unwrap();
    let mut devices = Vec::new();
    for s in &ckpt.storages {
        devices.push(s.device.to_string());
        match &*s.location {
            "cpu" => assert!(s.data.host_bytes().is_some(), "{}", s.key),
            _ => assert!(cuda_buffer(&s.data).is_some(), "{}", s.key),
        }
    }
    assert_eq!(devices, ["cpu", "cuda:0", "cuda:0"]);
    let got: Vec<_> = ckpt.tensors().map(|(_, t)| t.sha256().unwrap()).collect();
    assert_eq!(Json::from(got), table["files"][rel]["sha256"]);
}

/// Storage `i` of [`big_checkpoint`].
fn big_storage(i: usize, mib: usize) -> Vec<u8> {
    (0..mib << 20)
        .map(|b| {
            (b as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(i as u32 * 977) as u8
        })
        .collect()
}

/// A checkpoint of `count` float32 storages of `mib` MiB each (distinct patterns), in memory.
fn big_checkpoint(count: usize, mib: usize) -> Vec<u8> {
    let numel = (mib << 20) / 4;
    let mut pickle = common::Pickle::new().op(b"(");
    let keys: Vec<String> = (0..count).map(|i| i.to_string()).collect();
    for key in &keys {
        pickle = pickle.storage_at("FloatStorage", key, "cuda:0", numel as i64);
    }
    let pickle = pickle.op(b"t").stop();
    let data: Vec<Vec<u8>> = (0..count).map(|i| big_storage(i, mib)).collect();
    let records: Vec<(&str, &[u8])> = keys
        .iter()
        .zip(&data)
        .map(|(k, d)| (k.as_str(), &d[..]))
        .collect();
    common::ZipBuilder::checkpoint(&pickle, &records)
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/test-cuda"]
fn large_loads_fill_in_parallel_groups_and_read_back_exactly() {
    require_gpu();
    // 8 × 32 MiB: four groups of 64 MiB, each through its own ring and stream.
    let backend = Arc::new(CudaBackend::new().fill_threads(4));
    let ckpt = Loader::new()
        .backend(backend)
        .map_location("cuda:0")
        .load_bytes(big_checkpoint(8, 32))
        .unwrap();
    common::assert_no_problems(&all_on_gpu(&ckpt, 0, "8 x 32 MiB"));
    for (i, s) in ckpt.storages.iter().enumerate() {
        let buffer = s.data.device_buffer().unwrap();
        let mut back = vec![0u8; 32 << 20];
        buffer.read_back(0, &mut back).unwrap();
        assert!(back == big_storage(i, 32), "storage {i} differs");
        let mut tail = [0u8; 5];
        buffer.read_back((32 << 20) - 5, &mut tail).unwrap();
        assert_eq!(tail[..], big_storage(i, 32)[(32 << 20) - 5..]);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/test-cuda"]
fn out_of_memory_names_the_storage_and_frees_everything() {
    require_gpu();
    let ctx = CudaContext::new(0).unwrap();
    // Leave 96 MiB free: the checkpoint needs 8 × 32 MiB, so the fourth storage fails.
    let keep = 96usize << 20;
    let (free, _) = ctx.mem_get_info().unwrap();
    let mut hog = None;
    let mut size = free.saturating_sub(keep);
    while hog.is_none() && size > 0 {
        // SAFETY: never read; freed below.
        match unsafe { cu::malloc_sync(size) } {
            Ok(ptr) => hog = Some(ptr),
            Err(_) => size = size.saturating_sub(64 << 20),
        }
    }
    let hog = hog.expect("could not fill the device");
    ctx.synchronize().unwrap();
    let (before, _) = ctx.mem_get_info().unwrap();
    let bytes = big_checkpoint(8, 32);
    let err = Loader::new()
        .map_location("cuda:0")
        .load_bytes(bytes.clone())
        .unwrap_err();
    let msg = err.to_string();
    ctx.synchronize().unwrap();
    let (after, _) = ctx.mem_get_info().unwrap();
    // SAFETY: allocated above, nothing uses it.
    unsafe { cu::free_sync(hog) }.unwrap();
    assert!(msg.contains("CUDA out of memory"), "{msg}");
    assert!(msg.contains("storage '"), "{msg}");
    assert!(
        after + (16 << 20) >= before,
        "{} MiB free before the load, {} MiB after it failed",
        before >> 20,
        after >> 20
    );
    // With the memory back, the same bytes load.
    let ckpt = Loader::new()
        .map_location("cuda:0")
        .load_bytes(bytes)
        .unwrap();
    common::assert_no_problems(&all_on_gpu(&ckpt, 0, "after out of memory"));
}
