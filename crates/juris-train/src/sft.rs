//! The supervised fine-tuning loop (`juris train generator`): a GGUF decoder with a LoRA
//! adapter (its base kept quantized — QLoRA — or dequantized to f32) learns to continue
//! chat prompts with their assistant replies.
//!
//! Loss: causal-LM cross-entropy on the assistant tokens only ([`crate::chat_data`] marks
//! them), averaged over all target tokens of an optimizer step (so a step of many short
//! replies and one of few long ones weigh each token alike, and gradient accumulation gives
//! the same update as one large batch). Only the hidden states of positions that predict a
//! target are gathered before the output projection: Gemma's vocabulary has 262k entries,
//! and `[batch, seq, vocab]` logits would not fit.
//!
//! Schedule: AdamW, linear warmup then linear decay over all epochs' steps, global-norm
//! clipping; the data order of each epoch and each step's dropout masks are drawn from
//! generators seeded by the config's seed and the position in training, so a run resumed
//! from its checkpoint takes exactly the steps of an uninterrupted one.
//!
//! A run leaves in `[train] out`: `adapter/` (the final adapter, PEFT format), `best/` (the
//! adapter with the lowest dev loss; the final one without a dev set), `checkpoint/`,
//! `metrics.jsonl` and `metrics.svg`, and `merged-<format>.gguf` (base + best adapter) for
//! each `[export] formats` entry.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use juris_index::Progress;
use juris_ml::decoder_lora::{export_merged_gguf, ExportFormat, TrainableDecoder};
use juris_ml::gguf::GgufFile;
use juris_ml::lora::{LoraAdapter, LoraConfig, SplitMix64};
use juris_ml::models::decoder::{load_decoder, DecoderLm};
use juris_ml::models::decoder_layers::WeightMode;
use juris_ml::DeviceChoice;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::chat_data::{prepare_files, DataStats, Example};
use crate::checkpoint;
use crate::error::{io, Result, TrainError};
use crate::optim::{accumulate_grads, lr_at, AdamW};
use crate::report;
use crate::sft_config::{BaseMode, ExportKind, SftConfig};
use crate::trainer::mix;

/// How to run (things that do not change the result).
#[derive(Debug, Clone, Default)]
pub struct SftOptions {
    /// Where to compute.
    pub device: DeviceChoice,
    /// Test hook: after this many optimizer steps in total, write a checkpoint and return
    /// as if the process had been killed (no adapter written).
    pub stop_after_steps: Option<u64>,
}

/// What a call to [`train_sft`] did.
#[derive(Debug, Clone)]
pub struct SftOutcome {
    /// Optimizer steps taken in total (this call and earlier ones).
    pub steps: u64,
    /// Whether training finished (`false`: stopped by [`SftOptions::stop_after_steps`]).
    pub finished: bool,
    /// The final adapter folder (when finished).
    pub adapter: Option<PathBuf>,
    /// The best adapter folder (when finished).
    pub best: Option<PathBuf>,
    /// Dev loss of the base model (fresh runs with a dev set).
    pub dev_before: Option<f64>,
    /// Lowest dev loss seen, and at which step.
    pub best_dev: Option<(f64, u64)>,
    /// Dev loss of the final adapter.
    pub dev_final: Option<f64>,
    /// Mean training loss of the first and the last logged steps of this call.
    pub train_loss: Option<(f64, f64)>,
    /// The merged GGUF files written.
    pub exports: Vec<PathBuf>,
    /// Counts of the training data.
    pub train_stats: DataStats,
    /// Counts of the dev data.
    pub dev_stats: Option<DataStats>,
}

/// Where an SFT run stands (`checkpoint/state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftState {
    /// [`SftConfig::trajectory_digest`] of the config that wrote it.
    pub config_digest: String,
    /// Epoch being trained.
    pub epoch: usize,
    /// Optimizer steps already taken in this epoch.
    pub step_in_epoch: u64,
    /// Optimizer steps taken in total.
    pub global_step: u64,
    /// AdamW's update counter.
    pub adam_step: u64,
    /// Lowest dev loss so far and its step.
    pub best_dev: Option<(f64, u64)>,
    /// Dev loss of the base model.
    pub dev_before: Option<f64>,
    /// Step of the last dev evaluation and its loss.
    pub last_eval: Option<(u64, f64)>,
    /// Whether every epoch has been trained.
    pub done: bool,
}

