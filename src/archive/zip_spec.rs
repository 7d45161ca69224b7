//! Zip record layouts (PKWARE APPNOTE 6.3.x), little-endian, each with its magic: plain parsing,
//! no policy. Decisions about what to trust live in `zip.rs`.
//!
//! | record | APPNOTE | magic | fixed size |
//! |---|---|---|---|
//! | local file header | 4.3.7 | `PK\3\4` | 30 |
//! | central directory header | 4.3.12 | `PK\1\2` | 46 |
//! | end of central directory (EOCD) | 4.3.16 | `PK\5\6` | 22 |
//! | zip64 EOCD locator | 4.3.15 | `PK\6\7` | 20 |
//! | zip64 EOCD | 4.3.14 | `PK\6\6` | 56 |
//! | zip64 extended information extra field | 4.5.3 | id `0x0001` | — |

use crate::error::{Error, Result};
use crate::source::ByteSource;

/// Magic of a local file header.
pub const LOCAL_HEADER_MAGIC: u32 = 0x0403_4b50;
/// Magic of a central directory header.
pub const CENTRAL_HEADER_MAGIC: u32 = 0x0201_4b50;
/// Magic of the end-of-central-directory record.
pub const EOCD_MAGIC: u32 = 0x0605_4b50;
/// Magic of the zip64 EOCD locator.
pub const EOCD64_LOCATOR_MAGIC: u32 = 0x0706_4b50;
/// Magic of the zip64 EOCD record.
pub const EOCD64_MAGIC: u32 = 0x0606_4b50;

/// Reads little-endian fields from a fixed slice.
struct Fields<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn u16(&mut self) -> u16 {
        let v = u16::from_le_bytes([self.bytes[self.pos], self.bytes[self.pos + 1]]);
        self.pos += 2;
        v
    }
    fn u32(&mut self) -> u32 {
        let b = &self.bytes[self.pos..self.pos + 4];
        self.pos += 4;
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn u64(&mut self) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.bytes[self.pos..self.pos + 8]);
        self.pos += 8;
        u64::from_le_bytes(a)
    }
}

/// `size` bytes at `offset` of `data`, or an error naming what was expected there.
fn fixed<'a>(
    data: &'a (impl ByteSource + ?Sized),
    offset: u64,
    size: usize,
    what: &str,
) -> Result<Fields<'a>> {
    match offset.checked_add(size as u64) {
        Some(end) if end <= data.len() => Ok(Fields {
            bytes: data.get(offset, size as u64)?,
            pos: 0,
        }),
        _ => Err(Error::zip(
            offset,
            format!(
                "{what} ({size} bytes) lies past the end of the file ({} bytes)",
                data.len()
            ),
        )),
    }
}

fn magic(f: &mut Fields<'_>, expected: u32, offset: u64, what: &str) -> Result<()> {
    let found = f.u32();
    if found != expected {
        return Err(Error::zip(
            offset,
            format!("wrong magic for {what}: expected 0x{expected:08X}, found 0x{found:08X}"),
        ));
    }
    Ok(())
}

/// End of central directory record (APPNOTE 4.3.16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eocd {
    /// Entries in the central directory (all disks).
    pub entries: u16,
    /// Size of the central directory in bytes.
    pub cd_size: u32,
    /// Offset of the central directory.
    pub cd_offset: u32,
}

impl Eocd {
    /// Fixed size of the record (without its comment).
    pub const SIZE: usize = 22;

