//! Every fixture made by real torch 2.15 (`tests/fixtures/make.py`) loads bit-exact: dtype,
//! shape, stride, offset, flags, storage sharing and SHA-256 of the elements, as torch saw them.

mod common;

use common::{compare, fixture, fixture_json, root};
use ptload::{Loader, StorageData};

#[test]
fn every_zip_fixture_matches_torch() {
    let expected = fixture_json("expected.json");
    let files = expected["files"].as_object().unwrap();
    assert!(
        files.len() >= 16,
        "expected.json lists {} files",
        files.len()
    );
    let mut problems = Vec::new();
    for (rel, want) in files {
        let path = root().join("tests/fixtures").join(rel);
        match ptload::load(&path) {
            Ok(ckpt) => problems.extend(compare(&ckpt, want, rel)),
            Err(e) => problems.push(format!("{rel}: {e}")),
        }
    }
    common::assert_no_problems(&problems);
}

#[test]
fn every_zip_fixture_copied_on_threads_matches_torch() {
    // Every storage copied (stored, deflated, big-endian, misaligned alike), on 1 and 3
    // threads: the same tensors as torch, owned.
    let expected = fixture_json("expected.json");
    let mut problems = Vec::new();
    for threads in [1, 3] {
        for (rel, want) in expected["files"].as_object().unwrap() {
            let path = root().join("tests/fixtures").join(rel);
            let loaded = Loader::new()
                .copy_storages(true)
                .threads(threads)
                .load(&path);
            match loaded {
                Ok(ckpt) => {
                    let label = format!("{rel} ({threads} threads)");
                    problems.extend(compare(&ckpt, want, &label));
                    for s in ckpt.storages.iter().filter(|s| s.data.is_borrowed()) {
                        problems.push(format!("{label}: storage {} is borrowed", s.key));
                    }
                }
                Err(e) => problems.push(format!("{rel}: {e}")),
            }
        }
    }
    common::assert_no_problems(&problems);
}