const SALT_ORDER: u64 = 11;
const SALT_DROPOUT: u64 = 12;
const SALT_INIT: u64 = 13;

/// Title of the loss panel of `metrics.svg`.
const LOSS_TITLE: &str = "training loss (cross-entropy on assistant tokens)";

/// The library form of an export kind.
pub fn export_format(k: ExportKind) -> ExportFormat {
    match k {
        ExportKind::F32 => ExportFormat::F32,
        ExportKind::F16 => ExportFormat::F16,
        ExportKind::Q8_0 => ExportFormat::Q8_0,
        ExportKind::Q4_0 => ExportFormat::Q4_0,
    }
}

/// The base model file of `cfg` (a preset name resolved in the models folder, else a path).
pub fn base_path(cfg: &SftConfig) -> Result<PathBuf> {
    let p = juris_ml::presets::resolve_model(&cfg.model.gguf)?;
    if !p.is_file() {
        return Err(TrainError::Data(format!(
            "{}: no such GGUF file ([model] gguf); give a .gguf path or a preset (smollm2, \
             gemma3-270m)",
            p.display()
        )));
    }
    Ok(p)
}

/// The file's `tokenizer.ggml.eot_token_id`, if any.
fn eot_id(path: &Path) -> Result<Option<u32>> {
    let g = GgufFile::open(path)?;
    Ok(g.usize_opt("tokenizer.ggml.eot_token_id")?
        .map(|v| v as u32))
}

/// Reads and tokenizes the config's data for its model without loading the weights: the
/// counts `juris train generator --check-data` prints.
pub fn check_data(cfg: &SftConfig) -> Result<(DataStats, Option<DataStats>)> {
    let path = base_path(cfg)?;
    let g = GgufFile::open(&path)?;
    let tok = juris_ml::gguf_tokenizer::GgufTokenizer::from_gguf(&g)?;
    let own = juris_ml::ChatTemplate::from_gguf(&g).ok();
    let prepared = prepare_files(cfg, &tok, own.as_ref(), eot_id(&path)?)?;
    Ok((prepared.train_stats, prepared.dev.map(|(_, s)| s)))
}

