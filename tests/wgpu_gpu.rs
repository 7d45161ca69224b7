//! GPU tests of the `wgpu` feature, run by `scripts/test-wgpu` (on Mesa's lavapipe in CI, or any
//! real adapter). Without an adapter they FAIL, saying so: they are never skipped.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{compare_fixture, fixture_json, loader_for, root};
use ptload::place::wgpu::{wgpu, WgpuBackend, WgpuBuffer};
use ptload::{Checkpoint, Device, ErrorKind, Loader, MapLocation, StorageData};
use serde_json::Value as Json;

/// wgpu's default adapter, or a panic saying there is none.
fn gpu(limits: Option<wgpu::Limits>) -> (wgpu::Instance, wgpu::Device, wgpu::Queue) {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&Default::default())).unwrap_or_else(|e| {
            panic!("these tests need a wgpu adapter (scripts/test-wgpu installs lavapipe): {e}")
        });
    let descriptor = wgpu::DeviceDescriptor {
        required_limits: limits.unwrap_or_else(|| adapter.limits()),
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&descriptor)).unwrap();
    (instance, device, queue)
}

/// Buffers the caller holds on `instance` now.
fn live_buffers(instance: &wgpu::Instance) -> usize {
    let report = instance.generate_report().expect("a wgpu-core instance");
    report.hub.buffers.num_kept_from_user
}

fn wgpu_buffer(data: &StorageData) -> Option<&WgpuBuffer> {
    data.device_buffer()
        .and_then(|b| b.as_any().downcast_ref::<WgpuBuffer>())
}

/// Every storage is a buffer of its own, padded to 4 bytes, on webgpu.
fn all_on_gpu(ckpt: &Checkpoint, what: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for s in &ckpt.storages {
        match wgpu_buffer(&s.data) {
            Some(b) => {
                let want = s.nbytes().div_ceil(4) * 4;
                if b.buffer().size() != want {
                    problems.push(format!(
                        "{what}: storage {}: buffer of {} bytes, want {want}",
                        s.key,
                        b.buffer().size()
                    ));
                }
                let usage = wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST;
                if b.buffer().usage() != usage {
                    problems.push(format!(
                        "{what}: storage {}: usage {:?}",
                        s.key,
                        b.buffer().usage()
                    ));
                }
            }
            None => problems.push(format!("{what}: storage {} is {:?}", s.key, s.data)),
        }
        if s.device != Device::WebGpu {
            problems.push(format!("{what}: storage {} says {}", s.key, s.device));
        }
    }
    problems
}

#[test]
fn every_fixture_on_webgpu_reads_back_as_torch() {
    let (_instance, device, queue) = gpu(None);
    // The default chunks, and tiny ones that split every record and submit often.
    let backends = [
        Arc::new(WgpuBackend::new(device.clone(), queue.clone())),
        Arc::new(WgpuBackend::new(device, queue).staging(48, 96)),
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
                let mut loader = loader_for(rel, want);
                loader.backend(backend.clone()).map_location("webgpu");
                match loader.load(&path) {
                    Ok(ckpt) => {
                        problems.extend(all_on_gpu(&ckpt, &what));
                        problems.extend(compare_fixture(&ckpt, want, &what));
                    }
                    Err(e) => problems.push(format!("{what}: {e}")),
                }
            }
        }
    }
    assert!(files >= 80, "{files} fixture loads");
    common::assert_no_problems(&problems);
}

#[test]
fn tensors_expose_their_buffer_and_byte_offset() {
    let (_instance, device, queue) = gpu(None);
    let ckpt = Loader::new()
        .map_location("wgpu")
        .wgpu(device, queue)
        .load(root().join("tests/fixtures/zip/views.pt"))
        .unwrap();
    let mut offsets = 0;
    for (path, t) in ckpt.tensors() {
        let b = wgpu_buffer(&t.storage().unwrap().data).unwrap();
        assert!(t.byte_offset() <= b.buffer().size(), "{path}");
        offsets += usize::from(t.byte_offset() > 0);
        assert_eq!(t.device(), Device::WebGpu);
    }
    assert!(offsets > 0, "views.pt has views at an offset");
}

