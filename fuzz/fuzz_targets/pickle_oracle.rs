//! Differential: our pickle VM against `serde-pickle` on plain data. Where both accept an
//! input, their canonical renderings must agree (`tests/oracle/mod.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/oracle/mod.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| {
    if let oracle::Outcome::Differ(d) = oracle::pickle(data) {
        panic!("the pickle readers disagree: {d}");
    }
});
