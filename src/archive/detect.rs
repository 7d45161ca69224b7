//! Files that are not PyTorch checkpoints, recognised so that the refusal says what they are:
//! one table of signatures (from the first bytes, never the name) and the explanations for
//! containers that hold something else (a zip or tar without torch's records, a directory).
//!
//! [`super::sniff`] picks the container torch would try (zip, tar, else the legacy pickle
//! stream). Where it says "pickle" and the bytes match one of these instead, the load stops with
//! [`ErrorKind::NotACheckpoint`] naming the format — before any pickle is run:
//!
//! | format | signature |
//! |---|---|
//! | safetensors | u64 LE header length `n`, then `{` at 8, and `8 + n` ≤ the file |
//! | GGUF (llama.cpp) | `GGUF` at 0 |
//! | ONNX (a protobuf `ModelProto`) | `0x08` (field 1, `ir_version`) + a one-byte version ≤ 20 + the tag of field 2–8 |
//! | gzip (`.gz`, `.tar.gz`) | `1F 8B 08` at 0; the first inflated bytes tell a tar or a checkpoint inside |
//! | bzip2, xz, zstd, 7z | `BZh`, `FD 37 7A 58 5A 00`, `28 B5 2F FD`, `37 7A BC AF 27 1C` at 0 |
//! | HDF5 (Keras `.h5`) | `89 48 44 46 0D 0A 1A 0A` at 0 |
//! | NumPy `.npy` | `93 4E 55 4D 50 59` at 0 |
//!
//! None of these can start a legacy checkpoint, whose first pickle (the magic number) begins
//! with `80 02 8A 0A` (protocol 2) or a text opcode (protocols 0/1).

use std::io::Read;

use crate::error::{Error, ErrorKind, Result};
use crate::source::ByteSource;

/// A format ptload recognises but does not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Foreign {
    /// A `.safetensors` file.
    Safetensors,
    /// llama.cpp's GGUF.
    Gguf,
    /// An ONNX model.
    Onnx,
    /// gzip (a `.gz` or `.tar.gz`).
    Gzip,
    /// bzip2.
    Bzip2,
    /// xz.
    Xz,
    /// Zstandard.
    Zstd,
    /// 7-Zip.
    SevenZip,
    /// HDF5 (Keras `.h5` weights).
    Hdf5,
    /// A NumPy `.npy` array.
    Npy,
}

/// Magic bytes at offset 0.
const MAGIC: &[(&[u8], Foreign)] = &[
    (b"\x1f\x8b\x08", Foreign::Gzip),
    (b"GGUF", Foreign::Gguf),
    (b"BZh", Foreign::Bzip2),
    (b"\xfd7zXZ\x00", Foreign::Xz),
    (b"\x28\xb5\x2f\xfd", Foreign::Zstd),
    (b"7z\xbc\xaf\x27\x1c", Foreign::SevenZip),
    (b"\x89HDF\r\n\x1a\n", Foreign::Hdf5),
    (b"\x93NUMPY", Foreign::Npy),
];

/// Tags of `ModelProto` fields 2–8 (producer_name, producer_version, domain, model_version,
/// doc_string, graph, opset_import), one of which follows `ir_version` in every ONNX file.
const ONNX_SECOND_TAGS: &[u8] = &[0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42];

/// What the first bytes of a `len`-byte file say it is, if one of the formats above.
pub fn foreign(head: &[u8], len: u64) -> Option<Foreign> {
    if let Some(&(_, format)) = MAGIC.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Some(format);
    }
    if let Some(n) = head.get(..8) {
        let n = u64::from_le_bytes(n.try_into().ok()?);
        if head.get(8) == Some(&b'{') && n >= 2 && n <= len.saturating_sub(8) {
            return Some(Foreign::Safetensors);
        }
    }
    if let [0x08, version, tag, ..] = head {
        if (1..=20).contains(version) && ONNX_SECOND_TAGS.contains(tag) {
            return Some(Foreign::Onnx);
        }
    }
    None
}

/// Refuses a file that [`super::sniff`] would hand to the legacy reader but that is one of the
/// formats above (`head`: its first bytes).
pub fn check(bytes: &(impl ByteSource + ?Sized), head: &[u8]) -> Result<()> {
    match foreign(head, bytes.len()) {
        Some(format) => Err(refuse(bytes, format)?),
        None => Ok(()),
    }
}

