//! Differential: our zip directory reader against the `zip` crate. Where both accept an input,
//! names, methods, sizes, data offsets and inflated bytes must agree (`tests/oracle/mod.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/oracle/mod.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| {
    if let oracle::Outcome::Differ(d) = oracle::zip(data) {
        panic!("the zip readers disagree: {d}");
    }
});
