//! Bad input gets `Err` with a clear message: never a panic, never a huge allocation.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::{fixture, root, tar, Pickle, ZipBuilder};
use ptload::{ErrorKind, Loader};

/// Loads `bytes` and, if that works, hashes every tensor; panics are caught and reported.
fn survives(bytes: Vec<u8>) -> Result<(), String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        if let Ok(ckpt) = ptload::load_bytes(bytes) {
            for (_, t) in ckpt.tensors() {
                let _ = t.sha256();
            }
        }
    }));
    outcome.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// Flips `count` pseudo-random bits of `bytes` one at a time (xorshift from `seed`); every
/// variant must load or fail without a panic.
fn flip_bits(rel: &str, bytes: &[u8], count: usize, seed: u64) {
    let mut state = seed;
    for _ in 0..count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut flipped = bytes.to_vec();
        let at = (state % bytes.len() as u64) as usize;
        flipped[at] ^= 1 << (state >> 60 & 7);
        if let Err(p) = survives(flipped) {
            panic!("{rel}: flipping a bit at byte {at} panicked: {p}");
        }
    }
}

fn err(bytes: Vec<u8>) -> ptload::Error {
    match ptload::load_bytes(bytes) {
        Ok(_) => panic!("loaded a bad file"),
        Err(e) => e,
    }
}

#[test]
fn truncation_at_every_point_is_an_error() {
    for rel in ["zip/views.pt", "zip/nested.pt", "zip/deflated.pt"] {
        let bytes = fixture(rel);
        for len in (0..bytes.len()).step_by(7) {
            let cut = bytes[..len].to_vec();
            match catch_unwind(|| ptload::load_bytes(cut)) {
                Ok(Ok(_)) => panic!("{rel} cut to {len} bytes loaded"),
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    assert!(msg.starts_with("<memory>: "), "{msg}");
                }
                Err(_) => panic!("{rel} cut to {len} bytes panicked"),
            }
        }
    }
}

#[test]
fn bit_flips_never_panic() {
    for rel in [
        "zip/views.pt",
        "zip/optimizer.pt",
        "zip/deflated.pt",
        "zip/big_endian.pt",
    ] {
        flip_bits(rel, &fixture(rel), 3000, 0x9e37_79b9_7f4a_7c15);
    }
}

#[test]
fn random_bytes_are_not_a_checkpoint() {
    let mut state = 12345u64;
    let bytes: Vec<u8> = (0..10_000)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) as u8
        })
        .collect();
    let e = err(bytes.clone());
    assert!(
        e.to_string()
            .contains("Invalid magic number; corrupt file?"),
        "{e}"
    );
    let mut zipish = b"PK\x03\x04".to_vec();
    zipish.extend(bytes);
    let e = err(zipish);
    assert!(
        e.to_string().contains("no end-of-central-directory record"),
        "{e}"
    );
    assert!(err(Vec::new()).to_string().contains("the file is empty"));
}

fn one_tensor(class: &str, numel: i64, size: &[i64], stride: &[i64], offset: i64) -> Vec<u8> {
    Pickle::new()
        .tensor(class, "0", numel, offset, size, stride)
        .stop()
}

