//! Loads a checkpoint and materializes every tensor in host memory (what `torch.load` does),
//! printing the seconds each step took as JSON. Made for timing in fresh processes
//! (`scripts/bench-vs-torch`):
//!
//! ```text
//! cargo run --release --example load_all -- FILE            # load (zero-copy), then to_contiguous_bytes of every tensor, all kept
//! cargo run --release --example load_all -- FILE --copy     # load with every storage copied into owned memory, on every core
//! cargo run --release --example load_all -- FILE --memcpy   # the baseline: a parallel memcpy of the file into fresh memory
//! cargo run --release --example load_all -- FILE --memcpy-huge   # the same into memory advised to use huge pages (Linux), as ptload's copies are
//! ```

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: load_all FILE [--copy | --memcpy]")?;
    let mode = args.next().unwrap_or_default();
    let start = Instant::now();
    match mode.as_str() {
        "" => {
            let ckpt = ptload::Loader::new().map_location("cpu").load(&path)?;
            let loaded = start.elapsed().as_secs_f64();
            // Every tensor's copy is kept until the end, as torch.load's tensors are: dropping
            // each at once would let the allocator hand the next one the same, already mapped
            // memory.
            let mut copies = Vec::new();
            for (_, t) in ckpt.tensors() {
                copies.push(t.to_contiguous_bytes()?);
            }
            let total = start.elapsed().as_secs_f64();
            let bytes: usize = copies.iter().map(Vec::len).sum();
            println!(
                "{{\"load_s\": {loaded:.6}, \"load_and_copy_s\": {total:.6}, \"bytes\": {bytes}}}"
            );
        }
        "--copy" => {
            let ckpt = ptload::Loader::new()
                .map_location("cpu")
                .copy_storages(true)
                .load(&path)?;
            let loaded = start.elapsed().as_secs_f64();
            let bytes: u64 = ckpt.storages.iter().map(|s| s.nbytes()).sum();
            assert!(ckpt.storages.iter().all(|s| !s.data.is_borrowed()));
            println!("{{\"load_s\": {loaded:.6}, \"bytes\": {bytes}}}");
        }
        "--memcpy" | "--memcpy-huge" => {
            let bytes = parallel_memcpy(&path, mode == "--memcpy-huge")?;
            let loaded = start.elapsed().as_secs_f64();
            println!("{{\"load_s\": {loaded:.6}, \"bytes\": {bytes}}}");
        }
        other => {
            return Err(format!("unknown mode {other:?}: --copy, --memcpy or --memcpy-huge").into())
        }
    }
    Ok(())
}

/// Maps the file and copies it, one contiguous part per core, into fresh memory (zeroed pages
/// the copying thread touches first): what any loader that owns its tensors must at least do.
/// With `huge`, the fresh memory is first advised to use transparent huge pages (Linux).
fn parallel_memcpy(path: &str, huge: bool) -> Result<usize, Box<dyn std::error::Error>> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the benchmark's own file, not changed while it runs.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let part = map.len().div_ceil(threads).max(1);
    let copies: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let handles: Vec<_> = map
            .chunks(part)
            .map(|from| {
                scope.spawn(move || {
                    let mut to = vec![0u8; from.len()];
                    if huge {
                        // The advice ptload gives its own big copies.
                        ptload::source::prefer_huge_pages(&to);
                    }
                    to.copy_from_slice(from);
                    to
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    Ok(copies.iter().map(Vec::len).sum())
}
