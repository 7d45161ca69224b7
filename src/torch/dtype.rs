//! Every dtype a `torch.save` file can hold (spec §8), with its element size, torch's name, and
//! the storage classes (`torch FloatStorage`, …) that name it.
//!
//! `Dtype` is exhaustive on purpose (as burn's `DType`): a converter that matches on it should
//! fail to compile when a dtype is added, rather than silently mishandle one.

use std::fmt;

/// A tensor element type, named as torch names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// `torch.float64`
    Float64,
    /// `torch.float32`
    Float32,
    /// `torch.float16`
    Float16,
    /// `torch.bfloat16`
    BFloat16,
    /// `torch.float8_e4m3fn`
    Float8E4M3Fn,
    /// `torch.float8_e5m2`
    Float8E5M2,
    /// `torch.float8_e4m3fnuz`
    Float8E4M3FnUz,
    /// `torch.float8_e5m2fnuz`
    Float8E5M2FnUz,
    /// `torch.float8_e8m0fnu`
    Float8E8M0Fnu,
    /// `torch.float4_e2m1fn_x2` (two 4-bit values per byte)
    Float4E2M1FnX2,
    /// `torch.complex32` (two float16 halves)
    Complex32,
    /// `torch.bcomplex32` (two bfloat16 halves; experimental in torch)
    BComplex32,
    /// `torch.complex64` (two float32 halves)
    Complex64,
    /// `torch.complex128` (two float64 halves)
    Complex128,
    /// `torch.int8`
    Int8,
    /// `torch.int16`
    Int16,
    /// `torch.int32`
    Int32,
    /// `torch.int64`
    Int64,
    /// `torch.uint8`
    UInt8,
    /// `torch.uint16`
    UInt16,
    /// `torch.uint32`
    UInt32,
    /// `torch.uint64`
    UInt64,
    /// `torch.bool` (one byte, 0 or 1)
    Bool,
    /// `torch.qint8` (quantized; raw int8 values)
    QInt8,
    /// `torch.quint8` (quantized; raw uint8 values)
    QUInt8,
    /// `torch.qint32` (quantized; raw int32 values)
    QInt32,
    /// `torch.quint4x2` (quantized, two 4-bit values per byte)
    QUInt4x2,
    /// `torch.quint2x4` (quantized, four 2-bit values per byte)
    QUInt2x4,
    /// `torch.bits8`
    Bits8,
    /// `torch.bits16`
    Bits16,
    /// `torch.bits1x8`
    Bits1x8,
    /// `torch.bits2x4`
    Bits2x4,
    /// `torch.bits4x2`
    Bits4x2,
}

/// All dtypes, in the order of the table in spec §8.
pub const ALL_DTYPES: [Dtype; 33] = [
    Dtype::Float64,
    Dtype::Float32,
    Dtype::Float16,
    Dtype::BFloat16,
    Dtype::Float8E4M3Fn,
    Dtype::Float8E5M2,
    Dtype::Float8E4M3FnUz,
    Dtype::Float8E5M2FnUz,
    Dtype::Float8E8M0Fnu,
    Dtype::Float4E2M1FnX2,
    Dtype::Complex32,
    Dtype::BComplex32,
    Dtype::Complex64,
    Dtype::Complex128,
    Dtype::Int8,
    Dtype::Int16,
    Dtype::Int32,
    Dtype::Int64,
    Dtype::UInt8,
    Dtype::UInt16,
    Dtype::UInt32,
    Dtype::UInt64,
    Dtype::Bool,
    Dtype::QInt8,
    Dtype::QUInt8,
    Dtype::QInt32,
    Dtype::QUInt4x2,
    Dtype::QUInt2x4,
    Dtype::Bits8,
    Dtype::Bits16,
    Dtype::Bits1x8,
    Dtype::Bits2x4,
    Dtype::Bits4x2,
];

impl Dtype {
    /// Bytes per element as torch stores it (packed sub-byte types count one byte).
    pub fn element_size(self) -> usize {
        use Dtype::*;
        match self {
            Float64 | Int64 | UInt64 | Complex64 => 8,
            Complex128 => 16,
            Float32 | Int32 | UInt32 | QInt32 | Complex32 | BComplex32 => 4,
            Float16 | BFloat16 | Int16 | UInt16 | Bits16 => 2,
            Float8E4M3Fn | Float8E5M2 | Float8E4M3FnUz | Float8E5M2FnUz | Float8E8M0Fnu
            | Float4E2M1FnX2 | Int8 | UInt8 | Bool | QInt8 | QUInt8 | QUInt4x2 | QUInt2x4
            | Bits8 | Bits1x8 | Bits2x4 | Bits4x2 => 1,
        }
    }

