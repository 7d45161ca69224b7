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
