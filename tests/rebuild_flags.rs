//! What the rebuild functions record beyond the view: `requires_grad` of plain and meta
//! tensors (hand-made pickles, torch's argument order) and the quantizer parameters of
//! quantized tensors (real torch 2.15, `tests/fixtures/make.py`'s `make_quantized`); and the
//! other calls given a meaning (`Parameter(t)`, `complex`, `_get_layout`, TorchScript's typed
//! lists) or refused by name (the tensor kinds ptload does not build).

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
    let tensor = |requires_grad: bool| {
        Pickle::new()
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b"(")
            .v2_args("FloatStorage", requires_grad)
            .op(b"tR")
            .stop()
    };
    for want in [true, false] {
        let bytes = ZipBuilder::checkpoint(&tensor(want), &[("0", &[0u8; 8])]);
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
    // And every smaller limit fails at the same value with the same error, wherever in the
    // tensor's arguments it is reached.
    for at in 1..smallest(false) {
        let limits = ptload::Limits::default().with_max_values(at);
        assert_eq!(
            load(&tensor(1, false, false), limits)
                .unwrap_err()
                .to_string(),
            load(&tensor(1, true, false), limits)
                .unwrap_err()
                .to_string(),
            "max_values {at}"
        );
    }
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

/// `_rebuild_tensor_v2(storage, 0, (2,), (1,), False, OrderedDict())`, without `STOP`.
fn plain_tensor(p: Pickle) -> Pickle {
    p.global("torch._utils", "_rebuild_tensor_v2")
        .op(b"(")
        .plain_v2_args()
        .op(b"tR")
}

#[test]
fn calling_parameter_makes_a_parameter() {
    // torch.nn.Parameter(t) and Parameter(t, False): requires_grad defaults to True.
    for (flag, want) in [(&b""[..], true), (b"\x88", true), (b"\x89", false)] {
        let p = plain_tensor(
            Pickle::new()
                .global("torch.nn.parameter", "Parameter")
                .op(b"("),
        )
        .op(flag)
        .op(b"tR")
        .stop();
        let ckpt = ptload::load_bytes(ZipBuilder::checkpoint(&p, &[("0", &[0u8; 8])])).unwrap();
        let t = ckpt.tensor("").unwrap();
        assert_eq!(
            (t.meta().kind, t.requires_grad()),
            (ptload::torch::TensorKind::Parameter, want)
        );
    }
}

fn root_of(p: Pickle, weights_only: bool) -> Result<Value, String> {
    ptload::Loader::new()
        .weights_only(weights_only)
        .load_bytes(ZipBuilder::checkpoint(&p.stop(), &[]))
        .map(|c| c.root.clone())
        .map_err(|e| e.to_string())
}

#[test]
fn builtins_and_layouts_become_values() {
    let call = |module: &str, name: &str, args: &[u8]| {
        root_of(
            Pickle::new()
                .global(module, name)
                .op(b"(")
                .op(args)
                .op(b"tR"),
            true,
        )
    };
    // complex(1, 2) == (1+2j), complex(1.5) == (1.5+0j), complex() == 0j in Python.
    let one_two = call("builtins", "complex", b"K\x01K\x02");
    assert_eq!(one_two, Ok(Value::Complex(1.0, 2.0)));
    let real = call("builtins", "complex", b"G\x3f\xf8\x00\x00\x00\x00\x00\x00");
    assert_eq!(real, Ok(Value::Complex(1.5, 0.0)));
    assert_eq!(
        call("builtins", "complex", b""),
        Ok(Value::Complex(0.0, 0.0))
    );
    let e = call("builtins", "complex", b"X\x01\x00\x00\x00a").unwrap_err();
    assert!(
        e.contains("unexpected arguments for builtins.complex"),
        "{e}"
    );
    // What sparse tensors pickle for their layout: the layout object, by name.
    let layout = call(
        "torch.serialization",
        "_get_layout",
        b"X\x10\x00\x00\x00torch.sparse_coo",
    );
    assert_eq!(layout, Ok(Value::Global("torch.sparse_coo".into())));
    let e = call("torch.serialization", "_get_layout", b"K\x01").unwrap_err();
    assert!(
        e.contains("unexpected arguments for torch.serialization._get_layout"),
        "{e}"
    );
}

#[test]
fn torchscript_typed_lists_are_their_argument() {
    // torch.jit._pickle.build_intlist([1, 2]) is the list [1, 2] (outside a TorchScript
    // archive, with other globals allowed).
    for name in ["build_intlist", "build_doublelist", "restore_type_tag"] {
        let p = Pickle::new()
            .global("torch.jit._pickle", name)
            .op(b"(](K\x01K\x02etR");
        assert_eq!(
            root_of(p, false),
            Ok(Value::List(vec![Value::Int(1), Value::Int(2)])),
            "{name}"
        );
    }
    let p = Pickle::new()
        .global("torch.jit._pickle", "build_intlist")
        .op(b")R");
    let e = root_of(p, false).unwrap_err();
    assert!(
        e.contains("unexpected arguments for torch.jit._pickle.build_intlist"),
        "{e}"
    );
}

#[test]
fn tensor_kinds_ptload_does_not_build_are_refused_by_name() {
    for name in [
        "_rebuild_sparse_tensor",
        "_rebuild_nested_tensor",
        "_rebuild_wrapper_subclass",
        "_rebuild_device_tensor_from_numpy",
        "_rebuild_device_tensor_from_cpu_tensor",
        "_rebuild_xla_tensor",
    ] {
        // Under weights-only, torch allows all but the nested and XLA ones (refused earlier,
        // as globals outside the allowlist).
        let allowed = !matches!(name, "_rebuild_nested_tensor" | "_rebuild_xla_tensor");
        for weights_only in [false, true].into_iter().filter(|&w| !w || allowed) {
            let p = Pickle::new()
                .op(b"}X\x01\x00\x00\x00w")
                .global("torch._utils", name)
                .op(b")Rs");
            let e = root_of(p, weights_only).unwrap_err();
            assert!(
                e.contains(&format!(
                    "tensor 'w' is built by torch._utils.{name}, which ptload does not support yet"
                )),
                "{e}"
            );
        }
    }
}

#[test]
fn bytes_and_bytearrays_as_python_pickles_them() {
    // pickle.dumps(x, protocol) in CPython 3.11: protocol 2 spells bytes as
    // _codecs.encode(text, 'latin1') and bytearray() as a call with no arguments.
    for (pickle, want) in [
        (
            &b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00\xc3\xa9aq\x01X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq\x04."[..],
            Value::Bytes(b"\xe9a".to_vec()),
        ),
        (
            b"\x80\x02c__builtin__\nbytearray\nq\x00c_codecs\nencode\nq\x01X\x03\x00\x00\x00\xc3\xa9aq\x02X\x06\x00\x00\x00latin1q\x03\x86q\x04Rq\x05\x85q\x06Rq\x07.",
            Value::ByteArray(b"\xe9a".to_vec()),
        ),
        (b"\x80\x02c__builtin__\nbytearray\nq\x00)Rq\x01.", Value::ByteArray(Vec::new())),
        // Python 2.7's bytearray.__reduce__ gives (bytearray, (u'\xe9a', 'latin-1')); Python 3
        // loads its pickle as bytearray(b'\xe9a').
        (
            b"c__builtin__\nbytearray\n(V\xe9a\nVlatin-1\ntR.",
            Value::ByteArray(b"\xe9a".to_vec()),
        ),
        // _codecs.encode('\xe9') is UTF-8: b'\xc3\xa9'.
        (b"c_codecs\nencode\n(V\xe9\ntR.", Value::Bytes(b"\xc3\xa9".to_vec())),
        (
            b"\x80\x03cbuiltins\nbytearray\nq\x00C\x02abq\x01\x85q\x02Rq\x03.",
            Value::ByteArray(b"ab".to_vec()),
        ),
    ] {
        let ckpt = ptload::load_bytes(ZipBuilder::checkpoint(pickle, &[]))
            .unwrap_or_else(|e| panic!("{}: {e}", pickle.escape_ascii()));
        assert_eq!(ckpt.root, want);
    }
}

/// A list of `count` `_rebuild_tensor_v2` calls of rank `rank` (sizes and strides as tuples,
/// as torch writes them, or as lists, which take the general path), each with `hooks` as its
/// backward hooks.
fn tensors(count: usize, rank: usize, list_dims: bool, hooks: &[u8]) -> Vec<u8> {
    let dims = |p: Pickle| {
        let ones = vec![1; rank];
        if list_dims {
            let mut p = p.op(b"](");
            for &v in &ones {
                p = p.int(v);
            }
            p.op(b"e")
        } else {
            p.ints(&ones)
        }
    };
    let mut p = Pickle::new().op(b"](");
    for _ in 0..count {
        p = p
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b"(")
            .storage("FloatStorage", "0", 6)
            .int(0);
        p = dims(dims(p)).op(b"\x89").op(hooks).op(b"tR");
    }
    p.op(b"e").stop()
}

