//! BERT / XLM-RoBERTa encoders (all-MiniLM-L6-v2, multilingual-e5, …): the transformer
//! ([`BertModel`], our own, in the manner of candle-transformers), its HF `config.json`
//! ([`Config`]), sentence pooling ([`Pooling`]) and the [`Encoder`] built on them
//! ([`BertEncoder`], from a Hugging Face / sentence-transformers folder or from parts that
//! another reader such as [`crate::models::e5s1`] supplies).
//!
//! Layout: post-norm transformer layers; attention over each text's own tokens only (padding
//! keys get an additive −∞); token type 0 everywhere; positions from 0 (BERT) or from
//! `pad_token_id + 1` (XLM-R / RoBERTa, as HF counts them).

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::encoder::{Encoder, EncoderOptions, TextRole};
use crate::error::{MlError, Result};
use crate::nn::{device_for, Activation, Embedding, LayerNorm, Linear, Weights};
use crate::tokenize::{HfTokenizer, TextTokenizer};

/// The fields of an HF `config.json` that the architecture needs; others are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// `bert`, `xlm-roberta`, `roberta` or `camembert`.
    pub model_type: String,
    /// Rows of the word embedding table.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Feed-forward activation (`gelu` = exact erf GELU).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Rows of the position embedding table.
    pub max_position_embeddings: usize,
    /// Rows of the token type table.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Padding id (XLM-R: 1; it also fixes where positions start).
    #[serde(default)]
    pub pad_token_id: usize,
    /// Row of the position table for the first token, when a reader knows better than the
    /// model type (the E5S1 file stores XLM-R's table without its two unused rows).
    #[serde(skip)]
    pub position_offset: Option<usize>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl Config {
    /// Row of the position table used for the first token.
    pub fn first_position(&self) -> usize {
        if let Some(off) = self.position_offset {
            return off;
        }
        match self.model_type.as_str() {
            "xlm-roberta" | "roberta" | "camembert" => self.pad_token_id + 1,
            _ => 0,
        }
    }

    /// Tokens per text the position table allows.
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.first_position())
    }

    fn check(&self, path: &Path) -> Result<Activation> {
        let known = ["bert", "xlm-roberta", "roberta", "camembert"];
        if !known.contains(&self.model_type.as_str()) {
            return Err(MlError::Unsupported(format!(
                "{}: model_type '{}' is not a BERT-family encoder (supported: {})",
                path.display(),
                self.model_type,
                known.join(", ")
            )));
        }
        if self.num_attention_heads == 0
            || self.hidden_size == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(MlError::Corrupt {
                path: path.into(),
                what: format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            });
        }
        Activation::from_hf(&self.hidden_act).ok_or_else(|| {
            MlError::Unsupported(format!(
                "{}: hidden_act '{}' is not supported (gelu, gelu_new, relu)",
                path.display(),
                self.hidden_act
            ))
        })
    }
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    attn_ln: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
    out_ln: LayerNorm,
}

/// The transformer: embeddings, then post-norm self-attention and feed-forward layers.
pub struct BertModel {
    word: Embedding,
    position: Embedding,
    token_type: Tensor,
    emb_ln: LayerNorm,
    layers: Vec<Layer>,
    act: Activation,
    heads: usize,
    first_position: usize,
    config: Config,
    device: Device,
}

