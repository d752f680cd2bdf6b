//! A tiny random BERT shared by the `bert_*` and `encoder_*` tests: its config and
//! HF-named weights, from a fixed seed; and where the fetched models are.
// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

/// `models/<rel>` when fetched; otherwise says the test is skipped and returns `None`.
pub fn model_path(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(rel);
    if !p.exists() {
        println!(
            "skipped: {} missing; run bash scripts/fetch-models.sh",
            p.display()
        );
        return None;
    }
    Some(p)
}

/// Rows of the tiny word table.
pub const VOCAB: usize = 12;
/// Hidden width.
pub const HIDDEN: usize = 32;

/// HF config.json text of the tiny model.
pub fn config_json() -> String {
    format!(
        r#"{{"model_type":"bert","vocab_size":{VOCAB},"hidden_size":{HIDDEN},
            "num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":64,
            "hidden_act":"gelu","max_position_embeddings":64,"type_vocab_size":2,
            "layer_norm_eps":1e-12,"pad_token_id":2}}"#
    )
}

/// Random weights named as HF names them, each name starting with `prefix`.
pub fn weights(prefix: &str) -> HashMap<String, Tensor> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    };
    let mut w = HashMap::new();
    let mut put = |name: String, shape: &[usize], values: Vec<f32>| {
        w.insert(
            format!("{prefix}{name}"),
            Tensor::from_vec(values, shape, &Device::Cpu).unwrap(),
        );
    };
    let h = HIDDEN;
    put(
        "embeddings.word_embeddings.weight".into(),
        &[VOCAB, h],
        rand(VOCAB * h, 1.0),
    );
    put(
        "embeddings.position_embeddings.weight".into(),
        &[64, h],
        rand(64 * h, 0.5),
    );
    put(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, h],
        rand(2 * h, 0.5),
    );
    let mut norms = vec!["embeddings.LayerNorm".to_string()];
    for l in 0..2 {
        let p = format!("encoder.layer.{l}.");
        for (name, out, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", 64, h),
            ("output.dense", h, 64),
        ] {
            put(
                format!("{p}{name}.weight"),
                &[out, inp],
                rand(out * inp, 0.3),
            );
            put(format!("{p}{name}.bias"), &[out], rand(out, 0.1));
        }
        norms.push(format!("{p}attention.output.LayerNorm"));
        norms.push(format!("{p}output.LayerNorm"));
    }
    for name in norms {
        put(format!("{name}.weight"), &[h], vec![1.0; h]);
        put(format!("{name}.bias"), &[h], vec![0.0; h]);
    }
    w
}
