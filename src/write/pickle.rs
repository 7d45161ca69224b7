//! The protocol-2 pickle of a `.pt` file's `data.pkl`: an `OrderedDict` of tensors, each a
//! `torch._utils._rebuild_tensor_v2` call (v3 for dtypes without a typed storage class), whose
//! storage is a persistent id `('storage', storage_type, key, 'cpu', numel)` — exactly the
//! globals torch's weights-only unpickler accepts.
//!
//! | call | arguments |
//! |---|---|
//! | `_rebuild_tensor_v2` | `(storage, storage_offset, size, stride, requires_grad, OrderedDict()[, {'conj'/'neg': True}])` |
//! | `_rebuild_tensor_v3` | `(UntypedStorage, storage_offset, size, stride, requires_grad, OrderedDict(), dtype[, metadata])` |
//!
//! No memo is written: storages are shared through their keys (torch's `persistent_load`
//! caches by key), and nothing else is referenced twice.

use crate::torch::{Dtype, TensorMeta};

/// How one storage is named in the pickle.
#[derive(Clone, Debug)]
pub(crate) struct StorageName {
    /// The record key (`data/<key>`).
    pub key: String,
    /// `torch FloatStorage`-style class, or `None` for `torch.storage UntypedStorage`.
    pub class: Option<&'static str>,
    /// Elements of the class's dtype (bytes for UntypedStorage).
    pub numel: u64,
}

/// torch's typed storage class for a dtype (a frozen list; newer dtypes have none).
pub(crate) fn storage_class(dtype: Dtype) -> Option<&'static str> {
    use Dtype::*;
    Some(match dtype {
        Float64 => "DoubleStorage",
        Float32 => "FloatStorage",
        Float16 => "HalfStorage",
        BFloat16 => "BFloat16Storage",
        Int64 => "LongStorage",
        Int32 => "IntStorage",
        Int16 => "ShortStorage",
        Int8 => "CharStorage",
        UInt8 => "ByteStorage",
        Bool => "BoolStorage",
        Complex64 => "ComplexFloatStorage",
        Complex128 => "ComplexDoubleStorage",
        QInt8 => "QInt8Storage",
        QUInt8 => "QUInt8Storage",
        QInt32 => "QInt32Storage",
        QUInt4x2 => "QUInt4x2Storage",
        QUInt2x4 => "QUInt2x4Storage",
        _ => return None,
    })
}

/// Builds the pickle bytes.
pub(crate) struct Pickler {
    out: Vec<u8>,
}

impl Pickler {
    /// Starts `PROTO 2` and the root `OrderedDict()`, with a MARK for its items.
    pub(crate) fn new() -> Self {
        let mut p = Pickler { out: vec![0x80, 2] };
        p.ordered_dict();
        p.out.push(b'('); // MARK
        p
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
    }

    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.out.extend_from_slice(b")R"); // EMPTY_TUPLE REDUCE
    }

    fn str(&mut self, s: &str) {
        self.out.push(b'X'); // BINUNICODE
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: u64) {
        if v < 0x100 {
            self.out.extend_from_slice(&[b'K', v as u8]); // BININT1
        } else if v < 0x1_0000 {
            self.out.push(b'M'); // BININT2
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v <= i32::MAX as u64 {
            self.out.push(b'J'); // BININT
            self.out.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            // LONG1: little-endian two's complement, with a zero byte if the top bit is set.
            let mut bytes = v.to_le_bytes().to_vec();
            while bytes.len() > 1 && bytes[bytes.len() - 1] == 0 && bytes[bytes.len() - 2] < 0x80 {
                bytes.pop();
            }
            if bytes[bytes.len() - 1] >= 0x80 {
                bytes.push(0);
            }
            self.out.extend_from_slice(&[0x8a, bytes.len() as u8]);
            self.out.extend_from_slice(&bytes);
        }
    }

    fn ints(&mut self, values: &[u64]) {
        self.out.push(b'(');
        for &v in values {
            self.int(v);
        }
        self.out.push(b't');
    }

    /// Adds `key: tensor` to the root dict.
    pub(crate) fn tensor(&mut self, key: &str, meta: &TensorMeta, storage: &StorageName) {
        self.str(key);
        let v3 = storage.class.is_none();
        self.global(
            "torch._utils",
            if v3 {
                "_rebuild_tensor_v3"
            } else {
                "_rebuild_tensor_v2"
            },
        );
        self.out.push(b'(');
        // The persistent id.
        self.out.push(b'(');
        self.str("storage");
        match storage.class {
            Some(class) => self.global("torch", class),
            None => self.global("torch.storage", "UntypedStorage"),
        }
        self.str(&storage.key);
        self.str("cpu");
        self.int(storage.numel);
        self.out.extend_from_slice(b"tQ"); // TUPLE BINPERSID
        self.int(meta.storage_offset);
        self.ints(&meta.shape);
        self.ints(&meta.stride);
        self.out.push(if meta.requires_grad { 0x88 } else { 0x89 });
        self.ordered_dict();
        if v3 {
            self.global("torch", meta.dtype.name());
        }
        if meta.conj || meta.neg {
            self.out.extend_from_slice(b"}("); // EMPTY_DICT MARK
            if meta.conj {
                self.str("conj");
                self.out.push(0x88);
            }
            if meta.neg {
                self.str("neg");
                self.out.push(0x88);
            }
            self.out.push(b'u'); // SETITEMS
        }
        self.out.extend_from_slice(b"tR"); // TUPLE REDUCE
    }

    /// Closes the root dict (SETITEMS) and the pickle (STOP).
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(b"u.");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long1_is_minimal_twos_complement() {
        let mut p = Pickler { out: Vec::new() };
        p.int(0x8000_0000);
        assert_eq!(p.out, [0x8a, 5, 0, 0, 0, 0x80, 0]);
        let mut p = Pickler { out: Vec::new() };
        p.int(0x1_0000_0000);
        assert_eq!(p.out, [0x8a, 5, 0, 0, 0, 0, 1]);
        let mut p = Pickler { out: Vec::new() };
        p.int(300);
        assert_eq!(p.out, [b'M', 0x2c, 1]);
    }

    #[test]
    fn one_tensor_reads_back_through_the_torch_layer() {
        let meta = TensorMeta::view(Some(0), Dtype::Float32, vec![2, 3], vec![3, 1], 0);
        let mut p = Pickler::new();
        let name = StorageName {
            key: "0".into(),
            class: storage_class(Dtype::Float32),
            numel: 6,
        };
        p.tensor("w", &meta, &name);
        let bytes = p.finish();
        let options = crate::Loader::new().pickle_options();
        let parsed = crate::torch::parse_pickle(&bytes, "data.pkl", &options).unwrap();
        let t = parsed.root.get_path("w").unwrap().as_tensor().unwrap();
        assert_eq!(t.shape[..], [2, 3]);
        assert_eq!(t.stride[..], [3, 1]);
        assert_eq!(parsed.storages[0].key, "0");
    }
}