    /// Parses the record at `offset`.
    pub fn parse(data: &(impl ByteSource + ?Sized), offset: u64) -> Result<Eocd> {
        let mut f = fixed(data, offset, Self::SIZE, "end of central directory")?;
        magic(&mut f, EOCD_MAGIC, offset, "end of central directory")?;
        let disk = f.u16();
        let cd_disk = f.u16();
        let entries_here = f.u16();
        let entries = f.u16();
        let cd_size = f.u32();
        let cd_offset = f.u32();
        let comment_len = f.u16() as u64;
        if offset + Self::SIZE as u64 + comment_len > data.len() {
            return Err(Error::zip(
                offset,
                format!(
                    "the end-of-central-directory comment ({comment_len} bytes) runs past the end of the file"
                ),
            ));
        }
        // One file, one disk: anything else is a split archive (or a forged record that readers
        // would count differently: the zip crate counts this disk's entries, Python all of them).
        if disk != cd_disk || entries_here != entries {
            return Err(Error::zip(
                offset,
                format!(
                    "the end-of-central-directory record describes a split archive (disk {disk}, \
                     directory on disk {cd_disk}, {entries_here} of {entries} entries here); \
                     split archives are not supported"
                ),
            ));
        }
        Ok(Eocd {
            entries,
            cd_size,
            cd_offset,
        })
    }
}

/// Zip64 EOCD locator (APPNOTE 4.3.15): where the zip64 EOCD lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eocd64Locator {
    /// Offset of the zip64 EOCD record.
    pub eocd64_offset: u64,
}

impl Eocd64Locator {
    /// Fixed size of the record.
    pub const SIZE: usize = 20;

    /// Parses the record at `offset`; `Ok(None)` when its magic is absent.
    pub fn parse(data: &(impl ByteSource + ?Sized), offset: u64) -> Result<Option<Eocd64Locator>> {
        let mut f = fixed(data, offset, Self::SIZE, "zip64 locator")?;
        if f.u32() != EOCD64_LOCATOR_MAGIC {
            return Ok(None);
        }
        let _disk = f.u32();
        let eocd64_offset = f.u64();
        Ok(Some(Eocd64Locator { eocd64_offset }))
    }
}

/// Zip64 EOCD record (APPNOTE 4.3.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eocd64 {
    /// Entries in the central directory.
    pub entries: u64,
    /// Size of the central directory.
    pub cd_size: u64,
    /// Offset of the central directory.
    pub cd_offset: u64,
}

impl Eocd64 {
    /// Fixed size of the record.
    pub const SIZE: usize = 56;

    /// Parses the record at `offset`.
    pub fn parse(data: &(impl ByteSource + ?Sized), offset: u64) -> Result<Eocd64> {
        let mut f = fixed(data, offset, Self::SIZE, "zip64 end of central directory")?;
        magic(
            &mut f,
            EOCD64_MAGIC,
            offset,
            "zip64 end of central directory",
        )?;
        let _record_size = f.u64();
        let _made_by = f.u16();
        let _needed = f.u16();
        let _disk = f.u32();
        let _cd_disk = f.u32();
        let _entries_here = f.u64();
        let entries = f.u64();
        let cd_size = f.u64();
        let cd_offset = f.u64();
        Ok(Eocd64 {
            entries,
            cd_size,
            cd_offset,
        })
    }
}

/// Central directory file header (APPNOTE 4.3.12), with sizes merged from the zip64 extra.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CentralHeader<'a> {
    /// General purpose flags.
    pub flags: u16,
    /// Compression method (0 stored, 8 deflate).
    pub method: u16,
    /// CRC-32 of the uncompressed data.
    pub crc32: u32,
    /// Compressed size.
    pub compressed_size: u64,
    /// Uncompressed size.
    pub size: u64,
    /// Offset of the local header.
    pub local_header_offset: u64,
    /// The entry's name (bytes as stored, borrowed from the directory).
    pub name: &'a [u8],
    /// Total length of this header (fixed part + name + extra + comment).
    pub total_len: usize,
}

impl<'a> CentralHeader<'a> {
    /// Fixed size of the header.
    pub const SIZE: usize = 46;

