//! A tiny random BERT encoder (2 layers, width 32, a letters-only unigram vocabulary), built
//! in memory from a seed, for tests of code that needs a real model: gradient checks,
//! training loops, adapters, stores. Not a useful model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::lora::SplitMix64;
use crate::models::bert::{BertEncoder, BertModel, Config, EncoderParts, Pooling};
use crate::nn::Weights;
use crate::tokenize::UnigramTokenizer;

/// Hidden width of the tiny model.
pub const TINY_HIDDEN: usize = 32;

/// The tiny encoder with weights drawn from `seed`, its tensors in `dtype` (f64 for
/// finite-difference checks: that model takes the reference path, not the fused f32 one).
pub fn tiny_random_encoder(seed: u64, dtype: DType, pooling: Pooling) -> Result<BertEncoder> {
    tiny_random_encoder_on(seed, dtype, pooling, &Device::Cpu)
}

/// [`tiny_random_encoder`] with its weights on `device` (the same values on every device).
pub fn tiny_random_encoder_on(
    seed: u64,
    dtype: DType,
    pooling: Pooling,
    device: &Device,
) -> Result<BertEncoder> {
    // <s> </s> <pad> <unk> ▁ then ▁a..▁z and a..z.
    let mut pieces: Vec<Vec<u8>> = ["<s>", "</s>", "<pad>", "<unk>", "▁"]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    let mut scores = vec![0.0, 0.0, 0.0, 0.0, -4.0];
    for c in b'a'..=b'z' {
        pieces.push(format!("▁{}", c as char).into_bytes());
        scores.push(-1.0);
    }
    for c in b'a'..=b'z' {
        pieces.push(vec![c]);
        scores.push(-2.0);
    }
    let vocab = pieces.len();
    let h = TINY_HIDDEN;
    let ff = 64;
    let config: Config = serde_json::from_str(&format!(
        r#"{{"model_type":"bert","vocab_size":{vocab},"hidden_size":{h},
            "num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":{ff},
            "hidden_act":"gelu","max_position_embeddings":64,"type_vocab_size":2,
            "layer_norm_eps":1e-12,"pad_token_id":2}}"#
    ))
    .map_err(|e| crate::MlError::Unsupported(format!("tiny config: {e}")))?;
    let mut rng = SplitMix64(seed);
    let dev = device.clone();
    let mut w = Weights::new(Path::new("tiny-random"), &dev);
    let mut put = |name: String, shape: &[usize], scale: f64, fill: Option<f64>| -> Result<()> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| fill.unwrap_or_else(|| (rng.next_f64() * 2.0 - 1.0) * scale))
            .collect();
        w.insert(name, Tensor::from_vec(v, shape, &dev)?.to_dtype(dtype)?);
        Ok(())
    };
    put(
        "embeddings.word_embeddings.weight".into(),
        &[vocab, h],
        1.0,
        None,
    )?;
    put(
        "embeddings.position_embeddings.weight".into(),
        &[64, h],
        0.5,
        None,
    )?;
    put(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, h],
        0.5,
        None,
    )?;
    let mut norms = vec!["embeddings.LayerNorm".to_string()];
    for l in 0..2 {
        let p = format!("encoder.layer.{l}.");
        for (name, out, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", ff, h),
            ("output.dense", h, ff),
        ] {
            put(format!("{p}{name}.weight"), &[out, inp], 0.3, None)?;
            put(format!("{p}{name}.bias"), &[out], 0.1, None)?;
        }
        norms.push(format!("{p}attention.output.LayerNorm"));
        norms.push(format!("{p}output.LayerNorm"));
    }
    for name in norms {
        put(format!("{name}.weight"), &[h], 0.0, Some(1.0))?;
        put(format!("{name}.bias"), &[h], 0.0, Some(0.0))?;
    }
    let model = BertModel::load(&w, &config, Path::new("tiny-random/config.json"))?;
    let tokenizer = UnigramTokenizer::new(pieces, scores, HashMap::new(), [0, 1, 2, 3]);
    let parts = EncoderParts {
        name: "tiny-random".into(),
        tokenizer: Box::new(tokenizer),
        pooling,
        query_prefix: String::new(),
        passage_prefix: String::new(),
        max_len: 64,
        pad_id: 2,
        weights_digest: format!("tiny-random-{seed}"),
    };
    BertEncoder::new(model, parts)
}
