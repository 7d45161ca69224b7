//! Distributed checkpoints (`torch.distributed.checkpoint`): the folders of
//! `tests/fixtures/dcp/` (made by `make_dcp.py` with real torch, single-process and a 2-rank
//! gloo save of DTensors) load as torch's own consolidation (`dcp_to_torch_save`) says; slices
//! read exactly their bytes; bad folders give clear errors.

mod common;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{fixture_json, root};
use ptload::dcp::{DirReader, FolderReader};
use ptload::{Device, Loader, Value};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

fn folder(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn ranges(json: &Json) -> Vec<Range<u64>> {
    json.as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_u64().unwrap()..r[1].as_u64().unwrap())
        .collect()
}

/// The non-tensor value at a path, as JSON.
fn plain(value: &Value) -> Json {
    match value {
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => Json::from(*f),
        Value::Str(s) => Json::from(s.as_str()),
        other => Json::from(format!("{other:?}")),
    }
}

#[test]
fn folders_match_torch_consolidation() {
    let expected = fixture_json("expected_dcp.json");
    let folders = expected["folders"].as_object().unwrap();
    assert_eq!(folders.len(), 2);
    let mut problems = Vec::new();
    for (name, want) in folders {
        let ckpt = ptload::load(folder(name)).unwrap();
        assert_eq!(ckpt.format.name(), "dcp");
        let got: Vec<_> = ckpt.tensors().collect();
        let want_tensors = want["tensors"].as_array().unwrap();
        assert_eq!(got.len(), want_tensors.len(), "{name}");
        for ((path, t), w) in got.iter().zip(want_tensors) {
            let ours = serde_json::json!({
                "path": path,
                "dtype": t.dtype().name(),
                "shape": t.shape(),
                "sha256": t.sha256().unwrap(),
            });
            if ours != *w {
                problems.push(format!("{name}: {ours} != torch {w}"));
            }
            assert_eq!(t.device(), Device::Cpu);
            // Paths work as lookups: the tree is the nested state dict.
            assert!(ckpt.tensor(path).is_some(), "{name}: {path}");
        }
        for (path, value) in want["values"].as_object().unwrap() {
            let ours = ckpt.root.get_path(path).map(plain);
            if ours.as_ref() != Some(value) {
                problems.push(format!("{name}: {path} = {ours:?}, torch {value}"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn slices_match_torch() {
    let expected = fixture_json("expected_dcp.json");
    let mut count = 0;
    for (name, want) in expected["folders"].as_object().unwrap() {
        let dcp = Loader::new().open_dcp(folder(name)).unwrap();
        for slice in want["slices"].as_array().unwrap() {
            let key = slice["path"].as_str().unwrap();
            let sel = dcp.select(key, &ranges(&slice["ranges"])).unwrap();
            assert_eq!(Json::from(sel.shape.clone()), slice["shape"], "{key}");
            assert_eq!(sel.dtype.name(), slice["dtype"], "{key}");
            let bytes = dcp.read(&sel).unwrap();
            assert_eq!(
                hex(&bytes),
                slice["sha256"],
                "{name} {key} {}",
                slice["ranges"]
            );
            count += 1;
        }
    }
    assert_eq!(count, 8);
}

/// Every read a folder reader made: `(file, offset, length)`.
type Log = Arc<Mutex<Vec<(String, u64, u64)>>>;

/// A folder reader that records every read.
struct Recording {
    inner: DirReader,
    log: Log,
}

impl FolderReader for Recording {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn len(&self, file: &str) -> ptload::Result<u64> {
        self.inner.len(file)
    }
    fn read_at(&self, file: &str, offset: u64, out: &mut [u8]) -> ptload::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push((file.to_owned(), offset, out.len() as u64));
        self.inner.read_at(file, offset, out)
    }
}

fn recording(name: &str) -> (ptload::DcpFolder, Log) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let reader = Recording {
        inner: DirReader::new(folder(name)),
        log: log.clone(),
    };
    let dcp = Loader::new().open_dcp_reader(Box::new(reader)).unwrap();
    (dcp, log)
}

fn take(log: &Mutex<Vec<(String, u64, u64)>>) -> Vec<(String, u64, u64)> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[test]
fn a_slice_reads_only_its_bytes() {
    let (dcp, log) = recording("dcp/sharded");
    // Opening reads the .metadata and nothing else.
    let opened = take(&log);
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].0, ".metadata");

    // Rank 1's rows of the row-sharded tensor: rank 0's file is never touched, and the data
    // read is exactly the 2 rows x 4 float32 asked for, in one read.
    let sel = dcp.select("layers.rows", &[3..5, 0..4]).unwrap();
    let planning = take(&log);
    assert!(!planning.is_empty());
    assert!(
        planning.iter().all(|(f, _, _)| f == "__1_0.distcp"),
        "{planning:?}"
    );
    let bytes = dcp.read(&sel).unwrap();
    let reads = take(&log);
    let planned: Vec<_> = sel.reads().map(|(f, o, l)| (f.to_owned(), o, l)).collect();
    assert_eq!(reads, planned);
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].2, 2 * 4 * 4);
    assert_eq!(bytes.len(), 32);
    // The reads lie inside the chunk's item, and planning never read them.
    for (_, offset, len) in &reads {
        for (_, p_offset, p_len) in &planning {
            assert!(
                offset + len <= *p_offset || p_offset + p_len <= *offset,
                "planning read tensor bytes {p_offset}+{p_len}"
            );
        }
    }

    // Columns 3..6 of the column-sharded tensor span both ranks: one read per row per rank
    // (rank 0 holds column 3, rank 1 columns 4..6), 36 bytes in all, nothing else.
    let sel = dcp.select("layers.cols", &[0..3, 3..6]).unwrap();
    take(&log);
    dcp.read(&sel).unwrap();
    let reads = take(&log);
    assert_eq!(reads.iter().map(|r| r.2).sum::<u64>(), 3 * 3 * 4);
    assert_eq!(reads.len(), 6, "{reads:?}");
    assert_eq!(
        reads.iter().filter(|r| r.0 == "__0_0.distcp").count(),
        3,
        "{reads:?}"
    );
}