/// A zip file's load failed with `error`: when its entries show it is no torch archive, the
/// error says so instead ([`explain_zip`]); otherwise `error` is returned as it is.
pub fn zip_error(bytes: &(impl ByteSource + ?Sized), error: Error) -> Error {
    if matches!(error.kind(), ErrorKind::NeedBytes { .. }) {
        return error;
    }
    match super::zip::entry_names(bytes, MAX_NAMES).map(|names| explain_zip(&names)) {
        Ok(Some(reason)) => Error::new(ErrorKind::NotACheckpoint { reason }),
        // A partial source: load what the names need, then explain as for the whole file.
        Err(e) if matches!(e.kind(), ErrorKind::NeedBytes { .. }) => e,
        _ => error,
    }
}

/// A tar file's load failed with `error`: when its members show it is not torch's tar format,
/// the error says so instead ([`explain_tar`]).
pub fn tar_error(data: &[u8], error: Error) -> Error {
    let names = super::tar::members(data).map(|m| {
        let mut names: Vec<String> = m.into_keys().collect();
        names.sort();
        names
    });
    match names.map(|names| explain_tar(&names)) {
        Ok(Some(reason)) => Error::new(ErrorKind::NotACheckpoint { reason }),
        _ => error,
    }
}

/// Most entry names read to explain a zip file that is not a torch archive.
const MAX_NAMES: usize = 10_000;

/// The load's error for a foreign file: what it is and what to do with it. Gzip files are
/// looked into (up to 4 KiB of them), so `bytes` may be asked for more than the head.
pub fn refuse(bytes: &(impl ByteSource + ?Sized), format: Foreign) -> Result<Error> {
    let reason = match format {
        Foreign::Safetensors => "a safetensors file: read it with a safetensors library, or \
                                 convert it to a .pt with `ptload convert`"
            .to_owned(),
        Foreign::Gguf => {
            let head = bytes.get(0, bytes.len().min(8))?;
            let version = head
                .get(4..8)
                .and_then(|v| v.try_into().ok())
                .map(u32::from_le_bytes);
            match version {
                Some(v) => format!("a GGUF file (llama.cpp / ggml, version {v})"),
                None => "a GGUF file (llama.cpp / ggml)".to_owned(),
            }
        }
        Foreign::Onnx => {
            "an ONNX model (a protobuf ModelProto): open it with onnx or onnxruntime".to_owned()
        }
        Foreign::Gzip => gzip_reason(bytes.get(0, bytes.len().min(4096))?),
        Foreign::Bzip2 => compressed("a bzip2", "bunzip2"),
        Foreign::Xz => compressed("an xz", "unxz"),
        Foreign::Zstd => compressed("a zstd", "unzstd"),
        Foreign::SevenZip => "a 7-Zip archive: extract it first (7z x)".to_owned(),
        Foreign::Hdf5 => "an HDF5 file (Keras .h5 weights?)".to_owned(),
        Foreign::Npy => "a NumPy .npy array".to_owned(),
    };
    Ok(Error::new(ErrorKind::NotACheckpoint { reason }))
}

/// `what`: the compressor's name with its article ("an xz").
fn compressed(what: &str, tool: &str) -> String {
    format!("{what}-compressed file: decompress it first ({tool})")
}

