//! Random-access bytes of a checkpoint: a memory map of a file, or a buffer the caller handed
//! over. Everything above reads through `&[u8]`; storages borrow slices of the same shared
//! bytes, so a CPU load copies nothing it does not have to.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};

/// Files up to this size are read whole rather than mapped: one read of 64 KiB costs less than
/// mapping, faulting in (each fault maps 64 KiB) and unmapping.
#[cfg(all(not(target_arch = "wasm32"), feature = "mmap"))]
const READ_RATHER_THAN_MAP: u64 = 64 << 10;

/// Shared, immutable bytes: an mmap, a `Vec<u8>`, an `Arc<[u8]>`, a `&'static [u8]`, …
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A checkpoint's bytes and the name used in error messages.
#[derive(Clone)]
pub struct Source {
    name: String,
    bytes: SharedBytes,
    /// The mapped file, for small scattered reads ([`ByteSource::read_small`]).
    #[cfg(all(unix, feature = "mmap"))]
    file: Option<Arc<std::fs::File>>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("len", &self.bytes().len())
            .finish()
    }
}

impl Source {
    /// Wraps bytes the caller owns; `name` appears in errors (`<memory>` by convention).
    pub fn from_bytes(
        name: impl Into<String>,
        bytes: impl AsRef<[u8]> + Send + Sync + 'static,
    ) -> Self {
        Source {
            name: name.into(),
            bytes: Arc::new(bytes),
            #[cfg(all(unix, feature = "mmap"))]
            file: None,
        }
    }

    /// Opens a file: memory-mapped when the `mmap` feature is on, else read whole.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::open_unless_folder(path)?
            .ok_or_else(|| directory_error(path).in_file(&path.display().to_string()))
    }

    /// [`Source::open`], or `None` when `path` is a torch.distributed.checkpoint folder (with a
    /// `.metadata` file), which the loader reads as such. One `open` and one `fstat` for a file.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn open_unless_folder(path: &std::path::Path) -> Result<Option<Self>> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| crate::Error::from(e).in_file(&name))?;
        let metadata = file
            .metadata()
            .map_err(|e| crate::Error::from(e).in_file(&name))?;
        // A directory is refused here, naming the checkpoint in it, unless it is a
        // torch.distributed.checkpoint folder.
        if metadata.is_dir() {
            if path.join(".metadata").is_file() {
                return Ok(None);
            }
            return Err(directory_error(path).in_file(&name));
        }
        let len = metadata.len();
        if len == 0 {
            return Ok(Some(Source::from_bytes(name, Vec::new())));
        }
        #[cfg(feature = "mmap")]
        if len > READ_RATHER_THAN_MAP {
            // The length is the one just read: no second `fstat`.
            let len = usize::try_from(len).map_err(|_| {
                crate::Error::from(std::io::Error::other("the file is too large to map"))
                    .in_file(&name)
            })?;
            // SAFETY: the map is private and read-only. As with every mmap-based loader
            // (safetensors, torch's mmap=True), truncating or rewriting the file while the
            // checkpoint is alive is undefined behaviour; callers who cannot rule that out should
            // read the file into memory and use `Source::from_bytes`.
            let map = unsafe { memmap2::MmapOptions::new().len(len).map(&file) }
                .map_err(|e| crate::Error::from(e).in_file(&name))?;
            #[cfg(unix)]
            return Ok(Some(Source {
                file: Some(Arc::new(file)),
                ..Source::from_bytes(name, map)
            }));
            #[cfg(not(unix))]
            return Ok(Some(Source::from_bytes(name, map)));
        }
        // A small file (or no `mmap` feature): read whole.
        {
            // One read of the length just read (`read_to_end` would read in growing pieces).
            let bytes = read_vec_at(&file, 0, len as usize)
                .map_err(|e| crate::Error::from(e).in_file(&name))?;
            Ok(Some(Source::from_bytes(name, bytes)))
        }
    }

    /// The name used in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All the bytes.
    pub fn bytes(&self) -> &[u8] {
        (*self.bytes).as_ref()
    }

    /// The shared handle, for storages that borrow from it.
    pub fn shared(&self) -> &SharedBytes {
        &self.bytes
    }

    /// The mapped file, to read `[offset, offset + len)` from, when there is one and the range
    /// lies in it.
    #[cfg(all(unix, feature = "mmap"))]
    fn file_for(&self, offset: u64, len: usize) -> Option<&std::fs::File> {
        let fits = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= ByteSource::len(self));
        self.file.as_deref().filter(|_| fits)
    }
}

