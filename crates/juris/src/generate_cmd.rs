//! `juris generate` and `juris chat`: local text generation from a GGUF decoder (a preset
//! such as `smollm2` / `gemma3-270m`, or a file path) through juris-ml's `Generator` seam.
//! Text is printed as it is generated; statistics go to stderr so stdout stays the text.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use juris_ml::models::decoder_layers::WeightMode;
use juris_ml::{ChatMessage, DeviceChoice, GenerateOptions, Generation, Generator, GgufGenerator};

/// Sampling and stopping flags shared by `generate` and `chat`.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Softmax temperature; 0 is greedy (the same text every time).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Penalty for recently seen tokens (1: off; 1.1 is a common choice).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Sampler seed: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Cap the context (prompt + reply) below the model's own length.
    #[arg(long)]
    pub context: Option<usize>,
    /// Dequantize the weights to f32 (slower; the reference numbers) instead of using the
    /// file's quantized weights.
    #[arg(long)]
    pub f32: bool,
    /// A LoRA adapter folder (PEFT format, e.g. `best/` of `juris train generator`) applied
    /// to the model: merged into the weights with --f32, applied on top of the quantized
    /// weights otherwise.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Do not print token counts and speeds to stderr.
    #[arg(long)]
    pub no_stats: bool,
}

impl SamplingArgs {
    pub(crate) fn options(&self) -> Result<GenerateOptions> {
        if self.temperature.is_nan() || self.temperature < 0.0 {
            bail!("--temperature must be 0 or more (0 is greedy)");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1]");
        }
        if self.repeat_penalty.is_nan() || self.repeat_penalty <= 0.0 {
            bail!("--repeat-penalty must be positive (1 is off)");
        }
        Ok(GenerateOptions {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repeat_penalty,
            seed: self.seed,
            stop: self.stop.clone(),
            context_limit: self.context,
        })
    }
}

/// Arguments of `juris generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model: a preset name (smollm2, gemma3-270m) or a GGUF file.
    #[arg(long)]
    pub model: String,
    /// The prompt (a user message, formatted with the model's chat template unless --raw).
    pub prompt: String,
    /// System message for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    /// Continue the prompt as written, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Compute on this device: cpu, or cuda / cuda:N (needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Arguments of `juris chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    /// Model: a preset name (smollm2, gemma3-270m) or a GGUF file.
    #[arg(long)]
    pub model: String,
    /// System message that opens the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Compute on this device: cpu, or cuda / cuda:N (needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Loads the generator `model` (preset or GGUF path) with the weight mode and adapter of
/// `s`, on `device`.
pub(crate) fn load(model: &str, s: &SamplingArgs, device: DeviceChoice) -> Result<GgufGenerator> {
    let path: PathBuf = juris_ml::presets::resolve_model(model)?;
    if !path.is_file() {
        bail!(
            "{}: no such model file; give a preset (smollm2, gemma3-270m) or a GGUF path",
            path.display()
        );
    }
    if let Some(a) = &s.adapter {
        if !a.is_dir() {
            bail!(
                "{}: no such adapter folder; --adapter takes a PEFT folder \
                 (adapter_config.json, adapter_model.safetensors), e.g. <out>/best of juris \
                 train generator",
                a.display()
            );
        }
    }
    let mode = if s.f32 {
        WeightMode::F32
    } else {
        WeightMode::Quantized
    };
    let dev = juris_ml::nn::device_for(device)?;
    GgufGenerator::load_with_adapter(&path, mode, s.adapter.as_deref(), &dev).with_context(|| {
        match &s.adapter {
            Some(a) => format!(
                "loading {} with the adapter {}",
                path.display(),
                a.display()
            ),
            None => format!("loading {}", path.display()),
        }
    })
}

/// Prints each piece as it comes (flushing, so a terminal sees tokens one by one); a closed
/// stdout (e.g. piped into `head`) stops generation instead of failing.
pub(crate) fn printer() -> impl FnMut(&str) -> ControlFlow<()> {
    move |piece: &str| {
        let mut out = std::io::stdout().lock();
        if out.write_all(piece.as_bytes()).is_err() || out.flush().is_err() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

pub(crate) fn print_stats(g: &Generation, quiet: bool) {
    if quiet {
        return;
    }
    let s = &g.stats;
    eprintln!(
        "[{} prompt tokens, {:.1} tok/s prefill; {} generated, {:.1} tok/s decode; finished: {:?}]",
        s.prompt_tokens,
        s.prefill_tokens_per_sec(),
        s.generated_tokens,
        s.decode_tokens_per_sec(),
        g.finish
    );
}

/// Runs `juris generate`.
pub fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let opts = a.sampling.options()?;
    let gen = load(&a.model, &a.sampling, crate::cli::parse_device(&a.device)?)?;
    let mut print = printer();
    let out = if a.raw {
        if a.system.is_some() {
            bail!("--system needs the chat template; drop --raw or --system");
        }
        gen.complete(&a.prompt, &opts, &mut print)?
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", &a.prompt));
        gen.chat(&msgs, &opts, &mut print)?
    };
    println!();
    print_stats(&out, a.sampling.no_stats);
    Ok(())
}

/// Runs `juris chat`: one user message per line on stdin, `/reset` forgets the
/// conversation, end of input ends.
pub fn cmd_chat(a: ChatArgs) -> Result<()> {
    let opts = a.sampling.options()?;
    let gen = load(&a.model, &a.sampling, crate::cli::parse_device(&a.device)?)?;
    let start: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s))
        .collect();
    let mut msgs = start.clone();
    eprintln!(
        "chatting with {}; one message per line, /reset starts over, end of input (Ctrl-D) quits",
        gen.name()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if text == "/reset" {
            msgs = start.clone();
            eprintln!("(conversation cleared)");
            continue;
        }
        msgs.push(ChatMessage::new("user", text));
        let out = match gen.chat(&msgs, &opts, &mut printer()) {
            Ok(o) => o,
            Err(e) => {
                // A conversation that outgrew the context is the user's to reset, not fatal.
                msgs.pop();
                eprintln!("error: {e}; /reset starts a new conversation");
                continue;
            }
        };
        println!();
        print_stats(&out, a.sampling.no_stats);
        msgs.push(ChatMessage::new("assistant", &out.text));
    }
    Ok(())
}