#[test]
fn storage_shorter_than_declared() {
    let pickle = one_tensor("FloatStorage", 4, &[4], &[1], 0);
    let e = err(ZipBuilder::checkpoint(&pickle, &[("0", &[0u8; 12])]));
    assert!(
        matches!(
            e.kind(),
            ErrorKind::StorageSize {
                numel: 4,
                actual: 12,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(
            "storage 'archive/data/0' (data at byte 0x"
        ) && e.to_string().ends_with(
            "record size (12 bytes) does not match expected size (16 bytes = 4 elements * 4 bytes/element) for dtype Float"
        ),
        "{e}"
    );
}

#[test]
fn missing_record() {
    let pickle = one_tensor("FloatStorage", 4, &[4], &[1], 0);
    let e = err(ZipBuilder::checkpoint(&pickle, &[]));
    assert_eq!(
        e.to_string(),
        "<memory>: record 'archive/data/0' is missing from the archive"
    );
    let e = err(ZipBuilder::new("archive").add("data.pkl", &pickle).finish());
    assert!(
        e.to_string()
            .contains("record 'archive/version' is missing"),
        "{e}"
    );
}

#[test]
fn views_past_their_storage() {
    let pickle = one_tensor("FloatStorage", 10, &[4, 3], &[1, 4], 0);
    let e = err(ZipBuilder::checkpoint(&pickle, &[("0", &[0u8; 40])]));
    assert_eq!(
        e.to_string(),
        "<memory>: tensor '<root>': setStorage: sizes [4, 3], strides [1, 4], storage offset 0, and itemsize 4 \
         requiring a storage size of 48 are out of bounds for storage of size 40"
    );
    let pickle = one_tensor("FloatStorage", 4, &[2], &[1], 3);
    assert!(err(ZipBuilder::checkpoint(&pickle, &[("0", &[0u8; 16])]))
        .to_string()
        .contains("out of bounds"));
}

#[test]
fn negative_and_overflowing_dimensions() {
    let pickle = one_tensor("FloatStorage", 4, &[2, 2], &[-1, 1], 0);
    let e = err(ZipBuilder::checkpoint(&pickle, &[("0", &[0u8; 16])]));
    assert!(e.to_string().contains("negative stride -1"), "{e}");
    let pickle = one_tensor("FloatStorage", 4, &[-2], &[1], 0);
    assert!(err(ZipBuilder::checkpoint(&pickle, &[("0", &[0u8; 16])]))
        .to_string()
        .contains("negative size -2"));
    let big = i64::MAX / 2;
    let pickle = one_tensor("FloatStorage", 4, &[big, big, big], &[1, 1, 1], 0);
    let e = err(ZipBuilder::checkpoint(&pickle, &[("0", &[0u8; 16])]));
    assert!(e.to_string().contains("overflows"), "{e}");
    let pickle = one_tensor("FloatStorage", 4, &[2, 2], &[big, big], 0);
    let e = err(ZipBuilder::checkpoint(&pickle, &[("0", &[0u8; 16])]));
    assert!(
        e.to_string()
            .contains("requiring a storage size of more than 2^64"),
        "{e}"
    );
    let pickle = one_tensor("FloatStorage", i64::MAX, &[1], &[1], 0);
    let e = err(ZipBuilder::checkpoint(&pickle, &[("0", &[0u8; 16])]));
    assert!(e.to_string().contains("overflows"), "{e}");
}

#[test]
fn unknown_storage_type() {
    let pickle = one_tensor("FooStorage", 4, &[4], &[1], 0);
    let e = err(ZipBuilder::checkpoint(&pickle, &[("0", &[0u8; 16])]));
    // Under weights-only the global itself is refused first.
    assert!(
        e.to_string()
            .contains("GLOBAL torch.FooStorage was not an allowed global"),
        "{e}"
    );
    let e = Loader::new()
        .weights_only(false)
        .load_bytes(ZipBuilder::checkpoint(&pickle, &[("0", &[0u8; 16])]))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("unknown storage type torch.FooStorage"),
        "{e}"
    );
}

#[test]
fn pickle_errors_name_offset_and_opcode() {
    let e = err(ZipBuilder::checkpoint(&Pickle::new().op(b"t").stop(), &[]));
    assert_eq!(
        e.to_string(),
        "<memory>: archive/data.pkl byte 0x2, opcode TUPLE: could not find MARK"
    );
    let e = err(ZipBuilder::checkpoint(&Pickle::new().op(b"R").stop(), &[]));
    assert_eq!(
        e.to_string(),
        "<memory>: archive/data.pkl byte 0x2, opcode REDUCE: unpickling stack underflow"
    );
    let e = err(ZipBuilder::checkpoint(
        &Pickle::new().op(b"h\x05").stop(),
        &[],
    ));
    assert_eq!(
        e.to_string(),
        "<memory>: archive/data.pkl byte 0x2, opcode BINGET: memo slot 5 was never set"
    );
    let e = err(ZipBuilder::checkpoint(
        &Pickle::new().op(b"X\xff\xff\xff\xffab").stop(),
        &[],
    ));
    assert!(
        e.to_string()
            .contains("declares a length of 4294967295 bytes but only 3 remain"),
        "{e}"
    );
    let e = err(ZipBuilder::checkpoint(
        &Pickle::new()
            .op(b"\x8e\xff\xff\xff\xff\xff\xff\xff\x7f")
            .stop(),
        &[],
    ));
    assert!(
        e.to_string()
            .contains("opcode BINBYTES8: declares a length"),
        "{e}"
    );
    let e = err(ZipBuilder::checkpoint(
        &Pickle::new().op(b"\xff").stop(),
        &[],
    ));
    assert!(e.to_string().contains("unknown opcode 0xff"), "{e}");
}

#[test]
fn absurd_zip_fields() {
    let good = std::fs::read(root().join("tests/fixtures/zip/buffer.pt")).unwrap();
    let eocd = good.len() - 22;
    assert_eq!(&good[eocd..eocd + 4], b"PK\x05\x06");
    // The zip64 EOCD says how many entries there are; claim a billion.
    let locator = eocd - 20;
    let eocd64 = u64::from_le_bytes(good[locator + 8..locator + 16].try_into().unwrap()) as usize;
    let mut bad = good.clone();
    bad[eocd64 + 32..eocd64 + 40].copy_from_slice(&1_000_000_000u64.to_le_bytes());
    // The classic record disagrees (torch writes the real count there too): refused as such.
    let e = err(bad.clone());
    assert!(
        e.to_string().contains(
            "the end-of-central-directory record says entries 8, its zip64 record 1000000000"
        ),
        "{e}"
    );
    // With the classic fields all ones, the zip64 values are the ones checked.
    bad[eocd + 8..eocd + 12].copy_from_slice(&[0xff; 4]);
    bad[eocd + 16..eocd + 20].copy_from_slice(&[0xff; 4]);
    let e = err(bad);
    assert!(
        e.to_string()
            .contains("1000000000 entries cannot fit in a central directory"),
        "{e}"
    );
    // A central directory said to lie past the end of the file.
    let mut bad = good.clone();
    bad[eocd64 + 48..eocd64 + 56].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
    bad[eocd + 16..eocd + 20].copy_from_slice(&[0xff; 4]);
    let e = err(bad);
    // The directory parser's text, with its figures (not the shorter one of the pass that names
    // a foreign zip's entries, which fails on the same record).
    let want = format!("central directory (offset {}, ", u64::MAX - 10);
    assert!(e.to_string().contains(&want), "{e}");
    assert!(
        e.to_string().contains(" bytes) lies outside the file ("),
        "{e}"
    );
}

#[test]
fn weights_only_refuses_and_opting_out_stays_inert() {
    // pickle.dumps of posix.system('echo pwned') built by hand: GLOBAL, args, REDUCE.
    let evil = Pickle::new()
        .global("posix", "system")
        .op(b"(")
        .str("echo pwned")
        .op(b"tR")
        .stop();
    let e = err(ZipBuilder::checkpoint(&evil, &[]));
    let msg = e.to_string();
    assert!(msg.contains("Weights only load failed"), "{msg}");
    assert!(
        msg.contains(
            "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
        ),
        "{msg}"
    );
    assert!(msg.contains("--no-weights-only"), "{msg}");
    assert!(matches!(e.kind(), ErrorKind::WeightsOnly { .. }));

    let ns = Pickle::new()
        .global("argparse", "Namespace")
        .op(b")\x81}")
        .str("lr")
        .op(b"G?\xb9\x99\x99\x99\x99\x99\x9a")
        .op(b"sb")
        .stop();
    let e = err(ZipBuilder::checkpoint(&ns, &[]));
    assert!(e.to_string().contains(
        "Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default."
    ));

    for bytes in [evil, ns] {
        let ckpt = Loader::new()
            .weights_only(false)
            .load_bytes(ZipBuilder::checkpoint(&bytes, &[]))
            .unwrap();
        let ptload::Value::Object(obj) = &ckpt.root else {
            panic!("{:?}", ckpt.root)
        };
        assert!(obj.class == "posix.system" || obj.class == "argparse.Namespace");
    }
}

#[test]
fn deep_nesting_is_limited_not_a_stack_overflow() {
    let n = 100_000;
    let mut p = Pickle::new();
    p.0.extend(std::iter::repeat_n(b']', n));
    p.0.extend(std::iter::repeat_n(b'a', n - 1));
    let e = err(ZipBuilder::checkpoint(&p.stop(), &[]));
    assert!(
        matches!(
            e.kind(),
            ErrorKind::LimitExceeded {
                limit: "max_depth",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn memo_bomb_is_limited() {
    // x0 = []; x(i) = (x(i-1), x(i-1)) for i in 1..=60, each memoized: 144 bytes of pickle
    // describing 2^60 leaves. The machine shares them; building the tree stops at max_values.
    let mut p = Pickle::new().op(b"]q\x00");
    for i in 1..=60u8 {
        p = p.op(&[b'0', b'h', i - 1, b'h', i - 1, 0x86, b'q', i]);
    }
    let bytes = ZipBuilder::checkpoint(&p.stop(), &[]);
    let e = err(bytes);
    assert!(
        matches!(
            e.kind(),
            ErrorKind::LimitExceeded {
                limit: "max_values",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("limit max_values exceeded"), "{e}");
}

#[test]
fn legacy_truncation_and_bit_flips() {
    for rel in [
        "legacy/views.pt",
        "legacy/optimizer.pt",
        "legacy/dtypes.pt",
        "tar/checkpoint.pt",
    ] {
        let bytes = fixture(rel);
        let digests = |ckpt: &ptload::Checkpoint| -> Vec<String> {
            ckpt.tensors()
                .map(|(p, t)| format!("{p} {}", t.sha256().unwrap()))
                .collect()
        };
        let full = digests(&ptload::load_bytes(bytes.clone()).unwrap());
        for len in (0..bytes.len()).step_by(5) {
            let cut = bytes[..len].to_vec();
            match catch_unwind(|| ptload::load_bytes(cut)) {
                // A tar archive's trailing padding (after its end-of-archive blocks) carries
                // nothing: losing it must not change what loads.
                Ok(Ok(ckpt)) => assert_eq!(
                    digests(&ckpt),
                    full,
                    "{rel} cut to {len} bytes loaded differently"
                ),
                Ok(Err(_)) => {}
                Err(_) => panic!("{rel} cut to {len} bytes panicked"),
            }
        }
        flip_bits(rel, &bytes, 2000, 0x2545_f491_4f6c_dd1d);
    }
}

#[test]
fn huge_expanded_view_is_refused_not_materialized() {
    // One float32 element viewed as 2^40 elements (stride 0): 4 TiB if materialized.
    let n = 1i64 << 40;
    let pickle = Pickle::new()
        .tensor("FloatStorage", "0", 1, 0, &[n], &[0])
        .stop();
    let ckpt = ptload::load_bytes(ZipBuilder::checkpoint(&pickle, &[("0", &[0u8; 4])])).unwrap();
    let (_, t) = ckpt.tensors().next().unwrap();
    for e in [
        t.sha256().unwrap_err(),
        t.to_contiguous_bytes().unwrap_err(),
    ] {
        assert!(
            matches!(
                e.kind(),
                ErrorKind::LimitExceeded {
                    limit: "max_tensor_bytes",
                    ..
                }
            ),
            "{e}"
        );
    }
    // Through the CLI as well: exit status 1, one line.
    let path = std::env::temp_dir().join(format!("ptload-expand-{}.pt", std::process::id()));
    std::fs::write(&path, ZipBuilder::checkpoint(&pickle, &[("0", &[0u8; 4])])).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ptload"))
        .args(["inspect", "--sha256", path.to_str().unwrap()])
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("limit max_tensor_bytes exceeded: 4398046511104 >"),
        "{err}"
    );
}

#[test]
fn a_large_stack_is_bounded() {
    // 200 000 items on the stack, then a REDUCE whose callable is an int.
    let mut p = Pickle::new();
    for _ in 0..200_000 {
        p = p.op(b"K\x01");
    }
    let bytes = ZipBuilder::checkpoint(&p.op(b")R").stop(), &[]);
    let e = err(bytes);
    assert!(
        e.to_string().contains("a call whose callable is a int"),
        "{e}"
    );
}

#[test]
fn a_long_stream_of_trivial_opcodes_loads_or_is_refused() {
    // 32 Mi opcodes (NONE, POP) deflated to a few KiB: loads (each opcode costs constant work),
    // or is refused by a limit.
    let mut pickle = vec![0x80, 2];
    pickle.extend(b"N0".repeat(16 << 20));
    pickle.extend(b"N.");
    let deflated = common::deflate(&pickle);
    assert!(deflated.len() < 1 << 20);
    let zip = ZipBuilder::new("archive")
        .add_entry("archive/data.pkl", &deflated, 8, pickle.len() as u32)
        .add("version", b"3\n")
        .finish();
    let ckpt = ptload::load_bytes(zip.clone()).unwrap();
    assert_eq!(ckpt.root, ptload::Value::None);
    // With a smaller pickle cap it is refused before inflating anything.
    let e = Loader::new()
        .limits(ptload::Limits::default().with_max_pickle_bytes(1 << 20))
        .load_bytes(zip)
        .unwrap_err();
    assert!(
        e.to_string().contains("limit max_pickle_bytes exceeded"),
        "{e}"
    );
}

#[test]
fn an_impossible_deflate_ratio_is_refused_before_allocating() {
    // 100 bytes of deflate cannot hold 4 GiB.
    let zip = ZipBuilder::new("archive")
        .add_entry("archive/data.pkl", &[0u8; 100], 8, u32::MAX - 1)
        .add("version", b"3\n")
        .finish();
    let e = Loader::new()
        .limits(ptload::Limits::none())
        .load_bytes(zip)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("declares 4294967294 bytes, more than 100 compressed bytes can inflate to"),
        "{e}"
    );
}

/// A legacy stream by hand: magic, protocol 1001, sys_info, `main`, the key list, records.
fn legacy_stream(main: &[u8], keys: &[&str], records: &[(u64, &[u8])]) -> Vec<u8> {
    let mut out = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    out.extend_from_slice(b"\x80\x02M\xe9\x03.");
    out.extend_from_slice(b"\x80\x02}.");
    out.extend_from_slice(main);
    let mut list = Pickle::new().op(b"(");
    for key in keys {
        list = list.str(key);
    }
    out.extend(list.op(b"l").stop());
    for (count, bytes) in records {
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// `_rebuild_tensor_v2` of 2 floats whose persistent id is `('storage', FloatStorage, <key>,
/// <location>, 2<extra>)`, the three given as opcodes (`extra`: a legacy id's sixth field).
fn two_floats_with_pid_fields(key: &[u8], location: &[u8], extra: &[u8]) -> Vec<u8> {
    Pickle::new()
        .global("torch._utils", "_rebuild_tensor_v2")
        .op(b"((")
        .str("storage")
        .global("torch", "FloatStorage")
        .op(key)
        .op(location)
        .int(2)
        .op(extra)
        .op(b"tQ")
        .int(0)
        .ints(&[2])
        .ints(&[1])
        .op(b"\x89")
        .global("collections", "OrderedDict")
        .op(b")RtR")
        .stop()
}

#[test]
fn legacy_storage_keys_may_be_ints_or_bytes() {
    // The key list is matched against the persistent ids' keys; torch 2.15 loads all three
    // forms below (tensor([1., 2.]), weights_only=False: its weights-only unpickler refuses the
    // protocol-0 LIST opcode this key list uses, and protocol 3's SHORT_BINBYTES).
    let floats: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|f| f.to_le_bytes()).collect();
    for key_ops in [&b"K\x00"[..], b"C\x010", b"X\x01\x00\x00\x000"] {
        let cpu = Pickle(Vec::new()).str("cpu").0;
        let main = two_floats_with_pid_fields(key_ops, &cpu, b"N");
        let mut file = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
        file.extend_from_slice(b"\x80\x02M\xe9\x03.\x80\x02}.");
        file.extend_from_slice(&main);
        file.extend(Pickle::new().op(b"(").op(key_ops).op(b"l").stop());
        file.extend_from_slice(&2u64.to_le_bytes());
        file.extend_from_slice(&floats);
        let ckpt = ptload::Loader::new()
            .weights_only(false)
            .load_bytes(file)
            .unwrap_or_else(|e| panic!("{key_ops:?}: {e}"));
        let (_, t) = ckpt.tensors().next().unwrap();
        assert_eq!(t.to_contiguous_bytes().unwrap(), floats, "{key_ops:?}");
    }
}

#[test]
fn legacy_stream_rules() {
    let main = one_tensor("FloatStorage", 2, &[2], &[1], 0);
    let floats: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|f| f.to_le_bytes()).collect();
    let ckpt = ptload::load_bytes(legacy_stream(&main, &["0"], &[(2, &floats)])).unwrap();
    assert_eq!(ckpt.format, ptload::Format::Legacy);
    assert_eq!(
        ckpt.tensors()
            .next()
            .unwrap()
            .1
            .to_contiguous_bytes()
            .unwrap(),
        floats
    );

    // The key list names a storage the pickle never references.
    let e = err(legacy_stream(&main, &["7"], &[(2, &floats)]));
    assert!(
        e.to_string().contains("storage 7") && e.to_string().contains("never references"),
        "{e}"
    );
    // A storage the key list leaves out.
    let e = err(legacy_stream(&main, &[], &[]));
    assert!(
        e.to_string().contains("storage 0 (not in the key list)"),
        "{e}"
    );
    // The record's element count disagrees with the pickle.
    let e = err(legacy_stream(&main, &["0"], &[(3, &floats)]));
    assert!(
        e.to_string()
            .contains("storage has wrong byte size: expected 8 got 12"),
        "{e}"
    );
    // The count is right but the bytes stop early.
    let file = legacy_stream(&main, &["0"], &[(2, &floats[..5])]);
    let (len, start) = (file.len(), file.len() - 5);
    let e = err(file);
    assert_eq!(e.offset(), Some(start as u64), "{e}");
    assert!(
        e.to_string().ends_with(&format!(
            "needs 8 bytes but the file ends at byte {len} (truncated?)"
        )),
        "{e}"
    );
    // Not 1001.
    let mut wrong = legacy_stream(&main, &["0"], &[(2, &floats)]);
    wrong[18] = 0xea;
    assert!(err(wrong)
        .to_string()
        .contains("Invalid protocol version: 1002"));
}

#[test]
fn repeated_dict_keys_follow_python_and_stay_linear() {
    // {'a': 1, 'a': 2, 'b': 3} pickled by hand: the later value wins, in the first key's place.
    let p = Pickle::new()
        .op(b"}(")
        .str("a")
        .int(1)
        .str("a")
        .int(2)
        .str("b")
        .int(3)
        .op(b"u")
        .stop();
    let ckpt = ptload::load_bytes(ZipBuilder::checkpoint(&p, &[])).unwrap();
    assert_eq!(ckpt.root.to_string(), "{\"a\": 2, \"b\": 3}");
    // 300 000 distinct keys, then all of them again: linear, not quadratic.
    let n = 300_000;
    let mut p = Pickle::new().op(b"}(");
    for round in 0..2 {
        for i in 0..n {
            p = p.int(i).int(round);
        }
    }
    // (No timed assertion: a quadratic merge of 300 000 keys takes minutes, not the second a
    // linear one takes, and shows as a hung test; timings belong in benches/.)
    let bytes = ZipBuilder::checkpoint(&p.op(b"u").stop(), &[]);
    let ckpt = ptload::load_bytes(bytes).unwrap();
    let ptload::Value::Dict(d) = &ckpt.root else {
        panic!()
    };
    assert_eq!(d.items.len(), n as usize);
    assert!(d.items.iter().all(|(_, v)| *v == ptload::Value::Int(1)));
}

/// Inputs the fuzzers found (`fuzz/`, `scripts/fuzz`), each once a panic, now the error it
/// should be: (file, weights-only, the message after the file name).
const FUZZ_REGRESSIONS: &[(&str, bool, &str)] = &[
    (
        "full_load-record-shorter-than-storage.pt",
        true,
        "storage 'storage 2' (data at byte 0x263): record size (16 bytes) does not match expected size (48 bytes = 12 elements * 4 bytes/element) for dtype Float",
    ),
    (
        "full_load-record-shorter-than-storage.pt",
        false,
        "storage 'storage 2' (data at byte 0x263): record size (16 bytes) does not match expected size (48 bytes = 12 elements * 4 bytes/element) for dtype Float",
    ),
    (
        "legacy_stream-record-shorter-than-storage.pt",
        true,
        // The fuzzer wrote control characters into the global's module name.
        "Weights only load failed. WeightsUnpickler error: Unsupported global: GLOBAL torch.\x0f\x0f\x0f\x0f\x0f\x0f_utils._rebuild_parameter was not an allowed global by default.",
    ),
    (
        "legacy_stream-record-shorter-than-storage.pt",
        false,
        "storage 'storage 140000000004096' (data at byte 0x573): record size (16 bytes) does not match expected size (192 bytes = 24 elements * 8 bytes/element) for dtype Long",
    ),
];

#[test]
fn fuzz_regressions() {
    let dir = root().join("tests/fixtures/regressions");
    // Every file of the folder has its expected errors listed.
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut listed: Vec<String> = FUZZ_REGRESSIONS
        .iter()
        .map(|(f, ..)| f.to_string())
        .collect();
    listed.dedup();
    assert_eq!(files, listed);
    for &(file, weights_only, want) in FUZZ_REGRESSIONS {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            Loader::new()
                .weights_only(weights_only)
                .load_bytes(bytes)
                .map(|ckpt| ckpt.tensors().filter(|(_, t)| t.sha256().is_ok()).count())
        }));
        match outcome {
            Ok(Err(e)) => {
                let text = e.to_string();
                assert!(
                    text.starts_with(&format!("<memory>: {want}")),
                    "{file} (weights_only {weights_only}): {text}"
                );
                let kind_ok = if want.starts_with("storage ") {
                    matches!(e.kind(), ErrorKind::StorageSize { .. })
                } else {
                    matches!(e.kind(), ErrorKind::WeightsOnly { .. })
                };
                assert!(kind_ok, "{file}: {:?}", e.kind());
            }
            Ok(Ok(_)) => panic!("{} loaded", path.display()),
            Err(_) => panic!("{} panicked", path.display()),
        }
    }
}

#[test]
fn legacy_storage_named_twice_with_different_sizes() {
    // Found by the legacy_stream fuzzer: one key referenced as 24 int64 and as 2 int64; the key
    // list sizes the record by the latter, so the first view would reach past the bytes.
    let e = Loader::new()
        .weights_only(false)
        .load(
            root().join("tests/fixtures/regressions/legacy_stream-record-shorter-than-storage.pt"),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("record size (16 bytes) does not match expected size (192 bytes = 24 elements * 8 bytes/element) for dtype Long"),
        "{e}"
    );
}

/// Storage keys that are no str, as torch 2.15 reads them (`weights_only=False`): the record is
/// f"data/{key}", so an int key names `data/0` and loads, and a bytes key names `data/b'0'`,
/// which torch fails to find ("PytorchStreamReader failed locating file data/b'0'"). A bytes
/// location (`b'cpu'`) loads, as in torch.
#[test]
fn int_and_bytes_storage_keys_name_records_as_torch_formats_them() {
    let load = |key: &[u8], location: &[u8]| {
        let p = two_floats_with_pid_fields(key, location, b"");
        let floats: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        ptload::Loader::new()
            .weights_only(false)
            .load_bytes(ZipBuilder::checkpoint(&p, &[("0", &floats)]))
    };
    // BININT1 0: the record data/0.
    let cpu = b"X\x03\x00\x00\x00cpu";
    let ckpt = load(b"K\x00", cpu).unwrap();
    let (_, t) = ckpt.tensors().next().unwrap();
    assert_eq!(t.storage().unwrap().key, "0");
    assert_eq!(t.to_contiguous_bytes().unwrap()[..4], 1.5f32.to_le_bytes());
    // SHORT_BINBYTES b'0': the record data/b'0', which the file lacks.
    let e = load(b"C\x010", cpu).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::MissingRecord { name } if name == "archive/data/b'0'"),
        "{e}"
    );
    // SHORT_BINBYTES b'cpu' as the location.
    let ckpt = load(b"K\x00", b"C\x03cpu").unwrap();
    let (_, t) = ckpt.tensors().next().unwrap();
    assert_eq!(t.device(), ptload::Device::Cpu);
}