    /// Parses the header at `offset`, applying the zip64 extra field (0x0001) to the fields
    /// that hold all-ones, in APPNOTE order (size, compressed size, header offset).
    pub fn parse(data: &'a (impl ByteSource + ?Sized), offset: u64) -> Result<CentralHeader<'a>> {
        let fixed_part = fixed(data, offset, Self::SIZE, "central directory header")?;
        let var_len = Self::variable_len(fixed_part.bytes, offset)?;
        let var = fixed(
            data,
            offset + Self::SIZE as u64,
            var_len,
            "central directory name and extra",
        )?;
        Self::from_parts(fixed_part.bytes, var.bytes, offset)
    }

    /// [`parse`](Self::parse) of the header at `at` in `directory` (bytes that start at file
    /// offset `base`), when it lies wholly within them and parses; `None` otherwise, and
    /// `parse` on the whole file says why. (The walk of a directory reads each header from the
    /// directory's bytes at hand, without asking the source twice per header.)
    pub fn parse_in(directory: &'a [u8], at: usize, base: u64) -> Option<CentralHeader<'a>> {
        let offset = base.checked_add(at as u64)?;
        let var_at = at.checked_add(Self::SIZE)?;
        let fixed_part = directory.get(at..var_at)?;
        let var_len = Self::variable_len(fixed_part, offset).ok()?;
        let var = directory.get(var_at..var_at.checked_add(var_len)?)?;
        Self::from_parts(fixed_part, var, offset).ok()
    }

    /// Checks the magic of the fixed part; the length of the name, extra and comment after it.
    fn variable_len(fixed_part: &[u8], offset: u64) -> Result<usize> {
        let mut f = Fields {
            bytes: fixed_part,
            pos: 0,
        };
        magic(
            &mut f,
            CENTRAL_HEADER_MAGIC,
            offset,
            "central directory header",
        )?;
        f.pos = 28;
        let name_len = f.u16() as usize;
        let extra_len = f.u16() as usize;
        let comment_len = f.u16() as usize;
        Ok(name_len + extra_len + comment_len)
    }

    /// The header from its fixed part (magic checked) and the variable part after it.
    fn from_parts(fixed_part: &[u8], var: &'a [u8], offset: u64) -> Result<CentralHeader<'a>> {
        let mut f = Fields {
            bytes: fixed_part,
            pos: 4,
        };
        let _made_by = f.u16();
        let _needed = f.u16();
        let flags = f.u16();
        let method = f.u16();
        let _time = f.u16();
        let _date = f.u16();
        let crc32 = f.u32();
        let csize32 = f.u32();
        let size32 = f.u32();
        let name_len = f.u16() as usize;
        let extra_len = f.u16() as usize;
        let _comment_len = f.u16() as usize;
        let _disk = f.u16();
        let _internal = f.u16();
        let _external = f.u32();
        let offset32 = f.u32();
        let var_len = var.len();
        let name = &var[..name_len];
        let extra = &var[name_len..name_len + extra_len];

        let mut header = CentralHeader {
            flags,
            method,
            crc32,
            compressed_size: csize32 as u64,
            size: size32 as u64,
            local_header_offset: offset32 as u64,
            name,
            total_len: Self::SIZE + var_len,
        };
        let needs64 = size32 == u32::MAX || csize32 == u32::MAX || offset32 == u32::MAX;
        if needs64 {
            let Some(field) = extra_fields(extra)
                .find(|(id, _)| *id == 0x0001)
                .map(|(_, d)| d)
            else {
                return Err(Error::zip(
                    offset,
                    "a size or offset is 0xFFFFFFFF but the zip64 extra field is missing",
                ));
            };
            let mut pos = 0;
            let mut next = |what: &str| -> Result<u64> {
                let b = field.get(pos..pos + 8).ok_or_else(|| {
                    Error::zip(
                        offset,
                        format!("zip64 extra field too short for the {what}"),
                    )
                })?;
                pos += 8;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Ok(u64::from_le_bytes(a))
            };
            if size32 == u32::MAX {
                header.size = next("uncompressed size")?;
            }
            if csize32 == u32::MAX {
                header.compressed_size = next("compressed size")?;
            }
            if offset32 == u32::MAX {
                header.local_header_offset = next("local header offset")?;
            }
        }
        Ok(header)
    }
}

/// Iterates `(id, payload)` over an extra field; stops at the first malformed block.
pub fn extra_fields(mut extra: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if extra.len() < 4 {
            return None;
        }
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let len = u16::from_le_bytes([extra[2], extra[3]]) as usize;
        let payload = extra.get(4..4 + len)?;
        extra = &extra[4 + len..];
        Some((id, payload))
    })
}

/// Local file header (APPNOTE 4.3.7). Only the lengths matter: sizes live in the central
/// directory (torch writes zeros here and puts them in a data descriptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalHeader {
    /// Length of the name.
    pub name_len: u16,
    /// Length of the extra field (torch's `FB` alignment padding lives here).
    pub extra_len: u16,
}