/// Reads `len` bytes at `offset` of `file` into a new vector. On Linux the vector is not
/// zeroed first: `pread` writes straight into its spare room (a read of 32 KiB would
/// otherwise also write 32 KiB of zeros).
#[cfg(not(target_arch = "wasm32"))]
fn read_vec_at(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        let mut bytes: Vec<u8> = Vec::with_capacity(len);
        let mut done = 0;
        while done < len {
            let at = offset
                .checked_add(done as u64)
                .and_then(|at| libc::off_t::try_from(at).ok())
                .ok_or_else(|| std::io::Error::other("read offset out of range"))?;
            // SAFETY: `pread` writes at most `len - done` bytes into the vector's spare room
            // from `done` on, all within the `len` bytes `with_capacity` allocated.
            let read = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    bytes.as_mut_ptr().add(done).cast(),
                    len - done,
                    at,
                )
            };
            match read {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n if n < 0 => {
                    let error = std::io::Error::last_os_error();
                    if error.kind() != std::io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
                n => done += n as usize,
            }
        }
        // SAFETY: `pread` wrote all `len` bytes above.
        unsafe { bytes.set_len(len) };
        Ok(bytes)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut bytes = vec![0u8; len];
        #[cfg(unix)]
        std::os::unix::fs::FileExt::read_exact_at(file, &mut bytes, offset)?;
        #[cfg(not(unix))]
        {
            use std::io::{Read, Seek};
            let mut file = file;
            file.seek(std::io::SeekFrom::Start(offset))?;
            file.read_exact(&mut bytes)?;
        }
        Ok(bytes)
    }
}

/// Asks the kernel to map all of `bytes` in one call before they are read front to back
/// (Linux ≥ 5.14, `MADV_POPULATE_READ`): for a slice of a mapped file, one system call
/// instead of a page fault per 64 KiB, which halves the time to write 1 GiB out of a map.
/// Memory already mapped (any `Vec`) is left as it is; where the advice is unknown, nothing
/// happens.
pub fn prefault(bytes: &[u8]) {
    if let Some((start, len)) = prefault_range(bytes.as_ptr() as usize, bytes.len()) {
        // MADV_POPULATE_READ only maps the pages (reading the file where needed).
        #[cfg(target_os = "linux")]
        advise(start, len, libc::MADV_POPULATE_READ);
        #[cfg(not(target_os = "linux"))]
        let _ = (start, len);
    }
}

/// Asks Linux to back the 2 MiB-aligned middle of a big buffer not touched yet with huge
/// pages (transparent huge pages in `madvise` mode, the usual default): filling it then takes
/// one page fault per 2 MiB instead of one per 4 KiB. Elsewhere, or when refused, nothing
/// changes.
pub fn prefer_huge_pages(buffer: &[u8]) {
    if let Some((start, len)) = huge_page_range(buffer.as_ptr() as usize, buffer.len()) {
        // MADV_HUGEPAGE changes how the pages are backed, never what they hold.
        #[cfg(target_os = "linux")]
        advise(start, len, libc::MADV_HUGEPAGE);
        #[cfg(not(target_os = "linux"))]
        let _ = (start, len);
    }
}

/// `madvise` over `[start, start + len)`, which must lie in memory this process may read, with
/// an advice that changes how pages are mapped or backed, never their contents. Refusals are
/// ignored: the advice only ever makes things faster.
#[cfg(target_os = "linux")]
fn advise(start: usize, len: usize, advice: libc::c_int) {
    // SAFETY: as the callers promise, the range is this process's memory and the advice
    // leaves its bytes as they are.
    unsafe {
        libc::madvise(start as *mut libc::c_void, len, advice);
    }
}

/// The pages `(start, len)` holding the `len` bytes at `address`, when there are enough of
/// them (64 KiB, what one page fault maps anyway) for the advice to pay.
fn prefault_range(address: usize, len: usize) -> Option<(usize, usize)> {
    const PAGE: usize = 4096;
    if len < 16 * PAGE {
        return None;
    }
    let start = address / PAGE * PAGE;
    Some((start, address + len - start))
}

