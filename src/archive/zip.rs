//! torch's zip container (spec §2): which records exist, where each one's bytes lie, and the
//! rules torch applies to them.
//!
//! Policy, on top of the layouts in `zip_spec.rs`:
//! - the central directory is authoritative (torch's local headers carry no sizes);
//! - zip64 is a merge step: the zip64 EOCD (found through its locator) replaces the classic
//!   record when present, and the entry fields that hold all-ones are replaced from each
//!   entry's 0x0001 extra field;
//! - the data offset of every entry comes from its own local header (name and extra lengths),
//!   as torch's `get_record_offset` does;
//! - the folder is the text of entry #0's name before its first `/`, and every entry must be
//!   under it (torch's `get_all_records`);
//! - CRCs are never required (torch ignores them: `set_crc32_options(False)` writes zeros);
//! - an entry count larger than the directory can hold is refused before anything is allocated.

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::io::Read;

use super::zip_spec::{CentralHeader, Eocd, Eocd64, Eocd64Locator, LocalHeader, EOCD_MAGIC};
use super::{ByteOrder, Record, RecordName};
use crate::error::{Error, ErrorKind, Result};
use crate::source::{ByteSource, Preloaded};

/// The most a deflate stream can expand its input (RFC 1951: a 258-byte match costs at least
/// 2 bits).
const MAX_DEFLATE_RATIO: u64 = 1032;

/// The average spacing of entries from which their local headers are read rather than
/// borrowed ([`ByteSource::read_small`]).
const LOCAL_HEADERS_READ_FROM_SPACING: u64 = 64 << 10;

/// How many tensor records' local headers are worth a trip to the helper thread
/// ([`ZipDirectory::parse_deferring`]): fewer are read in place, in a few microseconds.
#[cfg_attr(not(all(unix, feature = "mmap")), allow(dead_code))]
const MIN_DEFERRED: usize = 32;

/// The largest central directory read into memory rather than borrowed from a mapped file
/// ([`Preloaded`]): a read of 4 MiB costs about what faulting it in does.
const MAX_DIRECTORY_READ: u64 = 4 << 20;

/// A record's data offset before its local header is read.
const NOT_LOCATED: u64 = u64::MAX;

/// Compression methods torch's reader accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Method 0: the bytes as they are.
    Stored,
    /// Method 8: raw deflate.
    Deflated,
}

/// The central directory of a torch zip file, with records named relative to its folder.
#[derive(Debug)]
pub struct ZipDirectory {
    /// The archive folder (`archive`, `model.v1`, …).
    pub prefix: String,
    records: Vec<Record>,
    /// Every record's name, one after another (the records' names are slices of it).
    names: std::sync::Arc<str>,
    /// Indices into `records`, found by the name relative to the folder (a slice of the
    /// record's own name: no second copy of any name).
    by_name: hashbrown::HashTable<usize>,
    hasher: foldhash::fast::RandomState,
}

/// Tensor records whose local headers are read on a helper thread while the caller goes on
/// (from [`ZipDirectory::parse_deferring`]); [`ZipDirectory::finish`] fills in their data
/// offsets.
#[derive(Debug, Default)]
#[must_use = "the deferred records have no data offset until `ZipDirectory::finish`"]
pub struct DeferredHeaders {
    /// In directory order.
    entries: Vec<Deferred>,
    #[cfg(all(unix, feature = "mmap"))]
    reads: Option<crate::read_ahead::ReadAhead<{ LocalHeader::SIZE }>>,
}

#[derive(Debug)]
struct Deferred {
    /// Index in the directory's records.
    record: usize,
    local_header_offset: u64,
    stored_len: u64,
    /// Where its name lies in the directory's names.
    name: std::ops::Range<usize>,
}

impl DeferredHeaders {
    /// Whether any record waits for its local header.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the headers are being read on the helper thread (rather than when
    /// [`ZipDirectory::finish`] comes).
    pub fn is_reading_ahead(&self) -> bool {
        #[cfg(all(unix, feature = "mmap"))]
        return self.reads.is_some();
        #[cfg(not(all(unix, feature = "mmap")))]
        false
    }

