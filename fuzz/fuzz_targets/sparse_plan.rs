//! Plans over partial sources (the browser's `NeedBytes` rounds over `SparseBytes`) must give
//! what the whole buffer gives, plan or error, and the rounds must terminate.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/oracle/mod.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = oracle::sparse_plan(data) {
        panic!("{e}");
    }
});