#[test]
fn plain_and_general_rebuilds_count_alike_for_any_rank_count_and_hooks() {
    let load = |pickle: &[u8], limits: ptload::Limits| {
        let bytes = ZipBuilder::checkpoint(pickle, &[("0", &[0u8; 24])]);
        ptload::Loader::new().limits(limits).load_bytes(bytes)
    };
    // The smallest limit that loads, with either spelling.
    let smallest = |count, rank, hooks: &[u8], limit: fn(u64) -> ptload::Limits| {
        let at = |list_dims| {
            (1..400)
                .find(|&n| load(&tensors(count, rank, list_dims, hooks), limit(n)).is_ok())
                .unwrap()
        };
        (at(false), at(true))
    };
    let values = |n| ptload::Limits::default().with_max_values(n);
    let depth = |n| ptload::Limits::default().with_max_depth(n);
    let rank_limit = |n| ptload::Limits::default().with_max_rank(n);
    let empty_ordered_dict = b"ccollections\nOrderedDict\n)R";
    // [[[None]]] as hooks: converted, so its depth and values count.
    let nested_hooks = b"]]]Naaa";
    for (count, rank, hooks) in [
        (4, 1, &empty_ordered_dict[..]),
        (4, 3, empty_ordered_dict),
        (1, 2, nested_hooks),
        (3, 1, nested_hooks),
    ] {
        let (plain, general) = smallest(count, rank, hooks, values);
        assert_eq!(plain, general, "max_values: {count} × rank {rank}");
        let (plain, general) = smallest(count, rank, hooks, depth);
        assert_eq!(plain, general, "max_depth: {count} × rank {rank}");
        // max_rank is inclusive on both paths.
        let ranks = smallest(count, rank, hooks, rank_limit);
        assert_eq!(
            ranks,
            (rank as u64, rank as u64),
            "max_rank: {count} × rank {rank}"
        );
    }
    // An empty call other than OrderedDict() as hooks is converted, with its errors.
    let size_hooks = b"ctorch\nSize\n)R";
    let errors: Vec<String> = [false, true]
        .map(|list_dims| {
            load(
                &tensors(1, 1, list_dims, size_hooks),
                ptload::Limits::default(),
            )
            .unwrap_err()
            .to_string()
        })
        .into();
    assert!(
        errors[0].contains("torch.Size needs a tuple"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0], errors[1]);
}

