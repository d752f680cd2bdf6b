//! Test helper: writes a tiny random GGUF decoder (`llama` layout, hidden 64 so that its
//! rows split into Q8_0 blocks) with a small SentencePiece vocabulary, ChatML control
//! tokens and, optionally, a ChatML chat template, so SFT tests need no downloaded model;
//! and a tiny BEIR dataset for the retriever-training tests.
#![allow(dead_code)]

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use juris_ml::lora::SplitMix64;

/// SmolLM2's template shape (a default system turn when there is none).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are tiny.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Vocabulary: <unk>, <s>, </s>, 256 byte tokens, a few pieces, then the ChatML markers.
fn vocab() -> (Vec<String>, Vec<f32>, Vec<i32>) {
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
    for m in ["<|im_start|>", "<|im_end|>"] {
        tokens.push(m.to_string());
        types.push(3);
    }
    let scores = (0..tokens.len()).map(|i| -(i as f32)).collect();
    (tokens, scores, types)
}

fn rand(shape: &[usize], seed: u64) -> Tensor {
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

/// Writes a 2-layer `llama` model (hidden 64, 4 query heads of 16 over 2 kv heads, MLP 128)
/// whose matrices are stored as `matrix_dtype`, with the ChatML template when `template`.
pub fn write_tiny_chat(path: &Path, matrix_dtype: GgmlDType, template: bool) {
    let (tokens, scores, types) = vocab();
    let vocab_n = tokens.len();
    let (h, heads, kv, hd, ffn, layers) = (64usize, 4usize, 2usize, 16usize, 128usize, 2usize);
    let a = "llama";
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.name".into(), Value::String("tiny-chat".into())),
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
        (format!("{a}.context_length"), Value::U32(256)),
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
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ];
    if template {
        meta.push((
            "tokenizer.chat_template".into(),
            Value::String(CHATML_TEMPLATE.into()),
        ));
    }
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
    }
    tensors.push(("output_norm.weight".into(), ones_ish(h, 7)));
    let q: Vec<(String, QTensor)> = tensors
        .into_iter()
        .map(|(k, t)| {
            let dtype = if t.dims().len() == 2 {
                matrix_dtype
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

/// 32 passages of random "words"; each query is three words of its passage. Queries 0..24
/// are train, 24..32 dev.
pub fn write_dataset(dir: &Path) {
    let mut rng = SplitMix64(2024);
    let mut word = || -> String {
        let n = 2 + rng.below(3);
        (0..n)
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect()
    };
    let mut corpus = String::new();
    let mut queries = String::new();
    let mut train = String::from("query-id\tcorpus-id\tscore\n");
    let mut dev = train.clone();
    for i in 0..32 {
        let words: Vec<String> = (0..6).map(|_| word()).collect();
        corpus.push_str(&format!(
            "{{\"_id\":\"d{i}\",\"title\":\"\",\"text\":\"{}\"}}\n",
            words.join(" ")
        ));
        queries.push_str(&format!(
            "{{\"_id\":\"q{i}\",\"text\":\"{} {} {}\"}}\n",
            words[0], words[2], words[4]
        ));
        let line = format!("q{i}\td{i}\t1\n");
        if i < 24 {
            train.push_str(&line);
        } else {
            dev.push_str(&line);
        }
    }
    std::fs::create_dir_all(dir.join("qrels")).unwrap();
    std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(dir.join("queries.jsonl"), queries).unwrap();
    std::fs::write(dir.join("qrels/train.tsv"), train).unwrap();
    std::fs::write(dir.join("qrels/dev.tsv"), dev).unwrap();
}

/// The TOML of a tiny training run on [`write_dataset`]'s data: the random BERT
/// (`tiny-random`), one BM25-negatives phase of `epochs` epochs and, with `two_phases`, one
/// epoch of re-mined negatives after it. Tests change lines before parsing it.
pub fn tiny_config_text(data: &Path, out: &Path, epochs: usize, two_phases: bool) -> String {
    let mut text = format!(
        r#"
[model]
path = "tiny-random"
max_len = 32
[lora]
r = 4
alpha = 8
dropout = 0.1
[data]
dir = "{}"
eval_split = "dev"
[train]
out = "{}"
seed = 7
batch_size = 4
grad_accum = 2
lr = 5e-3
warmup_ratio = 0.1
temperature = 0.1
checkpoint_every = 2
[[phase]]
name = "bm25"
epochs = {epochs}
negatives = "bm25"
top_k = 5
hard_negatives = 2
random_negatives = 1
"#,
        data.display(),
        out.display()
    );
    if two_phases {
        text.push_str(
            r#"
[[phase]]
name = "mined"
epochs = 1
negatives = "mined"
top_k = 5
hard_negatives = 2
relative_margin = 0.05
"#,
        );
    }
    text
}
