//! End-to-end training on a tiny random BERT and a tiny synthetic BEIR dataset (CPU, a few
//! seconds): the loss falls, and a run stopped part-way and resumed ends with exactly the
//! adapter and metrics log of an uninterrupted run.

mod common;

use std::path::Path;

use common::write_dataset;

use candle_core::DType;
use juris_index::NoProgress;
use juris_ml::models::bert::Pooling;
use juris_ml::models::tiny::tiny_random_encoder;
use juris_train::{train_with, TrainConfig, TrainOptions};

fn config(data: &Path, out: &Path, epochs: usize, two_phases: bool) -> TrainConfig {
    let text = config_text(data, out, epochs, two_phases);
    TrainConfig::parse(&text, Path::new("test.toml")).unwrap()
}

/// The TOML of [`config`], for tests that change a line before parsing.
fn config_text(data: &Path, out: &Path, epochs: usize, two_phases: bool) -> String {
    common::tiny_config_text(data, out, epochs, two_phases)
}

fn encoder() -> juris_ml::models::bert::BertEncoder {
    tiny_random_encoder(21, DType::F32, Pooling::Mean).unwrap()
}

fn losses(out: &Path) -> Vec<f64> {
    juris_train::report::read(&out.join("metrics.jsonl"))
        .iter()
        .filter_map(|r| r.get("loss").and_then(|l| l.as_f64()))
        .collect()
}

/// The mean loss of the last 3 logged steps is below 70 % of the first 3's.
fn assert_loss_falls(out: &Path) {
    let l = losses(out);
    let first: f64 = l[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = l[l.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(
        last < 0.7 * first,
        "loss did not fall: {first:.4} -> {last:.4} ({l:?})"
    );
}

#[test]
fn loss_falls_on_a_tiny_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let out = tmp.path().join("run");
    let cfg = config(&data, &out, 6, false);
    let enc = encoder();
    let o = train_with(&cfg, &enc, &TrainOptions::default(), &NoProgress, &|_| {}).unwrap();
    assert!(o.finished);
    // 24 queries / (4 × 2) = 3 steps per epoch.
    assert_eq!(o.steps, 18);
    assert_eq!(losses(&out).len(), 18);
    assert_loss_falls(&out);
    assert!(!juris_ml::rerank::is_cross_encoder_adapter(
        &out.join("adapter")
    ));
    for f in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "negatives-bm25.jsonl",
        "metrics.svg",
        "best-bm25/adapter_model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let z = o.zero_shot.unwrap();
    assert_eq!(z.len(), 3);
    assert!(o.final_dev.is_some());
}

/// The throughput counters of each logged step.
const THROUGHPUT_FIELDS: &[&str] = &["train_s", "samples", "texts", "tokens", "padded_tokens"];

/// Every logged step carries cumulative throughput counters that never decrease, count the
/// batches' queries and texts exactly, and agree with the outcome's totals.
#[test]
fn step_records_carry_monotone_throughput_counters() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let out = tmp.path().join("run");
    let cfg = config(&data, &out, 2, false);
    let enc = encoder();
    let o = train_with(&cfg, &enc, &TrainOptions::default(), &NoProgress, &|_| {}).unwrap();
    let steps: Vec<serde_json::Value> = juris_train::report::read(&out.join("metrics.jsonl"))
        .into_iter()
        .filter(|r| r.get("loss").is_some())
        .collect();
    assert_eq!(steps.len(), 6);
    let field = |r: &serde_json::Value, k: &str| -> f64 {
        r.get(k)
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| panic!("{k} missing in {r}"))
    };
    let mut prev = [0f64; 5];
    for (i, r) in steps.iter().enumerate() {
        let now: Vec<f64> = THROUGHPUT_FIELDS.iter().map(|k| field(r, k)).collect();
        for (k, (p, n)) in THROUGHPUT_FIELDS.iter().zip(prev.iter().zip(&now)) {
            assert!(n >= p, "{k} went down at step {}: {p} -> {n}", i + 1);
        }
        // 8 queries a step (batch 4 × grad_accum 2), each with a positive and 3 negatives.
        assert_eq!(now[1], 8.0 * (i + 1) as f64);
        assert_eq!(now[2], 8.0 * 5.0 * (i + 1) as f64);
        // Every text has at least its two special tokens; padding only adds.
        assert!(now[3] >= 2.0 * now[2] && now[4] >= now[3], "{r}");
        prev.copy_from_slice(&now);
    }
    let t = o.throughput;
    assert_eq!(t.steps, 6);
    assert_eq!(t.samples as f64, prev[1]);
    assert_eq!(t.tokens as f64, prev[3]);
    assert!(t.summary().contains("samples/s"));
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let enc = encoder();
    let full = tmp.path().join("full");
    let cfg = config(&data, &full, 2, true);
    let o = train_with(&cfg, &enc, &TrainOptions::default(), &NoProgress, &|_| {}).unwrap();
    assert_eq!(o.steps, 9);

    let parts = tmp.path().join("parts");
    let cfg = config(&data, &parts, 2, true);
    // Stop mid-epoch in phase 1 (step 5 is no checkpoint step), then in phase 2, then finish.
    for stop in [Some(5), Some(7), None] {
        let opts = TrainOptions {
            stop_after_steps: stop,
            ..Default::default()
        };
        let o = train_with(&cfg, &enc, &opts, &NoProgress, &|_| {}).unwrap();
        assert_eq!(o.finished, stop.is_none());
    }
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert_eq!(
        read(&full, "adapter/adapter_model.safetensors"),
        read(&parts, "adapter/adapter_model.safetensors"),
        "adapters differ"
    );
    assert_eq!(
        read(&full, "negatives-mined.jsonl"),
        read(&parts, "negatives-mined.jsonl")
    );
    // Throughput counters are per process (timings, and a resumed run counts from 0).
    let strip = |d: &Path| -> Vec<serde_json::Value> {
        let mut recs = juris_train::report::read(&d.join("metrics.jsonl"));
        for r in &mut recs {
            if let Some(o) = r.as_object_mut() {
                for k in THROUGHPUT_FIELDS {
                    o.remove(*k);
                }
            }
        }
        recs
    };
    assert_eq!(strip(&full), strip(&parts));
}

