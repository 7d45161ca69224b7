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

/// Calls `f` with the view's bytes in C-contiguous order, run by run (trailing dimensions
/// that are contiguous are merged into one run). `bytes` holds the storage's elements from
/// element `first_element` on (the whole storage when it is 0, or just the view's span read
/// back from a device).
pub fn for_each_run(
    meta: &TensorMeta,
    bytes: &[u8],
    first_element: u64,
    f: &mut dyn FnMut(&[u8]),
) -> Result<()> {
    if meta.numel() == 0 {
        return Ok(());
    }
    let size = meta.dtype.element_size() as u64;
    let shape = &meta.shape;
    let stride = &meta.stride;
    let mut run = 1u64;
    let mut outer = shape.len();
    while outer > 0 && stride[outer - 1] == run {
        run *= shape[outer - 1];
        outer -= 1;
    }
    let run_bytes = run * size;
    let mut index = vec![0u64; outer];
    let mut offset = meta
        .storage_offset
        .checked_sub(first_element)
        .ok_or_else(|| Error::invalid_tensor("a view starts before the bytes it was given"))?;
    loop {
        // Views are checked against their storage when parsed and storages against their
        // records when planned, so this never fails; it is still checked, not assumed.
        let start = offset.saturating_mul(size);
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
        // Advance the outer index like an odometer.
        let mut d = outer;
        loop {
            if d == 0 {
                return Ok(());
            }
            d -= 1;
            index[d] += 1;
            offset += stride[d];
            if index[d] < shape[d] {
                break;
            }
            offset -= stride[d] * shape[d];
            index[d] = 0;
        }
    }
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
