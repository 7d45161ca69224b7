//! Reading a storage's record for a placer: in place when its bytes need no conversion,
//! otherwise as a stream that inflates (deflated zip entries) and byte-swaps (big-endian files)
//! chunk by chunk into the placer's own buffer, so a whole record is never held in memory.

use std::io::Read;

use flate2::read::DeflateDecoder;

use super::PlacementJob;
use crate::archive::{ByteOrder, Method, Record};
use crate::error::{Error, Result};
use crate::source::ByteSource;

/// Reads the records of one load's source.
#[derive(Clone, Copy)]
pub struct RecordReader<'s> {
    source: &'s [u8],
    name: &'s str,
    byte_order: ByteOrder,
    max_record_bytes: u64,
}

impl<'s> RecordReader<'s> {
    /// A reader over the whole file `source` (named `name` in errors) whose tensor data is in
    /// `byte_order`; deflated records larger than `max_record_bytes` are refused.
    pub fn new(
        source: &'s [u8],
        name: &'s str,
        byte_order: ByteOrder,
        max_record_bytes: u64,
    ) -> Self {
        RecordReader {
            source,
            name,
            byte_order,
            max_record_bytes,
        }
    }

    /// The source's name, for error messages.
    pub fn source_name(&self) -> &str {
        self.name
    }

    /// The byte order of the file's tensor data.
    pub fn byte_order(&self) -> ByteOrder {
        self.byte_order
    }

    /// Whether the job's bytes must be swapped on their way to the host's byte order.
    pub fn needs_swap(&self, job: &PlacementJob) -> bool {
        super::needs_swap(self.byte_order, job.swap_unit)
    }

    /// The record's bytes in place, when they need no conversion: stored (not deflated), and
    /// in host byte order (or of a 1-byte swap unit). Alignment is not checked: a placer that
    /// needs aligned bytes checks the address itself.
    pub fn borrow(&self, job: &PlacementJob) -> Option<&'s [u8]> {
        if job.record.method != Method::Stored || self.needs_swap(job) {
            return None;
        }
        let bytes = self.raw(&job.record).ok()?;
        (bytes.len() as u64 == job.nbytes).then_some(bytes)
    }

    /// The storage's bytes in host byte order, front to back.
    pub fn stream(&self, job: &PlacementJob) -> Result<RecordStream<'s>> {
        let record = &job.record;
        let input = match self.stored(job)? {
            Some(raw) => Input::Stored(raw),
            None => {
                record.check_inflated_size(self.max_record_bytes)?;
                Input::Deflated(Box::new(DeflateDecoder::new(self.raw(record)?)))
            }
        };
        Ok(RecordStream {
            input,
            record: record.clone(),
            remaining: record.size,
            swap_unit: self.swap_unit(job),
        })
    }

    /// A stored record's bytes as the file holds them (in the file's byte order: swap them by
    /// [`RecordReader::swap_unit`]), checked against the directory and the storage's size, so
    /// that a placer can copy them in pieces, in any order; `None` for a deflated record.
    pub fn stored(&self, job: &PlacementJob) -> Result<Option<&'s [u8]>> {
        let record = &job.record;
        let raw = self.raw(record)?;
        if record.size != job.nbytes {
            return Err(job.error(format!(
                "record '{}' holds {} bytes, but the storage needs {}",
                record.name, record.size, job.nbytes
            )));
        }
        match record.method {
            Method::Deflated => Ok(None),
            Method::Stored if raw.len() as u64 != record.size => Err(record.error(format!(
                "stored entry holds {} bytes, but the directory declares {}",
                raw.len(),
                record.size
            ))),
            Method::Stored => Ok(Some(raw)),
        }
    }

    /// The unit the job's bytes are reversed in on their way to the host (1: none).
    pub fn swap_unit(&self, job: &PlacementJob) -> usize {
        if self.needs_swap(job) {
            job.swap_unit
        } else {
            1
        }
    }

    fn raw(&self, record: &Record) -> Result<&'s [u8]> {
        ByteSource::get(self.source, record.data_offset, record.stored_len)
    }
}

enum Input<'s> {
    Stored(&'s [u8]),
    Deflated(Box<DeflateDecoder<&'s [u8]>>),
}

/// A storage's bytes in host byte order, read front to back into the caller's buffers.
pub struct RecordStream<'s> {
    input: Input<'s>,
    record: Record,
    remaining: u64,
    swap_unit: usize,
}