    /// Starts reading the headers on the helper thread, or reads them now into `records` when
    /// they are few or `data` has no helper.
    fn start(
        &mut self,
        records: &mut [Record],
        names: &str,
        data: &(impl ByteSource + ?Sized),
    ) -> Result<()> {
        #[cfg(all(unix, feature = "mmap"))]
        if self.entries.len() >= MIN_DEFERRED {
            let offsets = self.entries.iter().map(|e| e.local_header_offset).collect();
            self.reads = data.read_small_ahead(offsets);
            if self.reads.is_some() {
                return Ok(());
            }
        }
        std::mem::take(self).resolve(records, names, data)
    }

    /// Locates every deferred record, with the headers read ahead where there are some: the
    /// first error in directory order, as if each had been read in turn.
    fn resolve(
        self,
        records: &mut [Record],
        names: &str,
        data: &(impl ByteSource + ?Sized),
    ) -> Result<()> {
        #[cfg(all(unix, feature = "mmap"))]
        let read = self.reads.map(|reads| reads.wait());
        #[cfg(not(all(unix, feature = "mmap")))]
        let read: Option<Vec<Option<[u8; LocalHeader::SIZE]>>> = None;
        for (i, entry) in self.entries.iter().enumerate() {
            let head = read.as_ref().and_then(|r| r.get(i)?.as_ref());
            let data_offset = locate(
                data,
                entry.local_header_offset,
                entry.stored_len,
                names.get(entry.name.clone()).unwrap_or_default(),
                head,
            )?;
            if let Some(record) = records.get_mut(entry.record) {
                record.data_offset = data_offset;
            }
        }
        Ok(())
    }
}

/// The data offset of the entry whose local header lies at `local_header_offset`, read from
/// `head` when it was read beforehand (else read, not borrowed: headers worth deferring lie far
/// apart), checked to leave room for its `stored_len` bytes.
fn locate(
    data: &(impl ByteSource + ?Sized),
    local_header_offset: u64,
    stored_len: u64,
    name: &str,
    head: Option<&[u8; LocalHeader::SIZE]>,
) -> Result<u64> {
    let local = match head {
        Some(head) => LocalHeader::from_bytes(head, local_header_offset)?,
        None => LocalHeader::parse(data, local_header_offset, true)?,
    };
    within_file(
        data,
        local_header_offset,
        local.data_offset(local_header_offset),
        stored_len,
        name,
    )
}

/// `data_offset`, unless `stored_len` bytes from it run past the end of the file.
fn within_file(
    data: &(impl ByteSource + ?Sized),
    local_header_offset: u64,
    data_offset: u64,
    stored_len: u64,
    name: &str,
) -> Result<u64> {
    let data_end = data_offset.checked_add(stored_len);
    if data_end.is_none_or(|end| end > data.len()) {
        return Err(Error::zip(
            local_header_offset,
            format!(
                "entry '{name}': {stored_len} bytes of data at offset {data_offset} run past the end of the file ({} bytes)",
                data.len()
            ),
        ));
    }
    Ok(data_offset)
}

/// Whether a record (named relative to the folder) holds a tensor's storage: `data/…`, and
/// TorchScript's `constants/…`.
fn is_storage_record(relative: &str) -> bool {
    relative.starts_with("data/") || relative.starts_with("constants/")
}

/// The name of `record` relative to a folder of `prefix_len` bytes (and its `/`).
fn relative_name(record: &Record, prefix_len: usize) -> &str {
    record.name.get(prefix_len + 1..).unwrap_or_default()
}

/// A record as the directory walk finds it, before the names it was read with are shared.
struct Walked {
    /// Where its name lies in the names read so far.
    name: std::ops::Range<usize>,
    data_offset: u64,
    stored_len: u64,
    size: u64,
    method: Method,
}