#[test]
fn buffers_load_like_files() {
    let expected = fixture_json("expected.json");
    let want = &expected["files"]["zip/views.pt"];
    let ckpt = ptload::load_bytes(fixture("zip/views.pt")).unwrap();
    let problems = compare(&ckpt, want, "views.pt from memory");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn example_matches_torch() {
    let expected = fixture_json("expected.json");
    let ckpt = ptload::load(root().join("examples/tiny_convnet.pt")).unwrap();
    let problems = compare(
        &ckpt,
        &expected["examples"]["tiny_convnet.pt"],
        "tiny_convnet.pt",
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn stored_little_endian_storages_are_borrowed() {
    for rel in [
        "zip/dtypes.pt",
        "zip/views.pt",
        "zip/alignment4096.pt",
        "zip/no_crc.pt",
    ] {
        let ckpt = ptload::load(root().join("tests/fixtures").join(rel)).unwrap();
        for s in &ckpt.storages {
            if s.nbytes() > 0 {
                assert!(s.data.is_borrowed(), "{rel}: storage {} was copied", s.key);
            }
        }
    }
}

#[test]
fn deflated_and_swapped_storages_are_owned() {
    let ckpt = ptload::load(root().join("tests/fixtures/zip/deflated.pt")).unwrap();
    assert!(ckpt
        .storages
        .iter()
        .all(|s| matches!(s.data, StorageData::Owned(_))));
    let ckpt = ptload::load(root().join("tests/fixtures/zip/big_endian.pt")).unwrap();
    for s in &ckpt.storages {
        let wide = ckpt.tensors().any(|(_, t)| {
            t.meta().storage.map(|id| &ckpt.storages[id].key) == Some(&s.key)
                && t.dtype().swap_unit() > 1
        });
        assert_eq!(
            s.data.is_borrowed(),
            !wide,
            "big_endian.pt storage {}",
            s.key
        );
    }
}

#[test]
fn state_dict_keeps_metadata_and_order() {
    let ckpt = ptload::load(root().join("tests/fixtures/zip/state_dict.pt")).unwrap();
    let ptload::Value::Dict(dict) = &ckpt.root else {
        panic!("root is {:?}", ckpt.root)
    };
    assert_eq!(dict.class, "collections.OrderedDict");
    let (name, metadata) = &dict.attributes[0];
    assert_eq!(name, "_metadata");
    let ptload::Value::Dict(metadata) = metadata else {
        panic!()
    };
    assert_eq!(
        metadata.get("").and_then(|v| match v {
            ptload::Value::Dict(d) => d.get("version").cloned(),
            _ => None,
        }),
        Some(ptload::Value::Int(1))
    );
}

#[test]
fn nested_plain_values_are_exact() {
    use ptload::Value;
    let ckpt = ptload::load(root().join("tests/fixtures/zip/nested.pt")).unwrap();
    let mut text = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::BigInt(s) => out.push(s.clone()),
            Value::Str(s) => out.push(s.to_string()),
            Value::Bytes(b) => out.push(format!("{b:?}")),
            _ => v.children().for_each(|(_, c)| walk(c, out)),
        }
    }
    walk(&ckpt.root, &mut text);
    assert!(
        text.contains(&"1180591620717411303424".to_string()),
        "{text:?}"
    );
    assert!(
        text.contains(&"-1180591620717411303424".to_string()),
        "{text:?}"
    );
    assert!(
        text.iter().any(|s| s.contains("héllo wörld ✓ 日本")),
        "{text:?}"
    );
    assert!(text.contains(&format!("{:?}", b"\x00\xffabc")), "{text:?}");
    // protocol 4 and 5 saves of the same object give the same tree.
    for rel in ["zip/protocol4.pt", "zip/protocol5.pt"] {
        let other = ptload::load(root().join("tests/fixtures").join(rel)).unwrap();
        assert_eq!(format!("{}", other.root), format!("{}", ckpt.root), "{rel}");
    }
}

#[test]
fn meta_map_location_reads_nothing() {
    let ckpt = Loader::new()
        .map_location("meta")
        .load(root().join("tests/fixtures/zip/dtypes.pt"))
        .unwrap();
    for (path, t) in ckpt.tensors() {
        assert_eq!(t.device(), ptload::Device::Meta, "{path}");
        assert!(t.as_bytes().is_none());
        assert!(t.to_contiguous_bytes().is_err());
    }
}

#[test]
fn extras_keep_python_values_and_attributes() {
    use ptload::{TensorKind, Value};
    let ckpt = ptload::load(root().join("tests/fixtures/zip/extras.pt")).unwrap();
    let get = |path: &str| ckpt.root.get_path(path).unwrap_or_else(|| panic!("{path}"));
    assert_eq!(
        get("set"),
        &Value::Set(vec![Value::Int(1), Value::Int(2), Value::Int(3)])
    );
    assert_eq!(get("complex"), &Value::Complex(1.5, -2.0));
    assert_eq!(get("bytearray"), &Value::ByteArray(b"\x00\x01ab".to_vec()));
    assert_eq!(
        get("size"),
        &Value::Tuple(vec![Value::Int(2), Value::Int(3)])
    );
    assert_eq!(get("dtype"), &Value::Global("torch.bfloat16".into()));
    let Value::Object(device) = get("device") else {
        panic!("{}", get("device"))
    };
    assert_eq!(device.class, "torch.device");
    assert_eq!(device.args, vec![Value::Str("cuda".into()), Value::Int(1)]);
    let attr = get("attr_tensor").as_tensor().unwrap();
    assert_eq!(
        attr.attributes.as_deref().map(|a| a.to_string()),
        Some("{\"note\": \"hello\"}".into())
    );
    let param = get("param_with_state").as_tensor().unwrap();
    assert_eq!(param.kind, TensorKind::Parameter);
    assert!(param.requires_grad);
    assert!(
        param
            .attributes
            .as_deref()
            .is_some_and(|a| a.to_string().contains("\"tag\": 7")),
        "{:?}",
        param.attributes
    );
}
