//! A tensor's layout over its storage: the element range a view touches, and the one strided
//! walk that yields its bytes in C-contiguous order. `Tensor` (host and device read-back), the
//! writers and the JS plan all use this, so the rules live in one place.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::torch::TensorMeta;

/// The storage elements `[first, last + 1)` the view touches; empty for a view with no
/// elements. `None` on overflow (a view the parser would have refused).
pub fn element_span(meta: &TensorMeta) -> Option<Range<u64>> {
    if meta.shape.contains(&0) {
        return Some(meta.storage_offset..meta.storage_offset);
    }
    let mut last = meta.storage_offset;
    for (&size, &stride) in meta.shape.iter().zip(&meta.stride) {
        last = last.checked_add(size.checked_sub(1)?.checked_mul(stride)?)?;
    }
    Some(meta.storage_offset..last.checked_add(1)?)
}

/// The byte offsets of a view's runs in C-contiguous order: trailing dimensions that are
/// contiguous are merged into one run of [`Runs::run_bytes`] bytes, and the outer dimensions
/// are walked like an odometer. Offsets count from storage element `first_element` (0: the
/// storage's start). The one strided walk: [`for_each_run`] and the JS `contiguousBytes` use it.
#[derive(Clone, Debug)]
pub struct Runs {
    shape: Vec<u64>,
    stride: Vec<u64>,
    size: u64,
    run_bytes: u64,
    index: Vec<u64>,
    /// The next run's first element (from `first_element`); `None` once done.
    next: Option<u64>,
}

impl Runs {
    /// The runs of `meta`, with offsets from storage element `first_element`; an error when
    /// the view starts before it.
    pub fn new(meta: &TensorMeta, first_element: u64) -> Result<Runs> {
        let size = meta.dtype.element_size() as u64;
        let (shape, stride) = (&meta.shape, &meta.stride);
        let mut run = 1u64;
        let mut outer = shape.len();
        while outer > 0 && stride[outer - 1] == run {
            run = run.saturating_mul(shape[outer - 1]);
            outer -= 1;
        }
        let start = meta
            .storage_offset
            .checked_sub(first_element)
            .ok_or_else(|| Error::invalid_tensor("a view starts before the bytes it was given"))?;
        Ok(Runs {
            shape: shape[..outer].to_vec(),
            stride: stride[..outer].to_vec(),
            size,
            run_bytes: run.saturating_mul(size),
            index: vec![0; outer],
            next: (meta.numel() != 0).then_some(start),
        })
    }

    /// The bytes of each run.
    pub fn run_bytes(&self) -> u64 {
        self.run_bytes
    }

    /// The next runs that differ only in the innermost walked dimension, as one group:
    /// `(first byte, runs, bytes from one run to the next)` — the same runs as [`Iterator`]
    /// yields, for walkers that copy a row of runs per call (the JS `contiguousBytes`).
    pub fn next_group(&mut self) -> Option<(u64, u64, u64)> {
        let first = self.next?;
        let Some(d) = self.shape.len().checked_sub(1) else {
            self.next();
            return Some((first.saturating_mul(self.size), 1, 0));
        };
        let count = self.shape[d] - self.index[d];
        let step = self.stride[d];
        // Stand on the group's last run, then step past it as `next` does.
        self.index[d] = self.shape[d] - 1;
        self.next = Some(first.wrapping_add((count - 1).wrapping_mul(step)));
        self.next();
        Some((
            first.saturating_mul(self.size),
            count,
            step.saturating_mul(self.size),
        ))
    }
}

impl Iterator for Runs {
    /// The run's first byte.
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let offset = self.next?;
        // Advance the outer index like an odometer.
        let mut at = offset;
        let mut d = self.shape.len();
        self.next = loop {
            if d == 0 {
                break None;
            }
            d -= 1;
            self.index[d] += 1;
            at = at.wrapping_add(self.stride[d]);
            if self.index[d] < self.shape[d] {
                break Some(at);
            }
            at = at.wrapping_sub(self.stride[d].wrapping_mul(self.shape[d]));
            self.index[d] = 0;
        };
        Some(offset.saturating_mul(self.size))
    }
}

