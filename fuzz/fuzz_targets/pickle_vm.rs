//! The pickle machine alone, then torch's interpretation of the same bytes: any input must give
//! `Ok` or `Err`, never a panic, a hang or unbounded memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ptload::pickle::{load_pickle, Arena, NoHooks, PickleLimits, StringEncoding};

fuzz_target!(|data: &[u8]| {
    let limits = PickleLimits {
        max_nodes: 1_000_000,
        max_memo: 100_000,
        max_stack: 1_000_000,
    };
    let mut arena = Arena::new();
    let _ = load_pickle(
        data,
        &mut arena,
        &mut NoHooks,
        limits,
        StringEncoding::Latin1,
    );
    let _ = ptload::fuzzing::parse_pickle(data, data.first().is_some_and(|b| b & 1 == 0));
});
