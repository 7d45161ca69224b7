//! The legacy pickle stream (header pickles, main pickle, key list, raw records), through the
//! full loader: any input must give `Ok` or `Err`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Only inputs the loader sends down the legacy path (not zip, not tar).
    if data.starts_with(b"PK\x03\x04") || data.get(257..262) == Some(b"ustar") {
        return;
    }
    ptload::fuzzing::load_and_hash(data);
});