impl BertModel {
    /// Builds the model from HF-named weights, with or without a `bert.` / `roberta.` prefix.
    /// `config_path` is only used in error messages.
    pub fn load(w: &Weights, config: &Config, config_path: &Path) -> Result<Self> {
        let act = config.check(config_path)?;
        let prefix = ["", "bert.", "roberta.", "model."]
            .into_iter()
            .find(|p| w.contains(&format!("{p}embeddings.word_embeddings.weight")))
            .ok_or_else(|| MlError::Corrupt {
                path: w.path().into(),
                what: "no tensor 'embeddings.word_embeddings.weight' (with or without a \
                       'bert.'/'roberta.' prefix); is this a BERT-family model?"
                    .into(),
            })?;
        let h = config.hidden_size;
        let ff = config.intermediate_size;
        let eps = config.layer_norm_eps;
        let p = |s: &str| format!("{prefix}{s}");
        let word = w.embedding(
            &p("embeddings.word_embeddings.weight"),
            config.vocab_size,
            h,
        )?;
        let position = w.embedding(
            &p("embeddings.position_embeddings.weight"),
            config.max_position_embeddings,
            h,
        )?;
        let types = w.get(
            &p("embeddings.token_type_embeddings.weight"),
            &[config.type_vocab_size.max(1), h],
        )?;
        // Every text is a single segment: token type 0.
        let token_type = types.narrow(0, 0, 1)?.reshape((1, 1, h))?;
        let emb_ln = LayerNorm::load(w, &p("embeddings.LayerNorm"), h, eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = |s: &str| p(&format!("encoder.layer.{i}.{s}"));
            layers.push(Layer {
                q: Linear::load(w, &l("attention.self.query"), h, h)?,
                k: Linear::load(w, &l("attention.self.key"), h, h)?,
                v: Linear::load(w, &l("attention.self.value"), h, h)?,
                attn_out: Linear::load(w, &l("attention.output.dense"), h, h)?,
                attn_ln: LayerNorm::load(w, &l("attention.output.LayerNorm"), h, eps)?,
                ff_in: Linear::load(w, &l("intermediate.dense"), h, ff)?,
                ff_out: Linear::load(w, &l("output.dense"), ff, h)?,
                out_ln: LayerNorm::load(w, &l("output.LayerNorm"), h, eps)?,
            });
        }
        Ok(BertModel {
            word,
            position,
            token_type,
            emb_ln,
            layers,
            act,
            heads: config.num_attention_heads,
            first_position: config.first_position(),
            config: config.clone(),
            device: w.device().clone(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Final hidden states `[batch, seq, hidden]` for right-padded `ids` (`batch` rows of
    /// `seq` ids) whose real lengths are `lens`.
    pub fn forward(&self, ids: &[u32], lens: &[usize], seq: usize) -> Result<Tensor> {
        let b = lens.len();
        let h = self.config.hidden_size;
        let dev = &self.device;
        let ids_t = Tensor::from_slice(ids, (b, seq), dev)?;
        let pos: Vec<u32> = (0..seq).map(|i| (i + self.first_position) as u32).collect();
        let pos_t = Tensor::from_slice(&pos, seq, dev)?;
        let x = self
            .word
            .forward(&ids_t)?
            .broadcast_add(&self.position.forward(&pos_t)?.unsqueeze(0)?)?
            .broadcast_add(&self.token_type)?;
        let mut x = self.emb_ln.forward(&x)?;

        // Additive key mask [b,1,1,seq]: 0 for real tokens, −∞ for padding. Every row keeps
        // at least its first token, so no softmax row is all −∞.
        let mut mask = vec![0f32; b * seq];
        for (row, &len) in lens.iter().enumerate() {
            for v in &mut mask[row * seq + len.min(seq)..(row + 1) * seq] {
                *v = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, 1, seq), dev)?;
        let hd = h / self.heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, seq, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        for layer in &self.layers {
            let q = split(layer.q.forward(&x)?)?;
            let k = split(layer.k.forward(&x)?)?;
            let v = split(layer.v.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, seq, h))?;
            let attn = layer.attn_out.forward(&ctx)?;
            x = layer.attn_ln.forward(&(x + attn)?)?;
            let mid = self.act.forward(&layer.ff_in.forward(&x)?)?;
            let out = layer.ff_out.forward(&mid)?;
            x = layer.out_ln.forward(&(x + out)?)?;
        }
        Ok(x)
    }
}

/// How token states become one sentence vector (sentence-transformers' `1_Pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Average over real tokens.
    Mean,
    /// The first token.
    Cls,
    /// Element-wise maximum over real tokens.
    Max,
    /// The last real token.
    LastToken,
}

impl Pooling {
    /// Reads `1_Pooling/config.json` (or whichever folder modules.json names); mean pooling
    /// when there is none, as sentence-transformers does for a bare HF model.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("1_Pooling").join("config.json");
        if !path.is_file() {
            return Ok(Pooling::Mean);
        }
        let v: serde_json::Value = read_json(&path)?;
        let flag = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
        if let Some(mode) = v.get("pooling_mode").and_then(|x| x.as_str()) {
            return Pooling::from_name(mode).ok_or_else(|| {
                MlError::Unsupported(format!("{}: pooling_mode '{mode}'", path.display()))
            });
        }
        Ok(if flag("pooling_mode_cls_token") {
            Pooling::Cls
        } else if flag("pooling_mode_max_tokens") {
            Pooling::Max
        } else if flag("pooling_mode_lasttoken") {
            Pooling::LastToken
        } else if flag("pooling_mode_mean_tokens") {
            Pooling::Mean
        } else {
            return Err(MlError::Unsupported(format!(
                "{}: no supported pooling mode is enabled (mean, cls, max, lasttoken)",
                path.display()
            )));
        })
    }

    /// Parses a name (`mean`, `cls`, `max`, `lasttoken`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "mean" => Some(Pooling::Mean),
            "cls" => Some(Pooling::Cls),
            "max" => Some(Pooling::Max),
            "lasttoken" => Some(Pooling::LastToken),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
            Pooling::LastToken => "lasttoken",
        }
    }