#[test]
fn map_location_applies_with_cpu_tags() {
    let dir = folder("dcp/sharded");
    let ckpt = Loader::new().map_location("meta").load(&dir).unwrap();
    assert!(ckpt.tensors().all(|(_, t)| t.device() == Device::Meta));
    let ckpt = Loader::new()
        .map_location(ptload::MapLocation::map([("cpu", "meta")]))
        .load(&dir)
        .unwrap();
    assert!(ckpt.tensors().all(|(_, t)| t.device() == Device::Meta));
    let ckpt = Loader::new()
        .map_location(ptload::MapLocation::map([("cuda:0", "meta")]))
        .load(&dir)
        .unwrap();
    assert!(ckpt.tensors().all(|(_, t)| t.device() == Device::Cpu));
    let e = Loader::new()
        .map_location("cuda:0")
        .load(&dir)
        .unwrap_err()
        .to_string();
    assert!(e.contains("torch.cuda.is_available() is False"), "{e}");
}

/// A copy of the sharded folder with `.metadata` replaced by `dcp/bad/<name>.metadata`.
fn bad_folder(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("ptload-dcp-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = folder("dcp/sharded");
    for file in ["__0_0.distcp", "__1_0.distcp"] {
        std::fs::copy(src.join(file), dir.join(file)).unwrap();
    }
    std::fs::copy(
        folder("dcp/bad").join(format!("{name}.metadata")),
        dir.join(".metadata"),
    )
    .unwrap();
    dir
}

fn error_of(dir: &Path) -> String {
    let e = ptload::load(dir).unwrap_err();
    let text = e.to_string();
    std::fs::remove_dir_all(dir).unwrap();
    text.replace(&format!("{}/", dir.display()), "DIR/")
}

#[test]
fn missing_file() {
    let e = error_of(&bad_folder("missing_file"));
    assert_eq!(
        e,
        "DIR/.metadata: key 'layers.rows' of the distributed checkpoint: the chunk at offsets [3, 0] is stored in '__7_0.distcp', which cannot be read (No such file or directory (os error 2))"
    );
}

#[test]
fn chunk_past_the_end_of_its_file() {
    let e = error_of(&bad_folder("past_end"));
    assert_eq!(
        e,
        "DIR/.metadata: key 'layers.cols' of the distributed checkpoint: the chunk at offsets [0, 4] is stored at bytes 2838..9246 of '__1_0.distcp', past its end (9146 bytes; truncated?)"
    );
    // The same with the file itself truncated.
    let dir = bad_folder("past_end");
    std::fs::copy(folder("dcp/sharded/.metadata"), dir.join(".metadata")).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("__1_0.distcp"))
        .unwrap();
    file.set_len(5000).unwrap();
    drop(file);
    let e = error_of(&dir);
    assert_eq!(
        e,
        "DIR/.metadata: key 'layers.rows_bf16' of the distributed checkpoint: the chunk at offsets [2, 0] is stored at bytes 4415..5992 of '__1_0.distcp', past its end (5000 bytes; truncated?)"
    );
}

