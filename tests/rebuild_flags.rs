//! What the rebuild functions record beyond the view: `requires_grad` of plain and meta
//! tensors (hand-made pickles, torch's argument order) and the quantizer parameters of
//! quantized tensors (real torch 2.15, `tests/fixtures/make.py`'s `make_quantized`).

mod common;

use common::{fixture, Pickle, ZipBuilder};
use ptload::Value;

#[test]
fn quantized_tensors_keep_their_quantizer() {
    let ckpt = ptload::load_bytes(fixture("zip/quantized.pt")).unwrap();
    // torch.quantize_per_tensor(x, scale, zero_point, dtype), as make.py calls it.
    for (path, scale, zero_point) in [
        ("qint8", 0.05, -3),
        ("quint8", 0.03, 128),
        ("qint32", 0.001, 7),
    ] {
        let t = ckpt.tensor(path).unwrap();
        assert_eq!(
            t.meta().quantizer.as_deref(),
            Some(&Value::Tuple(vec![
                Value::Global("torch.per_tensor_affine".into()),
                Value::Float(scale),
                Value::Int(zero_point),
            ])),
            "{path}"
        );
    }
}

#[test]
fn requires_grad_is_kept() {
    // _rebuild_tensor_v2(storage, 0, (2,), (1,), requires_grad, OrderedDict())
    let tensor = |flag: &[u8]| {
        Pickle::new()
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b"(")
            .storage("FloatStorage", "0", 2)
            .int(0)
            .ints(&[2])
            .ints(&[1])
            .op(flag)
            .global("collections", "OrderedDict")
            .op(b")R")
            .op(b"tR")
            .stop()
    };
    for (flag, want) in [(b"\x88", true), (b"\x89", false)] {
        let bytes = ZipBuilder::checkpoint(&tensor(flag), &[("0", &[0u8; 8])]);
        let ckpt = ptload::load_bytes(bytes).unwrap();
        assert_eq!(ckpt.tensor("").unwrap().requires_grad(), want);
    }
    // _rebuild_meta_tensor_no_storage(dtype, size, stride, requires_grad)
    for (flag, want) in [(b"\x88", true), (b"\x89", false)] {
        let p = Pickle::new()
            .global("torch._utils", "_rebuild_meta_tensor_no_storage")
            .op(b"(")
            .global("torch", "float32")
            .ints(&[2])
            .ints(&[1])
            .op(flag)
            .op(b"tR")
            .stop();
        let ckpt = ptload::load_bytes(ZipBuilder::checkpoint(&p, &[])).unwrap();
        let t = ckpt.tensor("").unwrap();
        assert_eq!((t.requires_grad(), t.shape()), (want, &[2u64][..]));
    }
}

