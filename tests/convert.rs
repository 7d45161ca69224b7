//! `ptload convert` and the writers: every case of `tests/fixtures/expected_convert.json`
//! (made by `make_convert.py`, which loaded each output in torch / `safetensors.torch` and
//! checked it against the source) is converted again, and the output is read back with ptload
//! and, for `.safetensors`, with the `safetensors` crate; digests, dtypes, shapes, metadata and
//! storage sharing must match what torch recorded. Bad input leaves nothing behind.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixture_json, root};
use ptload::{Loader, Writer};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

fn ptload(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ptload"))
        .args(args)
        .output()
        .unwrap()
}

fn convert(args: &[&str], input: &Path, output: &Path) -> Output {
    let mut all = vec!["convert"];
    all.extend_from_slice(args);
    all.push(input.to_str().unwrap());
    all.push(output.to_str().unwrap());
    ptload(&all)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The names in a folder (temporary files included).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// (dtype, shape, sha256) per path, as torch recorded them.
fn expected_tensors(case: &Json) -> HashMap<String, (String, Vec<u64>, String)> {
    case["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            (
                t["path"].as_str().unwrap().to_owned(),
                (
                    t["dtype"].as_str().unwrap().to_owned(),
                    shape,
                    t["sha256"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

fn check_with_ptload(
    name: &str,
    case: &Json,
    ckpt: &ptload::Checkpoint,
    problems: &mut Vec<String>,
) {
    let want = expected_tensors(case);
    let got: Vec<_> = ckpt.tensors().collect();
    if got.len() != want.len() {
        problems.push(format!(
            "{name}: {} tensors, torch saw {}",
            got.len(),
            want.len()
        ));
    }
    for (path, t) in &got {
        let Some((dtype, shape, sha)) = want.get(*path) else {
            problems.push(format!("{name}: unexpected tensor {path}"));
            continue;
        };
        let have = (
            t.dtype().name().to_owned(),
            t.shape().to_vec(),
            t.sha256().unwrap(),
        );
        if (&have.0, &have.1, &have.2) != (dtype, shape, sha) {
            problems.push(format!(
                "{name}: {path}: {have:?} != {:?}",
                (dtype, shape, sha)
            ));
        }
    }
    // Storage sharing, for .pt outputs: same torch storage group ⇔ same ptload storage.
    if case["output"].as_str().unwrap().ends_with(".pt") {
        let groups: HashMap<&str, Option<u64>> = case["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["path"].as_str().unwrap(), t["storage_group"].as_u64()))
            .collect();
        for (a, ta) in &got {
            for (b, tb) in &got {
                let (Some(ga), Some(gb)) = (groups[*a], groups[*b]) else {
                    continue;
                };
                let shared = ta.meta().storage == tb.meta().storage;
                if (ga == gb) != shared {
                    problems.push(format!(
                        "{name}: {a} and {b}: shared {shared}, torch {}",
                        ga == gb
                    ));
                }
            }
        }
    }
}

fn check_with_safetensors_crate(name: &str, case: &Json, file: &Path, problems: &mut Vec<String>) {
    let bytes = std::fs::read(file).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want = expected_tensors(case);
    for (path, view) in tensors.iter() {
        match want.get(path) {
            Some((_, shape, sha)) => {
                let have_shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
                if &have_shape != shape || &hex(view.data()) != sha {
                    problems.push(format!("{name}: {path} differs in the safetensors crate"));
                }
            }
            None => problems.push(format!("{name}: unexpected tensor {path} (crate)")),
        }
    }
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut got: Vec<(String, String)> = metadata
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = case["metadata"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    want.sort();
    if got != want {
        problems.push(format!("{name}: metadata {got:?} != {want:?}"));
    }
}

#[test]
fn every_conversion_reads_back_as_torch_read_it() {
    let expected = fixture_json("expected_convert.json");
    let dir = tempfile::tempdir().unwrap();
    let mut problems = Vec::new();
    for (name, case) in expected["cases"].as_object().unwrap() {
        let out_name = case["output"].as_str().unwrap();
        let out = dir
            .path()
            .join(format!("{name}.{}", out_name.rsplit('.').next().unwrap()));
        let args: Vec<&str> = case["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .chain(["--quiet"])
            .collect();
        let run = convert(&args, &fixture(case["input"].as_str().unwrap()), &out);
        if !run.status.success() {
            problems.push(format!("{name}: {}", stderr(&run)));
            continue;
        }
        if out_name == "folder" {
            // Sharded: the files and the index transformers would write, read back through
            // the index.
            let files: Vec<Json> = listing(&out).into_iter().map(Json::String).collect();
            if Json::Array(files) != case["files"] {
                problems.push(format!("{name}: files {:?}", listing(&out)));
            }
            let index_path = out.join("model.safetensors.index.json");
            let index: Json =
                serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
            if index != case["index"] {
                problems.push(format!("{name}: index {index}"));
            }
            let ckpt = ptload::load(&index_path).unwrap();
            check_with_ptload(name, case, &ckpt, &mut problems);
        } else if out_name.ends_with(".safetensors") {
            let ckpt = Loader::new().load_safetensors(&out).unwrap();
            assert_eq!(ckpt.format.name(), "safetensors");
            check_with_ptload(name, case, &ckpt, &mut problems);
            check_with_safetensors_crate(name, case, &out, &mut problems);
            for skipped in case["skipped_unsupported"].as_array().unwrap() {
                let path = skipped.as_str().unwrap();
                if ckpt.tensor(path).is_some() {
                    problems.push(format!("{name}: {path} should have been skipped"));
                }
            }
        } else {
            let ckpt = ptload::load(&out).unwrap();
            assert_eq!(ckpt.format.name(), "zip");
            check_with_ptload(name, case, &ckpt, &mut problems);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Only the outputs are left: no temporary file survives a conversion.
    let n = expected["cases"].as_object().unwrap().len();
    assert_eq!(listing(dir.path()).len(), n);
}

#[test]
fn pt_records_follow_torch_layout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.pt");
    assert!(convert(&["--quiet"], &fixture("convert/mixed.pt"), &out)
        .status
        .success());
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    let names: Vec<String> = (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name().to_owned())
        .collect();
    let n_storages = names
        .iter()
        .filter(|n| n.starts_with("archive/data/"))
        .count();
    let mut want = vec![
        "archive/data.pkl".to_owned(),
        "archive/.format_version".into(),
        "archive/.storage_alignment".into(),
        "archive/byteorder".into(),
    ];
    want.extend((0..n_storages).map(|i| format!("archive/data/{i}")));
    want.extend([
        "archive/version".into(),
        "archive/.data/serialization_id".into(),
    ]);
    assert_eq!(names, want);
    for i in 0..zip.len() {
        let entry = zip.by_index(i).unwrap();
        assert_eq!(entry.compression(), zip::CompressionMethod::Stored);
        assert_eq!(entry.data_start() % 64, 0, "{}", entry.name());
    }
    let mut version = String::new();
    std::io::Read::read_to_string(&mut zip.by_name("archive/version").unwrap(), &mut version)
        .unwrap();
    assert_eq!(version, "3\n");
}

#[test]
fn non_tensor_values_are_reported_as_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let run = convert(&[], &fixture("convert/mixed.pt"), &out);
    assert!(run.status.success(), "{}", stderr(&run));
    let text = stderr(&run);
    assert!(
        text.contains("skipped 3 non-tensor values: epoch, lr, name"),
        "{text}"
    );
    assert!(text.contains("wrote 14 tensors"), "{text}");
}

#[test]
fn dedup_reports_the_alias() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let run = convert(
        &["--select", "model", "--dedup"],
        &fixture("convert/mixed.pt"),
        &out,
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("deduplicated: head.weight is written as embed.weight"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn unsupported_dtype_is_refused_by_name_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("convert/complex128.pt");
    let out = dir.path().join("c.safetensors");
    let run = convert(&[], &input, &out);
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(
        stderr(&run).trim(),
        format!(
            "ptload: {}: unsupported: tensor 'c' has dtype complex128, which safetensors cannot \
             store (use --skip-unsupported to leave it out)",
            input.display()
        )
    );
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn existing_target_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.pt");
    std::fs::write(&out, b"keep me").unwrap();
    let run = convert(&["--quiet"], &fixture("convert/mixed.pt"), &out);
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(
        stderr(&run).trim(),
        format!(
            "ptload: {}: the target already exists (use --force to overwrite it)",
            out.display()
        )
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    assert_eq!(listing(dir.path()), ["m.pt"]);
    let run = convert(&["--quiet", "--force"], &fixture("convert/mixed.pt"), &out);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(ptload::load(&out).unwrap().tensors().count(), 14);
}

#[test]
fn unwritable_target_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A folder that is a file, and one that does not exist: neither can take the output
    // (permission bits would not stop a test running as root).
    let file = dir.path().join("plain");
    std::fs::write(&file, b"").unwrap();
    for folder in [file.clone(), dir.path().join("missing")] {
        let out = folder.join("m.safetensors");
        let run = convert(&["--quiet"], &fixture("convert/mixed.pt"), &out);
        assert_eq!(run.status.code(), Some(1));
        let text = stderr(&run);
        assert!(
            text.starts_with(&format!(
                "ptload: {}: cannot create a file in the folder '{}'",
                out.display(),
                folder.display()
            )),
            "{text}"
        );
    }
    assert_eq!(listing(dir.path()), ["plain"]);
}

#[test]
fn a_failure_while_writing_leaves_nothing_behind() {
    // The expanded view (4 × 3 float32 = 48 bytes) is over the tensor limit: the writer fails
    // when it reaches it, after writing other tensors.
    let mut loader = Loader::new();
    loader.limits(ptload::Limits::default().with_max_tensor_bytes(40));
    let ckpt = loader.load(fixture("convert/mixed.pt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let err = Writer::new().save_safetensors(&ckpt, &out).unwrap_err();
    assert!(
        err.to_string()
            .contains("limit max_tensor_bytes exceeded: 48 > 40"),
        "{err}"
    );
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn missing_select_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let input = fixture("convert/mixed.pt");
    let run = convert(&["--select", "optimizer"], &input, &out);
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(
        stderr(&run).trim(),
        format!(
            "ptload: {}: unsupported: --select: the checkpoint has no value at 'optimizer'",
            input.display()
        )
    );
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn inspect_points_safetensors_to_convert() {
    let run = ptload(&[
        "inspect",
        fixture("convert/mixed.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(1));
    assert!(stderr(&run).contains("ptload convert"), "{}", stderr(&run));
}

/// A copy of the sharded safetensors fixture in a temporary folder, to break.
fn sharded_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("sharded/st")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let index = dir.path().join("model.safetensors.index.json");
    (dir, index)
}

#[test]
fn index_loads_as_one_checkpoint_in_weight_map_order() {
    let index = fixture("sharded/bin/pytorch_model.bin.index.json");
    let ckpt = Loader::new().map_location("meta").load(&index).unwrap();
    let paths: Vec<String> = ckpt.tensors().map(|(p, _)| p.to_owned()).collect();
    assert_eq!(
        paths,
        [
            "embed.weight",
            "layers.0.bias",
            "layers.0.weight",
            "layers.1.weight",
            "layers.2.weight",
            "layers.3.weight",
            "steps"
        ]
    );
    // map_location applies to every shard.
    assert!(ckpt
        .tensors()
        .all(|(_, t)| t.device() == ptload::Device::Meta));
    let run = ptload(&["inspect", "--json", index.to_str().unwrap()]);
    assert!(run.status.success(), "{}", stderr(&run));
    let json: Json = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(json["tensors"].as_array().unwrap().len(), 7);
}

#[test]
fn index_naming_a_missing_shard_is_an_error() {
    let (dir, index) = sharded_copy();
    std::fs::remove_file(dir.path().join("model-00003-of-00004.safetensors")).unwrap();
    let err = ptload::load(&index).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: shard 'model-00003-of-00004.safetensors': no such file in {}",
            index.display(),
            dir.path().display()
        )
    );
}

#[test]
fn shard_missing_a_listed_tensor_is_an_error() {
    let (_dir, index) = sharded_copy();
    let text = std::fs::read_to_string(&index).unwrap().replace(
        "\"steps\": \"model-00004-of-00004.safetensors\"",
        "\"steps\": \"model-00001-of-00004.safetensors\"",
    );
    std::fs::write(&index, text).unwrap();
    let err = ptload::load(&index).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: shard 'model-00001-of-00004.safetensors': the index places tensor 'steps' \
             here, but the shard does not hold it",
            index.display()
        )
    );
}

#[test]
fn progress_reaches_the_total_in_order() {
    use std::sync::{Arc, Mutex};
    let ckpt = ptload::load(fixture("convert/mixed.pt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for out in ["m.safetensors", "m.pt"] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let mut writer = Writer::new();
        writer.on_progress(move |p| sink.lock().unwrap().push((p.placed_bytes, p.total_bytes)));
        let path = dir.path().join(out);
        let report = if out.ends_with(".pt") {
            writer.save(&ckpt, &path).unwrap()
        } else {
            writer.save_safetensors(&ckpt, &path).unwrap()
        };
        let seen = seen.lock().unwrap();
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{out}: {seen:?}");
        assert_eq!(seen.last(), Some(&(report.bytes, report.bytes)), "{out}");
    }
}

#[test]
fn safetensors_output_has_a_new_files_mode_leaves_nothing_else_and_never_clobbers() {
    // The safetensors crate writes a private file of its own and renames it onto the path it
    // is given (a path in a temporary folder of ours): the result must still be an ordinary
    // new file, alone in its folder, and an existing target is kept without --force.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let run = convert(&["--quiet"], &fixture("convert/mixed.pt"), &out);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(listing(dir.path()), ["m.safetensors"]);
    let like = dir.path().join("like");
    std::fs::write(&like, b"").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), mode(&like), "the mode of any new file here");
    std::fs::remove_file(&like).unwrap();
    let written = std::fs::read(&out).unwrap();
    let run = convert(&["--quiet"], &fixture("convert/mixed.pt"), &out);
    assert_eq!(run.status.code(), Some(1));
    assert!(stderr(&run).contains("already exists"), "{}", stderr(&run));
    assert_eq!(std::fs::read(&out).unwrap(), written);
    assert_eq!(listing(dir.path()), ["m.safetensors"]);
    std::fs::write(&out, b"old").unwrap();
    let run = convert(&["--quiet", "--force"], &fixture("convert/mixed.pt"), &out);
    assert!(run.status.success(), "{}", stderr(&run));
    // The same tensors (the crate writes `__metadata__` in a hash map's order, so not
    // necessarily the same bytes).
    let tensors = |bytes: &[u8]| {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        let mut all: Vec<(String, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.data().to_vec()))
            .collect();
        all.sort();
        all
    };
    assert_eq!(tensors(&std::fs::read(&out).unwrap()), tensors(&written));
    assert_eq!(listing(dir.path()), ["m.safetensors"]);
}