#[test]
fn resume_with_another_config_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let enc = encoder();
    let out = tmp.path().join("run");
    let cfg = config(&data, &out, 1, false);
    let opts = TrainOptions {
        stop_after_steps: Some(1),
        ..Default::default()
    };
    train_with(&cfg, &enc, &opts, &NoProgress, &|_| {}).unwrap();
    let mut other = cfg.clone();
    other.train.lr = 1e-3;
    let e = train_with(&other, &enc, &TrainOptions::default(), &NoProgress, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("different config"), "{e}");
}

/// The fetched tiny GGUF decoder (`scripts/fetch-models.sh tinycoder`), if present.
fn tiny_gguf() -> Option<std::path::PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tinycoder/tiny.gguf");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} is absent (scripts/fetch-models.sh tinycoder)",
            p.display()
        );
        None
    }
}

/// Makes `cfg` train the GGUF decoder at `gguf` (LoRA on its projections).
fn use_decoder(cfg: &mut TrainConfig, gguf: &Path) {
    cfg.model.path = gguf.display().to_string();
    cfg.lora.target_modules = juris_ml::DECODER_LORA_TARGETS
        .iter()
        .map(|s| s.to_string())
        .collect();
}

#[test]
fn decoder_retriever_trains_and_embeds_as_search_does() {
    let Some(gguf) = tiny_gguf() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let out = tmp.path().join("run");
    let mut cfg = config(&data, &out, 6, false);
    use_decoder(&mut cfg, &gguf);
    let o = juris_train::train(&cfg, &TrainOptions::default(), &NoProgress, &|_| {}).unwrap();
    assert!(o.finished);
    assert_eq!(o.steps, 18);
    let l = losses(&out);
    let first: f64 = l[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = l[l.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(
        last < 0.8 * first,
        "loss did not fall: {first:.4} -> {last:.4} ({l:?})"
    );
    let adapter = out.join("adapter");
    let cfg_json = std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap();
    assert!(cfg_json.contains("q_proj"), "{cfg_json}");
    // `juris embed --adapter` (merged f32 weights) embeds as the training path does.
    let opts = juris_ml::EncoderOptions {
        max_len: 32,
        ..Default::default()
    };
    let enc =
        juris_ml::load_encoder_with_adapter(&gguf.display().to_string(), &opts, Some(&adapter))
            .unwrap();
    let base = juris_ml::load_encoder(&gguf.display().to_string(), &opts).unwrap();
    assert_ne!(enc.fingerprint(), base.fingerprint());
    let trained = juris_train::retrieval_model::DecoderRetrieval::from_adapter(
        &gguf,
        &adapter,
        juris_ml::models::decoder_layers::WeightMode::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    use juris_train::retrieval_model::RetrievalModel;
    let texts = [
        "abc de fgh",
        "a much longer text with several words in it",
        "x",
    ];
    for role in [juris_ml::TextRole::Query, juris_ml::TextRole::Passage] {
        let a = enc.encode(&texts, role).unwrap();
        let b: Vec<f32> = trained
            .embed_train(&texts, role, 32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base_v = base.encode(&texts, role).unwrap();
        let d = enc.dim();
        for i in 0..texts.len() {
            let dot = |x: &[f32], y: &[f32]| -> f32 { x.iter().zip(y).map(|(p, q)| p * q).sum() };
            let (x, y, z) = (
                &a[i * d..(i + 1) * d],
                &b[i * d..(i + 1) * d],
                &base_v[i * d..(i + 1) * d],
            );
            assert!(dot(x, y) > 0.9999, "text {i}: cos {}", dot(x, y));
            assert!(dot(x, z) < 0.9999, "text {i}: the adapter changed nothing");
        }
    }
}

#[test]
fn lora_init_continues_a_saved_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let enc = encoder();
    let first = tmp.path().join("first");
    let a = train_with(
        &config(&data, &first, 1, false),
        &enc,
        &TrainOptions::default(),
        &NoProgress,
        &|_| {},
    )
    .unwrap();

    // A second run that starts from the first one's adapter evaluates, before its first
    // step, exactly what the first run measured at its end.
    let second = tmp.path().join("second");
    let mut cfg = config(&data, &second, 1, false);
    cfg.lora.init = Some(first.join("adapter"));
    let notes = std::cell::RefCell::new(Vec::new());
    let b = train_with(&cfg, &enc, &TrainOptions::default(), &NoProgress, &|n| {
        notes.borrow_mut().push(n.to_string())
    })
    .unwrap();
    assert!(notes
        .borrow()
        .iter()
        .any(|n| n.starts_with("starting from the adapter")));
    assert_eq!(b.zero_shot, a.final_dev);
    assert_ne!(b.zero_shot, a.zero_shot);
    assert!(b.finished && b.steps == 3);

    // An adapter of another shape is refused, naming the folder and both ranks.
    let mut other = config(&data, &tmp.path().join("third"), 1, false);
    other.lora.r = 8;
    other.lora.init = Some(first.join("adapter"));
    let e = train_with(&other, &enc, &TrainOptions::default(), &NoProgress, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lora.init") && e.contains("has r 4") && e.contains("says r 8"),
        "{e}"
    );
    let missing = tmp.path().join("nowhere");
    other.lora.r = 4;
    other.lora.init = Some(missing.clone());
    let e = train_with(&other, &enc, &TrainOptions::default(), &NoProgress, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
}

/// `[lora] full = true`: every linear layer's weight and bias train (no low-rank factors);
/// the loss falls as with LoRA, the saved update is a full-update adapter, and a dropout
/// setting, which only LoRA has, is refused with the key named.
#[test]
fn full_fine_tuning_loss_falls_and_saves_a_full_update() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let out = tmp.path().join("run");
    // The LoRA test config with a full update instead of the low-rank factors, a smaller
    // learning rate and no checkpoints.
    let text = |dropout: f64| {
        config_text(&data, &out, 6, false)
            .replace(
                "r = 4\nalpha = 8\ndropout = 0.1",
                &format!("full = true\ndropout = {dropout}"),
            )
            .replace("lr = 5e-3", "lr = 1e-3")
            .replace("checkpoint_every = 2\n", "")
    };
    let err = TrainConfig::parse(&text(0.1), Path::new("full.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("full.toml") && err.contains("lora.dropout"),
        "{err}"
    );
    let cfg = TrainConfig::parse(&text(0.0), Path::new("full.toml")).unwrap();
    let enc = encoder();
    let o = train_with(&cfg, &enc, &TrainOptions::default(), &NoProgress, &|_| {}).unwrap();
    assert!(o.finished);
    assert_loss_falls(&out);
    let adapter =
        juris_ml::lora::LoraAdapter::load(&out.join("adapter"), &candle_core::Device::Cpu).unwrap();
    assert!(adapter.config.is_full());
    // All 6 linear layers of both blocks, each with ΔW [out, in] and Δb [out].
    assert_eq!(adapter.modules.len(), 12);
    let p = &adapter.modules["encoder.layer.1.output.dense"];
    assert_eq!(
        (p.a.dims(), p.b.dims()),
        ([32, 64].as_slice(), [32].as_slice())
    );
}

/// With `select_across_phases` and `[lora] init`, the starting adapter (e.g. a phase 1
/// trained by another run) competes as the phase before the first: a phase 2 that makes dev
/// worse ends the run on the starting adapter.
#[test]
fn select_across_phases_counts_the_init_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let enc = encoder();
    let first = tmp.path().join("first");
    let a = train_with(
        &config(&data, &first, 2, false),
        &enc,
        &TrainOptions::default(),
        &NoProgress,
        &|_| {},
    )
    .unwrap();
    let second = tmp.path().join("second");
    let cfg = wrecked_phase_after(&data, &second, &first.join("adapter"));
    let notes = std::cell::RefCell::new(Vec::new());
    let b = train_with(&cfg, &enc, &TrainOptions::default(), &NoProgress, &|n| {
        notes.borrow_mut().push(n.to_string())
    })
    .unwrap();
    let start = a.final_dev.unwrap();
    assert_eq!(b.zero_shot.as_ref(), Some(&start));
    let after = dev_ndcg(&second, "bm25");
    assert!(
        after[0] < ndcg10(&start),
        "lr 5.0 should make the phase worse: {after:?}"
    );
    assert!(notes
        .borrow()
        .iter()
        .any(|n| n.contains("keeping best-init")));
    let read = |p: &str| std::fs::read(second.join(p)).unwrap();
    assert_eq!(
        read("adapter/adapter_model.safetensors"),
        read("best-init/adapter_model.safetensors")
    );
    assert_eq!(b.final_dev, Some(start));
}

/// The same with a GGUF decoder retriever, whose module paths (`model.layers.{i}...`) the
/// PEFT reader shortens: the run must still end on the starting adapter, bit for bit.
#[test]
fn select_across_phases_restores_a_decoder_adapter() {
    let Some(gguf) = tiny_gguf() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let first = tmp.path().join("first");
    let mut c1 = config(&data, &first, 1, false);
    use_decoder(&mut c1, &gguf);
    let a = juris_train::train(&c1, &TrainOptions::default(), &NoProgress, &|_| {}).unwrap();
    let second = tmp.path().join("second");
    let mut c2 = wrecked_phase_after(&data, &second, &first.join("adapter"));
    use_decoder(&mut c2, &gguf);
    let b = juris_train::train(&c2, &TrainOptions::default(), &NoProgress, &|_| {}).unwrap();
    let start = a.final_dev.unwrap();
    assert_eq!(b.zero_shot.as_ref(), Some(&start));
    let after = dev_ndcg(&second, "bm25");
    assert!(
        after[0] < ndcg10(&start),
        "lr 5.0 should make the phase worse: {after:?}"
    );
    assert_eq!(b.final_dev, Some(start));
}

/// The dev nDCG@10 values logged after each epoch of `phase`.
fn dev_ndcg(out: &Path, phase: &str) -> Vec<f64> {
    juris_train::report::read(&out.join("metrics.jsonl"))
        .iter()
        .filter(|r| r.get("phase").and_then(|p| p.as_str()) == Some(phase))
        .filter_map(|r| r.pointer("/dev/ndcg@10").and_then(|v| v.as_f64()))
        .collect()
}

/// nDCG@10 of a run's dev metrics.
fn ndcg10(m: &[(String, f64)]) -> f64 {
    m.iter().find(|(k, _)| k == "ndcg@10").unwrap().1
}

/// One phase from the adapter in `init`, selecting across phases, at a learning rate (5.0)
/// that wrecks the adapter.
fn wrecked_phase_after(data: &Path, out: &Path, init: &Path) -> TrainConfig {
    let text = config_text(data, out, 1, false)
        .replace("seed = 7", "seed = 7\nselect_across_phases = true")
        .replace("random_negatives = 1", "random_negatives = 1\nlr = 5.0");
    let mut cfg = TrainConfig::parse(&text, Path::new("test.toml")).unwrap();
    cfg.lora.init = Some(init.to_path_buf());
    cfg
}

/// With `select_across_phases`, a phase 2 that makes dev worse (here: a learning rate that
/// wrecks the adapter) ends the run on phase 1's best adapter; without it, phase 2's
/// adapter is kept, as the paper does.
#[test]
fn select_across_phases_keeps_phase_one_when_phase_two_is_worse() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let enc = encoder();
    let mut finals = Vec::new();
    for select in [true, false] {
        let out = tmp.path().join(format!("run-{select}"));
        let text = config_text(&data, &out, 2, true)
            .replace(
                "seed = 7",
                &format!("seed = 7\nselect_across_phases = {select}"),
            )
            .replace("relative_margin = 0.05", "relative_margin = 0.05\nlr = 5.0");
        let cfg = TrainConfig::parse(&text, Path::new("test.toml")).unwrap();
        let o = train_with(&cfg, &enc, &TrainOptions::default(), &NoProgress, &|_| {}).unwrap();
        assert!(o.finished);
        let best1 = dev_ndcg(&out, "bm25").into_iter().fold(f64::MIN, f64::max);
        let p2 = dev_ndcg(&out, "mined");
        assert_eq!(p2.len(), 1, "phase 2 ran one epoch");
        assert!(
            p2[0] < best1,
            "lr 5.0 should make phase 2 worse: {best1} -> {}",
            p2[0]
        );
        let read = |p: &str| std::fs::read(out.join(p)).unwrap();
        let final_adapter = read("adapter/adapter_model.safetensors");
        let final_ndcg = ndcg10(&o.final_dev.unwrap());
        if select {
            assert_eq!(final_adapter, read("best-bm25/adapter_model.safetensors"));
            assert!((final_ndcg - best1).abs() < 1e-9, "{final_ndcg} vs {best1}");
        } else {
            assert_eq!(final_adapter, read("best-mined/adapter_model.safetensors"));
            assert!(
                (final_ndcg - p2[0]).abs() < 1e-9,
                "{final_ndcg} vs {}",
                p2[0]
            );
        }
        finals.push(final_adapter);
    }
    assert_ne!(finals[0], finals[1]);
}

/// `[model] eval_max_len` sets the passage length of the dev evaluation (here the base
/// model's zero-shot numbers): passages cut to 3 tokens rank differently from whole ones,
/// leaving it out evaluates at `max_len`, and it may exceed the training length.
#[test]
fn eval_max_len_sets_the_dev_passage_length() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let enc = encoder();
    // `model_lines` replaces the template's `max_len = 32` line.
    let zero_shot = |model_lines: &str, name: &str| {
        let out = tmp.path().join(name);
        let text = config_text(&data, &out, 1, false)
            .replace("max_len = 32", model_lines)
            .replace("seed = 7", "seed = 7\nmax_steps = 1");
        let cfg = TrainConfig::parse(&text, Path::new("test.toml")).unwrap();
        let o = train_with(&cfg, &enc, &TrainOptions::default(), &NoProgress, &|_| {}).unwrap();
        o.zero_shot.unwrap()
    };
    let default = zero_shot("max_len = 32", "default");
    assert_eq!(
        zero_shot("max_len = 32\neval_max_len = 32", "same"),
        default
    );
    assert_ne!(
        zero_shot("max_len = 32\neval_max_len = 3", "short"),
        default
    );
    assert_ne!(
        zero_shot("max_len = 3\neval_max_len = 32", "long-eval"),
        zero_shot("max_len = 3", "short-training")
    );
    let bad = config_text(&data, &tmp.path().join("bad"), 1, false)
        .replace("max_len = 32", "max_len = 32\neval_max_len = 1");
    let err = TrainConfig::parse(&bad, Path::new("bad.toml")).unwrap_err();
    assert!(err.to_string().contains("eval_max_len"), "{err}");
}

/// A first-stage run for [`write_dataset`]'s queries: each query's positive at rank 3 (or
/// the rank its number gives, so that the reranked metrics have room to move), the other
/// passages in a fixed shuffled order.
fn write_candidates(path: &Path) {
    let mut text = String::new();
    for q in 0..32usize {
        let mut docs: Vec<usize> = (0..32).filter(|&d| d != q).collect();
        juris_ml::lora::SplitMix64(q as u64 + 1).shuffle(&mut docs);
        docs.truncate(11);
        docs.insert(2 + q % 5, q);
        for (r, d) in docs.iter().enumerate() {
            text.push_str(&format!("q{q} Q0 d{d} {} {} first\n", r + 1, 20 - r));
        }
    }
    std::fs::write(path, text).unwrap();
}

/// `[rerank]`: the tiny model trained as a cross-encoder on negatives from a first-stage run
/// — the loss falls, the dev evaluation reranks the run's hits, and the saved adapter, loaded
/// the way `juris rerank` loads it ([`juris_ml::rerank::CrossEncoder`]), ranks the dev
/// queries exactly as the trainer's final evaluation did.
#[test]
fn cross_encoder_trains_on_candidates_and_reranks_as_inference_does() {
    use juris_eval::{evaluate, Metric, MissingPolicy, Qrels, Run};
    use juris_ml::rerank::{CrossEncoder, Reranker};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let cands = tmp.path().join("first.trec");
    write_candidates(&cands);
    let out = tmp.path().join("run");
    let text = config_text(&data, &out, 20, false)
        .replace("max_len = 32", "max_len = 64")
        .replace("lr = 5e-3", "lr = 2e-2")
        .replace(
            "eval_split = \"dev\"",
            &format!("eval_split = \"dev\"\ncandidates = \"{}\"", cands.display()),
        )
        .replace("negatives = \"bm25\"", "negatives = \"candidates\"")
        + "[rerank]\ndepth = 8\n";
    let cfg = TrainConfig::parse(&text, Path::new("test.toml")).unwrap();
    let o = train_with(
        &cfg,
        &encoder(),
        &TrainOptions::default(),
        &NoProgress,
        &|_| {},
    )
    .unwrap();
    assert!(o.finished);
    assert_loss_falls(&out);
    let negs = std::fs::read_to_string(out.join("negatives-bm25.jsonl")).unwrap();
    assert!(negs.contains("\"qid\":\"q0\""));
    // Marked as a cross-encoder's, so that embedding tools refuse it.
    assert!(juris_ml::rerank::is_cross_encoder_adapter(
        &out.join("adapter")
    ));
    assert!(juris_ml::rerank::is_cross_encoder_adapter(
        &out.join("best-bm25")
    ));

    // Inference with the saved adapter, reranking the run's top 8 as the trainer does.
    let mut enc = encoder();
    enc.apply_adapter(&out.join("adapter")).unwrap();
    let ce = CrossEncoder::new(Box::new(enc), 5).unwrap();
    let first_stage = Run::read(&cands).unwrap();
    let corpus = std::fs::read_to_string(data.join("corpus.jsonl")).unwrap();
    let text_of = |id: &str| -> String {
        let line = corpus
            .lines()
            .find(|l| l.contains(&format!("\"_id\":\"{id}\"")))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["text"].as_str().unwrap().to_string()
    };
    let queries = std::fs::read_to_string(data.join("queries.jsonl")).unwrap();
    let mut run = Run::new("rerank");
    for q in 24..32 {
        let qid = format!("q{q}");
        let line = queries
            .lines()
            .find(|l| l.contains(&format!("\"_id\":\"{qid}\"")))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let hits = first_stage.ranked(&qid);
        let texts: Vec<String> = hits.iter().take(8).map(|(d, _)| text_of(d)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let scores = ce.score(v["text"].as_str().unwrap(), &refs).unwrap();
        for (r, (d, _)) in hits.iter().enumerate() {
            let s = scores.get(r).map_or(-(r as f64), |&s| 2.0 + f64::from(s));
            run.push(qid.clone(), d.to_string(), s).unwrap();
        }
    }
    let qrels = Qrels::read(&data.join("qrels/dev.tsv")).unwrap();
    let m = Metric::parse("mrr@10").unwrap();
    let want = evaluate(&run, &qrels, &[m], MissingPolicy::Zero)
        .mean(m)
        .unwrap();
    let got = o
        .final_dev
        .unwrap()
        .iter()
        .find(|(k, _)| k == "mrr@10")
        .unwrap()
        .1;
    assert!(
        (want - got).abs() < 1e-6,
        "inference {want} vs trainer {got}"
    );
    // The first-stage run alone (positive at ranks 3..7) has MRR@10 below 1; reranking moved it.
    let base = evaluate(&first_stage, &qrels, &[m], MissingPolicy::Zero)
        .mean(m)
        .unwrap();
    assert_ne!(base, got);
}

/// A cross-encoder cannot mine with itself, and needs a first-stage run.
#[test]
fn cross_encoder_configs_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let base = config_text(&tmp.path().join("d"), &tmp.path().join("o"), 1, true) + "[rerank]\n";
    let e = TrainConfig::parse(&base, Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("mined") && e.contains("x.toml"), "{e}");
    let no_run = config_text(&tmp.path().join("d"), &tmp.path().join("o"), 1, false) + "[rerank]\n";
    let e = TrainConfig::parse(&no_run, Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("candidates"), "{e}");
    let cand = config_text(&tmp.path().join("d"), &tmp.path().join("o"), 1, false)
        .replace("negatives = \"bm25\"", "negatives = \"candidates\"");
    let e = TrainConfig::parse(&cand, Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("phase[0].negatives"), "{e}");
}
