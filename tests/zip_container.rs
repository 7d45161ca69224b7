//! The zip container rules of spec §2 on hand-made archives: zip64 as a merge step, version and
//! byte-order records, folder rules, deflate bounds.

mod common;

use common::{deflate, Pickle, ZipBuilder};

fn tensor_pickle() -> Vec<u8> {
    Pickle::new()
        .tensor("FloatStorage", "0", 2, 0, &[2], &[1])
        .stop()
}

fn floats() -> Vec<u8> {
    [1.5f32, -2.0]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect()
}

fn err(bytes: Vec<u8>) -> String {
    ptload::load_bytes(bytes).unwrap_err().to_string()
}

/// Rewrites every central header of `zip` to carry its sizes and offset in a zip64 extra field
/// (0xFFFFFFFF in the fixed fields), and the EOCD to defer to a zip64 EOCD, as torch's writer
/// does past 4 GiB.
fn to_zip64(zip: &[u8]) -> Vec<u8> {
    to_zip64_fields(zip, [true; 3])
}

/// As [`to_zip64`], moving only the chosen fields (uncompressed size, compressed size, local
/// header offset) into the extra field, in the spec's order; the others stay in place.
fn to_zip64_fields(zip: &[u8], moved: [bool; 3]) -> Vec<u8> {
    let eocd = zip.len() - 22;
    let entries = u16::from_le_bytes([zip[eocd + 10], zip[eocd + 11]]);
    let cd_offset = u32::from_le_bytes(zip[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
    let mut out = zip[..cd_offset].to_vec();
    let mut pos = cd_offset;
    for _ in 0..entries {
        let name_len = u16::from_le_bytes([zip[pos + 28], zip[pos + 29]]) as usize;
        let csize = u32::from_le_bytes(zip[pos + 20..pos + 24].try_into().unwrap()) as u64;
        let size = u32::from_le_bytes(zip[pos + 24..pos + 28].try_into().unwrap()) as u64;
        let offset = u32::from_le_bytes(zip[pos + 42..pos + 46].try_into().unwrap()) as u64;
        let mut header = zip[pos..pos + 46].to_vec();
        let fields = [(24, size), (20, csize), (42, offset)];
        let mut extra = Vec::new();
        for (&(at, value), _) in fields.iter().zip(moved).filter(|(_, m)| *m) {
            header[at..at + 4].copy_from_slice(&[0xff; 4]);
            extra.extend_from_slice(&value.to_le_bytes());
        }
        header[30..32].copy_from_slice(&(4 + extra.len() as u16).to_le_bytes()); // extra length
        out.extend_from_slice(&header);
        out.extend_from_slice(&zip[pos + 46..pos + 46 + name_len]);
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        out.extend_from_slice(&extra);
        pos += 46 + name_len;
    }
    let cd_size = (out.len() - cd_offset) as u64;
    let eocd64 = out.len() as u64;
    out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
    out.extend_from_slice(&44u64.to_le_bytes());
    out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&(entries as u64).to_le_bytes());
    out.extend_from_slice(&(entries as u64).to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&(cd_offset as u64).to_le_bytes());
    out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&eocd64.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    out.extend_from_slice(&[0xff; 8]);
    out.extend_from_slice(&[0, 0]);
    out
}

#[test]
fn zip64_fields_are_merged_from_the_extra_field() {
    let plain = ZipBuilder::checkpoint(&tensor_pickle(), &[("0", &floats())]);
    let zip64 = to_zip64(&plain);
    let ckpt = ptload::load_bytes(zip64).unwrap();
    let (path, t) = ckpt.tensors().next().unwrap();
    assert_eq!(path, "");
    assert_eq!(t.as_bytes().unwrap(), floats().as_slice());
    assert!(ckpt.storages[0].data.is_borrowed());
}

#[test]
fn zip64_extra_fields_hold_only_the_fields_that_are_all_ones() {
    // Any one field may overflow alone (a small entry past 4 GiB has only its offset there).
    let plain = ZipBuilder::checkpoint(&tensor_pickle(), &[("0", &floats())]);
    for moved in [
        [true, false, false],
        [false, true, false],
        [false, false, true],
        [true, true, false],
        [false, true, true],
        [true, false, true],
    ] {
        let ckpt = ptload::load_bytes(to_zip64_fields(&plain, moved))
            .unwrap_or_else(|e| panic!("{moved:?}: {e}"));
        let (_, t) = ckpt.tensors().next().unwrap();
        assert_eq!(t.as_bytes().unwrap(), floats().as_slice(), "{moved:?}");
    }
}

#[test]
fn a_local_header_past_the_end_of_the_file_is_refused() {
    // Entries far apart (≥ 64 KiB each on average), whose local headers are read, not
    // borrowed; and the same entries close together.
    for big in [5 << 16, 16] {
        let data = vec![7u8; big];
        let zip = ZipBuilder::checkpoint(&tensor_pickle(), &[("0", &floats()), ("1", &data)]);
        let signature = 0x0201_4b50u32.to_le_bytes();
        let pos = (0..zip.len() - 46)
            .find(|&i| {
                zip[i..].starts_with(&signature) && zip[i + 46..].starts_with(b"archive/version")
            })
            .unwrap();
        let len = zip.len();
        for at in [len - 29, len - 1, len] {
            let mut bad = zip.clone();
            bad[pos + 42..pos + 46].copy_from_slice(&(at as u32).to_le_bytes());
            let e = ptload::load_bytes(bad).unwrap_err();
            assert_eq!(e.offset(), Some(at as u64), "{e}");
            assert!(
                e.to_string().ends_with(&format!(
                    "local file header (30 bytes) lies past the end of the file ({len} bytes)"
                )),
                "{big}, {at}: {e}"
            );
        }
    }
}

#[test]
fn zip64_extra_missing_is_an_error() {
    let plain = ZipBuilder::checkpoint(&tensor_pickle(), &[("0", &floats())]);
    let mut zip64 = to_zip64(&plain);
    // Rename the first entry's 0x0001 block so the sizes cannot be found.
    let at = zip64.windows(4).position(|w| w == [1, 0, 24, 0]).unwrap();
    zip64[at] = 9;
    assert!(err(zip64).contains("the zip64 extra field is missing"));
}

#[test]
fn version_must_be_within_1_to_10() {
    let build = |v: &[u8]| {
        ZipBuilder::new("archive")
            .add("data.pkl", &Pickle::new().op(b"N").stop())
            .add("version", v)
            .finish()
    };
    assert!(ptload::load_bytes(build(b"3\n")).is_ok());
    assert!(ptload::load_bytes(build(b"10")).is_ok());
    assert!(err(build(b"11\n"))
        .ends_with("Attempted to read a PyTorch file with version 11, but the maximum supported version for reading is 10"));
    assert!(err(build(b"0")).contains("the minimum supported version for reading is 1"));
    assert!(err(build(b"three")).contains("not a number"));
    // `.data/version` wins over `version`.
    let both = ZipBuilder::new("archive")
        .add("data.pkl", &Pickle::new().op(b"N").stop())
        .add(".data/version", b"6\n")
        .add("version", b"99\n")
        .finish();
    assert!(ptload::load_bytes(both).is_ok());
}

#[test]
fn byte_order_record() {
    let build = |order: &[u8]| {
        ZipBuilder::new("archive")
            .add("data.pkl", &Pickle::new().op(b"N").stop())
            .add("byteorder", order)
            .add("version", b"3\n")
            .finish()
    };
    assert_eq!(
        ptload::load_bytes(build(b"big")).unwrap().byte_order,
        ptload::ByteOrder::Big
    );
    assert!(err(build(b"middle")).ends_with("Unknown endianness type: middle"));
}

#[test]
fn every_entry_must_share_the_first_entry_folder() {
    let zip = ZipBuilder::new("anything.v2")
        .add("data.pkl", &Pickle::new().op(b"N").stop())
        .add("version", b"3\n")
        .add_entry("other/readme.txt", b"hi", 0, 2)
        .finish();
    assert!(err(zip)
        .contains("file in archive is not in a subdirectory anything.v2/: other/readme.txt"));
    let zip = ZipBuilder::new("x")
        .add_entry("data.pkl", b"N.", 0, 2)
        .finish();
    assert!(err(zip).contains("file in archive is not in a subdirectory: data.pkl"));
}

#[test]
fn deflated_records_inflate_to_exactly_their_declared_size() {
    let pickle = tensor_pickle();
    let good = ZipBuilder::new("archive")
        .add_entry(
            "archive/data.pkl",
            &deflate(&pickle),
            8,
            pickle.len() as u32,
        )
        .add_entry("archive/data/0", &deflate(&floats()), 8, 8)
        .add("version", b"3\n")
        .finish();
    let ckpt = ptload::load_bytes(good).unwrap();
    assert_eq!(
        ckpt.tensors()
            .next()
            .unwrap()
            .1
            .to_contiguous_bytes()
            .unwrap(),
        floats()
    );

    // A bomb: 64 MiB of zeros declared as 8 bytes. Inflation stops at 9 bytes.
    let bomb = deflate(&vec![0u8; 64 << 20]);
    let zip = ZipBuilder::new("archive")
        .add("data.pkl", &pickle)
        .add_entry("archive/data/0", &bomb, 8, 8)
        .add("version", b"3\n")
        .finish();
    assert!(
        err(zip).contains("deflate stream holds more than 8 bytes, but the directory declares 8")
    );

    let zip = ZipBuilder::new("archive")
        .add("data.pkl", &pickle)
        .add_entry("archive/data/0", b"\xff\xff\xff garbage", 8, 8)
        .add("version", b"3\n")
        .finish();
    assert!(err(zip).contains("deflate stream is corrupt"));

    let zip = ZipBuilder::new("archive")
        .add("data.pkl", &pickle)
        .add_entry("archive/data/0", &floats(), 12, 8)
        .add("version", b"3\n")
        .finish();
    assert!(err(zip).contains("compression method 12"));
}

#[test]
fn declared_size_over_the_limit_is_refused_before_allocating() {
    let pickle = tensor_pickle();
    let zip = ZipBuilder::new("archive")
        .add_entry("archive/data.pkl", &deflate(&pickle), 8, u32::MAX - 1)
        .add("version", b"3\n")
        .finish();
    let e = ptload::Loader::new()
        .limits(ptload::Limits::default().with_max_pickle_bytes(1 << 20))
        .load_bytes(zip)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("limit max_pickle_bytes exceeded: 4294967294 > 1048576"),
        "{e}"
    );
}