    /// The unit a byte-order swap works in: the element size, or half of it for complex types
    /// (each real/imaginary half is swapped on its own). 1 means "never swap".
    pub fn swap_unit(self) -> usize {
        if self.is_complex() {
            self.element_size() / 2
        } else {
            self.element_size()
        }
    }

    /// Whether the dtype is one of torch's complex types.
    pub fn is_complex(self) -> bool {
        matches!(
            self,
            Dtype::Complex32 | Dtype::BComplex32 | Dtype::Complex64 | Dtype::Complex128
        )
    }

    /// Whether a tensor of this dtype may require gradients: torch's floating-point and complex
    /// types (float8 and float4 included, as torch 2.15 allows `requires_grad_()` on them).
    pub fn can_require_grad(self) -> bool {
        use Dtype::*;
        self.is_complex()
            || matches!(
                self,
                Float64
                    | Float32
                    | Float16
                    | BFloat16
                    | Float8E4M3Fn
                    | Float8E5M2
                    | Float8E4M3FnUz
                    | Float8E5M2FnUz
                    | Float8E8M0Fnu
                    | Float4E2M1FnX2
            )
    }

    /// Whether the dtype is one of torch's quantized types.
    pub fn is_quantized(self) -> bool {
        use Dtype::*;
        matches!(self, QInt8 | QUInt8 | QInt32 | QUInt4x2 | QUInt2x4)
    }

