//! The `ptload inspect` contract of DESIGN.md: `--json` fields, `--sha256` digests equal to
//! torch's, `--map-location`, and bad input as exit status 1 with one line on stderr.

mod common;

use std::process::Command;

use common::{fixture_json, root};
use serde_json::Value as Json;

fn ptload(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ptload"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

#[test]
fn json_with_sha256_matches_torch() {
    let expected = fixture_json("expected.json");
    for rel in [
        "zip/views.pt",
        "zip/dtypes.pt",
        "zip/big_endian.pt",
        "zip/deflated.pt",
    ] {
        let path = format!("tests/fixtures/{rel}");
        let out = ptload(&["inspect", "--json", "--sha256", &path]);
        assert!(
            out.status.success(),
            "{rel}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Json = serde_json::from_slice(&out.stdout).unwrap();
        let want = &expected["files"][rel];
        assert_eq!(report["format"], want["format"], "{rel}");
        assert_eq!(report["byte_order"], want["byte_order"], "{rel}");
        let got = report["tensors"].as_array().unwrap();
        let want = want["tensors"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{rel}");
        for (g, w) in got.iter().zip(want) {
            for field in [
                "path",
                "dtype",
                "shape",
                "stride",
                "storage_offset",
                "requires_grad",
                "sha256",
            ] {
                assert_eq!(g[field], w[field], "{rel} {} {field}", w["path"]);
            }
            assert_eq!(g["device"], "cpu");
            assert!(g["storage"].is_string());
        }
    }
}

#[test]
fn json_fields_are_the_contract() {
    let out = ptload(&["inspect", "--json", "examples/tiny_convnet.pt"]);
    assert!(out.status.success());
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<_> = report.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["byte_order", "format", "root", "tensors"]);
    let first = report["tensors"][0].as_object().unwrap();
    let mut fields: Vec<_> = first.keys().cloned().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "device",
            "dtype",
            "path",
            "requires_grad",
            "shape",
            "storage",
            "storage_offset",
            "stride"
        ]
    );
}

#[test]
fn table_lists_tensors_and_totals() {
    let out = ptload(&["inspect", "examples/tiny_convnet.pt"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("zip format, little-endian, 16 tensors in 16 storages"),
        "{text}"
    );
    assert!(
        text.contains("9.weight               float32  [10, 784]"),
        "{text}"
    );
    assert!(
        text.contains("total: 16 tensors, 9196 elements, 35.9 KiB"),
        "{text}"
    );
}

#[test]
fn map_location_meta_and_mapping() {
    let out = ptload(&[
        "inspect",
        "--json",
        "--map-location",
        "meta",
        "examples/tiny_convnet.pt",
    ]);
    assert!(out.status.success());
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["device"] == "meta"));

    let out = ptload(&[
        "inspect",
        "--json",
        "--map-location",
        "cpu=cpu",
        "examples/tiny_convnet.pt",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = ptload(&[
        "inspect",
        "--map-location",
        "cuda:0",
        "examples/tiny_convnet.pt",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("Attempting to deserialize object on a CUDA device"),
        "{err}"
    );
}

#[test]
fn bad_input_is_one_line_and_status_1() {
    let dir = std::env::temp_dir().join(format!("ptload-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.pt", vec![], "the file is empty"),
        (
            "random.pt",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            "Invalid magic number",
        ),
        (
            "truncated.pt",
            std::fs::read(root().join("examples/tiny_convnet.pt")).unwrap()[..5000].to_vec(),
            "end-of-central-directory",
        ),
    ];
    for (name, bytes, words) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = ptload(&["inspect", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(err.contains(path.to_str().unwrap()), "{name}: {err}");
        assert!(err.contains(words), "{name}: {err}");
    }
    let out = ptload(&["inspect", "/nonexistent/file.pt"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("/nonexistent/file.pt"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A 64 MiB float32 checkpoint (one tensor of ones), written by the test.
fn large_checkpoint() -> std::path::PathBuf {
    let numel = 16 << 20;
    let pickle = common::Pickle::new()
        .op(b"}")
        .str("w")
        .tensor("FloatStorage", "0", numel, 0, &[numel], &[1])
        .op(b"s")
        .stop();
    let data: Vec<u8> = std::iter::repeat_n(1f32.to_le_bytes(), numel as usize)
        .flatten()
        .collect();
    let file = common::ZipBuilder::checkpoint(&pickle, &[("0", &data)]);
    let path = std::env::temp_dir().join(format!("ptload-cli-large-{}.pt", std::process::id()));
    std::fs::write(&path, file).unwrap();
    path
}

#[test]
fn sha256_of_a_large_file_shows_progress_only_on_a_terminal() {
    let path = large_checkpoint();
    let file = path.to_str().unwrap();
    // Not a terminal: stdout has the digest, stderr nothing.
    let out = ptload(&["inspect", "--sha256", file]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A terminal (util-linux `script` gives the command one): a bar with its byte counts.
    let command = format!(
        "{} inspect --sha256 {file} > /dev/null",
        env!("CARGO_BIN_EXE_ptload")
    );
    let tty = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("util-linux `script` runs the CLI on a terminal");
    std::fs::remove_file(&path).unwrap();
    assert!(tty.status.success(), "{tty:?}");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(shown.contains("64.00 MiB"), "no progress bar: {shown:?}");
}
