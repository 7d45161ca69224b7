//! torch.load's `encoding` for Python-2 strings (`tests/fixtures/py2/`, real torch 2.15):
//! ASCII-only strings load under `ascii`; a non-ASCII byte fails with torch's own
//! `UnicodeDecodeError` text (recorded by `make_formats.py` in `encoding_errors`); `latin1`
//! loads everything; `bytes` loads the legacy stream but not a zip file, whose records torch
//! then names `data/b'0'` (asked of torch 2.15).

mod common;

use common::{compare, fixture_json, root};
use ptload::{ErrorKind, Loader, StringEncoding};

fn load(rel: &str, encoding: StringEncoding) -> ptload::Result<ptload::Checkpoint> {
    Loader::new()
        .encoding(encoding)
        .load(root().join("tests/fixtures").join(rel))
}

#[test]
fn ascii_only_strings_load_under_every_encoding() {
    let expected = fixture_json("expected_formats.json");
    let want = &expected["files"]["py2/ascii.pt"];
    assert_eq!(want["encoding"], "ascii");
    for encoding in ["ascii", "utf-8", "latin1"] {
        let ckpt = load("py2/ascii.pt", encoding.parse().unwrap()).unwrap();
        let problems = compare(&ckpt, want, encoding);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let meta = ckpt.root.get_path("meta.name").unwrap();
        assert_eq!(meta.as_str(), Some("py2 checkpoint"));
    }
    // `bytes` keeps every Python 2 str as bytes, storage keys included: torch 2.15 then looks
    // for the record f"data/{key}", `data/b'0'`, and fails ("PytorchStreamReader failed
    // locating file data/b'0': file not found"), with weights_only True or False.
    assert_missing_bytes_key(load("py2/ascii.pt", StringEncoding::Bytes), "ascii");
    // The legacy stream lists its storage keys in a pickle of their own, bytes too: torch
    // loads it, dict keys as bytes.
    let ckpt = load("py2/legacy_binstring.pt", StringEncoding::Bytes).unwrap();
    assert_eq!(ckpt.tensors().count(), 4);
    let ptload::Value::Dict(d) = &ckpt.root else {
        panic!("{:?}", ckpt.root)
    };
    assert_eq!(d.items[1].0, ptload::Value::Bytes(b"bias".to_vec()));
}

fn assert_missing_bytes_key(loaded: ptload::Result<ptload::Checkpoint>, folder: &str) {
    let e = loaded.unwrap_err();
    let want = format!("{folder}/data/b'0'");
    assert!(
        matches!(e.kind(), ErrorKind::MissingRecord { name } if *name == want),
        "{e}"
    );
}

#[test]
fn a_non_ascii_byte_fails_as_torch_says() {
    let expected = fixture_json("expected_formats.json");
    let cases = expected["encoding_errors"].as_object().unwrap();
    let mut checked = 0;
    for (rel, by_encoding) in cases {
        for (encoding, torch_says) in by_encoding.as_object().unwrap() {
            let torch_says = torch_says.as_str().unwrap();
            let e = load(rel, encoding.parse().unwrap()).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(torch_says), "{rel} {encoding}: {text}");
            assert!(text.starts_with(
                &root()
                    .join("tests/fixtures")
                    .join(rel)
                    .display()
                    .to_string()
            ));
            assert!(text.ends_with("(a Python 2 string; load with encoding latin1 or bytes)"));
            assert!(matches!(e.kind(), ErrorKind::Pickle { .. }), "{e:?}");
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked}");
}

#[test]
fn ascii_error_names_the_pickle_byte_and_the_string_position() {
    let e = load("py2/latin1.pt", StringEncoding::Ascii).unwrap_err();
    let ErrorKind::Pickle { record, error } = e.kind() else {
        panic!("{e:?}")
    };
    assert_eq!(record, "latin1/data.pkl");
    assert_eq!(error.opcode, Some(b'U'));
    assert_eq!(
        error.to_string(),
        format!(
            "byte 0x{:X}, opcode SHORT_BINSTRING: 'ascii' codec can't decode byte 0xe9 in \
             position 3: ordinal not in range(128) (a Python 2 string; load with encoding \
             latin1 or bytes)",
            error.offset
        )
    );
}

#[test]
fn latin1_loads_the_non_ascii_file_and_bytes_fails_as_torch_does() {
    let expected = fixture_json("expected_formats.json");
    for name in ["latin1", "latin-1", "ISO-8859-1"] {
        let ckpt = load("py2/latin1.pt", name.parse().unwrap()).unwrap();
        let problems = compare(&ckpt, &expected["files"]["py2/latin1.pt"], name);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
    assert_missing_bytes_key(load("py2/latin1.pt", StringEncoding::Bytes), "latin1");
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ptload"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

#[test]
fn cli_encoding_option() {
    let expected = fixture_json("expected_formats.json");
    let torch_says = expected["encoding_errors"]["py2/latin1.pt"]["ascii"]
        .as_str()
        .unwrap();
    let out = cli(&[
        "inspect",
        "--encoding",
        "ascii",
        "tests/fixtures/py2/latin1.pt",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(torch_says), "{stderr}");

    let out = cli(&[
        "inspect",
        "--json",
        "--encoding",
        "latin-1",
        "tests/fixtures/py2/latin1.pt",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tensors"][0]["path"], "café");

    let out = cli(&[
        "inspect",
        "--encoding",
        "ascii",
        "tests/fixtures/py2/ascii.pt",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = cli(&[
        "inspect",
        "--encoding",
        "ebcdic",
        "tests/fixtures/py2/ascii.pt",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "ptload: tests/fixtures/py2/ascii.pt: unknown encoding: ebcdic (ptload decodes Python 2 \
         strings as ascii, utf-8 (utf8), latin1 (latin-1, iso-8859-1) or bytes)\n"
    );
}