/// Persistent ids that are no storage's: each refused with what is wrong with it.
#[test]
fn persistent_ids_that_name_no_storage_are_refused_by_what_is_wrong() {
    let load = |pid: Pickle| {
        let p = pid.op(b"Q").stop();
        let bytes = ZipBuilder::checkpoint(&p, &[]);
        ptload::load_bytes(bytes).unwrap_err().to_string()
    };
    // A 5-tuple whose first field is not 'storage'.
    let e = load(
        Pickle::new()
            .op(b"(")
            .str("module")
            .global("torch", "FloatStorage")
            .str("0")
            .str("cpu")
            .int(1)
            .op(b"t"),
    );
    assert!(
        e.contains("unsupported persistent id: only ('storage', …) ids are understood"),
        "{e}"
    );
    // ('storage', FloatStorage, '0', <location opcodes>, numel).
    let storage_id = |location: &[u8], numel: i64| {
        Pickle::new()
            .op(b"(")
            .str("storage")
            .global("torch", "FloatStorage")
            .str("0")
            .op(location)
            .int(numel)
            .op(b"t")
    };
    // A location in bytes that are not ASCII: torch's `_maybe_decode_ascii` fails on it.
    let e = load(storage_id(b"C\x03c\xe9u", 1));
    assert!(e.contains("storage location must be a str"), "{e}");
    // A negative element count.
    let e = load(storage_id(&Pickle(Vec::new()).str("cpu").0, -1));
    assert!(e.contains("storage '0' has a negative size -1"), "{e}");
    // An empty tuple.
    let e = load(Pickle::new().op(b")"));
    assert!(e.contains("unsupported persistent id"), "{e}");
    // A 3-tuple: the tar format's module ids, meaningless in a zip file (a class the
    // weights-only policy allows, so that the id itself is what is refused).
    let e = load(
        Pickle::new()
            .op(b"(")
            .global("collections", "OrderedDict")
            .str("linear.py")
            .str("class Linear: ...")
            .op(b"t"),
    );
    assert!(
        e.contains("unsupported persistent id: only ('storage', …) ids are understood"),
        "{e}"
    );
    // A str that is not the repr protocol 0 writes of a storage id.
    let e = load(Pickle::new().str("weights"));
    assert!(
        e.contains("persistent id must be a tuple, not a str"),
        "{e}"
    );
    // An UntypedStorage from outside torch (past weights-only, which refuses the global).
    let p = Pickle::new().storage("UntypedStorage", "0", 1).stop();
    let at = p.windows(7).position(|w| w == b"ctorch\n").unwrap();
    let p = [&p[..at], b"cfoo\n", &p[at + 7..]].concat();
    let bytes = ZipBuilder::checkpoint(&p, &[("0", &[0u8])]);
    let e = Loader::new()
        .weights_only(false)
        .load_bytes(bytes)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown storage type foo.UntypedStorage"), "{e}");
}