/// The 2 MiB-aligned middle `(start, len)` of the buffer at `address` of `len` bytes, when it
/// is worth advising: buffers of 4 MiB or more.
fn huge_page_range(address: usize, len: usize) -> Option<(usize, usize)> {
    const HUGE: usize = 2 << 20;
    if len < 2 * HUGE {
        return None;
    }
    // At least one whole huge page lies in 4 MiB, wherever they start.
    let start = address.next_multiple_of(HUGE);
    let end = (address + len) / HUGE * HUGE;
    Some((start, end - start))
}

#[cfg(test)]
mod prefault_tests {
    use super::{huge_page_range, prefault_range};

    #[test]
    fn whole_pages_around_the_bytes() {
        let page = 4096;
        assert_eq!(
            prefault_range(10 * page, 16 * page),
            Some((10 * page, 16 * page))
        );
        assert_eq!(
            prefault_range(10 * page + 100, 16 * page),
            Some((10 * page, 16 * page + 100))
        );
        assert_eq!(
            prefault_range(10 * page, 16 * page - 1),
            None,
            "too few to pay"
        );
        // A real slice: advising it must leave its bytes as they are.
        let bytes: Vec<u8> = (0..20 * page).map(|i| i as u8).collect();
        super::prefault(&bytes);
        assert!(bytes.iter().enumerate().all(|(i, &b)| b == i as u8));
    }

    #[test]
    fn huge_pages_are_asked_for_the_aligned_middle_of_big_buffers() {
        const HUGE: usize = 2 << 20;
        let base = 1000 * HUGE;
        let range = huge_page_range;
        assert_eq!(range(base, 2 * HUGE), Some((base, 2 * HUGE)));
        assert_eq!(range(base + 16, 4 * HUGE), Some((base + HUGE, 3 * HUGE)));
        assert_eq!(range(base - 16, 4 * HUGE), Some((base, 3 * HUGE)));
        assert_eq!(range(base + 1, 2 * HUGE), Some((base + HUGE, HUGE)));
        assert_eq!(range(base + 1, 3 * HUGE), Some((base + HUGE, 2 * HUGE)));
        assert_eq!(
            range(base, 2 * HUGE - 1),
            None,
            "small buffers are left alone"
        );
    }
}

/// Random access to a file's bytes, some of which may not be loaded yet.
///
/// The archive layer reads through this: a whole file in memory (`[u8]`) has every range; a
/// [`SparseBytes`] (the browser's `Blob`, read by slices) answers a missing range with
/// [`ErrorKind::NeedBytes`], so the caller can load it and try again.
pub trait ByteSource {
    /// Length of the whole file.
    fn len(&self) -> u64;

    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes `[offset, offset + len)`.
    fn get(&self, offset: u64, len: u64) -> Result<&[u8]>;

    /// Copies the bytes `[offset, offset + buf.len())` into `buf`: for a few bytes here and
    /// there, far apart (zip local headers of big tensors), which a mapped file serves with a
    /// read instead of a page fault (and the mapping of the pages around it) each.
    fn read_small(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        buf.copy_from_slice(self.get(offset, buf.len() as u64)?);
        Ok(())
    }

    /// [`read_small`](ByteSource::read_small) into a new vector of `len` bytes.
    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; len];
        self.read_small(offset, &mut bytes)?;
        Ok(bytes)
    }

    /// Whether [`read_small_ahead`](ByteSource::read_small_ahead) can read on a helper thread
    /// (a mapped file, whose pages are better read than faulted in).
    fn reads_ahead(&self) -> bool {
        false
    }

    /// Whether the bytes `[offset, offset + len)` are in memory already, so that borrowing them
    /// costs no page fault: everywhere but in a mapped file, outside what was read of it
    /// ([`Preloaded`]).
    fn in_memory(&self, offset: u64, len: u64) -> bool {
        let _ = (offset, len);
        !self.reads_ahead()
    }

    /// Starts [`read_small`](ByteSource::read_small)s of `N` bytes at each of `offsets` on a
    /// helper thread, for the caller to collect later; `None` (the default) where the source
    /// has no file to read from or no helper, and the caller reads for itself.
    #[cfg(all(unix, feature = "mmap"))]
    fn read_small_ahead<const N: usize>(
        &self,
        offsets: Vec<u64>,
    ) -> Option<crate::read_ahead::ReadAhead<N>> {
        let _ = offsets;
        None
    }
}

