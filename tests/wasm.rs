//! The wasm side of the npm package (`src/wasm/`), under Node with wasm-bindgen-test: the
//! planner's rounds, its JS values, and that every error is the native loader's, word for word.
//!
//! Run (scripts/test does):
//! `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner cargo test
//! --target wasm32-unknown-unknown --no-default-features --features wasm --test wasm`
#![cfg(all(target_arch = "wasm32", feature = "wasm"))]

use js_sys::{Array, Function, Map, Object, Reflect};
use ptload::source::{ByteSource, SparseBytes};
use ptload::torch::{Dict, Object as PyObject};
use ptload::wasm::Planner;
use ptload::{ErrorKind, Loader, Value};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::wasm_bindgen_test;

const VIEWS: &[u8] = include_bytes!("fixtures/zip/views.pt");
const NESTED: &[u8] = include_bytes!("fixtures/zip/nested.pt");
const DEFLATED: &[u8] = include_bytes!("fixtures/zip/deflated.pt");
const LEGACY: &[u8] = include_bytes!("fixtures/legacy/state_dict.pt");
const CUDA: &[u8] = include_bytes!("fixtures/locations/zip_cuda0.pt");
const MODULE: &[u8] = include_bytes!("fixtures/modules/full_module.pt");

fn get(v: &JsValue, key: &str) -> JsValue {
    Reflect::get(v, &JsValue::from_str(key)).unwrap()
}

fn options(pairs: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in pairs {
        Reflect::set(&o, &JsValue::from_str(k), v).unwrap();
    }
    o.into()
}

fn message(e: JsValue) -> String {
    e.dyn_into::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .unwrap_or_else(|v| format!("not an Error: {v:?}"))
}

/// Runs the driver loop as the JS wrapper does; returns the rounds taken and bytes handed in.
fn drive(p: &mut Planner, file: &[u8], callback: Option<Function>) -> Result<(usize, u64), String> {
    let mut handed = 0;
    for round in 1..=10 {
        let need = p.step(callback.clone()).map_err(message)?;
        if need.is_null() {
            return Ok((round, handed));
        }
        for range in Array::from(&need).iter() {
            let range = Array::from(&range);
            let offset = range.get(0).as_f64().unwrap() as usize;
            let len = range.get(1).as_f64().unwrap() as usize;
            p.insert(offset as f64, file[offset..offset + len].to_vec());
            handed += len as u64;
        }
    }
    Err("no plan after 10 rounds".into())
}

fn identity() -> Function {
    Function::new_with_args("x", "return x")
}

/// The native loader's message for `file` (planned whole, with `loader`).
fn native_error(loader: &Loader, name: &str, file: &[u8]) -> String {
    let e = loader.plan(name, file).unwrap_err();
    assert!(!matches!(e.kind(), ErrorKind::NeedBytes { .. }));
    e.to_string()
}

#[wasm_bindgen_test]
fn zip_plans_in_rounds_without_tensor_bytes() {
    let mut p = Planner::new("views.pt".into(), VIEWS.len() as f64, JsValue::UNDEFINED).unwrap();
    let (rounds, handed) = drive(&mut p, VIEWS, None).unwrap();
    assert!(rounds <= 6, "{rounds} rounds");
    let storages = p.storages().unwrap();
    assert!(storages.length() > 0);
    let tree = p.tree(&identity(), &identity()).unwrap();
    assert_eq!(get(&tree, "format"), "zip");
    assert_eq!(get(&tree, "byteOrder"), "little");
    let tensors = Array::from(&get(&tree, "tensors"));
    let first = Array::from(&tensors.get(0));
    assert_eq!(first.get(0), "base");
    assert_eq!(get(&first.get(1), "dtype"), "float32");
    // Each record's bytes were not needed (the file is small: the first round may hold them).
    assert!(handed <= VIEWS.len() as u64 + 262, "{handed}");
    for s in storages.iter() {
        let record = get(&s, "record");
        assert_eq!(get(&record, "deflated"), false);
    }
}

#[wasm_bindgen_test]
fn legacy_files_need_the_whole_file() {
    let mut p = Planner::new("legacy.pt".into(), LEGACY.len() as f64, JsValue::UNDEFINED).unwrap();
    let need = p.step(None).unwrap();
    let first = Array::from(&Array::from(&need).get(0));
    assert_eq!(first.get(0).as_f64(), Some(0.0));
    drive(&mut p, LEGACY, None).unwrap();
    let tree = p.tree(&identity(), &identity()).unwrap();
    assert_eq!(get(&tree, "format"), "legacy");
}