#[test]
fn a_list_index_past_the_entries_is_refused() {
    // planner_data gives the plain tensor the path ('plain', 10**12): building that list
    // would take 32 TB.
    let e = error_of(&bad_folder("list_index"));
    assert_eq!(
        e,
        "DIR/.metadata: key 'plain' of the distributed checkpoint: planner_data puts it at list index 1000000000000, but the checkpoint has 6 entries"
    );
}

#[test]
fn overlapping_chunks() {
    let e = error_of(&bad_folder("overlap"));
    assert_eq!(
        e,
        "DIR/.metadata: key 'layers.rows' of the distributed checkpoint: chunks overlap: offsets [0, 0] sizes [3, 4] and offsets [2, 0] sizes [2, 4]"
    );
}

#[test]
fn uncovered_elements() {
    let e = error_of(&bad_folder("uncovered"));
    assert_eq!(
        e,
        "DIR/.metadata: key 'layers.cols' of the distributed checkpoint: the chunks cover 12 of the tensor's 21 elements (size [3, 7]): part of it is in no chunk"
    );
}

#[test]
fn metadata_outside_the_widened_policy_is_refused() {
    let dir = bad_folder("overlap");
    // pickle.dumps(os.system, protocol=4) without the frame: a global no policy allows.
    std::fs::write(
        dir.join(".metadata"),
        b"\x80\x04\x8c\x02os\x8c\x06system\x93.",
    )
    .unwrap();
    let e = error_of(&dir);
    assert!(
        e.starts_with("DIR/.metadata: Weights only load failed. WeightsUnpickler error: Trying to load unsupported GLOBAL os.system whose module os is blocked."),
        "{e}"
    );
    // A plain dict is a pickle, but not a DCP .metadata.
    let dir = bad_folder("overlap");
    std::fs::write(dir.join(".metadata"), b"\x80\x04}\x94.").unwrap();
    let e = error_of(&dir);
    assert_eq!(
        e,
        "DIR/.metadata: not a PyTorch checkpoint: not a distributed checkpoint's .metadata: expected a torch.distributed.checkpoint.metadata.Metadata, found a dict"
    );
}

#[test]
fn select_errors() {
    let dcp = Loader::new().open_dcp(folder("dcp/sharded")).unwrap();
    let e = dcp.select("layers.rows", &[0..6, 0..4]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "key 'layers.rows' of the distributed checkpoint: the block [0..6, 0..4] is not inside the tensor's size [5, 4]"
    );
    let e = dcp.select("epoch", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "key 'epoch' of the distributed checkpoint: is not a tensor"
    );
    let e = dcp.select("nope", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "key 'nope' of the distributed checkpoint: no such key in the .metadata"
    );
}

#[test]
fn cli_inspects_a_folder() {
    let out = Command::new(env!("CARGO_BIN_EXE_ptload"))
        .args(["inspect", "--json", "--sha256"])
        .arg(folder("dcp/sharded"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["format"], "dcp");
    let expected = fixture_json("expected_dcp.json");
    let want = expected["folders"]["dcp/sharded"]["tensors"]
        .as_array()
        .unwrap();
    let got = report["tensors"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["path"], w["path"]);
        assert_eq!(g["sha256"], w["sha256"]);
        assert_eq!(g["device"], "cpu");
    }
}

#[test]
fn item_holding_another_chunk() {
    let e = error_of(&bad_folder("wrong_item"));
    assert_eq!(
        e,
        "DIR/__1_0.distcp (item at byte 2838): key 'layers.rows' of the distributed checkpoint: the .metadata declares a float32 chunk of size [2, 4], the item holds a float32 tensor of size [3, 3]"
    );
}
