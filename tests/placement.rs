//! The placement contract shared by every device placer (`place/`): a stand-in device backend
//! (host memory behind `Backend`, `Placer`, `DeviceBuffer` and the staged pipeline of
//! `place::pipeline`) receives every fixture and must give back torch's bytes through
//! read-back; mixed mappings, progress, cancellation and cleanup after a failure.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{compare, compare_fixture, fixture, fixture_json, loader_for, root};
use ptload::place::pipeline::{place_staged, HostStaging, Staging};
use ptload::place::{
    Backend, Control, DeviceBuffer, PlacementJob, Placer, RecordReader, StorageData,
};
use ptload::{Device, ErrorKind, Loader, MapLocation, Result};

/// A "device" made of host memory: the WebGPU device name, claimed by a test backend.
#[derive(Debug)]
struct TestBackend {
    slots: usize,
    slot_len: usize,
    live: Arc<AtomicUsize>,
    fail_allocation_of: Option<usize>,
    placer_calls: Arc<AtomicUsize>,
}

impl TestBackend {
    fn new(slots: usize, slot_len: usize) -> Self {
        TestBackend {
            slots,
            slot_len,
            live: Arc::default(),
            fail_allocation_of: None,
            placer_calls: Arc::default(),
        }
    }
}

#[derive(Debug)]
struct TestBuffer {
    bytes: Vec<u8>,
    live: Arc<AtomicUsize>,
}

impl Drop for TestBuffer {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl DeviceBuffer for TestBuffer {
    fn device(&self) -> Device {
        Device::WebGpu
    }
    fn nbytes(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_back(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let start = offset as usize;
        out.copy_from_slice(&self.bytes[start..start + out.len()]);
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// HostStaging whose finished buffers become device storages counted in `live`.
struct TestStaging {
    inner: HostStaging,
    live: Arc<AtomicUsize>,
}

impl Staging for TestStaging {
    type Buffer = <HostStaging as Staging>::Buffer;
    fn slot_count(&self) -> usize {
        self.inner.slot_count()
    }
    fn slot_len(&self) -> usize {
        self.inner.slot_len()
    }
    fn allocate(&mut self, job: &PlacementJob) -> Result<Self::Buffer> {
        self.inner.allocate(job)
    }
    fn slot(&mut self, slot: usize) -> Result<&mut [u8]> {
        self.inner.slot(slot)
    }
    fn upload(
        &mut self,
        slot: usize,
        len: usize,
        dst: &mut Self::Buffer,
        dst_offset: u64,
    ) -> Result<()> {
        self.inner.upload(slot, len, dst, dst_offset)
    }
    fn finish(&mut self) -> Result<()> {
        self.inner.finish()
    }
    fn storage_data(&mut self, buffer: Self::Buffer, job: &PlacementJob) -> Result<StorageData> {
        // The staging buffer is freed here; its bytes become the device storage.
        match self.inner.storage_data(buffer, job)? {
            StorageData::Owned(bytes) => {
                self.live.fetch_add(1, Ordering::SeqCst);
                Ok(StorageData::Device(Arc::new(TestBuffer {
                    bytes,
                    live: self.live.clone(),
                })))
            }
            other => Ok(other),
        }
    }
}

struct TestPlacer<'b> {
    backend: &'b TestBackend,
}

impl Placer for TestPlacer<'_> {
    fn place_all(
        &mut self,
        reader: &RecordReader<'_>,
        jobs: &[PlacementJob],
        control: &mut Control<'_>,
    ) -> Result<Vec<StorageData>> {
        let mut inner = HostStaging::new(self.backend.slots, self.backend.slot_len);
        inner.fail_allocation_of = self.backend.fail_allocation_of;
        let mut staging = TestStaging {
            inner,
            live: self.backend.live.clone(),
        };
        let placed = place_staged(&mut staging, reader, jobs, control);
        assert!(staging.inner.max_busy <= self.backend.slots);
        // Whether it succeeded or failed, no in-flight allocation may outlive the call.
        self.backend
            .live
            .fetch_add(staging.inner.live_buffers(), Ordering::SeqCst);
        placed
    }
}

impl Backend for TestBackend {
    fn check(&self, device: &Device) -> Option<Result<Device>> {
        (*device == Device::WebGpu).then_some(Ok(Device::WebGpu))
    }
    fn placer(&self, _device: &Device) -> Result<Box<dyn Placer + '_>> {
        self.placer_calls.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(TestPlacer { backend: self }))
    }
}

/// (file, expected) for every fixture torch made, of every format.
fn fixtures() -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for json in ["expected.json", "expected_formats.json"] {
        let expected = fixture_json(json);
        for (rel, want) in expected["files"].as_object().unwrap() {
            out.push((rel.clone(), want.clone()));
        }
    }
    assert!(out.len() >= 40, "only {} fixtures", out.len());
    out
}

