//! Exact search against an f64 brute force, HNSW recall against exact search, and HNSW
//! save/load.

use std::sync::Arc;

use juris_dense::synthetic::clustered_unit_vectors;
use juris_dense::{
    write_store, DenseError, Dtype, EmbeddingStore, ExactIndex, HnswIndex, HnswParams, StoreSpec,
    VectorIndex,
};

fn make_store(
    dir: &std::path::Path,
    n: usize,
    dim: usize,
    dtype: Dtype,
    seed: u64,
) -> Arc<EmbeddingStore> {
    let v = clustered_unit_vectors(n, dim, 50, 2.0 / (dim as f32).sqrt(), seed);
    let ids: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
    let hashes = vec![String::new(); n];
    let spec = StoreSpec {
        model: "m".into(),
        fingerprint: "f".into(),
        dim,
        dtype,
    };
    write_store(dir, &spec, &ids, &hashes, &v).unwrap();
    Arc::new(EmbeddingStore::open(dir).unwrap())
}

#[test]
fn exact_equals_f64_brute_force() {
    let tmp = tempfile::tempdir().unwrap();
    for dtype in [Dtype::F16, Dtype::F32] {
        // 1000 rows: several blocks, the last one partial.
        let store = make_store(&tmp.path().join(format!("{dtype:?}")), 1000, 40, dtype, 3);
        let index = ExactIndex::new(store.clone());
        let queries = clustered_unit_vectors(7, 40, 5, 0.3, 99);
        let batch = index.search_batch(&queries, 10).unwrap();
        for (qi, q) in queries.chunks(40).enumerate() {
            let mut want: Vec<(u32, f64)> = (0..store.len())
                .map(|r| {
                    let row = store.row(r).unwrap();
                    (
                        r as u32,
                        row.iter().zip(q).map(|(&a, &b)| a as f64 * b as f64).sum(),
                    )
                })
                .collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let got = index.search(q, 10).unwrap();
            assert_eq!(got, batch[qi], "single and batch agree");
            for (i, &(row, score)) in got.iter().enumerate() {
                assert!(
                    (score as f64 - want[i].1).abs() < 1e-5,
                    "{dtype:?} q{qi} rank {i}"
                );
                let exact_of_row = want.iter().find(|w| w.0 == row).unwrap().1;
                assert!((score as f64 - exact_of_row).abs() < 1e-5);
            }
        }
        assert_eq!(index.search(&queries[..40], 5000).unwrap().len(), 1000);
        assert!(index.search(&queries[..40], 0).unwrap().is_empty());
    }
}

#[test]
fn dimension_mismatch_and_nan_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = make_store(tmp.path().join("s").as_path(), 100, 16, Dtype::F16, 1);
    let exact = ExactIndex::new(store.clone());
    let hnsw = HnswIndex::build(store, HnswParams::default()).unwrap();
    for index in [&exact as &dyn VectorIndex, &hnsw] {
        assert!(matches!(
            index.search(&[0.0; 15], 3),
            Err(DenseError::Mismatch(_))
        ));
        assert!(matches!(
            index.search_batch(&[0.0; 17], 3),
            Err(DenseError::Mismatch(_))
        ));
        let mut q = vec![0.1; 16];
        q[3] = f32::NAN;
        assert!(matches!(index.search(&q, 3), Err(DenseError::Invalid(_))));
    }
}

fn recall_at_10(exact: &ExactIndex, ann: &dyn VectorIndex, queries: &[f32]) -> f64 {
    let want = exact.search_batch(queries, 10).unwrap();
    let got = ann.search_batch(queries, 10).unwrap();
    let mut hit = 0;
    for (w, g) in want.iter().zip(&got) {
        hit += g.iter().filter(|x| w.iter().any(|y| y.0 == x.0)).count();
    }
    hit as f64 / (10 * want.len()) as f64
}

#[test]
fn hnsw_recall_and_save_load() {
    // 20k rows where the test is compiled with optimizations; fewer in an unoptimized build
    // so that `cargo test` stays quick (the recall bar is the same).
    let (n, dim) = if cfg!(debug_assertions) {
        (4_000, 32)
    } else {
        (20_000, 64)
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = make_store(&tmp.path().join("s"), n, dim, Dtype::F16, 11);
    let exact = ExactIndex::new(store.clone());
    // The default graph (M 32, ef_construction 200); M 16 / 100 reached only 0.79 on the
    // 20k × 64 set.
    let params = HnswParams {
        ef_search: 200,
        seed: 5,
        ..HnswParams::default()
    };
    let hnsw = HnswIndex::build(store.clone(), params).unwrap();
    // Queries: perturbed copies of stored rows' cluster structure, not the rows themselves.
    let queries = clustered_unit_vectors(200, dim, 50, 2.0 / (dim as f32).sqrt(), 11 ^ 0xABCD);
    let recall = recall_at_10(&exact, &hnsw, &queries);
    assert!(recall >= 0.98, "recall@10 = {recall}");

    // Deterministic build.
    let again = HnswIndex::build(store.clone(), params).unwrap();
    assert_eq!(
        again.search_batch(&queries, 10).unwrap(),
        hnsw.search_batch(&queries, 10).unwrap()
    );

    let path = HnswIndex::default_path(&store);
    hnsw.save(&path).unwrap();
    let loaded = HnswIndex::load(store.clone(), &path).unwrap();
    assert_eq!(loaded.params(), hnsw.params());
    assert_eq!(
        loaded.search_batch(&queries, 10).unwrap(),
        hnsw.search_batch(&queries, 10).unwrap()
    );

    // Truncated file: a clear error, no panic.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        HnswIndex::load(store.clone(), &path),
        Err(DenseError::Corrupt { .. })
    ));

    // A graph from another write of the store is refused.
    std::fs::write(&path, &bytes).unwrap();
    let other = make_store(&tmp.path().join("s2"), n, dim, Dtype::F16, 11);
    assert!(matches!(
        HnswIndex::load(other, &path),
        Err(DenseError::Mismatch(_))
    ));
}

#[test]
fn hnsw_tiny_and_empty_stores() {
    let tmp = tempfile::tempdir().unwrap();
    for n in [0usize, 1, 2, 5] {
        let store = make_store(&tmp.path().join(format!("s{n}")), n, 8, Dtype::F32, 2);
        let hnsw = HnswIndex::build(store.clone(), HnswParams::default()).unwrap();
        let exact = ExactIndex::new(store);
        let q = clustered_unit_vectors(1, 8, 1, 0.1, 3);
        assert_eq!(
            hnsw.search(&q, 10).unwrap(),
            exact.search(&q, 10).unwrap(),
            "n = {n}"
        );
    }
}
