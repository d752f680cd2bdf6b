//! LoRA and full updates: gradients of the training forward match finite differences (f64),
//! save → load gives the same adapter (PEFT format for LoRA), and a merged adapter gives the
//! vectors the training forward gives (also through a merged Hugging Face folder).

use candle_core::{DType, Device, Tensor};
use juris_ml::lora::{LoraAdapter, LoraConfig, LoraTrain, SplitMix64};
use juris_ml::models::bert::Pooling;
use juris_ml::models::tiny::tiny_random_encoder;
use juris_ml::{Encoder, TextRole};

const ALL: &[&str] = juris_ml::lora::BERT_LORA_TARGETS;

/// An adapter on every linear layer with `B` random too (fresh `B` is zero, which would make
/// every gradient of `A` zero and the check vacuous).
fn random_lora(enc: &juris_ml::models::bert::BertEncoder, dtype: DType, seed: u64) -> LoraTrain {
    randomized(LoraConfig::new(2, 4.0, 0.0, ALL, "tiny"), enc, dtype, seed)
}

/// A full-update adapter on every linear layer with random `ΔW` and `Δb` (fresh ones are
/// zero).
fn random_full(enc: &juris_ml::models::bert::BertEncoder, dtype: DType, seed: u64) -> LoraTrain {
    randomized(LoraConfig::full(ALL, "tiny"), enc, dtype, seed)
}

