//! Python 2 strings (`STRING`, `BINSTRING`, `SHORT_BINSTRING`): the `encoding` argument of
//! Python's unpickler (and so of `torch.load`), and its `UnicodeDecodeError` wording.
//!
//! | name (case, `-`/`_` ignored) | a `str` becomes | a byte it cannot decode |
//! |---|---|---|
//! | `utf-8`, `utf8` (default) | text | `'utf-8' codec can't decode byte 0xe9 in position 3: unexpected end of data` |
//! | `ascii` | text | `'ascii' codec can't decode byte 0xe9 in position 3: ordinal not in range(128)` |
//! | `latin1`, `latin-1`, `iso-8859-1` | text, one code point a byte | — |
//! | `bytes` | `bytes` | — |

use std::fmt;

/// How Python 2 strings (`STRING`, `BINSTRING`, `SHORT_BINSTRING`) are decoded, as torch.load's
/// `encoding` argument. A byte the encoding cannot decode is an error worded as Python's
/// `UnicodeDecodeError` (the byte and its position in the string).
///
/// Parsed from the names Python accepts for them (case and `-`/`_` do not matter):
///
/// ```
/// use ptload::StringEncoding;
/// assert_eq!("ascii".parse(), Ok(StringEncoding::Ascii));
/// assert_eq!("ISO-8859-1".parse(), Ok(StringEncoding::Latin1));
/// assert_eq!(
///     "cp1252".parse::<StringEncoding>().unwrap_err(),
///     "unknown encoding: cp1252 (ptload decodes Python 2 strings as ascii, utf-8 (utf8), \
///      latin1 (latin-1, iso-8859-1) or bytes)"
/// );
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StringEncoding {
    /// UTF-8 text (torch's default).
    #[default]
    Utf8,
    /// ASCII text: a byte above 0x7F is an error.
    Ascii,
    /// Latin-1 text: every byte one code point.
    Latin1,
    /// Kept as bytes.
    Bytes,
}

impl StringEncoding {
    /// The canonical name (`utf-8`, `ascii`, `latin1`, `bytes`), as Python spells it.
    pub fn name(self) -> &'static str {
        match self {
            StringEncoding::Utf8 => "utf-8",
            StringEncoding::Ascii => "ascii",
            StringEncoding::Latin1 => "latin1",
            StringEncoding::Bytes => "bytes",
        }
    }
}

impl std::str::FromStr for StringEncoding {
    /// `unknown encoding: NAME` (Python's `LookupError` text) and the names accepted.
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().replace('_', "-").as_str() {
            "utf-8" | "utf8" => Ok(StringEncoding::Utf8),
            "ascii" => Ok(StringEncoding::Ascii),
            "latin1" | "latin-1" | "iso-8859-1" => Ok(StringEncoding::Latin1),
            "bytes" => Ok(StringEncoding::Bytes),
            _ => Err(format!(
                "unknown encoding: {name} (ptload decodes Python 2 strings as ascii, utf-8 \
                 (utf8), latin1 (latin-1, iso-8859-1) or bytes)"
            )),
        }
    }
}

impl fmt::Display for StringEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `bytes` as text when they are valid UTF-8. Names and keys in a checkpoint are short and
/// ASCII: those skip the general validator, which costs several times more on a short string.
pub(crate) fn utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).ok()
}

/// Decodes a Python 2 string's bytes; `Err` is Python's `UnicodeDecodeError` text, naming the
/// offending byte and its position in the string.
pub fn decode_py2_string(bytes: Vec<u8>, encoding: StringEncoding) -> Result<Decoded, String> {
    match encoding {
        StringEncoding::Bytes => Ok(Decoded::Bytes(bytes)),
        StringEncoding::Latin1 => Ok(Decoded::Str(bytes.iter().map(|&b| b as char).collect())),
        StringEncoding::Ascii => match bytes.iter().position(|b| !b.is_ascii()) {
            None => Ok(Decoded::Str(bytes.iter().map(|&b| b as char).collect())),
            Some(at) => Err(format!(
                "'ascii' codec can't decode byte 0x{:02x} in position {at}: ordinal not in \
                 range(128)",
                bytes[at]
            )),
        },
        StringEncoding::Utf8 => String::from_utf8(bytes).map(Decoded::Str).map_err(|e| {
            let bytes = e.as_bytes();
            let error = e.utf8_error();
            let start = error.valid_up_to();
            // Python reports the same maximal invalid subsequence as Rust (Unicode's practice).
            let (end, reason) = match error.error_len() {
                None => (bytes.len(), "unexpected end of data"),
                Some(n) => match bytes[start] {
                    0x80..=0xC1 | 0xF5..=0xFF => (start + 1, "invalid start byte"),
                    _ => (start + n, "invalid continuation byte"),
                },
            };
            if end - start == 1 {
                format!(
                    "'utf-8' codec can't decode byte 0x{:02x} in position {start}: {reason}",
                    bytes[start]
                )
            } else {
                format!(
                    "'utf-8' codec can't decode bytes in position {start}-{}: {reason}",
                    end - 1
                )
            }
        }),
    }
}