#[wasm_bindgen_test]
fn tree_values_are_plain_js() {
    let mut p = Planner::new("nested.pt".into(), NESTED.len() as f64, JsValue::UNDEFINED).unwrap();
    drive(&mut p, NESTED, None).unwrap();
    let root = get(&p.tree(&identity(), &identity()).unwrap(), "root");
    let ints = Array::from(&get(&root, "ints"));
    assert!(ints.iter().any(|v| v.is_bigint()));
    assert_eq!(ints.get(1).as_f64(), Some(1.0));
    assert!(get(&root, "int_keys").is_instance_of::<Map>());
    assert_eq!(get(&root, "str"), "héllo wörld ✓ 日本");
}

#[wasm_bindgen_test]
fn deflated_records_inflate_as_natively() {
    let mut p = Planner::new(
        "deflated.pt".into(),
        DEFLATED.len() as f64,
        JsValue::UNDEFINED,
    )
    .unwrap();
    drive(&mut p, DEFLATED, None).unwrap();
    let native = Loader::new().plan("deflated.pt", DEFLATED).unwrap();
    for (i, s) in native.storages.iter().enumerate() {
        let r = s.record.as_ref().unwrap();
        let compressed =
            DEFLATED[r.data_offset as usize..(r.data_offset + r.stored_len) as usize].to_vec();
        let ours = p.inflate(i, compressed).unwrap();
        assert_eq!(
            ours,
            r.read(DEFLATED, u64::MAX).unwrap().into_owned(),
            "{}",
            s.key
        );
    }
    // A corrupt stream fails with the native message.
    let r = native.storages[0].record.as_ref().unwrap();
    let e = p.inflate(0, vec![0xff; r.stored_len as usize]).unwrap_err();
    let mut sparse = SparseBytes::new(DEFLATED.len() as u64);
    sparse.insert(r.data_offset, vec![0xff; r.stored_len as usize]);
    let want = r
        .read(&sparse, u64::MAX)
        .unwrap_err()
        .in_file("deflated.pt")
        .to_string();
    assert_eq!(message(e), want);
    assert_eq!(sparse.len(), DEFLATED.len() as u64);
}

#[wasm_bindgen_test]
fn errors_are_the_native_messages() {
    let cases: [(&str, &[u8]); 3] = [
        ("empty.pt", b""),
        ("garbage.pt", b"not a checkpoint, not at all, just text"),
        ("truncated.pt", &VIEWS[..VIEWS.len() / 2]),
    ];
    for (name, file) in cases {
        let mut p = Planner::new(name.into(), file.len() as f64, JsValue::UNDEFINED).unwrap();
        let ours = drive(&mut p, file, None).unwrap_err();
        assert_eq!(ours, native_error(&Loader::new(), name, file), "{name}");
    }
    // Weights-only refusal.
    let mut p = Planner::new("m.pt".into(), MODULE.len() as f64, JsValue::UNDEFINED).unwrap();
    let ours = drive(&mut p, MODULE, None).unwrap_err();
    assert_eq!(ours, native_error(&Loader::new(), "m.pt", MODULE));
    let mut p = Planner::new(
        "m.pt".into(),
        MODULE.len() as f64,
        options(&[("weightsOnly", JsValue::FALSE)]),
    )
    .unwrap();
    drive(&mut p, MODULE, None).unwrap();
}

#[wasm_bindgen_test]
fn map_location_strings_and_callbacks_fail_as_natively() {
    // A cuda:0 file with no mapLocation: torch's CUDA error.
    let mut p = Planner::new("cuda.pt".into(), CUDA.len() as f64, JsValue::UNDEFINED).unwrap();
    let ours = drive(&mut p, CUDA, None).unwrap_err();
    assert_eq!(ours, native_error(&Loader::new(), "cuda.pt", CUDA));
    // The same error from a callback that returns "cuda:1", after one call.
    let calls = Function::new_with_args(
        "s, loc",
        "globalThis.__calls = (globalThis.__calls || 0) + 1; return 'cuda:1';",
    );
    let mut p = Planner::new(
        "cuda.pt".into(),
        CUDA.len() as f64,
        options(&[("callback", JsValue::TRUE)]),
    )
    .unwrap();
    let ours = drive(&mut p, CUDA, Some(calls)).unwrap_err();
    let mut native = Loader::new();
    native.map_location("cuda:1");
    assert_eq!(ours, native_error(&native, "cuda.pt", CUDA));
    let count = Reflect::get(&js_sys::global(), &JsValue::from_str("__calls")).unwrap();
    assert_eq!(count.as_f64(), Some(1.0));
    // A dict that maps the tag to cpu loads; "meta" plans no record.
    let dict: Array = [Array::of2(&"cuda:0".into(), &"cpu".into())]
        .iter()
        .collect();
    let mut p = Planner::new(
        "cuda.pt".into(),
        CUDA.len() as f64,
        options(&[("mapLocation", dict.into())]),
    )
    .unwrap();
    drive(&mut p, CUDA, None).unwrap();
    assert!(p
        .storages()
        .unwrap()
        .iter()
        .all(|s| get(&s, "device") == "cpu"));
    let mut p = Planner::new(
        "cuda.pt".into(),
        CUDA.len() as f64,
        options(&[("mapLocation", "meta".into())]),
    )
    .unwrap();
    drive(&mut p, CUDA, None).unwrap();
    assert!(p
        .storages()
        .unwrap()
        .iter()
        .all(|s| get(&s, "record").is_null()));
}

