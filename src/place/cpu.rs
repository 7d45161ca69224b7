//! The CPU placer: borrow in place when the record is stored, aligned for its element type and
//! already in host byte order; copy (inflating and swapping on the way) only when it must, or
//! when asked to own every storage ([`CpuPlacer::copy_all`]).
//!
//! Copies use every core: the storages to copy are cut into pieces (a stored record into
//! [`COPY_CHUNK`]-sized runs, which can be copied in any order; a deflated record whole, since
//! a deflate stream reads front to back) and worker threads take pieces, biggest first, until
//! none are left. Each piece writes straight into its storage's final buffer, so nothing is
//! held in flight but the inflaters' windows; the destination's pages are first touched by the
//! thread that fills them.

use std::sync::Mutex;

use super::{Control, PlacementJob, Placer, RecordReader, StorageData};
use crate::error::Result;
use crate::source::SharedBytes;
use crate::torch::Dtype;

/// Places storages in host memory.
pub struct CpuPlacer {
    source: SharedBytes,
    copy_all: bool,
    /// `None`: as many as the machine runs at once ([`default_threads`]).
    threads: Option<usize>,
    /// Threads the last [`Placer::place_all`] copied on.
    copied_on: usize,
}

impl std::fmt::Debug for CpuPlacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPlacer")
            .field("copy_all", &self.copy_all)
            .field("threads", &self.threads)
            .finish()
    }
}

/// One piece of copying: a run of a stored record, or a whole deflated one.
enum Piece<'s, 'd> {
    Run {
        from: &'s [u8],
        to: &'d mut [u8],
        swap_unit: usize,
    },
    Stream {
        job: &'s PlacementJob,
        to: &'d mut [u8],
    },
}

impl Piece<'_, '_> {
    fn len(&self) -> usize {
        match self {
            Piece::Run { to, .. } | Piece::Stream { to, .. } => to.len(),
        }
    }

    fn copy(self, reader: &RecordReader<'_>, control: &mut Control<'_>) -> Result<()> {
        match self {
            Piece::Run {
                from,
                to,
                swap_unit,
                ..
            } => {
                crate::source::prefault(from);
                to.copy_from_slice(from);
                swap_in_place(to, swap_unit);
                control.advance(to.len() as u64)
            }
            Piece::Stream { job, to } => {
                let mut stream = reader.stream(job)?;
                let mut filled = 0;
                while filled < to.len() {
                    let end = (filled + COPY_CHUNK).min(to.len());
                    let n = stream.read(&mut to[filled..end])?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                    control.advance(n as u64)?;
                }
                Ok(())
            }
        }
    }
}

impl CpuPlacer {
    /// A placer whose borrowed storages share `source` (the bytes the reader reads), copying
    /// on as many threads as the machine runs at once.
    pub fn new(source: SharedBytes) -> Self {
        CpuPlacer {
            source,
            copy_all: false,
            threads: None,
            copied_on: 0,
        }
    }

    /// Copies every storage into memory of its own, even those it could borrow (so that the
    /// checkpoint no longer reads the source).
    pub fn copy_all(mut self, yes: bool) -> Self {
        self.copy_all = yes;
        self
    }

    /// Copies on at most `threads` threads (1: on the calling thread only).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads.max(1));
        self
    }

    /// The storage borrowed from the source, when it can be used in place.
    fn borrowed(&self, reader: &RecordReader<'_>, job: &PlacementJob) -> Option<StorageData> {
        let bytes = reader.borrow(job)?;
        let base = (*self.source).as_ref().as_ptr() as usize;
        let start = bytes.as_ptr() as usize;
        if start % alignment(job.dtype, job.swap_unit) != 0 || start < base {
            return None;
        }
        let offset = start - base;
        Some(StorageData::Borrowed {
            source: self.source.clone(),
            range: offset..offset + bytes.len(),
        })
    }

    /// Copies every piece, on worker threads when there is enough to share; returns how many
    /// threads copied.
    fn copy_pieces(
        &self,
        reader: &RecordReader<'_>,
        mut pieces: Vec<Piece<'_, '_>>,
        control: &mut Control<'_>,
    ) -> Result<usize> {
        // Biggest first (popped from the back), so that no long inflate starts last.
        pieces.sort_by_key(Piece::len);
        let bytes: usize = pieces.iter().map(Piece::len).sum();
        let threads = match pieces.len() {
            0 | 1 => 1,
            n => thread_count(self.threads.unwrap_or_else(default_threads), n, bytes),
        };
        #[cfg(not(target_arch = "wasm32"))]
        if threads > 1 {
            let queue = Mutex::new(pieces);
            super::parallel::run_on_threads(
                vec![(); threads],
                control,
                |(), local| take_and_copy(&queue, reader, local),
                |_| {
                    crate::error::Error::new(crate::error::ErrorKind::Placement {
                        storage: String::new(),
                        device: "cpu".into(),
                        message: "a copying thread panicked".into(),
                    })
                },
            )?;
            return Ok(threads);
        }
        #[cfg(target_arch = "wasm32")]
        let _ = threads; // one thread in wasm
        take_and_copy(&Mutex::new(pieces), reader, control)?;
        Ok(1)
    }
}

