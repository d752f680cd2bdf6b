//! A LoRA adapter saved by juris and merged into MiniLM gives the embeddings PEFT gives for
//! the same adapter (scripts/fixtures/lora_fixtures.py; the adapter is a formula, so no
//! binary fixture is needed). Skipped when models/minilm is absent.

mod bert_common;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use juris_ml::lora::{LoraAdapter, LoraConfig, LoraPair};
use juris_ml::models::bert::BertEncoder;
use juris_ml::{Encoder, EncoderOptions, TextRole};

#[test]
fn merged_adapter_matches_peft() {
    let Some(dir) = bert_common::model_path("minilm") else {
        return;
    };
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/lora_minilm_reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let opts = EncoderOptions {
        max_len: 256,
        ..Default::default()
    };
    let mut enc = BertEncoder::from_hf_dir(&dir, &opts).unwrap();
    let targets = ["query", "value", "intermediate.dense"];
    let config = LoraConfig::new(2, 16.0, 0.0, &targets, "all-MiniLM-L6-v2");
    let mut modules = BTreeMap::new();
    for (path, inp, out) in enc.model().linears() {
        if !config.targets(&path) {
            continue;
        }
        let l: f64 = path.split('.').nth(2).unwrap().parse().unwrap();
        let k = if path.ends_with("query") {
            0.0
        } else if path.ends_with("value") {
            1.0
        } else {
            2.0
        };
        let a: Vec<f32> = (0..2 * inp)
            .map(|n| {
                let (i, j) = ((n / inp) as f64, (n % inp) as f64);
                (0.02 * (1.0 + 0.7 * i + 0.013 * j + 0.5 * l + 0.3 * k).sin()) as f32
            })
            .collect();
        let b: Vec<f32> = (0..out * 2)
            .map(|n| {
                let (o, i) = ((n / 2) as f64, (n % 2) as f64);
                (0.02 * (0.5 + 0.011 * o + 0.9 * i + 0.5 * l + 0.3 * k).cos()) as f32
            })
            .collect();
        modules.insert(
            path,
            LoraPair {
                a: Tensor::from_vec(a, (2, inp), &Device::Cpu).unwrap(),
                b: Tensor::from_vec(b, (out, 2), &Device::Cpu).unwrap(),
            },
        );
    }
    assert_eq!(modules.len(), 18);
    let tmp = tempfile::tempdir().unwrap();
    LoraAdapter { config, modules }.save(tmp.path()).unwrap();
    enc.apply_adapter(tmp.path()).unwrap();
    let texts: Vec<String> = fixture["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ours = enc.encode(&refs, TextRole::Passage).unwrap();
    let dim = enc.dim();
    for (i, want) in fixture["embeddings"].as_array().unwrap().iter().enumerate() {
        let want: Vec<f32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let cos: f32 = ours[i * dim..(i + 1) * dim]
            .iter()
            .zip(&want)
            .map(|(a, b)| a * b)
            .sum();
        assert!(cos >= 0.9999, "text {i}: cosine with PEFT {cos}");
    }
}