    /// Pools one text's `len` token rows (row-major, width `dim`) into `out`.
    fn pool(self, rows: &[f32], len: usize, dim: usize, out: &mut [f32]) {
        let len = len.max(1);
        match self {
            Pooling::Cls => out.copy_from_slice(&rows[..dim]),
            Pooling::LastToken => out.copy_from_slice(&rows[(len - 1) * dim..len * dim]),
            Pooling::Mean => {
                out.fill(0.0);
                for r in rows[..len * dim].chunks_exact(dim) {
                    out.iter_mut().zip(r).for_each(|(o, v)| *o += v);
                }
                out.iter_mut().for_each(|o| *o /= len as f32);
            }
            Pooling::Max => {
                out.fill(f32::NEG_INFINITY);
                for r in rows[..len * dim].chunks_exact(dim) {
                    out.iter_mut().zip(r).for_each(|(o, v)| *o = o.max(*v));
                }
            }
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| MlError::Io {
        path: path.into(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| MlError::Corrupt {
        path: path.into(),
        what: format!("invalid JSON ({e})"),
    })
}

/// Everything besides the transformer that decides an encoder's vectors.
pub struct EncoderParts {
    /// Human name.
    pub name: String,
    /// Turns text into ids.
    pub tokenizer: Box<dyn TextTokenizer>,
    /// Pooling mode.
    pub pooling: Pooling,
    /// Prepended to queries.
    pub query_prefix: String,
    /// Prepended to passages.
    pub passage_prefix: String,
    /// Token limit per text, specials included (already the minimum of all limits).
    pub max_len: usize,
    /// Id used for padding positions (masked, so any valid id works).
    pub pad_id: u32,
    /// Digest of the weights file (see [`file_digest`]).
    pub weights_digest: String,
}

/// A BERT-family sentence encoder.
pub struct BertEncoder {
    model: BertModel,
    parts: EncoderParts,
    fingerprint: String,
}

impl BertEncoder {
    /// Joins a model and its parts, checking that the tokenizer fits the embedding table.
    pub fn new(model: BertModel, parts: EncoderParts) -> Result<Self> {
        let rows = model.config.vocab_size;
        if parts.tokenizer.vocab_size() > rows {
            return Err(MlError::Mismatch(format!(
                "{}: tokenizer has {} tokens but the embedding table has {rows} rows; the \
                 tokenizer belongs to another model",
                parts.name,
                parts.tokenizer.vocab_size()
            )));
        }
        let fingerprint = format!(
            "bert:{}:pool={}:q={:?}:p={:?}:max_len={}",
            parts.weights_digest,
            parts.pooling.name(),
            parts.query_prefix,
            parts.passage_prefix,
            parts.max_len
        );
        Ok(BertEncoder {
            model,
            parts,
            fingerprint,
        })
    }

    /// Loads a Hugging Face / sentence-transformers folder: config.json, model.safetensors,
    /// tokenizer.json, and when present 1_Pooling/config.json, sentence_bert_config.json and
    /// config_sentence_transformers.json (prompts).
    pub fn from_hf_dir(dir: &Path, opts: &EncoderOptions) -> Result<Self> {
        let need = |name: &str| -> Result<std::path::PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(MlError::Missing {
                    path: p,
                    hint: "a Hugging Face encoder folder needs config.json, model.safetensors \
                           and tokenizer.json; re-fetch the model (bash scripts/fetch-models.sh)"
                        .into(),
                })
            }
        };
        let config_path = need("config.json")?;
        let weights_path = need("model.safetensors")?;
        let tokenizer_path = need("tokenizer.json")?;
        let config: Config = read_json(&config_path)?;
        let device = device_for(opts.device)?;
        let weights = Weights::from_safetensors(&weights_path, &device)?;
        let model = BertModel::load(&weights, &config, &config_path)?;
        let tokenizer = HfTokenizer::from_file(&tokenizer_path)?;

        let mut max_len = opts.max_len.min(config.max_tokens());
        let sbert = dir.join("sentence_bert_config.json");
        if sbert.is_file() {
            let v: serde_json::Value = read_json(&sbert)?;
            if let Some(m) = v.get("max_seq_length").and_then(|x| x.as_u64()) {
                max_len = max_len.min(m as usize);
            }
        }
        let (query_prefix, passage_prefix) = prompts(dir)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parts = EncoderParts {
            name,
            tokenizer: Box::new(tokenizer),
            pooling: Pooling::from_dir(dir)?,
            query_prefix,
            passage_prefix,
            max_len: max_len.max(2),
            pad_id: config.pad_token_id as u32,
            weights_digest: file_digest(&weights_path)?,
        };
        BertEncoder::new(model, parts)
    }

    fn ids(&self, text: &str, role: TextRole, max_len: Option<usize>) -> Result<Vec<u32>> {
        let prefix = match role {
            TextRole::Query => &self.parts.query_prefix,
            TextRole::Passage => &self.parts.passage_prefix,
        };
        if prefix.is_empty() {
            self.parts.tokenizer.encode(text, max_len)
        } else {
            self.parts
                .tokenizer
                .encode(&format!("{prefix}{text}"), max_len)
        }
    }

    /// Hidden-state pooling over a padded batch, without normalization (for tests and
    /// training code that wants raw vectors).
    pub fn pooled(&self, texts: &[&str], role: TextRole) -> Result<Vec<f32>> {
        let dim = self.dim();
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut seqs = Vec::with_capacity(texts.len());
        for t in texts {
            seqs.push(self.ids(t, role, Some(self.parts.max_len))?);
        }
        let seq = seqs.iter().map(Vec::len).max().unwrap_or(1);
        let mut ids = vec![self.parts.pad_id; texts.len() * seq];
        for (row, s) in seqs.iter().enumerate() {
            ids[row * seq..row * seq + s.len()].copy_from_slice(s);
        }
        let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let hidden = self.model.forward(&ids, &lens, seq)?;
        let hidden: Vec<f32> = hidden.flatten_all()?.to_vec1()?;
        let mut out = vec![0f32; texts.len() * dim];
        for (row, &len) in lens.iter().enumerate() {
            let rows = &hidden[row * seq * dim..(row + 1) * seq * dim];
            self.parts
                .pooling
                .pool(rows, len, dim, &mut out[row * dim..(row + 1) * dim]);
        }
        Ok(out)
    }
}

impl Encoder for BertEncoder {
    fn name(&self) -> &str {
        &self.parts.name
    }