fn randomized(
    cfg: LoraConfig,
    enc: &juris_ml::models::bert::BertEncoder,
    dtype: DType,
    seed: u64,
) -> LoraTrain {
    let full = cfg.is_full();
    let modules = enc.model().linears();
    let lora = LoraTrain::init(cfg, &modules, seed, dtype, &Device::Cpu).unwrap();
    let mut rng = SplitMix64(seed ^ 0xabc);
    for (_, (a, b)) in lora.vars.iter() {
        let vars = if full { vec![a, b] } else { vec![b] };
        for var in vars {
            let n = var.as_tensor().elem_count();
            let v: Vec<f64> = (0..n).map(|_| rng.next_f64() * 0.2 - 0.1).collect();
            let t = Tensor::from_vec(v, var.as_tensor().shape(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            var.set(&t).unwrap();
        }
    }
    lora
}

/// Every module's two tensors of `a` equal `b`'s, value for value.
fn assert_same_tensors(a: &LoraAdapter, b: &LoraAdapter) {
    for (path, p) in &a.modules {
        let q = &b.modules[path];
        for (x, y) in [(&p.a, &q.a), (&p.b, &q.b)] {
            let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(x, y, "{path}");
        }
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn lora_gradients_match_finite_differences() {
    let enc = tiny_random_encoder(11, DType::F64, Pooling::Mean).unwrap();
    gradients_match_finite_differences(&enc, &random_lora(&enc, DType::F64, 5));
}

#[test]
fn full_update_gradients_match_finite_differences() {
    let enc = tiny_random_encoder(11, DType::F64, Pooling::Mean).unwrap();
    let full = random_full(&enc, DType::F64, 5);
    assert!(full.named_vars()[0].0.ends_with(".full_W"));
    gradients_match_finite_differences(&enc, &full);
}

fn gradients_match_finite_differences(enc: &juris_ml::models::bert::BertEncoder, lora: &LoraTrain) {
    let texts = ["abc de", "f ghij kl", "m"];
    let probe = {
        let mut rng = SplitMix64(99);
        let v: Vec<f64> = (0..texts.len() * 32)
            .map(|_| rng.next_f64() - 0.5)
            .collect();
        Tensor::from_vec(v, (texts.len(), 32), &Device::Cpu).unwrap()
    };
    let loss = |lora: &LoraTrain| -> Tensor {
        let e = enc
            .embed_train(&texts, TextRole::Query, 64, Some(lora))
            .unwrap();
        (e * &probe).unwrap().sum_all().unwrap()
    };
    let grads = loss(lora).backward().unwrap();
    let eps = 1e-5;
    let mut checked = 0;
    for (name, var) in lora.named_vars() {
        // A few entries of a few modules keep the test fast.
        if !(name.contains("layer.0.attention.self.query")
            || name.contains("layer.1.output.dense")
            || name.contains("layer.1.attention.self.key"))
        {
            continue;
        }
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for idx in [0, base.len() / 2, base.len() - 1] {
            let at = |delta: f64| -> f64 {
                let mut v = base.clone();
                v[idx] += delta;
                let t = Tensor::from_vec(v, var.as_tensor().shape(), &Device::Cpu).unwrap();
                var.set(&t).unwrap();
                loss(lora).to_scalar::<f64>().unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            let t = Tensor::from_vec(base.clone(), var.as_tensor().shape(), &Device::Cpu).unwrap();
            var.set(&t).unwrap();
            let tol = 1e-6 + 1e-4 * fd.abs().max(g[idx].abs());
            assert!(
                (fd - g[idx]).abs() <= tol,
                "{name}[{idx}]: backprop {} vs finite difference {fd}",
                g[idx]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 18);
}

#[test]
fn peft_save_load_round_trip() {
    let enc = tiny_random_encoder(3, DType::F32, Pooling::Mean).unwrap();
    let lora = random_lora(&enc, DType::F32, 8);
    let adapter = lora.to_adapter().unwrap();
    let dir = tempfile::tempdir().unwrap();
    adapter.save(dir.path()).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "FEATURE_EXTRACTION");
    assert_eq!(cfg["r"], 2);
    let st =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let a = &st["base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"];
    let b = &st["base_model.model.encoder.layer.0.attention.self.query.lora_B.weight"];
    assert_eq!(a.dims(), [2, 32]);
    assert_eq!(b.dims(), [32, 2]);
    assert_eq!(st.len(), 2 * 6 * 2);

    let back = LoraAdapter::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(back.config, adapter.config);
    assert_eq!(back.modules.len(), adapter.modules.len());
    assert_same_tensors(&adapter, &back);
}

#[test]
fn merged_adapter_matches_training_forward_and_changes_fingerprint() {
    let enc = tiny_random_encoder(4, DType::F32, Pooling::Mean).unwrap();
    let lora = random_lora(&enc, DType::F32, 9);
    let texts = ["abc de", "f ghij kl mn", "o"];
    let trained: Vec<f32> = enc
        .embed_train(&texts, TextRole::Passage, 64, Some(&lora))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let plain = enc.encode(&texts, TextRole::Passage).unwrap();
    let dir = tempfile::tempdir().unwrap();
    lora.to_adapter().unwrap().save(dir.path()).unwrap();
    let mut merged = tiny_random_encoder(4, DType::F32, Pooling::Mean).unwrap();
    merged.apply_adapter(dir.path()).unwrap();
    let fast = merged.encode(&texts, TextRole::Passage).unwrap();
    let max_diff = max_abs_diff(&trained, &fast);
    assert!(max_diff < 1e-5, "merged fast path differs by {max_diff}");
    let moved = max_abs_diff(&plain, &fast);
    assert!(moved > 1e-3, "the adapter changed nothing ({moved})");
    assert_ne!(merged.fingerprint(), enc.fingerprint());
    assert!(merged.fingerprint().contains(":lora="));
}

#[test]
fn adapter_for_another_model_is_refused() {
    let enc = tiny_random_encoder(4, DType::F32, Pooling::Mean).unwrap();
    let lora = random_lora(&enc, DType::F32, 9);
    let mut adapter = lora.to_adapter().unwrap();
    let p = adapter.modules["encoder.layer.0.attention.self.query"].clone();
    adapter
        .modules
        .insert("encoder.layer.7.attention.self.query".into(), p);
    let dir = tempfile::tempdir().unwrap();
    adapter.save(dir.path()).unwrap();
    let mut other = tiny_random_encoder(4, DType::F32, Pooling::Mean).unwrap();
    let err = other.apply_adapter(dir.path()).unwrap_err().to_string();
    assert!(err.contains("encoder.layer.7"), "{err}");
}

#[test]
fn full_update_round_trips_and_merges_like_the_training_forward() {
    let enc = tiny_random_encoder(4, DType::F32, Pooling::Mean).unwrap();
    let full = random_full(&enc, DType::F32, 9);
    let texts = ["abc de", "f ghij kl mn", "o"];
    let trained: Vec<f32> = enc
        .embed_train(&texts, TextRole::Passage, 64, Some(&full))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let adapter = full.to_adapter().unwrap();
    let dir = tempfile::tempdir().unwrap();
    adapter.save(dir.path()).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "FULL");
    let st =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let dw = &st["base_model.model.encoder.layer.0.intermediate.dense.full.weight"];
    let db = &st["base_model.model.encoder.layer.0.intermediate.dense.full.bias"];
    assert_eq!(
        (dw.dims(), db.dims()),
        ([64, 32].as_slice(), [64].as_slice())
    );
    let back = LoraAdapter::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(back.config, adapter.config);
    assert_same_tensors(&adapter, &back);
    // Merged into the encoder (weights and biases), the fast path gives the same vectors.
    let mut merged = tiny_random_encoder(4, DType::F32, Pooling::Mean).unwrap();
    merged.apply_adapter(dir.path()).unwrap();
    let fast = merged.encode(&texts, TextRole::Passage).unwrap();
    let max_diff = max_abs_diff(&trained, &fast);
    assert!(max_diff < 1e-5, "merged full update differs by {max_diff}");
    let plain = enc.encode(&texts, TextRole::Passage).unwrap();
    let moved = max_abs_diff(&plain, &fast);
    assert!(moved > 1e-3, "the update changed nothing ({moved})");
    // A decoder refuses it with a message, not a panic.
    let err = juris_ml::decoder_lora::load_decoder_adapter(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("BERT-family"), "{err}");
}