impl Walked {
    /// [`relative_name`] of the record, while its name is still a range of `names`.
    fn relative_name<'n>(&self, names: &'n str, prefix_len: usize) -> &'n str {
        names
            .get(self.name.start + prefix_len + 1..self.name.end)
            .unwrap_or_default()
    }
}

impl ZipDirectory {
    /// Reads the directory of the zip file `data`.
    pub fn parse(data: &(impl ByteSource + ?Sized)) -> Result<ZipDirectory> {
        let (mut directory, deferred) = Self::parse_with(data, false)?;
        directory.finish(data, deferred)?;
        Ok(directory)
    }

    /// [`parse`](Self::parse), except that in a file of big tensors (records far apart) whose
    /// source can read on a helper thread ([`ByteSource::read_small_ahead`]), the local headers
    /// of the storage records (`data/…`, `constants/…`) are read there while the caller goes
    /// on (parsing the pickle): those records have no data offset until
    /// [`finish`](Self::finish). Every other record is ready. An error in the directory comes
    /// after any error of a deferred header before it, as with `parse`.
    pub fn parse_deferring(
        data: &(impl ByteSource + ?Sized),
    ) -> Result<(ZipDirectory, DeferredHeaders)> {
        Self::parse_with(data, true)
    }

    /// Fills in the data offsets of the records `deferred` left, checking each as
    /// [`parse`](Self::parse) does; the first error in directory order.
    pub fn finish(
        &mut self,
        data: &(impl ByteSource + ?Sized),
        deferred: DeferredHeaders,
    ) -> Result<()> {
        deferred.resolve(&mut self.records, &self.names, data)
    }

    // Not inlined, so that its callers stay small (see `pickle::machine::Machine::rare_opcode`).
    #[inline(never)]
    fn parse_with(
        data: &(impl ByteSource + ?Sized),
        defer: bool,
    ) -> Result<(ZipDirectory, DeferredHeaders)> {
        if data.reads_ahead() {
            // A mapped file: the end records and the directory are read (two reads), not
            // faulted in.
            let mut window = Preloaded::new(data);
            let end_len = (Eocd::SIZE + Eocd64Locator::SIZE + Eocd64::SIZE) as u64;
            let len = data.len();
            window.read(len.saturating_sub(end_len), len.min(end_len), end_len);
            let end = end_records(&window)?;
            window.read(end.cd_offset, end.cd_size, MAX_DIRECTORY_READ);
            return Self::walk(&window, end, defer);
        }
        Self::walk(data, end_records(data)?, defer)
    }

