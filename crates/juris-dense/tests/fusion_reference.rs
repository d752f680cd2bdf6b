//! Fusion against ranx: `tests/fixtures/fusion_reference.json`, written by
//! `scripts/fixtures/fusion_fixtures.py` (ranx `fuse`: wsum min-max, wsum zmuv, rrf).

use std::collections::BTreeMap;

use juris_dense::fusion::{reciprocal_rank, weighted_sum, Missing, Norm};
use serde_json::Value;

type Lists = BTreeMap<String, Vec<(String, f64)>>;

fn lists(v: &Value) -> Lists {
    serde_json::from_value(v.clone()).expect("fixture lists")
}

/// Same scores (1e-6) position by position, and the same documents except where ranx's
/// neighbours are tied (its order among exact ties is unspecified; ours is by id).
fn assert_same(got: &[(String, f64)], want: &[(String, f64)], case: &str) {
    assert_eq!(got.len(), want.len(), "{case}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g.1 - w.1).abs() < 1e-6,
            "{case}: rank {i}: {} {} vs ranx {} {}",
            g.0,
            g.1,
            w.0,
            w.1
        );
        if g.0 != w.0 {
            let tied = want.iter().any(|x| x.0 == g.0 && (x.1 - w.1).abs() < 1e-12);
            assert!(tied, "{case}: rank {i}: {} vs ranx {}", g.0, w.0);
        }
    }
}

#[test]
fn fusion_matches_ranx() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/fusion_reference.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (lexical, dense) = (lists(&doc["lexical"]), lists(&doc["dense"]));
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 12);
    for case in cases {
        let expected = lists(&case["expected"]);
        for (qid, want) in &expected {
            let lex = lexical.get(qid).cloned().unwrap_or_default();
            let den = dense.get(qid).cloned().unwrap_or_default();
            let (got, label) = match case["method"].as_str().unwrap() {
                "wsum" => {
                    let norm = match case["norm"].as_str().unwrap() {
                        "minmax" => Norm::MinMax,
                        "zscore" => Norm::ZScore,
                        other => panic!("unknown norm {other}"),
                    };
                    let alpha = case["alpha"].as_f64().unwrap();
                    (
                        weighted_sum(&lex, &den, alpha, norm, Missing::Zero),
                        format!("wsum {norm:?} α={alpha} {qid}"),
                    )
                }
                "rrf" => {
                    let k = case["k"].as_f64().unwrap();
                    (
                        reciprocal_rank(&[&lex[..], &den[..]], k),
                        format!("rrf k={k} {qid}"),
                    )
                }
                other => panic!("unknown method {other}"),
            };
            assert_same(&got, want, &label);
        }
    }
}