#[test]
fn torchscript_classes_are_allowed_only_in_torchscript_archives() {
    // A plain zip checkpoint naming a TorchScript class: weights-only refuses it, as torch
    // 2.15 refuses any global off its allowlist.
    let p = Pickle::new().global("__torch__.model", "Net").stop();
    let e = ptload::load_bytes(ZipBuilder::checkpoint(&p, &[])).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::WeightsOnly { .. }), "{e}");
    assert!(e.to_string().contains("__torch__.model.Net"), "{e}");
}

#[test]
fn tar_entry_headers_must_be_3_tuples() {
    // tar/checkpoint.pt with its first storage header `(key, 'cpu', FloatStorage)` made a
    // 2-tuple (TUPLE3 → TUPLE2): the error names the member and the header pickle's offset.
    let bytes = fixture("tar/checkpoint.pt");
    let storages = ptload::archive::tar::members(&bytes).unwrap()["storages"].clone();
    let at = storages.start
        + bytes[storages.clone()]
            .windows(16)
            .position(|w| w == b"FloatStorage\nq\x01\x87")
            .unwrap()
        + 15;
    let mut bad = bytes.clone();
    bad[at] = 0x86;
    let e = ptload::load_bytes(bad).unwrap_err();
    // The count pickle `\x80\x02K\x03.` comes first; the header pickle starts after it.
    assert_eq!(
        &bytes[storages.start..storages.start + 5],
        b"\x80\x02K\x03."
    );
    assert_eq!(e.offset(), Some(storages.start as u64 + 5), "{e}");
    assert!(
        e.to_string()
            .ends_with("expected (key, location, storage type)"),
        "{e}"
    );
    assert!(e.to_string().contains("storages"), "{e}");
}