impl LocalHeader {
    /// Fixed size of the header.
    pub const SIZE: usize = 30;

    /// Parses the header at `offset`; with `read`, the header is read
    /// ([`ByteSource::read_small`]), not borrowed: headers far apart in a mapped file would
    /// each fault a page in (and map the pages around it).
    pub fn parse(
        data: &(impl ByteSource + ?Sized),
        offset: u64,
        read: bool,
    ) -> Result<LocalHeader> {
        let mut head = [0u8; Self::SIZE];
        let fits = offset
            .checked_add(Self::SIZE as u64)
            .is_some_and(|end| end <= data.len());
        let f = if read && fits {
            data.read_small(offset, &mut head)?;
            Fields {
                bytes: &head,
                pos: 0,
            }
        } else {
            fixed(data, offset, Self::SIZE, "local file header")?
        };
        Self::from_fields(f, offset)
    }

    /// Parses the header at `offset` from its bytes, read beforehand.
    pub fn from_bytes(head: &[u8; Self::SIZE], offset: u64) -> Result<LocalHeader> {
        Self::from_fields(
            Fields {
                bytes: head,
                pos: 0,
            },
            offset,
        )
    }

    fn from_fields(mut f: Fields<'_>, offset: u64) -> Result<LocalHeader> {
        magic(&mut f, LOCAL_HEADER_MAGIC, offset, "local file header")?;
        f.pos = 26;
        let name_len = f.u16();
        let extra_len = f.u16();
        Ok(LocalHeader {
            name_len,
            extra_len,
        })
    }

