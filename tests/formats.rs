//! Every other format torch has written (`tests/fixtures/make_formats.py`, real torch 2.15):
//! legacy streams, tar, TorchScript archives, full-module pickles, Python-2-era pickles — each
//! compared bit-exact with torch's digests, and sniffed as the right format.

mod common;

use common::{compare, compare_by_path, fixture_json, loader_for, root};
use ptload::Loader;
use serde_json::Value as Json;

#[test]
fn every_format_fixture_matches_torch() {
    let expected = fixture_json("expected_formats.json");
    let files = expected["files"].as_object().unwrap();
    assert!(files.len() >= 20, "{} files", files.len());
    let mut problems = Vec::new();
    for (rel, want) in files {
        let path = root().join("tests/fixtures").join(rel);
        match loader_for(rel, want).load(&path) {
            Ok(ckpt) if want.get("compare").and_then(Json::as_str) == Some("by_path") => {
                problems.extend(compare_by_path(&ckpt, want, rel))
            }
            Ok(ckpt) => problems.extend(compare(&ckpt, want, rel)),
            Err(e) => problems.push(format!("{rel}: {e}")),
        }
    }
    common::assert_no_problems(&problems);
}

#[test]
fn full_modules_are_refused_under_weights_only() {
    for rel in ["modules/full_module.pt", "modules/full_module_legacy.pt"] {
        let e = ptload::load(root().join("tests/fixtures").join(rel)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("Weights only load failed"), "{rel}: {msg}");
        assert!(
            msg.contains("was not an allowed global by default"),
            "{rel}: {msg}"
        );
    }
}

#[test]
fn full_module_objects_are_inert_and_walkable() {
    let ckpt = Loader::new()
        .weights_only(false)
        .load(root().join("tests/fixtures/modules/full_module.pt"))
        .unwrap();
    let ptload::Value::Object(obj) = &ckpt.root else {
        panic!("{}", ckpt.root)
    };
    assert!(!obj.class.is_empty());
    assert!(
        ckpt.tensors().any(|(p, _)| p.starts_with("_modules.")),
        "{:?}",
        ckpt.tensors().map(|(p, _)| p).collect::<Vec<_>>()
    );
}

#[test]
fn formats_are_sniffed_from_bytes_not_names() {
    let expected = fixture_json("expected_formats.json");
    for (rel, want) in expected["files"].as_object().unwrap() {
        let bytes = std::fs::read(root().join("tests/fixtures").join(rel)).unwrap();
        let ckpt = loader_for(rel, want).load_bytes(bytes).unwrap();
        assert_eq!(
            ckpt.format.name(),
            want["format"].as_str().unwrap(),
            "{rel}"
        );
    }
}

#[test]
fn protocol_0_legacy_files_load_although_torch_cannot() {
    // torch: "saved_id must be a tuple, got str": protocol 0 writes the persistent id's repr.
    // The file holds the same object as legacy/nested.pt, so torch's digests for that apply.
    let expected = fixture_json("expected_formats.json");
    assert!(
        expected["unloadable"]["legacy/nested_protocol0.pt"]["error"]
            .as_str()
            .unwrap()
            .contains("saved_id must be a tuple, got str")
    );
    let ckpt = ptload::load(root().join("tests/fixtures/legacy/nested_protocol0.pt")).unwrap();
    let problems = compare(
        &ckpt,
        &expected["files"]["legacy/nested.pt"],
        "nested_protocol0.pt",
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn latin1_strings_need_the_latin1_encoding() {
    let e = ptload::load(root().join("tests/fixtures/py2/latin1.pt")).unwrap_err();
    assert!(
        e.to_string().contains("load with encoding latin1 or bytes"),
        "{e}"
    );
}

#[test]
fn tar_module_ids_load_as_their_class() {
    // `(cls, source_file, source)` persistent ids (make_formats.py, `tar/int_ids.pt`): torch
    // 2.15 returns the class itself.
    let ckpt = ptload::load(root().join("tests/fixtures/tar/int_ids.pt")).unwrap();
    assert_eq!(
        ckpt.root.get_path("module_class"),
        Some(&ptload::Value::Global("collections.OrderedDict".into()))
    );
}
