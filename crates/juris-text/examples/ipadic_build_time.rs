//! Measures a cold build of the IPADIC dictionary (no cache) and a load from the cache.
//! Usage: `cargo run --release -p juris-text --example ipadic_build_time -- <cache-dir>`.

use juris_text::analyzers::ja_ipadic::{ipadic_source_dir, load_or_build_ipadic};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: ipadic_build_time <empty cache folder>")?;
    let cache = std::path::Path::new(&dir).join("ipadic-test.vibrato");
    let _ = std::fs::remove_file(&cache);
    let src = ipadic_source_dir();
    let t = Instant::now();
    drop(load_or_build_ipadic(&src, Some(&cache))?);
    println!("cold build + cache write: {:.2?}", t.elapsed());
    println!("cache size: {} bytes", std::fs::metadata(&cache)?.len());
    let t = Instant::now();
    drop(load_or_build_ipadic(&src, Some(&cache))?);
    println!("load from cache: {:.2?}", t.elapsed());
    Ok(())
}