/// tar/checkpoint.pt rebuilt with `member`'s bytes replaced by `edit` of them.
fn tar_with(member: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let bytes = fixture("tar/checkpoint.pt");
    let members = ptload::archive::tar::members(&bytes).unwrap();
    let mut parts: Vec<(&str, Vec<u8>)> = ["sys_info", "pickle", "tensors", "storages"]
        .iter()
        .map(|&name| (name, bytes[members[name].clone()].to_vec()))
        .collect();
    edit(
        &mut parts
            .iter_mut()
            .find(|(name, _)| *name == member)
            .unwrap()
            .1,
    );
    let files: Vec<(&str, &[u8])> = parts.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    tar(&files)
}

/// Where the first `pattern` starts in `data`.
fn find(data: &[u8], pattern: &[u8]) -> usize {
    data.windows(pattern.len())
        .position(|w| w == pattern)
        .unwrap()
}

#[test]
fn tar_member_pickle_errors_give_the_member_and_its_offset_in_the_file() {
    // The storages member's count pickle `\x80\x02K\x03.` with an opcode that does not exist.
    let bytes = fixture("tar/checkpoint.pt");
    let storages = ptload::archive::tar::members(&bytes).unwrap()["storages"].clone();
    let mut bad = bytes.clone();
    bad[storages.start + 2] = 0xff;
    let e = ptload::load_bytes(bad).unwrap_err();
    assert_eq!(e.offset(), Some(storages.start as u64), "{e}");
    assert!(
        matches!(e.kind(), ErrorKind::Record { record, .. } if record == "tar member 'storages'"),
        "{e}"
    );
}

