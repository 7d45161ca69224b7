//! Staged uploads on several threads: one device's storages are split into contiguous groups of
//! about equal bytes, and each group streams through its own staging ring on its own thread
//! with [`place_staged`], unchanged. Filling a slot (a memcpy out of the source, inflating,
//! byte-swapping) takes one core; one core copies ~10 GB/s where a PCIe 5 link takes ~50, so
//! a single ring leaves the link mostly idle.
//!
//! The load's one [`Control`] stays on the calling thread: the groups report placed bytes to it
//! (it may cancel), and a failure or cancellation in any group stops the others at their next
//! chunk. Every group frees what it made before it returns (as [`place_staged`] does), and when
//! any group fails, the storages the others placed are dropped too, so an error leaves nothing
//! allocated. Memory in flight is the rings in use: `groups × slots × slot_len`.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::pipeline::{place_staged, Staging};
use super::{Control, PlacementJob, Progress, RecordReader, StorageData};
use crate::error::{Error, ErrorKind, Result};

/// How many groups `jobs` are split into for at most `rings` rings: one per `min_group_bytes`
/// of storage (so small loads use one ring and no thread), at most one per ring and per job.
pub fn group_count(jobs: &[PlacementJob], rings: usize, min_group_bytes: u64) -> usize {
    let total: u64 = jobs.iter().map(|j| j.nbytes).sum();
    let by_size = total / min_group_bytes.max(1);
    (by_size.min(rings as u64) as usize).min(jobs.len()).max(1)
}

