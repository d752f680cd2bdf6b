//! Store layout, validation, atomic replacement and incremental refresh.

use juris_dense::synthetic::clustered_unit_vectors;
use juris_dense::{refresh, write_store, DenseError, Dtype, EmbeddingStore, StoreSpec};

fn spec(dim: usize, dtype: Dtype, fp: &str) -> StoreSpec {
    StoreSpec {
        model: "test-model".into(),
        fingerprint: fp.into(),
        dim,
        dtype,
    }
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("doc-{i}")).collect()
}

#[test]
fn round_trip_f16_and_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let v = clustered_unit_vectors(50, 12, 3, 0.3, 7);
    for dtype in [Dtype::F16, Dtype::F32] {
        let dir = tmp.path().join("embeddings").join(format!("{dtype:?}"));
        let hashes: Vec<String> = (0..50).map(|i| format!("h{i}")).collect();
        let meta = write_store(&dir, &spec(12, dtype, "fp"), &ids(50), &hashes, &v).unwrap();
        assert!(meta.normalized);
        let s = EmbeddingStore::open(&dir).unwrap();
        assert_eq!(s.len(), 50);
        assert_eq!(s.ids()[49], "doc-49");
        assert_eq!(s.meta(), &meta);
        let tol = if dtype == Dtype::F16 { 1e-3 } else { 0.0 };
        for i in 0..50 {
            let r = s.row(i).unwrap();
            for (a, b) in r.iter().zip(&v[i * 12..(i + 1) * 12]) {
                assert!((a - b).abs() <= tol, "{dtype:?} row {i}");
            }
        }
        assert!(s.row(50).is_none());
    }
}

#[test]
fn open_names_the_bad_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let v = clustered_unit_vectors(10, 8, 2, 0.3, 1);
    let hashes = vec![String::new(); 10];
    write_store(&dir, &spec(8, Dtype::F32, "fp"), &ids(10), &hashes, &v).unwrap();
    // Truncated vectors.bin.
    let vb = dir.join("vectors.bin");
    let bytes = std::fs::read(&vb).unwrap();
    std::fs::write(&vb, &bytes[..bytes.len() - 4]).unwrap();
    let err = EmbeddingStore::open(&dir).unwrap_err();
    assert!(
        matches!(err, DenseError::Corrupt { ref path, .. } if path.ends_with("vectors.bin")),
        "{err}"
    );
    std::fs::write(&vb, &bytes).unwrap();
    // One id too few.
    let idp = dir.join("ids.txt");
    let text = std::fs::read_to_string(&idp).unwrap();
    std::fs::write(
        &idp,
        text.lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let err = EmbeddingStore::open(&dir).unwrap_err();
    assert!(
        matches!(err, DenseError::Corrupt { ref path, .. } if path.ends_with("ids.txt")),
        "{err}"
    );
    assert!(err.to_string().contains("count is 10"), "{err}");
}

#[test]
fn write_rejects_bad_rows_and_cleans_stale_temp_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let stale = tmp.path().join(".s.tmp-1-2");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("vectors.bin"), b"junk").unwrap();
    let err = write_store(
        &dir,
        &spec(2, Dtype::F32, "fp"),
        &ids(1),
        &["h".into()],
        &[f32::NAN, 0.0],
    );
    assert!(matches!(err, Err(DenseError::Invalid(_))));
    assert!(!stale.exists(), "stale temp folder removed");
    let err = write_store(
        &dir,
        &spec(2, Dtype::F32, "fp"),
        &["a\nb".into()],
        &["h".into()],
        &[1.0, 0.0],
    );
    assert!(matches!(err, Err(DenseError::Invalid(_))));
    assert!(!dir.exists(), "a failed write publishes nothing");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "a failed write leaves no temp folder");
}

#[test]
fn refresh_reuses_unchanged_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let dim = 4;
    // The "encoder": a vector derived from the document's position-independent id + hash.
    let vec_of = |id: &str, hash: &str| -> Vec<f32> {
        let x = (id.len() * 7 + hash.len()) as f32;
        vec![x, 1.0, 0.5, -x]
    };
    let docs1: Vec<(String, String)> = (0..6)
        .map(|i| (format!("d{i}"), "v1".to_string()))
        .collect();
    let run = |docs: &Vec<(String, String)>, fp: &str, calls: &mut Vec<usize>| {
        let mut enc =
            |pos: &[usize]| -> Result<Vec<f32>, Box<dyn std::error::Error + Send + Sync>> {
                calls.extend_from_slice(pos);
                Ok(pos
                    .iter()
                    .flat_map(|&p| vec_of(&docs[p].0, &docs[p].1))
                    .collect())
            };
        refresh(&dir, &spec(dim, Dtype::F32, fp), docs, &mut enc).unwrap()
    };
    let mut calls = Vec::new();
    let st = run(&docs1, "fp1", &mut calls);
    assert_eq!((st.reused, st.encoded, st.removed), (0, 6, 0));
    // Change d2, remove d4, add d9 in the middle.
    let mut docs2 = docs1.clone();
    docs2[2].1 = "v2-changed".into();
    docs2.remove(4);
    docs2.insert(1, ("d9".into(), "v1".into()));
    calls.clear();
    let st = run(&docs2, "fp1", &mut calls);
    assert_eq!((st.reused, st.encoded, st.removed), (4, 2, 1));
    assert_eq!(
        calls,
        vec![1, 3],
        "only d9 (position 1) and changed d2 (position 3)"
    );
    let s = EmbeddingStore::open(&dir).unwrap();
    let want_ids: Vec<&str> = docs2.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(s.ids(), want_ids.as_slice());
    for (i, (id, h)) in docs2.iter().enumerate() {
        assert_eq!(s.row(i).unwrap(), vec_of(id, h), "row {i}");
    }
    // A new fingerprint re-encodes everything.
    calls.clear();
    let st = run(&docs2, "fp2", &mut calls);
    assert_eq!((st.reused, st.encoded, st.removed), (0, 6, 0));
}

#[test]
fn refresh_rejects_duplicate_ids_and_bad_encoder_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let docs = vec![
        ("a".to_string(), "1".to_string()),
        ("a".to_string(), "2".to_string()),
    ];
    let mut enc = |p: &[usize]| -> Result<Vec<f32>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(vec![0.0; p.len() * 3])
    };
    assert!(matches!(
        refresh(&dir, &spec(2, Dtype::F16, "f"), &docs, &mut enc),
        Err(DenseError::Invalid(_))
    ));
    let docs = vec![("a".to_string(), "1".to_string())];
    assert!(matches!(
        refresh(&dir, &spec(2, Dtype::F16, "f"), &docs, &mut enc),
        Err(DenseError::Mismatch(_))
    ));
}
