//! `[train] gradient_checkpointing` on a tiny random BERT in f64: a micro-batch's loss and
//! adapter gradients equal those of plain training with dropout on (the recomputed blocks
//! draw the first forward's masks again), while other dropout seeds change them.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use juris_ml::lora::{LoraConfig, LoraTrain, SplitMix64, BERT_LORA_TARGETS};
use juris_ml::models::bert::Pooling;
use juris_ml::models::tiny::tiny_random_encoder;
use juris_train::retrieval_model::BertRetrieval;
use juris_train::step_profile::StepProfile;
use juris_train::{micro_step, Batch, TrainConfig};

fn config(checkpointing: bool) -> TrainConfig {
    let text = format!(
        "[model]\npath = \"tiny-random\"\nmax_len = 32\n[data]\ndir = \"-\"\n[train]\n\
         out = \"-\"\ntemperature = 0.1\ngradient_checkpointing = {checkpointing}\n\
         [[phase]]\nname = \"p\"\nnegatives = \"bm25\"\n"
    );
    TrainConfig::parse(&text, Path::new("test.toml")).unwrap()
}

/// All adapter gradients of one micro-batch, flattened in `named_vars` order, and its loss.
fn grads(model: &BertRetrieval, checkpointing: bool, dropout_seed: u64) -> (f64, Vec<f64>) {
    let batch = Batch {
        queries: vec!["abc de", "fgh ij klm", "nop"],
        passages: vec![
            "abc de fgh ij",
            "xyz uv w",
            "fgh ij klm nop qrs",
            "a b c d e f g",
            "nop qr st",
            "klm",
        ],
        targets: vec![0, 2, 4],
        excluded: vec![(1, 5)],
        pair_query: vec![],
    };
    let vars: Vec<Var> = model
        .lora
        .named_vars()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let s = micro_step(
        model,
        &batch,
        &config(checkpointing),
        dropout_seed,
        0.5,
        &vars,
        &mut StepProfile::off(),
    )
    .unwrap();
    let flat = s
        .grads
        .into_iter()
        .flat_map(|g| {
            g.expect("every variable gets a gradient")
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
        .collect();
    (s.loss, flat)
}

fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>();
    (num / den.max(1e-300)).sqrt()
}

#[test]
fn checkpointed_gradients_equal_plain_ones_with_dropout() {
    let enc = tiny_random_encoder(21, DType::F64, Pooling::Mean).unwrap();
    let cfg = LoraConfig::new(4, 8.0, 0.2, BERT_LORA_TARGETS, "tiny-random");
    let modules = BertRetrieval::modules(&enc, &cfg, "tiny-random").unwrap();
    let lora = LoraTrain::init(cfg, &modules, 3, DType::F64, &Device::Cpu).unwrap();
    // A fresh B is zero: A's gradients would vanish and dropout would change nothing.
    let mut rng = SplitMix64(17);
    for (_, b) in lora.vars.values() {
        let n = b.as_tensor().elem_count();
        let v: Vec<f64> = (0..n).map(|_| rng.next_f64() * 0.4 - 0.2).collect();
        b.set(&Tensor::from_vec(v, b.as_tensor().shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    let model = BertRetrieval::new(&enc, lora);
    let (loss_plain, plain) = grads(&model, false, 9);
    let (loss_ckpt, ckpt) = grads(&model, true, 9);
    assert!(
        (loss_plain - loss_ckpt).abs() < 1e-12,
        "{loss_plain} vs {loss_ckpt}"
    );
    let d = rel_l2(&ckpt, &plain);
    assert!(d < 1e-10, "checkpointed vs plain: rel L2 {d:e}");
    let (_, other) = grads(&model, false, 10);
    let m = rel_l2(&other, &plain);
    assert!(
        m > 1e-3,
        "other dropout masks changed the gradients by only {m:e}"
    );
}