/// Trains (or resumes) the run `cfg` describes.
pub fn train_sft(
    cfg: &SftConfig,
    opts: &SftOptions,
    progress: &dyn Progress,
    note: &dyn Fn(&str),
) -> Result<SftOutcome> {
    let t = &cfg.train;
    let out = t.out.clone();
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    let device = juris_ml::nn::device_for(opts.device)?;
    let path = base_path(cfg)?;
    let targets: Vec<&str> = cfg.lora.target_modules.iter().map(String::as_str).collect();
    let lora_cfg = LoraConfig::new(
        cfg.lora.r,
        cfg.lora.alpha,
        cfg.lora.dropout,
        &targets,
        &cfg.model.gguf,
    );
    let mode = match cfg.model.base {
        BaseMode::Quantized => WeightMode::Quantized,
        BaseMode::F32 => WeightMode::F32,
    };
    let dec = TrainableDecoder::new(&path, mode, lora_cfg, mix(&[t.seed, SALT_INIT]), &device)?;
    let prepared = prepare_files(cfg, dec.tokenizer(), dec.chat_template(), eot_id(&path)?)?;
    note(&format!("train: {}", prepared.train_stats.summary()));
    if let Some((_, s)) = &prepared.dev {
        note(&format!("dev: {}", s.summary()));
    }
    let pad = dec
        .tokenizer()
        .pad_id()
        .or(dec.tokenizer().eos_id())
        .unwrap_or(0);
    let model = dec.model();
    let lora = dec.lora();
    let named = lora.named_vars();
    let vars: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
    let metrics_path = out.join("metrics.jsonl");
    let digest = cfg.trajectory_digest();
    let mut opt = AdamW::new(&vars, t.weight_decay)?;
    // The dev loss runs on a second copy of the base with a snapshot of the adapter attached
    // as constants: through the trainable one, candle would record (and keep alive until the
    // loss is dropped) the whole backward graph of every dev batch.
    let mut frozen = match &prepared.dev {
        Some(_) => Some(load_decoder(&GgufFile::open(&path)?, mode, &device)?),
        None => None,
    };
    let mut state = match checkpoint::load_state::<SftState>(&out, &device)? {
        Some((st, tensors)) => {
            if st.config_digest != digest {
                return Err(TrainError::Checkpoint {
                    path: checkpoint::dir(&out),
                    what: "was written with a different config (only max_steps and [export] \
                           may change between a run and its resume); use another [train] out \
                           folder or delete this one to start over"
                        .into(),
                });
            }
            checkpoint::restore_training(&out, &tensors, &named, &mut opt, st.adam_step)?;
            report::truncate_after(&metrics_path, st.global_step)?;
            note(&format!(
                "resuming from the checkpoint at step {} (epoch {})",
                st.global_step,
                st.epoch + 1
            ));
            st
        }
        None => {
            if metrics_path.exists() {
                std::fs::remove_file(&metrics_path).map_err(io(&metrics_path))?;
            }
            let mut st = SftState {
                config_digest: digest.clone(),
                epoch: 0,
                step_in_epoch: 0,
                global_step: 0,
                adam_step: 0,
                best_dev: None,
                dev_before: None,
                last_eval: None,
                done: false,
            };
            if let Some((dev, _)) = &prepared.dev {
                let frozen = frozen.as_mut().expect("a dev set has an evaluation model");
                let l = frozen_dev_loss(frozen, lora, dev, cfg.eval_batch_size(), pad, progress)?;
                note(&format!("dev loss before training: {l:.4}"));
                report::append(&metrics_path, &json!({"step": 0, "dev": {"loss": l}}))?;
                st.dev_before = Some(l);
                st.last_eval = Some((0, l));
            }
            st
        }
    };
    let save_ckpt = |state: &SftState, opt: &AdamW| -> Result<()> {
        let tensors = checkpoint::training_tensors(&named, opt)?;
        checkpoint::save_state(&out, state, &tensors)
    };
    let best_dir = out.join("best");
    // Evaluates on the dev set, records it, keeps the best adapter.
    let evaluate = |frozen: &mut Option<Box<dyn DecoderLm>>,
                    state: &mut SftState,
                    epoch: usize|
     -> Result<()> {
        let (Some((dev, _)), Some(frozen)) = (&prepared.dev, frozen.as_mut()) else {
            return Ok(());
        };
        if state.last_eval.is_some_and(|(s, _)| s == state.global_step) {
            return Ok(());
        }
        let l = frozen_dev_loss(frozen, lora, dev, cfg.eval_batch_size(), pad, progress)?;
        report::append(
            &metrics_path,
            &json!({"step": state.global_step, "epoch": epoch + 1, "dev": {"loss": l}}),
        )?;
        state.last_eval = Some((state.global_step, l));
        let better = state.best_dev.is_none_or(|(b, _)| l < b);
        note(&format!(
            "step {}: dev loss {l:.4}{}",
            state.global_step,
            if better { " (best so far)" } else { "" }
        ));
        if better {
            state.best_dev = Some((l, state.global_step));
            dec.save_adapter(&best_dir)?;
        }
        Ok(())
    };

    let train = &prepared.train;
    let n = train.len();
    let per_step = t.batch_size * t.grad_accum;
    let steps_per_epoch = n.div_ceil(per_step) as u64;
    let total = steps_per_epoch * t.epochs as u64;
    let warmup = (t.warmup_ratio * total as f64).ceil() as u64;
    let mut logged: Vec<f64> = Vec::new();
    let mut stopped_by_max = false;
    'epochs: while state.epoch < t.epochs && !state.done {
        let epoch = state.epoch;
        let mut order: Vec<usize> = (0..n).collect();
        SplitMix64(mix(&[t.seed, SALT_ORDER, epoch as u64])).shuffle(&mut order);
        progress.start(
            &format!("epoch {}/{}", epoch + 1, t.epochs),
            Some(steps_per_epoch),
        );
        progress.inc(state.step_in_epoch);
        while state.step_in_epoch < steps_per_epoch {
            let s = state.step_in_epoch as usize;
            let mut chunk: Vec<usize> = order[s * per_step..((s + 1) * per_step).min(n)].to_vec();
            // Similar lengths share a forward pass (less padding); the loss is a sum over
            // tokens, so the grouping does not change it.
            chunk.sort_by_key(|&i| (std::cmp::Reverse(train[i].ids.len()), i));
            let step_targets: usize = chunk.iter().map(|&i| train[i].target_count()).sum();
            let mut acc: Option<Vec<Tensor>> = None;
            let mut loss_sum = 0f64;
            for (mi, idx) in chunk.chunks(t.batch_size).enumerate() {
                lora.set_dropout_seed(Some(mix(&[
                    t.seed,
                    SALT_DROPOUT,
                    state.global_step,
                    mi as u64,
                ])));
                let seqs: Vec<&Example> = idx.iter().map(|&i| &train[i]).collect();
                let (ce, _) = batch_ce(model, &seqs, pad)?;
                loss_sum += ce.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                let grads = (ce / step_targets.max(1) as f64)?.backward()?;
                accumulate_grads(&mut acc, &vars, &grads)?;
            }
            lora.set_dropout_seed(None);
            let grads = acc.unwrap_or_default();
            let lr = lr_at(state.global_step, total, warmup, t.lr);
            let grad_norm = opt.clip_and_update(&vars, &grads, lr, t.max_grad_norm)?;
            state.step_in_epoch += 1;
            state.global_step += 1;
            state.adam_step = opt.step;
            progress.inc(1);
            let loss = loss_sum / step_targets.max(1) as f64;
            if !loss.is_finite() {
                return Err(TrainError::Data(format!(
                    "the loss became {loss} at step {}; lower [train] lr",
                    state.global_step
                )));
            }
            if state.global_step % t.log_every == 0 {
                logged.push(loss);
                report::append(
                    &metrics_path,
                    &json!({"step": state.global_step, "epoch": epoch + 1, "loss": loss,
                            "lr": lr, "grad_norm": grad_norm, "tokens": step_targets}),
                )?;
            }
            if t.eval_every > 0 && state.global_step % t.eval_every == 0 {
                progress.finish();
                evaluate(&mut frozen, &mut state, epoch)?;
                progress.start(
                    &format!("epoch {}/{}", epoch + 1, t.epochs),
                    Some(steps_per_epoch),
                );
                progress.inc(state.step_in_epoch);
            }
            if t.checkpoint_every > 0 && state.global_step % t.checkpoint_every == 0 {
                save_ckpt(&state, &opt)?;
            }
            if opts.stop_after_steps == Some(state.global_step) {
                save_ckpt(&state, &opt)?;
                progress.finish();
                return Ok(SftOutcome {
                    steps: state.global_step,
                    finished: false,
                    adapter: None,
                    best: None,
                    dev_before: state.dev_before,
                    best_dev: state.best_dev,
                    dev_final: None,
                    train_loss: first_last(&logged),
                    exports: Vec::new(),
                    train_stats: prepared.train_stats.clone(),
                    dev_stats: prepared.dev.as_ref().map(|(_, s)| s.clone()),
                });
            }
            if t.max_steps == Some(state.global_step) {
                stopped_by_max = true;
                progress.finish();
                note(&format!("stopping at max_steps = {}", state.global_step));
                break 'epochs;
            }
        }
        progress.finish();
        state.epoch += 1;
        state.step_in_epoch = 0;
        evaluate(&mut frozen, &mut state, epoch)?;
        save_ckpt(&state, &opt)?;
    }
    if stopped_by_max {
        let epoch = state.epoch;
        evaluate(&mut frozen, &mut state, epoch)?;
    } else {
        state.done = true;
    }
    save_ckpt(&state, &opt)?;
    let adapter_dir = out.join("adapter");
    dec.save_adapter(&adapter_dir)?;
    if prepared.dev.is_none() || !best_dir.join(juris_ml::lora::WEIGHTS_FILE).is_file() {
        dec.save_adapter(&best_dir)?;
    }
    let dev_final = state
        .last_eval
        .filter(|(s, _)| *s == state.global_step)
        .map(|(_, l)| l);
    let mut exports = Vec::new();
    for &k in &cfg.export.formats {
        let file = out.join(format!("merged-{}.gguf", k.name()));
        note(&format!(
            "writing {} (base + {} adapter)",
            file.display(),
            if prepared.dev.is_some() {
                "best"
            } else {
                "final"
            }
        ));
        export_merged_gguf(&path, &best_dir, &file, export_format(k))?;
        exports.push(file);
    }
    report::write_svg_titled(&out, LOSS_TITLE)?;
    Ok(SftOutcome {
        steps: state.global_step,
        finished: true,
        adapter: Some(adapter_dir),
        best: Some(best_dir),
        dev_before: state.dev_before,
        best_dev: state.best_dev,
        dev_final,
        train_loss: first_last(&logged),
        exports,
        train_stats: prepared.train_stats.clone(),
        dev_stats: prepared.dev.as_ref().map(|(_, s)| s.clone()),
    })
}

