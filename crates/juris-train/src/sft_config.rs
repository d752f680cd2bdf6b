//! The config file of supervised fine-tuning (`juris train generator --config <file.toml>`):
//! the GGUF base model, the LoRA adapter, the chat data, optimization and the merged
//! exports, parsed strictly (an unknown key or a wrong type is an error naming the file and
//! the key) and checked before anything loads.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// A whole SFT config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// The base decoder.
    pub model: SftModel,
    /// The adapter trained on it.
    #[serde(default)]
    pub lora: SftLora,
    /// The chat files.
    pub data: SftData,
    /// Optimization, checkpoints, evaluation.
    pub train: SftTrain,
    /// Merged models written after training.
    #[serde(default)]
    pub export: SftExport,
}

/// How the base model's matrices are held while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseMode {
    /// Kept in the file's quantization (QLoRA): least memory.
    Quantized,
    /// Dequantized to f32 at load: exact base numbers, more memory.
    F32,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftModel {
    /// A GGUF file, or a preset name (smollm2, gemma3-270m).
    pub gguf: String,
    /// `quantized` (QLoRA) or `f32`.
    #[serde(default = "d_base")]
    pub base: BaseMode,
    /// Tokens per training sequence; longer examples are dropped (and counted).
    #[serde(default = "d_max_len")]
    pub max_len: usize,
}

/// `[lora]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftLora {
    /// Rank.
    #[serde(default = "d_r")]
    pub r: usize,
    /// Scale numerator (update × `alpha / r`).
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    /// Dropout on the adapters' inputs.
    #[serde(default = "d_dropout")]
    pub dropout: f64,
    /// Modules adapted (PEFT suffix rule on Hugging Face module names).
    #[serde(default = "d_targets")]
    pub target_modules: Vec<String>,
}

impl Default for SftLora {
    fn default() -> Self {
        SftLora {
            r: d_r(),
            alpha: d_alpha(),
            dropout: d_dropout(),
            target_modules: d_targets(),
        }
    }
}

/// How conversations are written out as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateChoice {
    /// The model's own chat template (GGUF `tokenizer.chat_template`; Gemma's turns for a
    /// Gemma 3 file without one): what `generate`, `ask` and `eval-qa` use.
    Auto,
    /// Gemma's turns (`<start_of_turn>user\n…<end_of_turn>\n`).
    Gemma,
    /// ChatML (`<|im_start|>user\n…<|im_end|>\n`).
    Chatml,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftData {
    /// Training conversations (JSONL of `{"messages": [...]}`).
    pub train: PathBuf,
    /// Dev conversations for the eval loss (none: no evaluation, the last adapter is best).
    #[serde(default)]
    pub dev: Option<PathBuf>,
    /// Chat format.
    #[serde(default = "d_template")]
    pub template: TemplateChoice,
    /// Concatenate short examples into sequences of up to `max_len` tokens.
    #[serde(default)]
    pub packing: bool,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftTrain {
    /// Output folder: adapter, best adapter, checkpoint, metrics, merged exports.
    pub out: PathBuf,
    /// Seeds adapter init, data order and dropout.
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Sequences per forward pass.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Forward passes per optimizer step.
    #[serde(default = "d_one")]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// AdamW decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Share of all steps spent warming up linearly (then linear decay to 0).
    #[serde(default = "d_warmup")]
    pub warmup_ratio: f64,
    /// Gradients are scaled down to this global L2 norm (0: no clipping).
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    /// Passes over the training data.
    #[serde(default = "d_one")]
    pub epochs: usize,
    /// Optimizer steps between checkpoints (0: only at epoch ends).
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: u64,
    /// Optimizer steps between loss records in metrics.jsonl.
    #[serde(default = "d_log")]
    pub log_every: u64,
    /// Optimizer steps between dev evaluations (0: only at epoch ends).
    #[serde(default)]
    pub eval_every: u64,
    /// Sequences per forward pass when computing the dev loss (default: `batch_size`).
    #[serde(default)]
    pub eval_batch_size: Option<usize>,
    /// Stop after this many optimizer steps in total (a test or a quick look; the schedule
    /// still spans all epochs, so a resume may raise it).
    #[serde(default)]
    pub max_steps: Option<u64>,
}

/// A merged export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportKind {
    /// Dense f32.
    F32,
    /// Dense f16.
    F16,
    /// 8-bit blocks.
    Q8_0,
    /// 4-bit blocks.
    Q4_0,
}

