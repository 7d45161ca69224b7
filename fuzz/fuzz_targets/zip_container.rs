//! The zip container: directory, records, version, byte order — any input must give `Ok` or
//! `Err`, never a panic or an allocation beyond the caps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ptload::archive::ZipDirectory;

fuzz_target!(|data: &[u8]| {
    if let Ok(dir) = ZipDirectory::parse(data) {
        let _ = dir.version(data, 64);
        let _ = dir.byte_order(data);
        for record in dir.records() {
            let _ = record.read(data, 1 << 20);
        }
    }
});