/// Looks inside a gzip stream: its stored file name, and whether a tar or a checkpoint starts it.
fn gzip_reason(data: &[u8]) -> String {
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    const FHCRC: u8 = 2;
    let flags = data.get(3).copied().unwrap_or(0);
    let mut pos = 10usize;
    if flags & FEXTRA != 0 {
        let xlen = data
            .get(pos..pos + 2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
        pos += 2 + xlen;
    }
    let mut stored_name = None;
    for (flag, keep) in [(FNAME, true), (FCOMMENT, false)] {
        if flags & flag != 0 {
            let rest = data.get(pos..).unwrap_or_default();
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            if keep {
                stored_name = Some(String::from_utf8_lossy(&rest[..end]).into_owned());
            }
            pos += end + 1;
        }
    }
    if flags & FHCRC != 0 {
        pos += 2;
    }
    // Inflate what the head holds: enough for a few tar headers or a checkpoint's first bytes.
    let mut inner = Vec::with_capacity(8192);
    let deflated = data.get(pos..).unwrap_or_default();
    let _ = flate2::read::DeflateDecoder::new(deflated)
        .take(8192)
        .read_to_end(&mut inner);
    if inner.get(257..262) == Some(b"ustar") {
        return match first_tar_member(&inner) {
            Some(name) => format!(
                "a gzip-compressed tar archive (.tar.gz) whose first member is '{name}': \
                 extract it first (tar -xzf) and load the checkpoint inside"
            ),
            None => "a gzip-compressed tar archive (.tar.gz): extract it first (tar -xzf) and \
                     load the checkpoint inside"
                .to_owned(),
        };
    }
    let what = match &stored_name {
        Some(name) => format!("a gzip-compressed file (of '{name}')"),
        None => "a gzip-compressed file".to_owned(),
    };
    // torch.save's first zip entry is `<folder>/data.pkl` (its name at byte 30, its length at 26).
    let first_zip_entry = inner.get(26..28).and_then(|n| {
        let len = u16::from_le_bytes([n[0], n[1]]) as usize;
        inner.get(30..30 + len)
    });
    let inside = if inner.starts_with(b"\x80\x02\x8a\x0a")
        || (inner.starts_with(b"PK\x03\x04")
            && first_zip_entry.is_some_and(|name| name.ends_with(b"/data.pkl")))
    {
        " holding a PyTorch checkpoint"
    } else if inner.starts_with(b"PK\x03\x04") {
        " holding a zip archive"
    } else {
        ""
    };
    format!("{what}{inside}: decompress it first (gunzip)")
}

/// The name of the first file in the start of a tar archive, past PAX and GNU long-name headers.
fn first_tar_member(tar: &[u8]) -> Option<String> {
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let mut pos = 0usize;
    let mut long_name = None;
    for _ in 0..8 {
        let header = tar.get(pos..pos.checked_add(512)?)?;
        if header.get(257..262) != Some(b"ustar") {
            return None;
        }
        let size = u64::from_str_radix(text(&header[124..136]).trim(), 8).ok()?;
        let body = pos + 512;
        let content = tar.get(body..body.checked_add(usize::try_from(size).ok()?)?);
        match header[156] {
            // PAX records: "<len> path=<name>\n".
            b'x' => {
                long_name = content.and_then(|c| {
                    String::from_utf8_lossy(c).lines().find_map(|record| {
                        record.split_once(" path=").map(|(_, name)| name.to_owned())
                    })
                })
            }
            b'L' => long_name = content.map(text),
            b'g' => {}
            _ => {
                let prefix = text(&header[345..500]);
                let name = text(&header[..100]);
                return Some(long_name.unwrap_or(if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                }));
            }
        }
        pos = body.checked_add(usize::try_from(size.div_ceil(512) * 512).ok()?)?;
    }
    None
}