#[test]
fn mixed_mappings_keep_cpu_storages_on_the_host() {
    let (_instance, device, queue) = gpu(None);
    let table = fixture_json("locations.json");
    let rel = "locations/zip_mixed.pt";
    let ckpt = Loader::new()
        .map_location(MapLocation::with(|s, tag| {
            Some(if tag == "cpu" {
                s.cpu()
            } else {
                s.to(Device::WebGpu)
            })
        }))
        .wgpu(device.clone(), queue.clone())
        .load(root().join("tests/fixtures").join(rel))
        .unwrap();
    let mut devices = Vec::new();
    for s in &ckpt.storages {
        devices.push(s.device.to_string());
        match &*s.location {
            "cpu" => assert!(s.data.host_bytes().is_some(), "{}", s.key),
            _ => assert!(wgpu_buffer(&s.data).is_some(), "{}", s.key),
        }
    }
    assert_eq!(devices, ["cpu", "webgpu", "webgpu"]);
    let got: Vec<_> = ckpt.tensors().map(|(_, t)| t.sha256().unwrap()).collect();
    assert_eq!(Json::from(got), table["files"][rel]["sha256"]);
    // A dict mapping sends cuda:1 storages to webgpu.
    let rel = "locations/zip_cuda1.pt";
    let ckpt = Loader::new()
        .map_location(MapLocation::map([("cuda:1", "webgpu")]))
        .wgpu(device, queue)
        .load(root().join("tests/fixtures").join(rel))
        .unwrap();
    common::assert_no_problems(&all_on_gpu(&ckpt, rel));
    let got: Vec<_> = ckpt.tensors().map(|(_, t)| t.sha256().unwrap()).collect();
    assert_eq!(Json::from(got), table["files"][rel]["sha256"]);
}

/// Storage `i` of [`big_checkpoint`]: `len` bytes.
fn big_storage(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|b| {
            (b as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(i as u32 * 977) as u8
        })
        .collect()
}

/// A checkpoint of `count` uint8 storages of `len` bytes each (distinct patterns), in memory.
fn big_checkpoint(count: usize, len: usize) -> Vec<u8> {
    let mut pickle = common::Pickle::new().op(b"(");
    let keys: Vec<String> = (0..count).map(|i| i.to_string()).collect();
    for key in &keys {
        pickle = pickle.storage_at("ByteStorage", key, "cpu", len as i64);
    }
    let pickle = pickle.op(b"t").stop();
    let data: Vec<Vec<u8>> = (0..count).map(|i| big_storage(i, len)).collect();
    let records: Vec<(&str, &[u8])> = keys
        .iter()
        .zip(&data)
        .map(|(k, d)| (k.as_str(), &d[..]))
        .collect();
    common::ZipBuilder::checkpoint(&pickle, &records)
}

#[test]
fn odd_sizes_and_offsets_read_back_exactly() {
    let (_instance, device, queue) = gpu(None);
    // Storages of 5 MiB + 3 bytes: every chunk but the last whole, the last off a 4-byte bound.
    let len = (5 << 20) + 3;
    let ckpt = Loader::new()
        .map_location("webgpu")
        .backend(Arc::new(
            WgpuBackend::new(device, queue).staging(1 << 20, 4 << 20),
        ))
        .load_bytes(big_checkpoint(3, len))
        .unwrap();
    common::assert_no_problems(&all_on_gpu(&ckpt, "3 x 5 MiB + 3"));
    for (i, s) in ckpt.storages.iter().enumerate() {
        let want = big_storage(i, len);
        let buffer = s.data.device_buffer().unwrap();
        let mut back = vec![0u8; len];
        buffer.read_back(0, &mut back).unwrap();
        assert!(back == want, "storage {i} differs");
        for (at, n) in [(1, 6), (len - 5, 5), (len - 1, 1), (4097, 3)] {
            let mut part = vec![0u8; n];
            buffer.read_back(at as u64, &mut part).unwrap();
            assert_eq!(part[..], want[at..at + n], "storage {i} at {at}");
        }
        let err = buffer.read_back(len as u64 - 1, &mut [0u8; 2]).unwrap_err();
        assert!(
            err.to_string().contains("of a 5242883-byte storage"),
            "{err}"
        );
    }
}