#[test]
fn tar_storage_views_may_end_exactly_at_their_root_s_end() {
    // The view (target, root, 6, 12) of a 24-float root, made 6 + 18 (the root's end) and
    // 6 + 19 (one past it).
    let view = |numel: u8| {
        tar_with("storages", |d| {
            let at = find(d, b"K\x06K\x0c");
            d[at + 3] = numel;
        })
    };
    let ckpt = ptload::load_bytes(view(18)).unwrap();
    assert_eq!(ckpt.tensors().count(), 7);
    let e = ptload::load_bytes(view(19)).unwrap_err();
    assert!(
        e.to_string()
            .contains("(19 elements at 6) lies outside its root of 24 elements"),
        "{e}"
    );
}

#[test]
fn tar_counts_and_ranks_are_checked() {
    // A negative storage count (BININT -1 for BININT1 3).
    let bad = tar_with("storages", |d| {
        d.splice(2..4, *b"J\xff\xff\xff\xff");
    });
    let e = ptload::load_bytes(bad).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("storage count must be a non-negative int"),
        "{e}"
    );
    // The fixture's tensors have up to 2 dimensions: a rank limit of 2 admits them, 1 does not.
    let loader = |rank| {
        ptload::Loader::new()
            .limits(ptload::Limits::default().with_max_rank(rank))
            .load_bytes(fixture("tar/checkpoint.pt"))
    };
    assert_eq!(loader(2).unwrap().tensors().count(), 7);
    let e = loader(1).unwrap_err();
    assert!(e.to_string().ends_with("2 dimensions"), "{e}");
    // The first tensor (2 dimensions) said to have 1000, and -1.
    for (ndim, want) in [(1000i32, "1000 dimensions"), (-1, "-1 dimensions")] {
        let bad = tar_with("tensors", |d| {
            let at = find(d, b"FloatTensor\n") + 12;
            let at = at + find(&d[at..], b".") + 1;
            d[at..at + 4].copy_from_slice(&ndim.to_le_bytes());
        });
        let e = ptload::load_bytes(bad).unwrap_err();
        assert!(e.to_string().ends_with(want), "{e}");
    }
}

#[test]
fn tar_tensors_may_have_no_dimensions() {
    // The first tensor (4 × 6 at 0 of a float storage) rewritten as a scalar at offset 5.
    let bad = tar_with("tensors", |d| {
        let at = find(d, b"FloatTensor\n") + 12;
        let at = at + find(&d[at..], b".") + 1;
        assert_eq!(d[at..at + 4], 2i32.to_le_bytes());
        let mut scalar = vec![0u8; 8];
        scalar.extend_from_slice(&5i64.to_le_bytes());
        d.splice(at..at + 8 + 2 * 2 * 8 + 8, scalar);
    });
    let ckpt = ptload::Loader::new()
        .weights_only(false)
        .load_bytes(bad)
        .unwrap();
    let t = ckpt.tensor("weights.base").unwrap();
    assert!(t.shape().is_empty());
    let whole = ptload::load_bytes(fixture("tar/checkpoint.pt")).unwrap();
    let base = whole
        .tensor("weights.base")
        .unwrap()
        .to_contiguous_bytes()
        .unwrap();
    assert_eq!(t.to_contiguous_bytes().unwrap(), base[20..24]);
}
