//! `load_bytes` on anything, then every tensor hashed under a byte cap: never a panic, a hang,
//! or memory beyond the caps. The first byte picks weights-only or not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ptload::fuzzing::load_and_hash(data);
});