    /// Offset of the entry's data, given the header's own offset.
    pub fn data_offset(&self, header_offset: u64) -> u64 {
        header_offset + Self::SIZE as u64 + self.name_len as u64 + self.extra_len as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_magic_is_named() {
        let err = LocalHeader::parse(&[0u8; 40][..], 4, false).unwrap_err();
        let read = LocalHeader::parse(&[0u8; 40][..], 4, true).unwrap_err();
        let from_bytes = LocalHeader::from_bytes(&[0u8; 30], 4).unwrap_err();
        assert_eq!(read.to_string(), err.to_string());
        assert_eq!(from_bytes.to_string(), err.to_string());
        assert_eq!(
            err.to_string(),
            "zip container, byte 0x4: wrong magic for local file header: expected 0x04034B50, found 0x00000000"
        );
    }

    #[test]
    fn from_bytes_reads_the_lengths() {
        let mut head = [0u8; 30];
        head[..4].copy_from_slice(&LOCAL_HEADER_MAGIC.to_le_bytes());
        head[26..28].copy_from_slice(&12u16.to_le_bytes());
        head[28..30].copy_from_slice(&52u16.to_le_bytes());
        let header = LocalHeader::from_bytes(&head, 100).unwrap();
        assert_eq!((header.name_len, header.extra_len), (12, 52));
        assert_eq!(header.data_offset(100), 100 + 30 + 12 + 52);
        let mut data = vec![0u8; 100];
        data.extend_from_slice(&head);
        assert_eq!(LocalHeader::parse(&data[..], 100, true).unwrap(), header);
    }

    #[test]
    fn short_data_is_an_error() {
        let err = Eocd::parse(&[0u8; 10][..], 0).unwrap_err();
        assert!(
            err.to_string().contains("past the end of the file"),
            "{err}"
        );
    }

    /// A central header for `name` (with `extra` and a 3-byte comment), sizes and offset as
    /// given.
    fn central(name: &[u8], extra: &[u8], sizes: [u32; 3]) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&CENTRAL_HEADER_MAGIC.to_le_bytes());
        h.extend_from_slice(&[20, 0, 20, 0, 8, 0, 0, 0, 1, 2, 3, 4]); // made by, needed, flags, method, time, date
        h.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes()); // crc
        h.extend_from_slice(&sizes[0].to_le_bytes()); // compressed
        h.extend_from_slice(&sizes[1].to_le_bytes()); // size
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        h.extend_from_slice(&3u16.to_le_bytes());
        h.extend_from_slice(&[0; 8]); // disk, internal, external
        h.extend_from_slice(&sizes[2].to_le_bytes()); // local header offset
        h.extend_from_slice(name);
        h.extend_from_slice(extra);
        h.extend_from_slice(b"abc");
        h
    }

    #[test]
    fn a_header_parsed_in_the_directory_is_the_header_parsed_from_the_file() {
        let zip64: Vec<u8> = [1u16.to_le_bytes(), 16u16.to_le_bytes()]
            .concat()
            .into_iter()
            .chain(7u64.to_le_bytes())
            .chain(9u64.to_le_bytes())
            .collect();
        let first = central(b"archive/data.pkl", &[], [10, 12, 0]);
        let second = central(b"archive/data/0", &zip64, [u32::MAX, u32::MAX, 64]);
        let base = 1000u64;
        let mut file = vec![0u8; base as usize];
        file.extend_from_slice(&first);
        file.extend_from_slice(&second);
        let directory = &file[base as usize..];
        for (at, len) in [(0, first.len()), (first.len(), second.len())] {
            let inside = CentralHeader::parse_in(directory, at, base).unwrap();
            let parsed = CentralHeader::parse(&file[..], base + at as u64).unwrap();
            assert_eq!(inside, parsed);
            assert_eq!(inside.total_len, len);
        }
        let second = CentralHeader::parse_in(directory, first.len(), base).unwrap();
        assert_eq!((second.compressed_size, second.size), (9, 7));
        assert_eq!(
            (second.local_header_offset, second.crc32),
            (64, 0xDEAD_BEEF)
        );
        assert_eq!((second.flags, second.method), (8, 0));
        assert_eq!(second.name, b"archive/data/0");
        // A header running one byte past the directory's bytes (its comment, or its fixed
        // part) is not parsed there.
        let short = &directory[..directory.len() - 1];
        assert!(CentralHeader::parse_in(short, first.len(), base).is_none());
        assert!(CentralHeader::parse_in(directory, directory.len() - 45, base).is_none());
        assert!(CentralHeader::parse_in(directory, directory.len(), base).is_none());
        // Nor is one that fails to parse: the file says why.
        let mut broken = file.clone();
        broken[base as usize] = b'Q';
        assert!(CentralHeader::parse_in(&broken[base as usize..], 0, base).is_none());
        let why = CentralHeader::parse(&broken[..], base).unwrap_err();
        assert!(why.to_string().contains("byte 0x3E8: wrong magic"), "{why}");
        let no_zip64 = central(b"archive/data/1", &[], [u32::MAX, 4, 0]);
        assert!(CentralHeader::parse_in(&no_zip64, 0, 0).is_none());
        assert!(CentralHeader::parse(&no_zip64[..], 0).is_err());
    }

    #[test]
    fn extra_fields_iterate() {
        let extra = [1, 0, 2, 0, 9, 9, 0x46, 0x42, 0, 0];
        let v: Vec<_> = extra_fields(&extra).collect();
        assert_eq!(v, vec![(1u16, &[9u8, 9][..]), (0x4246, &[][..])]);
    }
}