#[test]
fn progress_reaches_the_total_in_many_steps() {
    let (_instance, device, queue) = gpu(None);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let ckpt = Loader::new()
        .map_location("webgpu")
        .backend(Arc::new(
            WgpuBackend::new(device, queue).staging(1 << 16, 1 << 18),
        ))
        .on_progress(move |p| log.lock().unwrap().push((p.placed_bytes, p.total_bytes)))
        .load_bytes(big_checkpoint(2, 1 << 20))
        .unwrap();
    let seen = seen.lock().unwrap();
    let total: u64 = ckpt.storages.iter().map(|s| s.nbytes()).sum();
    assert_eq!(total, 2 << 20);
    assert_eq!(seen.len(), 32, "one report per 64 KiB chunk");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    assert_eq!(*seen.last().unwrap(), (total, total));
}

#[test]
fn cancelling_mid_load_leaves_no_buffer_alive() {
    let (instance, device, queue) = gpu(None);
    let before = live_buffers(&instance);
    let cancel = Arc::new(AtomicBool::new(false));
    let placed = Arc::new(AtomicU64::new(0));
    let (flag, count) = (cancel.clone(), placed.clone());
    let bytes = big_checkpoint(4, 1 << 20);
    let err = Loader::new()
        .map_location("webgpu")
        .backend(Arc::new(
            WgpuBackend::new(device.clone(), queue.clone()).staging(1 << 16, 1 << 18),
        ))
        .on_progress(move |p| {
            count.store(p.placed_bytes, Ordering::SeqCst);
            // Part way through the third storage.
            if p.placed_bytes >= (5 << 19) {
                flag.store(true, Ordering::SeqCst);
            }
        })
        .cancel_flag(cancel)
        .load_bytes(bytes.clone())
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Cancelled), "{err}");
    assert_eq!(placed.load(Ordering::SeqCst), 5 << 19);
    assert_eq!(live_buffers(&instance), before, "buffers left alive");
    // The device is still usable: the same bytes load.
    let ckpt = Loader::new()
        .map_location("webgpu")
        .wgpu(device, queue)
        .load_bytes(bytes)
        .unwrap();
    assert_eq!(live_buffers(&instance), before + 4);
    drop(ckpt);
    assert_eq!(live_buffers(&instance), before);
}

#[test]
fn a_bad_record_mid_load_leaves_no_buffer_alive() {
    let (instance, device, queue) = gpu(None);
    let before = live_buffers(&instance);
    // The second storage's record is deflated data that stops short of its declared size.
    let pickle = common::Pickle::new()
        .op(b"(")
        .storage_at("ByteStorage", "0", "cpu", 4096)
        .storage_at("ByteStorage", "1", "cpu", 4096)
        .op(b"t")
        .stop();
    let bytes = common::ZipBuilder::new("archive")
        .add("data.pkl", &pickle)
        .add("data/0", &big_storage(0, 4096))
        .add_entry("archive/data/1", &common::deflate(&[7u8; 1000]), 8, 4096)
        .add("version", b"3\n")
        .finish();
    let err = Loader::new()
        .map_location("webgpu")
        .wgpu(device, queue)
        .load_bytes(bytes)
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("deflate stream holds 1000 bytes"), "{msg}");
    assert_eq!(live_buffers(&instance), before, "buffers left alive");
}

#[test]
fn storages_over_max_buffer_size_are_refused_by_name() {
    let limits = wgpu::Limits {
        max_buffer_size: 1 << 16,
        ..wgpu::Limits::downlevel_defaults()
    };
    let (instance, device, queue) = gpu(Some(limits));
    let before = live_buffers(&instance);
    let err = Loader::new()
        .map_location("webgpu")
        .wgpu(device.clone(), queue.clone())
        .load_bytes(big_checkpoint(2, (1 << 16) + 1))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "<memory>: placing storage '0' on webgpu: the storage is 65537 bytes, over the device's max_buffer_size \
         of 65536 bytes"
    );
    assert_eq!(live_buffers(&instance), before);
    // At the limit it fits.
    let ckpt = Loader::new()
        .map_location("webgpu")
        .wgpu(device, queue)
        .load_bytes(big_checkpoint(2, 1 << 16))
        .unwrap();
    common::assert_no_problems(&all_on_gpu(&ckpt, "at the limit"));
}