fn first_last(v: &[f64]) -> Option<(f64, f64)> {
    Some((*v.first()?, *v.last()?))
}

/// Summed cross-entropy (f32 scalar tensor, differentiable w.r.t. the adapter) of the
/// target tokens of `seqs`, and their number. The sequences are right-padded with `pad`
/// (masked out) into one `[batch, seq]` forward pass.
pub fn batch_ce(model: &dyn DecoderLm, seqs: &[&Example], pad: u32) -> Result<(Tensor, usize)> {
    let device: &Device = model.device();
    let b = seqs.len();
    let len = seqs.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let mut ids = vec![pad; b * len];
    let mut mask = vec![0f32; b * len];
    let mut rows: Vec<u32> = Vec::new();
    let mut labels: Vec<u32> = Vec::new();
    for (r, e) in seqs.iter().enumerate() {
        ids[r * len..r * len + e.ids.len()].copy_from_slice(&e.ids);
        mask[r * len..r * len + e.ids.len()].fill(1.0);
        for p in 1..e.ids.len() {
            if e.targets[p] {
                // Position p - 1 predicts token p.
                rows.push((r * len + p - 1) as u32);
                labels.push(e.ids[p]);
            }
        }
    }
    let count = rows.len();
    if count == 0 {
        return Ok((Tensor::zeros((), DType::F32, device)?, 0));
    }
    let ids = Tensor::from_vec(ids, (b, len), device)?;
    let mask = Tensor::from_vec(mask, (b, len), device)?;
    let hidden = model.forward_hidden(&ids, &mask)?;
    let h = hidden.dim(D::Minus1)?;
    let rows = Tensor::from_vec(rows, count, device)?;
    let picked = hidden.reshape((b * len, h))?.index_select(&rows, 0)?;
    let logits = model.logits(&picked)?.to_dtype(DType::F32)?;
    let labels = Tensor::from_vec(labels, (count, 1), device)?;
    // log Σ exp(l) with the row maximum taken out as a constant (exact, and no overflow).
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + max)?;
    let target = logits.gather(&labels, D::Minus1)?;
    Ok(((lse - target)?.sum_all()?, count))
}

