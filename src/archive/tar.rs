//! The tar container of torch ≤ 0.1 (spec §4.3): where each member's bytes lie.
//!
//! POSIX tar (ustar), 512-byte blocks. Header fields used (offsets in the block):
//!
//! | field | offset | size | note |
//! |---|---|---|---|
//! | name | 0 | 100 | NUL-terminated |
//! | size | 124 | 12 | octal text, or base-256 when the first byte has 0x80 |
//! | chksum | 148 | 8 | octal sum of the header with this field as spaces |
//! | typeflag | 156 | 1 | `0`/NUL file, `x` PAX header for the next member, `g` global PAX, `L` GNU long name |
//! | magic | 257 | 6 | `ustar` |
//! | prefix | 345 | 155 | ustar name prefix |
//!
//! Members are found by name; torch writes `sys_info`, `pickle`, `tensors`, `storages`.

use std::collections::HashMap;
use std::ops::Range;

use crate::error::{Error, Result};

const BLOCK: usize = 512;

fn tar_error(offset: usize, message: impl Into<String>) -> Error {
    Error::new(crate::ErrorKind::NotACheckpoint {
        reason: format!("tar archive, byte 0x{offset:X}: {}", message.into()),
    })
}

fn field_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn octal(bytes: &[u8], at: usize, what: &str) -> Result<u64> {
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        // base-256: big-endian two's complement in the remaining bytes.
        let mut v: u64 = 0;
        for &b in &bytes[1..] {
            // checked_mul, not checked_shl: a shift loses high bits without failing.
            v = v
                .checked_mul(256)
                .ok_or_else(|| tar_error(at, format!("{what} overflows")))?
                | b as u64;
        }
        return Ok(v);
    }
    let text: String = bytes
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8)
        .map_err(|_| tar_error(at, format!("{what} is not octal: {text:?}")))
}

