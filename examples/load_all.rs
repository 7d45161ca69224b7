//! Loads a checkpoint and materializes every tensor in host memory (what `torch.load` does),
//! printing the seconds each step took: `cargo run --release --example load_all -- FILE`.

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: load_all FILE")?;
    let start = Instant::now();
    let ckpt = ptload::Loader::new().map_location("cpu").load(&path)?;
    let loaded = start.elapsed().as_secs_f64();
    let mut bytes = 0usize;
    for (_, t) in ckpt.tensors() {
        bytes += t.to_contiguous_bytes()?.len();
    }
    let total = start.elapsed().as_secs_f64();
    println!("{{\"load_s\": {loaded:.6}, \"load_and_copy_s\": {total:.6}, \"bytes\": {bytes}}}");
    Ok(())
}
