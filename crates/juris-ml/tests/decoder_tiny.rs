//! Decoder invariants on tiny random models (written in a temp dir, and the fetched
//! `models/tinycoder/tiny.gguf` when present): a text gives the same vector alone and in a
//! right-padded batch; left padding gives the same hidden states as no padding; the
//! quantized weight path runs; logits have the vocabulary's width.

mod gguf_common;

use std::path::{Path, PathBuf};

use candle_core::{Device, IndexOp, Tensor};
use gguf_common::{write_tiny, Tiny};
use juris_ml::gguf::GgufFile;
use juris_ml::models::decoder::{load_decoder, load_gguf_encoder, load_gguf_encoder_with};
use juris_ml::models::decoder_layers::WeightMode;
use juris_ml::{EncoderOptions, TextRole};

const TEXTS: &[&str] = &[
    "abc",
    "a",
    "ab abc ab abc c b a",
    "xyz é 東京",
    "",
    "abc abc",
];

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_batch_vs_alone(path: &Path) {
    let enc = load_gguf_encoder(path, &EncoderOptions::default()).unwrap();
    let dim = enc.dim();
    for role in [TextRole::Query, TextRole::Passage] {
        let batch = enc.encode(TEXTS, role).unwrap();
        assert_eq!(batch.len(), TEXTS.len() * dim);
        for (i, t) in TEXTS.iter().enumerate() {
            let alone = enc.encode(&[t], role).unwrap();
            let row = &batch[i * dim..(i + 1) * dim];
            let d = max_abs_diff(row, &alone);
            assert!(
                d < 1e-4,
                "{}: text {i} differs by {d} between batch and alone",
                path.display()
            );
            let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        }
    }
}

fn tiny_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for arch in ["llama", "gemma3"] {
        let p = dir.join(format!("tiny-{arch}.gguf"));
        write_tiny(
            &p,
            &Tiny {
                arch,
                ..Tiny::default()
            },
        );
        out.push(p);
    }
    out
}

#[test]
fn batch_and_alone_agree_on_written_models() {
    let dir = tempfile::tempdir().unwrap();
    for p in tiny_files(dir.path()) {
        check_batch_vs_alone(&p);
    }
}

#[test]
fn batch_and_alone_agree_on_tinycoder() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tinycoder/tiny.gguf");
    if !p.exists() {
        println!(
            "skipped: {} missing; run bash scripts/fetch-models.sh",
            p.display()
        );
        return;
    }
    check_batch_vs_alone(&p);
}

#[test]
fn left_padding_matches_unpadded_and_logits_have_vocab_width() {
    let dir = tempfile::tempdir().unwrap();
    for p in tiny_files(dir.path()) {
        let g = GgufFile::open(&p).unwrap();
        let m = load_decoder(&g, WeightMode::F32, &Device::Cpu).unwrap();
        let ids: Vec<u32> = vec![1, 260, 261, 262, 263, 264, 265, 5, 9];
        let n = ids.len();
        let one = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let ones = Tensor::ones((1, n), candle_core::DType::U32, &Device::Cpu).unwrap();
        let h1 = m.forward_hidden(&one, &ones).unwrap();
        let mut padded = vec![0u32; 3];
        padded.extend(&ids);
        let mut mask = vec![0u32; 3];
        mask.extend(vec![1u32; n]);
        let two = Tensor::new(padded.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mask = Tensor::new(mask.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let h2 = m.forward_hidden(&two, &mask).unwrap();
        let a: Vec<f32> = h1.i((0, n - 1)).unwrap().to_vec1().unwrap();
        let b: Vec<f32> = h2.i((0, n + 2)).unwrap().to_vec1().unwrap();
        assert!(
            max_abs_diff(&a, &b) < 1e-4,
            "{}: left padding changed the last state",
            p.display()
        );
        let logits = m.logits(&h1).unwrap();
        assert_eq!(logits.dims(), &[1, n, m.vocab_size()]);
    }
}

#[test]
fn quantized_weights_run_and_stay_close() {
    let dir = tempfile::tempdir().unwrap();
    for p in tiny_files(dir.path()) {
        let f = load_gguf_encoder_with(
            &p,
            &EncoderOptions::default(),
            WeightMode::F32,
            &Device::Cpu,
        )
        .unwrap();
        let q = load_gguf_encoder_with(
            &p,
            &EncoderOptions::default(),
            WeightMode::Quantized,
            &Device::Cpu,
        )
        .unwrap();
        use juris_ml::Encoder;
        assert_ne!(f.fingerprint(), q.fingerprint());
        let a = f.encode(&["ab abc"], TextRole::Query).unwrap();
        let b = q.encode(&["ab abc"], TextRole::Query).unwrap();
        // F32 tensors stay dense in both modes, so the numbers agree.
        assert!(max_abs_diff(&a, &b) < 1e-4);
    }
}

#[test]
fn truncation_keeps_eos_last() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.gguf");
    write_tiny(&p, &Tiny::default());
    let opts = EncoderOptions {
        max_len: 5,
        ..EncoderOptions::default()
    };
    let e = load_gguf_encoder_with(&p, &opts, WeightMode::F32, &Device::Cpu).unwrap();
    let ids = e
        .input_ids("abc abc abc abc abc abc", TextRole::Passage)
        .unwrap();
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[0], 1, "BOS first");
    assert_eq!(*ids.last().unwrap(), 2, "EOS last");
}