/// The members of a tar archive: name → byte range of the content.
pub fn members(data: &[u8]) -> Result<HashMap<String, Range<usize>>> {
    let mut out = HashMap::new();
    let mut pos = 0usize;
    let mut pax_name: Option<String> = None;
    let mut pax_size: Option<u64> = None;
    let mut long_name: Option<String> = None;
    loop {
        let Some(header) = data.get(pos..pos + BLOCK) else {
            return Err(tar_error(
                pos,
                "truncated: the archive ends inside a header (no end-of-archive blocks)",
            ));
        };
        if header.iter().all(|&b| b == 0) {
            return Ok(out);
        }
        let stored = octal(&header[148..156], pos, "checksum")?;
        let sum: u64 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    b' ' as u64
                } else {
                    b as u64
                }
            })
            .sum();
        if stored != sum {
            return Err(tar_error(
                pos,
                format!("header checksum {stored} does not match {sum}"),
            ));
        }
        let mut size = octal(&header[124..136], pos, "size")?;
        if let Some(s) = pax_size.take() {
            size = s;
        }
        let start = pos + BLOCK;
        let end = (start as u64)
            .checked_add(size)
            .filter(|&e| e <= data.len() as u64)
            .ok_or_else(|| {
                tar_error(
                    pos,
                    format!("member of {size} bytes runs past the end of the file"),
                )
            })? as usize;
        let typeflag = header[156];
        let mut name = field_str(&header[0..100]);
        if &header[257..262] == b"ustar" {
            let prefix = field_str(&header[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        match typeflag {
            b'x' => {
                for (key, value) in pax_records(&data[start..end]) {
                    match key {
                        "path" => pax_name = Some(value.to_owned()),
                        "size" => pax_size = value.parse().ok(),
                        _ => {}
                    }
                }
            }
            b'L' => long_name = Some(field_str(&data[start..end])),
            b'0' | 0 | b'7' => {
                let name = pax_name.take().or(long_name.take()).unwrap_or(name);
                out.insert(name, start..end);
            }
            _ => {
                pax_name = None;
                long_name = None;
            }
        }
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        pos = start
            .checked_add(padded as usize)
            .ok_or_else(|| tar_error(pos, "member size overflows"))?;
    }
}

/// `LEN key=value\n` records of a PAX extended header.
fn pax_records(mut body: &[u8]) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let Some(space) = body.iter().position(|&b| b == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&body[..space])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if len <= space + 1 || len > body.len() {
            break;
        }
        let record = &body[space + 1..len - 1];
        if let Ok(text) = std::str::from_utf8(record) {
            if let Some((k, v)) = text.split_once('=') {
                out.push((k, v));
            }
        }
        body = &body[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: usize, flag: u8) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{size:011o}\0");
        h[124..136].copy_from_slice(size.as_bytes());
        h[156] = flag;
        h[257..263].copy_from_slice(b"ustar\0");
        resum(&mut h);
        h
    }

    #[test]
    fn finds_members_and_pax_names() {
        let mut data = header("a", 3, b'0');
        data.extend_from_slice(b"abc");
        data.resize(2 * BLOCK, 0);
        let pax = b"17 path=longname\n";
        data.extend(header("PaxHeader", pax.len(), b'x'));
        data.extend_from_slice(pax);
        data.resize(4 * BLOCK, 0);
        data.extend(header("short", 1, b'0'));
        data.push(b'z');
        data.resize(6 * BLOCK + 2 * BLOCK, 0);
        let m = members(&data).unwrap();
        assert_eq!(&data[m["a"].clone()], b"abc");
        assert_eq!(&data[m["longname"].clone()], b"z");
    }

    /// Appends a member: its header, `body`, padding to the block.
    fn member(data: &mut Vec<u8>, h: Vec<u8>, body: &[u8]) {
        data.extend(h);
        data.extend_from_slice(body);
        data.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
    }

    /// Recomputes a header's checksum after an edit.
    fn resum(h: &mut [u8]) {
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    #[test]
    fn long_names_prefixes_and_pax_sizes() {
        let mut data = Vec::new();
        // GNU long name for the next member.
        member(&mut data, header("././@LongLink", 9, b'L'), b"gnu/long\0");
        member(&mut data, header("short1", 2, b'0'), b"g1");
        // ustar prefix.
        let mut h = header("name", 2, b'0');
        h[345..351].copy_from_slice(b"folder");
        resum(&mut h);
        member(&mut data, h, b"p1");
        // The same prefix bytes without the ustar magic (a v7 header): no prefix.
        let mut h = header("v7name", 2, b'0');
        h[257..263].fill(0);
        h[345..351].copy_from_slice(b"folder");
        resum(&mut h);
        member(&mut data, h, b"v7");
        // PAX: two records, a path and a size that overrides the header's (0 here).
        let pax = b"16 path=paxname\n10 size=3\n";
        member(&mut data, header("PaxHeader", pax.len(), b'x'), pax);
        member(&mut data, header("short2", 0, b'0'), b"pax");
        data.resize(data.len() + 2 * BLOCK, 0);
        let m = members(&data).unwrap();
        assert_eq!(&data[m["gnu/long"].clone()], b"g1");
        assert_eq!(&data[m["folder/name"].clone()], b"p1");
        assert_eq!(&data[m["v7name"].clone()], b"v7");
        assert_eq!(&data[m["paxname"].clone()], b"pax");
        assert_eq!(m.len(), 4, "{m:?}");
    }

    #[test]
    fn base_256_sizes() {
        let mut h = header("big", 0, b'0');
        h[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x02]);
        resum(&mut h);
        let mut data = Vec::new();
        member(&mut data, h, &[7u8; 0x102]);
        data.resize(data.len() + 2 * BLOCK, 0);
        assert_eq!(members(&data).unwrap()["big"], BLOCK..BLOCK + 0x102);
        // Past 64 bits.
        let mut h = header("big", 0, b'0');
        h[124..136].copy_from_slice(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        resum(&mut h);
        assert!(members(&h)
            .unwrap_err()
            .to_string()
            .contains("size overflows"));
    }

    #[test]
    fn malformed_pax_records_are_skipped() {
        // Lengths too short for their own prefix, or past the header's end: the rest is
        // ignored; records before them count.
        assert_eq!(pax_records(b"2 ab"), vec![]);
        assert_eq!(pax_records(b"1 "), vec![]);
        assert_eq!(pax_records(b"99 path=x\n"), vec![]);
        assert_eq!(
            pax_records(b"12 path=abc\n30 size=1\n"),
            vec![("path", "abc")]
        );
        assert_eq!(
            pax_records(b"12 path=abc\n10 size=7\n"),
            vec![("path", "abc"), ("size", "7")]
        );
    }

    #[test]
    fn bad_checksum_and_truncation() {
        let mut data = header("a", 3, b'0');
        data[0] = b'b';
        data.resize(4 * BLOCK, 0);
        assert!(members(&data).unwrap_err().to_string().contains("checksum"));
        let data = header("a", 3000, b'0');
        assert!(members(&data)
            .unwrap_err()
            .to_string()
            .contains("runs past the end"));
    }
}