/// A decoded Python 2 string: text, or bytes under [`StringEncoding::Bytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// `str`
    Str(String),
    /// `bytes`
    Bytes(Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_read_as_the_general_validator_reads_it() {
        let cases: [&[u8]; 8] = [
            b"",
            b"layer0.weight",
            "caf\u{e9}".as_bytes(),
            "\u{1F600} emoji".as_bytes(),
            b"\xff",
            b"ok\xc3",
            b"\xed\xa0\x80", // a surrogate
            b"\x7f\x00",
        ];
        for bytes in cases {
            assert_eq!(utf8(bytes), std::str::from_utf8(bytes).ok(), "{bytes:?}");
        }
        // Borrowed, not copied.
        let bytes = b"archive/data/0";
        assert_eq!(utf8(bytes).unwrap().as_ptr(), bytes.as_ptr());
    }

    fn error(bytes: &[u8], encoding: StringEncoding) -> String {
        decode_py2_string(bytes.to_vec(), encoding).unwrap_err()
    }

    #[test]
    fn names_as_python_spells_them() {
        for (name, want) in [
            ("utf-8", StringEncoding::Utf8),
            ("UTF8", StringEncoding::Utf8),
            ("utf_8", StringEncoding::Utf8),
            ("ascii", StringEncoding::Ascii),
            ("ASCII", StringEncoding::Ascii),
            ("latin1", StringEncoding::Latin1),
            ("latin-1", StringEncoding::Latin1),
            ("iso-8859-1", StringEncoding::Latin1),
            ("ISO_8859_1", StringEncoding::Latin1),
            ("bytes", StringEncoding::Bytes),
        ] {
            assert_eq!(name.parse::<StringEncoding>(), Ok(want), "{name}");
            assert_eq!(want.name().parse::<StringEncoding>(), Ok(want));
        }
        // `Display` is the canonical name.
        for (encoding, shown) in [
            (StringEncoding::Utf8, "utf-8"),
            (StringEncoding::Ascii, "ascii"),
            (StringEncoding::Latin1, "latin1"),
            (StringEncoding::Bytes, "bytes"),
        ] {
            assert_eq!(encoding.to_string(), shown);
        }
        for bad in ["", "utf-16", "cp1252", "latin"] {
            let e = bad.parse::<StringEncoding>().unwrap_err();
            assert!(e.starts_with(&format!("unknown encoding: {bad} (")), "{e}");
            assert!(e.contains("ascii, utf-8 (utf8), latin1"), "{e}");
        }
    }

    #[test]
    fn ascii_refuses_a_high_byte_at_its_position() {
        assert_eq!(
            decode_py2_string(b"cafe".to_vec(), StringEncoding::Ascii),
            Ok(Decoded::Str("cafe".into()))
        );
        assert_eq!(
            error(b"caf\xe9", StringEncoding::Ascii),
            "'ascii' codec can't decode byte 0xe9 in position 3: ordinal not in range(128)"
        );
        assert_eq!(
            error(b"gr\xc3\xb6\xc3\x9fe", StringEncoding::Ascii),
            "'ascii' codec can't decode byte 0xc3 in position 2: ordinal not in range(128)"
        );
    }

    #[test]
    fn latin1_and_bytes_take_every_byte() {
        assert_eq!(
            decode_py2_string(b"caf\xe9".to_vec(), StringEncoding::Latin1),
            Ok(Decoded::Str("café".into()))
        );
        assert_eq!(
            decode_py2_string(b"caf\xe9".to_vec(), StringEncoding::Bytes),
            Ok(Decoded::Bytes(b"caf\xe9".to_vec()))
        );
    }

    /// Each expected text is what Python 3.11's `bytes.decode("utf-8")` raises.
    #[test]
    fn utf8_errors_as_python_words_them() {
        for (bytes, want) in [
            (
                &b"caf\xe9"[..],
                "byte 0xe9 in position 3: unexpected end of data",
            ),
            (
                b"caf\xe9!",
                "byte 0xe9 in position 3: invalid continuation byte",
            ),
            (b"\x80", "byte 0x80 in position 0: invalid start byte"),
            (b"\xe2\x82", "bytes in position 0-1: unexpected end of data"),
            (
                b"\xe2\x82A",
                "bytes in position 0-1: invalid continuation byte",
            ),
            (
                b"\xed\xa0\x80",
                "byte 0xed in position 0: invalid continuation byte",
            ),
            (
                b"ok\xf0\x9f\x98",
                "bytes in position 2-4: unexpected end of data",
            ),
            (
                b"\xc3\xa9\xff",
                "byte 0xff in position 2: invalid start byte",
            ),
        ] {
            assert_eq!(
                error(bytes, StringEncoding::Utf8),
                format!("'utf-8' codec can't decode {want}"),
                "{bytes:?}"
            );
        }
    }
}