#[test]
fn every_fixture_placed_on_a_staged_device_reads_back_as_torch_saw_it() {
    let mut problems = Vec::new();
    // Slots smaller than most records, so records span many slots and the ring wraps.
    for (slots, slot_len) in [(3, 16), (2, 4096)] {
        let backend = Arc::new(TestBackend::new(slots, slot_len));
        for (rel, want) in fixtures() {
            let path = root().join("tests/fixtures").join(&rel);
            let ckpt = loader_for(&rel, &want)
                .backend(backend.clone())
                .map_location("webgpu")
                .load(&path);
            match ckpt {
                Ok(ckpt) => {
                    for s in &ckpt.storages {
                        if s.device != Device::WebGpu {
                            problems.push(format!("{rel}: storage {} on {}", s.key, s.device));
                        }
                    }
                    problems.extend(compare_fixture(&ckpt, &want, &rel));
                }
                Err(e) => problems.push(format!("{rel}: {e}")),
            }
        }
        assert_eq!(backend.live.load(Ordering::SeqCst), 0, "buffers leaked");
    }
    common::assert_no_problems(&problems);
}

#[test]
fn one_placer_per_device_gets_all_its_storages_and_mixed_mappings_split() {
    let backend = Arc::new(TestBackend::new(2, 64));
    let path = root().join("tests/fixtures/zip/state_dict.pt");
    let to_gpu = Arc::new(Mutex::new(Vec::new()));
    let seen = to_gpu.clone();
    let ckpt = Loader::new()
        .backend(backend.clone())
        .map_location(MapLocation::with(move |info, _tag| {
            let storage = info;
            // Every other storage to the device, the rest to the host.
            let gpu = storage.key.parse::<u64>().unwrap_or(0) % 2 == 0;
            if gpu {
                seen.lock().unwrap().push(storage.key.clone());
            }
            Some(storage.to(if gpu { Device::WebGpu } else { Device::Cpu }))
        }))
        .load(&path)
        .unwrap();
    assert_eq!(backend.placer_calls.load(Ordering::SeqCst), 1);
    let to_gpu = to_gpu.lock().unwrap();
    assert!(!to_gpu.is_empty());
    let mut on_cpu = 0;
    for s in &ckpt.storages {
        let want = if to_gpu.contains(&s.key) {
            Device::WebGpu
        } else {
            on_cpu += 1;
            Device::Cpu
        };
        assert_eq!(s.device, want, "storage {}", s.key);
        assert_eq!(s.data.device_buffer().is_some(), want == Device::WebGpu);
    }
    assert!(on_cpu > 0);
    let expected = fixture_json("expected.json");
    common::assert_no_problems(&compare(
        &ckpt,
        &expected["files"]["zip/state_dict.pt"],
        "mixed",
    ));
    drop(ckpt);
    assert_eq!(backend.live.load(Ordering::SeqCst), 0);
}

#[test]
fn a_failure_mid_load_names_the_storage_and_frees_everything() {
    let mut backend = TestBackend::new(2, 32);
    backend.fail_allocation_of = Some(3);
    let backend = Arc::new(backend);
    let err = Loader::new()
        .backend(backend.clone())
        .map_location("webgpu")
        .load_bytes(fixture("zip/state_dict.pt"))
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Placement { storage, device, .. } if storage == "3" && device == "webgpu"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "<memory>: placing storage '3' on webgpu: out of memory (simulated)"
    );
    assert_eq!(backend.live.load(Ordering::SeqCst), 0);
}

#[test]
fn progress_counts_every_byte_and_cancellation_frees_what_was_placed() {
    let bytes = fixture("zip/state_dict.pt");
    let total: u64 = ptload::load_bytes(bytes.clone())
        .unwrap()
        .storages
        .iter()
        .map(|s| s.nbytes())
        .sum();
    let backend = Arc::new(TestBackend::new(2, 32));
    let placed = Arc::new(AtomicU64::new(0));
    let reports = Arc::new(AtomicU64::new(0));
    let (p, r) = (placed.clone(), reports.clone());
    Loader::new()
        .backend(backend.clone())
        .map_location("webgpu")
        .on_progress(move |progress| {
            assert_eq!(progress.total_bytes, total);
            p.store(progress.placed_bytes, Ordering::SeqCst);
            r.fetch_add(1, Ordering::SeqCst);
        })
        .load_bytes(bytes.clone())
        .unwrap();
    assert_eq!(placed.load(Ordering::SeqCst), total);
    assert!(reports.load(Ordering::SeqCst) > 2);

    // Cancel once a third of the bytes are placed.
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let err = Loader::new()
        .backend(backend.clone())
        .map_location("webgpu")
        .cancel_flag(cancel.clone())
        .on_progress(move |progress| {
            if progress.placed_bytes * 3 >= progress.total_bytes {
                flag.store(true, Ordering::SeqCst);
            }
        })
        .load_bytes(bytes)
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Cancelled), "{err:?}");
    assert_eq!(backend.live.load(Ordering::SeqCst), 0);
}

#[test]
fn devices_no_backend_claims_keep_torchs_messages() {
    let err = Loader::new()
        .map_location("webgpu")
        .load_bytes(fixture("zip/state_dict.pt"))
        .unwrap_err();
    assert!(err.to_string().contains("no WebGPU placer"), "{err}");
    let err = Loader::new()
        .backend(Arc::new(TestBackend::new(1, 16)))
        .map_location("cuda:0")
        .load_bytes(fixture("zip/state_dict.pt"))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("torch.cuda.is_available() is False"),
        "{err}"
    );
}