    /// The directory the end records `end` of `data` describe.
    fn walk(
        data: &(impl ByteSource + ?Sized),
        end: EndRecords,
        defer: bool,
    ) -> Result<(ZipDirectory, DeferredHeaders)> {
        let EndRecords {
            eocd_offset,
            entries,
            cd_size,
            cd_offset,
        } = end;
        let cd_end = cd_offset.checked_add(cd_size);
        if cd_end.is_none_or(|end| end > data.len()) {
            return Err(Error::zip(
                eocd_offset,
                format!(
                    "central directory (offset {cd_offset}, {cd_size} bytes) lies outside the file ({} bytes)",
                    data.len()
                ),
            ));
        }
        if entries > cd_size / CentralHeader::SIZE as u64 {
            return Err(Error::zip(
                eocd_offset,
                format!("{entries} entries cannot fit in a central directory of {cd_size} bytes"),
            ));
        }
        if entries == 0 {
            return Err(Error::zip(eocd_offset, "the archive has no entries"));
        }

        // The whole directory at once (a partial source loads it in one round).
        let directory = data.get(cd_offset, cd_size)?;
        let mut walked: Vec<Walked> = Vec::with_capacity(entries as usize);
        let mut missing = Vec::new();
        let mut by_name = hashbrown::HashTable::with_capacity(entries as usize);
        let hasher = foldhash::fast::RandomState::default();
        let mut prefix: Option<String> = None;
        // The names, one after another, in one allocation: a record's name is a slice of it
        // (`RecordName`), made once the walk is done.
        let mut names = String::with_capacity(cd_size.min(MAX_DIRECTORY_READ) as usize);
        let mut pos = cd_offset;
        // Local headers more than a page fault's reach apart (Linux maps 64 KiB around each
        // fault) are read, not borrowed from a mapping: a file of big tensors would otherwise
        // fault once per tensor.
        let far_apart = data.len() / entries >= LOCAL_HEADERS_READ_FROM_SPACING;
        let defer = defer && far_apart && data.reads_ahead();
        let mut deferred = DeferredHeaders::default();
        if defer {
            deferred.entries.reserve(entries as usize);
        }
        // A partial source: an error found past a missing local header waits until that header
        // is loaded, so that the error reported is the first one, as with the whole file.
        let mut walk = || -> Result<()> {
            for _ in 0..entries {
                // From the directory's bytes at hand; a header that runs past them (or fails)
                // is parsed from the file, which reports as ever.
                let header = match usize::try_from(pos - cd_offset)
                    .ok()
                    .and_then(|at| CentralHeader::parse_in(directory, at, cd_offset))
                {
                    Some(header) => header,
                    None => CentralHeader::parse(data, pos)?,
                };
                let header_offset = pos;
                pos += header.total_len as u64;
                // UTF-8 checked first: the lossy conversion is several times slower.
                let start = names.len();
                match crate::pickle::encoding::utf8(header.name) {
                    Some(name) => names.push_str(name),
                    None => names.push_str(&String::from_utf8_lossy(header.name)),
                };
                let name = &names[start..];
                let prefix = prefix.get_or_insert_with(|| {
                    name.split_once('/')
                        .map(|(p, _)| p.to_owned())
                        .unwrap_or_default()
                });
                if prefix.is_empty() {
                    return Err(Error::zip(
                        header_offset,
                        format!("file in archive is not in a subdirectory: {name}"),
                    ));
                }
                let Some(relative) = name
                    .strip_prefix(prefix.as_str())
                    .and_then(|r| r.strip_prefix('/'))
                else {
                    return Err(Error::zip(
                        header_offset,
                        format!("file in archive is not in a subdirectory {prefix}/: {name}"),
                    ));
                };
                let method = match header.method {
                0 => Method::Stored,
                8 => Method::Deflated,
                m => {
                    return Err(Error::zip(
                        header_offset,
                        format!("entry '{name}' uses compression method {m}; only stored (0) and deflate (8) are supported"),
                    ))
                }
            };
                if method == Method::Stored && header.compressed_size != header.size {
                    return Err(Error::zip(
                        header_offset,
                        format!(
                            "stored entry '{name}' has compressed size {} but size {}",
                            header.compressed_size, header.size
                        ),
                    ));
                }
                let data_offset = if defer && is_storage_record(relative) {
                    deferred.entries.push(Deferred {
                        record: walked.len(),
                        local_header_offset: header.local_header_offset,
                        stored_len: header.compressed_size,
                        name: start..names.len(),
                    });
                    NOT_LOCATED
                } else {
                    // Local headers are needed for their lengths only; collect the missing ones
                    // so that a partial source loads them all in one round.
                    let local =
                        match LocalHeader::parse(data, header.local_header_offset, far_apart) {
                            Ok(local) => local,
                            Err(e) => match e.kind() {
                                ErrorKind::NeedBytes { ranges } => {
                                    missing.extend_from_slice(ranges);
                                    continue;
                                }
                                _ => return Err(e),
                            },
                        };
                    within_file(
                        data,
                        header.local_header_offset,
                        local.data_offset(header.local_header_offset),
                        header.compressed_size,
                        name,
                    )?
                };
                // Two entries under one name are ambiguous (readers differ on which one wins): refused.
                let skip = prefix.len();
                let entry = by_name.entry(
                    hasher.hash_one(relative),
                    |&i: &usize| walked[i].relative_name(&names, skip) == relative,
                    |&i: &usize| hasher.hash_one(walked[i].relative_name(&names, skip)),
                );
                match entry {
                    hashbrown::hash_table::Entry::Occupied(_) => {
                        return Err(Error::zip(
                            header_offset,
                            format!("entry '{name}' appears twice in the central directory"),
                        ))
                    }
                    hashbrown::hash_table::Entry::Vacant(slot) => {
                        slot.insert(walked.len());
                    }
                }
                walked.push(Walked {
                    name: start..names.len(),
                    data_offset,
                    stored_len: header.compressed_size,
                    size: header.size,
                    method,
                });
            }
            Ok(())
        };
        let result = walk();
        let names: std::sync::Arc<str> = names.into();
        let mut records: Vec<Record> = walked
            .into_iter()
            .map(|w| Record {
                name: RecordName {
                    all: names.clone(),
                    start: w.name.start,
                    end: w.name.end,
                },
                data_offset: w.data_offset,
                stored_len: w.stored_len,
                size: w.size,
                method: w.method,
            })
            .collect();
        if let Err(e) = result {
            // A deferred header before the failing entry would have failed first.
            std::mem::take(&mut deferred).resolve(&mut records, &names, data)?;
            if missing.is_empty() || matches!(e.kind(), ErrorKind::NeedBytes { .. }) {
                return Err(e);
            }
        }
        if !missing.is_empty() {
            return Err(Error::new(ErrorKind::NeedBytes { ranges: missing }));
        }
        deferred.start(&mut records, &names, data)?;
        let directory = ZipDirectory {
            prefix: prefix.unwrap_or_default(),
            records,
            names,
            by_name,
            hasher,
        };
        Ok((directory, deferred))
    }