/// How many threads the machine runs at once, asked once per process (the answer reads
/// cgroup files: slower than loading a small checkpoint).
fn default_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Threads worth starting for `pieces` pieces of `bytes` bytes in all, at most `threads`.
fn thread_count(threads: usize, pieces: usize, bytes: usize) -> usize {
    threads
        .min(pieces)
        .min(bytes.div_ceil(MIN_BYTES_PER_THREAD))
        .max(1)
}

/// Takes pieces from the back of `queue` and copies them until none are left.
fn take_and_copy(
    queue: &Mutex<Vec<Piece<'_, '_>>>,
    reader: &RecordReader<'_>,
    control: &mut Control<'_>,
) -> Result<()> {
    loop {
        control.check()?;
        let piece = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match piece {
            Some(piece) => piece.copy(reader, control)?,
            None => return Ok(()),
        }
    }
}

/// A zero-filled buffer of `len` bytes, or `None` when the allocator has no memory for it.
/// Its pages come zeroed from the system (`calloc`), so they are touched first by the thread
/// that fills them, not here.
fn zeroed(len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(len).ok()?;
    // SAFETY: `layout` has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of `[u8; len]`
    // (alignment 1, capacity `len`), and its `len` bytes are initialized (zero).
    let buffer = unsafe { Vec::from_raw_parts(ptr, len, len) };
    crate::source::prefer_huge_pages(&buffer);
    Some(buffer)
}

/// The alignment host bytes of a storage need to be used in place: its element size, or its
/// swap unit (the element size of the tensor dtype viewing it) when wider. The one rule: the
/// CPU placer and the JS placement (`src/wasm`) use it.
pub fn alignment(dtype: Dtype, swap_unit: usize) -> usize {
    dtype.element_size().max(swap_unit).max(1)
}

/// Bytes in one piece of a stored record, and between progress reports while inflating (a
/// multiple of every swap unit, so no swap straddles two pieces).
const COPY_CHUNK: usize = 4 << 20;

/// Below this many bytes per thread, another thread costs more than it saves.
const MIN_BYTES_PER_THREAD: usize = 8 << 20;

impl Placer for CpuPlacer {
    fn place_all(
        &mut self,
        reader: &RecordReader<'_>,
        jobs: &[PlacementJob],
        control: &mut Control<'_>,
    ) -> Result<Vec<StorageData>> {
        let mut placed: Vec<Option<StorageData>> = Vec::with_capacity(jobs.len());
        let mut copies: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            control.check()?;
            let borrowed = if self.copy_all {
                None
            } else {
                self.borrowed(reader, job)
            };
            if borrowed.is_some() {
                control.advance(job.nbytes)?;
            } else {
                let len = usize::try_from(job.nbytes)
                    .map_err(|_| job.error("the storage does not fit in this address space"))?;
                let buffer = zeroed(len)
                    .ok_or_else(|| job.error(format!("out of host memory for {len} bytes")))?;
                copies.push((i, buffer));
            }
            placed.push(borrowed);
        }
        let mut pieces = Vec::new();
        for (i, buffer) in &mut copies {
            let job = &jobs[*i];
            match reader.stored(job)? {
                Some(raw) => {
                    let swap_unit = reader.swap_unit(job);
                    let runs = raw.chunks(COPY_CHUNK).zip(buffer.chunks_mut(COPY_CHUNK));
                    pieces.extend(runs.map(|(from, to)| Piece::Run {
                        from,
                        to,
                        swap_unit,
                    }));
                }
                None => pieces.push(Piece::Stream { job, to: buffer }),
            }
        }
        self.copied_on = self.copy_pieces(reader, pieces, control)?;
        for (i, buffer) in copies {
            placed[i] = Some(StorageData::Owned(buffer));
        }
        Ok(placed
            .into_iter()
            .map(|p| p.unwrap_or(StorageData::Meta))
            .collect())
    }
}