/// Splits `jobs` into `groups` contiguous ranges of about equal bytes (none empty).
fn split(jobs: &[PlacementJob], groups: usize) -> Vec<Range<usize>> {
    let total: u64 = jobs.iter().map(|j| j.nbytes).sum();
    let mut ranges = Vec::with_capacity(groups);
    let mut start = 0;
    let mut acc = 0u64;
    for (i, job) in jobs.iter().enumerate() {
        acc += job.nbytes;
        let done = ranges.len() as u64 + 1;
        // Close a group once it reaches its share, leaving a job for each group still to come.
        let left_jobs = jobs.len() - (i + 1);
        let left_groups = groups - ranges.len() - 1;
        if ranges.len() + 1 < groups
            && left_jobs >= left_groups
            && (acc.saturating_mul(groups as u64) >= total.saturating_mul(done)
                || left_jobs == left_groups)
        {
            ranges.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < jobs.len() {
        ranges.push(start..jobs.len());
    }
    ranges
}

/// Places `jobs` through `stagings[..group_count(..)]`, one thread per group (on the calling
/// thread when there is one group). Returns one [`StorageData`] per job, in order.
pub fn place_parallel<S: Staging + Send>(
    stagings: &mut [S],
    reader: &RecordReader<'_>,
    jobs: &[PlacementJob],
    control: &mut Control<'_>,
    min_group_bytes: u64,
) -> Result<Vec<StorageData>> {
    let groups = split(jobs, group_count(jobs, stagings.len(), min_group_bytes));
    if groups.len() <= 1 {
        return match stagings.first_mut() {
            Some(staging) => place_staged(staging, reader, jobs, control),
            None if jobs.is_empty() => Ok(Vec::new()),
            None => Err(jobs[0].error("no staging ring to place through")),
        };
    }
    let starts: Vec<usize> = groups.iter().map(|range| range.start).collect();
    let items = groups.into_iter().zip(stagings.iter_mut());
    let results = run_on_threads(
        items.collect(),
        control,
        |(range, staging): (Range<usize>, &mut S), local| {
            place_staged(staging, reader, &jobs[range], local)
        },
        |i| jobs[starts[i]].error("a placement thread panicked"),
    )?;
    // Dropping what the other groups placed (on an error above) frees it.
    Ok(results.into_iter().flatten().collect())
}

/// Runs `work(item, control)` for each of `items` on a scoped thread of its own, each with a
/// [`Control`] of its own, while this thread relays their progress to `control` and its
/// cancellation to them. A failure in one thread stops the others at their next
/// [`Control::check`]. Returns the results in the order of `items`, or the first real failure
/// (over the cancellations it caused); `panicked(i)` describes item `i`'s thread panicking.
pub fn run_on_threads<I, T>(
    items: Vec<I>,
    control: &mut Control<'_>,
    work: impl Fn(I, &mut Control<'_>) -> Result<T> + Sync,
    panicked: impl Fn(usize) -> Error,
) -> Result<Vec<T>>
where
    I: Send,
    T: Send,
{
    control.check()?;
    let stop = AtomicBool::new(false);
    let placed: Vec<AtomicU64> = items.iter().map(|_| AtomicU64::new(0)).collect();
    let count = items.len();
    let finished = AtomicUsize::new(0);
    let mut cancelled = None;
    let work = &work;
    let results: Vec<Result<T>> = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(count);
        for (item, placed) in items.into_iter().zip(&placed) {
            let (stop, finished) = (&stop, &finished);
            handles.push(scope.spawn(move || {
                let report = |p: Progress| placed.store(p.placed_bytes, Ordering::Relaxed);
                let mut local = Control::new(0, Some(&report), Some(stop));
                let result = work(item, &mut local);
                if result.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                finished.fetch_add(1, Ordering::Release);
                result
            }));
        }
        // Progress and cancellation, on this thread.
        let mut reported = 0u64;
        loop {
            let all_done = finished.load(Ordering::Acquire) == handles.len();
            let now: u64 = placed.iter().map(|p| p.load(Ordering::Relaxed)).sum();
            if now > reported && cancelled.is_none() {
                if let Err(e) = control.advance(now - reported) {
                    stop.store(true, Ordering::Relaxed);
                    cancelled = Some(e);
                }
                reported = now;
            } else if cancelled.is_none() {
                if let Err(e) = control.check() {
                    stop.store(true, Ordering::Relaxed);
                    cancelled = Some(e);
                }
            }
            if all_done {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        handles
            .into_iter()
            .enumerate()
            .map(|(i, handle)| handle.join().unwrap_or_else(|_| Err(panicked(i))))
            .collect()
    });
    // The first real failure wins over the cancellations it caused.
    let mut failure: Option<Error> = None;
    let mut all = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(data) => all.push(data),
            Err(e) => {
                let replaces = failure.as_ref().is_none_or(|f| {
                    matches!(f.kind(), ErrorKind::Cancelled)
                        && !matches!(e.kind(), ErrorKind::Cancelled)
                });
                if replaces {
                    failure = Some(e);
                }
            }
        }
    }
    match failure.or(cancelled) {
        // Dropping what the other threads made frees it.
        Some(e) => Err(e),
        None => Ok(all),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::archive::ByteOrder;
    use crate::location::Device;
    use crate::place::pipeline::HostStaging;

    /// A file of `n` records of `len` bytes each, every other one deflated, and their jobs.
    fn records(n: usize, len: usize) -> (Vec<u8>, Vec<PlacementJob>, Vec<Vec<u8>>) {
        crate::place::testing::records(&vec![len; n], |i| i % 2 == 1, Device::Cuda(Some(0)), 0)
    }

    fn rings(n: usize) -> Vec<HostStaging> {
        (0..n).map(|_| HostStaging::new(2, 64)).collect()
    }

    #[test]
    fn splits_are_contiguous_balanced_and_never_empty() {
        let (_, jobs, _) = records(10, 100);
        assert_eq!(split(&jobs, 1), vec![0..10]);
        assert_eq!(split(&jobs, 2), vec![0..5, 5..10]);
        assert_eq!(split(&jobs, 3), vec![0..4, 4..7, 7..10]);
        assert_eq!(split(&jobs, 10).len(), 10);
        assert_eq!(group_count(&jobs, 4, 250), 4);
        assert_eq!(group_count(&jobs, 4, 400), 2);
        assert_eq!(group_count(&jobs, 4, 10_000), 1);
        assert_eq!(group_count(&jobs[..2], 4, 1), 2);
        assert_eq!(group_count(&[], 4, 1), 1);
        // One huge job first: the rest still get groups of their own.
        let (_, mut jobs, _) = records(4, 10);
        jobs[0].nbytes = 1000;
        assert_eq!(split(&jobs, 3), vec![0..1, 1..2, 2..4]);
    }

    #[test]
    fn every_group_places_its_storages_in_order() {
        let (file, jobs, contents) = records(9, 300);
        let reader = RecordReader::new(&file, "f", ByteOrder::native(), u64::MAX);
        for threads in [1, 2, 3, 4] {
            let mut stagings = rings(threads);
            let mut control = Control::silent(0);
            let placed = place_parallel(&mut stagings, &reader, &jobs, &mut control, 600).unwrap();
            assert_eq!(control.placed_bytes(), 9 * 300, "{threads} threads");
            let got: Vec<_> = placed.iter().map(|d| d.host_bytes().unwrap()).collect();
            assert_eq!(got, contents.iter().map(Vec::as_slice).collect::<Vec<_>>());
            for (i, s) in stagings.iter().enumerate() {
                assert!(s.max_busy > 0, "{threads} threads: ring {i} unused");
                assert_eq!(s.live_buffers(), 0);
            }
        }
    }

    #[test]
    fn a_failure_in_one_group_frees_every_group() {
        let (file, jobs, _) = records(8, 300);
        let reader = RecordReader::new(&file, "f", ByteOrder::native(), u64::MAX);
        let mut stagings = rings(4);
        stagings[2].fail_allocation_of = Some(5);
        let e =
            place_parallel(&mut stagings, &reader, &jobs, &mut Control::silent(0), 1).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Placement { storage, .. } if storage == "5"),
            "{e}"
        );
        assert!(stagings.iter().all(|s| s.live_buffers() == 0));
    }

    #[test]
    fn cancellation_stops_every_group_and_frees_everything() {
        let (file, jobs, _) = records(8, 3000);
        let reader = RecordReader::new(&file, "f", ByteOrder::native(), u64::MAX);
        let mut stagings = rings(4);
        let cancel = AtomicBool::new(false);
        let progress = |p: Progress| {
            if p.placed_bytes > 0 {
                cancel.store(true, Ordering::SeqCst);
            }
        };
        let mut control = Control::new(8 * 3000, Some(&progress), Some(&cancel));
        let e = place_parallel(&mut stagings, &reader, &jobs, &mut control, 1).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Cancelled), "{e}");
        assert!(stagings.iter().all(|s| s.live_buffers() == 0));
    }
}
