//! Test helper: writes tiny random GGUF decoders (llama, gemma3, qwen2 or qwen3 layout) with a small
//! SentencePiece vocabulary, so tests need no downloaded model.
#![allow(dead_code)]

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// Vocabulary: <unk>, <s>, </s>, 256 byte tokens, then a few pieces.
pub fn vocab() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for p in [
        "\u{2581}",
        "a",
        "b",
        "c",
        "\u{2581}a",
        "ab",
        "\u{2581}ab",
        "abc",
        "\u{2581}abc",
    ] {
        tokens.push(p.to_string());
        types.push(1);
    }
    let scores = (0..tokens.len()).map(|i| -(i as f32)).collect();
    (tokens, scores, types)
}

/// Options for [`write_tiny`].
pub struct Tiny<'a> {
    /// `general.architecture`.
    pub arch: &'a str,
    /// A tensor to leave out.
    pub drop_tensor: Option<&'a str>,
    /// A metadata key to leave out.
    pub drop_key: Option<&'a str>,
    /// Wider layers (hidden 64, 4 query heads of 16 over 2 kv heads, MLP 128) whose rows
    /// split into the 32-wide blocks of Q8_0/Q4_0.
    pub wide: bool,
    /// Storage type of the 2-D tensors (matrices and embedding); vectors stay f32.
    pub matrix_dtype: GgmlDType,
}

impl Default for Tiny<'_> {
    fn default() -> Self {
        Tiny {
            arch: "llama",
            drop_tensor: None,
            drop_key: None,
            wide: false,
            matrix_dtype: GgmlDType::F32,
        }
    }
}

fn rand(shape: &[usize], seed: u64) -> Tensor {
    // A small deterministic generator keeps the file identical across runs.
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.5
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

/// Writes a 2-layer model: hidden 16, 4 query heads of 8 (GQA over 2 kv heads), MLP 32
/// (or the wide sizes, see [`Tiny::wide`]).
pub fn write_tiny(path: &Path, opt: &Tiny) {
    let (tokens, scores, types) = vocab();
    let vocab_n = tokens.len();
    let (h, heads, kv, hd, ffn, layers) = if opt.wide {
        (64usize, 4usize, 2usize, 16usize, 128usize, 2usize)
    } else {
        (16usize, 4usize, 2usize, 8usize, 32usize, 2usize)
    };
    let a = opt.arch;
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.name".into(), Value::String("tiny".into())),
        (format!("{a}.embedding_length"), Value::U32(h as u32)),
        (format!("{a}.block_count"), Value::U32(layers as u32)),
        (format!("{a}.feed_forward_length"), Value::U32(ffn as u32)),
        (
            format!("{a}.attention.head_count"),
            Value::U32(heads as u32),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            Value::U32(kv as u32),
        ),
        (format!("{a}.attention.key_length"), Value::U32(hd as u32)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        ),
        (format!("{a}.rope.freq_base"), Value::F32(10000.0)),
        (format!("{a}.context_length"), Value::U32(128)),
        (format!("{a}.attention.sliding_window"), Value::U32(4)),
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(scores.iter().map(|&s| Value::F32(s)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
    ];
    meta.retain(|(k, _)| Some(k.as_str()) != opt.drop_key);
    let mut tensors: Vec<(String, Tensor)> =
        vec![("token_embd.weight".into(), rand(&[vocab_n, h], 1))];
    let ones_ish = |n: usize, seed: u64| (rand(&[n], seed) + 1.0).expect("add");
    for i in 0..layers {
        let s = 100 * (i as u64 + 1);
        let p = |n: &str| format!("blk.{i}.{n}");
        tensors.push((p("attn_norm.weight"), ones_ish(h, s)));
        tensors.push((p("attn_q.weight"), rand(&[heads * hd, h], s + 1)));
        tensors.push((p("attn_k.weight"), rand(&[kv * hd, h], s + 2)));
        tensors.push((p("attn_v.weight"), rand(&[kv * hd, h], s + 3)));
        tensors.push((p("attn_output.weight"), rand(&[h, heads * hd], s + 4)));
        tensors.push((p("ffn_norm.weight"), ones_ish(h, s + 5)));
        tensors.push((p("ffn_gate.weight"), rand(&[ffn, h], s + 6)));
        tensors.push((p("ffn_up.weight"), rand(&[ffn, h], s + 7)));
        tensors.push((p("ffn_down.weight"), rand(&[h, ffn], s + 8)));
        if a == "qwen2" {
            tensors.push((p("attn_q.bias"), rand(&[heads * hd], s + 13)));
            tensors.push((p("attn_k.bias"), rand(&[kv * hd], s + 14)));
            tensors.push((p("attn_v.bias"), rand(&[kv * hd], s + 15)));
        }
        if a == "qwen3" {
            tensors.push((p("attn_q_norm.weight"), ones_ish(hd, s + 9)));
            tensors.push((p("attn_k_norm.weight"), ones_ish(hd, s + 10)));
        }
        if a == "gemma3" {
            tensors.push((p("attn_q_norm.weight"), ones_ish(hd, s + 9)));
            tensors.push((p("attn_k_norm.weight"), ones_ish(hd, s + 10)));
            tensors.push((p("post_attention_norm.weight"), ones_ish(h, s + 11)));
            tensors.push((p("post_ffw_norm.weight"), ones_ish(h, s + 12)));
        }
    }
    tensors.push(("output_norm.weight".into(), ones_ish(h, 7)));
    tensors.retain(|(k, _)| Some(k.as_str()) != opt.drop_tensor);
    let q: Vec<(String, QTensor)> = tensors
        .into_iter()
        .map(|(k, t)| {
            let dtype = if t.dims().len() == 2 {
                opt.matrix_dtype
            } else {
                GgmlDType::F32
            };
            (k, QTensor::quantize(&t, dtype).expect("quantize"))
        })
        .collect();
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).expect("create");
    gguf_file::write(&mut f, &meta_refs, &q_refs).expect("write gguf");
}
