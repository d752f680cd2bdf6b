//! The Llama family of decoders read from GGUF: Llama 2/3.x, SmolLM2, and (through the
//! switches in [`LlamaConfig`], set by [`super::qwen`]) Qwen2 and Qwen3. Pre-norm blocks of
//! RMSNorm → grouped-query attention with rotary positions → RMSNorm → SwiGLU MLP, a final
//! RMSNorm, and an output projection tied to the embedding when `output.weight` is absent.
//!
//! GGUF `llama` files store q/k rows permuted for llama.cpp's interleaved rotary layout, so
//! rotation here pairs adjacent channels for them; Qwen files are not permuted and use
//! rotate-half. Both give the Hugging Face numbers.

use candle_core::{Device, Tensor};

use super::decoder::DecoderLm;
use super::decoder_layers::{
    block_projections, block_projections_mut, linear_rope_scaling, on_pool, step_inputs,
    vocab_size, BatchMasks, DecoderDims, GateActivation, GatedMlp, HeadShape, KvCache, OutputHead,
    Projection, RmsNorm, Rope, SelfAttention, TokenEmbedding, WeightMode,
};
use crate::error::Result;
use crate::gguf::GgufFile;
use crate::grad_checkpoint::{self, BlockPass};

/// Hyper-parameters of a Llama-family model, read from GGUF metadata under the
/// architecture's prefix (`llama.block_count`, ...).
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    /// Architecture, width, vocabulary and context.
    pub dims: DecoderDims,
    /// Attention head layout.
    pub heads: HeadShape,
    /// Number of blocks.
    pub layers: usize,
    /// MLP inner width.
    pub ffn: usize,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Channels of each head that rotate.
    pub rope_dim: usize,
    /// Linear rotary scaling factor (1 when none).
    pub rope_linear: f32,
    /// Interleaved rotary pairs (llama.cpp's permuted `llama` files) vs rotate-half.
    pub interleaved_rope: bool,
    /// Per-head RMSNorm on q and k before rotation (Qwen3).
    pub qk_norm: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub qkv_bias: bool,
}

impl LlamaConfig {
    /// Reads the configuration of a `llama`-layout file whose metadata prefix is `arch`.
    pub fn from_gguf(g: &GgufFile, arch: &str) -> Result<LlamaConfig> {
        let key = |k: &str| format!("{arch}.{k}");
        let heads = HeadShape::from_gguf(g, arch)?;
        Ok(LlamaConfig {
            dims: DecoderDims {
                arch: arch.to_string(),
                hidden: heads.hidden,
                vocab: vocab_size(g, arch)?,
                context: g.usize_opt(&key("context_length"))?.unwrap_or(2048),
            },
            heads,
            layers: g.usize(&key("block_count"))?,
            ffn: g.usize(&key("feed_forward_length"))?,
            eps: g
                .f64_opt(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope_theta: g.f64_opt(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_dim: g
                .usize_opt(&key("rope.dimension_count"))?
                .unwrap_or(heads.head_dim),
            rope_linear: linear_rope_scaling(g, arch)?,
            interleaved_rope: true,
            qk_norm: false,
            qkv_bias: false,
        })
    }
}

#[derive(Debug)]
struct Block {
    attn_norm: RmsNorm,
    attn: SelfAttention,
    ffn_norm: RmsNorm,
    mlp: GatedMlp,
}

/// A Llama-family decoder.
#[derive(Debug)]
pub struct LlamaModel {
    cfg: LlamaConfig,
    embed: TokenEmbedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    rope: Rope,
    head: OutputHead,
    device: Device,
}

impl LlamaModel {
    /// Loads every tensor of a Llama-family model described by `cfg`.
    pub fn load(g: &GgufFile, cfg: LlamaConfig, mode: WeightMode, device: &Device) -> Result<Self> {
        let h = cfg.dims.hidden;
        let embed = TokenEmbedding::load(g, cfg.dims.vocab, h, mode, device)?;
        let scale = 1.0 / (cfg.heads.head_dim as f64).sqrt();
        let qk_norm = cfg.qk_norm.then_some(cfg.eps);
        let mut blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("blk.{i}");
            let norm = |n: &str| RmsNorm::load(g, &format!("{p}.{n}"), h, cfg.eps, device);
            let mut attn =
                SelfAttention::load(g, &p, cfg.heads, cfg.qkv_bias, qk_norm, scale, mode, device)?;
            if cfg.interleaved_rope {
                // Interleaved rotary pairs are how the converter's q/k row permutation
                // shows; adapters (Hugging Face order) need the same permutation.
                attn.set_llama_permuted_qk();
            }
            if mode == WeightMode::Quantized {
                // Quantized weights compute as llama.cpp does (see `ggml_matmul`).
                attn.set_llama_cpp();
            }
            blocks.push(Block {
                attn_norm: norm("attn_norm")?,
                attn,
                ffn_norm: norm("ffn_norm")?,
                mlp: GatedMlp::load(g, &p, h, cfg.ffn, GateActivation::Silu, mode, device)?,
            });
        }
        let norm = RmsNorm::load(g, "output_norm", h, cfg.eps, device)?;
        let freq_factors = if g.has_tensor("rope_freqs.weight") {
            Some(
                g.tensor_f32("rope_freqs.weight", device)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            )
        } else {
            None
        };
        let mut rope = Rope::new(
            cfg.rope_theta,
            cfg.rope_dim,
            freq_factors.as_deref(),
            cfg.rope_linear,
            cfg.interleaved_rope,
        )?;
        if mode == WeightMode::Quantized {
            rope = rope.llama_cpp();
        }
        let head = OutputHead::load(g, cfg.dims.vocab, h, mode, device)?;
        Ok(LlamaModel {
            cfg,
            embed,
            blocks,
            norm,
            rope,
            head,
            device: device.clone(),
        })
    }

    /// The configuration read from the file.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
}

impl DecoderLm for LlamaModel {
    fn dims(&self) -> &DecoderDims {
        &self.cfg.dims
    }
    fn device(&self) -> &Device {
        &self.device
    }