#[test]
fn rebuild_tensor_v3_takes_its_dtype_and_metadata() {
    // _rebuild_tensor_v3(storage, 0, (2,), (1,), False, OrderedDict(), dtype[, metadata]), the
    // argument order of torch's Tensor.__reduce_ex__; metadata sets the neg bit.
    for (metadata, neg) in [(&b""[..], false), (b"}X\x03\x00\x00\x00neg\x88s", true)] {
        let p = Pickle::new()
            .global("torch._utils", "_rebuild_tensor_v3")
            .op(b"(")
            .plain_v2_args()
            .global("torch", "int32")
            .op(metadata)
            .op(b"tR")
            .stop();
        let ckpt = ptload::load_bytes(ZipBuilder::checkpoint(&p, &[("0", &[0u8; 8])]))
            .unwrap_or_else(|e| panic!("{e}"));
        let t = ckpt.tensor("").unwrap();
        assert_eq!((t.dtype(), t.meta().neg), (ptload::Dtype::Int32, neg));
    }
}

#[test]
fn tensor_subclasses_keep_their_class_and_a_state_that_is_not_empty() {
    // _rebuild_from_type_v2(_rebuild_tensor_v2, new_type, args, state), as torch writes a
    // tensor subclass or a tensor with Python attributes.
    let from_type = |module: &str, class: &str, state: &[u8]| {
        let p = Pickle::new()
            .global("torch._tensor", "_rebuild_from_type_v2")
            .op(b"(")
            .global("torch._utils", "_rebuild_tensor_v2")
            .global(module, class)
            .op(b"(")
            .plain_v2_args()
            .op(b"t")
            .op(state)
            .op(b"tR")
            .stop();
        let ckpt = ptload::Loader::new()
            .weights_only(false)
            .load_bytes(ZipBuilder::checkpoint(&p, &[("0", &[0u8; 8])]))
            .unwrap_or_else(|e| panic!("{e}"));
        let t = ckpt.tensor("").unwrap();
        t.meta().attributes.as_deref().map(|a| a.to_string())
    };
    // Empty states (None, {}, ({}, None)) leave a plain tensor without attributes.
    for state in [&b"N"[..], b"}", b"}N\x86"] {
        assert_eq!(from_type("torch", "Tensor", state), None, "{state:?}");
        assert_eq!(from_type("torch.nn.parameter", "Parameter", state), None);
    }
    let foo = b"}X\x03\x00\x00\x00fooK\x01s";
    assert_eq!(
        from_type("torch", "Tensor", foo),
        Some(r#"{"foo": 1}"#.into())
    );
    // A subclass is named by a `__class__` attribute, unless its state already holds some.
    assert_eq!(
        from_type("__main__", "Sub", b"N"),
        Some(r#"{"__class__": __main__.Sub}"#.into())
    );
    assert_eq!(
        from_type("__main__", "Sub", foo),
        Some(r#"{"foo": 1}"#.into())
    );
}

#[test]
fn only_floating_point_and_complex_tensors_may_require_gradients() {
    // torch 2.15 refuses the rest in the words of the call that sets the flag: the
    // rebuild functions' `requires_grad` setter ("only …"), Parameter and
    // _rebuild_meta_tensor_no_storage's empty_strided ("Only …").
    // Two elements of `element_size` bytes in storage "0".
    let load_sized = |p: Pickle, element_size: usize| {
        ptload::load_bytes(ZipBuilder::checkpoint(
            &p.stop(),
            &[("0", &vec![0u8; 2 * element_size])],
        ))
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let load = |p: Pickle| load_sized(p, 8);
    // As torch writes it, or with sizes and strides as lists (the general path).
    let v2 = |p: Pickle, class: &str, requires_grad: bool, list_dims: bool| {
        let p = p.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        let p = if list_dims {
            p.storage(class, "0", 2)
                .int(0)
                .op(b"](K\x02e](K\x01e")
                .op(if requires_grad { b"\x88" } else { b"\x89" })
                .global("collections", "OrderedDict")
                .op(b")R")
        } else {
            p.v2_args(class, requires_grad)
        };
        p.op(b"tR")
    };
    let setter =
        "tensor '<root>': only Tensors of floating point and complex dtype can require gradients";
    let constructor =
        "tensor '<root>': Only Tensors of floating point and complex dtype can require gradients";
    for list_dims in [false, true] {
        for (class, size) in [
            ("FloatStorage", 4),
            ("HalfStorage", 2),
            ("BFloat16Storage", 2),
            ("ComplexFloatStorage", 8),
        ] {
            let p = v2(Pickle::new(), class, true, list_dims);
            assert_eq!(load_sized(p, size), Ok(()), "{class}");
        }
        for (class, size) in [("LongStorage", 8), ("BoolStorage", 1), ("ByteStorage", 1)] {
            let e = load_sized(v2(Pickle::new(), class, true, list_dims), size).unwrap_err();
            assert!(e.ends_with(setter), "{class}: {e}");
            let p = v2(Pickle::new(), class, false, list_dims);
            assert_eq!(load_sized(p, size), Ok(()), "{class}");
        }
    }
    // _rebuild_parameter(int tensor, True, OrderedDict()).
    let p = Pickle::new()
        .global("torch._utils", "_rebuild_parameter")
        .op(b"(");
    let p = v2(p, "LongStorage", false, false)
        .op(b"\x88")
        .global("collections", "OrderedDict")
        .op(b")RtR");
    assert!(load(p).unwrap_err().ends_with(constructor));
    // _rebuild_meta_tensor_no_storage(torch.int64, (2,), (1,), True).
    let meta = |dtype: &str| {
        Pickle::new()
            .global("torch._utils", "_rebuild_meta_tensor_no_storage")
            .op(b"(")
            .global("torch", dtype)
            .ints(&[2])
            .ints(&[1])
            .op(b"\x88tR")
    };
    assert_eq!(load(meta("float8_e4m3fn")), Ok(()));
    assert!(load(meta("int64")).unwrap_err().ends_with(constructor));
    // _rebuild_qtensor(storage, 0, (2,), (1,), (per_tensor_affine, 0.1, 0), True, OrderedDict()).
    let q = Pickle::new()
        .global("torch._utils", "_rebuild_qtensor")
        .op(b"(")
        .storage("QInt8Storage", "0", 2)
        .int(0)
        .ints(&[2])
        .ints(&[1])
        .op(b"(")
        .global("torch", "per_tensor_affine")
        .op(b"G\x3f\xb9\x99\x99\x99\x99\x99\x9a")
        .int(0)
        .op(b"t\x88")
        .global("collections", "OrderedDict")
        .op(b")RtR");
    let e = load_sized(q, 1).unwrap_err();
    assert!(e.ends_with(setter), "{e}");
}
