//! The staged pipeline that CUDA placement runs on, tested without a GPU (adding to
//! `tests/placement.rs`): a backend claiming `cuda` places through `place_staged` over the
//! host-memory stand-in (`HostStaging`), wrapped to count allocations, with one ring or several
//! filled in parallel (`place_parallel`, as CUDA does). Every fixture comes out byte for byte as
//! the CPU placer gives it and as torch saw it, whatever the rings' shape (one slot, records
//! split across slots, whole records per slot; deflated, big-endian and unaligned legacy
//! records converted on the way), and a bad record or a failed copy part way frees every
//! allocation made.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{compare, fixture_json, root};
use ptload::place::parallel::place_parallel;
use ptload::place::pipeline::{HostBuffer, HostStaging, Staging};
use ptload::place::{Backend, Control, PlacementJob, Placer, RecordReader, StorageData};
use ptload::{Checkpoint, Device, ErrorKind, Loader, StringEncoding};
use serde_json::Value as Json;

/// What the stand-in saw.
#[derive(Debug, Default)]
struct Stats {
    live: AtomicUsize,
    allocated: AtomicUsize,
    uploads: AtomicUsize,
    max_busy: AtomicUsize,
}

/// `HostStaging`, counting allocations, optionally failing one storage's first upload.
struct Counting {
    inner: HostStaging,
    stats: Arc<Stats>,
    fail_upload_of: Option<usize>,
    current: Option<PlacementJob>,
}

/// A counted stand-in allocation.
struct Counted {
    inner: Option<HostBuffer>,
    stats: Arc<Stats>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.stats.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Staging for Counting {
    type Buffer = Counted;

    fn slot_count(&self) -> usize {
        self.inner.slot_count()
    }

    fn slot_len(&self) -> usize {
        self.inner.slot_len()
    }

    fn allocate(&mut self, job: &PlacementJob) -> ptload::Result<Counted> {
        let inner = self.inner.allocate(job)?;
        self.stats.live.fetch_add(1, Ordering::SeqCst);
        self.stats.allocated.fetch_add(1, Ordering::SeqCst);
        self.current = Some(job.clone());
        Ok(Counted {
            inner: Some(inner),
            stats: self.stats.clone(),
        })
    }

    fn slot(&mut self, slot: usize) -> ptload::Result<&mut [u8]> {
        self.inner.slot(slot)
    }

    fn upload(
        &mut self,
        slot: usize,
        len: usize,
        dst: &mut Counted,
        dst_offset: u64,
    ) -> ptload::Result<()> {
        if let Some(job) = &self.current {
            if self.fail_upload_of == Some(job.index) {
                return Err(job.error("the copy failed (simulated)"));
            }
        }
        self.stats.uploads.fetch_add(1, Ordering::SeqCst);
        let buffer = dst.inner.as_mut().expect("uploaded after into_data");
        self.inner.upload(slot, len, buffer, dst_offset)
    }

    fn finish(&mut self) -> ptload::Result<()> {
        self.inner.finish()?;
        self.stats
            .max_busy
            .fetch_max(self.inner.max_busy, Ordering::SeqCst);
        Ok(())
    }

    fn storage_data(
        &mut self,
        mut buffer: Counted,
        job: &PlacementJob,
    ) -> ptload::Result<StorageData> {
        let inner = buffer.inner.take().expect("placed twice");
        self.inner.storage_data(inner, job)
    }
}

/// A backend that claims every CUDA device and places through the stand-in.
#[derive(Debug, Default)]
struct StandIn {
    slots: usize,
    slot_len: usize,
    /// Rings, each filled by its own thread (every load split into this many groups).
    threads: usize,
    stats: Arc<Stats>,
    fail_allocation_of: Option<usize>,
    fail_upload_of: Option<usize>,
}

struct StandInPlacer(Vec<Counting>);

impl Placer for StandInPlacer {
    fn place_all(
        &mut self,
        reader: &RecordReader<'_>,
        jobs: &[PlacementJob],
        control: &mut Control<'_>,
    ) -> ptload::Result<Vec<StorageData>> {
        place_parallel(&mut self.0, reader, jobs, control, 1)
    }
}

impl Backend for StandIn {
    fn check(&self, device: &Device) -> Option<ptload::Result<Device>> {
        match device {
            Device::Cuda(index) => Some(Ok(Device::Cuda(Some(index.unwrap_or(0))))),
            _ => None,
        }
    }

    fn placer(&self, _device: &Device) -> ptload::Result<Box<dyn Placer + '_>> {
        let rings = (0..self.threads.max(1))
            .map(|_| {
                let mut inner = HostStaging::new(self.slots, self.slot_len);
                inner.fail_allocation_of = self.fail_allocation_of;
                Counting {
                    inner,
                    stats: self.stats.clone(),
                    fail_upload_of: self.fail_upload_of,
                    current: None,
                }
            })
            .collect();
        Ok(Box::new(StandInPlacer(rings)))
    }
}

fn stand_in(slots: usize, slot_len: usize, threads: usize) -> StandIn {
    StandIn {
        slots,
        slot_len,
        threads,
        ..StandIn::default()
    }
}