    /// The index in [`records`](Self::records) of the record named `name` relative to the
    /// folder (`data.pkl`, `data/0`), if present.
    fn index(&self, name: &str) -> Option<usize> {
        let skip = self.prefix.len();
        self.by_name
            .find(self.hasher.hash_one(name), |&i| {
                relative_name(&self.records[i], skip) == name
            })
            .copied()
    }

    /// The record named `name` relative to the folder (`data.pkl`, `data/0`), if present.
    pub fn record(&self, name: &str) -> Option<&Record> {
        self.index(name).map(|i| &self.records[i])
    }

    /// The index in [`records`](Self::records) of the record named `name` relative to the
    /// folder, or a [`ErrorKind::MissingRecord`] error.
    pub fn require_index(&self, name: &str) -> Result<usize> {
        self.index(name).ok_or_else(|| {
            Error::new(ErrorKind::MissingRecord {
                name: format!("{}/{name}", self.prefix),
            })
        })
    }

    /// `error` with the data offset of the record it names, when it was made before
    /// [`finish`](Self::finish) located that record (a storage whose size does not match).
    pub fn locate_in_error(&self, error: Error) -> Error {
        let ErrorKind::StorageSize {
            record,
            offset: NOT_LOCATED,
            numel,
            dtype,
            actual,
        } = error.kind()
        else {
            return error;
        };
        let located = record
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .and_then(|r| self.record(r));
        match located {
            Some(found) => Error::new(ErrorKind::StorageSize {
                record: record.clone(),
                offset: found.data_offset,
                numel: *numel,
                dtype: *dtype,
                actual: *actual,
            }),
            None => error,
        }
    }

    /// The record named `name`, or a [`ErrorKind::MissingRecord`] error.
    pub fn require(&self, name: &str) -> Result<&Record> {
        self.require_index(name).map(|i| &self.records[i])
    }

