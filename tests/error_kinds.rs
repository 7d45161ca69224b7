//! Errors carry their kind and position as data, not only as text: every safety limit met by a
//! hostile file is `LimitExceeded` naming its `Limits` field, and `Error::offset`,
//! `Error::record` and `Error::tensor_path` say where.

mod common;

use common::{Pickle, ZipBuilder};
use ptload::{Error, ErrorKind, Limits, Loader};

fn load_with(limits: Limits, pickle: Vec<u8>) -> Error {
    Loader::new()
        .limits(limits)
        .load_bytes(ZipBuilder::checkpoint(&pickle, &[]))
        .unwrap_err()
}

/// Asserts `e` is `LimitExceeded { limit, value, max }`.
fn assert_limit(e: &Error, limit: &str, value: u64, max: u64) {
    match e.kind() {
        ErrorKind::LimitExceeded {
            limit: l,
            value: v,
            max: m,
        } => assert_eq!((*l, *v, *m), (limit, value, max), "{e}"),
        _ => panic!("not LimitExceeded: {e}"),
    }
    assert!(
        e.to_string()
            .contains(&format!("limit {limit} exceeded: {value} > {max}")),
        "{e}"
    );
}

#[test]
fn memo_entries_are_limited() {
    // [] memoized at 11 distinct slots; the 11th BINPUT (at byte 3 + 2 * 10) is refused.
    let mut p = Pickle::new().op(b"]");
    for i in 0..=10u8 {
        p = p.op(&[b'q', i]);
    }
    let e = load_with(Limits::default().with_max_memo_entries(10), p.stop());
    assert_limit(&e, "max_memo_entries", 11, 10);
    assert_eq!(e.offset(), Some(3 + 2 * 10));
    assert_eq!(e.record(), Some("archive/data.pkl"));
    assert!(
        e.to_string().contains("archive/data.pkl byte 0x17: "),
        "{e}"
    );
    // Ten are fine.
    let mut p = Pickle::new().op(b"]");
    for i in 0..10u8 {
        p = p.op(&[b'q', i]);
    }
    Loader::new()
        .limits(Limits::default().with_max_memo_entries(10))
        .load_bytes(ZipBuilder::checkpoint(&p.stop(), &[]))
        .unwrap();
}

#[test]
fn pickle_objects_are_limited() {
    // A MARK and 200 Nones: the 101st object is refused.
    let p = Pickle::new().op(b"(").op(&[b'N'; 200]).op(b"l").stop();
    let e = load_with(Limits::default().with_max_pickle_nodes(100), p);
    assert_limit(&e, "max_pickle_nodes", 101, 100);
    assert_eq!(e.offset(), Some(3 + 100));
    // The 101st object made by GLOBAL rather than pushed.
    let p = Pickle::new()
        .op(b"(")
        .op(&[b'N'; 100])
        .global("collections", "OrderedDict")
        .op(b"l")
        .stop();
    let e = load_with(Limits::default().with_max_pickle_nodes(100), p);
    assert_limit(&e, "max_pickle_nodes", 101, 100);
    assert_eq!(e.offset(), Some(3 + 100));
}

#[test]
fn values_are_limited_inclusively() {
    // A list of ten Nones: eleven values, as many as max_values may be.
    let p = || Pickle::new().op(b"(").op(&[b'N'; 10]).op(b"l").stop();
    let ckpt = Loader::new()
        .limits(Limits::default().with_max_values(11))
        .load_bytes(ZipBuilder::checkpoint(&p(), &[]))
        .unwrap();
    assert_eq!(
        ckpt.root,
        ptload::Value::List(vec![ptload::Value::None; 10])
    );
    let e = load_with(Limits::default().with_max_values(10), p());
    assert_limit(&e, "max_values", 11, 10);
}

#[test]
fn tree_depth_is_limited_inclusively() {
    // [[[[]]]]: the innermost list is at depth 3 (the root at 0).
    let p = || Pickle::new().op(b"]]]]").op(b"a").op(b"a").op(b"a").stop();
    let ckpt = Loader::new()
        .limits(Limits::default().with_max_depth(3))
        .load_bytes(ZipBuilder::checkpoint(&p(), &[]))
        .unwrap();
    assert_eq!(ckpt.root.to_string(), "[[[[]]]]");
    let e = load_with(Limits::default().with_max_depth(2), p());
    assert_limit(&e, "max_depth", 3, 2);
}

#[test]
fn the_pickle_stack_is_limited() {
    // One object duplicated 200 times: few objects, a deep stack (bounded by the same field).
    let p = Pickle::new().op(b"N").op(&[b'2'; 200]).stop();
    let e = load_with(Limits::default().with_max_pickle_nodes(100), p);
    assert_limit(&e, "max_pickle_nodes", 101, 100);
    assert_eq!(e.offset(), Some(2 + 1 + 99));
}