fn loader_for(rel: &str, want: &Json) -> Loader {
    let mut loader = Loader::new();
    loader.weights_only(!rel.starts_with("modules/"));
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

#[test]
fn every_fixture_streams_through_any_ring_as_torch_and_the_cpu_placer_see_it() {
    // One slot of 16 bytes (every record split, nothing overlapped) up to a ring of 1 MiB
    // slots (whole records per slot); one fill thread, or several (CUDA's parallel groups).
    let rings = [
        (1, 16, 1),
        (2, 48, 1),
        (3, 4096, 1),
        (4, 1 << 20, 1),
        (2, 48, 3),
        (1, 16, 4),
    ];
    let mut problems = Vec::new();
    let mut loads = 0;
    for (slots, slot_len, threads) in rings {
        let backend = Arc::new(stand_in(slots, slot_len, threads));
        for table in ["expected.json", "expected_formats.json"] {
            let expected = fixture_json(table);
            for (rel, want) in expected["files"].as_object().unwrap() {
                let what = format!("{rel} through {threads} x {slots} x {slot_len}");
                let path = root().join("tests/fixtures").join(rel);
                let staged = loader_for(rel, want)
                    .backend(backend.clone())
                    .map_location("cuda:0")
                    .load(&path);
                let cpu = loader_for(rel, want).map_location("cpu").load(&path);
                let (staged, cpu) = match (staged, cpu) {
                    (Ok(s), Ok(c)) => (s, c),
                    (s, c) => {
                        problems.push(format!("{what}: {:?} / cpu {:?}", s.err(), c.err()));
                        continue;
                    }
                };
                loads += 1;
                problems.extend(digests_by_path(&staged, want, &what));
                if table == "expected.json" {
                    problems.extend(compare(&staged, want, &what));
                }
                for (s, c) in staged.storages.iter().zip(&cpu.storages) {
                    if s.device != Device::Cuda(Some(0)) && s.nbytes() > 0 {
                        problems.push(format!("{what}: storage {} on {}", s.key, s.device));
                    }
                    if s.data.host_bytes() != c.data.host_bytes() {
                        problems.push(format!("{what}: storage {} differs from cpu", s.key));
                    }
                }
            }
        }
        let stats = &backend.stats;
        assert_eq!(stats.live.load(Ordering::SeqCst), 0, "{slots} x {slot_len}");
        assert!(stats.uploads.load(Ordering::SeqCst) > 0);
        assert!(stats.max_busy.load(Ordering::SeqCst) <= slots);
        if slots > 1 {
            // Copies overlapped filling: more than one slot was busy at once.
            assert!(
                stats.max_busy.load(Ordering::SeqCst) > 1,
                "{slots} x {slot_len}"
            );
        }
    }
    assert!(loads >= 6 * 40, "{loads} loads");
    common::assert_no_problems(&problems);
}

/// Three float32 storages of 64 elements, all deflated; storage 2's stream is `third`.
fn three_storages(third: Option<&[u8]>) -> Vec<u8> {
    let pickle = common::Pickle::new()
        .op(b"(")
        .storage_at("FloatStorage", "0", "cuda:0", 64)
        .storage_at("FloatStorage", "1", "cuda:0", 64)
        .storage_at("FloatStorage", "2", "cuda:0", 64)
        .op(b"t")
        .stop();
    let data: Vec<u8> = (0..=255).collect();
    let good = common::deflate(&data);
    common::ZipBuilder::new("archive")
        .add("data.pkl", &pickle)
        .add_entry("archive/data/0", &good, 8, 256)
        .add_entry("archive/data/1", &good, 8, 256)
        .add_entry("archive/data/2", third.unwrap_or(&good), 8, 256)
        .add("version", b"3\n")
        .finish()
}

#[test]
fn the_three_storages_load() {
    let backend = Arc::new(stand_in(2, 64, 1));
    let ckpt = Loader::new()
        .backend(backend.clone())
        .load_bytes(three_storages(None))
        .unwrap();
    let want: Vec<u8> = (0..=255).collect();
    for s in &ckpt.storages {
        assert_eq!(s.data.host_bytes(), Some(&want[..]), "{}", s.key);
    }
    assert_eq!(backend.stats.allocated.load(Ordering::SeqCst), 3);
    assert_eq!(backend.stats.live.load(Ordering::SeqCst), 0);
}

/// Every allocation freed; `allocated` of them made (at least, with parallel groups, which may
/// allocate before they see another group fail).
fn assert_all_freed(backend: &StandIn, allocated: usize) {
    let made = backend.stats.allocated.load(Ordering::SeqCst);
    if backend.threads > 1 {
        // Groups run side by side: once one fails, the others stop wherever they are, maybe
        // before allocating anything. What matters is that nothing stays alive.
        assert!(
            (1..=3).contains(&made),
            "{made} allocations, expected 1 to 3"
        );
    } else {
        assert_eq!(made, allocated);
    }
    assert_eq!(
        backend.stats.live.load(Ordering::SeqCst),
        0,
        "a buffer leaked"
    );
}

#[test]
fn a_bad_record_part_way_frees_every_allocation() {
    for threads in [1, 3] {
        let backend = Arc::new(stand_in(2, 64, threads));
        let e = Loader::new()
            .backend(backend.clone())
            .load_bytes(three_storages(Some(b"\xff\xfe\xfd\xfc not deflate")))
            .unwrap_err();
        assert!(e.to_string().contains("archive/data/2"), "{e}");
        assert_all_freed(&backend, 3);
    }
}

#[test]
fn a_failed_copy_part_way_frees_every_allocation() {
    for threads in [1, 3] {
        let backend = Arc::new(StandIn {
            fail_upload_of: Some(1),
            ..stand_in(2, 64, threads)
        });
        let e = Loader::new()
            .backend(backend.clone())
            .load_bytes(three_storages(None))
            .unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Placement { storage, .. } if storage == "1"),
            "{e}"
        );
        assert_all_freed(&backend, 2);
    }
}