/// Sets every entry's CRC-32 (central and local headers) from its data, for readers that
/// check it (the `zip` crate); `entries` are `(uncompressed data)` in directory order.
fn with_crcs(mut zip: Vec<u8>, entries: &[&[u8]]) -> Vec<u8> {
    let eocd = zip.len() - 22;
    let cd_offset = u32::from_le_bytes(zip[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
    let mut pos = cd_offset;
    for data in entries {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let crc = crc.sum().to_le_bytes();
        let name_len = u16::from_le_bytes([zip[pos + 28], zip[pos + 29]]) as usize;
        let local = u32::from_le_bytes(zip[pos + 42..pos + 46].try_into().unwrap()) as usize;
        zip[pos + 16..pos + 20].copy_from_slice(&crc);
        zip[local + 14..local + 18].copy_from_slice(&crc);
        pos += 46 + name_len;
    }
    zip
}

#[test]
fn deflated_zip64_entries_read_both_sizes_in_the_spec_order() {
    // 1024 floats, deflated to far fewer bytes: the zip64 extra field's uncompressed and
    // compressed sizes differ, so reading them in the wrong order cannot go unnoticed.
    let data: Vec<u8> = (0..1024u32)
        .flat_map(|i| ((i % 7) as f32).to_le_bytes())
        .collect();
    let compressed = deflate(&data);
    assert!(compressed.len() * 4 < data.len());
    let pickle = Pickle::new()
        .tensor("FloatStorage", "0", 1024, 0, &[1024], &[1])
        .stop();
    let plain = ZipBuilder::new("archive")
        .add("data.pkl", &pickle)
        .add_entry("archive/data/0", &compressed, 8, data.len() as u32)
        .add("version", b"3\n")
        .finish();
    let plain = with_crcs(plain, &[&pickle, &data, b"3\n"]);
    let zip64 = to_zip64(&plain);
    // An independent reader (the `zip` crate) agrees that the file says what we mean.
    let mut oracle = zip::ZipArchive::new(std::io::Cursor::new(zip64.clone())).unwrap();
    let mut entry = oracle.by_name("archive/data/0").unwrap();
    assert_eq!(
        (entry.size(), entry.compressed_size()),
        (data.len() as u64, compressed.len() as u64)
    );
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut inflated).unwrap();
    assert_eq!(inflated, data);
    drop(entry);
    let ckpt = ptload::load_bytes(zip64).unwrap();
    assert_eq!(
        ckpt.tensor("").unwrap().to_contiguous_bytes().unwrap(),
        data
    );
}

#[test]
fn a_stored_entry_whose_sizes_disagree_is_refused() {
    // Stored, 8 bytes of data, declared as 16 uncompressed: the entry lies about its size.
    let bytes = ZipBuilder::new("archive")
        .add("data.pkl", &tensor_pickle())
        .add_entry("archive/data/0", &floats(), 0, 16)
        .add("version", b"3\n")
        .finish();
    let e = ptload::load_bytes(bytes).unwrap_err();
    assert!(matches!(e.kind(), ptload::ErrorKind::Zip { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("stored entry 'archive/data/0' has compressed size 8 but size 16"),
        "{e}"
    );
}

/// `zip` with a comment of `n` bytes after its end record (the EOCD's comment length set).
fn with_comment(mut zip: Vec<u8>, n: usize) -> Vec<u8> {
    let eocd = zip.len() - 22;
    zip[eocd + 20..eocd + 22].copy_from_slice(&(n as u16).to_le_bytes());
    // A comment that looks like neither an EOCD nor its locator.
    zip.extend((0..n).map(|i| b'a' + (i % 26) as u8));
    zip
}

#[test]
fn the_end_record_is_found_before_a_comment_of_any_length() {
    let plain = ZipBuilder::checkpoint(&tensor_pickle(), &[("0", &floats())]);
    for n in [1, 21, 22, 1000, 65_535] {
        let ckpt = ptload::load_bytes(with_comment(plain.clone(), n))
            .unwrap_or_else(|e| panic!("comment of {n} bytes: {e}"));
        assert_eq!(
            ckpt.tensor("").unwrap().as_bytes().unwrap(),
            floats().as_slice()
        );
    }
    // Also for a zip64 archive, whose locator precedes the end record.
    let ckpt = ptload::load_bytes(with_comment(to_zip64(&plain), 300)).unwrap();
    assert_eq!(
        ckpt.tensor("").unwrap().as_bytes().unwrap(),
        floats().as_slice()
    );
}

#[test]
fn files_too_short_for_an_end_record() {
    let parse = |b: &[u8]| {
        ptload::archive::ZipDirectory::parse(b)
            .unwrap_err()
            .to_string()
    };
    let mut eocd = 0x0605_4b50u32.to_le_bytes().to_vec();
    eocd.resize(22, 0);
    // 21 bytes cannot hold the 22-byte record; 22 bytes can (and hold no entries).
    assert!(
        parse(&eocd[..21]).contains("file too short for a zip archive (21 bytes)"),
        "{}",
        parse(&eocd[..21])
    );
    assert!(
        parse(&eocd).contains("the archive has no entries"),
        "{}",
        parse(&eocd)
    );
}

#[test]
fn ranges_ending_exactly_at_the_end_of_the_file_are_inside_it() {
    // The central directory's declared size reaching the last byte (the end record included):
    // the entry count bounds the walk, so the file loads.
    let plain = ZipBuilder::checkpoint(&tensor_pickle(), &[("0", &floats())]);
    let mut zip = plain.clone();
    let eocd = zip.len() - 22;
    let cd_offset = u32::from_le_bytes(zip[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
    let to_end = (zip.len() - cd_offset) as u32;
    zip[eocd + 12..eocd + 16].copy_from_slice(&to_end.to_le_bytes());
    ptload::load_bytes(zip).unwrap();
    // One byte further is outside.
    let mut zip = plain;
    zip[eocd + 12..eocd + 16].copy_from_slice(&(to_end + 1).to_le_bytes());
    assert!(err(zip).contains("lies outside the file"));

    // A deflated entry whose compressed size runs to the last byte: inside the file (the
    // inflater stops at the end of its stream).
    let pickle = tensor_pickle();
    let zip = ZipBuilder::new("archive")
        .add("version", b"3\n")
        .add("data/0", &floats())
        .add_entry(
            "archive/data.pkl",
            &deflate(&pickle),
            8,
            pickle.len() as u32,
        )
        .finish();
    let signature = 0x0201_4b50u32.to_le_bytes();
    let header = (0..zip.len() - 46)
        .find(|&i| {
            zip[i..].starts_with(&signature) && zip[i + 46..].starts_with(b"archive/data.pkl")
        })
        .unwrap();
    let local = u32::from_le_bytes(zip[header + 42..header + 46].try_into().unwrap()) as usize;
    let name_len = u16::from_le_bytes([zip[local + 26], zip[local + 27]]) as usize;
    let extra_len = u16::from_le_bytes([zip[local + 28], zip[local + 29]]) as usize;
    let data_offset = local + 30 + name_len + extra_len;
    let mut to_end = zip.clone();
    to_end[header + 20..header + 24]
        .copy_from_slice(&((zip.len() - data_offset) as u32).to_le_bytes());
    let ckpt = ptload::load_bytes(to_end).unwrap();
    assert_eq!(
        ckpt.tensor("").unwrap().as_bytes().unwrap(),
        floats().as_slice()
    );
    let mut past = zip.clone();
    past[header + 20..header + 24]
        .copy_from_slice(&((zip.len() - data_offset + 1) as u32).to_le_bytes());
    assert!(err(past).contains("run past the end of the file"));
}

#[test]
fn an_entry_running_past_the_end_of_the_file_is_refused() {
    let zip = ZipBuilder::new("archive")
        .add("data.pkl", &tensor_pickle())
        .add_entry("archive/data/0", &deflate(&floats()), 8, 8)
        .add("version", b"3\n")
        .finish();
    // Declare the deflated entry's compressed size 1 MiB, in its central header.
    let signature = 0x0201_4b50u32.to_le_bytes();
    let pos = (0..zip.len() - 46)
        .find(|&i| zip[i..].starts_with(&signature) && zip[i + 46..].starts_with(b"archive/data/0"))
        .unwrap();
    let mut bad = zip.clone();
    bad[pos + 20..pos + 24].copy_from_slice(&(1u32 << 20).to_le_bytes());
    let e = err(bad);
    assert!(
        e.contains("entry 'archive/data/0': 1048576 bytes of data at offset")
            && e.contains("run past the end of the file"),
        "{e}"
    );
}

#[test]
fn too_many_entries_for_the_directory_size_are_refused() {
    let mut zip = ZipBuilder::checkpoint(&tensor_pickle(), &[("0", &floats())]);
    let eocd = zip.len() - 22;
    let cd_size = u32::from_le_bytes(zip[eocd + 12..eocd + 16].try_into().unwrap()) as u64;
    // One more than 46-byte headers could fit.
    let entries = (cd_size / 46 + 1) as u16;
    zip[eocd + 8..eocd + 10].copy_from_slice(&entries.to_le_bytes());
    zip[eocd + 10..eocd + 12].copy_from_slice(&entries.to_le_bytes());
    let e = err(zip);
    assert!(
        e.contains(&format!(
            "{entries} entries cannot fit in a central directory of {cd_size} bytes"
        )),
        "{e}"
    );
}

#[test]
fn a_pickle_inflating_past_its_declared_size_is_refused() {
    let pickle = tensor_pickle();
    let zip = ZipBuilder::new("archive")
        .add_entry(
            "archive/data.pkl",
            &deflate(&pickle),
            8,
            pickle.len() as u32 - 1,
        )
        .add("data/0", &floats())
        .add("version", b"3\n")
        .finish();
    let e = err(zip);
    assert!(
        e.contains(&format!(
            "deflate stream holds more than {} bytes, but the directory declares {}",
            pickle.len() - 1,
            pickle.len() - 1
        )),
        "{e}"
    );
}

#[test]
fn the_deflate_ratio_bound_is_inclusive() {
    // Deflate expands at most 1032:1 (plus a 64-byte allowance): a declared size at the bound
    // is read (and found wrong by the inflater), one byte more is refused unread.
    let pickle = tensor_pickle();
    let compressed = deflate(&pickle);
    let bound = compressed.len() as u32 * 1032 + 64;
    let build = |size: u32| {
        ZipBuilder::new("archive")
            .add_entry("archive/data.pkl", &compressed, 8, size)
            .add("data/0", &floats())
            .add("version", b"3\n")
            .finish()
    };
    let at_bound = err(build(bound));
    assert!(
        at_bound.contains(&format!(
            "deflate stream holds {} bytes, but the directory declares {bound}",
            pickle.len()
        )),
        "{at_bound}"
    );
    let over = err(build(bound + 1));
    assert!(
        over.contains(&format!(
            "declares {} bytes, more than {} compressed bytes can inflate to",
            bound + 1,
            compressed.len()
        )),
        "{over}"
    );
}

#[test]
fn a_zip64_archive_that_is_no_checkpoint_names_its_entries() {
    let zip = ZipBuilder::new("weights")
        .add("model.safetensors", b"{}")
        .add("notes.txt", b"hello")
        .finish();
    let e = err(to_zip64(&zip));
    assert!(
        e.contains("weights/model.safetensors") && e.contains("weights/notes.txt"),
        "{e}"
    );
}

#[test]
fn local_headers_far_apart_are_read_from_the_file_and_load_the_same() {
    // Two 256 KiB tensors: entries lie more than 64 KiB apart on average, so a mapped file's
    // local headers are read with a file read rather than borrowed from the map. Whatever the
    // route, the same records and bytes come out, from a file and from memory.
    let tensor = |seed: u8| -> Vec<u8> { (0..256 << 10).map(|i| (i as u8) ^ seed).collect() };
    let ckpt = ptload::Checkpoint::from_tensors(vec![
        ("a".into(), ptload::Dtype::UInt8, vec![256 << 10], tensor(1)),
        ("b".into(), ptload::Dtype::UInt8, vec![256 << 10], tensor(2)),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("far.pt");
    ptload::save(&ckpt, &path).unwrap();
    let from_file = ptload::load(&path).unwrap();
    let from_memory = ptload::load_bytes(std::fs::read(&path).unwrap()).unwrap();
    for (name, seed) in [("a", 1), ("b", 2)] {
        let want = tensor(seed);
        for loaded in [&from_file, &from_memory] {
            let t = loaded.tensor(name).unwrap();
            assert!(t.as_bytes().unwrap() == want.as_slice(), "{name}");
        }
    }
    // A broken local header is reported the same whichever way it was read.
    let mut bytes = std::fs::read(&path).unwrap();
    let directory = ptload::archive::ZipDirectory::parse(&bytes[..]).unwrap();
    let record = directory.record("data/1").unwrap();
    let header = local_header_before(&bytes, record.data_offset);
    bytes[header] = b'Q';
    std::fs::write(&path, &bytes).unwrap();
    let from_file = ptload::load(&path).unwrap_err().to_string();
    let from_memory = ptload::load_bytes(bytes).unwrap_err().to_string();
    assert!(
        from_file.contains("wrong magic for local file header"),
        "{from_file}"
    );
    assert_eq!(
        from_file.replace(&path.display().to_string(), "<memory>"),
        from_memory
    );
}

/// 40 tensors of 80 KiB each: enough records far enough apart that a mapped file's storage
/// headers are read on the helper thread while the pickle is parsed.
fn many_far_apart() -> (ptload::Checkpoint, Vec<Vec<u8>>) {
    let tensors: Vec<Vec<u8>> = (0..40u8)
        .map(|seed| (0..80 << 10).map(|i| (i as u8) ^ seed).collect())
        .collect();
    let ckpt = ptload::Checkpoint::from_tensors(
        tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    format!("t{i}"),
                    ptload::Dtype::UInt8,
                    vec![80 << 10],
                    t.clone(),
                )
            })
            .collect(),
    )
    .unwrap();
    (ckpt, tensors)
}

/// `ckpt` saved as `many.pt` in a new temporary folder (gone with the first value).
fn saved(ckpt: &ptload::Checkpoint) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.pt");
    ptload::save(ckpt, &path).unwrap();
    (dir, path)
}

/// The offset of the local header of the record whose data starts at `data_offset`.
fn local_header_before(bytes: &[u8], data_offset: u64) -> usize {
    bytes[..data_offset as usize]
        .windows(4)
        .rposition(|w| w == b"PK\x03\x04")
        .unwrap()
}

#[test]
fn storage_headers_read_on_a_helper_load_the_same_as_in_turn() {
    let (ckpt, tensors) = many_far_apart();
    let (_dir, path) = saved(&ckpt);
    let source = ptload::Source::open(&path).unwrap();
    // From a file, the storage records wait for their headers; the others are ready at once.
    let (mut deferred_dir, deferred) =
        ptload::archive::ZipDirectory::parse_deferring(&source).unwrap();
    assert!(!deferred.is_empty());
    assert!(
        deferred.is_reading_ahead(),
        "40 headers go to the helper thread"
    );
    assert_eq!(
        deferred_dir.record("data/7").unwrap().data_offset,
        u64::MAX,
        "not located before finish"
    );
    let serial = ptload::archive::ZipDirectory::parse(&source).unwrap();
    assert_eq!(
        deferred_dir.record("data.pkl"),
        serial.record("data.pkl"),
        "the pickle's record is ready at once"
    );
    deferred_dir.finish(&source, deferred).unwrap();
    assert_eq!(deferred_dir.records(), serial.records());
    // From memory there is no helper: nothing waits.
    let bytes = std::fs::read(&path).unwrap();
    let (in_memory, none) = ptload::archive::ZipDirectory::parse_deferring(&bytes[..]).unwrap();
    assert!(none.is_empty());
    assert_eq!(in_memory.records(), serial.records());

    let from_file = ptload::load(&path).unwrap();
    for (i, want) in tensors.iter().enumerate() {
        let t = from_file.tensor(&format!("t{i}")).unwrap();
        assert!(t.as_bytes().unwrap() == want.as_slice(), "t{i}");
    }
}

#[test]
fn a_broken_storage_header_read_on_a_helper_is_reported_before_later_errors() {
    let (ckpt, _) = many_far_apart();
    let (_dir, path) = saved(&ckpt);
    let good = std::fs::read(&path).unwrap();
    let directory = ptload::archive::ZipDirectory::parse(&good[..]).unwrap();
    let header = local_header_before(&good, directory.record("data/20").unwrap().data_offset);
    let pickle = directory.record("data.pkl").unwrap().data_offset as usize;
    let check = |bytes: Vec<u8>, expected: &str| {
        std::fs::write(&path, &bytes).unwrap();
        let from_file = ptload::load(&path).unwrap_err().to_string();
        let from_memory = ptload::load_bytes(bytes).unwrap_err().to_string();
        assert!(from_file.contains(expected), "{from_file}");
        assert_eq!(
            from_file.replace(&path.display().to_string(), "<memory>"),
            from_memory
        );
    };
    // The header alone.
    let mut broken = good.clone();
    broken[header] = b'Q';
    check(broken.clone(), "wrong magic for local file header");
    // With a broken pickle too: the header (read first by torch) is still what is reported.
    broken[pickle] = 0xff;
    check(broken, "wrong magic for local file header");
    // The pickle alone is reported as such.
    let mut broken = good.clone();
    broken[pickle] = 0xff;
    check(broken, "data.pkl");
    // The last storage's header, stretched so that its data runs past the end of the file.
    let last_header = local_header_before(&good, directory.record("data/39").unwrap().data_offset);
    let mut broken = good.clone();
    broken[last_header + 28..last_header + 30].copy_from_slice(&u16::MAX.to_le_bytes());
    check(
        broken,
        "entry 'archive/data/39': 81920 bytes of data at offset",
    );
    // A later error in the central directory comes after an earlier broken header, as when the
    // headers are read in turn.
    let mut broken = good.clone();
    broken[header] = b'Q';
    let eocd = broken.len() - 22;
    let cd_offset = u32::from_le_bytes(broken[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
    let mut pos = cd_offset;
    let mut last = pos;
    while broken[pos..pos + 4] == *b"PK\x01\x02" {
        last = pos;
        let name = u16::from_le_bytes([broken[pos + 28], broken[pos + 29]]) as usize;
        let extra = u16::from_le_bytes([broken[pos + 30], broken[pos + 31]]) as usize;
        let comment = u16::from_le_bytes([broken[pos + 32], broken[pos + 33]]) as usize;
        pos += 46 + name + extra + comment;
    }
    // The last entry (`version`) compressed with method 12 (bzip2).
    broken[last + 10..last + 12].copy_from_slice(&12u16.to_le_bytes());
    check(broken.clone(), "wrong magic for local file header");
    broken[header] = b'P';
    check(broken, "compression method 12");
    // A storage one byte shorter than its tensor (both sizes in its central header): found
    // while the helper reads, reported with its data's offset as when read in turn, and after
    // an earlier broken header.
    let mut short = good.clone();
    let mut pos = cd_offset;
    while short[pos..pos + 4] == *b"PK\x01\x02" {
        let name = u16::from_le_bytes([short[pos + 28], short[pos + 29]]) as usize;
        let extra = u16::from_le_bytes([short[pos + 30], short[pos + 31]]) as usize;
        let comment = u16::from_le_bytes([short[pos + 32], short[pos + 33]]) as usize;
        if &short[pos + 46..pos + 46 + name] == b"archive/data/30" {
            for field in [pos + 20, pos + 24] {
                short[field..field + 4].copy_from_slice(&((80u32 << 10) - 1).to_le_bytes());
            }
        }
        pos += 46 + name + extra + comment;
    }
    let offset = directory.record("data/30").unwrap().data_offset;
    check(
        short.clone(),
        &format!(
            "storage 'archive/data/30' (data at byte 0x{offset:X}): record size (81919 bytes)"
        ),
    );
    short[header] = b'Q';
    check(short, "wrong magic for local file header");
}

/// A file in memory that behaves like a mapped one (`reads_ahead`): it counts the bytes
/// borrowed from it (each a page fault in a real map) and the reads made of it.
struct CountingMap {
    bytes: Vec<u8>,
    borrowed: std::cell::RefCell<Vec<(u64, u64)>>,
    reads: std::cell::RefCell<Vec<(u64, u64)>>,
    /// Whether it says it reads ahead (a mapped file); else it is bytes in memory.
    mapped: bool,
}

impl CountingMap {
    fn new(bytes: Vec<u8>) -> Self {
        CountingMap {
            bytes,
            borrowed: Default::default(),
            reads: Default::default(),
            mapped: true,
        }
    }

    /// Bytes in memory (no reads ahead), counted alike.
    fn in_memory(bytes: Vec<u8>) -> Self {
        CountingMap {
            mapped: false,
            ..CountingMap::new(bytes)
        }
    }
}

impl ptload::source::ByteSource for CountingMap {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn get(&self, offset: u64, len: u64) -> ptload::Result<&[u8]> {
        self.borrowed.borrow_mut().push((offset, len));
        ptload::source::ByteSource::get(&self.bytes[..], offset, len)
    }

    fn read_small(&self, offset: u64, buf: &mut [u8]) -> ptload::Result<()> {
        self.reads.borrow_mut().push((offset, buf.len() as u64));
        let bytes = ptload::source::ByteSource::get(&self.bytes[..], offset, buf.len() as u64)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn reads_ahead(&self) -> bool {
        self.mapped
    }
}

#[test]
fn planning_a_mapped_file_reads_its_metadata_in_two_reads_and_borrows_none() {
    let (ckpt, _) = many_far_apart();
    let (_dir, path) = saved(&ckpt);
    let bytes = std::fs::read(&path).unwrap();
    let len = bytes.len() as u64;
    let map = CountingMap::new(bytes);
    let plan = ptload::Loader::new().plan("many.pt", &map).unwrap();
    let from_memory = ptload::Loader::new()
        .plan("many.pt", &std::fs::read(&path).unwrap()[..])
        .unwrap();
    assert_eq!(plan.storages.len(), 40);
    for (a, b) in plan.storages.iter().zip(&from_memory.storages) {
        assert_eq!(a.record, b.record);
    }
    // Not one byte borrowed from the map: nothing faulted in.
    assert_eq!(*map.borrowed.borrow(), vec![]);
    // The first and last 32 KiB (sniffing, data.pkl, byteorder, the first storage's local
    // header; the directory, version), then the 30-byte local header of each other storage
    // record (this source has no helper thread), in directory order.
    let reads = map.reads.borrow();
    assert_eq!(reads[..2], [(0, 32 << 10), (len - (32 << 10), 32 << 10)]);
    let headers: Vec<u64> = plan.storages[1..]
        .iter()
        .map(|s| local_header_before(&map.bytes, s.record.as_ref().unwrap().data_offset) as u64)
        .collect();
    assert!(headers
        .iter()
        .all(|&h| h >= 32 << 10 && h < len - (32 << 10)));
    assert_eq!(
        reads[2..],
        headers.iter().map(|&h| (h, 30)).collect::<Vec<_>>()[..]
    );
}

#[test]
fn the_directory_of_a_mapped_file_is_read_in_two_reads() {
    let (ckpt, _) = many_far_apart();
    let (_dir, path) = saved(&ckpt);
    let bytes = std::fs::read(&path).unwrap();
    let len = bytes.len() as u64;
    let map = CountingMap::new(bytes);
    let (mut directory, deferred) = ptload::archive::ZipDirectory::parse_deferring(&map).unwrap();
    // No helper for this source: the storage headers were read at once.
    assert!(deferred.is_empty() && !deferred.is_reading_ahead());
    directory.finish(&map, deferred).unwrap();
    let serial = ptload::archive::ZipDirectory::parse(&map.bytes[..]).unwrap();
    assert_eq!(directory.records(), serial.records());
    assert_eq!(*map.borrowed.borrow(), vec![]);
    // The end records (EOCD, zip64 locator, zip64 EOCD: 98 bytes), then the whole directory.
    let eocd = len as usize - 22;
    let cd_size = u32::from_le_bytes(map.bytes[eocd + 12..eocd + 16].try_into().unwrap()) as u64;
    let cd_offset = u32::from_le_bytes(map.bytes[eocd + 16..eocd + 20].try_into().unwrap()) as u64;
    let reads = map.reads.borrow();
    assert_eq!(reads[..2], [(len - 98, 98), (cd_offset, cd_size)]);
    // Then every record's local header, read (they lie far apart), not borrowed.
    assert!(reads[2..].iter().all(|&(_, n)| n == 30), "{reads:?}");
    assert_eq!(reads.len(), 2 + directory.records().len());
}

/// 500 tensors of 4 floats: a `data.pkl` larger than the 32 KiB read with the file's head.
fn big_pickle_file() -> Vec<u8> {
    let ckpt = ptload::Checkpoint::from_tensors(
        (0..500)
            .map(|i| {
                let bytes: Vec<u8> = (0..16).map(|b| (b + i) as u8).collect();
                (
                    format!("layer{i}.weight"),
                    ptload::Dtype::Float32,
                    vec![4],
                    bytes,
                )
            })
            .collect(),
    )
    .unwrap();
    let (_dir, path) = saved(&ckpt);
    std::fs::read(&path).unwrap()
}

#[test]
fn a_pickle_past_the_first_read_is_read_too_not_borrowed() {
    let bytes = big_pickle_file();
    let directory = ptload::archive::ZipDirectory::parse(&bytes[..]).unwrap();
    let pickle = directory.record("data.pkl").unwrap().clone();
    assert!(pickle.data_offset + pickle.stored_len > 32 << 10);
    let map = CountingMap::new(bytes);
    let plan = ptload::Loader::new().plan("many.pt", &map).unwrap();
    assert_eq!(plan.storages.len(), 500);
    // Only local headers are borrowed (records this close together lie on pages a map faults
    // in anyway); nothing of the pickle.
    let end = pickle.data_offset + pickle.stored_len;
    for &(offset, len) in map.borrowed.borrow().iter() {
        assert_eq!(len, 30);
        assert!(
            offset + len <= pickle.data_offset || offset >= end,
            "{offset}"
        );
    }
    // data.pkl is read whole (with `byteorder` after it) in one read.
    let reads = map.reads.borrow();
    assert!(
        reads
            .iter()
            .any(|&(offset, len)| offset == pickle.data_offset
                && len >= pickle.stored_len
                && len < pickle.stored_len + 4096),
        "{reads:?}"
    );
}

#[test]
fn max_pickle_bytes_admits_a_pickle_of_exactly_that_size() {
    let bytes = big_pickle_file();
    let directory = ptload::archive::ZipDirectory::parse(&bytes[..]).unwrap();
    let size = directory.record("data.pkl").unwrap().stored_len;
    let load = |max: u64| {
        ptload::Loader::new()
            .limits(ptload::Limits::default().with_max_pickle_bytes(max))
            .load_bytes(bytes.clone())
    };
    assert_eq!(load(size).unwrap().tensors().count(), 500);
    let e = load(size - 1).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "limit max_pickle_bytes exceeded: {size} > {}",
            size - 1
        )),
        "{e}"
    );
}

#[test]
fn a_directory_keeps_its_names_in_one_buffer() {
    // Each record's name is a slice of one buffer holding them all in directory order (one
    // allocation for the directory, none per record), read as the directory spells them.
    let bytes = std::fs::read("examples/tiny_convnet.pt").unwrap();
    let directory = ptload::archive::ZipDirectory::parse(&bytes[..]).unwrap();
    let spelled = ptload::archive::zip::entry_names(&bytes[..], 1000).unwrap();
    let names: Vec<&str> = directory
        .records()
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, spelled);
    assert!(names.len() > 20);
    for pair in names.windows(2) {
        let after_first = pair[0].as_ptr() as usize + pair[0].len();
        assert_eq!(after_first, pair[1].as_ptr() as usize, "{pair:?}");
    }
    // A copy of a record (a plan's) shares the name, too.
    let record = directory.record("data.pkl").unwrap().clone();
    assert_eq!(record.name, "tiny_convnet/data.pkl");
    assert_eq!(
        record.name.as_ptr(),
        directory.record("data.pkl").unwrap().name.as_ptr()
    );
}

#[test]
fn an_entry_named_twice_is_refused() {
    // Readers disagree on which of two entries of one name wins: torch's miniz takes the
    // first, Python's zipfile the last. Refused, naming it, whatever the folder's name.
    for folder in ["archive", "m", "a_much_longer_folder_name.v2"] {
        let tensor = tensor_pickle();
        let zip = ZipBuilder::new(folder)
            .add("data.pkl", &tensor)
            .add("data/0", &floats())
            .add("version", b"3\n")
            .add("data/0", &floats())
            .finish();
        let e = err(zip);
        assert!(
            e.contains(&format!(
                "entry '{folder}/data/0' appears twice in the central directory"
            )),
            "{e}"
        );
        // The same entries once each load.
        let zip = ZipBuilder::new(folder)
            .add("data.pkl", &tensor)
            .add("data/0", &floats())
            .add("version", b"3\n")
            .finish();
        ptload::load_bytes(zip).unwrap();
    }
}

#[test]
fn the_directory_is_taken_from_its_source_once_not_header_by_header() {
    let bytes = std::fs::read("examples/tiny_convnet.pt").unwrap();
    let eocd = bytes.len() - 22;
    assert_eq!(bytes[eocd..eocd + 4], *b"PK\x05\x06");
    let field = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as u64;
    let (cd_size, cd_offset) = (field(eocd + 12), field(eocd + 16));
    let source = CountingMap::in_memory(bytes.clone());
    let directory = ptload::archive::ZipDirectory::parse(&source).unwrap();
    assert_eq!(
        directory.records(),
        ptload::archive::ZipDirectory::parse(&bytes[..])
            .unwrap()
            .records()
    );
    // Every central header is read from the one borrow of the whole directory.
    let inside: Vec<(u64, u64)> = source
        .borrowed
        .borrow()
        .iter()
        .copied()
        .filter(|&(offset, _)| (cd_offset..cd_offset + cd_size).contains(&offset))
        .collect();
    assert_eq!(inside, [(cd_offset, cd_size)]);
}
