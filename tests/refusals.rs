//! Files people hand to `ptload inspect` that are not PyTorch checkpoints: each is refused with
//! exit status 1 and one line on stderr saying what the file is and what to do
//! (`src/archive/detect.rs`). The inputs are built here, byte by byte, in a scratch folder.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{root, tar, ZipBuilder};

/// A fresh folder under the target directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("refusals")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `ptload inspect PATH`; asserts exit status 1, nothing on stdout and one line on stderr;
/// returns that line without the `ptload: PATH: ` prefix.
fn refused(path: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ptload"))
        .arg("inspect")
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}: {stderr}", path.display());
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let prefix = format!("ptload: {}: ", path.display());
    stderr
        .trim_end()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{stderr}"))
        .to_owned()
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(path, bytes).unwrap();
    path.to_owned()
}

fn checkpoint() -> Vec<u8> {
    std::fs::read(root().join("examples/tiny_convnet.pt")).unwrap()
}

fn gzip(name: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut builder = flate2::GzBuilder::new();
    if let Some(name) = name {
        builder = builder.filename(name);
    }
    let mut enc = builder.write(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[test]
fn safetensors_file() {
    // The safetensors layout: u64 LE header length, the JSON header, then the data.
    let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0; 8]);
    let path = write(&scratch("safetensors").join("model.safetensors"), &file);
    assert_eq!(
        refused(&path),
        "not a PyTorch checkpoint: a safetensors file: read it with a safetensors library, or \
         convert it to a .pt with `ptload convert`"
    );
}

#[test]
fn directory() {
    let dir = scratch("directory");
    let hf = dir.join("hf");
    std::fs::create_dir(&hf).unwrap();
    write(&hf.join("config.json"), b"{}");
    write(&hf.join("pytorch_model.bin"), &checkpoint());
    write(&hf.join("pytorch_model.bin.index.json"), b"{}");
    assert_eq!(
        refused(&hf),
        "not a PyTorch checkpoint: a directory; it holds 'pytorch_model.bin': load that file \
         (or the index 'pytorch_model.bin.index.json')"
    );
    let sharded = dir.join("sharded");
    std::fs::create_dir(&sharded).unwrap();
    write(&sharded.join("model.safetensors.index.json"), b"{}");
    assert_eq!(
        refused(&sharded),
        "not a PyTorch checkpoint: a directory; it holds the index \
         'model.safetensors.index.json': load that file"
    );
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_eq!(
        refused(&empty),
        "not a PyTorch checkpoint: an empty directory"
    );
}

#[test]
fn directory_with_dcp_metadata_is_left_to_the_dcp_reader() {
    // A torch.distributed.checkpoint folder is recognised by its `.metadata` file; this
    // refusal does not claim it.
    let dir = scratch("dcp").join("step_100");
    std::fs::create_dir(&dir).unwrap();
    write(&dir.join(".metadata"), b"");
    let out = Command::new(env!("CARGO_BIN_EXE_ptload"))
        .arg("inspect")
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("a directory"), "{stderr}");
}

#[test]
fn empty_file() {
    let path = write(&scratch("empty").join("model.pt"), b"");
    assert_eq!(
        refused(&path),
        "not a PyTorch checkpoint: the file is empty"
    );
}

#[test]
fn zip_without_data_pkl() {
    let dir = scratch("zip");
    let zip = ZipBuilder::new("weights")
        .add("model.pt", &checkpoint())
        .add("README", b"hi")
        .finish();
    assert_eq!(
        refused(&write(&dir.join("bundle.zip"), &zip)),
        "not a PyTorch checkpoint: a zip archive without torch's 'data.pkl' record; it holds \
         'weights/model.pt': extract it first (unzip) and load the checkpoint inside"
    );
    // An .npz (numpy.savez): a zip of .npy files.
    let npz = ZipBuilder::new("x")
        .add_entry("a.npy", b"\x93NUMPY", 0, 6)
        .add_entry("b.npy", b"\x93NUMPY", 0, 6)
        .finish();
    assert_eq!(
        refused(&write(&dir.join("arrays.npz"), &npz)),
        "not a PyTorch checkpoint: a zip archive without torch's 'data.pkl' record; it holds \
         'a.npy', 'b.npy'"
    );
}

#[test]
fn gzip_of_a_checkpoint() {
    let dir = scratch("gzip");
    let gz = gzip(Some("tiny_convnet.pt"), &checkpoint());
    assert_eq!(
        refused(&write(&dir.join("tiny_convnet.pt.gz"), &gz)),
        "not a PyTorch checkpoint: a gzip-compressed file (of 'tiny_convnet.pt') holding a \
         PyTorch checkpoint: decompress it first (gunzip)"
    );
    let anonymous = gzip(None, b"just text");
    assert_eq!(
        refused(&write(&dir.join("notes.gz"), &anonymous)),
        "not a PyTorch checkpoint: a gzip-compressed file: decompress it first (gunzip)"
    );
}