/// `_rebuild_tensor_v2` as torch writes it takes a path that reads the nodes directly; any
/// other spelling of the same call takes the general one. Both must agree on the tensor, its
/// errors and its limits.
#[test]
fn plain_and_general_rebuilds_agree() {
    // size and stride as tuples or lists; 6 arguments, or 7 with empty metadata.
    let tensor = |offset: i64, list_dims: bool, metadata: bool| {
        let dims = |p: Pickle, values: &[i64]| {
            if list_dims {
                let mut p = p.op(b"]").op(b"(");
                for &v in values {
                    p = p.int(v);
                }
                p.op(b"e")
            } else {
                p.ints(values)
            }
        };
        let p = Pickle::new()
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b"(")
            .storage("FloatStorage", "0", 6)
            .int(offset);
        let p = dims(dims(p, &[2, 2]), &[3, 1]).op(b"\x88");
        let p = p.global("collections", "OrderedDict").op(b")R");
        let p = if metadata { p.op(b"}") } else { p };
        p.op(b"tR").stop()
    };
    let data: Vec<u8> = (0..24).collect();
    let load = |pickle: &[u8], limits: ptload::Limits| {
        let bytes = ZipBuilder::checkpoint(pickle, &[("0", &data)]);
        ptload::Loader::new().limits(limits).load_bytes(bytes)
    };
    let describe = |ckpt: &ptload::Checkpoint| {
        let t = ckpt.tensor("").unwrap();
        (
            t.shape().to_vec(),
            t.stride().to_vec(),
            t.storage_offset(),
            t.requires_grad(),
            t.dtype(),
            t.to_contiguous_bytes().unwrap(),
        )
    };
    let plain = describe(&load(&tensor(1, false, false), ptload::Limits::default()).unwrap());
    assert_eq!(plain.0, [2, 2]);
    assert_eq!((plain.1.clone(), plain.2, plain.3), (vec![3, 1], 1, true));
    // float32 elements 1, 2, 4 and 5 of 0..6.
    let bytes: Vec<u8> = (4..12).chain(16..24).collect();
    assert_eq!(plain.5, bytes);
    for (list_dims, metadata) in [(true, false), (false, true), (true, true)] {
        let general = load(&tensor(1, list_dims, metadata), ptload::Limits::default()).unwrap();
        assert_eq!(
            describe(&general),
            plain,
            "lists {list_dims}, metadata {metadata}"
        );
    }
    // A view past the end of its storage: the same error either way.
    let plain_err = load(&tensor(3, false, false), ptload::Limits::default())
        .unwrap_err()
        .to_string();
    let general_err = load(&tensor(3, true, false), ptload::Limits::default())
        .unwrap_err()
        .to_string();
    assert_eq!(plain_err, general_err);
    // Every value counts the same: the smallest max_values that loads is the same.
    let smallest = |list_dims: bool| {
        (1..100)
            .find(|&n| {
                let limits = ptload::Limits::default().with_max_values(n);
                load(&tensor(1, list_dims, false), limits).is_ok()
            })
            .unwrap()
    };
    assert_eq!(smallest(false), smallest(true));
    // The same for depth.
    let shallowest = |list_dims: bool| {
        (1..100)
            .find(|&n| {
                let limits = ptload::Limits::default().with_max_depth(n);
                load(&tensor(1, list_dims, false), limits).is_ok()
            })
            .unwrap()
    };
    assert_eq!(shallowest(false), shallowest(true));
    let at = smallest(false) - 1;
    let limits = ptload::Limits::default().with_max_values(at);
    assert_eq!(
        load(&tensor(1, false, false), limits)
            .unwrap_err()
            .to_string(),
        load(&tensor(1, true, false), limits)
            .unwrap_err()
            .to_string()
    );
}

/// What the plain path must leave to the general one: its errors, in its words.
#[test]
fn calls_unlike_torch_s_take_the_general_path_and_its_errors() {
    let data = [0u8; 24];
    let load = |pickle: Vec<u8>| {
        let bytes = ZipBuilder::checkpoint(&pickle, &[("0", &data)]);
        ptload::load_bytes(bytes).unwrap_err().to_string()
    };
    // _rebuild_tensor_v2(storage, offset, size, stride, False, hooks)
    let call = |offset: i64, size: &[i64], stride: &[i64], hooks: &[u8]| {
        Pickle::new()
            .tensor_with_hooks("FloatStorage", "0", 6, offset, size, stride, hooks)
            .stop()
    };
    let e = load(call(-1, &[2], &[1], b""));
    assert!(
        e.contains("storage offset must be a non-negative int, not -1"),
        "{e}"
    );
    let e = load(call(0, &[2, 1], &[1], b""));
    assert!(e.contains("size has 2 dimensions but stride has 1"), "{e}");
    let e = load(call(0, &[-2], &[1], b""));
    assert!(e.contains("negative size -2"), "{e}");
    // Hooks holding something that cannot be converted: `{'k': 1()}` set on the OrderedDict.
    let e = load(call(0, &[2], &[1], b"(X\x01\x00\x00\x00kK\x01)Ru"));
    assert!(
        e.contains("a call whose callable is a int, not a global"),
        "{e}"
    );
}
