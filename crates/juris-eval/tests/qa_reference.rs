//! juris-eval's answer metrics against Google's rouge-score (ROUGE-L with the same
//! tokenizer) and SQuAD's F1, from `scripts/fixtures/qa_fixtures.py`: tokens equal, scores
//! within 1e-9, on English, Arabic, Japanese and mixed answers and the empty edge cases.

use juris_eval::qa::{qa_tokens, rouge_l, token_f1};
use serde_json::Value;

const TOL: f64 = 1e-9;

#[test]
fn rouge_l_and_token_f1_match_the_references() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qa_reference.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for c in cases {
        let (pred, reference) = (
            c["prediction"].as_str().unwrap(),
            c["reference"].as_str().unwrap(),
        );
        let tokens = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(qa_tokens(pred), tokens(&c["tokens_prediction"]), "{pred}");
        assert_eq!(
            qa_tokens(reference),
            tokens(&c["tokens_reference"]),
            "{reference}"
        );
        let (rl, f1) = (rouge_l(pred, reference), token_f1(pred, reference));
        let (want_rl, want_f1) = (
            c["rouge_l"].as_f64().unwrap(),
            c["token_f1"].as_f64().unwrap(),
        );
        assert!(
            (rl - want_rl).abs() < TOL,
            "rouge-l {pred:?} vs {reference:?}: {rl} != {want_rl}"
        );
        assert!(
            (f1 - want_f1).abs() < TOL,
            "token f1 {pred:?} vs {reference:?}: {f1} != {want_f1}"
        );
    }
}
