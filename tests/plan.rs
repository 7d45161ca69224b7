//! `Loader::plan` over a partial source, as the browser reads a `Blob` by slices: only the
//! tail, the directory, local headers and small records are loaded — never a tensor's bytes —
//! in a handful of rounds, and the plan equals the one made from the whole file.

mod common;

use common::{fixture_json, root};
use ptload::source::{ByteSource, SparseBytes};
use ptload::{ErrorKind, Loader};

/// Plans `file` from a sparse copy; returns the plan, the rounds and the loaded ranges.
fn plan_sparse(file: &[u8]) -> (ptload::Plan, usize, Vec<(u64, u64)>) {
    match plan_sparse_result(file) {
        (Ok(plan), rounds, loaded) => (plan, rounds, loaded),
        (Err(e), ..) => panic!("{e}"),
    }
}

/// As [`plan_sparse`], with the first error that is not a request for bytes.
fn plan_sparse_result(
    file: &[u8],
) -> (Result<ptload::Plan, ptload::Error>, usize, Vec<(u64, u64)>) {
    let len = file.len() as u64;
    let mut sparse = SparseBytes::new(len);
    let tail = len.min(65_557 + 22 + 76);
    let mut loaded = vec![(len - tail, tail)];
    sparse.insert(len - tail, file[(len - tail) as usize..].to_vec());
    // The first bytes, for sniffing.
    let head = len.min(262);
    sparse.insert(0, file[..head as usize].to_vec());
    loaded.push((0, head));
    for round in 1..=10 {
        match Loader::new().plan("<sparse>", &sparse) {
            Ok(plan) => return (Ok(plan), round, loaded),
            Err(e) => match e.kind() {
                ErrorKind::NeedBytes { ranges } => {
                    for &(offset, n) in ranges {
                        sparse.insert(
                            offset,
                            file[offset as usize..(offset + n) as usize].to_vec(),
                        );
                        loaded.push((offset, n));
                    }
                }
                _ => return (Err(e), round, loaded),
            },
        }
    }
    panic!("no plan after 10 rounds");
}

/// A zip checkpoint of four 256 KiB storages (`a`..`d`): far more than the 64 KiB tail window.
fn large_zip() -> Vec<u8> {
    let n = 65_536i64;
    let mut p = common::Pickle::new().op(b"}(");
    for (i, key) in ["a", "b", "c", "d"].iter().enumerate() {
        p = p
            .str(key)
            .tensor("FloatStorage", &i.to_string(), n, 0, &[n], &[1]);
    }
    let pickle = p.op(b"u").stop();
    let data: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; (n * 4) as usize]).collect();
    let names: Vec<String> = (0..4).map(|i| i.to_string()).collect();
    let records: Vec<(&str, &[u8])> = names
        .iter()
        .zip(&data)
        .map(|(k, d)| (k.as_str(), d.as_slice()))
        .collect();
    common::ZipBuilder::checkpoint(&pickle, &records)
}

/// Plans `file` from a sparse copy, checks the plan equals the whole file's and that no
/// loaded range overlaps a storage's bytes; returns how many storages lay wholly outside the
/// tail window (the ones the check could see).
fn check_never_reads(rel: &str, file: &[u8]) -> usize {
    let (plan, rounds, loaded) = plan_sparse(file);
    assert!(rounds <= 5, "{rel}: {rounds} rounds");
    let whole = Loader::new().plan("<whole>", file).unwrap();
    assert_eq!(
        format!("{:?}", plan.root),
        format!("{:?}", whole.root),
        "{rel}"
    );
    assert_eq!(plan.storages.len(), whole.storages.len(), "{rel}");
    let tail_start = loaded[0].0;
    let mut seen = 0;
    for (a, b) in plan.storages.iter().zip(&whole.storages) {
        assert_eq!(a.record, b.record, "{rel}");
        assert_eq!(a.device, b.device, "{rel}");
        let record = a.record.as_ref().unwrap();
        let (start, end) = (record.data_offset, record.data_offset + record.stored_len);
        // The tail window may cover tensor bytes; no other loaded range may.
        if end <= tail_start && start < end {
            seen += 1;
        }
        for &(offset, n) in &loaded[1..] {
            assert!(
                offset + n <= start || offset >= end || start >= tail_start,
                "{rel}: loaded {offset}..{} overlaps storage {} at {start}..{end}",
                offset + n,
                a.key
            );
        }
    }
    seen
}

#[test]
fn zip_plans_never_read_tensor_bytes() {
    let expected = fixture_json("expected.json");
    let mut seen = 0;
    for rel in expected["files"].as_object().unwrap().keys() {
        let file = std::fs::read(root().join("tests/fixtures").join(rel)).unwrap();
        seen += check_never_reads(rel, &file);
    }
    // The fixtures are smaller than the tail window; a large file makes the check see storages.
    seen += check_never_reads("4 × 256 KiB", &large_zip());
    // With a comment after the end record, found by the 64 KiB window search.
    let mut commented = large_zip();
    let eocd = commented.len() - 22;
    commented[eocd + 20..eocd + 22].copy_from_slice(&100u16.to_le_bytes());
    commented.extend_from_slice(&[b'c'; 100]);
    seen += check_never_reads("4 × 256 KiB, commented", &commented);
    assert!(
        seen >= 3,
        "only {seen} storages lay outside the tail window"
    );
}

