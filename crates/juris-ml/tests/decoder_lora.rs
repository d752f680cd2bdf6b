//! LoRA / QLoRA on the GGUF decoders, on tiny random models (llama and gemma3 layouts):
//! gradients of a loss on the logits with respect to every adapter variable kind match
//! central finite differences; through a Q8_0 / Q4_0 base kept quantized they match the
//! gradients of the dequantized base; SGD on a quantized base lowers a loss; a fresh adapter
//! leaves the model unchanged; PEFT save → load, merged and unmerged inference, and the KV
//! cache path agree; adapters that do not fit are refused with the file named; gradient
//! checkpointing per block gives the gradients of one graph, dropout on.

mod gguf_common;

use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor, Var};
use gguf_common::{write_tiny, Tiny};
use juris_ml::decoder_lora::{load_decoder_with_adapter, TrainableDecoder, DECODER_LORA_TARGETS};
use juris_ml::gguf::GgufFile;
use juris_ml::lora::{LoraConfig, SplitMix64};
use juris_ml::models::decoder::load_decoder;
use juris_ml::models::decoder_layers::{gguf_tensor_name, DecoderLinear, WeightMode};
use juris_ml::MlError;

fn tiny(dir: &Path, arch: &str, wide: bool, dtype: GgmlDType) -> PathBuf {
    let p = dir.join(format!("tiny-{arch}-{wide}-{dtype:?}.gguf"));
    write_tiny(
        &p,
        &Tiny {
            arch,
            wide,
            matrix_dtype: dtype,
            ..Tiny::default()
        },
    );
    p
}

fn config() -> LoraConfig {
    LoraConfig::new(2, 4.0, 0.0, DECODER_LORA_TARGETS, "")
}

