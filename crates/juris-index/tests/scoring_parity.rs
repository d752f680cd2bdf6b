//! Scores of every juris scorer against the reference implementations (rank_bm25 0.2.2 and
//! bm25s 0.3.16), from `tests/fixtures/bm25_reference.json`, written by
//! `scripts/fixtures/bm25_fixtures.py`.
//!
//! Tolerance: `|juris − ref| ≤ 1e-5·|ref| + 1e-6` for every document and query (bm25s
//! computes in float32, juris stores float32 impacts). Top-10 agreement: the i-th hit of
//! juris (exhaustive and MaxScore) has, under the reference, the reference's i-th best score
//! among documents containing a query term (so tied documents may swap).
//!
//! BM25+: the fixture's `bm25s:bm25+:lvzhai` scores are bm25s's `bm25+` scores minus
//! `Σ_{t∈q known, tf(t,d)=0} nonoccurrence_t` (bm25s's `idf_t·δ` for query terms the
//! document lacks), which is exactly Lv & Zhai's BM25+ = juris `bm25plus`. The raw bm25s
//! `bm25+` scores are compared with juris `rank-bm25-plus`, which shares their formula.

mod common;

use common::close;
use juris_index::{Index, ScorerConfig, SearchOptions, Strategy};
use serde_json::Value;

#[test]
fn every_scorer_matches_its_reference() {
    let raw = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bm25_reference.json"
    ))
    .expect("fixture; regenerate with scripts/fixtures/bm25_fixtures.py");
    let fx: Value = serde_json::from_str(&raw).unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    let docs: Vec<Vec<String>> = fx["docs"].as_array().unwrap().iter().map(strings).collect();
    let queries: Vec<Vec<String>> = fx["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(strings)
        .collect();
    let corpus: Vec<(String, Vec<String>)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("d{i:03}"), d.clone()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let index = common::build(dir.path(), &corpus, ScorerConfig::default());
    let mut worst_rel = 0f64;
    let mut worst_at = String::new();
    let mut per_ref = std::collections::BTreeMap::new();
    let mut checked = 0usize;
    let mut kinds_seen = std::collections::BTreeSet::new();
    for res in fx["results"].as_array().unwrap() {
        let reference = res["ref"].as_str().unwrap();
        let mut cfg = ScorerConfig::new(res["juris_scorer"].as_str().unwrap().parse().unwrap());
        let p = &res["params"];
        cfg.k1 = p["k1"].as_f64().unwrap();
        cfg.b = p["b"].as_f64().unwrap();
        if let Some(d) = p.get("delta").and_then(Value::as_f64) {
            cfg.delta = d;
        }
        if let Some(e) = p.get("epsilon").and_then(Value::as_f64) {
            cfg.epsilon = e;
        }
        kinds_seen.insert(cfg.kind.name());
        let view: Index = index.with_scorer(cfg).unwrap();
        let qids: Vec<usize> = res["queries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q.as_u64().unwrap() as usize)
            .collect();
        for (row, &qi) in res["scores"].as_array().unwrap().iter().zip(&qids) {
            let q = &queries[qi];
            let want: Vec<f64> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let got = view.score_all(q).unwrap();
            assert_eq!(got.len(), want.len());
            for (d, (&g, &w)) in got.iter().zip(&want).enumerate() {
                let g = f64::from(g);
                assert!(
                    close(g, w, 1e-5, 1e-6),
                    "{reference} ({cfg}) query {qi} {q:?} doc {d}: juris {g} vs {w}"
                );
                if w.abs() > 1e-3 {
                    let e = per_ref.entry(reference.to_string()).or_insert(0f64);
                    *e = e.max((g - w).abs() / w.abs());
                }
                if w.abs() > 1e-3 && (g - w).abs() / w.abs() > worst_rel {
                    worst_rel = (g - w).abs() / w.abs();
                    worst_at = format!("{reference} query {qi} doc {d}: juris {g} vs {w}");
                }
                checked += 1;
            }
            // Top-10 agreement, modulo ties.
            let matched: Vec<usize> = (0..docs.len())
                .filter(|&d| q.iter().any(|t| docs[d].contains(t)))
                .collect();
            let mut ref_ranked: Vec<f64> = matched.iter().map(|&d| want[d]).collect();
            ref_ranked.sort_by(|a, b| b.total_cmp(a));
            ref_ranked.truncate(10);
            for strategy in [Strategy::Accumulate, Strategy::Tiled, Strategy::MaxScore] {
                let hits = view
                    .search_terms_with(q, &SearchOptions { k: 10, strategy })
                    .unwrap();
                assert_eq!(
                    hits.len(),
                    ref_ranked.len(),
                    "{reference} query {qi}: hit count"
                );
                for (i, h) in hits.iter().enumerate() {
                    assert!(
                        close(want[h.doc as usize], ref_ranked[i], 1e-5, 1e-6),
                        "{reference} query {qi} rank {i}: doc {} has ref score {}, ref's rank-{i} score is {}",
                        h.doc,
                        want[h.doc as usize],
                        ref_ranked[i]
                    );
                    assert_eq!(h.score, got[h.doc as usize]);
                }
                for w in hits.windows(2) {
                    assert!(
                        w[0].score > w[1].score
                            || (w[0].score == w[1].score && w[0].doc < w[1].doc)
                    );
                }
            }
        }
    }
    assert_eq!(
        kinds_seen.len(),
        7,
        "every scorer is covered: {kinds_seen:?}"
    );
    eprintln!("parity: {checked} scores checked, max relative error {worst_rel:.3e} ({worst_at}); per reference: {per_ref:?}");
}

#[test]
fn fixture_corpus_has_the_promised_edge_cases() {
    let raw = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bm25_reference.json"
    ))
    .unwrap();
    let fx: Value = serde_json::from_str(&raw).unwrap();
    let docs = fx["docs"].as_array().unwrap();
    assert!(docs.iter().any(|d| d.as_array().unwrap().len() == 1));
    assert!(docs
        .iter()
        .all(|d| d.as_array().unwrap().iter().any(|t| t == "every")));
    assert!(raw.len() < 200_000);
}
