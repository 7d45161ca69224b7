//! `Checkpoint::tensor(path)` finds every path `Checkpoint::tensors()` yields, in every
//! fixture (state_dict keys hold dots: `"0.weight"` is one key, not a path of two).

mod common;

use std::path::{Path, PathBuf};

use common::root;
use ptload::{Checkpoint, Loader, StringEncoding};

/// Every file and DCP folder under `tests/fixtures/`, and the examples.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root().join("tests/fixtures"), root().join("examples")];
    while let Some(dir) = stack.pop() {
        if dir.join(".metadata").is_file() {
            out.push(dir);
            continue;
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if !matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("json" | "py" | "md" | "rs" | "txt" | "sh")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Loads `path` on the host whatever it was saved on, trying the options fixtures need.
fn try_load(path: &Path) -> Option<Checkpoint> {
    for weights_only in [true, false] {
        for encoding in [StringEncoding::Utf8, "latin1".parse().unwrap()] {
            let mut loader = Loader::new();
            loader
                .map_location("cpu")
                .weights_only(weights_only)
                .encoding(encoding);
            if let Ok(ckpt) = loader.load(path) {
                return Some(ckpt);
            }
        }
    }
    None
}

#[test]
fn tensor_finds_every_path_that_tensors_yields_in_every_fixture() {
    let mut loaded = 0;
    let mut checked = 0;
    let mut dotted = 0;
    let mut problems = Vec::new();
    for path in candidates() {
        let Some(ckpt) = try_load(&path) else {
            continue;
        };
        loaded += 1;
        let mut first = std::collections::HashMap::new();
        for (p, t) in ckpt.tensors() {
            first.entry(p).or_insert(t);
        }
        for (p, want) in &first {
            checked += 1;
            dotted += usize::from(p.contains('.'));
            match ckpt.tensor(p) {
                Some(got)
                    if std::ptr::eq(got.meta(), want.meta())
                        && got.storage().map(|s| s as *const _)
                            == want.storage().map(|s| s as *const _) => {}
                Some(_) => problems.push(format!("{}: {p}: another tensor", path.display())),
                None => problems.push(format!("{}: {p}: not found", path.display())),
            }
        }
        assert!(ckpt.tensor("no such path").is_none());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Not vacuous: most fixtures load, and many paths hold dots.
    assert!(loaded >= 60, "only {loaded} fixtures loaded");
    assert!(
        checked >= 300 && dotted >= 100,
        "{checked} paths, {dotted} dotted"
    );
}

#[test]
fn a_state_dict_key_with_dots_is_one_path() {
    let ckpt = ptload::load(root().join("examples/tiny_convnet.pt")).unwrap();
    let (first, t) = ckpt.tensors().next().unwrap();
    assert_eq!(first, "0.weight");
    assert!(std::ptr::eq(
        ckpt.tensor("0.weight").unwrap().meta(),
        t.meta()
    ));
}