/// File names that look like a checkpoint, for "load that file instead" hints.
fn looks_like_checkpoint(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".pt", ".pth", ".bin", ".ckpt", ".tar", ".pkl"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// Names a few entries: `'a', 'b' and 3 more`.
fn some_names(names: &[&str]) -> String {
    const SHOWN: usize = 3;
    let quoted: Vec<String> = names.iter().take(SHOWN).map(|n| format!("'{n}'")).collect();
    match names.len() {
        n if n > SHOWN => format!("{} and {} more", quoted.join(", "), n - SHOWN),
        _ => quoted.join(", "),
    }
}

/// Why a zip archive with these entries is not a torch archive: it has no `data.pkl` at all.
/// `None` when some entry is a `data.pkl`: then torch's own rule (one top folder holding
/// `data.pkl`) words the error better.
pub fn explain_zip(names: &[String]) -> Option<String> {
    if names
        .iter()
        .any(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
    {
        return None;
    }
    Some(explain_members(
        "a zip archive",
        &["data.pkl"],
        "record",
        names,
        "unzip",
    ))
}

/// Why a tar archive with these members is not torch's legacy tar format (which needs
/// `sys_info`, `pickle`, `tensors` and `storages`), or `None` when it has them all.
pub fn explain_tar(names: &[String]) -> Option<String> {
    let missing: Vec<&str> = ["sys_info", "pickle", "tensors", "storages"]
        .into_iter()
        .filter(|m| !names.iter().any(|n| n == m))
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(explain_members(
        "a tar archive",
        &missing,
        "member",
        names,
        "tar -xf",
    ))
}

fn explain_members(
    what: &str,
    missing: &[&str],
    noun: &str,
    names: &[String],
    extract: &str,
) -> String {
    let inner: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| looks_like_checkpoint(n))
        .collect();
    let missing: Vec<String> = missing.iter().map(|m| format!("'{m}'")).collect();
    let missing = match missing.as_slice() {
        [one] => format!("{one} {noun}"),
        [rest @ .., last] => format!("{} and {last} {noun}s", rest.join(", ")),
        [] => format!("{noun}s"),
    };
    let mut out = format!("{what} without torch's {missing}");
    if inner.is_empty() {
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        out.push_str(&format!("; it holds {}", some_names(&all)));
    } else {
        out.push_str(&format!(
            "; it holds {}: extract it first ({extract}) and load the checkpoint inside",
            some_names(&inner)
        ));
    }
    out
}

/// Why a directory is not a checkpoint file, from the names of the files in it (sorted):
/// the checkpoint or index file in it, if any, is named.
pub fn explain_directory(names: &[String]) -> String {
    let pick = |pred: &dyn Fn(&str) -> bool| -> Vec<&str> {
        names
            .iter()
            .map(String::as_str)
            .filter(|n| pred(n))
            .collect()
    };
    let index = pick(&|n| n.ends_with(".index.json"));
    let weights = pick(&looks_like_checkpoint);
    if names.is_empty() {
        return "an empty directory".to_owned();
    }
    let mut out = "a directory".to_owned();
    if !weights.is_empty() {
        out.push_str(&format!(
            "; it holds {}: load that file",
            some_names(&weights)
        ));
        if !index.is_empty() {
            out.push_str(&format!(" (or the index {})", some_names(&index)));
        }
    } else if !index.is_empty() {
        out.push_str(&format!(
            "; it holds the index {}: load that file",
            some_names(&index)
        ));
    } else {
        out.push_str(" holding no .pt, .pth, .bin, .ckpt or *.index.json file");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn magic_table() {
        for (head, want) in [
            (&b"GGUF\x03\x00\x00\x00"[..], Foreign::Gguf),
            (b"\x1f\x8b\x08\x00", Foreign::Gzip),
            (b"BZh91AY&SY", Foreign::Bzip2),
            (b"\xfd7zXZ\x00\x00", Foreign::Xz),
            (b"\x28\xb5\x2f\xfd\x04", Foreign::Zstd),
            (b"7z\xbc\xaf\x27\x1c\x00", Foreign::SevenZip),
            (b"\x89HDF\r\n\x1a\n", Foreign::Hdf5),
            (b"\x93NUMPY\x01\x00", Foreign::Npy),
            (b"\x08\x07\x12\x07pytorch", Foreign::Onnx),
            (b"\x08\x08\x3a\x10", Foreign::Onnx),
        ] {
            assert_eq!(foreign(head, 4096), Some(want), "{head:?}");
        }
    }

    #[test]
    fn safetensors_needs_a_header_that_fits() {
        let mut file = 16u64.to_le_bytes().to_vec();
        file.extend_from_slice(b"{\"a\":1}         ");
        assert_eq!(
            foreign(&file, file.len() as u64),
            Some(Foreign::Safetensors)
        );
        // A header longer than the file: not safetensors.
        assert_eq!(foreign(&file, 20), None);
        file[8] = b'[';
        assert_eq!(foreign(&file, file.len() as u64), None);
    }

    #[test]
    fn torch_files_are_never_foreign() {
        // `pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)`, the start of every legacy file.
        let legacy = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
        assert_eq!(foreign(legacy, 1 << 20), None);
        // Protocol 0/1: `pickle.dumps(..., protocol=0)`.
        assert_eq!(foreign(b"L119547037146038801333356L\n.", 1 << 20), None);
        assert_eq!(foreign(b"PK\x03\x04", 1 << 20), None);
        assert_eq!(foreign(b"", 0), None);
        assert_eq!(foreign(b"\x08", 1), None);
    }

    #[test]
    fn onnx_needs_both_a_known_version_and_a_second_field() {
        // `ir_version` 7 followed by a tag no ModelProto field has (field 0, field 9).
        assert_eq!(foreign(b"\x08\x07\x00\x00", 4096), None);
        assert_eq!(foreign(b"\x08\x07\x4a\x00", 4096), None);
        // A known second field after a version ONNX never used (0, 21).
        assert_eq!(foreign(b"\x08\x00\x12\x07", 4096), None);
        assert_eq!(foreign(b"\x08\x15\x3a\x10", 4096), None);
        assert_eq!(foreign(b"\x08\x14\x3a\x10", 4096), Some(Foreign::Onnx));
    }

    #[test]
    fn zip_explanations() {
        assert_eq!(
            explain_zip(&names(&["archive/data.pkl", "archive/data/0"])),
            None
        );
        assert_eq!(
            explain_zip(&names(&["readme.txt", "weights/model.pt"])).unwrap(),
            "a zip archive without torch's 'data.pkl' record; it holds 'weights/model.pt': \
             extract it first (unzip) and load the checkpoint inside"
        );
        assert_eq!(
            explain_zip(&names(&["a/x.npy", "a/y.npy", "a/z.npy", "a/w.npy"])).unwrap(),
            "a zip archive without torch's 'data.pkl' record; it holds 'a/x.npy', 'a/y.npy', \
             'a/z.npy' and 1 more"
        );
        // Some data.pkl, misplaced: torch's rules word it (the zip reader's errors stay).
        for list in [
            &["out/archive/data.pkl", "out/archive/version"][..],
            &["data.pkl", "data/0"],
            &["archive/data.pkl", "other/x"],
        ] {
            assert_eq!(explain_zip(&names(list)), None, "{list:?}");
        }
    }

    #[test]
    fn tar_explanations() {
        assert_eq!(
            explain_tar(&names(&["pickle", "storages", "sys_info", "tensors"])),
            None
        );
        assert_eq!(
            explain_tar(&names(&["ckpt", "ckpt/model.pt"])).unwrap(),
            "a tar archive without torch's 'sys_info', 'pickle', 'tensors' and 'storages' \
             members; it holds 'ckpt/model.pt': extract it first (tar -xf) and load the checkpoint inside"
        );
    }

    #[test]
    fn directory_explanations() {
        assert_eq!(
            explain_directory(&names(&[
                "config.json",
                "pytorch_model.bin",
                "pytorch_model.bin.index.json"
            ])),
            "a directory; it holds 'pytorch_model.bin': load that file (or the index \
             'pytorch_model.bin.index.json')"
        );
        assert_eq!(
            explain_directory(&names(&["model.safetensors.index.json", "x.safetensors"])),
            "a directory; it holds the index 'model.safetensors.index.json': load that file"
        );
        assert_eq!(explain_directory(&[]), "an empty directory");
        assert_eq!(
            explain_directory(&names(&["notes.txt"])),
            "a directory holding no .pt, .pth, .bin, .ckpt or *.index.json file"
        );
        // Any checkpoint-like name, in any case; three named, then a count.
        assert_eq!(
            explain_directory(&names(&["a.PT", "b.pth", "c.ckpt", "log.txt"])),
            "a directory; it holds 'a.PT', 'b.pth', 'c.ckpt': load that file"
        );
        assert_eq!(
            explain_directory(&names(&["a.pt", "b.bin", "c.tar", "d.pkl", "e.pt"])),
            "a directory; it holds 'a.pt', 'b.bin', 'c.tar' and 2 more: load that file"
        );
    }

    /// A tar header block: `name`, type flag, `size`, the ustar magic (no checksum: unchecked).
    fn tar_header(name: &str, flag: u8, size: usize) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = flag;
        h[257..263].copy_from_slice(b"ustar\0");
        h
    }

    fn tar_member(out: &mut Vec<u8>, name: &str, flag: u8, body: &[u8]) {
        out.extend(tar_header(name, flag, body.len()));
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    #[test]
    fn first_tar_members_past_long_name_headers() {
        let long = format!("{}/model.pt", "d".repeat(120));
        // PAX extended header, after a global one of 600 bytes (two blocks).
        let mut pax = Vec::new();
        tar_member(&mut pax, "pax_global_header", b'g', &[b'#'; 600]);
        let record = format!(" path={long}\n");
        let record = format!("{}{record}", record.len() + 4);
        tar_member(&mut pax, "PaxHeaders/model.pt", b'x', record.as_bytes());
        tar_member(&mut pax, "short.pt", b'0', b"data");
        assert_eq!(first_tar_member(&pax).as_deref(), Some(long.as_str()));
        // GNU long name.
        let mut gnu = Vec::new();
        tar_member(
            &mut gnu,
            "././@LongLink",
            b'L',
            format!("{long}\0").as_bytes(),
        );
        tar_member(&mut gnu, "short.pt", b'0', b"data");
        assert_eq!(first_tar_member(&gnu).as_deref(), Some(long.as_str()));
        // ustar's prefix field.
        let mut prefixed = tar_header("model.pt", b'0', 0);
        prefixed[345..349].copy_from_slice(b"runs");
        assert_eq!(
            first_tar_member(&prefixed).as_deref(),
            Some("runs/model.pt")
        );
        // Not ustar, or cut short.
        assert_eq!(first_tar_member(&[0u8; 512]), None);
        assert_eq!(first_tar_member(&gnu[..700]), None);
    }
}
