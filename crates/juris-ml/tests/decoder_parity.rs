//! Parity with Hugging Face transformers on the same GGUF weights (fixtures written by
//! `scripts/fixtures/decoder_fixtures.py`): token ids from the GGUF tokenizer, last-token
//! (EOS) embeddings with role prefixes (cosine >= 0.999 per text), and top-5 next-token ids.
//! Skips, saying so, when the model file is absent.

use std::path::{Path, PathBuf};

use candle_core::{Device, IndexOp, Tensor};
use juris_ml::gguf::GgufFile;
use juris_ml::gguf_tokenizer::GgufTokenizer;
use juris_ml::models::decoder::{load_gguf_encoder_with, DecoderEncoder};
use juris_ml::models::decoder_layers::WeightMode;
use juris_ml::{EncoderOptions, TextRole};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> Value {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/decoder_{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn model_path(fx: &Value) -> Option<PathBuf> {
    let p = root().join(fx["model"].as_str().unwrap());
    if p.exists() {
        Some(p)
    } else {
        println!(
            "skipped: {} missing; run bash scripts/fetch-models.sh",
            p.display()
        );
        None
    }
}

/// Cosine of each fixture vector of `role` with its row in `got` (rows in text order).
fn cosines(fx: &Value, got: &[f32], dim: usize, role: &str) -> Vec<(usize, f32)> {
    let mut out = Vec::new();
    for e in fx["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["role"] == role)
    {
        let i = e["text_index"].as_u64().unwrap() as usize;
        let r: Vec<f32> = e["vector"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let row = &got[i * dim..(i + 1) * dim];
        let cos = row.iter().zip(&r).map(|(a, b)| a * b).sum::<f32>()
            / r.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.push((i, cos));
    }
    out
}

/// The fixture's model as an encoder in `mode`, and its texts; `None` (after saying so)
/// when the model file is absent.
fn encoder_and_texts(fx: &Value, mode: WeightMode) -> Option<(DecoderEncoder, Vec<String>)> {
    let path = model_path(fx)?;
    let enc =
        load_gguf_encoder_with(&path, &EncoderOptions::default(), mode, &Device::Cpu).unwrap();
    let texts = fx["texts"].as_array().unwrap().iter();
    Some((
        enc,
        texts
            .map(|t| t["text"].as_str().unwrap().to_string())
            .collect(),
    ))
}

fn tokenizer_parity(name: &str) {
    let fx = fixture(name);
    let Some(path) = model_path(&fx) else { return };
    let tok = GgufTokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let texts = fx["texts"].as_array().unwrap();
    let mut bad = Vec::new();
    for t in texts {
        let text = t["text"].as_str().unwrap();
        let got = tok.encode(text, true).unwrap();
        if got != ids(&t["ids"]) {
            bad.push(format!(
                "{text:?}\n  ours {got:?}\n  ref  {:?}",
                ids(&t["ids"])
            ));
        }
    }
    println!(
        "{name}: token ids equal on {}/{} texts",
        texts.len() - bad.len(),
        texts.len()
    );
    assert!(
        bad.is_empty(),
        "{name}: token ids differ:\n{}",
        bad.join("\n")
    );
}

fn embedding_parity(name: &str) {
    let fx = fixture(name);
    let Some((enc, texts)) = encoder_and_texts(&fx, WeightMode::F32) else {
        return;
    };
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut min_cos = f32::MAX;
    let mut failures = Vec::new();
    for (role, rname) in [(TextRole::Query, "query"), (TextRole::Passage, "passage")] {
        // One padded batch per role: parity and padding at once.
        let got = juris_ml::Encoder::encode(&enc, &texts, role).unwrap();
        let dim = juris_ml::Encoder::dim(&enc);
        for e in fx["embeddings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["role"] == rname)
        {
            let i = e["text_index"].as_u64().unwrap() as usize;
            let want = ids(&e["ids"]);
            assert_eq!(
                enc.input_ids(texts[i], role).unwrap(),
                want,
                "{name} {rname} text {i}"
            );
        }
        for (i, cos) in cosines(&fx, &got, dim, rname) {
            min_cos = min_cos.min(cos);
            if cos < 0.999 {
                failures.push(format!(
                    "{rname} text {i} ({:?}): cosine {cos:.6}",
                    texts[i]
                ));
            }
        }
    }
    println!(
        "{name}: min cosine vs transformers {min_cos:.6} over {} embeddings",
        fx["embeddings"].as_array().unwrap().len()
    );
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));

    // Logits: top-5 next-token ids at a few positions of one prompt.
    let lg = &fx["logits"];
    let prompt_ids = ids(&lg["ids"]);
    assert_eq!(
        enc.tokenizer()
            .encode(lg["prompt"].as_str().unwrap(), true)
            .unwrap(),
        prompt_ids
    );
    let n = prompt_ids.len();
    let x = Tensor::new(prompt_ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = Tensor::ones((1, n), candle_core::DType::U32, &Device::Cpu).unwrap();
    let hidden = enc.model().forward_hidden(&x, &mask).unwrap();
    let logits = enc.model().logits(&hidden).unwrap();
    for p in lg["positions"].as_array().unwrap() {
        let pos = p["position"].as_u64().unwrap() as usize;
        let row: Vec<f32> = logits.i((0, pos)).unwrap().to_vec1().unwrap();
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let ours: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
        let want = ids(&p["top5"]);
        println!("{name}: position {pos} top5 ours {ours:?} ref {want:?}");
        assert_eq!(ours[0], want[0], "{name}: top-1 at position {pos}");
        let common = ours.iter().filter(|t| want.contains(t)).count();
        assert!(
            common >= 4,
            "{name}: top-5 at position {pos} share only {common}"
        );
    }
}

#[test]
fn decoder_smollm2_tokenizer_matches_transformers() {
    tokenizer_parity("smollm2");
}

#[test]
fn decoder_gemma3_tokenizer_matches_transformers() {
    tokenizer_parity("gemma3");
}

#[test]
fn decoder_smollm2_embeddings_and_logits_match_transformers() {
    embedding_parity("smollm2");
}

#[test]
fn decoder_gemma3_embeddings_and_logits_match_transformers() {
    embedding_parity("gemma3");
}

/// The quantized-weight path (candle's quantized matmuls, which also quantize activations
/// to 8 bits) stays close to the f32 reference; it is meant for generation speed, so the
/// bar is lower than the f32 path's.
#[test]
fn decoder_smollm2_quantized_weights_stay_close() {
    let fx = fixture("smollm2");
    let Some((enc, texts)) = encoder_and_texts(&fx, WeightMode::Quantized) else {
        return;
    };
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let got = juris_ml::Encoder::encode(&enc, &texts, TextRole::Query).unwrap();
    let dim = juris_ml::Encoder::dim(&enc);
    let min_cos = cosines(&fx, &got, dim, "query")
        .into_iter()
        .map(|(_, c)| c)
        .fold(f32::MAX, f32::min);
    println!("smollm2 quantized: min cosine vs transformers (f32) {min_cos:.6}");
    assert!(
        min_cos > 0.95,
        "quantized path drifted: min cosine {min_cos}"
    );
}