/// Reverses the bytes of each `unit`-sized element (a trailing partial element is left alone).
pub fn swap_in_place(bytes: &mut [u8], unit: usize) {
    if unit > 1 {
        for chunk in bytes.chunks_exact_mut(unit) {
            chunk.reverse();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::archive::ByteOrder;
    use crate::error::ErrorKind;
    use crate::location::Device;
    use crate::place::Progress;

    /// Records of the given lengths (deflated where `deflate[i]`), for the host, starting at
    /// byte 1 so that stored float32 records are misaligned unless padded.
    fn records(lens: &[usize], deflate: &[bool]) -> (Vec<u8>, Vec<PlacementJob>, Vec<Vec<u8>>) {
        crate::place::testing::records(lens, |i| deflate[i], Device::Cpu, 1)
    }

    /// Places `jobs` from `file` with `configure(placer)`, the placer and reader sharing it.
    fn place(
        file: &Arc<Vec<u8>>,
        jobs: &[PlacementJob],
        order: ByteOrder,
        configure: impl FnOnce(CpuPlacer) -> CpuPlacer,
        control: &mut Control<'_>,
    ) -> Result<Vec<StorageData>> {
        let reader = RecordReader::new(file, "f", order, u64::MAX);
        configure(CpuPlacer::new(file.clone())).place_all(&reader, jobs, control)
    }

    fn swapped(mut bytes: Vec<u8>, unit: usize) -> Vec<u8> {
        swap_in_place(&mut bytes, unit);
        bytes
    }

    #[test]
    fn thread_counts_follow_the_work() {
        assert_eq!(
            thread_count(8, 3, 100 << 20),
            3,
            "no more threads than pieces"
        );
        assert_eq!(thread_count(2, 30, 100 << 20), 2, "no more than asked for");
        assert_eq!(thread_count(8, 30, MIN_BYTES_PER_THREAD * 2), 2);
        assert_eq!(thread_count(8, 30, MIN_BYTES_PER_THREAD * 2 + 1), 3);
        assert_eq!(
            thread_count(8, 30, 1),
            1,
            "a small copy stays on this thread"
        );
        assert_eq!(thread_count(8, 0, 0), 1);
    }

    #[test]
    fn copies_on_threads_match_the_file_in_any_byte_order() {
        // Two records of several pieces each, two deflated, one tiny.
        let lens = [2 * COPY_CHUNK + 12, 3 * COPY_CHUNK, COPY_CHUNK + 4, 8];
        let deflate = [false, true, false, true];
        let (file, jobs, contents) = records(&lens, &deflate);
        let file = Arc::new(file);
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let expected: Vec<_> = contents
                .iter()
                .map(|c| {
                    if order == ByteOrder::native() {
                        c.clone()
                    } else {
                        swapped(c.clone(), 4)
                    }
                })
                .collect();
            for threads in [1, 2, 4] {
                let mut control = Control::silent(0);
                let configure = |p: CpuPlacer| p.threads(threads).copy_all(true);
                let placed = place(&file, &jobs, order, configure, &mut control).unwrap();
                assert_eq!(control.placed_bytes(), lens.iter().sum::<usize>() as u64);
                for (i, data) in placed.iter().enumerate() {
                    assert!(
                        matches!(data, StorageData::Owned(_)),
                        "{threads} threads: {i}"
                    );
                    assert!(
                        data.host_bytes().unwrap() == expected[i],
                        "{threads} threads: {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn copies_are_shared_among_threads_by_size() {
        // 6 pieces of 4 MiB: 24 MiB, worth 3 threads at 8 MiB each, capped by `threads`.
        let (file, jobs, _) = records(&[3 * COPY_CHUNK, 3 * COPY_CHUNK], &[false, false]);
        let file = Arc::new(file);
        for (threads, want) in [(1, 1), (2, 2), (8, 3)] {
            let reader = RecordReader::new(&file, "f", ByteOrder::Little, u64::MAX);
            let mut placer = CpuPlacer::new(file.clone()).threads(threads).copy_all(true);
            placer
                .place_all(&reader, &jobs, &mut Control::silent(0))
                .unwrap();
            assert_eq!(placer.copied_on, want, "threads({threads})");
        }
        // By default, as many as the machine runs at once.
        let reader = RecordReader::new(&file, "f", ByteOrder::Little, u64::MAX);
        let mut placer = CpuPlacer::new(file.clone()).copy_all(true);
        placer
            .place_all(&reader, &jobs, &mut Control::silent(0))
            .unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(placer.copied_on, cores.min(3));
        // One small storage stays on this thread, whatever is allowed.
        let (file, jobs, _) = records(&[1024], &[false]);
        let file = Arc::new(file);
        let reader = RecordReader::new(&file, "f", ByteOrder::Little, u64::MAX);
        let mut placer = CpuPlacer::new(file.clone()).threads(8).copy_all(true);
        placer
            .place_all(&reader, &jobs, &mut Control::silent(0))
            .unwrap();
        assert_eq!(placer.copied_on, 1);
        assert_eq!(
            format!("{placer:?}"),
            "CpuPlacer { copy_all: true, threads: Some(8) }"
        );
    }

    #[test]
    fn borrows_what_it_can_unless_asked_to_copy_everything() {
        // One byte of padding, then a float32 record at offset 1 (misaligned) and one at an
        // aligned offset: only the aligned one can be borrowed.
        let (mut file, mut jobs, _) = records(&[4, 8], &[false, false]);
        file.splice(5..5, [0u8; 3]);
        jobs[1].record.data_offset += 3;
        let file = Arc::new(file);
        let base = file.as_ptr() as usize;
        let mut control = Control::silent(0);
        let native = ByteOrder::native();
        let placed = place(&file, &jobs, native, |p| p, &mut control).unwrap();
        assert_eq!(placed[0].is_borrowed(), (base + 1) % 4 == 0);
        assert_eq!(placed[1].is_borrowed(), (base + 8) % 4 == 0);
        assert_eq!(placed[1].host_bytes().unwrap(), &file[8..16]);
        let copied = place(&file, &jobs, native, |p| p.copy_all(true), &mut control).unwrap();
        assert!(copied.iter().all(|d| !d.is_borrowed()));
        assert_eq!(copied[1].host_bytes(), placed[1].host_bytes());
    }

    #[test]
    fn a_corrupt_record_fails_the_load_naming_it() {
        let (mut file, jobs, _) = records(&[3 * COPY_CHUNK, 2 * COPY_CHUNK], &[false, true]);
        let start = jobs[1].record.data_offset as usize;
        file.truncate(start + 100);
        let mut jobs = jobs;
        jobs[1].record.stored_len = 100;
        let file = Arc::new(file);
        for threads in [1, 4] {
            let configure = |p: CpuPlacer| p.threads(threads);
            let e = place(
                &file,
                &jobs,
                ByteOrder::native(),
                configure,
                &mut Control::silent(0),
            )
            .unwrap_err();
            assert!(
                e.to_string().contains("archive/data/1"),
                "{threads} threads: {e}"
            );
        }
    }

    #[test]
    fn cancellation_stops_every_thread() {
        let (file, jobs, _) = records(&[8 * COPY_CHUNK, 8 * COPY_CHUNK], &[false, false]);
        let cancel = AtomicBool::new(false);
        let progress = |p: Progress| {
            if p.placed_bytes > 0 {
                cancel.store(true, Ordering::SeqCst);
            }
        };
        let mut control = Control::new(0, Some(&progress), Some(&cancel));
        let file = Arc::new(file);
        let configure = |p: CpuPlacer| p.threads(4).copy_all(true);
        let e = place(&file, &jobs, ByteOrder::native(), configure, &mut control).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Cancelled), "{e}");
        assert!(
            control.placed_bytes() < 16 * COPY_CHUNK as u64,
            "stopped early"
        );
    }

    #[test]
    fn swaps_by_unit() {
        let mut b = [1, 2, 3, 4, 5, 6, 7, 8];
        swap_in_place(&mut b, 4);
        assert_eq!(b, [4, 3, 2, 1, 8, 7, 6, 5]);
        swap_in_place(&mut b, 1);
        assert_eq!(b, [4, 3, 2, 1, 8, 7, 6, 5]);
    }
}