fn past_the_end(offset: u64, len: u64, total: u64) -> Error {
    Error::new(ErrorKind::NotACheckpoint {
        reason: format!(
            "bytes {offset}..{} lie past the end of the file ({total} bytes; truncated?)",
            offset.saturating_add(len)
        ),
    })
}

/// Why a directory is no checkpoint file (its file names, sorted, say what to load instead).
#[cfg(not(target_arch = "wasm32"))]
fn directory_error(path: &std::path::Path) -> Error {
    const MAX_ENTRIES: usize = 10_000;
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map(|entries| {
            entries
                .take(MAX_ENTRIES)
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    Error::new(ErrorKind::NotACheckpoint {
        reason: crate::archive::detect::explain_directory(&names),
    })
}

impl ByteSource for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn get(&self, offset: u64, len: u64) -> Result<&[u8]> {
        let total = <[u8]>::len(self) as u64;
        match offset.checked_add(len) {
            Some(end) if end <= total => Ok(&self[offset as usize..end as usize]),
            _ => Err(past_the_end(offset, len, total)),
        }
    }
}

impl ByteSource for Source {
    fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    fn read_small(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        #[cfg(all(unix, feature = "mmap"))]
        if let Some(file) = self.file_for(offset, buf.len()) {
            use std::os::unix::fs::FileExt;
            // A failed or short read falls back on the mapping, which then reports.
            if file.read_exact_at(buf, offset).is_ok() {
                return Ok(());
            }
        }
        ByteSource::read_small(self.bytes(), offset, buf)
    }

    fn get(&self, offset: u64, len: u64) -> Result<&[u8]> {
        ByteSource::get(self.bytes(), offset, len)
    }

    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        #[cfg(all(unix, feature = "mmap"))]
        if let Some(file) = self.file_for(offset, len) {
            // A failed or short read falls back on the mapping, which then reports.
            if let Ok(bytes) = read_vec_at(file, offset, len) {
                return Ok(bytes);
            }
        }
        Ok(self.get(offset, len as u64)?.to_vec())
    }

    fn reads_ahead(&self) -> bool {
        #[cfg(all(unix, feature = "mmap"))]
        return self.file.is_some();
        #[cfg(not(all(unix, feature = "mmap")))]
        false
    }

    #[cfg(all(unix, feature = "mmap"))]
    fn read_small_ahead<const N: usize>(
        &self,
        offsets: Vec<u64>,
    ) -> Option<crate::read_ahead::ReadAhead<N>> {
        crate::read_ahead::start(self.file.clone()?, offsets)
    }
}

/// A source with a few of its ranges read into memory beforehand, in one read each: the
/// metadata of a mapped file (its zip directory, its pickles), which would otherwise be
/// faulted in page by page. On a VM a page fault costs several microseconds (and unmapping
/// the pages it mapped a few more); a read of tens of KiB costs about one. Every other range
/// is the source's own.
#[derive(Debug)]
pub struct Preloaded<'a, S: ?Sized> {
    source: &'a S,
    /// `(offset, bytes)`, few.
    windows: Vec<(u64, Vec<u8>)>,
}

impl<'a, S: ByteSource + ?Sized> Preloaded<'a, S> {
    /// `source` with nothing read yet.
    pub fn new(source: &'a S) -> Self {
        Preloaded {
            source,
            windows: Vec::new(),
        }
    }

    /// Reads `[offset, offset + len)` into memory, when the source reads rather than maps
    /// ([`ByteSource::reads_ahead`]), the range lies in the file and is at most `max_len`
    /// bytes; otherwise the range stays the source's.
    pub fn read(&mut self, offset: u64, len: u64, max_len: u64) {
        let fits = offset.checked_add(len).is_some_and(|end| end <= self.len());
        if !fits || len > max_len || len == 0 || self.in_memory(offset, len) {
            return;
        }
        // A failed read leaves the range to the source, which reports.
        if let Ok(bytes) = self.source.read_vec(offset, len as usize) {
            self.windows.push((offset, bytes));
        }
    }

