//! Small scattered reads of a file done on one helper thread while the calling thread goes on
//! (a zip's local headers of big tensors, 30 bytes every few MiB, read while the pickle is
//! parsed). A read is a system call of about half a microsecond; 132 of them are a third of
//! the time to load a 1 GiB checkpoint's metadata, and on another core they cost the loading
//! thread nothing.
//!
//! The helper is started on first use and then waits for work for the life of the process, as
//! a thread pool's threads do: starting a thread per load would cost as much as the reads. When
//! it cannot be started (or is gone), [`start`] says so and the caller reads for itself. The
//! caller, when it comes to collect, takes its share of the reads left, so it waits for at most
//! the one read the helper is doing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// Reads of `N` bytes at some offsets, started on the helper thread; the caller takes its
/// share of what is left when it comes to [`wait`](ReadAhead::wait).
#[derive(Debug)]
pub struct ReadAhead<const N: usize> {
    shared: Arc<Reads<N>>,
}

/// The reads, claimed one at a time by whichever thread comes first.
#[derive(Debug)]
struct Reads<const N: usize> {
    file: Arc<File>,
    offsets: Vec<u64>,
    next: AtomicUsize,
    /// One per offset, set by the thread that claimed it: `None` for a failed or short read.
    done: Box<[OnceLock<Option<[u8; N]>>]>,
}

impl<const N: usize> Reads<N> {
    /// Claims and does reads until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let (Some(&offset), Some(slot)) = (self.offsets.get(i), self.done.get(i)) else {
                return;
            };
            let mut buf = [0u8; N];
            let read = self.file.read_exact_at(&mut buf, offset).ok().map(|()| buf);
            let _ = slot.set(read);
        }
    }
}

impl<const N: usize> ReadAhead<N> {
    /// Does the reads the helper has not claimed yet, waits for the ones it has, and returns
    /// one entry per offset given to [`start`], in that order: `None` where the read failed or
    /// came short (the caller reads that one again itself, and reports).
    pub fn wait(self) -> Vec<Option<[u8; N]>> {
        self.shared.work();
        self.shared
            .done
            .iter()
            .map(|slot| loop {
                // Claimed by the helper and not done yet: one read, under a microsecond.
                match slot.get() {
                    Some(read) => break *read,
                    None => std::thread::yield_now(),
                }
            })
            .collect()
    }
}

/// The helper's queue, started on first use; `None` if the thread could not be started.
fn helper() -> Option<&'static mpsc::Sender<Job>> {
    static HELPER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    HELPER
        .get_or_init(|| {
            let (queue, jobs) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("ptload-read-ahead".into())
                // It only reads into arrays of a few dozen bytes.
                .stack_size(64 << 10)
                .spawn(move || {
                    for job in jobs {
                        job();
                    }
                })
                .ok()?;
            Some(queue)
        })
        .as_ref()
}

/// Starts reading `N` bytes at each of `offsets` of `file` on the helper thread; `None` when
/// there is no helper (the caller reads for itself).
pub fn start<const N: usize>(file: Arc<File>, offsets: Vec<u64>) -> Option<ReadAhead<N>> {
    let shared = Arc::new(Reads {
        file,
        done: offsets.iter().map(|_| OnceLock::new()).collect(),
        offsets,
        next: AtomicUsize::new(0),
    });
    let helper_share = shared.clone();
    helper()?.send(Box::new(move || helper_share.work())).ok()?;
    Some(ReadAhead { shared })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_each_offset_in_order_and_marks_short_reads() {
        let mut file = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..=255u8).collect();
        file.write_all(&bytes).unwrap();
        let read = start::<4>(Arc::new(file), vec![200, 0, 253, 252, 1000])
            .expect("the helper starts")
            .wait();
        assert_eq!(
            read,
            vec![
                Some([200, 201, 202, 203]),
                Some([0, 1, 2, 3]),
                None,
                Some([252, 253, 254, 255]),
                None
            ]
        );
    }

    #[test]
    fn one_helper_serves_many_callers() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[7u8; 64]).unwrap();
        let file = Arc::new(file);
        let pending: Vec<_> = (0..8)
            .map(|i| start::<2>(file.clone(), vec![i, 62]).unwrap())
            .collect();
        for ahead in pending {
            assert_eq!(ahead.wait(), vec![Some([7, 7]), Some([7, 7])]);
        }
    }
}