#[test]
fn storages_are_limited() {
    let p = Pickle::new()
        .op(b"(")
        .tensor("FloatStorage", "0", 1, 0, &[1], &[1])
        .tensor("FloatStorage", "1", 1, 0, &[1], &[1])
        .tensor("FloatStorage", "2", 1, 0, &[1], &[1])
        .op(b"l")
        .stop();
    let e = load_with(Limits::default().with_max_storages(2), p);
    assert_limit(&e, "max_storages", 3, 2);
    assert_eq!(e.record(), Some("archive/data.pkl"));
    assert!(e.offset().is_some());
}

#[test]
fn tensor_bytes_are_limited_inclusively() {
    // A float32 tensor of 3 elements over a storage of 3: 12 bytes.
    let p = Pickle::new()
        .tensor("FloatStorage", "0", 3, 0, &[3], &[1])
        .stop();
    let file = ZipBuilder::checkpoint(&p, &[("0", &[7u8; 12])]);
    let bytes_with = |max: u64| {
        let ckpt = Loader::new()
            .limits(Limits::default().with_max_tensor_bytes(max))
            .load_bytes(file.clone())
            .unwrap();
        let (_, t) = ckpt.tensors().next().unwrap();
        t.to_contiguous_bytes()
    };
    assert_eq!(bytes_with(12).unwrap(), vec![7u8; 12]);
    assert_limit(&bytes_with(11).unwrap_err(), "max_tensor_bytes", 12, 11);
}

#[test]
fn tensor_rank_is_limited_and_names_the_tensor() {
    let p = Pickle::new()
        .op(b"}")
        .str("conv.0.weight")
        .tensor("FloatStorage", "0", 1, 0, &[1, 1, 1, 1], &[1, 1, 1, 1])
        .op(b"s")
        .stop();
    let e = load_with(Limits::default().with_max_rank(3), p);
    assert_limit(&e, "max_rank", 4, 3);
    assert_eq!(e.tensor_path(), Some("conv.0.weight"));
}

#[test]
fn an_invalid_tensor_names_its_path() {
    let p = Pickle::new()
        .op(b"}")
        .str("a.b")
        .tensor("FloatStorage", "0", 1, 0, &[-1], &[1])
        .op(b"s")
        .stop();
    let e = load_with(Limits::default(), p);
    assert!(matches!(e.kind(), ErrorKind::InvalidTensor { .. }), "{e}");
    assert_eq!(e.tensor_path(), Some("a.b"));
    assert!(e.to_string().contains("tensor 'a.b': "), "{e}");
}

#[test]
fn a_weights_only_refusal_keeps_its_offset() {
    // PROTO 2, then GLOBAL posix.system at byte 2.
    let p = Pickle::new().global("posix", "system").op(b")R").stop();
    let e = load_with(Limits::default(), p);
    assert!(matches!(e.kind(), ErrorKind::WeightsOnly { .. }), "{e}");
    assert_eq!(e.offset(), Some(2));
    assert_eq!(e.record(), Some("archive/data.pkl"));
    // torch's text, unprefixed.
    assert!(
        e.to_string()
            .starts_with("<memory>: Weights only load failed"),
        "{e}"
    );
}

#[test]
fn container_errors_have_offsets() {
    let mut bytes = ZipBuilder::checkpoint(&Pickle::new().op(b"N").stop(), &[]);
    let n = bytes.len();
    bytes[n - 6..n - 2].copy_from_slice(&u32::MAX.to_le_bytes()); // the directory's offset
    let e = ptload::load_bytes(bytes).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Zip { .. }), "{e}");
    assert!(e.offset().is_some(), "{e}");
    assert_eq!(e.tensor_path(), None);
}

#[test]
fn inflated_records_are_limited() {
    // 1024 floats, deflated; the record may inflate to at most 1000 bytes.
    let data = vec![0u8; 4096];
    let pickle = Pickle::new()
        .tensor("FloatStorage", "0", 1024, 0, &[1024], &[1])
        .stop();
    let bytes = ZipBuilder::new("archive")
        .add("data.pkl", &pickle)
        .add_entry("archive/data/0", &common::deflate(&data), 8, 4096)
        .add("version", b"3\n")
        .finish();
    let e = Loader::new()
        .limits(Limits::default().with_max_record_bytes(1000))
        .load_bytes(bytes.clone())
        .unwrap_err();
    assert_limit(&e, "max_record_bytes", 4096, 1000);
    let ckpt = Loader::new()
        .limits(Limits::default().with_max_record_bytes(4096))
        .load_bytes(bytes)
        .unwrap();
    assert_eq!(
        ckpt.tensor("").unwrap().to_contiguous_bytes().unwrap(),
        data
    );
}
