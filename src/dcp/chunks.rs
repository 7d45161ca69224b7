//! Chunk geometry of a distributed checkpoint: checks that a tensor's chunks tile it exactly
//! (inside its bounds, none overlapping, every element covered), and plans which bytes of
//! which chunk land where in a requested block — only bytes inside the block are ever named.

use std::ops::Range;

use super::metadata::{chunk_error, Chunk};
use crate::error::Result;

/// Checks that `chunks` tile a tensor of `shape`: each inside it, no two overlapping, and
/// together covering every element.
pub fn check_layout(fqn: &str, shape: &[u64], chunks: &[Chunk]) -> Result<()> {
    let numel = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(|| chunk_error(fqn, format!("the size {shape:?} overflows")))?;
    let mut covered = 0u64;
    for chunk in chunks {
        if chunk.offsets.len() != shape.len() || chunk.sizes.len() != shape.len() {
            return Err(chunk_error(
                fqn,
                format!(
                    "the chunk at offsets {:?} with sizes {:?} does not have the tensor's {} dimensions",
                    chunk.offsets,
                    chunk.sizes,
                    shape.len()
                ),
            ));
        }
        for ((&o, &s), &d) in chunk.offsets.iter().zip(&chunk.sizes).zip(shape) {
            if o.checked_add(s).is_none_or(|end| end > d) {
                return Err(chunk_error(
                    fqn,
                    format!(
                        "the chunk at offsets {:?} with sizes {:?} reaches past the tensor's size {shape:?}",
                        chunk.offsets, chunk.sizes
                    ),
                ));
            }
        }
        // Inside the tensor, so its volume is at most numel: no overflow.
        covered = covered.saturating_add(chunk.sizes.iter().product::<u64>());
    }
    if let Some((a, b)) = first_overlap(chunks, shape.len()) {
        return Err(chunk_error(
            fqn,
            format!(
                "chunks overlap: offsets {:?} sizes {:?} and offsets {:?} sizes {:?}",
                a.offsets, a.sizes, b.offsets, b.sizes
            ),
        ));
    }
    // Disjoint and inside: they cover everything exactly when their volumes add up.
    if covered != numel {
        return Err(chunk_error(
            fqn,
            format!(
                "the chunks cover {covered} of the tensor's {numel} elements (size {shape:?}): part of it is in no chunk"
            ),
        ));
    }
    Ok(())
}

/// Two chunks that overlap, found by a sweep along the dimension with the most distinct chunk
/// starts (row shards, column shards and 2-d blocks then compare each chunk with few others).
fn first_overlap(chunks: &[Chunk], rank: usize) -> Option<(&Chunk, &Chunk)> {
    let nonempty: Vec<&Chunk> = chunks
        .iter()
        .filter(|c| c.sizes.iter().all(|&s| s > 0))
        .collect();
    let dim = (0..rank).max_by_key(|&d| {
        let mut starts: Vec<u64> = nonempty.iter().map(|c| c.offsets[d]).collect();
        starts.sort_unstable();
        starts.dedup();
        starts.len()
    })?;
    let mut order = nonempty;
    order.sort_by_key(|c| c.offsets[dim]);
    // Chunks whose extent along `dim` may still reach the next chunk's start.
    let mut active: Vec<&Chunk> = Vec::new();
    for chunk in order {
        let start = chunk.offsets[dim];
        active.retain(|a| a.offsets[dim] + a.sizes[dim] > start);
        if let Some(a) = active.iter().find(|a| overlaps(a, chunk)) {
            return Some((a, chunk));
        }
        active.push(chunk);
    }
    None
}

fn overlaps(a: &Chunk, b: &Chunk) -> bool {
    a.offsets
        .iter()
        .zip(&a.sizes)
        .zip(b.offsets.iter().zip(&b.sizes))
        .all(|((&ao, &asz), (&bo, &bsz))| ao.max(bo) < (ao + asz).min(bo + bsz))
}