    /// All records, in central-directory order.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The format version from `.data/version` or `version`, checked to be within 1..=10.
    pub fn version(&self, data: &(impl ByteSource + ?Sized), max_bytes: u64) -> Result<u64> {
        let record = match self.record(".data/version") {
            Some(r) => r,
            None => self.require("version")?,
        };
        let bytes = record.read(data, max_bytes)?;
        let digits: String = bytes
            .iter()
            .skip_while(|b| b.is_ascii_whitespace())
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| b as char)
            .collect();
        let version = digits.parse::<u64>().map_err(|_| {
            Error::new(ErrorKind::Record {
                record: record.name.to_string(),
                offset: record.data_offset,
                message: format!(
                    "version record holds {:?}, not a number",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(32)])
                ),
            })
        })?;
        if !(1..=10).contains(&version) {
            return Err(Error::new(ErrorKind::UnsupportedVersion { version }));
        }
        Ok(version)
    }

    /// The byte order from the `byteorder` record; little when it is absent (torch ≥ 2.1.1).
    pub fn byte_order(&self, data: &(impl ByteSource + ?Sized)) -> Result<ByteOrder> {
        let Some(record) = self.record("byteorder") else {
            return Ok(ByteOrder::Little);
        };
        let bytes = record.read(data, 64)?;
        match &bytes[..] {
            b"little" => Ok(ByteOrder::Little),
            b"big" => Ok(ByteOrder::Big),
            other => Err(Error::new(ErrorKind::UnknownByteOrder {
                value: String::from_utf8_lossy(other).into_owned(),
            })),
        }
    }
}

impl Record {
    /// The record's bytes: borrowed when stored, inflated when deflated. Inflation never goes
    /// past the declared size, and a result larger than `max_bytes` is refused before it is
    /// allocated.
    pub fn read<'a>(
        &self,
        data: &'a (impl ByteSource + ?Sized),
        max_bytes: u64,
    ) -> Result<Cow<'a, [u8]>> {
        let raw = data.get(self.data_offset, self.stored_len)?;
        match self.method {
            Method::Stored => Ok(Cow::Borrowed(raw)),
            Method::Deflated => {
                self.check_inflated_size(max_bytes)?;
                let mut out = Vec::with_capacity(self.size.min(1 << 26) as usize);
                let mut decoder = flate2::read::DeflateDecoder::new(raw).take(self.size + 1);
                decoder
                    .read_to_end(&mut out)
                    .map_err(|e| self.error(format!("deflate stream is corrupt: {e}")))?;
                if out.len() as u64 != self.size {
                    return Err(self.error(format!(
                        "deflate stream holds {}{} bytes, but the directory declares {}",
                        if out.len() as u64 > self.size {
                            "more than "
                        } else {
                            ""
                        },
                        out.len().min(self.size as usize),
                        self.size
                    )));
                }
                Ok(Cow::Owned(out))
            }
        }
    }

    /// Refuses a deflated record whose declared size is over `max_bytes` or more than its
    /// compressed bytes can inflate to (deflate cannot expand data more than 1032:1; a larger
    /// claim is corrupt), before anything is allocated for it.
    pub fn check_inflated_size(&self, max_bytes: u64) -> Result<()> {
        if self.method == Method::Stored {
            return Ok(());
        }
        if self.size > max_bytes {
            return Err(Error::limit("max_record_bytes", self.size, max_bytes));
        }
        let most = self
            .stored_len
            .saturating_mul(MAX_DEFLATE_RATIO)
            .saturating_add(64);
        if self.size > most {
            return Err(self.error(format!(
                "declares {} bytes, more than {} compressed bytes can inflate to",
                self.size, self.stored_len
            )));
        }
        Ok(())
    }

    pub(crate) fn error(&self, message: String) -> Error {
        Error::new(ErrorKind::Record {
            record: self.name.to_string(),
            offset: self.data_offset,
            message,
        })
    }
}

/// The names of the first `max` entries, in directory order, without any of torch's rules
/// (to explain why a zip file is not a torch archive).
pub fn entry_names(data: &(impl ByteSource + ?Sized), max: usize) -> Result<Vec<String>> {
    let EndRecords {
        entries,
        cd_size,
        cd_offset,
        ..
    } = end_records(data)?;
    let cd_end = cd_offset.saturating_add(cd_size);
    if cd_end > data.len() {
        return Err(Error::zip(0, "the central directory lies outside the file"));
    }
    // The whole directory at once (a partial source loads it in one round).
    data.get(cd_offset, cd_size)?;
    let mut names = Vec::new();
    let mut pos = cd_offset;
    for _ in 0..entries.min(max as u64) {
        // Only what the directory holds (a partial source would otherwise be asked for
        // header after header past it).
        if pos >= cd_end {
            break;
        }
        let header = CentralHeader::parse(data, pos)?;
        pos += header.total_len as u64;
        names.push(String::from_utf8_lossy(header.name).into_owned());
    }
    Ok(names)
}

