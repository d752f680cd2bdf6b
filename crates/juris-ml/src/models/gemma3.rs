//! Gemma 3 (text) decoders read from GGUF. Differences from Llama that matter for parity:
//! the embedding is multiplied by `sqrt(hidden)`; RMSNorm weights are used as stored
//! because llama.cpp's converter already added Gemma's `+1`; q and k get a per-head RMSNorm
//! before rotation; attention scores are scaled by `query_pre_attn_scalar^-1/2`; each block
//! has four norms (input, post-attention, pre- and post-feed-forward); the MLP is
//! GELU(tanh)-gated; and layers alternate between sliding-window attention with a local
//! rotary base and full attention with the global base.
//!
//! GGUF files carry only the global base and window; the rest follows Gemma 3's published
//! configuration (the same values llama.cpp and transformers assume): every 6th layer is
//! global, the local base is 10 000, and `query_pre_attn_scalar` is the head width except for
//! the 27B model (62 layers), which uses `hidden / heads`.

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

/// Hyper-parameters of a Gemma 3 model, from `gemma3.*` metadata plus Gemma 3's fixed
/// conventions (see the module docs).
#[derive(Debug, Clone)]
pub struct Gemma3Config {
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
    /// Rotary base of global (full-attention) layers.
    pub rope_global: f64,
    /// Rotary base of sliding-window layers.
    pub rope_local: f64,
    /// Linear rotary scaling of global layers (1 when none).
    pub rope_global_linear: f32,
    /// Keys a sliding-window query sees (itself included).
    pub sliding_window: usize,
    /// Every `pattern`-th layer (1-based) is global.
    pub sliding_pattern: usize,
    /// Scores are multiplied by `query_pre_attn_scalar^-1/2`.
    pub query_pre_attn_scalar: f64,
}

impl Gemma3Config {
    /// Reads `gemma3.*` metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Gemma3Config> {
        let arch = "gemma3";
        let key = |k: &str| format!("{arch}.{k}");
        let heads = HeadShape::from_gguf(g, arch)?;
        let layers = g.usize(&key("block_count"))?;
        let query_pre_attn_scalar = if layers == 62 {
            (heads.hidden / heads.heads) as f64
        } else {
            heads.head_dim as f64
        };
        Ok(Gemma3Config {
            dims: DecoderDims {
                arch: arch.to_string(),
                hidden: heads.hidden,
                vocab: vocab_size(g, arch)?,
                context: g.usize_opt(&key("context_length"))?.unwrap_or(32_768),
            },
            heads,
            layers,
            ffn: g.usize(&key("feed_forward_length"))?,
            eps: g
                .f64_opt(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6),
            rope_global: g.f64_opt(&key("rope.freq_base"))?.unwrap_or(1_000_000.0),
            rope_local: 10_000.0,
            rope_global_linear: linear_rope_scaling(g, arch)?,
            sliding_window: g
                .usize_opt(&key("attention.sliding_window"))?
                .unwrap_or(512)
                .max(1),
            sliding_pattern: 6,
            query_pre_attn_scalar,
        })
    }

    /// Whether 0-based layer `i` uses sliding-window attention.
    pub fn is_sliding(&self, i: usize) -> bool {
        !(i + 1).is_multiple_of(self.sliding_pattern)
    }
}

#[derive(Debug)]
struct Block {
    attn_norm: RmsNorm,
    attn: SelfAttention,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    mlp: GatedMlp,
    post_ffn_norm: RmsNorm,
    sliding: bool,
}

/// A Gemma 3 text decoder.
#[derive(Debug)]
pub struct Gemma3Model {
    cfg: Gemma3Config,
    embed: TokenEmbedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    rope_local: Rope,
    rope_global: Rope,
    head: OutputHead,
    device: Device,
}

impl Gemma3Model {
    /// Loads every tensor of a Gemma 3 model.
    pub fn load(g: &GgufFile, mode: WeightMode, device: &Device) -> Result<Self> {
        let cfg = Gemma3Config::from_gguf(g)?;
        let (h, hd) = (cfg.dims.hidden, cfg.heads.head_dim);
        let embed = TokenEmbedding::load(g, cfg.dims.vocab, h, mode, device)?;
        let scale = 1.0 / cfg.query_pre_attn_scalar.sqrt();
        let mut blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("blk.{i}");
            let norm = |n: &str| RmsNorm::load(g, &format!("{p}.{n}"), h, cfg.eps, device);
            blocks.push(Block {
                attn_norm: norm("attn_norm")?,
                attn: {
                    let mut a = SelfAttention::load(
                        g,
                        &p,
                        cfg.heads,
                        false,
                        Some(cfg.eps),
                        scale,
                        mode,
                        device,
                    )?;
                    if mode == WeightMode::Quantized {
                        a.set_llama_cpp();
                    }
                    a
                },
                post_attn_norm: norm("post_attention_norm")?,
                ffn_norm: norm("ffn_norm")?,
                mlp: GatedMlp::load(g, &p, h, cfg.ffn, GateActivation::GeluTanh, mode, device)?,
                post_ffn_norm: norm("post_ffw_norm")?,
                sliding: cfg.is_sliding(i),
            });
        }
        let norm = RmsNorm::load(g, "output_norm", h, cfg.eps, device)?;
        let mut rope_local = Rope::new(cfg.rope_local, hd, None, 1.0, false)?;
        let mut rope_global = Rope::new(cfg.rope_global, hd, None, cfg.rope_global_linear, false)?;
        if mode == WeightMode::Quantized {
            // Quantized weights compute as llama.cpp does (see `ggml_matmul`).
            rope_local = rope_local.llama_cpp();
            rope_global = rope_global.llama_cpp();
        }
        let head = OutputHead::load(g, cfg.dims.vocab, h, mode, device)?;
        Ok(Gemma3Model {
            cfg,
            embed,
            blocks,
            norm,
            rope_local,
            rope_global,
            head,
            device: device.clone(),
        })
    }

    /// The configuration read from the file.
    pub fn config(&self) -> &Gemma3Config {
        &self.cfg
    }
}

