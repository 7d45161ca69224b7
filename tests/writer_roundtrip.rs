//! The writers against the loader (issue 15, item 4): for every torch-made fixture and for
//! generated state dicts (random dtypes, shapes, strides, offsets, shared storages),
//! `load(save(load(x)))` holds the same tensors as `load(x)` — dtype, shape, stride, offset,
//! elements, and which paths share a storage — and the `.safetensors` we write reads back in the
//! `safetensors` crate with identical bytes under each path.

mod common;

use std::collections::HashMap;

use common::{fixture_json, loader_for, root, Pickle, ZipBuilder};
use ptload::{Checkpoint, Writer};

/// What `save` then `load` changed, path by path (empty when nothing did).
fn pt_round_trip(ckpt: &Checkpoint, what: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let (bytes, report) = match Writer::new().skip_unsupported(true).to_pt_bytes(ckpt) {
        Ok(out) => out,
        Err(e) => return vec![format!("{what}: writing .pt: {e}")],
    };
    let back = match ptload::load_bytes(bytes) {
        Ok(back) => back,
        Err(e) => return vec![format!("{what}: the .pt we wrote does not load: {e}")],
    };
    let mut shared: HashMap<Option<usize>, Option<usize>> = HashMap::new();
    for path in &report.written {
        let (Some(a), Some(b)) = (ckpt.tensor(path), back.tensor(path)) else {
            problems.push(format!("{what}: {path} is missing after the round trip"));
            continue;
        };
        let ours = (a.dtype(), a.shape(), a.stride(), a.storage_offset());
        let theirs = (b.dtype(), b.shape(), b.stride(), b.storage_offset());
        if ours != theirs {
            problems.push(format!("{what}: {path}: {ours:?} became {theirs:?}"));
        }
        if a.to_contiguous_bytes().ok() != b.to_contiguous_bytes().ok() {
            problems.push(format!("{what}: {path}: elements differ"));
        }
        // Two paths share a storage after the round trip exactly when they did before.
        let before = a.meta().storage;
        let after = b.meta().storage;
        if *shared.entry(before).or_insert(after) != after {
            problems.push(format!("{what}: {path}: storage sharing changed"));
        }
    }
    let distinct_before = shared.len();
    let mut after: Vec<_> = shared.values().collect();
    after.sort();
    after.dedup();
    if after.len() != distinct_before {
        problems.push(format!(
            "{what}: distinct storages were merged by the round trip"
        ));
    }
    problems
}

/// The `.safetensors` we write, read by the `safetensors` crate: each written path holds the
/// tensor's shape and C-order little-endian elements.
fn safetensors_round_trip(ckpt: &Checkpoint, what: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let (bytes, report) = match Writer::new()
        .skip_unsupported(true)
        .to_safetensors_bytes(ckpt)
    {
        Ok(out) => out,
        Err(e) => return vec![format!("{what}: writing .safetensors: {e}")],
    };
    let file = match safetensors::SafeTensors::deserialize(&bytes) {
        Ok(file) => file,
        Err(e) => {
            return vec![format!(
                "{what}: the safetensors crate refuses our file: {e}"
            )]
        }
    };
    for path in &report.written {
        let t = ckpt.tensor(path).unwrap();
        let Ok(view) = file.tensor(path) else {
            problems.push(format!("{what}: {path} is not in the .safetensors"));
            continue;
        };
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        if shape != t.shape() {
            problems.push(format!("{what}: {path}: shape {shape:?}"));
        }
        if Some(view.data()) != t.to_contiguous_bytes().ok().as_deref() {
            problems.push(format!("{what}: {path}: bytes differ"));
        }
    }
    problems
}

/// Every fixture torch made (and the example), as `tests/fixtures.rs` loads them.
fn fixtures() -> Vec<(String, Checkpoint)> {
    let mut out = Vec::new();
    for (table, dir) in [
        ("expected.json", "tests/fixtures"),
        ("expected_formats.json", "tests/fixtures"),
    ] {
        let json = fixture_json(table);
        for (rel, want) in json["files"].as_object().unwrap() {
            let ckpt = loader_for(rel, want)
                .load(root().join(dir).join(rel))
                .unwrap_or_else(|e| panic!("{rel}: {e}"));
            out.push((rel.clone(), ckpt));
        }
    }
    out.push((
        "examples/tiny_convnet.pt".into(),
        ptload::load(root().join("examples/tiny_convnet.pt")).unwrap(),
    ));
    out
}

#[test]
fn every_fixture_survives_save_then_load() {
    let mut problems = Vec::new();
    let mut written = 0;
    for (rel, ckpt) in fixtures() {
        problems.extend(pt_round_trip(&ckpt, &rel));
        written += ckpt.tensors().count();
    }
    assert!(written > 300, "only {written} tensors were checked");
    common::assert_no_problems(&problems);
}

#[test]
fn every_fixture_reads_back_in_the_safetensors_crate() {
    let mut problems = Vec::new();
    for (rel, ckpt) in fixtures() {
        problems.extend(safetensors_round_trip(&ckpt, &rel));
    }
    common::assert_no_problems(&problems);
}