    fn forward_hidden(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        grad_checkpoint::forward_all(self.train_pass(ids, mask)?.as_ref())
    }

    fn train_pass<'a>(&'a self, ids: &Tensor, mask: &Tensor) -> Result<Box<dyn BlockPass + 'a>> {
        Ok(Box::new(LlamaPass {
            model: self,
            ids: ids.clone(),
            masks: BatchMasks::new(mask, None, &self.device)?,
        }))
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.head.forward(hidden, &self.embed)
    }

    fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    fn projections(&self) -> Vec<&Projection> {
        block_projections(self.blocks.iter().map(|b| (&b.attn, &b.mlp)))
    }

    fn projections_mut(&mut self) -> Vec<&mut Projection> {
        block_projections_mut(self.blocks.iter_mut().map(|b| (&mut b.attn, &mut b.mlp)))
    }

    fn forward_step(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        on_pool(|| self.step(ids, cache))
    }
}

impl LlamaModel {
    fn step(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let offset = cache.len();
        let (ids, positions, bias) =
            step_inputs(ids, offset, self.cfg.dims.context, None, &self.device)?;
        let n = ids.dim(1)?;
        let layers = cache.layers_mut(self.blocks.len())?;
        let mut x = self.embed.forward(&ids)?;
        for (b, lc) in self.blocks.iter().zip(layers.iter_mut()) {
            let a = b.attn.forward_cached(
                &b.attn_norm.forward(&x)?,
                &self.rope,
                &positions,
                bias.full.as_ref(),
                None,
                lc,
            )?;
            x = (x + a)?;
            x = (&x + b.mlp.forward(&b.ffn_norm.forward(&x)?)?)?;
        }
        cache.advance(n);
        // Only the last position's logits are needed: projecting the whole prompt onto the
        // vocabulary would cost as much as a few layers.
        let last = self.norm.forward(&x.narrow(1, n - 1, 1)?)?;
        Ok(self.logits(&last)?.flatten_all()?)
    }
}

/// One full-sequence forward of a [`LlamaModel`], cut at its blocks.
struct LlamaPass<'a> {
    model: &'a LlamaModel,
    ids: Tensor,
    masks: BatchMasks,
}

impl BlockPass for LlamaPass<'_> {
    fn stem(&self) -> Result<Tensor> {
        self.model.embed.forward(&self.ids)
    }

    fn num_blocks(&self) -> usize {
        self.model.blocks.len()
    }

    fn block(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let b = &self.model.blocks[i];
        let a = b.attn.forward(
            &b.attn_norm.forward(x)?,
            &self.model.rope,
            &self.masks.positions,
            &self.masks.full,
        )?;
        let x = (x + a)?;
        Ok((&x + b.mlp.forward(&b.ffn_norm.forward(&x)?)?)?)
    }

    fn finish(&self, x: &Tensor) -> Result<Tensor> {
        self.model.norm.forward(x)
    }
}