/// Calls `f` with the view's bytes in C-contiguous order, run by run ([`Runs`]). `bytes` holds
/// the storage's elements from element `first_element` on (the whole storage when it is 0, or
/// just the view's span read back from a device).
pub fn for_each_run(
    meta: &TensorMeta,
    bytes: &[u8],
    first_element: u64,
    f: &mut dyn FnMut(&[u8]),
) -> Result<()> {
    let runs = Runs::new(meta, first_element)?;
    let run_bytes = runs.run_bytes();
    for start in runs {
        // Views are checked against their storage when parsed and storages against their
        // records when planned, so this never fails; it is still checked, not assumed.
        let run = usize::try_from(start)
            .ok()
            .zip(usize::try_from(start.saturating_add(run_bytes)).ok())
            .and_then(|(a, b)| bytes.get(a..b))
            .ok_or_else(|| {
                Error::invalid_tensor(format!(
                    "a view reaches byte {} of a {}-byte storage",
                    start.saturating_add(run_bytes),
                    bytes.len()
                ))
            })?;
        f(run);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torch::Dtype;

    fn collect(meta: &TensorMeta, bytes: &[u8], first: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for_each_run(meta, bytes, first, &mut |r| out.extend_from_slice(r)).unwrap();
        out
    }

    #[test]
    fn span_of_views() {
        let t = TensorMeta::view(Some(0), Dtype::UInt8, vec![2, 3], vec![1, 2], 4);
        assert_eq!(element_span(&t), Some(4..10));
        let e = TensorMeta::view(Some(0), Dtype::UInt8, vec![4, 3], vec![0, 1], 2);
        assert_eq!(element_span(&e), Some(2..5));
        let z = TensorMeta::view(Some(0), Dtype::UInt8, vec![3, 0], vec![1, 1], 7);
        assert_eq!(element_span(&z), Some(7..7));
        let s = TensorMeta::view(Some(0), Dtype::UInt8, vec![], vec![], 9);
        assert_eq!(element_span(&s), Some(9..10));
    }

    /// The runs of `groups` (`next_group`'s triples) one by one.
    fn expand(groups: &[(u64, u64, u64)]) -> Vec<u64> {
        groups
            .iter()
            .flat_map(|&(first, count, step)| (0..count).map(move |i| first + i * step))
            .collect()
    }

    #[test]
    fn groups_are_the_iterator_s_runs_row_by_row() {
        // float32 views: transposed, stepped in both dimensions, 3-d with a contiguous inner
        // run, a scalar and an empty one.
        for (shape, stride, offset) in [
            (vec![3, 2], vec![1, 3], 4),
            (vec![2, 2], vec![12, 3], 1),
            (vec![2, 3, 4], vec![24, 4, 1], 2),
            (vec![4, 2, 3], vec![1, 12, 4], 0),
            (vec![], vec![], 5),
            (vec![3, 0], vec![1, 1], 0),
        ] {
            let t = TensorMeta::view(Some(0), Dtype::Float32, shape, stride, offset);
            let runs: Vec<u64> = Runs::new(&t, 0).unwrap().collect();
            let mut walker = Runs::new(&t, 0).unwrap();
            let groups: Vec<_> = std::iter::from_fn(|| walker.next_group()).collect();
            assert_eq!(expand(&groups), runs, "{:?} {:?}", t.shape, t.stride);
            // A walk may switch from runs to groups mid-row: the group holds the row's rest.
            let mut walker = Runs::new(&t, 0).unwrap();
            let mut mixed: Vec<u64> = walker.next().into_iter().collect();
            let groups: Vec<_> = std::iter::from_fn(|| walker.next_group()).collect();
            mixed.extend(expand(&groups));
            assert_eq!(mixed, runs, "mixed, {:?} {:?}", t.shape, t.stride);
        }
    }

    #[test]
    fn transposed_view_walks_in_c_order_from_a_partial_span() {
        let storage: Vec<u8> = (0..12).collect();
        // .t() of a 2x3 at offset 4: shape [3, 2], stride [1, 3].
        let t = TensorMeta::view(Some(0), Dtype::UInt8, vec![3, 2], vec![1, 3], 4);
        assert_eq!(collect(&t, &storage, 0), [4, 7, 5, 8, 6, 9]);
        let span = element_span(&t).unwrap();
        let part = &storage[span.start as usize..span.end as usize];
        assert_eq!(collect(&t, part, span.start), [4, 7, 5, 8, 6, 9]);
    }

    #[test]
    fn runs_merge_trailing_contiguous_dimensions() {
        // [2, 3, 4] float32 with its middle dimension strided by 8: runs of 4 elements.
        let t = TensorMeta::view(Some(0), Dtype::Float32, vec![2, 3, 4], vec![24, 8, 1], 2);
        let runs = Runs::new(&t, 0).unwrap();
        assert_eq!(runs.run_bytes(), 16);
        let starts: Vec<u64> = runs.collect();
        assert_eq!(starts, [8, 40, 72, 104, 136, 168]);
        // Contiguous: one run; no elements: none.
        let c = TensorMeta::view(Some(0), Dtype::Int16, vec![3, 5], vec![5, 1], 1);
        let runs = Runs::new(&c, 1).unwrap();
        assert_eq!((runs.run_bytes(), runs.collect::<Vec<_>>()), (30, vec![0]));
        let z = TensorMeta::view(Some(0), Dtype::Int16, vec![3, 0], vec![1, 1], 0);
        assert_eq!(Runs::new(&z, 0).unwrap().count(), 0);
        let s = TensorMeta::view(Some(0), Dtype::Float64, vec![], vec![], 3);
        assert_eq!(Runs::new(&s, 0).unwrap().collect::<Vec<_>>(), [24]);
        assert!(Runs::new(&s, 4).is_err());
    }

    #[test]
    fn groups_are_the_runs_row_by_row() {
        for (shape, stride, offset) in [
            (vec![3, 4, 2], vec![1, 6, 3], 1),
            (vec![2, 3, 4], vec![24, 8, 1], 2),
            (vec![5], vec![2], 0),
            (vec![3, 5], vec![5, 1], 0),
            (vec![], vec![], 3),
            (vec![2, 0], vec![1, 1], 0),
        ] {
            let t = TensorMeta::view(Some(0), Dtype::Int16, shape, stride, offset);
            let runs: Vec<u64> = Runs::new(&t, 0).unwrap().collect();
            let mut walker = Runs::new(&t, 0).unwrap();
            let mut grouped = Vec::new();
            while let Some((first, count, step)) = walker.next_group() {
                grouped.extend((0..count).map(|k| first + k * step));
            }
            assert_eq!(grouped, runs, "{t:?}");
        }
    }

    #[test]
    fn a_view_past_its_bytes_is_an_error() {
        let t = TensorMeta::view(Some(0), Dtype::Float32, vec![4], vec![1], 0);
        let err = for_each_run(&t, &[0; 12], 0, &mut |_| {}).unwrap_err();
        assert!(
            err.to_string()
                .contains("reaches byte 16 of a 12-byte storage"),
            "{err}"
        );
    }
}