    /// [`read`](Self::read)s each of `ranges` (`(offset, len)`), those less than `max_gap`
    /// bytes apart in one read.
    pub fn read_all(&mut self, mut ranges: Vec<(u64, u64)>, max_gap: u64, max_len: u64) {
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (offset, len) in ranges {
            let end = offset.saturating_add(len);
            match merged.last_mut() {
                Some((_, last_end)) if offset <= last_end.saturating_add(max_gap) => {
                    *last_end = end.max(*last_end);
                }
                _ => merged.push((offset, end)),
            }
        }
        for (start, end) in merged {
            self.read(start, end - start, max_len);
        }
    }

    fn window(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        self.windows.iter().find_map(|(start, bytes)| {
            let from = offset.checked_sub(*start)?;
            (end - start <= bytes.len() as u64)
                .then(|| &bytes[from as usize..(end - start) as usize])
        })
    }
}

impl<S: ByteSource + ?Sized> ByteSource for Preloaded<'_, S> {
    fn len(&self) -> u64 {
        self.source.len()
    }

    fn get(&self, offset: u64, len: u64) -> Result<&[u8]> {
        match self.window(offset, len) {
            Some(bytes) => Ok(bytes),
            None => self.source.get(offset, len),
        }
    }

    fn read_small(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match self.window(offset, buf.len() as u64) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => self.source.read_small(offset, buf),
        }
    }

    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        match self.window(offset, len as u64) {
            Some(bytes) => Ok(bytes.to_vec()),
            None => self.source.read_vec(offset, len),
        }
    }

    fn reads_ahead(&self) -> bool {
        self.source.reads_ahead()
    }

    fn in_memory(&self, offset: u64, len: u64) -> bool {
        self.window(offset, len).is_some() || self.source.in_memory(offset, len)
    }

    #[cfg(all(unix, feature = "mmap"))]
    fn read_small_ahead<const N: usize>(
        &self,
        offsets: Vec<u64>,
    ) -> Option<crate::read_ahead::ReadAhead<N>> {
        self.source.read_small_ahead(offsets)
    }
}

/// Some ranges of a file of known length, loaded piece by piece.
#[derive(Debug, Default)]
pub struct SparseBytes {
    total: u64,
    chunks: BTreeMap<u64, Vec<u8>>,
}

impl SparseBytes {
    /// Nothing loaded yet of a file of `total` bytes.
    pub fn new(total: u64) -> Self {
        SparseBytes {
            total,
            chunks: BTreeMap::new(),
        }
    }

    /// Adds the bytes found at `offset`.
    pub fn insert(&mut self, offset: u64, bytes: Vec<u8>) {
        self.chunks.insert(offset, bytes);
    }

    /// Bytes loaded so far.
    pub fn loaded(&self) -> u64 {
        self.chunks.values().map(|c| c.len() as u64).sum()
    }
}

impl ByteSource for SparseBytes {
    fn len(&self) -> u64 {
        self.total
    }

    fn get(&self, offset: u64, len: u64) -> Result<&[u8]> {
        let end = match offset.checked_add(len) {
            Some(end) if end <= self.total => end,
            _ => return Err(past_the_end(offset, len, self.total)),
        };
        if len == 0 {
            return Ok(&[]); // nothing to load
        }
        // Any chunk that starts at or before `offset` and reaches `end`.
        for (&start, chunk) in self.chunks.range(..=offset).rev() {
            let chunk_end = start + chunk.len() as u64;
            if chunk_end >= end {
                return Ok(&chunk[(offset - start) as usize..(end - start) as usize]);
            }
        }
        Err(Error::new(ErrorKind::NeedBytes {
            ranges: vec![(offset, len)],
        }))
    }
}

#[cfg(all(test, unix, feature = "mmap"))]
mod tests {
    use super::*;
    use std::io::Write;

