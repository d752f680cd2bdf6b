//! Exact vs HNSW search on synthetic clustered unit vectors stored as f16.
//!
//! ```text
//! cargo run --release -p juris-dense --example vector_bench -- [N=1000000] [THREADS=all] [M=16] [EF_CONSTRUCTION=100]
//! ```
//!
//! Generates `N + 1000` vectors of dimension 384 around `N / 500` centres (seeded), writes the
//! first `N` as an f16 store in a temporary folder and uses the rest as queries (same
//! distribution, not in the store). Prints exact-search throughput (one query at a time and
//! in batches), HNSW build time, and HNSW throughput and recall@10 against exact search for
//! several `ef_search` values. Timings are wall-clock on whatever else the machine is doing.

use std::sync::Arc;
use std::time::Instant;

use juris_dense::synthetic::clustered_unit_vectors;
use juris_dense::{
    Dtype, EmbeddingStore, ExactIndex, HnswIndex, HnswParams, StoreSpec, StoreWriter, VectorIndex,
};

const DIM: usize = 384;
const QUERIES: usize = 1000;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// CPU seconds used by this process so far (all threads), from `/proc/self/stat` (Linux,
/// 100 ticks/s); `None` elsewhere. On a shared machine wall time mostly measures the
/// neighbours, CPU time the work.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn recall(want: &[Vec<(u32, f32)>], got: &[Vec<(u32, f32)>]) -> f64 {
    let hit: usize = want
        .iter()
        .zip(got)
        .map(|(w, g)| g.iter().filter(|x| w.iter().any(|y| y.0 == x.0)).count())
        .sum();
    hit as f64 / (10 * want.len()) as f64
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let n = arg(1, 1_000_000);
    let threads = arg(
        2,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );
    let m = arg(3, 16);
    let ef_construction = arg(4, 100);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| run(n, threads, m, ef_construction))
}

fn run(
    n: usize,
    threads: usize,
    m: usize,
    ef_construction: usize,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    println!("vector_bench: N = {n}, dim = {DIM}, f16, {threads} threads, {QUERIES} queries");
    println!("load average at start: {}", loadavg());
    let t = Instant::now();
    let all = clustered_unit_vectors(
        n + QUERIES,
        DIM,
        (n / 500).max(10),
        2.0 / (DIM as f32).sqrt(),
        42,
    );
    let queries = all[n * DIM..].to_vec();
    let queries = &queries[..];
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("embeddings").join("bench");
    let spec = StoreSpec {
        model: "synthetic".into(),
        fingerprint: "seed-42".into(),
        dim: DIM,
        dtype: Dtype::F16,
    };
    let mut w = StoreWriter::create(&dir, &spec)?;
    for (i, row) in all[..n * DIM].chunks(DIM).enumerate() {
        w.push(&format!("d{i}"), "", row)?;
    }
    w.finish()?;
    drop(all);
    let store = Arc::new(EmbeddingStore::open(&dir)?);
    println!("generate + write store: {:.1} s", t.elapsed().as_secs_f64());

    let exact = ExactIndex::new(store.clone());
    let single_n = 50.min(QUERIES);
    let t = Instant::now();
    for q in queries.chunks(DIM).take(single_n) {
        exact.search(q, 10)?;
    }
    let exact_single = single_n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let truth = exact.search_batch(queries, 10)?;
    let exact_batch = QUERIES as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let cpu0 = cpu_seconds();
    let params = HnswParams {
        m,
        ef_construction,
        ef_search: 64,
        seed: 7,
    };
    let mut hnsw = HnswIndex::build(store.clone(), params)?;
    let build_s = t.elapsed().as_secs_f64();
    let build_cpu = cpu_seconds()
        .zip(cpu0)
        .map_or("?".into(), |(b, a)| format!("{:.1}", b - a));
    let path = HnswIndex::default_path(&store);
    let t = Instant::now();
    hnsw.save(&path)?;
    let save_s = t.elapsed().as_secs_f64();
    println!(
        "HNSW build (M = {m}, ef_construction = {ef_construction}): {build_s:.1} s wall ({:.0} rows/s), {build_cpu} s CPU; save {save_s:.2} s, {:.0} MB; load average {}",
        n as f64 / build_s,
        std::fs::metadata(&path)?.len() as f64 / 1e6,
        loadavg()
    );

    println!();
    println!("| method | ef_search | queries/s (1 at a time) | speed-up (1 at a time) | queries/s (batch of {QUERIES}) | speed-up (batch) | recall@10 |");
    println!("|---|---|---|---|---|---|---|");
    println!("| exact | – | {exact_single:.1} | 1.0× | {exact_batch:.1} | 1.0× | 1.000 |");
    for ef in [16, 32, 48, 64, 96, 128, 256] {
        hnsw.set_ef_search(ef);
        let t = Instant::now();
        for q in queries.chunks(DIM) {
            hnsw.search(q, 10)?;
        }
        let single = QUERIES as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let got = hnsw.search_batch(queries, 10)?;
        let batch = QUERIES as f64 / t.elapsed().as_secs_f64();
        println!(
            "| hnsw | {ef} | {single:.0} | {:.0}× | {batch:.0} | {:.0}× | {:.3} |",
            single / exact_single,
            batch / exact_batch,
            recall(&truth, &got),
        );
    }
    println!();
    println!("load average at end: {}", loadavg());
    Ok(())
}