/// What the end records say: the classic one and, where a locator points to it, the zip64 one.
struct EndRecords {
    eocd_offset: u64,
    entries: u64,
    cd_size: u64,
    cd_offset: u64,
}

/// Reads the end records (the same way for the directory and for naming a foreign zip's
/// entries, so a whole file and a partial source fail alike).
fn end_records(data: &(impl ByteSource + ?Sized)) -> Result<EndRecords> {
    let eocd_offset = find_eocd(data)?;
    let eocd = Eocd::parse(data, eocd_offset)?;
    let (mut entries, mut cd_size, mut cd_offset) = (
        eocd.entries as u64,
        eocd.cd_size as u64,
        eocd.cd_offset as u64,
    );
    if eocd_offset >= Eocd64Locator::SIZE as u64 {
        let locator_offset = eocd_offset - Eocd64Locator::SIZE as u64;
        if let Some(locator) = Eocd64Locator::parse(data, locator_offset)? {
            let eocd64 = Eocd64::parse(data, locator.eocd64_offset)?;
            // torch always writes a zip64 record; where present it is authoritative (its
            // fields hold what the classic record's all-ones values stand for).
            // A classic field that is not all ones must say what the zip64 one says: readers
            // differ on which to believe, so a disagreement is refused (found by fuzzing
            // against the zip crate).
            for (what, classic, saturated, wide) in [
                ("entries", entries, u16::MAX as u64, eocd64.entries),
                (
                    "central directory size",
                    cd_size,
                    u32::MAX as u64,
                    eocd64.cd_size,
                ),
                (
                    "central directory offset",
                    cd_offset,
                    u32::MAX as u64,
                    eocd64.cd_offset,
                ),
            ] {
                if classic != saturated && classic != wide {
                    return Err(Error::zip(
                        eocd_offset,
                        format!("the end-of-central-directory record says {what} {classic}, its zip64 record {wide}"),
                    ));
                }
            }
            (entries, cd_size, cd_offset) = (eocd64.entries, eocd64.cd_size, eocd64.cd_offset);
        }
    }
    Ok(EndRecords {
        eocd_offset,
        entries,
        cd_size,
        cd_offset,
    })
}

/// Finds the EOCD by scanning back from the end over at most a maximal comment (64 KiB).
fn find_eocd(data: &(impl ByteSource + ?Sized)) -> Result<u64> {
    let len = data.len();
    if len < Eocd::SIZE as u64 {
        return Err(Error::zip(
            0,
            format!("file too short for a zip archive ({len} bytes)"),
        ));
    }
    // Most archives (torch's always) end with the record itself, no comment: look there first,
    // so a partial source needs only the end records (zip64 ones included) rather than the
    // 64 KiB comment window (whose search, from the end, would find the same record first).
    let end_records = (Eocd::SIZE + Eocd64Locator::SIZE + Eocd64::SIZE) as u64;
    let tail_start = len.saturating_sub(end_records);
    let tail = data.get(tail_start, len - tail_start)?;
    if tail[tail.len() - Eocd::SIZE..].starts_with(&EOCD_MAGIC.to_le_bytes()) {
        return Ok(len - Eocd::SIZE as u64);
    }
    let window_start = (len - Eocd::SIZE as u64).saturating_sub(u16::MAX as u64);
    let window = data.get(window_start, len - window_start)?;
    let magic = EOCD_MAGIC.to_le_bytes();
    (0..=window.len() - Eocd::SIZE)
        .rev()
        .find(|&i| window[i..i + 4] == magic)
        .map(|i| window_start + i as u64)
        .ok_or_else(|| {
            Error::zip(
                len,
                "no end-of-central-directory record (truncated or not a zip file)",
            )
        })
}