#[test]
fn gzip_headers_with_every_optional_field() {
    // RFC 1952 by hand: FEXTRA, FNAME, FCOMMENT and FHCRC, each skipped to find the stream.
    let flags = 4 | 8 | 16 | 2;
    let mut gz = vec![0x1f, 0x8b, 8, flags, 0, 0, 0, 0, 0, 3];
    gz.extend_from_slice(&6u16.to_le_bytes());
    gz.extend_from_slice(b"AP\x02\x00hi");
    gz.extend_from_slice(b"model.pt\0");
    gz.extend_from_slice(b"made by hand, \xff\0");
    gz.extend_from_slice(&[0x12, 0x34]);
    let mut deflate = flate2::write::DeflateEncoder::new(gz, flate2::Compression::default());
    deflate.write_all(&checkpoint()).unwrap();
    let gz = deflate.finish().unwrap();
    assert_eq!(
        refused(&write(&scratch("gzip_fields").join("model.pt.gz"), &gz)),
        "not a PyTorch checkpoint: a gzip-compressed file (of 'model.pt') holding a PyTorch \
         checkpoint: decompress it first (gunzip)"
    );
}

#[test]
fn gzip_of_a_zip_that_is_no_checkpoint() {
    let zip = common::ZipBuilder::new("docs")
        .add("readme.txt", b"hello")
        .finish();
    let gz = gzip(Some("docs.zip"), &zip);
    assert_eq!(
        refused(&write(&scratch("gzip_zip").join("docs.zip.gz"), &gz)),
        "not a PyTorch checkpoint: a gzip-compressed file (of 'docs.zip') holding a zip \
         archive: decompress it first (gunzip)"
    );
}

#[test]
fn tar_gz_of_a_checkpoint() {
    let dir = scratch("targz");
    let archive = tar(&[("run1/model.pt", &checkpoint()), ("run1/log.txt", b"ok")]);
    assert_eq!(
        refused(&write(&dir.join("run1.tar.gz"), &gzip(None, &archive))),
        "not a PyTorch checkpoint: a gzip-compressed tar archive (.tar.gz) whose first member \
         is 'run1/model.pt': extract it first (tar -xzf) and load the checkpoint inside"
    );
    // Uncompressed, it is a tar archive without torch's members.
    assert_eq!(
        refused(&write(&dir.join("run1.tar"), &archive)),
        "not a PyTorch checkpoint: a tar archive without torch's 'sys_info', 'pickle', \
         'tensors' and 'storages' members; it holds 'run1/model.pt': extract it first \
         (tar -xf) and load the checkpoint inside"
    );
}

#[test]
fn gguf_file() {
    // GGUF header: magic, u32 version, u64 tensor count, u64 metadata count.
    let mut file = b"GGUF".to_vec();
    file.extend_from_slice(&3u32.to_le_bytes());
    file.extend_from_slice(&0u64.to_le_bytes());
    file.extend_from_slice(&0u64.to_le_bytes());
    let path = write(&scratch("gguf").join("model.gguf"), &file);
    assert_eq!(
        refused(&path),
        "not a PyTorch checkpoint: a GGUF file (llama.cpp / ggml, version 3)"
    );
}

#[test]
fn compressed_and_other_foreign_files_say_what_to_do() {
    for (name, head, want) in [
        (
            "model.pt.bz2",
            &b"BZh91AY&SY\x00\x00"[..],
            "a bzip2-compressed file: decompress it first (bunzip2)",
        ),
        (
            "model.pt.xz",
            b"\xfd7zXZ\x00\x00\x04",
            "an xz-compressed file: decompress it first (unxz)",
        ),
        (
            "model.pt.zst",
            b"\x28\xb5\x2f\xfd\x04\x00",
            "a zstd-compressed file: decompress it first (unzstd)",
        ),
        (
            "model.7z",
            b"7z\xbc\xaf\x27\x1c\x00\x04",
            "a 7-Zip archive: extract it first (7z x)",
        ),
        (
            "model.h5",
            b"\x89HDF\r\n\x1a\n\x00",
            "an HDF5 file (Keras .h5 weights?)",
        ),
        ("array.npy", b"\x93NUMPY\x01\x00", "a NumPy .npy array"),
    ] {
        let path = write(&scratch("foreign").join(name), head);
        assert_eq!(
            refused(&path),
            format!("not a PyTorch checkpoint: {want}"),
            "{name}"
        );
    }
}

#[test]
fn onnx_file() {
    // A ModelProto as torch.onnx.export starts it: ir_version = 8 (field 1, varint),
    // producer_name = "pytorch" (field 2), producer_version = "2.15.0" (field 3), then the
    // graph (field 7, empty here) and opset_import (field 8: version 17).
    let mut file = vec![0x08, 0x08, 0x12, 0x07];
    file.extend_from_slice(b"pytorch");
    file.extend_from_slice(&[0x1a, 0x06]);
    file.extend_from_slice(b"2.15.0");
    file.extend_from_slice(&[0x3a, 0x00, 0x42, 0x02, 0x10, 0x11]);
    let path = write(&scratch("onnx").join("model.onnx"), &file);
    assert_eq!(
        refused(&path),
        "not a PyTorch checkpoint: an ONNX model (a protobuf ModelProto): open it with onnx or \
         onnxruntime"
    );
}

#[test]
fn refusals_hold_for_bytes_too() {
    // The same detection runs for `load_bytes` (and so for the JS API, which plans through it).
    let mut file = b"GGUF".to_vec();
    file.extend_from_slice(&[3, 0, 0, 0]);
    let e = ptload::load_bytes(file).unwrap_err();
    assert!(matches!(e.kind(), ptload::ErrorKind::NotACheckpoint { .. }));
    assert_eq!(
        e.to_string(),
        "<memory>: not a PyTorch checkpoint: a GGUF file (llama.cpp / ggml, version 3)"
    );
}