/// Sets every `B` (and rescales no `A`) to seeded values in ±0.2: a fresh `B` is zero, which
/// would make every gradient of `A` zero and the check vacuous.
fn randomize_b(t: &TrainableDecoder, seed: u64) {
    let mut rng = SplitMix64(seed);
    for (_, (_, b)) in t.lora().vars.iter() {
        let n = b.as_tensor().elem_count();
        let v: Vec<f32> = (0..n)
            .map(|_| (rng.next_f64() * 0.4 - 0.2) as f32)
            .collect();
        b.set(&Tensor::from_vec(v, b.as_tensor().shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

/// Two rows, the second left-padded, so masks and positions from padding are exercised.
fn batch() -> (Tensor, Tensor) {
    let ids: Vec<u32> = vec![1, 260, 265, 262, 250, 50, 7, 0, 0, 1, 263, 266, 40, 201];
    let mask: Vec<u32> = vec![1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1];
    (
        Tensor::from_vec(ids, (2, 7), &Device::Cpu).unwrap(),
        Tensor::from_vec(mask, (2, 7), &Device::Cpu).unwrap(),
    )
}

/// A fixed random probe over the logits `[2, 7, vocab]`, zero at padding positions as a
/// training loss is. (A query on left padding sees only masked keys; its scores vanish in
/// the -1e30 of the mask, so in f32 its output does not depend on q or k, while backprop
/// gives softmax's exact derivative there. Nothing real depends on those rows, so the
/// gradients of any loss over real tokens are exact.)
fn probe(vocab: usize) -> Tensor {
    let mut rng = SplitMix64(99);
    let v: Vec<f64> = (0..2 * 7 * vocab).map(|_| rng.next_f64() - 0.5).collect();
    let (_, mask) = batch();
    let mask = mask.to_dtype(DType::F64).unwrap().unsqueeze(2).unwrap();
    Tensor::from_vec(v, (2, 7, vocab), &Device::Cpu)
        .unwrap()
        .broadcast_mul(&mask)
        .unwrap()
}

/// `sum(logits · probe)` with the sum in f64 (the forward is f32).
fn loss(t: &TrainableDecoder, probe: &Tensor) -> Tensor {
    let (ids, mask) = batch();
    let h = t.model().forward_hidden(&ids, &mask).unwrap();
    let logits = t.model().logits(&h).unwrap();
    (logits.to_dtype(DType::F64).unwrap() * probe)
        .unwrap()
        .sum_all()
        .unwrap()
}

fn var_values(v: &Var) -> Vec<f32> {
    v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
}

fn set_values(v: &Var, vals: Vec<f32>) {
    let t = Tensor::from_vec(vals, v.as_tensor().shape(), &Device::Cpu).unwrap();
    v.set(&t).unwrap();
}

fn check_finite_differences(arch: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), arch, false, GgmlDType::F32);
    let t = TrainableDecoder::new(&path, WeightMode::F32, config(), 3, &Device::Cpu).unwrap();
    randomize_b(&t, 17);
    let probe = probe(t.model().vocab_size());
    let grads = loss(&t, &probe).backward().unwrap();
    // f32 forward: eps 1e-2 keeps the rounding error of the difference (~1e-6 relative of a
    // loss of order 10, divided by 2·eps) near 1e-3, and the O(eps²) truncation error is of
    // the same order for these smooth functions.
    let eps = 1e-2f32;
    let mut checked = 0;
    let mut worst = 0.0f64;
    for (name, var) in t.lora().named_vars() {
        // Layer 0's q and k (permuted rows in llama files), layer 1's v, o and MLP.
        let wanted = [
            "layers.0.self_attn.q_proj",
            "layers.0.self_attn.k_proj",
            "layers.1.self_attn.v_proj",
            "layers.1.self_attn.o_proj",
            "layers.0.mlp.gate_proj",
            "layers.1.mlp.up_proj",
            "layers.1.mlp.down_proj",
        ];
        if !wanted.iter().any(|w| name.contains(w)) {
            continue;
        }
        let g: Vec<f32> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{arch}: no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base = var_values(&var);
        let gmax = g.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        assert!(gmax > 0.0, "{arch}: gradient of {name} is all zero");
        for idx in [0, base.len() / 3, base.len() / 2 + 1, base.len() - 1] {
            let at = |delta: f32| -> f64 {
                let mut v = base.clone();
                v[idx] += delta;
                set_values(&var, v);
                loss(&t, &probe).to_scalar::<f64>().unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            if std::env::var("FD_DEBUG").is_ok() {
                let fd3 = (at(1e-3) - at(-1e-3)) / 2e-3;
                let fd1 = (at(1e-1) - at(-1e-1)) / 2e-1;
                println!(
                    "{name}[{idx}] grad {} fd(1e-2) {fd} fd(1e-3) {fd3} fd(1e-1) {fd1}",
                    g[idx]
                );
                set_values(&var, base.clone());
                continue;
            }
            set_values(&var, base.clone());
            let got = g[idx] as f64;
            let err = (fd - got).abs() / (gmax + 1e-3);
            worst = worst.max(err);
            assert!(
                (fd - got).abs() <= 2e-3 + 2e-2 * fd.abs().max(got.abs()),
                "{arch} {name}[{idx}]: backprop {got} vs finite difference {fd}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 7 * 2 * 4, "{arch}");
    println!("{arch}: {checked} entries, worst |fd - grad| / max|grad| = {worst:.2e}");
}

#[test]
fn gradients_match_finite_differences_llama() {
    check_finite_differences("llama");
}

#[test]
fn gradients_match_finite_differences_gemma3() {
    check_finite_differences("gemma3");
}

#[test]
fn gradients_match_finite_differences_qwen2_and_qwen3() {
    check_finite_differences("qwen2");
    check_finite_differences("qwen3");
}

/// All adapter gradients of `t` for the probe loss, flattened in `named_vars` order.
fn all_grads(t: &TrainableDecoder, probe: &Tensor) -> Vec<f32> {
    let grads = loss(t, probe).backward().unwrap();
    let mut out = Vec::new();
    for (name, v) in t.lora().named_vars() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        out.extend(g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    out
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    num / den.max(1e-12)
}

/// The probe-loss gradients of every adapter variable with dropout on (seed `seed`),
/// flattened in `named_vars` order: with one graph over the whole forward, or with
/// gradient checkpointing per block (blocks recomputed from their saved inputs).
fn dropout_grads(t: &TrainableDecoder, probe: &Tensor, seed: u64, checkpointed: bool) -> Vec<f32> {
    use juris_ml::grad_checkpoint::{add_var_grads, backward_blocks, forward_saving_inputs};
    let vars: Vec<Var> = t.lora().named_vars().into_iter().map(|(_, v)| v).collect();
    let mut sums = vec![None; vars.len()];
    t.lora().set_dropout_seed(Some(seed));
    if checkpointed {
        let (ids, mask) = batch();
        let pass = t.model().train_pass(&ids, &mask).unwrap();
        let (inputs, last) = forward_saving_inputs(pass.as_ref()).unwrap();
        let last = Var::from_tensor(&last).unwrap();
        let h = pass.finish(last.as_tensor()).unwrap();
        let logits = t.model().logits(&h).unwrap();
        let loss = (logits.to_dtype(DType::F64).unwrap() * probe)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        add_var_grads(&grads, &vars, &mut sums).unwrap();
        let g = grads.get(last.as_tensor()).unwrap().clone();
        // The same seed again: the recomputed blocks draw the first forward's masks.
        t.lora().set_dropout_seed(Some(seed));
        backward_blocks(pass.as_ref(), inputs, g, &vars, &mut sums).unwrap();
    } else {
        let grads = loss(t, probe).backward().unwrap();
        add_var_grads(&grads, &vars, &mut sums).unwrap();
    }
    t.lora().set_dropout_seed(None);
    sums.into_iter()
        .flat_map(|g| {
            g.expect("every variable gets a gradient")
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn check_checkpointing(arch: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let p = tiny(tmp.path(), arch, false, GgmlDType::F32);
    let cfg = LoraConfig::new(2, 4.0, 0.1, DECODER_LORA_TARGETS, "");
    let t = TrainableDecoder::new(&p, WeightMode::F32, cfg, 3, &Device::Cpu).unwrap();
    randomize_b(&t, 11);
    let probe = probe(t.model().vocab_size());
    let plain = dropout_grads(&t, &probe, 5, false);
    let checkpointed = dropout_grads(&t, &probe, 5, true);
    let other_masks = dropout_grads(&t, &probe, 6, false);
    // f32: the two differ only by rounding (block 0's input norm takes the inference form
    // in the plain pass, where its input is no graph node).
    let d = rel_l2(&checkpointed, &plain);
    assert!(
        d < 1e-5,
        "{arch}: checkpointed vs plain gradients: rel L2 {d:e}"
    );
    let m = rel_l2(&other_masks, &plain);
    assert!(
        m > 1e-3,
        "{arch}: other dropout masks changed the gradients only by {m:e}"
    );
}

#[test]
fn checkpointed_gradients_equal_plain_ones_with_dropout_llama() {
    check_checkpointing("llama");
}

#[test]
fn checkpointed_gradients_equal_plain_ones_with_dropout_gemma3() {
    check_checkpointing("gemma3");
}

/// Gradients through the quantized base (custom op) vs through the same weights
/// dequantized. The backward uses the exactly dequantized weights in both; the forward
/// differs only because candle's quantized kernel quantizes each activation row to 8-bit
/// blocks (Q8_0: error up to 1/254 of a block's largest value), which moves activations by
/// well under 1% and the gradients by about as much; 3% relative L2 leaves room for the
/// errors of two layers adding up, while a missing or wrong backward (a gradient cut at a
/// quantized layer, a transposed weight) gives errors of order 100%.
fn check_quantized_grads(arch: &str, dtype: GgmlDType) {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), arch, true, dtype);
    let q = TrainableDecoder::new(&path, WeightMode::Quantized, config(), 5, &Device::Cpu).unwrap();
    let f = TrainableDecoder::new(&path, WeightMode::F32, config(), 5, &Device::Cpu).unwrap();
    randomize_b(&q, 23);
    randomize_b(&f, 23);
    let probe = probe(q.model().vocab_size());
    let gq = all_grads(&q, &probe);
    let gf = all_grads(&f, &probe);
    assert_eq!(gq.len(), gf.len());
    let e = rel_l2(&gq, &gf);
    println!(
        "{arch} {dtype:?}: gradient relative L2 error quantized vs dequantized base = {e:.2e}"
    );
    assert!(e < 3e-2, "{arch} {dtype:?}: relative L2 error {e}");
    // Sanity: the gradient of layer 0's q projection must reach through layer 1's quantized
    // layers and the quantized (tied) output head.
    let (_, a0) = &q.lora().named_vars()[0];
    assert!(var_values(a0).iter().any(|x| *x != 0.0));
}

#[test]
fn quantized_q8_0_gradients_match_dequantized() {
    check_quantized_grads("llama", GgmlDType::Q8_0);
    check_quantized_grads("gemma3", GgmlDType::Q8_0);
}

#[test]
fn quantized_q4_0_gradients_match_dequantized() {
    check_quantized_grads("llama", GgmlDType::Q4_0);
    check_quantized_grads("gemma3", GgmlDType::Q4_0);
}

/// Next-token cross-entropy of the first row of [`batch`].
fn lm_loss(t: &TrainableDecoder) -> Tensor {
    let ids = Tensor::new(&[[1u32, 260, 265, 262, 250, 50, 7, 260, 265]], &Device::Cpu).unwrap();
    let mask = ids.ones_like().unwrap();
    let h = t.model().forward_hidden(&ids, &mask).unwrap();
    let logits = t.model().logits(&h).unwrap().squeeze(0).unwrap();
    let n = logits.dim(0).unwrap();
    let inputs = logits.narrow(0, 0, n - 1).unwrap();
    let targets = ids.squeeze(0).unwrap().narrow(0, 1, n - 1).unwrap();
    candle_nn::loss::cross_entropy(&inputs, &targets).unwrap()
}

#[test]
fn sgd_on_a_quantized_base_lowers_the_loss() {
    use candle_nn::Optimizer;
    let dir = tempfile::tempdir().unwrap();
    for (arch, dtype) in [("llama", GgmlDType::Q4_0), ("gemma3", GgmlDType::Q8_0)] {
        let path = tiny(dir.path(), arch, true, dtype);
        let mut cfg = config();
        cfg.lora_dropout = 0.1;
        let t = TrainableDecoder::new(&path, WeightMode::Quantized, cfg, 1, &Device::Cpu).unwrap();
        let vars: Vec<Var> = t.lora().named_vars().into_iter().map(|(_, v)| v).collect();
        let mut opt = candle_nn::SGD::new(vars, 0.05).unwrap();
        let first = lm_loss(&t).to_scalar::<f32>().unwrap();
        for step in 0..8 {
            t.lora().set_dropout_seed(Some(1000 + step));
            let l = lm_loss(&t);
            opt.backward_step(&l).unwrap();
        }
        t.lora().set_dropout_seed(None);
        let last = lm_loss(&t).to_scalar::<f32>().unwrap();
        println!("{arch} {dtype:?}: loss {first:.4} -> {last:.4} after 8 SGD steps");
        assert!(last < first - 0.05, "{arch}: loss {first} -> {last}");
    }
}

fn logits_of(m: &dyn juris_ml::models::decoder::DecoderLm) -> Vec<f32> {
    let (ids, mask) = batch();
    let h = m.forward_hidden(&ids, &mask).unwrap();
    m.logits(&h)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn fresh_adapter_leaves_the_model_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "gemma3"] {
        let path = tiny(dir.path(), arch, false, GgmlDType::F32);
        let t = TrainableDecoder::new(&path, WeightMode::F32, config(), 3, &Device::Cpu).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let base = load_decoder(&g, WeightMode::F32, &Device::Cpu).unwrap();
        let d = max_abs_diff(&logits_of(t.model()), &logits_of(base.as_ref()));
        assert!(d < 1e-5, "{arch}: {d}");
        // 7 projections x 2 layers.
        assert_eq!(t.lora().vars.len(), 14);
        assert!(t
            .lora()
            .vars
            .contains_key("model.layers.1.self_attn.q_proj"));
    }
}

#[test]
fn save_load_merge_and_cache_agree() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "gemma3"] {
        for (dtype, tol) in [(GgmlDType::F32, 1e-4f32), (GgmlDType::Q8_0, 1e-3)] {
            let path = tiny(dir.path(), arch, true, dtype);
            let t =
                TrainableDecoder::new(&path, WeightMode::F32, config(), 9, &Device::Cpu).unwrap();
            randomize_b(&t, 4);
            let want = logits_of(t.model());
            let ad = dir.path().join(format!("adapter-{arch}-{dtype:?}"));
            t.save_adapter(&ad).unwrap();
            // Saving again over an existing folder works too.
            t.save_adapter(&ad).unwrap();
            let cfg: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(ad.join("adapter_config.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(cfg["task_type"], "CAUSAL_LM");
            let st =
                candle_core::safetensors::load(ad.join("adapter_model.safetensors"), &Device::Cpu)
                    .unwrap();
            assert_eq!(st.len(), 2 * 7 * 2);
            let a = &st["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
            let b = &st["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"];
            assert_eq!(a.dims(), [2, 64]);
            assert_eq!(b.dims(), [64, 2]);

            let again =
                TrainableDecoder::with_adapter(&path, WeightMode::F32, &ad, &Device::Cpu).unwrap();
            let d = max_abs_diff(&logits_of(again.model()), &want);
            assert!(d < 1e-5, "{arch} {dtype:?} reloaded: {d}");

            let g = GgufFile::open(&path).unwrap();
            // How far the quantized kernel (8-bit activations) moves the base's logits.
            let base_gap = max_abs_diff(
                &logits_of(
                    load_decoder(&g, WeightMode::Quantized, &Device::Cpu)
                        .unwrap()
                        .as_ref(),
                ),
                &logits_of(
                    load_decoder(&g, WeightMode::F32, &Device::Cpu)
                        .unwrap()
                        .as_ref(),
                ),
            );
            let range = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            println!("{arch} {dtype:?}: base gap {base_gap}, logit range {range}");
            for mode in [WeightMode::F32, WeightMode::Quantized] {
                let m = load_decoder_with_adapter(&g, mode, Some(&ad), &Device::Cpu).unwrap();
                let got = logits_of(m.as_ref());
                let d = max_abs_diff(&got, &want);
                // F32 mode merges (same weights up to rounding); the quantized mode on a Q8_0
                // base quantizes activations to 8 bits inside the kernel: the adapter may
                // not add to that gap more than the gap itself.
                let tol = if mode == WeightMode::F32 {
                    1e-4
                } else {
                    tol + 2.0 * base_gap
                };
                println!("{arch} {dtype:?} {mode:?}: max |logit diff| {d}");
                assert!(d < tol, "{arch} {dtype:?} {mode:?}: {d}");
                // The KV-cache path gives the full pass's last logits.
                let mut cache = m.new_cache();
                let ids = [1u32, 260, 265, 262, 250, 50, 7];
                m.forward_step(&ids[..4], &mut cache).unwrap();
                let mut last = Vec::new();
                for id in &ids[4..] {
                    last = m
                        .forward_step(&[*id], &mut cache)
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                }
                let vocab = m.vocab_size();
                let full = &got[6 * vocab..7 * vocab];
                let d = max_abs_diff(&last, full);
                assert!(d < 1e-3, "{arch} {dtype:?} {mode:?} cache: {d}");
            }
            // The trainable model's cache path leaves no graph in the cache.
            let mut cache = t.model().new_cache();
            t.model().forward_step(&[1, 260], &mut cache).unwrap();
        }
    }
}

#[test]
fn adapters_that_do_not_fit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let small = tiny(dir.path(), "llama", false, GgmlDType::F32);
    let wide = tiny(dir.path(), "llama", true, GgmlDType::F32);
    let t = TrainableDecoder::new(&small, WeightMode::F32, config(), 1, &Device::Cpu).unwrap();
    let ad = dir.path().join("small-adapter");
    t.save_adapter(&ad).unwrap();
    let g = GgufFile::open(&wide).unwrap();
    let e = load_decoder_with_adapter(&g, WeightMode::F32, Some(&ad), &Device::Cpu).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, MlError::Mismatch(_)) && msg.contains("adapter_config.json"),
        "{msg}"
    );
    let e = TrainableDecoder::with_adapter(&wide, WeightMode::Quantized, &ad, &Device::Cpu)
        .unwrap_err();
    assert!(e.to_string().contains("another model"), "{e}");
    let missing = dir.path().join("nothing-here");
    let e =
        load_decoder_with_adapter(&g, WeightMode::F32, Some(&missing), &Device::Cpu).unwrap_err();
    assert!(
        matches!(e, MlError::Missing { .. }) && e.to_string().contains("nothing-here"),
        "{e}"
    );
    let mut bad = config();
    bad.target_modules = vec!["query".into()];
    let e = TrainableDecoder::new(&small, WeightMode::F32, bad, 1, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("'query'"), "{e}");
    // An adapter for some modules only is fine.
    let mut some = config();
    some.target_modules = vec!["q_proj".into(), "v_proj".into()];
    let t = TrainableDecoder::new(&small, WeightMode::F32, some, 1, &Device::Cpu).unwrap();
    assert_eq!(t.lora().vars.len(), 4);
}

/// The differentiable rotary form used under a graph gives the kernels' numbers, for both
/// pair layouts and a partial rotary width.
#[test]
fn differentiable_rope_matches_the_kernels() {
    use juris_ml::models::decoder_layers::Rope;
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev).unwrap();
    let pos = Tensor::new(&[[0u32, 1, 2, 3, 4], [0, 0, 0, 1, 2]], &dev).unwrap();
    for interleaved in [false, true] {
        for dim in [8, 4] {
            let rope = Rope::new(10_000.0, dim, None, 1.0, interleaved).unwrap();
            let fast = rope.apply(&x, &pos).unwrap();
            let tracked = Var::from_tensor(&x).unwrap();
            let slow = rope.apply(tracked.as_tensor(), &pos).unwrap();
            assert!(slow.track_op());
            let d = (fast - slow)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "interleaved {interleaved} dim {dim}: {d}");
        }
    }
}

/// Where the export tests keep their files: `JURIS_QLORA_EXPORT_DIR` when set (for the
/// llama.cpp check in `scripts/fixtures/qlora_fixtures.py --check-export`), else `tmp`.
fn export_dir(tmp: &Path) -> PathBuf {
    match std::env::var_os("JURIS_QLORA_EXPORT_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            std::fs::create_dir_all(&d).unwrap();
            d
        }
        None => tmp.to_path_buf(),
    }
}

#[test]
fn merged_gguf_exports_load_and_match_the_merged_model() {
    use juris_ml::decoder_lora::{export_merged_gguf, ExportFormat};
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = export_dir(tmp.path());
    let mut report = serde_json::Map::new();
    for arch in ["llama", "gemma3", "qwen2", "qwen3"] {
        // The base is Q8_0 as a QLoRA base would be; the adapter is random.
        let path = tiny(tmp.path(), arch, true, GgmlDType::Q8_0);
        let t = TrainableDecoder::new(&path, WeightMode::F32, config(), 2, &Device::Cpu).unwrap();
        randomize_b(&t, 8);
        let ad = out_dir.join(format!("tiny-{arch}-adapter"));
        t.save_adapter(&ad).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let merged =
            load_decoder_with_adapter(&g, WeightMode::F32, Some(&ad), &Device::Cpu).unwrap();
        let want = logits_of(merged.as_ref());
        let base = logits_of(
            load_decoder(&g, WeightMode::F32, &Device::Cpu)
                .unwrap()
                .as_ref(),
        );
        let moved = max_abs_diff(&want, &base);
        assert!(
            moved > 0.1,
            "{arch}: the adapter barely moves the logits ({moved})"
        );
        let mut arch_report = serde_json::Map::new();
        arch_report.insert("base".into(), path.display().to_string().into());
        arch_report.insert(
            "ids".into(),
            serde_json::json!([1, 260, 265, 262, 250, 50, 7]),
        );
        // Logits of row 0 of the batch (7 real tokens), merged f32 model.
        let vocab = merged.vocab_size();
        arch_report.insert(
            "merged_f32_logits".into(),
            serde_json::json!(want[..7 * vocab]),
        );
        for (format, tol) in [
            (ExportFormat::F32, Some(1e-4f32)),
            (ExportFormat::F16, Some(2e-2)),
            (ExportFormat::Q8_0, Some(0.15)),
            (ExportFormat::Q4_0, None),
        ] {
            let out = out_dir.join(format!("tiny-{arch}-merged-{}.gguf", format.name()));
            export_merged_gguf(&path, &ad, &out, format).unwrap();
            let e = GgufFile::open(&out).unwrap();
            // Metadata is carried over; the file type says what the matrices are.
            for key in ["tokenizer.ggml.tokens", "general.architecture"] {
                assert!(e.get(key).is_some(), "{arch} {format:?}: {key} missing");
            }
            assert_eq!(
                e.usize("general.file_type").unwrap() as u32,
                format.file_type()
            );
            assert_eq!(
                e.string_array("tokenizer.ggml.tokens").unwrap(),
                g.string_array("tokenizer.ggml.tokens").unwrap()
            );
            assert_eq!(e.tensor_names(), g.tensor_names());
            for name in e.tensor_names() {
                let q = e.qtensor(name, &Device::Cpu).unwrap();
                let want_dtype = if e.tensor_shape(name).unwrap().len() == 1 {
                    GgmlDType::F32
                } else if format == ExportFormat::Q4_0 && name == "token_embd.weight" {
                    // The tied output head stays 8-bit in a Q4_0 export.
                    GgmlDType::Q8_0
                } else {
                    format.ggml_dtype()
                };
                assert_eq!(q.dtype(), want_dtype, "{arch} {format:?} {name}");
            }
            // Each stored matrix is exactly the merged matrix (the file's row order) put
            // through the format's quantizer: merge, row permutation and writing are right.
            for p in merged.projections() {
                let DecoderLinear::Dense { weight, .. } = p.base() else {
                    panic!("F32 mode holds dense weights")
                };
                let name = format!("{}.weight", gguf_tensor_name(p.path()).unwrap());
                let expect = QTensor::quantize(weight, format.ggml_dtype())
                    .unwrap()
                    .dequantize(&Device::Cpu)
                    .unwrap();
                let stored = e.tensor_f32(&name, &Device::Cpu).unwrap();
                let d = (stored - expect)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(d == 0.0, "{arch} {format:?} {name}: {d}");
            }
            let m = load_decoder(&e, WeightMode::F32, &Device::Cpu).unwrap();
            let got = logits_of(m.as_ref());
            let d = max_abs_diff(&got, &want);
            println!(
                "{arch} {}: max |logit - merged f32| = {d:.2e} (adapter moved logits by {moved:.2})",
                format.name()
            );
            // Q4_0 on a 64-wide random model moves logits by about as much as the adapter
            // (4-bit steps of uniform random weights); its check is the exact one above.
            if let Some(tol) = tol {
                assert!(d < tol, "{arch} {format:?}: {d}");
            }
        }
        // With an export folder kept, also the Hugging Face folder (transformers loads it
        // in `qlora_fixtures.py --check-export`).
        if std::env::var_os("JURIS_QLORA_EXPORT_DIR").is_some() {
            let hf = out_dir.join(format!("tiny-{arch}-merged-hf"));
            if hf.exists() {
                std::fs::remove_dir_all(&hf).unwrap();
            }
            juris_ml::decoder_lora::export_merged_safetensors(&path, &ad, &hf).unwrap();
        }
        report.insert(arch.into(), serde_json::Value::Object(arch_report));
    }
    std::fs::write(
        out_dir.join("tiny-juris-logits.json"),
        serde_json::to_string(&report).unwrap(),
    )
    .unwrap();
}

/// `GgufGenerator::load_with_adapter` generates what the merged export generates, in both
/// weight modes (seeded sampling, which follows the logits more closely than greedy on a
/// random model that repeats one token; a base whose matrices are f32 so the modes agree
/// to rounding).
#[test]
fn generator_with_adapter_matches_the_merged_export() {
    use juris_ml::decoder_lora::{export_merged_gguf, ExportFormat};
    use juris_ml::{GenerateOptions, Generator, GgufGenerator};
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "gemma3"] {
        let path = tiny(dir.path(), arch, true, GgmlDType::F32);
        let t = TrainableDecoder::new(&path, WeightMode::F32, config(), 6, &Device::Cpu).unwrap();
        randomize_b(&t, 12);
        let ad = dir.path().join(format!("gen-adapter-{arch}"));
        t.save_adapter(&ad).unwrap();
        let merged = dir.path().join(format!("gen-merged-{arch}.gguf"));
        export_merged_gguf(&path, &ad, &merged, ExportFormat::F32).unwrap();
        let opts = GenerateOptions {
            max_tokens: 12,
            temperature: 0.8,
            seed: 3,
            ..GenerateOptions::default()
        };
        let prompt = [1u32, 260, 265, 262];
        let run = |g: &GgufGenerator| {
            g.generate_ids(&prompt, &opts, &mut |_| std::ops::ControlFlow::Continue(()))
                .unwrap()
                .tokens
        };
        let want = run(&GgufGenerator::load_cpu(&merged, WeightMode::F32).unwrap());
        let plain = run(&GgufGenerator::load_cpu(&path, WeightMode::F32).unwrap());
        assert_ne!(want, plain, "{arch}: the adapter changes nothing");
        for mode in [WeightMode::F32, WeightMode::Quantized] {
            let g = GgufGenerator::load_with_adapter(&path, mode, Some(&ad), &Device::Cpu).unwrap();
            assert!(g.name().contains("LoRA"), "{}", g.name());
            assert_eq!(run(&g), want, "{arch} {mode:?}");
        }
    }
}
