//! `juris train retriever --config <file.toml>` (LoRA fine-tuning of a dense retriever,
//! resumable), `juris train generator --config <file.toml>` (QLoRA supervised fine-tuning of
//! a GGUF decoder on chat data, resumable, with merged GGUF exports), `juris train
//! chat-data` (that chat data, from a BEIR folder with answers) and `juris adapter merge`
//! (an adapter merged into its base model, written as a Hugging Face folder). The work is in
//! `juris-train` and `juris-ml::lora` / `juris-ml::decoder_lora`.

use crate::progress::Bar;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// What to train.
#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Contrastive LoRA fine-tuning of a BERT-family dense retriever (phases of BM25 and
    /// re-mined hard negatives); re-running the same command resumes from the checkpoint.
    Retriever(RetrieverArgs),
    /// QLoRA supervised fine-tuning of a GGUF decoder (generator) on chat JSONL, with the
    /// loss on assistant tokens only; re-running the same command resumes from the
    /// checkpoint. Writes adapter/, best/ and merged-<format>.gguf.
    Generator(GeneratorArgs),
    /// Write supervised fine-tuning data (chat JSONL) from a BEIR folder with answers, with
    /// exactly the prompts eval-qa and ask send (Yes/No or cited answers over the gold
    /// articles).
    ChatData(crate::chat_data::ChatDataArgs),
}

/// `juris train retriever`.
#[derive(Args, Debug)]
pub struct RetrieverArgs {
    /// Training config (TOML; see bench/train/*.toml).
    #[arg(long)]
    config: PathBuf,
    /// Compute on this device: cpu, cuda or cuda:N (needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also write the base model with the final adapter merged in, as a Hugging Face folder.
    #[arg(long)]
    merge_out: Option<PathBuf>,
    /// Stop after this many optimizer steps in total (overrides the config's max_steps).
    #[arg(long)]
    max_steps: Option<u64>,
}

/// `juris train generator`.
#[derive(Args, Debug)]
pub struct GeneratorArgs {
    /// Training config (TOML; see bench/train/sft/*.toml).
    #[arg(long)]
    config: PathBuf,
    /// Compute on this device: cpu, cuda or cuda:N (needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Stop after this many optimizer steps in total (overrides the config's max_steps).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Only read and tokenize the data and print its counts (sequences, tokens, examples
    /// dropped for length); no weights are loaded.
    #[arg(long)]
    check_data: bool,
}

/// Adapter utilities.
#[derive(Subcommand, Debug)]
pub enum AdapterCommand {
    /// Merge a PEFT LoRA adapter into its base model (a Hugging Face folder) and write the
    /// result as a new Hugging Face folder.
    Merge(MergeArgs),
}

/// `juris adapter merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Base model: a preset or a Hugging Face folder.
    #[arg(long)]
    model: String,
    /// The adapter folder (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Output folder (must not exist yet).
    #[arg(long)]
    out: PathBuf,
}

pub fn cmd_train(cmd: TrainCommand, bar: &Bar) -> Result<()> {
    match cmd {
        TrainCommand::Retriever(a) => train_retriever(a, bar),
        TrainCommand::Generator(a) => train_generator(a, bar),
        TrainCommand::ChatData(a) => crate::chat_data::cmd_chat_data(a),
    }
}

fn train_retriever(a: RetrieverArgs, bar: &Bar) -> Result<()> {
    let mut cfg = juris_train::TrainConfig::load(&a.config)?;
    if a.max_steps.is_some() {
        cfg.train.max_steps = a.max_steps;
    }
    let opts = juris_train::TrainOptions {
        device: crate::cli::parse_device(&a.device)?,
        stop_after_steps: None,
    };
    // `precision = "bf16"` on the CPU: the config's own error (file and key), before loading.
    cfg.check_device(matches!(opts.device, juris_ml::DeviceChoice::Cuda(_)))?;
    let started = std::time::Instant::now();
    let note = |s: &str| eprintln!("{s}");
    let outcome = juris_train::train(&cfg, &opts, bar, &note)
        .with_context(|| format!("training with {}", a.config.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let show = |m: &Option<Vec<(String, f64)>>| {
        m.as_ref().map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    if let Some(z) = show(&outcome.zero_shot) {
        println!("dev before training: {z}");
    }
    if let Some(f) = show(&outcome.final_dev) {
        println!("dev after training:  {f}");
    }
    println!("{}", outcome.throughput.summary());
    let Some(adapter) = outcome.adapter else {
        bail!("training stopped before the end; run the same command again to resume");
    };
    println!(
        "{} steps in {secs:.0}s; adapter: {} (metrics: {}, plot: {})",
        outcome.steps,
        adapter.display(),
        cfg.train.out.join("metrics.jsonl").display(),
        cfg.train.out.join("metrics.svg").display()
    );
    if let Some(out) = &a.merge_out {
        merge(&cfg.model.path, &adapter, out)?;
    }
    Ok(())
}

fn train_generator(a: GeneratorArgs, bar: &Bar) -> Result<()> {
    let mut cfg = juris_train::SftConfig::load(&a.config)?;
    if a.max_steps.is_some() {
        cfg.train.max_steps = a.max_steps;
    }
    if a.check_data {
        let (train, dev) = juris_train::sft::check_data(&cfg)
            .with_context(|| format!("reading the data of {}", a.config.display()))?;
        println!("train: {}", train.summary());
        if let Some(dev) = dev {
            println!("dev:   {}", dev.summary());
        }
        return Ok(());
    }
    let opts = juris_train::sft::SftOptions {
        device: crate::cli::parse_device(&a.device)?,
        stop_after_steps: None,
    };
    let started = std::time::Instant::now();
    let note = |s: &str| eprintln!("{s}");
    let o = juris_train::sft::train_sft(&cfg, &opts, bar, &note)
        .with_context(|| format!("training with {}", a.config.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let Some(adapter) = &o.adapter else {
        bail!("training stopped before the end; run the same command again to resume");
    };
    if let Some((first, last)) = o.train_loss {
        println!("training loss: {first:.4} (first logged step) -> {last:.4} (last)");
    }
    if let Some(before) = o.dev_before {
        println!("dev loss before training: {before:.4}");
    }
    if let Some((best, step)) = o.best_dev {
        println!("best dev loss: {best:.4} at step {step}");
    }
    if let Some(f) = o.dev_final {
        println!("dev loss after training: {f:.4}");
    }
    println!(
        "{} steps in {secs:.0}s; adapter: {}, best: {} (metrics: {}, plot: {})",
        o.steps,
        adapter.display(),
        o.best
            .as_ref()
            .map(|b| b.display().to_string())
            .unwrap_or_default(),
        cfg.train.out.join("metrics.jsonl").display(),
        cfg.train.out.join("metrics.svg").display()
    );
    for e in &o.exports {
        println!("merged model: {}", e.display());
    }
    Ok(())
}

pub fn cmd_adapter(cmd: AdapterCommand) -> Result<()> {
    match cmd {
        AdapterCommand::Merge(a) => merge(&a.model, &a.adapter, &a.out),
    }
}

fn merge(model: &str, adapter: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let base = juris_ml::presets::resolve_model(model)?;
    if !base.is_dir() {
        bail!(
            "{}: merging writes a Hugging Face folder and needs one as the base; for other \
             model files use the adapter directly (--adapter)",
            base.display()
        );
    }
    juris_ml::lora::merge_into_hf_dir(&base, adapter, out)?;
    println!(
        "wrote {} ({} merged into {})",
        out.display(),
        adapter.display(),
        base.display()
    );
    Ok(())
}