/// xorshift64*: a fixed sequence, so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// (storage class, bytes per element, whether elements must be 0/1)
const CLASSES: &[(&str, u64, bool)] = &[
    ("FloatStorage", 4, false),
    ("DoubleStorage", 8, false),
    ("HalfStorage", 2, false),
    ("BFloat16Storage", 2, false),
    ("ByteStorage", 1, false),
    ("CharStorage", 1, false),
    ("ShortStorage", 2, false),
    ("IntStorage", 4, false),
    ("LongStorage", 8, false),
    ("BoolStorage", 1, true),
    ("ComplexFloatStorage", 8, false),
];

/// A zip checkpoint of `{name: tensor}` over a few storages, each viewed by one to four
/// tensors with random shapes, strides (broadcast zeros included) and offsets inside it.
fn generated_state_dict(rng: &mut Rng) -> Vec<u8> {
    let mut pickle = Pickle::new().op(b"}");
    let mut records = Vec::new();
    let storages = 1 + rng.below(4);
    let mut n = 0;
    for key in 0..storages {
        let (class, size, boolean) = CLASSES[rng.below(CLASSES.len() as u64) as usize];
        let numel = rng.below(48);
        let bytes: Vec<u8> = (0..numel * size)
            .map(|_| {
                if boolean {
                    (rng.next() & 1) as u8
                } else {
                    rng.next() as u8
                }
            })
            .collect();
        records.push((key.to_string(), bytes));
        for _ in 0..1 + rng.below(4) {
            let rank = rng.below(4) as usize;
            let mut shape: Vec<i64> = (0..rank).map(|_| rng.below(5) as i64).collect();
            let stride: Vec<i64> = (0..rank).map(|_| rng.below(6) as i64).collect();
            // Shrink the view until it fits in the storage.
            loop {
                let extent: i64 = if shape.contains(&0) {
                    0
                } else {
                    1 + shape
                        .iter()
                        .zip(&stride)
                        .map(|(d, s)| (d - 1) * s)
                        .sum::<i64>()
                };
                if extent <= numel as i64 {
                    let offset = rng.below(numel - extent as u64 + 1) as i64;
                    pickle = pickle
                        .str(&format!("t{n}"))
                        .tensor(
                            class,
                            &key.to_string(),
                            numel as i64,
                            offset,
                            &shape,
                            &stride,
                        )
                        .op(b"s");
                    n += 1;
                    break;
                }
                if rank == 0 {
                    break; // a scalar does not fit in an empty storage
                }
                let d = rng.below(rank as u64) as usize;
                shape[d] -= 1;
            }
        }
    }
    let pickle = pickle.stop();
    let records: Vec<(&str, &[u8])> = records
        .iter()
        .map(|(k, b)| (k.as_str(), b.as_slice()))
        .collect();
    ZipBuilder::checkpoint(&pickle, &records)
}

#[test]
fn generated_state_dicts_survive_save_then_load() {
    let mut rng = Rng(0x005E_ED0F_7E57);
    let mut problems = Vec::new();
    let mut views = 0;
    for case in 0..300 {
        let file = generated_state_dict(&mut rng);
        let ckpt = ptload::load_bytes(file).unwrap_or_else(|e| panic!("case {case}: {e}"));
        views += ckpt.tensors().count();
        problems.extend(pt_round_trip(&ckpt, &format!("case {case}")));
        problems.extend(safetensors_round_trip(&ckpt, &format!("case {case}")));
    }
    assert!(views > 600, "only {views} views were generated");
    common::assert_no_problems(&problems);
}

/// Found by the writer_roundtrip fuzzer: an expanded view of a few bytes would be written to a
/// `.safetensors` as 2 GB of copies. Each tensor the writer materializes is held to
/// `Limits::max_tensor_bytes`, as `to_contiguous_bytes` is.
#[test]
fn an_expanded_view_cannot_make_a_huge_safetensors() {
    let data = common::fixture("oracle/writer/expanded-view.bin");
    let mut loader = ptload::Loader::new();
    loader.limits(ptload::Limits::default().with_max_tensor_bytes(16 << 20));
    let ckpt = loader.load_bytes(data.clone()).unwrap();
    let e = Writer::new()
        .skip_unsupported(true)
        .to_safetensors_bytes(&ckpt)
        .unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ptload::ErrorKind::LimitExceeded {
                limit: "max_tensor_bytes",
                ..
            }
        ),
        "{e}"
    );
    // The fuzz target's own round trip now passes on it.
    ptload::fuzzing::write_round_trip(&data);
}

/// Found by the writer_roundtrip fuzzer: a state-dict key `__metadata__` would clash with the
/// safetensors header's own; it is refused by name (a `.pt` keeps it).
#[test]
fn a_tensor_named_metadata_is_refused_for_safetensors() {
    let data = common::fixture("oracle/writer/metadata-key.bin");
    let mut loader = ptload::Loader::new();
    loader.limits(ptload::fuzzing::limits());
    let ckpt = loader.load_bytes(data.clone()).unwrap();
    assert!(ckpt.tensor("__metadata__").is_some());
    let e = Writer::new().to_safetensors_bytes(&ckpt).unwrap_err();
    assert!(
        e.to_string().contains("the name __metadata__ is reserved"),
        "{e}"
    );
    let (pt, _) = Writer::new().to_pt_bytes(&ckpt).unwrap();
    assert!(ptload::load_bytes(pt)
        .unwrap()
        .tensor("__metadata__")
        .is_some());
    ptload::fuzzing::write_round_trip(&data);
}