#[test]
fn the_end_records_are_read_from_the_last_98_bytes() {
    // A zip without a comment ends with its end record (22 bytes), after the zip64 locator (20)
    // and end record (56): a partial source holding those needs no other tail bytes.
    let file = large_zip();
    let len = file.len() as u64;
    let mut sparse = SparseBytes::new(len);
    sparse.insert(0, file[..262].to_vec());
    sparse.insert(len - 98, file[(len - 98) as usize..].to_vec());
    let e = Loader::new().plan("x.pt", &sparse).unwrap_err();
    let ErrorKind::NeedBytes { ranges } = e.kind() else {
        panic!("{e}")
    };
    // Next: the central directory, and nothing else.
    let eocd = file.len() - 22;
    let cd_size = u32::from_le_bytes(file[eocd + 12..eocd + 16].try_into().unwrap()) as u64;
    let cd_offset = u32::from_le_bytes(file[eocd + 16..eocd + 20].try_into().unwrap()) as u64;
    assert_eq!(ranges, &[(cd_offset, cd_size)]);
}

#[test]
fn missing_ranges_are_reported_together() {
    let file = std::fs::read(root().join("tests/fixtures/zip/alignment4096.pt")).unwrap();
    let len = file.len() as u64;
    let mut sparse = SparseBytes::new(len);
    sparse.insert(0, file[..262].to_vec());
    let e = Loader::new().plan("x.pt", &sparse).unwrap_err();
    let ErrorKind::NeedBytes { ranges } = e.kind() else {
        panic!("{e}")
    };
    assert_eq!(ranges.len(), 1, "first the tail window");
    assert!(
        e.to_string()
            .starts_with("x.pt: needs bytes not loaded yet:"),
        "{e}"
    );
    assert!(sparse.get(len, 1).is_err());
}

#[test]
fn a_large_zip_loads_only_metadata() {
    let file = large_zip();
    let (plan, rounds, loaded) = plan_sparse(&file);
    assert!(rounds <= 5, "{rounds} rounds");
    let total: u64 = loaded.iter().map(|&(_, n)| n).sum();
    assert!(
        total < 70_000 + 4 * 30 + 1024,
        "loaded {total} bytes of {}",
        file.len()
    );
    for s in &plan.storages {
        let r = s.record.as_ref().unwrap();
        let tail_start = loaded[0].0;
        for &(offset, len) in &loaded[1..] {
            let overlaps = offset < r.data_offset + r.stored_len && offset + len > r.data_offset;
            assert!(
                !overlaps || r.data_offset + r.stored_len > tail_start,
                "read storage {} bytes",
                s.key
            );
        }
    }
    // Placing the plan reads each storage once and gives the right bytes.
    let source = ptload::Source::from_bytes("<memory>", file);
    let ckpt = Loader::new().place(plan, &source).unwrap();
    for (i, (path, t)) in ckpt.tensors().enumerate() {
        assert_eq!(path, ["a", "b", "c", "d"][i]);
        assert!(t.as_bytes().unwrap().iter().all(|&b| b == i as u8));
    }
}

#[test]
fn a_foreign_zip_is_explained_from_a_partial_source_as_from_the_whole_file() {
    // A zip of two files and no data.pkl, whose end record claims more entries than its
    // directory can hold, behind a comment long enough to keep the directory out of the tail
    // window: the directory's error comes before the directory is loaded, and naming the
    // entries asks for it.
    let mut file = common::ZipBuilder::new("weights")
        .add("readme.txt", b"hello")
        .add("model.pt", &[0u8; 100])
        .finish();
    let eocd = file.len() - 22;
    file[eocd + 8..eocd + 12].copy_from_slice(&[100, 0, 100, 0]);
    file[eocd + 20..eocd + 22].copy_from_slice(&u16::MAX.to_le_bytes());
    file.extend(std::iter::repeat_n(b'c', u16::MAX as usize));
    let whole = Loader::new().plan("x.pt", file.as_slice()).unwrap_err();
    let (partial, rounds, _) = plan_sparse_result(&file);
    let partial = partial.unwrap_err();
    assert!(
        matches!(whole.kind(), ErrorKind::NotACheckpoint { .. }),
        "{whole}"
    );
    assert!(
        whole.to_string().contains("it holds 'weights/model.pt'"),
        "{whole}"
    );
    assert_eq!(
        partial.to_string(),
        whole.to_string().replace("x.pt", "<sparse>")
    );
    assert!(
        rounds > 1,
        "the directory is asked for before the error is explained"
    );
}
