//! Helpers shared by the integration tests: the torch-made digests, a minimal zip writer and a
//! pickle builder for hand-made hostile files.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A JSON file under `tests/fixtures/`.
pub fn fixture_json(name: &str) -> Json {
    let path = root().join("tests/fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Compares a loaded checkpoint with torch's digests for it; returns a list of mismatches.
pub fn compare(ckpt: &ptload::Checkpoint, expected: &Json, what: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(format) = expected.get("format").and_then(Json::as_str) {
        if ckpt.format.name() != format {
            problems.push(format!("{what}: format {} != {format}", ckpt.format));
        }
    }
    if let Some(order) = expected.get("byte_order").and_then(Json::as_str) {
        if ckpt.byte_order.name() != order {
            problems.push(format!(
                "{what}: byte order {} != {order}",
                ckpt.byte_order.name()
            ));
        }
    }
    let want = expected["tensors"].as_array().unwrap();
    let got: Vec<_> = ckpt.tensors().collect();
    if got.len() != want.len() {
        problems.push(format!(
            "{what}: {} tensors, torch has {}: ours {:?}",
            got.len(),
            want.len(),
            got.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>()
        ));
        return problems;
    }
    let mut groups: HashMap<i64, usize> = HashMap::new();
    for ((path, t), w) in got.iter().zip(want) {
        let at = format!("{what}: {path}");
        let check = |problems: &mut Vec<String>, field: &str, ours: Json| {
            if w[field] != ours {
                problems.push(format!("{at}: {field} = {ours}, torch says {}", w[field]));
            }
        };
        check(&mut problems, "path", Json::from(path.to_string()));
        check(&mut problems, "dtype", Json::from(t.dtype().name()));
        check(&mut problems, "shape", Json::from(t.shape().to_vec()));
        check(&mut problems, "stride", Json::from(t.stride().to_vec()));
        check(
            &mut problems,
            "storage_offset",
            Json::from(t.storage_offset()),
        );
        check(
            &mut problems,
            "requires_grad",
            Json::from(t.requires_grad()),
        );
        check(&mut problems, "conj", Json::from(t.meta().conj));
        check(&mut problems, "neg", Json::from(t.meta().neg));
        match t.sha256() {
            Ok(sha) => check(&mut problems, "sha256", Json::from(sha)),
            Err(e) => problems.push(format!("{at}: sha256 failed: {e}")),
        }
        check_borrowed_view(&mut problems, &at, t, w);
        // Sharing: torch's storage groups must be ptload's storages.
        let id = t.meta().storage;
        match (w["storage_group"].as_i64(), id) {
            (Some(group), Some(id)) => {
                let seen = *groups.entry(group).or_insert(id);
                if seen != id {
                    problems.push(format!(
                        "{at}: storage group {group} maps to storages {seen} and {id}"
                    ));
                }
            }
            (None, _) => {
                if t.storage().is_some_and(|s| s.nbytes() != 0) {
                    problems.push(format!("{at}: torch has an empty storage, ours is not"));
                }
            }
            (Some(_), None) => problems.push(format!("{at}: no storage")),
        }
    }
    let distinct: std::collections::HashSet<_> = groups.values().collect();
    if distinct.len() != groups.len() {
        problems.push(format!(
            "{what}: distinct torch storages share one ptload storage"
        ));
    }
    problems
}

/// `byte_offset` is torch's storage offset in bytes, and `as_bytes` borrows exactly the host
/// tensors torch calls contiguous, with the bytes `to_contiguous_bytes` gives (whose digest
/// `compare` checks against torch's).
fn check_borrowed_view(problems: &mut Vec<String>, at: &str, t: &ptload::Tensor, w: &Json) {
    let size = t.dtype().element_size() as u64;
    let want_offset = w["storage_offset"].as_u64().unwrap_or(0) * size;
    if t.byte_offset() != want_offset {
        problems.push(format!(
            "{at}: byte_offset {} != {want_offset}",
            t.byte_offset()
        ));
    }
    let dims = |field: &str| -> Vec<u64> {
        w[field]
            .as_array()
            .map(|a| a.iter().filter_map(Json::as_u64).collect())
            .unwrap_or_default()
    };
    let (shape, stride) = (dims("shape"), dims("stride"));
    // torch's is_contiguous: C order, dimensions of size 1 ignored, empty tensors contiguous.
    let mut expected = 1;
    let mut contiguous = true;
    for (&n, &s) in shape.iter().zip(&stride).rev() {
        if n != 1 && s != expected {
            contiguous = false;
        }
        expected *= n;
    }
    let contiguous = contiguous || shape.contains(&0);
    let on_host = t.storage().is_some() && t.device() == ptload::Device::Cpu;
    match t.as_bytes() {
        Some(_) if !contiguous => problems.push(format!(
            "{at}: as_bytes borrows a tensor torch calls not contiguous"
        )),
        Some(bytes) => match t.to_contiguous_bytes() {
            Ok(copy) if copy.as_slice() == bytes => {}
            _ => problems.push(format!("{at}: as_bytes differs from to_contiguous_bytes")),
        },
        None if contiguous && on_host => problems.push(format!(
            "{at}: as_bytes borrows nothing of a contiguous tensor in host memory"
        )),
        None => {}
    }
}

/// Fails with every problem listed, one per line.
pub fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Builds a zip archive the way torch does (stored entries, one folder), for hand-made files.
pub struct ZipBuilder {
    bytes: Vec<u8>,
    central: Vec<u8>,
    entries: u16,
    folder: String,
}

impl ZipBuilder {
    pub fn new(folder: &str) -> Self {
        ZipBuilder {
            bytes: Vec::new(),
            central: Vec::new(),
            entries: 0,
            folder: folder.to_owned(),
        }
    }

    /// Adds a stored record named `<folder>/<name>`, its data aligned to 64 bytes.
    pub fn add(self, name: &str, data: &[u8]) -> Self {
        let full = format!("{}/{name}", self.folder);
        self.add_entry(&full, data, 0, data.len() as u32)
    }

    /// Adds an entry with any full name, compression method and declared uncompressed size.
    pub fn add_entry(mut self, full: &str, data: &[u8], method: u16, size: u32) -> Self {
        let offset = self.bytes.len() as u32;
        let start = offset as usize + 30 + full.len() + 4;
        let pad = (64 - start % 64) % 64;
        let extra_len = 4 + pad;
        self.bytes.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        self.bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // version, flags, method
        self.bytes.extend_from_slice(&[0, 0, 0, 0]); // time, date
        self.bytes.extend_from_slice(&[0; 12]); // crc, sizes (in the central directory)
        self.bytes
            .extend_from_slice(&(full.len() as u16).to_le_bytes());
        self.bytes
            .extend_from_slice(&(extra_len as u16).to_le_bytes());
        self.bytes.extend_from_slice(full.as_bytes());
        self.bytes.extend_from_slice(&0x4246u16.to_le_bytes());
        self.bytes.extend_from_slice(&(pad as u16).to_le_bytes());
        self.bytes.extend(std::iter::repeat_n(b'Z', pad));
        self.bytes.extend_from_slice(data);

        let c = &mut self.central;
        c.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        c.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // made by, needed, flags
        c.extend_from_slice(&method.to_le_bytes());
        c.extend_from_slice(&[0, 0, 0, 0]); // time, date
        c.extend_from_slice(&0u32.to_le_bytes()); // crc
        c.extend_from_slice(&(data.len() as u32).to_le_bytes());
        c.extend_from_slice(&size.to_le_bytes());
        c.extend_from_slice(&(full.len() as u16).to_le_bytes());
        c.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // extra, comment, disk, attrs
        c.extend_from_slice(&offset.to_le_bytes());
        c.extend_from_slice(full.as_bytes());
        self.entries += 1;
        self
    }

    /// A torch-like checkpoint: `data.pkl`, the given data records, `version`.
    pub fn checkpoint(pickle: &[u8], records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut z = ZipBuilder::new("archive").add("data.pkl", pickle);
        for (name, data) in records {
            z = z.add(&format!("data/{name}"), data);
        }
        z.add("version", b"3\n").finish()
    }

    pub fn finish(mut self) -> Vec<u8> {
        let cd_offset = self.bytes.len() as u32;
        let cd_size = self.central.len() as u32;
        self.bytes.extend_from_slice(&self.central);
        self.bytes.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        self.bytes.extend_from_slice(&[0, 0, 0, 0]);
        self.bytes.extend_from_slice(&self.entries.to_le_bytes());
        self.bytes.extend_from_slice(&self.entries.to_le_bytes());
        self.bytes.extend_from_slice(&cd_size.to_le_bytes());
        self.bytes.extend_from_slice(&cd_offset.to_le_bytes());
        self.bytes.extend_from_slice(&[0, 0]);
        self.bytes
    }
}

/// Emits pickle opcodes (protocol 2) for hand-made test pickles.
#[derive(Default)]
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    pub fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    pub fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    pub fn global(self, module: &str, name: &str) -> Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    pub fn str(mut self, s: &str) -> Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn int(mut self, v: i64) -> Self {
        if let Ok(v32) = i32::try_from(v) {
            self.0.push(b'J');
            self.0.extend_from_slice(&v32.to_le_bytes());
        } else {
            self.0.extend_from_slice(&[0x8a, 8]);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        self
    }
    pub fn ints(mut self, values: &[i64]) -> Self {
        self.0.push(b'(');
        for &v in values {
            self = self.int(v);
        }
        self.op(b"t")
    }
    /// The six arguments torch writes for `_rebuild_tensor_v2` of a 2-element storage `0` of
    /// `class`: `storage, 0, (2,), (1,), requires_grad, OrderedDict()`, in a tuple the caller
    /// opens and closes.
    pub fn v2_args(self, class: &str, requires_grad: bool) -> Self {
        self.storage(class, "0", 2)
            .int(0)
            .ints(&[2])
            .ints(&[1])
            .op(if requires_grad { b"\x88" } else { b"\x89" })
            .global("collections", "OrderedDict")
            .op(b")R")
    }
    /// [`Pickle::v2_args`] of a float storage, without gradients.
    pub fn plain_v2_args(self) -> Self {
        self.v2_args("FloatStorage", false)
    }
    /// `('storage', torch.<class>, key, 'cpu', numel)` as a BINPERSID.
    pub fn storage(self, class: &str, key: &str, numel: i64) -> Self {
        self.storage_at(class, key, "cpu", numel)
    }
    /// `('storage', torch.<class>, key, location, numel)` as a BINPERSID.
    pub fn storage_at(self, class: &str, key: &str, location: &str, numel: i64) -> Self {
        self.op(b"(")
            .str("storage")
            .global("torch", class)
            .str(key)
            .str(location)
            .int(numel)
            .op(b"tQ")
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    pub fn tensor(
        self,
        class: &str,
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Self {
        self.tensor_with_hooks(class, key, numel, offset, size, stride, b"")
    }
    /// The same, with `hooks` (opcodes) run on the `OrderedDict()` of backward hooks.
    #[allow(clippy::too_many_arguments, dead_code)]
    pub fn tensor_with_hooks(
        self,
        class: &str,
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
        hooks: &[u8],
    ) -> Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"(")
            .storage(class, key, numel)
            .int(offset)
            .ints(size)
            .ints(stride)
            .op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")R")
            .op(hooks)
            .op(b"tR")
    }
    pub fn stop(self) -> Vec<u8> {
        self.op(b".").0
    }
}

/// A ustar archive (POSIX.1-1988 headers: name, mode, uid, gid, size, mtime, checksum, type,
/// magic) holding `files`, then the two zero blocks that end it.
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = b'0';
        h[257..265].copy_from_slice(b"ustar\x0000");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Raw deflate of `data` (zip method 8).
pub fn deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Reads a fixture file under `tests/fixtures/`.
pub fn fixture(rel: &str) -> Vec<u8> {
    let path = root().join("tests/fixtures").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether `path` exists relative to the repository root.
pub fn exists(rel: &str) -> bool {
    Path::new(&root()).join(rel).exists()
}

/// ptload's policy: weights-only everywhere (pure-data opcodes, TorchScript and tar included),
/// except full-module pickles, whose classes torch's allowlist refuses too.
pub fn needs_no_weights_only(rel: &str) -> bool {
    rel.starts_with("modules/")
}

pub fn loader_for(rel: &str, want: &Json) -> ptload::Loader {
    let mut loader = ptload::Loader::new();
    loader.weights_only(!needs_no_weights_only(rel));
    if let Some(name) = want.get("encoding").and_then(Json::as_str) {
        loader.encoding(name.parse::<ptload::StringEncoding>().unwrap());
    }
    loader
}

/// For TorchScript, torch's digests are `state_dict()`'s: every entry must be among ours.
pub fn compare_by_path(ckpt: &ptload::Checkpoint, want: &Json, what: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let ours: std::collections::HashMap<&str, ptload::Tensor<'_>> = ckpt.tensors().collect();
    for w in want["tensors"].as_array().unwrap() {
        let path = w["path"].as_str().unwrap();
        let Some(t) = ours.get(path) else {
            problems.push(format!(
                "{what}: no tensor at {path}; ours: {:?}",
                ours.keys().collect::<Vec<_>>()
            ));
            continue;
        };
        let got = [
            ("dtype", Json::from(t.dtype().name())),
            ("shape", Json::from(t.shape().to_vec())),
            ("stride", Json::from(t.stride().to_vec())),
            ("storage_offset", Json::from(t.storage_offset())),
            ("sha256", Json::from(t.sha256().unwrap_or_default())),
        ];
        for (field, value) in got {
            if w[field] != value {
                problems.push(format!(
                    "{what}: {path}: {field} = {value}, torch says {}",
                    w[field]
                ));
            }
        }
    }
    if ckpt.format.name() != want["format"] {
        problems.push(format!("{what}: format {}", ckpt.format));
    }
    problems
}

/// Compares a loaded fixture with torch's digests the way its expected entry asks (TorchScript
/// archives by `state_dict()` path, everything else tensor by tensor in file order).
pub fn compare_fixture(ckpt: &ptload::Checkpoint, want: &Json, what: &str) -> Vec<String> {
    if want.get("compare").and_then(Json::as_str) == Some("by_path") {
        compare_by_path(ckpt, want, what)
    } else {
        compare(ckpt, want, what)
    }
}