    /// torch's name without the `torch.` prefix: `float32`, `bfloat16`, `float8_e4m3fn`, …
    pub fn name(self) -> &'static str {
        use Dtype::*;
        match self {
            Float64 => "float64",
            Float32 => "float32",
            Float16 => "float16",
            BFloat16 => "bfloat16",
            Float8E4M3Fn => "float8_e4m3fn",
            Float8E5M2 => "float8_e5m2",
            Float8E4M3FnUz => "float8_e4m3fnuz",
            Float8E5M2FnUz => "float8_e5m2fnuz",
            Float8E8M0Fnu => "float8_e8m0fnu",
            Float4E2M1FnX2 => "float4_e2m1fn_x2",
            Complex32 => "complex32",
            BComplex32 => "bcomplex32",
            Complex64 => "complex64",
            Complex128 => "complex128",
            Int8 => "int8",
            Int16 => "int16",
            Int32 => "int32",
            Int64 => "int64",
            UInt8 => "uint8",
            UInt16 => "uint16",
            UInt32 => "uint32",
            UInt64 => "uint64",
            Bool => "bool",
            QInt8 => "qint8",
            QUInt8 => "quint8",
            QInt32 => "qint32",
            QUInt4x2 => "quint4x2",
            QUInt2x4 => "quint2x4",
            Bits8 => "bits8",
            Bits16 => "bits16",
            Bits1x8 => "bits1x8",
            Bits2x4 => "bits2x4",
            Bits4x2 => "bits4x2",
        }
    }

    /// The dtype for a `torch <name>` global: canonical names and torch's aliases
    /// (`float`, `double`, `half`, `long`, `int`, `short`, `cfloat`, `cdouble`, `chalf`).
    pub fn from_name(name: &str) -> Option<Dtype> {
        use Dtype::*;
        let alias = match name {
            "float" => Some(Float32),
            "double" => Some(Float64),
            "half" => Some(Float16),
            "long" => Some(Int64),
            "int" => Some(Int32),
            "short" => Some(Int16),
            "cfloat" => Some(Complex64),
            "cdouble" => Some(Complex128),
            "chalf" => Some(Complex32),
            _ => None,
        };
        alias.or_else(|| ALL_DTYPES.iter().copied().find(|d| d.name() == name))
    }

    /// The dtype a legacy typed storage class names (`FloatStorage` → float32), whatever module
    /// it was found in (spec §3.3: torch matches on the name alone).
    pub fn from_storage_class(name: &str) -> Option<Dtype> {
        use Dtype::*;
        Some(match name {
            "DoubleStorage" => Float64,
            "FloatStorage" => Float32,
            "HalfStorage" => Float16,
            "BFloat16Storage" => BFloat16,
            "LongStorage" => Int64,
            "IntStorage" => Int32,
            "ShortStorage" => Int16,
            "CharStorage" => Int8,
            "ByteStorage" => UInt8,
            "BoolStorage" => Bool,
            "ComplexFloatStorage" => Complex64,
            "ComplexDoubleStorage" => Complex128,
            "QInt8Storage" => QInt8,
            "QUInt8Storage" => QUInt8,
            "QInt32Storage" => QInt32,
            "QUInt4x2Storage" => QUInt4x2,
            "QUInt2x4Storage" => QUInt2x4,
            _ => return None,
        })
    }

    /// torch's C++ scalar-type name, used in its record-size error ("for dtype Byte").
    pub fn scalar_type_name(self) -> &'static str {
        use Dtype::*;
        match self {
            Float64 => "Double",
            Float32 => "Float",
            Float16 => "Half",
            BFloat16 => "BFloat16",
            Float8E4M3Fn => "Float8_e4m3fn",
            Float8E5M2 => "Float8_e5m2",
            Float8E4M3FnUz => "Float8_e4m3fnuz",
            Float8E5M2FnUz => "Float8_e5m2fnuz",
            Float8E8M0Fnu => "Float8_e8m0fnu",
            Float4E2M1FnX2 => "Float4_e2m1fn_x2",
            Complex32 => "ComplexHalf",
            BComplex32 => "BComplex32",
            Complex64 => "ComplexFloat",
            Complex128 => "ComplexDouble",
            Int8 => "Char",
            Int16 => "Short",
            Int32 => "Int",
            Int64 => "Long",
            UInt8 => "Byte",
            UInt16 => "UInt16",
            UInt32 => "UInt32",
            UInt64 => "UInt64",
            Bool => "Bool",
            QInt8 => "QInt8",
            QUInt8 => "QUInt8",
            QInt32 => "QInt32",
            QUInt4x2 => "QUInt4x2",
            QUInt2x4 => "QUInt2x4",
            Bits8 => "Bits8",
            Bits16 => "Bits16",
            Bits1x8 => "Bits1x8",
            Bits2x4 => "Bits2x4",
            Bits4x2 => "Bits4x2",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_name_the_dtypes_torch_gives_them() {
        // str(getattr(torch, alias)) in torch 2.15.
        for (alias, canonical) in [
            ("float", "float32"),
            ("double", "float64"),
            ("half", "float16"),
            ("long", "int64"),
            ("int", "int32"),
            ("short", "int16"),
            ("cfloat", "complex64"),
            ("cdouble", "complex128"),
            ("chalf", "complex32"),
        ] {
            assert_eq!(Dtype::from_name(alias).map(Dtype::name), Some(canonical));
        }
    }

    #[test]
    fn storage_classes_name_the_dtypes_torch_gives_them() {
        // str(getattr(torch, class)(0).dtype) in torch 2.15.
        for (class, dtype) in [
            ("DoubleStorage", "float64"),
            ("FloatStorage", "float32"),
            ("HalfStorage", "float16"),
            ("BFloat16Storage", "bfloat16"),
            ("LongStorage", "int64"),
            ("IntStorage", "int32"),
            ("ShortStorage", "int16"),
            ("CharStorage", "int8"),
            ("ByteStorage", "uint8"),
            ("BoolStorage", "bool"),
            ("ComplexFloatStorage", "complex64"),
            ("ComplexDoubleStorage", "complex128"),
            ("QInt8Storage", "qint8"),
            ("QUInt8Storage", "quint8"),
            ("QInt32Storage", "qint32"),
            ("QUInt4x2Storage", "quint4x2"),
            ("QUInt2x4Storage", "quint2x4"),
        ] {
            assert_eq!(
                Dtype::from_storage_class(class).map(Dtype::name),
                Some(dtype),
                "{class}"
            );
        }
        assert_eq!(Dtype::from_storage_class("UntypedStorage"), None);
    }

    #[test]
    fn quantized_dtypes_are_the_ones_torch_quantizes_to() {
        // torch.quantize_per_tensor(x, 0.1, 0, dtype).is_quantized in torch 2.15.
        let quantized = ["qint8", "quint8", "qint32", "quint4x2", "quint2x4"];
        for d in ALL_DTYPES {
            assert_eq!(
                d.is_quantized(),
                quantized.contains(&d.name()),
                "{}",
                d.name()
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for d in ALL_DTYPES {
            assert_eq!(Dtype::from_name(d.name()), Some(d));
        }
        assert_eq!(Dtype::from_name("half"), Some(Dtype::Float16));
        assert_eq!(Dtype::from_name("int4"), None);
    }

    #[test]
    fn complex_swaps_by_half() {
        assert_eq!(Dtype::Complex64.swap_unit(), 4);
        assert_eq!(Dtype::Complex32.swap_unit(), 2);
        assert_eq!(Dtype::Bool.swap_unit(), 1);
    }

    #[test]
    fn storage_classes() {
        assert_eq!(Dtype::from_storage_class("ByteStorage"), Some(Dtype::UInt8));
        assert_eq!(Dtype::from_storage_class("UntypedStorage"), None);
    }
}