/// A list nested `depth` deep, its innermost item `leaf` (built without recursion).
fn nested(depth: usize, leaf: Value, dicts: bool) -> Value {
    let mut v = leaf;
    for i in 0..depth {
        v = if dicts && i % 2 == 1 {
            Value::Dict(Box::new(Dict {
                class: "dict".into(),
                items: vec![(Value::Str("k".into()), v)],
                attributes: vec![],
            }))
        } else {
            Value::List(vec![v])
        };
    }
    v
}

/// Takes a deep tree apart without recursion (dropping it whole would recurse).
fn dismantle(mut v: Value) {
    loop {
        v = match v {
            Value::List(mut items) => items.pop().unwrap_or(Value::None),
            Value::Dict(mut d) => d.items.pop().map(|(_, v)| v).unwrap_or(Value::None),
            _ => return,
        };
    }
}

#[wasm_bindgen_test]
fn a_100_000_deep_tree_converts_without_recursion() {
    const DEPTH: usize = 100_000;
    for dicts in [false, true] {
        let tree = nested(DEPTH, Value::Str("bottom".into()), dicts);
        let js = ptload::wasm::value_to_js(&tree, &identity(), &identity()).unwrap();
        dismantle(tree);
        let mut v = js;
        let mut depth = 0;
        loop {
            v = if Array::is_array(&v) {
                Array::from(&v).get(0)
            } else if v.is_object() {
                get(&v, "k")
            } else {
                break;
            };
            depth += 1;
        }
        assert_eq!(
            (depth, v.as_string().as_deref()),
            (DEPTH, Some("bottom")),
            "dicts: {dicts}"
        );
    }
}

#[wasm_bindgen_test]
fn conversion_keeps_order_sharing_and_attributes() {
    // [{"b": 1, "a": [2, 3]}, {(1,): "t"}, set, object] with attributes, in file order.
    let s = |x: &str| Value::Str(x.into());
    let dict = Value::Dict(Box::new(Dict {
        class: "collections.OrderedDict".into(),
        items: vec![
            (s("b"), Value::Int(1)),
            (s("a"), Value::List(vec![Value::Int(2), Value::Int(3)])),
        ],
        attributes: vec![
            ("_metadata".into(), Value::Int(7)),
            ("a".into(), Value::Int(8)),
            ("toString".into(), Value::Int(9)),
        ],
    }));
    let map = Value::Dict(Box::new(Dict {
        class: "dict".into(),
        items: vec![(Value::Tuple(vec![Value::Int(1)]), s("t"))],
        attributes: vec![],
    }));
    let object = Value::Object(Box::new(PyObject {
        class: "argparse.Namespace".into(),
        args: vec![Value::Int(4)],
        state: Some(s("st")),
        list_items: vec![Value::Int(5)],
        dict_items: vec![(s("x"), Value::Int(6))],
    }));
    let tree = Value::List(vec![
        dict,
        map,
        Value::Set(vec![Value::Int(1), Value::Int(0)]),
        object,
    ]);
    let js = ptload::wasm::value_to_js(&tree, &identity(), &identity()).unwrap();
    let items = Array::from(&js);
    let d = items.get(0);
    let keys: Vec<String> = Object::keys(d.unchecked_ref::<Object>())
        .iter()
        .filter_map(|k| k.as_string())
        .collect();
    assert_eq!(keys, ["b", "a"]);
    assert_eq!(get(&d, "_metadata"), 7);
    assert_eq!(Array::from(&get(&d, "a")).get(1), 3);
    // An attribute an item or every object already has is not set over it.
    assert!(Array::is_array(&get(&d, "a")));
    assert!(get(&d, "toString").is_function());
    let m: Map = items.get(1).dyn_into().unwrap();
    let (k, v) = {
        let entry = Array::from(&m.entries().next().unwrap().value());
        (entry.get(0), entry.get(1))
    };
    assert_eq!(Array::from(&k).get(0), 1);
    assert_eq!(v, "t");
    let set: js_sys::Set = items.get(2).dyn_into().unwrap();
    let order: Vec<JsValue> = Array::from(&set).iter().collect();
    assert_eq!(order, [JsValue::from(1), JsValue::from(0)]);
    let o = items.get(3);
    assert_eq!(get(&o, "__class__"), "argparse.Namespace");
    assert_eq!(get(&o, "state"), "st");
    assert_eq!(Array::from(&get(&o, "args")).get(0), 4);
    assert_eq!(Array::from(&get(&o, "listItems")).get(0), 5);
    let di: Map = get(&o, "dictItems").dyn_into().unwrap();
    assert_eq!(di.get(&JsValue::from("x")), 6);
}