impl RecordStream<'_> {
    /// Bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Fills the front of `dst` with the next bytes and returns how many (0 at the end). All
    /// of `dst` is filled unless the record ends first. With a `dst` length that is a multiple
    /// of 16, byte swaps never straddle two calls (a partial unit is left as it is, as at the
    /// end of a record).
    pub fn read(&mut self, dst: &mut [u8]) -> Result<usize> {
        let n = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(dst.len());
        let dst = &mut dst[..n];
        match &mut self.input {
            Input::Stored(rest) => {
                let (head, tail) = rest.split_at(n);
                dst.copy_from_slice(head);
                *rest = tail;
            }
            Input::Deflated(decoder) => {
                let mut filled = 0;
                while filled < n {
                    let got = decoder.read(&mut dst[filled..]).map_err(|e| {
                        self.record.error(format!("deflate stream is corrupt: {e}"))
                    })?;
                    if got == 0 {
                        return Err(self.record.error(format!(
                            "deflate stream holds {} bytes, but the directory declares {}",
                            self.record.size - self.remaining + filled as u64,
                            self.record.size
                        )));
                    }
                    filled += got;
                }
                if self.remaining == n as u64 {
                    // The end: the stream must not hold more than the directory declares.
                    let mut extra = [0u8; 1];
                    let more = decoder.read(&mut extra).map_err(|e| {
                        self.record.error(format!("deflate stream is corrupt: {e}"))
                    })?;
                    if more > 0 {
                        return Err(self.too_long());
                    }
                }
            }
        }
        if self.swap_unit > 1 {
            for unit in dst.chunks_exact_mut(self.swap_unit) {
                unit.reverse();
            }
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    fn too_long(&self) -> Error {
        self.record.error(format!(
            "deflate stream holds more than {} bytes, but the directory declares {}",
            self.record.size, self.record.size
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::location::Device;
    use crate::torch::Dtype;

    fn job(record: Record, swap_unit: usize) -> PlacementJob {
        PlacementJob {
            index: 0,
            key: "0".into(),
            dtype: Dtype::Float32,
            nbytes: record.size,
            device: Device::Cpu,
            record,
            swap_unit,
        }
    }

    fn record(method: Method, data_offset: u64, stored_len: u64, size: u64) -> Record {
        Record {
            name: "archive/data/0".into(),
            data_offset,
            stored_len,
            size,
            method,
        }
    }

    fn read_all(stream: &mut RecordStream<'_>, chunk: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn stored_little_endian_is_borrowed_and_streamed_unchanged() {
        let file: Vec<u8> = (0..64u8).collect();
        let reader = RecordReader::new(&file, "f", ByteOrder::native(), u64::MAX);
        let j = job(record(Method::Stored, 8, 32, 32), 4);
        assert_eq!(reader.borrow(&j), Some(&file[8..40]));
        let mut s = reader.stream(&j).unwrap();
        assert_eq!(read_all(&mut s, 16).unwrap(), &file[8..40]);
        assert_eq!(s.remaining(), 0);
    }

    #[test]
    fn other_byte_order_is_swapped_by_unit_across_chunks() {
        let other = match ByteOrder::native() {
            ByteOrder::Little => ByteOrder::Big,
            ByteOrder::Big => ByteOrder::Little,
        };
        let file: Vec<u8> = (0..48u8).collect();
        let reader = RecordReader::new(&file, "f", other, u64::MAX);
        let j = job(record(Method::Stored, 0, 48, 48), 8);
        assert_eq!(reader.borrow(&j), None);
        let mut expected = file.clone();
        for unit in expected.chunks_exact_mut(8) {
            unit.reverse();
        }
        for chunk in [16, 32, 64] {
            let mut s = reader.stream(&j).unwrap();
            assert_eq!(read_all(&mut s, chunk).unwrap(), expected, "chunk {chunk}");
        }
        // A 1-byte swap unit never swaps, so it can be borrowed.
        assert_eq!(
            reader.borrow(&job(record(Method::Stored, 0, 48, 48), 1)),
            Some(&file[..])
        );
    }

    #[test]
    fn deflated_records_inflate_chunk_by_chunk() {
        let data: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 251) as u8..=(i % 251) as u8)
            .collect();
        let packed = deflate(&data);
        let mut file = vec![0xAAu8; 5];
        file.extend_from_slice(&packed);
        let reader = RecordReader::new(&file, "f", ByteOrder::native(), u64::MAX);
        let j = job(
            record(Method::Deflated, 5, packed.len() as u64, data.len() as u64),
            4,
        );
        assert_eq!(reader.borrow(&j), None);
        let mut s = reader.stream(&j).unwrap();
        assert_eq!(read_all(&mut s, 4096).unwrap(), data);
    }

    #[test]
    fn deflated_stream_shorter_or_longer_than_declared_is_an_error() {
        let data = vec![7u8; 1000];
        let packed = deflate(&data);
        let reader = RecordReader::new(&packed, "f", ByteOrder::native(), u64::MAX);
        let short = job(record(Method::Deflated, 0, packed.len() as u64, 1016), 1);
        let err = read_all(&mut reader.stream(&short).unwrap(), 64).unwrap_err();
        assert!(
            err.to_string()
                .contains("deflate stream holds 1000 bytes, but the directory declares 1016"),
            "{err}"
        );
        let long = job(record(Method::Deflated, 0, packed.len() as u64, 992), 1);
        let err = read_all(&mut reader.stream(&long).unwrap(), 64).unwrap_err();
        assert!(
            err.to_string().contains("holds more than 992 bytes"),
            "{err}"
        );
    }

    #[test]
    fn deflated_records_over_the_limit_are_refused_before_reading() {
        let packed = deflate(&[0u8; 4096]);
        let reader = RecordReader::new(&packed, "f", ByteOrder::native(), 1024);
        let j = job(record(Method::Deflated, 0, packed.len() as u64, 4096), 1);
        let err = reader.stream(&j).err().unwrap();
        assert!(err.to_string().contains("max_record_bytes"), "{err}");
        // An impossible ratio is refused too, whatever the limit.
        let reader = RecordReader::new(&packed, "f", ByteOrder::native(), u64::MAX);
        let bomb = job(record(Method::Deflated, 0, 2, 1 << 40), 1);
        let err = reader.stream(&bomb).err().unwrap();
        assert!(
            err.to_string().contains("more than 2 compressed bytes"),
            "{err}"
        );
    }

    #[test]
    fn a_record_past_the_end_of_the_file_is_an_error() {
        let file = vec![0u8; 16];
        let reader = RecordReader::new(&file, "f", ByteOrder::native(), u64::MAX);
        let j = job(record(Method::Stored, 8, 16, 16), 1);
        assert_eq!(reader.borrow(&j), None);
        assert!(reader.stream(&j).is_err());
    }
}