impl DecoderLm for Gemma3Model {
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
        Ok(Box::new(Gemma3Pass {
            model: self,
            ids: ids.clone(),
            masks: BatchMasks::new(mask, Some(self.cfg.sliding_window), &self.device)?,
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

impl Gemma3Model {
    fn step(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let offset = cache.len();
        // Sliding layers keep every key and mask the old ones out: simpler than a ring
        // buffer, and the memory is small for the context lengths a CPU generates.
        let window = self.cfg.sliding_window;
        let (ids, positions, bias) = step_inputs(
            ids,
            offset,
            self.cfg.dims.context,
            Some(window),
            &self.device,
        )?;
        let n = ids.dim(1)?;
        let layers = cache.layers_mut(self.blocks.len())?;
        let scale = (self.cfg.dims.hidden as f32).sqrt();
        let mut x = (self.embed.forward(&ids)? * scale as f64)?;
        let last_block = self.blocks.len().saturating_sub(1);
        for (i, (b, lc)) in self.blocks.iter().zip(layers.iter_mut()).enumerate() {
            let (rope, bias, window) = if b.sliding {
                (&self.rope_local, bias.sliding.as_ref(), Some(window))
            } else {
                (&self.rope_global, bias.full.as_ref(), None)
            };
            let mut a = b.attn.forward_cached(
                &b.attn_norm.forward(&x)?,
                rope,
                &positions,
                bias,
                window,
                lc,
            )?;
            if i == last_block && n > 1 {
                // Only the last token's logits are wanted, so after the last attention
                // (which filled the cache for every token) only its row goes on, as in
                // llama.cpp. Besides the saved work this keeps llama.cpp's numbers: its
                // K-quant products sum in an order that depends on the number of rows
                // (`ggml_matmul`), and it multiplies this one row alone.
                a = a.narrow(1, n - 1, 1)?;
                x = x.narrow(1, n - 1, 1)?;
            }
            x = (&x + b.post_attn_norm.forward(&a)?)?;
            let m = b.mlp.forward(&b.ffn_norm.forward(&x)?)?;
            x = (&x + b.post_ffn_norm.forward(&m)?)?;
        }
        cache.advance(n);
        let rows = x.dim(1)?;
        let last = self.norm.forward(&x.narrow(1, rows - 1, 1)?)?;
        Ok(self.logits(&last)?.flatten_all()?)
    }
}

/// One full-sequence forward of a [`Gemma3Model`], cut at its blocks.
struct Gemma3Pass<'a> {
    model: &'a Gemma3Model,
    ids: Tensor,
    masks: BatchMasks,
}

impl BlockPass for Gemma3Pass<'_> {
    fn stem(&self) -> Result<Tensor> {
        // Gemma scales the embedding by sqrt(hidden), rounded to the activation dtype (f32;
        // bf16 in mixed precision, as Hugging Face's bf16 Gemma rounds it).
        let scale = (self.model.cfg.dims.hidden as f32).sqrt();
        Ok((self.model.embed.forward(&self.ids)? * scale as f64)?)
    }

    fn num_blocks(&self) -> usize {
        self.model.blocks.len()
    }

    fn block(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let m = self.model;
        let b = &m.blocks[i];
        let (rope, bias) = match (&self.masks.sliding, b.sliding) {
            (Some(s), true) => (&m.rope_local, s),
            _ => (&m.rope_global, &self.masks.full),
        };
        let a = b
            .attn
            .forward(&b.attn_norm.forward(x)?, rope, &self.masks.positions, bias)?;
        let x = (x + b.post_attn_norm.forward(&a)?)?;
        let h = b.mlp.forward(&b.ffn_norm.forward(&x)?)?;
        Ok((&x + b.post_ffn_norm.forward(&h)?)?)
    }

    fn finish(&self, x: &Tensor) -> Result<Tensor> {
        self.model.norm.forward(x)
    }
}