    fn dim(&self) -> usize {
        self.model.config.hidden_size
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn token_count(&self, text: &str, role: TextRole) -> Result<usize> {
        Ok(self.ids(text, role, None)?.len())
    }

    fn encode(&self, texts: &[&str], role: TextRole) -> Result<Vec<f32>> {
        let mut out = self.pooled(texts, role)?;
        for row in out.chunks_exact_mut(self.dim()) {
            l2_normalize(row);
        }
        Ok(out)
    }
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// Query and passage prefixes: sentence-transformers' `prompts` when the folder has them,
/// e5's `query: ` / `passage: ` for a folder named like an e5 model without them (e5 was
/// trained with these prefixes; HF copies often lack the prompts file), none otherwise.
fn prompts(dir: &Path) -> Result<(String, String)> {
    let path = dir.join("config_sentence_transformers.json");
    if path.is_file() {
        let v: serde_json::Value = read_json(&path)?;
        if let Some(p) = v.get("prompts").and_then(|p| p.as_object()) {
            let get = |k: &str| p.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            let passage = get("passage");
            let passage = if passage.is_empty() {
                get("document")
            } else {
                passage
            };
            return Ok((get("query"), passage));
        }
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.contains("e5-") || name.starts_with("e5") {
        return Ok(("query: ".into(), "passage: ".into()));
    }
    Ok((String::new(), String::new()))
}

/// SHA-256 of a whole weights file, hex (about 0.1–0.3 s for a 100 MB model).
pub fn file_digest(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|source| MlError::Io {
        path: path.into(),
        source,
    })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|source| MlError::Io {
            path: path.into(),
            source,
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