impl ExportKind {
    /// The name used in file names (`merged-<name>.gguf`).
    pub fn name(self) -> &'static str {
        match self {
            ExportKind::F32 => "f32",
            ExportKind::F16 => "f16",
            ExportKind::Q8_0 => "q8_0",
            ExportKind::Q4_0 => "q4_0",
        }
    }
}

/// `[export]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SftExport {
    /// Formats of `merged-<format>.gguf` written after training (base + final adapter).
    #[serde(default)]
    pub formats: Vec<ExportKind>,
}

fn d_base() -> BaseMode {
    BaseMode::Quantized
}
fn d_max_len() -> usize {
    512
}
fn d_r() -> usize {
    16
}
fn d_alpha() -> f64 {
    32.0
}
fn d_dropout() -> f64 {
    0.05
}
/// The attention and MLP projections of Llama-family decoders (Hugging Face names).
fn d_targets() -> Vec<String> {
    [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
fn d_template() -> TemplateChoice {
    TemplateChoice::Auto
}
fn d_seed() -> u64 {
    42
}
fn d_batch() -> usize {
    8
}
fn d_one() -> usize {
    1
}
fn d_lr() -> f64 {
    2e-4
}
fn d_warmup() -> f64 {
    0.05
}
fn d_clip() -> f64 {
    1.0
}
fn d_ckpt() -> u64 {
    50
}
fn d_log() -> u64 {
    1
}

impl SftConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io(path))?;
        Self::parse(&text, path)
    }

    /// Parses and checks TOML `text`; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let cfg: SftConfig = crate::config::parse_toml(text, path)?;
        cfg.check(path)?;
        Ok(cfg)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, what: &str| {
            Err(TrainError::Config {
                path: path.into(),
                what: format!("key '{key}': {what}"),
            })
        };
        let t = &self.train;
        if self.model.gguf.trim().is_empty() {
            return bad("model.gguf", "give a GGUF file or a preset name");
        }
        if self.model.max_len < 2 {
            return bad("model.max_len", "must be at least 2");
        }
        if self.lora.r == 0 {
            return bad("lora.r", "must be at least 1");
        }
        if !(self.lora.alpha > 0.0 && self.lora.alpha.is_finite()) {
            return bad("lora.alpha", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.lora.dropout) {
            return bad("lora.dropout", "must be in [0, 1)");
        }
        if self.lora.target_modules.is_empty() {
            return bad("lora.target_modules", "name at least one module");
        }
        if t.batch_size == 0 {
            return bad("train.batch_size", "must be at least 1");
        }
        if t.grad_accum == 0 {
            return bad("train.grad_accum", "must be at least 1");
        }
        if t.eval_batch_size == Some(0) {
            return bad("train.eval_batch_size", "must be at least 1");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return bad("train.lr", "must be a positive number");
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            return bad("train.weight_decay", "must be 0 or more");
        }
        if !(0.0..=1.0).contains(&t.warmup_ratio) {
            return bad("train.warmup_ratio", "must be in [0, 1]");
        }
        if !(t.max_grad_norm >= 0.0 && t.max_grad_norm.is_finite()) {
            return bad("train.max_grad_norm", "must be 0 (off) or more");
        }
        if t.epochs == 0 {
            return bad("train.epochs", "must be at least 1");
        }
        if t.log_every == 0 {
            return bad("train.log_every", "must be at least 1");
        }
        if t.max_steps == Some(0) {
            return bad("train.max_steps", "must be at least 1 (or left out)");
        }
        let mut seen = Vec::new();
        for f in &self.export.formats {
            if seen.contains(f) {
                return bad("export.formats", &format!("'{}' is listed twice", f.name()));
            }
            seen.push(*f);
        }
        Ok(())
    }

    /// Sequences per forward pass of the dev loss.
    pub fn eval_batch_size(&self) -> usize {
        self.train.eval_batch_size.unwrap_or(self.train.batch_size)
    }

    /// A digest of the settings that decide the training trajectory (everything but
    /// `max_steps` and the exports), stored in checkpoints so that a resume with another
    /// config is refused.
    pub fn trajectory_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut c = self.clone();
        c.train.max_steps = None;
        c.export = SftExport::default();
        let json = serde_json::to_string(&c).unwrap_or_default();
        Sha256::digest(json.as_bytes())
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
[model]
gguf = "models/smollm2/x.gguf"
[data]
train = "chat.jsonl"
[train]
out = "runs/x"
"#;

    fn err(text: &str) -> String {
        SftConfig::parse(text, Path::new("conf/sft.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_fill_in() {
        let c = SftConfig::parse(OK, Path::new("c.toml")).unwrap();
        assert_eq!(c.model.base, BaseMode::Quantized);
        assert_eq!(c.model.max_len, 512);
        assert_eq!(c.lora.r, 16);
        assert_eq!(c.lora.target_modules.len(), 7);
        assert_eq!(c.data.template, TemplateChoice::Auto);
        assert!(!c.data.packing && c.data.dev.is_none());
        assert_eq!((c.train.epochs, c.train.grad_accum), (1, 1));
        assert!(c.export.formats.is_empty());
        assert_eq!(c.eval_batch_size(), 8);
    }

    #[test]
    fn full_config_parses() {
        let text = r#"
[model]
gguf = "g.gguf"
base = "f32"
max_len = 384
[lora]
r = 8
alpha = 16
dropout = 0.0
target_modules = ["q_proj", "v_proj"]
[data]
train = "t.jsonl"
dev = "d.jsonl"
template = "gemma"
packing = true
[train]
out = "o"
seed = 1
batch_size = 4
grad_accum = 2
lr = 1e-4
weight_decay = 0.01
warmup_ratio = 0.1
max_grad_norm = 0.5
epochs = 2
checkpoint_every = 10
log_every = 5
eval_every = 20
max_steps = 7
[export]
formats = ["q8_0", "q4_0", "f16"]
"#;
        let c = SftConfig::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(c.model.base, BaseMode::F32);
        assert_eq!(c.data.template, TemplateChoice::Gemma);
        assert_eq!(
            c.export.formats,
            vec![ExportKind::Q8_0, ExportKind::Q4_0, ExportKind::F16]
        );
        assert_eq!(c.train.max_steps, Some(7));
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        for (section, key) in [
            ("[train]\n", "learning_rate = 1\n"),
            ("[model]\n", "path = \"x\"\n"),
            ("[data]\n", "split = \"train\"\n"),
        ] {
            let e = err(&OK.replace(section, &format!("{section}{key}")));
            let name = key.split(' ').next().unwrap();
            assert!(e.contains("conf/sft.toml") && e.contains(name), "{e}");
        }
        let e = err(&format!("{OK}[extra]\nx = 1\n"));
        assert!(e.contains("extra"), "{e}");
        let e = err(&format!("{OK}[export]\nformat = [\"q8_0\"]\n"));
        assert!(e.contains("format"), "{e}");
    }

    #[test]
    fn wrong_types_and_values_are_named() {
        let e = err(&OK.replace("[train]\n", "[train]\nbatch_size = \"big\"\n"));
        assert!(e.contains("batch_size"), "{e}");
        let e = err(&OK.replace("[data]\n", "[data]\ntemplate = \"llama9\"\n"));
        assert!(e.contains("llama9"), "{e}");
        let e = err(&OK.replace("[model]\n", "[model]\nbase = \"q2\"\n"));
        assert!(e.contains("q2"), "{e}");
        let e = err(&format!("{OK}[export]\nformats = [\"q3_k\"]\n"));
        assert!(e.contains("q3_k"), "{e}");
        for (section, line, key) in [
            ("[train]\n", "lr = 0\n", "train.lr"),
            ("[train]\n", "epochs = 0\n", "train.epochs"),
            ("[train]\n", "grad_accum = 0\n", "train.grad_accum"),
            ("[train]\n", "warmup_ratio = 1.5\n", "train.warmup_ratio"),
            ("[model]\n", "max_len = 1\n", "model.max_len"),
        ] {
            let e = err(&OK.replace(section, &format!("{section}{line}")));
            assert!(e.contains(key) && e.contains("conf/sft.toml"), "{e}");
        }
        let e = err(&format!("{OK}[lora]\ndropout = 1.0\n"));
        assert!(e.contains("lora.dropout"), "{e}");
        let e = err(&format!("{OK}[export]\nformats = [\"q8_0\", \"q8_0\"]\n"));
        assert!(e.contains("export.formats"), "{e}");
        let e = err("[model]\ngguf = \"x\"\n[train]\nout = \"o\"\n");
        assert!(e.contains("data"), "{e}");
    }

    #[test]
    fn digest_ignores_max_steps_and_exports_only() {
        let a = SftConfig::parse(OK, Path::new("c.toml")).unwrap();
        let mut b = a.clone();
        b.train.max_steps = Some(3);
        b.export.formats = vec![ExportKind::Q8_0];
        assert_eq!(a.trajectory_digest(), b.trajectory_digest());
        b.train.lr = 1e-3;
        assert_ne!(a.trajectory_digest(), b.trajectory_digest());
    }
}