/// How one stored chunk's tensor lies in its file.
#[derive(Clone, Debug)]
pub struct ChunkView {
    /// Strides of the saved tensor, in elements.
    pub stride: Vec<u64>,
    /// Its storage offset, in elements.
    pub storage_offset: u64,
    /// Absolute offset in the file of the storage's first byte.
    pub data_offset: u64,
    /// Bytes per element.
    pub element_size: u64,
    /// Swap each element's bytes in units of this after reading (1: never).
    pub swap_unit: usize,
}

/// One contiguous read: `len` bytes at `offset` of file `file` go to byte `dst` of the block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    /// Index of the file in the folder's file list.
    pub file: usize,
    /// Absolute offset in that file.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Offset in the block's C-contiguous bytes.
    pub dst: u64,
    /// Byte-swap unit for these bytes (1: none).
    pub swap_unit: usize,
}

/// Appends the copies that bring the part of `chunk` inside `block` into the block's
/// C-contiguous bytes. Runs along the last dimension are read whole when the chunk stores it
/// with stride 1; adjacent reads are merged.
pub fn plan_copies(
    block: &[Range<u64>],
    chunk: &Chunk,
    view: &ChunkView,
    file: usize,
    out: &mut Vec<Copy>,
) {
    let rank = block.len();
    let lo: Vec<u64> = (0..rank)
        .map(|d| block[d].start.max(chunk.offsets[d]))
        .collect();
    let hi: Vec<u64> = (0..rank)
        .map(|d| block[d].end.min(chunk.offsets[d] + chunk.sizes[d]))
        .collect();
    if (0..rank).any(|d| lo[d] >= hi[d]) {
        return;
    }
    // C-contiguous strides of the block.
    let mut out_stride = vec![1u64; rank];
    for d in (0..rank.saturating_sub(1)).rev() {
        out_stride[d] = out_stride[d + 1] * (block[d + 1].end - block[d + 1].start);
    }
    let es = view.element_size;
    // The last dimension is one run when it is stored with stride 1.
    let run_dim = match rank {
        0 => None,
        _ if view.stride[rank - 1] == 1 => Some(rank - 1),
        _ => None,
    };
    let outer = run_dim.unwrap_or(rank);
    let run = run_dim.map_or(1, |d| hi[d] - lo[d]);
    let mut index = lo.clone();
    loop {
        let src: u64 = view.storage_offset
            + (0..rank)
                .map(|d| (index[d] - chunk.offsets[d]) * view.stride[d])
                .sum::<u64>();
        let dst: u64 = (0..rank)
            .map(|d| (index[d] - block[d].start) * out_stride[d])
            .sum();
        push(
            out,
            Copy {
                file,
                offset: view.data_offset + src * es,
                len: run * es,
                dst: dst * es,
                swap_unit: view.swap_unit,
            },
        );
        // Odometer over the outer dimensions.
        let mut d = outer;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < hi[d] {
                break;
            }
            index[d] = lo[d];
        }
    }
}

fn push(out: &mut Vec<Copy>, copy: Copy) {
    if let Some(last) = out.last_mut() {
        if last.file == copy.file
            && last.swap_unit == copy.swap_unit
            && last.offset + last.len == copy.offset
            && last.dst + last.len == copy.dst
        {
            last.len += copy.len;
            return;
        }
    }
    out.push(copy);
}

#[cfg(test)]
mod tests {
    use super::super::metadata::Item;
    use super::*;

    fn chunk(offsets: &[u64], sizes: &[u64]) -> Chunk {
        Chunk {
            offsets: offsets.to_vec(),
            sizes: sizes.to_vec(),
            item: Item {
                file: "f".into(),
                offset: 0,
                length: 0,
            },
        }
    }