    /// A mapped file of 100 KiB whose byte `i` is `i % 251`, and its bytes.
    fn mapped() -> (tempfile::NamedTempFile, Source, Vec<u8>) {
        let bytes: Vec<u8> = (0..100 << 10).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&bytes).unwrap();
        let source = Source::open(file.path()).unwrap();
        assert!(source.reads_ahead(), "a file over 64 KiB is mapped");
        (file, source, bytes)
    }

    #[test]
    fn small_files_are_read_and_big_ones_mapped() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&[7u8; 64 << 10]).unwrap();
        let source = Source::open(file.path()).unwrap();
        assert!(!source.reads_ahead());
        assert!(source.in_memory(0, 64 << 10));
        assert_eq!(source.bytes(), &[7u8; 64 << 10][..]);
        let (_file, mapped, bytes) = mapped();
        assert!(!mapped.in_memory(0, 1));
        assert_eq!(mapped.bytes(), &bytes[..]);
    }

    #[test]
    fn preloaded_windows_answer_for_the_source() {
        let (_file, source, bytes) = mapped();
        let mut known = Preloaded::new(&source);
        known.read(1000, 3000, 4096);
        known.read(60_000, 4096, 4096);
        assert!(
            known.in_memory(60_000, 4096),
            "exactly `max_len` bytes are read"
        );
        // Too long, empty, past the end: left to the source.
        known.read(10_000, 5000, 4096);
        known.read(20_000, 0, 4096);
        known.read((100 << 10) - 10, 11, 4096);
        assert!(known.in_memory(1000, 3000));
        assert!(known.in_memory(1500, 100));
        assert!(!known.in_memory(999, 2));
        assert!(!known.in_memory(3999, 2), "straddles the window's end");
        assert!(!known.in_memory(10_000, 1));
        assert!(!known.in_memory(20_000, 1));
        // Inside, straddling or outside the window, the bytes are the file's.
        for (offset, len) in [(1000, 3000), (1200, 7), (3990, 20), (50_000, 64)] {
            let want = &bytes[offset as usize..(offset + len) as usize];
            assert_eq!(known.get(offset, len).unwrap(), want, "{offset}+{len}");
            let mut buf = vec![0u8; len as usize];
            known.read_small(offset, &mut buf).unwrap();
            assert_eq!(buf, want, "{offset}+{len}");
            assert_eq!(known.read_vec(offset, len as usize).unwrap(), want);
        }
        assert!(known.get((100 << 10) - 10, 11).is_err());
        // A window over a window: the outer one reads nothing the inner one holds.
        let mut outer = Preloaded::new(&known);
        outer.read(1500, 100, 4096);
        assert!(outer.windows.is_empty());
        outer.read(5000, 100, 4096);
        assert_eq!(outer.windows.len(), 1);
        assert!(outer.in_memory(1000, 10) && outer.in_memory(5000, 100));
    }

    #[test]
    fn preloaded_reads_near_ranges_at_once() {
        let (_file, source, bytes) = mapped();
        let mut known = Preloaded::new(&source);
        // Out of order; the first two 100 bytes apart, the third far away.
        known.read_all(vec![(5000, 10), (30_000, 5), (4800, 100)], 1000, 4096);
        assert_eq!(known.windows.len(), 2);
        assert!(
            known.in_memory(4800, 210),
            "the gap between the first two is read too"
        );
        assert!(known.in_memory(30_000, 5));
        assert!(!known.in_memory(5010, 1000));
        assert_eq!(known.get(4900, 110).unwrap(), &bytes[4900..5010]);
        // Merged past `max_len`: left to the source.
        let mut capped = Preloaded::new(&source);
        capped.read_all(vec![(0, 100), (200, 100)], 1000, 250);
        assert!(capped.windows.is_empty());
    }

    #[test]
    fn a_source_in_memory_is_never_read_again() {
        let bytes: Vec<u8> = (0..200u8).collect();
        let mut known = Preloaded::new(&bytes[..]);
        known.read(0, 100, 4096);
        assert!(known.windows.is_empty());
        assert!(known.in_memory(150, 50));
        assert_eq!(known.get(10, 5).unwrap(), &bytes[10..15]);
    }

    #[test]
    fn read_vec_at_reads_exactly_and_refuses_short_reads() {
        let (file, _, bytes) = mapped();
        let file = std::fs::File::open(file.path()).unwrap();
        assert_eq!(read_vec_at(&file, 77, 5000).unwrap(), &bytes[77..5077]);
        assert_eq!(read_vec_at(&file, 0, 0).unwrap(), Vec::<u8>::new());
        let short = read_vec_at(&file, (100 << 10) - 4, 8).unwrap_err();
        assert_eq!(short.kind(), std::io::ErrorKind::UnexpectedEof);
        // A failed read is an error, not bytes (a directory opens, but reads fail: EISDIR).
        let folder = std::fs::File::open(tempfile::tempdir().unwrap().path()).unwrap();
        let failed = read_vec_at(&folder, 0, 16).unwrap_err();
        assert_eq!(failed.kind(), std::io::ErrorKind::IsADirectory);
    }
}
