//! Decoder LLMs from GGUF files: the [`DecoderLm`] seam every architecture implements
//! (hidden states after the final norm, and logits), [`load_decoder`] which picks the
//! architecture from `general.architecture`, and [`DecoderEncoder`], a RepLLaMA-style
//! last-token-pooling [`Encoder`] over any of them ([`load_gguf_encoder`]).
//!
//! Pooling: the text gets a role prefix (`"query: "` / `"passage: "`), is tokenized with the
//! file's BOS convention, truncated to `max_len - 1` tokens, and the EOS id is appended; the
//! final-norm hidden state at that EOS position, L2-normalized, is the embedding. Batches are
//! right-padded and each row's own EOS position is gathered, so a text gives the same vector
//! alone and in a batch.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use sha2::{Digest, Sha256};

use super::decoder_layers::{DecoderDims, KvCache, Projection, WeightMode};
use crate::encoder::{Encoder, EncoderOptions, TextRole};
use crate::error::{MlError, Result};
use crate::gguf::GgufFile;
use crate::gguf_tokenizer::GgufTokenizer;
use crate::grad_checkpoint::BlockPass;

/// Values of `general.architecture` that [`load_decoder`] supports.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "gemma3", "qwen2", "qwen3"];

/// A decoder-only language model.
pub trait DecoderLm: Send + Sync + std::fmt::Debug {
    /// Architecture name and sizes.
    fn dims(&self) -> &DecoderDims;
    /// `general.architecture` of the file it came from.
    fn architecture(&self) -> &str {
        &self.dims().arch
    }
    /// Width of the hidden states.
    fn hidden_size(&self) -> usize {
        self.dims().hidden
    }
    /// Rows of the embedding / columns of the logits.
    fn vocab_size(&self) -> usize {
        self.dims().vocab
    }
    /// Longest context the model was trained for.
    fn context_length(&self) -> usize {
        self.dims().context
    }
    /// Where the weights live.
    fn device(&self) -> &Device;
    /// Hidden states after the final norm, `[batch, seq, hidden]` in the activations' type
    /// (f32; bf16 for a model loaded in [`WeightMode::Bf16`]), for token ids
    /// `[batch, seq]` (u32) and an attention mask `[batch, seq]` (1 real, 0 padding; left or
    /// right padding).
    fn forward_hidden(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor>;
    /// [`DecoderLm::forward_hidden`] cut at its blocks, for gradient checkpointing
    /// ([`crate::grad_checkpoint`]): running the pass whole gives `forward_hidden`.
    fn train_pass<'a>(&'a self, ids: &Tensor, mask: &Tensor) -> Result<Box<dyn BlockPass + 'a>>;
    /// Next-token logits `[.., vocab]` for hidden states from [`DecoderLm::forward_hidden`].
    fn logits(&self, hidden: &Tensor) -> Result<Tensor>;
    /// Number of blocks (a [`KvCache`] holds one entry per block).
    fn num_layers(&self) -> usize;
    /// An empty KV cache for one sequence on this model.
    fn new_cache(&self) -> KvCache {
        KvCache::new(self.num_layers())
    }
    /// The incremental path of generation: runs `ids` (one sequence) after the tokens
    /// already in `cache`, appends their keys and values to it, and returns the logits of
    /// the last new token, `[vocab]` f32. Feeding a prompt at once and then one token at a
    /// time gives the logits a full forward pass over the whole sequence gives. Fails
    /// (leaving `cache` unusable: clear it) when the sequence would exceed the context.
    fn forward_step(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor>;
    /// The linear layers an adapter can target (each block's q/k/v/o and gate/up/down
    /// projections, in block order), under their Hugging Face module paths. Empty for a
    /// model that does not support adapters.
    fn projections(&self) -> Vec<&Projection> {
        Vec::new()
    }
    /// Mutable access to [`DecoderLm::projections`], to attach or merge adapters.
    fn projections_mut(&mut self) -> Vec<&mut Projection> {
        Vec::new()
    }
}

/// Loads the decoder in `g`, choosing the architecture from `general.architecture`.
pub fn load_decoder(g: &GgufFile, mode: WeightMode, device: &Device) -> Result<Box<dyn DecoderLm>> {
    let arch = g.architecture()?.to_string();
    Ok(match arch.as_str() {
        "llama" => {
            let cfg = super::llama::LlamaConfig::from_gguf(g, "llama")?;
            Box::new(super::llama::LlamaModel::load(g, cfg, mode, device)?)
        }
        "gemma3" => Box::new(super::gemma3::Gemma3Model::load(g, mode, device)?),
        "qwen2" | "qwen3" => Box::new(super::qwen::load_qwen(g, &arch, mode, device)?),
        other => {
            return Err(MlError::Unsupported(format!(
                "{}: architecture '{other}' (general.architecture) is not supported; supported: {}",
                g.path().display(),
                SUPPORTED_ARCHITECTURES.join(", ")
            )))
        }
    })
}

/// Identifies a file cheaply: SHA-256 over its size, first MiB and last MiB (hashing all
/// of a multi-GB model at every load would cost seconds; a different model or quantization
/// differs in its header or tensor data at the ends).
pub fn file_digest(path: &Path) -> Result<String> {
    let io = |source| MlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    const MIB: u64 = 1 << 20;
    let mut h = Sha256::new();
    h.update(len.to_le_bytes());
    let mut buf = Vec::new();
    f.by_ref().take(MIB).read_to_end(&mut buf).map_err(io)?;
    h.update(&buf);
    if len > MIB {
        buf.clear();
        f.seek(SeekFrom::Start(len.saturating_sub(MIB).max(MIB)))
            .map_err(io)?;
        f.read_to_end(&mut buf).map_err(io)?;
        h.update(&buf);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Last-token (EOS) pooling over a decoder: RepLLaMA-style embeddings.
#[derive(Debug)]
pub struct DecoderEncoder {
    name: String,
    model: Box<dyn DecoderLm>,
    tokenizer: GgufTokenizer,
    eos: u32,
    pad: u32,
    max_len: usize,
    fingerprint: String,
}

/// The role prefix last-token pooling puts before a text.
pub fn pooling_prefix(role: TextRole) -> &'static str {
    match role {
        TextRole::Query => "query: ",
        TextRole::Passage => "passage: ",
    }
}

/// Token ids last-token pooling feeds for `text`: prefix + text with the file's BOS,
/// truncated to `max_len - 1`, then `eos` (the pooled position).
pub fn pooling_input_ids(
    tokenizer: &GgufTokenizer,
    eos: u32,
    text: &str,
    role: TextRole,
    max_len: usize,
) -> Result<Vec<u32>> {
    let mut ids = tokenizer.encode(&format!("{}{text}", pooling_prefix(role)), true)?;
    if tokenizer.adds_eos() && ids.last() == Some(&eos) {
        ids.pop();
    }
    ids.truncate(max_len.saturating_sub(1));
    ids.push(eos);
    Ok(ids)
}

/// Tokens `text` becomes before truncation, the appended EOS included.
pub fn pooling_token_count(tokenizer: &GgufTokenizer, text: &str, role: TextRole) -> Result<usize> {
    let n = tokenizer
        .encode(&format!("{}{text}", pooling_prefix(role)), true)?
        .len();
    Ok(if tokenizer.adds_eos() { n } else { n + 1 })
}

/// Rows right-padded with `pad` into ids and attention-mask tensors `[rows, width]`.
pub fn right_padded(rows: &[Vec<u32>], pad: u32, device: &Device) -> Result<(Tensor, Tensor)> {
    let width = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut mask = Vec::with_capacity(rows.len() * width);
    for r in rows {
        ids.extend_from_slice(r);
        ids.extend(std::iter::repeat_n(pad, width - r.len()));
        mask.extend(std::iter::repeat_n(1u32, r.len()));
        mask.extend(std::iter::repeat_n(0u32, width - r.len()));
    }
    Ok((
        Tensor::from_vec(ids, (rows.len(), width), device)?,
        Tensor::from_vec(mask, (rows.len(), width), device)?,
    ))
}

impl DecoderEncoder {
    /// Wraps a loaded model and tokenizer. `digest` identifies the weights (see
    /// [`file_digest`]).
    pub fn new(
        name: String,
        model: Box<dyn DecoderLm>,
        tokenizer: GgufTokenizer,
        max_len: usize,
        digest: &str,
        mode: WeightMode,
    ) -> Result<Self> {
        let eos = tokenizer.eos_id().ok_or_else(|| {
            MlError::Unsupported(format!(
                "{name}: the file has no tokenizer.ggml.eos_token_id; last-token pooling needs an EOS token"
            ))
        })?;
        if tokenizer.vocab_size() > model.vocab_size() {
            return Err(MlError::Mismatch(format!(
                "{name}: the tokenizer has {} tokens but the embedding only {} rows",
                tokenizer.vocab_size(),
                model.vocab_size()
            )));
        }
        // Room for at least one text token besides EOS (and BOS).
        let max_len = max_len.min(model.context_length()).max(3);
        let pad = tokenizer.pad_id().unwrap_or(eos);
        let (query_prefix, passage_prefix) = (
            pooling_prefix(TextRole::Query),
            pooling_prefix(TextRole::Passage),
        );
        let fingerprint = format!(
            "gguf-decoder/v1 sha256(size,first MiB,last MiB)={digest} arch={} pooling=last-token+eos prefixes={query_prefix:?}|{passage_prefix:?} max_len={max_len} weights={mode:?}",
            model.architecture()
        );
        Ok(DecoderEncoder {
            name,
            model,
            tokenizer,
            eos,
            pad,
            max_len,
            fingerprint,
        })
    }

    /// The decoder underneath (for logits and generation).
    pub fn model(&self) -> &dyn DecoderLm {
        self.model.as_ref()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// Token ids the encoder feeds for `text`: prefix + text with the file's BOS,
    /// truncated to `max_len - 1`, then EOS.
    pub fn input_ids(&self, text: &str, role: TextRole) -> Result<Vec<u32>> {
        pooling_input_ids(&self.tokenizer, self.eos, text, role, self.max_len)
    }

    /// Embeds pre-tokenized rows (each ending with the pooled token) in one padded pass.
    pub fn encode_ids(&self, rows: &[Vec<u32>]) -> Result<Vec<f32>> {
        let dim = self.dim();
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, mask) = right_padded(rows, self.pad, self.model.device())?;
        let hidden = self.model.forward_hidden(&ids, &mask)?;
        let mut out = Vec::with_capacity(rows.len() * dim);
        for (i, r) in rows.iter().enumerate() {
            let last = r.len().max(1) - 1;
            let v = hidden
                .i((i, last))?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            out.extend(v.iter().map(|x| x / norm));
        }
        Ok(out)
    }
}

impl Encoder for DecoderEncoder {
    fn name(&self) -> &str {
        &self.name
    }
    fn dim(&self) -> usize {
        self.model.hidden_size()
    }
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
    fn token_count(&self, text: &str, role: TextRole) -> Result<usize> {
        pooling_token_count(&self.tokenizer, text, role)
    }
    fn encode(&self, texts: &[&str], role: TextRole) -> Result<Vec<f32>> {
        let rows = texts
            .iter()
            .map(|t| self.input_ids(t, role))
            .collect::<Result<Vec<_>>>()?;
        self.encode_ids(&rows)
    }
}

/// Loads a GGUF decoder as a last-token-pooling encoder with f32 weights on the device that
/// `opts` names.
pub fn load_gguf_encoder(path: &Path, opts: &EncoderOptions) -> Result<Box<dyn Encoder>> {
    let device = crate::nn::device_for(opts.device)?;
    Ok(Box::new(load_gguf_encoder_with(
        path,
        opts,
        WeightMode::F32,
        &device,
    )?))
}

/// Like [`load_gguf_encoder`] with a choice of weight mode and device.
pub fn load_gguf_encoder_with(
    path: &Path,
    opts: &EncoderOptions,
    mode: WeightMode,
    device: &Device,
) -> Result<DecoderEncoder> {
    let g = GgufFile::open(path)?;
    let model = load_decoder(&g, mode, device)?;
    let tokenizer = GgufTokenizer::from_gguf(&g)?;
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match g.string_opt("general.name")? {
        Some(n) if !n.is_empty() => format!("{n} ({base}, last-token pooling)"),
        _ => format!("{base} (last-token pooling)"),
    };
    DecoderEncoder::new(
        name,
        model,
        tokenizer,
        opts.max_len,
        &file_digest(path)?,
        mode,
    )
}

/// [`load_gguf_encoder`] with the PEFT adapter in `adapter` merged into the f32 weights
/// (a retriever trained by `juris train retriever`); the adapter's digest joins the
/// fingerprint, so a store embedded without it (or with another) is not mistaken for this.
pub fn load_gguf_encoder_with_adapter(
    path: &Path,
    opts: &EncoderOptions,
    adapter: &Path,
) -> Result<DecoderEncoder> {
    let device = crate::nn::device_for(opts.device)?;
    let g = GgufFile::open(path)?;
    let model = crate::decoder_lora::load_decoder_with_adapter(
        &g,
        WeightMode::F32,
        Some(adapter),
        &device,
    )?;
    let tokenizer = GgufTokenizer::from_gguf(&g)?;
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lora = crate::lora::LoraAdapter::folder_digest(adapter)?;
    let name = match g.string_opt("general.name")? {
        Some(n) if !n.is_empty() => format!("{n} ({base} + LoRA, last-token pooling)"),
        _ => format!("{base} + LoRA (last-token pooling)"),
    };
    DecoderEncoder::new(
        name,
        model,
        tokenizer,
        opts.max_len,
        &format!("{} lora={lora}", file_digest(path)?),
        WeightMode::F32,
    )
}