    #[test]
    fn layouts() {
        let rows = [chunk(&[0, 0], &[3, 4]), chunk(&[3, 0], &[2, 4])];
        assert!(check_layout("t", &[5, 4], &rows).is_ok());
        let overlap = [chunk(&[0, 0], &[3, 4]), chunk(&[2, 0], &[2, 4])];
        let e = check_layout("t", &[5, 4], &overlap)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "key 't' of the distributed checkpoint: chunks overlap: offsets [0, 0] sizes [3, 4] and offsets [2, 0] sizes [2, 4]"
        );
        let gap = [chunk(&[0, 0], &[3, 4])];
        let e = check_layout("t", &[5, 4], &gap).unwrap_err().to_string();
        assert!(e.ends_with("the chunks cover 12 of the tensor's 20 elements (size [5, 4]): part of it is in no chunk"), "{e}");
        let past = [chunk(&[0, 0], &[6, 4])];
        assert!(check_layout("t", &[5, 4], &past)
            .unwrap_err()
            .to_string()
            .contains("reaches past"));
        // A 2x2 mesh of blocks, uneven; then one block moved onto its neighbour.
        let mut mesh = vec![
            chunk(&[0, 0], &[3, 2]),
            chunk(&[0, 2], &[3, 3]),
            chunk(&[3, 0], &[2, 2]),
            chunk(&[3, 2], &[2, 3]),
        ];
        assert!(check_layout("t", &[5, 5], &mesh).is_ok());
        mesh[3].offsets = vec![2, 2];
        let e = check_layout("t", &[5, 5], &mesh).unwrap_err().to_string();
        assert!(e.contains("chunks overlap"), "{e}");
        // Two copies of a scalar: no overlap check in 0 dimensions, but the count is wrong.
        let e = check_layout("t", &[], &[chunk(&[], &[]), chunk(&[], &[])]).unwrap_err();
        assert!(
            e.to_string().contains("cover 2 of the tensor's 1 elements"),
            "{e}"
        );
        // Empty tensors and scalars.
        assert!(check_layout("t", &[0, 3], &[chunk(&[0, 0], &[0, 3])]).is_ok());
        assert!(check_layout("t", &[], &[chunk(&[], &[])]).is_ok());
    }

    #[test]
    fn copies_read_only_the_block() {
        // A 3x4 float32 chunk at rows 3..6 of a tensor, stored contiguously at byte 100.
        let c = chunk(&[3, 0], &[3, 4]);
        let view = ChunkView {
            stride: vec![4, 1],
            storage_offset: 0,
            data_offset: 100,
            element_size: 4,
            swap_unit: 1,
        };
        let mut out = Vec::new();
        // Rows 4..8 (only 4, 5 are in the chunk), all columns: one merged read.
        plan_copies(&[4..8, 0..4], &c, &view, 0, &mut out);
        assert_eq!(
            out,
            [Copy {
                file: 0,
                offset: 116,
                len: 32,
                dst: 0,
                swap_unit: 1
            }]
        );
        // Columns 1..3 of every row: one 8-byte read per row.
        out.clear();
        plan_copies(&[0..6, 1..3], &c, &view, 0, &mut out);
        let reads: Vec<_> = out.iter().map(|c| (c.offset, c.len, c.dst)).collect();
        assert_eq!(reads, [(104, 8, 24), (120, 8, 32), (136, 8, 40)]);
        // A transposed chunk: element by element.
        let t = ChunkView {
            stride: vec![1, 3],
            ..view
        };
        out.clear();
        plan_copies(&[3..5, 0..2], &c, &t, 0, &mut out);
        let reads: Vec<_> = out.iter().map(|c| (c.offset, c.dst)).collect();
        assert_eq!(reads, [(100, 0), (112, 4), (104, 8), (116, 12)]);
        // Outside the chunk: nothing.
        out.clear();
        plan_copies(&[0..3, 0..4], &c, &view, 0, &mut out);
        assert!(out.is_empty());
    }
}
