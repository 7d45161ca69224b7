//! The writers against the loader: whatever loads is written as `.pt` and `.safetensors` and
//! must read back with the same tensors (`ptload::fuzzing::write_round_trip` panics otherwise).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ptload::fuzzing::write_round_trip(data);
});
