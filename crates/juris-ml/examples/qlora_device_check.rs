//! QLoRA on another device against the CPU: loads a GGUF decoder as a [`TrainableDecoder`]
//! on the CPU and on `DEVICE` (`cuda` needs `--features cuda`), in both weight modes, gives
//! both the same adapter (B set to seeded values so every gradient is non-zero), and compares
//! the loss `sum(logits · probe)` and the adapter gradients; then times a few SGD steps of
//! next-token cross-entropy on the device with the base kept quantized.
//!
//! ```text
//! cargo run -p juris-ml --release --features cuda --example qlora_device_check -- MODEL.gguf cuda
//! ```
//!
//! Prints one line per mode and exits non-zero when a gradient differs by more than 5%
//! relative L2 (the device's quantized kernels round activations differently from the
//! CPU's, so the quantized mode is not bit-identical).

use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use juris_ml::decoder_lora::{TrainableDecoder, DECODER_LORA_TARGETS};
use juris_ml::lora::{LoraConfig, SplitMix64};
use juris_ml::models::decoder_layers::WeightMode;

fn randomize_b(t: &TrainableDecoder) -> Result<(), String> {
    let mut rng = SplitMix64(4);
    for (_, (_, b)) in t.lora().vars.iter() {
        let n = b.as_tensor().elem_count();
        let v: Vec<f32> = (0..n)
            .map(|_| (rng.next_f64() * 0.02 - 0.01) as f32)
            .collect();
        let x = Tensor::from_vec(v, b.as_tensor().shape(), b.as_tensor().device())
            .map_err(|e| e.to_string())?;
        b.set(&x).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn ids(vocab: usize, device: &Device) -> candle_core::Result<Tensor> {
    let mut rng = SplitMix64(11);
    let v: Vec<u32> = (0..2 * 48)
        .map(|_| 3 + rng.below(vocab.min(5000) - 3) as u32)
        .collect();
    Tensor::from_vec(v, (2, 48), device)
}

/// Loss and flattened gradients (in `named_vars` order) on `t`.
fn loss_and_grads(t: &TrainableDecoder) -> Result<(f64, Vec<f32>, f64), String> {
    let e = |e: juris_ml::MlError| e.to_string();
    let c = |e: candle_core::Error| e.to_string();
    let dev = t.model().device().clone();
    let x = ids(t.model().vocab_size(), &dev).map_err(c)?;
    let mask = x.ones_like().map_err(c)?;
    let start = Instant::now();
    let h = t.model().forward_hidden(&x, &mask).map_err(e)?;
    let logits = t.model().logits(&h).map_err(e)?;
    let mut rng = SplitMix64(99);
    let n = logits.elem_count();
    let probe: Vec<f32> = (0..n).map(|_| (rng.next_f64() - 0.5) as f32).collect();
    let probe = Tensor::from_vec(probe, logits.shape(), &dev).map_err(c)?;
    let loss = (logits * probe)
        .map_err(c)?
        .to_dtype(DType::F64)
        .map_err(c)?
        .sum_all()
        .map_err(c)?;
    let grads = loss.backward().map_err(c)?;
    dev.synchronize().map_err(c)?;
    let secs = start.elapsed().as_secs_f64();
    let mut g = Vec::new();
    for (name, v) in t.lora().named_vars() {
        let gv = grads
            .get(v.as_tensor())
            .ok_or_else(|| format!("no gradient for {name}"))?;
        g.extend(
            gv.to_device(&Device::Cpu)
                .map_err(c)?
                .flatten_all()
                .map_err(c)?
                .to_vec1::<f32>()
                .map_err(c)?,
        );
    }
    Ok((loss.to_scalar::<f64>().map_err(c)?, g, secs))
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn run() -> Result<bool, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, device] = args.as_slice() else {
        return Err("usage: qlora_device_check MODEL.gguf cpu|cuda".into());
    };
    let path = std::path::Path::new(model);
    let dev = match device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0).map_err(|e| e.to_string())?,
        other => return Err(format!("unknown device {other}")),
    };
    let cfg = LoraConfig::new(8, 16.0, 0.0, DECODER_LORA_TARGETS, "");
    let mut ok = true;
    for mode in [WeightMode::F32, WeightMode::Quantized] {
        let e = |e: juris_ml::MlError| e.to_string();
        let cpu = TrainableDecoder::new(path, mode, cfg.clone(), 1, &Device::Cpu).map_err(e)?;
        let other = TrainableDecoder::new(path, mode, cfg.clone(), 1, &dev).map_err(e)?;
        randomize_b(&cpu)?;
        randomize_b(&other)?;
        let (lc, gc, tc) = loss_and_grads(&cpu)?;
        // Twice on the device: the first run includes kernel compilation.
        let _ = loss_and_grads(&other)?;
        let (lo, go, to) = loss_and_grads(&other)?;
        let err = rel_l2(&go, &gc);
        println!(
            "{mode:?}: loss cpu {lc:.4} {device} {lo:.4}; gradient relative L2 {err:.2e}; \
             forward+backward cpu {tc:.3}s {device} {to:.3}s"
        );
        ok &= err < 0.05;
    }
    // SGD on the quantized base on the device lowers a next-token loss.
    let t = TrainableDecoder::new(path, WeightMode::Quantized, cfg, 1, &dev)
        .map_err(|e| e.to_string())?;
    let vars: Vec<Var> = t.lora().named_vars().into_iter().map(|(_, v)| v).collect();
    let mut opt = candle_nn::SGD::new(vars, 0.02).map_err(|e| e.to_string())?;
    let x = ids(t.model().vocab_size(), &dev).map_err(|e| e.to_string())?;
    let step_loss = || -> candle_core::Result<Tensor> {
        let mask = x.ones_like()?;
        let h = t
            .model()
            .forward_hidden(&x, &mask)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let logits = t
            .model()
            .logits(&h)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let (b, s, v) = logits.dims3()?;
        let inputs = logits.narrow(1, 0, s - 1)?.reshape((b * (s - 1), v))?;
        let targets = x.narrow(1, 1, s - 1)?.flatten_all()?;
        candle_nn::loss::cross_entropy(&inputs, &targets)
    };
    let first = step_loss()
        .and_then(|l| l.to_scalar::<f32>())
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let steps = 10;
    for _ in 0..steps {
        let l = step_loss().map_err(|e| e.to_string())?;
        opt.backward_step(&l).map_err(|e| e.to_string())?;
    }
    dev.synchronize().map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64() / steps as f64;
    let last = step_loss()
        .and_then(|l| l.to_scalar::<f32>())
        .map_err(|e| e.to_string())?;
    println!(
        "QLoRA SGD on {device}: loss {first:.4} -> {last:.4} in {steps} steps, {secs:.3}s/step \
         (2 x 48 tokens)"
    );
    ok &= last < first;
    Ok(ok)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("mismatch");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