/// Attaches a snapshot of `adapter` to every projection of `model` as constants (no
/// gradient, no dropout).
fn attach_frozen(model: &mut dyn DecoderLm, adapter: &LoraAdapter) -> Result<()> {
    let scale = adapter.config.scale();
    for p in model.projections_mut() {
        if let Some(pair) = adapter.modules.get(p.path()) {
            p.set_frozen(&pair.a, &pair.b, scale)?;
        }
    }
    Ok(())
}

/// [`dev_loss`] of the adapter being trained, computed on `frozen` (a second copy of the
/// base) with the adapter's current values attached as constants.
fn frozen_dev_loss(
    frozen: &mut Box<dyn DecoderLm>,
    lora: &juris_ml::LoraTrain,
    seqs: &[Example],
    batch: usize,
    pad: u32,
    progress: &dyn Progress,
) -> Result<f64> {
    attach_frozen(frozen.as_mut(), &lora.to_adapter()?)?;
    dev_loss(frozen.as_ref(), seqs, batch, pad, progress)
}

/// Mean cross-entropy per target token over `seqs`, in batches of `batch` sequences of
/// similar length. With a model holding no variables, no graph is recorded.
pub fn dev_loss(
    model: &dyn DecoderLm,
    seqs: &[Example],
    batch: usize,
    pad: u32,
    progress: &dyn Progress,
) -> Result<f64> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(seqs[i].ids.len()), i));
    progress.start("dev loss", Some(seqs.len() as u64));
    let (mut sum, mut count) = (0f64, 0usize);
    for chunk in order.chunks(batch.max(1)) {
        let batch: Vec<&Example> = chunk.iter().map(|&i| &seqs[i]).collect();
        let (ce, n) = batch_ce(model, &batch, pad)?;
        sum += ce.detach().to_dtype(DType::F64)?.to_scalar::<f64>()?;
        count += n;
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    Ok(sum / count.max(1) as f64)
}