#[test]
fn cli_digests_what_it_reads_back_from_the_gpu() {
    gpu(None);
    let expected = fixture_json("expected.json");
    for rel in [
        "zip/dtypes.pt",
        "zip/big_endian.pt",
        "zip/deflated.pt",
        "zip/views.pt",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ptload"))
            .args(["inspect", "--json", "--sha256", "--map-location", "webgpu"])
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
            assert_eq!(g["device"], "webgpu", "{rel}: {}", w["path"]);
        }
    }
}

#[test]
fn cli_without_an_adapter_fails_in_one_line() {
    // Vulkan only, with no driver to find: no adapter at all.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ptload"))
        .args(["inspect", "--sha256", "--map-location", "webgpu"])
        .arg(root().join("tests/fixtures/zip/dtypes.pt"))
        .env("WGPU_BACKEND", "vulkan")
        .env("VK_ICD_FILENAMES", "/nonexistent.json")
        .env("VK_DRIVER_FILES", "/nonexistent.json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("no wgpu adapter is available"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every fixture of tests/fixtures/make_gpu_convert.py converted on the GPU to float16 and float32,
/// read back, against torch's `.to()` digests: with the device's own binding size (one dispatch)
/// and with 4 KiB bindings (hundreds of dispatches).
#[test]
fn gpu_conversion_is_bit_exact_with_torch() {
    use ptload::place::wgpu_convert::Converter;
    use ptload::{DeviceBuffer, Dtype};
    let small = wgpu::Limits {
        max_storage_buffer_binding_size: 4096,
        ..wgpu::Limits::downlevel_defaults()
    };
    let table = fixture_json("expected_gpu_convert.json");
    let mut problems = Vec::new();
    for limits in [None, Some(small)] {
        let (_instance, device, queue) = gpu(limits.clone());
        let converter = Converter::new(&device, &queue).unwrap();
        for (rel, want) in table["files"].as_object().unwrap() {
            let ckpt = Loader::new()
                .map_location("webgpu")
                .wgpu(device.clone(), queue.clone())
                .load(root().join("tests/fixtures").join(rel))
                .unwrap();
            let x = ckpt.tensor("x").unwrap();
            let source = wgpu_buffer(&x.storage().unwrap().data).unwrap();
            assert_eq!(source.dtype().name(), want["dtype"]);
            for to in [Dtype::Float16, Dtype::Float32] {
                let what = format!(
                    "{rel} to {} (small bindings: {})",
                    to.name(),
                    limits.is_some()
                );
                let out = match converter.convert(source, to) {
                    Ok(out) => out,
                    Err(e) => {
                        problems.push(format!("{what}: {e}"));
                        continue;
                    }
                };
                assert_eq!(out.dtype(), to);
                let numel = want["numel"].as_u64().unwrap();
                assert_eq!(out.nbytes(), numel * to.element_size() as u64, "{what}");
                let mut back = vec![0u8; out.nbytes() as usize];
                out.read_back(0, &mut back).unwrap();
                if sha256_hex(&back) != want[to.name()] {
                    problems.push(format!("{what}: digest differs from torch's"));
                }
            }
        }
    }
    common::assert_no_problems(&problems);
    // Other dtypes are refused, naming both.
    let (_instance, device, queue) = gpu(None);
    let ckpt = Loader::new()
        .map_location("webgpu")
        .wgpu(device, queue)
        .load(root().join("tests/fixtures/zip/dtypes.pt"))
        .unwrap();
    let int = ckpt
        .storages
        .iter()
        .find(|s| s.dtype == Dtype::Int32)
        .expect("dtypes.pt has an int32 storage");
    let err = wgpu_buffer(&int.data)
        .unwrap()
        .to_dtype(Dtype::Float16)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("converting int32 to float16 on the GPU is not supported"),
        "{err}"
    );
}
