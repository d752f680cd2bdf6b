//! Building blocks shared by the decoder architectures ([`super::llama`], [`super::gemma3`],
//! [`super::qwen`]): a linear layer that holds either a dense f32 weight or a quantized
//! [`QMatMul`], the block projections ([`Projection`]: such a layer under its Hugging Face
//! module path, with an optional LoRA adapter on top), the token embedding, RMSNorm, rotary
//! position tables computed per row from the attention mask, the additive causal + padding
//! (+ sliding window) mask, and grouped-query attention.
//!
//! Training (LoRA, QLoRA): every op of the full-sequence path has a backward in candle when
//! its input is part of a graph ([`Tensor::track_op`]); where candle's fast kernel has none
//! (quantized matmul, rotary embedding, last-dim softmax) a differentiable form is used for
//! tracked inputs only, so inference keeps the fast kernels.
//!
//! Positions come from the mask (`cumsum(mask) - 1`), so left- and right-padded batches both
//! give every real token the position it would have alone.
//!
//! Generation uses the incremental path instead: [`KvCache`] keeps each layer's rotated keys
//! and values, and [`SelfAttention::forward_cached`] attends a chunk of new tokens (the
//! whole prompt at once, then one token at a time) over the cached ones, with positions
//! and the causal / sliding-window bias built from the cache's length ([`step_inputs`]).
//!
//! Models with quantized weights run on the CPU as llama.cpp's CPU backend runs them, value
//! for value, so that their tokens are llama.cpp's: besides the products
//! ([`super::ggml_matmul`]) and RMSNorm, the rotary angles and rotation
//! ([`Rope::llama_cpp`]), attention ([`SelfAttention::set_llama_cpp`]: ggml's dot-product
//! orders, its vectorized `expf`, f64 softmax sums) and the MLP activation (GELU through
//! its f16 table, SiLU with its `expf`). Dense (f32) weights keep the f32 forms of the
//! Hugging Face references.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};

use super::ggml_matmul;
use super::qmatmul_grad::QMatMulGrad;
use crate::error::{MlError, Result};
use crate::gguf::GgufFile;
use crate::lora::LoraTrain;

/// How matrix weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightMode {
    /// Dequantized to f32 at load time: the most faithful numbers (parity with references);
    /// the default for encoders because the supported models are small.
    #[default]
    F32,
    /// Kept in the file's quantization and multiplied with candle's quantized kernels:
    /// less memory and faster on CPU, slightly different numbers (activations are
    /// quantized to 8 bits inside the kernel).
    Quantized,
    /// Dequantized and rounded to bf16 at load time, the activations bf16 too: the frozen
    /// base of mixed-precision training on CUDA (tensor-core products, half the memory of
    /// f32). Norm weights are stored in f32 and read in bf16, as a bf16 Hugging Face model
    /// holds them; the fused norm and softmax compute in f32.
    Bf16,
}

impl WeightMode {
    /// The type of dense weights and of the activations in this mode.
    pub fn dense_dtype(self) -> DType {
        match self {
            WeightMode::Bf16 => DType::BF16,
            WeightMode::F32 | WeightMode::Quantized => DType::F32,
        }
    }
}

/// A bias-optional linear layer `y = x W^T + b` whose weight is dense (f32, or bf16 in
/// [`WeightMode::Bf16`]) or quantized.
#[derive(Debug, Clone)]
pub enum DecoderLinear {
    /// Dense weight `[out, in]`.
    Dense {
        /// Weight `[out, in]`.
        weight: Tensor,
        /// Optional bias `[out]`, in the weight's type.
        bias: Option<Tensor>,
    },
    /// Quantized weight as stored in the GGUF file.
    Quantized {
        /// The quantized matrix.
        weight: QMatMul,
        /// Optional bias `[out]` (always f32).
        bias: Option<Tensor>,
    },
}

impl DecoderLinear {
    /// Loads `{name}.weight` (shape `[out, in]`) and, when present, `{name}.bias`.
    pub fn load(
        g: &GgufFile,
        name: &str,
        out_in: [usize; 2],
        mode: WeightMode,
        device: &Device,
    ) -> Result<DecoderLinear> {
        let wname = format!("{name}.weight");
        let bname = format!("{name}.bias");
        let bias = if g.has_tensor(&bname) {
            Some(g.tensor_f32_shaped(&bname, &[out_in[0]], device)?)
        } else {
            None
        };
        match mode {
            WeightMode::F32 | WeightMode::Bf16 => {
                let dtype = mode.dense_dtype();
                let weight = g
                    .tensor_f32_shaped(&wname, &out_in, device)?
                    .to_dtype(dtype)?;
                let bias = bias.map(|b| b.to_dtype(dtype)).transpose()?;
                Ok(DecoderLinear::Dense { weight, bias })
            }
            WeightMode::Quantized => {
                g.expect_shape(&wname, &out_in)?;
                let q = g.qtensor(&wname, device)?;
                Ok(DecoderLinear::Quantized {
                    weight: QMatMul::from_qtensor(q)?,
                    bias,
                })
            }
        }
    }

    /// Like [`DecoderLinear::load`] but requires a bias.
    pub fn load_with_bias(
        g: &GgufFile,
        name: &str,
        out_in: [usize; 2],
        mode: WeightMode,
        device: &Device,
    ) -> Result<DecoderLinear> {
        // Asking for the shape first gives the "tensor is missing" error with its name.
        g.tensor_shape(&format!("{name}.bias"))?;
        DecoderLinear::load(g, name, out_in, mode, device)
    }

    /// Applies the layer to `x` of shape `[.., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (y, bias) = match self {
            // Under a training graph: one 2-D product whose frozen weight gets no gradient.
            DecoderLinear::Dense { weight, bias } if x.track_op() => {
                return crate::frozen_linear::frozen_linear(x, weight, bias.as_ref());
            }
            DecoderLinear::Dense { weight, bias } => {
                let w = match x.dims().len() {
                    3 => weight.broadcast_left(x.dim(0)?)?.t()?,
                    _ => weight.t()?,
                };
                (x.matmul(&w)?, bias)
            }
            DecoderLinear::Quantized { weight, bias } => match weight {
                // A graph reaches this layer (LoRA below it or in it): candle's quantized
                // op has no backward, ours does.
                QMatMul::QTensor(q) if x.track_op() => {
                    (QMatMulGrad::new(q.clone()).forward(x)?, bias)
                }
                // On CPU, llama.cpp's activation quantization (see `ggml_matmul`).
                QMatMul::QTensor(q) => match ggml_matmul::forward(q, x)? {
                    Some(y) => (y, bias),
                    None => (weight.forward(x)?, bias),
                },
                _ => (weight.forward(x)?, bias),
            },
        };
        Ok(match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// The Hugging Face module path (`model.layers.{i}.self_attn.q_proj`, ...) of the GGUF
/// linear layer `blk.{i}.attn_q` (...), for the seven block projections and the output head
/// (`lm_head`); `None` for any other name.
pub fn hf_module_path(gguf_name: &str) -> Option<String> {
    if gguf_name == "output" {
        return Some("lm_head".into());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (i, part) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let module = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{i}.{module}"))
}

/// The GGUF tensor name (`blk.{i}.attn_q`, without `.weight`) of a Hugging Face module path;
/// the inverse of [`hf_module_path`].
pub fn gguf_tensor_name(hf_path: &str) -> Option<String> {
    if hf_path == "lm_head" {
        return Some("output".into());
    }
    let rest = hf_path.strip_prefix("model.layers.")?;
    let (i, module) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let part = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{i}.{part}"))
}

/// Row order of a q or k projection in a GGUF `llama` file relative to Hugging Face:
/// llama.cpp's converter permutes each head's rows from rotate-half pairs `(j, j + d/2)` to
/// adjacent pairs `(2j, 2j + 1)`, so GGUF row `h·d + 2j + s` is Hugging Face row
/// `h·d + s·d/2 + j`. Entry `g` of the result is the Hugging Face row stored at GGUF row `g`
/// (an index for `index_select` that turns Hugging Face rows into GGUF rows).
pub fn llama_qk_rows(heads: usize, head_dim: usize) -> Vec<u32> {
    let half = head_dim / 2;
    let mut rows = Vec::with_capacity(heads * head_dim);
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                rows.push((h * head_dim + s * half + j) as u32);
            }
        }
    }
    rows
}

/// A LoRA adapter on one [`Projection`].
#[derive(Clone)]
enum ProjectionAdapter {
    /// The trainable adapter shared by the whole model (its `A`/`B` are `Var`s), in the
    /// Hugging Face row order; `rows` maps it onto this layer's stored row order.
    Train {
        lora: Arc<LoraTrain>,
        rows: Option<Tensor>,
    },
    /// A fixed adapter for inference on a quantized base: `x Aᵀ Bᵀ` with the scale and the
    /// row order already folded into `b`; plain tensors, so no graph is recorded.
    Frozen { a: Tensor, b: Tensor },
}

impl std::fmt::Debug for ProjectionAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProjectionAdapter::Train { rows, .. } => f
                .debug_struct("Train")
                .field("permuted_rows", &rows.is_some())
                .finish(),
            ProjectionAdapter::Frozen { a, .. } => f
                .debug_struct("Frozen")
                .field("rank", &a.dim(0).ok())
                .finish(),
        }
    }
}

/// One linear layer of a decoder block under its Hugging Face module path
/// (`model.layers.{i}.self_attn.q_proj`, ...), the name LoRA adapters use, with an optional
/// adapter added to its output. Without an adapter it is exactly its [`DecoderLinear`].
#[derive(Debug, Clone)]
pub struct Projection {
    base: DecoderLinear,
    path: String,
    out_in: [usize; 2],
    /// Hugging Face row of each stored row (see [`llama_qk_rows`]); `None` when the file
    /// keeps Hugging Face's order.
    hf_rows: Option<Vec<u32>>,
    adapter: Option<ProjectionAdapter>,
}

impl Projection {
    /// Loads GGUF layer `name` (`blk.{i}.attn_q`, ...) of shape `[out, in]`, with a bias
    /// when `bias` (required then) or when the file has one.
    pub fn load(
        g: &GgufFile,
        name: &str,
        out_in: [usize; 2],
        bias: bool,
        mode: WeightMode,
        device: &Device,
    ) -> Result<Projection> {
        let base = if bias {
            DecoderLinear::load_with_bias(g, name, out_in, mode, device)?
        } else {
            DecoderLinear::load(g, name, out_in, mode, device)?
        };
        let path = hf_module_path(name).unwrap_or_else(|| name.to_string());
        Ok(Projection {
            base,
            path,
            out_in,
            hf_rows: None,
            adapter: None,
        })
    }

    /// The Hugging Face module path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `[out, in]`.
    pub fn out_in(&self) -> [usize; 2] {
        self.out_in
    }

    /// The base layer.
    pub fn base(&self) -> &DecoderLinear {
        &self.base
    }

    /// The stored row order relative to Hugging Face's (see [`llama_qk_rows`]).
    pub fn hf_rows(&self) -> Option<&[u32]> {
        self.hf_rows.as_deref()
    }

    /// Records that the stored rows are in the order `rows` (see [`llama_qk_rows`]).
    pub fn set_hf_rows(&mut self, rows: Vec<u32>) {
        self.hf_rows = Some(rows);
    }

    /// Whether an adapter is attached.
    pub fn has_adapter(&self) -> bool {
        self.adapter.is_some()
    }

    fn rows_tensor(&self, device: &Device) -> Result<Option<Tensor>> {
        Ok(match &self.hf_rows {
            Some(r) => Some(Tensor::from_slice(r, r.len(), device)?),
            None => None,
        })
    }

    /// Attaches the trainable adapter `lora` (used when it has an entry for this path),
    /// or detaches any adapter with `None`.
    pub fn set_lora(&mut self, lora: Option<Arc<LoraTrain>>) -> Result<()> {
        self.adapter = match lora {
            Some(l) if l.vars.contains_key(&self.path) => Some(ProjectionAdapter::Train {
                rows: self.rows_tensor(&self.device())?,
                lora: l,
            }),
            _ => None,
        };
        Ok(())
    }

    /// Attaches a fixed adapter (`a` `[r, in]`, `b` `[out, r]`, Hugging Face row order) with
    /// factor `scale`, applied on top of the base output at every forward.
    pub fn set_frozen(&mut self, a: &Tensor, b: &Tensor, scale: f64) -> Result<()> {
        let dev = self.device();
        let mut b = (b.to_device(&dev)?.to_dtype(DType::F32)? * scale)?;
        if let Some(r) = self.rows_tensor(&dev)? {
            b = b.index_select(&r, 0)?;
        }
        self.adapter = Some(ProjectionAdapter::Frozen {
            a: a.to_device(&dev)?.to_dtype(DType::F32)?.contiguous()?,
            b: b.contiguous()?,
        });
        Ok(())
    }

    /// Adds `delta` (`[out, in]`, Hugging Face row order) to a dense weight (in f32, then
    /// rounded to the weight's type); fails on a quantized one (merging would need
    /// re-quantization: attach it with [`Projection::set_frozen`] instead).
    pub fn merge(&mut self, delta: &Tensor) -> Result<()> {
        let dev = self.device();
        let mut delta = delta.to_device(&dev)?.to_dtype(DType::F32)?;
        if let Some(r) = self.rows_tensor(&dev)? {
            delta = delta.index_select(&r, 0)?;
        }
        match &mut self.base {
            DecoderLinear::Dense { weight, .. } => {
                if delta.dims() != weight.dims() {
                    return Err(MlError::Mismatch(format!(
                        "adapter module '{}' gives {:?}, the weight is {:?}",
                        self.path,
                        delta.dims(),
                        weight.dims()
                    )));
                }
                let dtype = weight.dtype();
                *weight = (weight.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)?;
                Ok(())
            }
            DecoderLinear::Quantized { .. } => Err(MlError::Unsupported(format!(
                "'{}' is quantized; an adapter can be merged only into dense (f32) weights",
                self.path
            ))),
        }
    }

    fn device(&self) -> Device {
        match &self.base {
            DecoderLinear::Dense { weight, .. } => weight.device().clone(),
            DecoderLinear::Quantized { weight, .. } => match weight {
                QMatMul::QTensor(q) => q.device(),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.device().clone(),
            },
        }
    }

    /// The quantized weight and bias when this layer is exactly `x Wᵀ (+ b)` over a
    /// quantized weight (no adapter), the case [`forward_projections`] fuses.
    fn plain_quantized(&self) -> Option<(&QTensor, Option<&Tensor>)> {
        match (&self.base, &self.adapter) {
            (
                DecoderLinear::Quantized {
                    weight: QMatMul::QTensor(q),
                    bias,
                },
                None,
            ) => Some((q.as_ref(), bias.as_ref())),
            _ => None,
        }
    }

    /// `x Wᵀ (+ b)` plus the adapter's update, for `x` `[.., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (
            DecoderLinear::Dense { weight, bias },
            Some(ProjectionAdapter::Train { lora, rows: None }),
        ) = (&self.base, &self.adapter)
        {
            // A dense base in its Hugging Face row order: the frozen layer and the adapter
            // as one training node.
            return lora.linear(&self.path, x, weight, bias.as_ref());
        }
        let y = self.base.forward(x)?;
        match &self.adapter {
            None => Ok(y),
            Some(ProjectionAdapter::Train { lora, rows }) => {
                lora.apply_rows(&self.path, x, y, rows.as_ref())
            }
            Some(ProjectionAdapter::Frozen { a, b }) => {
                let inp = self.out_in[1];
                let rows = x.elem_count() / inp.max(1);
                let low = x.reshape((rows, inp))?.matmul(&a.t()?)?.matmul(&b.t()?)?;
                let low = low.reshape(y.shape())?;
                Ok((y + low)?)
            }
        }
    }
}

/// `[p.forward(x) for p in ps]` for projections of the same input `x`. When every one is
/// a plain quantized CPU layer (no adapter, no graph), they go through one fused product
/// ([`ggml_matmul::forward_fused`]): `x` is quantized once and one parallel pass computes
/// all outputs, with the same numbers as one product at a time.
pub fn forward_projections<const N: usize>(
    ps: [&Projection; N],
    x: &Tensor,
) -> Result<[Tensor; N]> {
    let plain: Vec<_> = ps.iter().filter_map(|p| p.plain_quantized()).collect();
    if plain.len() == N && !x.track_op() {
        let ws: Vec<&QTensor> = plain.iter().map(|(w, _)| *w).collect();
        if let Some(ys) = ggml_matmul::forward_fused(&ws, x)? {
            let mut out = Vec::with_capacity(N);
            for (y, (_, bias)) in ys.into_iter().zip(&plain) {
                out.push(match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                });
            }
            return Ok(out
                .try_into()
                .unwrap_or_else(|_| unreachable!("one output per projection")));
        }
    }
    let mut out = Vec::with_capacity(N);
    for p in ps {
        out.push(p.forward(x)?);
    }
    Ok(out
        .try_into()
        .unwrap_or_else(|_| unreachable!("one output per projection")))
}

/// The token embedding table, optionally also the output projection (tied embeddings).
#[derive(Debug)]
pub struct TokenEmbedding {
    table: Arc<QTensor>,
    dense: Option<Tensor>,
    vocab: usize,
    hidden: usize,
    /// Type of the looked-up rows (the activations'): f32, or bf16 in [`WeightMode::Bf16`].
    dtype: DType,
}

impl TokenEmbedding {
    /// Loads `token_embd.weight` (`[vocab, hidden]`). Float tables are dequantized at once
    /// (to bf16 in [`WeightMode::Bf16`], f32 otherwise); quantized ones stay quantized and
    /// rows are dequantized on lookup (exactly the values a full dequantization would
    /// give).
    pub fn load(
        g: &GgufFile,
        vocab: usize,
        hidden: usize,
        mode: WeightMode,
        device: &Device,
    ) -> Result<Self> {
        let name = "token_embd.weight";
        g.expect_shape(name, &[vocab, hidden])?;
        let q = g.qtensor(name, device)?;
        let dtype = mode.dense_dtype();
        let dense = match q.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                Some(q.dequantize(device)?.to_dtype(dtype)?)
            }
            _ => None,
        };
        Ok(TokenEmbedding {
            table: Arc::new(q),
            dense,
            vocab,
            hidden,
            dtype,
        })
    }

    /// Number of rows.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Looks up `ids` (`[batch, seq]`, u32), giving `[batch, seq, hidden]` in the
    /// activations' type (f32; bf16 in [`WeightMode::Bf16`]); fails on an id outside the
    /// table.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
        if let Some(&bad) = flat
            .to_vec1::<u32>()?
            .iter()
            .find(|&&i| i as usize >= self.vocab)
        {
            return Err(MlError::Mismatch(format!(
                "token id {bad} is outside the embedding table of {} rows; the tokenizer does not belong to this model",
                self.vocab
            )));
        }
        let rows = match &self.dense {
            Some(t) => t.index_select(&flat, 0)?,
            None => self.table.embedding(&flat)?.to_dtype(self.dtype)?,
        };
        Ok(rows.reshape((b, s, self.hidden))?)
    }

    /// The table as an output projection (tied embeddings), in `mode`.
    pub fn as_linear(&self, mode: WeightMode) -> Result<DecoderLinear> {
        Ok(match (&self.dense, mode) {
            (Some(t), _) => DecoderLinear::Dense {
                weight: t.clone(),
                bias: None,
            },
            (None, WeightMode::F32 | WeightMode::Bf16) => DecoderLinear::Dense {
                weight: self
                    .table
                    .dequantize(&self.table.device())?
                    .to_dtype(mode.dense_dtype())?,
                bias: None,
            },
            (None, WeightMode::Quantized) => DecoderLinear::Quantized {
                weight: QMatMul::from_arc(self.table.clone())?,
                bias: None,
            },
        })
    }
}

/// RMSNorm: `x / sqrt(mean(x^2) + eps) * weight`, computed in f32. The weight is used as
/// stored; Gemma's GGUF converter already folded Gemma's `1 + w` into it.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Loads `{name}.weight` of length `dim`.
    pub fn load(g: &GgufFile, name: &str, dim: usize, eps: f64, device: &Device) -> Result<Self> {
        let weight = g.tensor_f32_shaped(&format!("{name}.weight"), &[dim], device)?;
        Ok(RmsNorm { weight, eps })
    }

    /// Normalizes over the last dimension.
    ///
    /// Inference computes in llama.cpp's order: squares in f32 summed in f64, the mean
    /// rounded to f32, `x · (1 / sqrt(mean + eps))`, then the weight. Dividing by the root
    /// instead moves some outputs by one ulp, which is enough to flip the 8-bit rounding of
    /// a few activations in the next quantized matmul (measured on SmolLM2's first layer).
    /// Training keeps the f32 form (no f64 copies of every activation).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.track_op() || x.dtype() == DType::BF16 {
            // One graph node instead of five full-size intermediates kept for backward; bf16
            // (evaluation in mixed-precision training) also takes it, as it computes in f32.
            return crate::train_ops::rms_norm(x, &self.weight, self.eps);
        }
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return self.forward_host(x);
        }
        let y = if x.dtype() != DType::F32 {
            let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
            x.broadcast_div(&(ms + self.eps)?.sqrt()?)?
        } else {
            let n = x.dim(D::Minus1)? as f64;
            let sum = x.sqr()?.to_dtype(DType::F64)?.sum_keepdim(D::Minus1)?;
            let mean = (sum / n)?.to_dtype(DType::F32)?;
            x.broadcast_mul(&(mean + self.eps)?.sqrt()?.recip()?)?
        };
        Ok(y.broadcast_mul(&self.weight)?)
    }

    /// The inference form on the CPU in plain loops: the same operations as the candle
    /// ops above, value for value (candle sums f64 sequentially and divides by multiplying
    /// with the reciprocal), without the ten ops and their allocations per call, which
    /// showed in decoding (six norms a Gemma layer per token).
    fn forward_host(&self, x: &Tensor) -> Result<Tensor> {
        let dim = x.dim(D::Minus1)?;
        let w = self.weight.to_vec1::<f32>()?;
        if w.len() != dim {
            return Err(MlError::Mismatch(format!(
                "RMSNorm of width {} over rows of {dim}",
                w.len()
            )));
        }
        let mut v = x.flatten_all()?.to_vec1::<f32>()?;
        let inv_n = 1.0 / dim as f64;
        let eps = self.eps as f32;
        for row in v.chunks_exact_mut(dim) {
            let mut sum = 0f64;
            for &a in row.iter() {
                sum += (a * a) as f64;
            }
            let mean = (sum * inv_n) as f32;
            let r = 1.0 / (mean + eps).sqrt();
            for (a, &w) in row.iter_mut().zip(&w) {
                *a = (*a * r) * w;
            }
        }
        Ok(Tensor::from_vec(v, x.shape(), x.device())?)
    }
}

/// Rotary embedding frequencies for one base (`theta`) and rotated width.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    /// Pair layout: `true` for llama.cpp's interleaved pairs (GGUF `llama` files, whose
    /// q/k rows the converter permuted), `false` for rotate-half (NeoX; Gemma, Qwen).
    interleaved: bool,
    /// Linear position scaling (positions are divided by it).
    linear_factor: f32,
    /// `theta^(-2/dim)` in f32, the ratio of consecutive angles in llama.cpp's form.
    theta_scale: f32,
    /// Per-pair frequency divisors (`rope_freqs.weight`), when the file has them.
    freq_factors: Option<Vec<f32>>,
    /// Rotate as llama.cpp's CPU backend does ([`Rope::llama_cpp`]).
    llama_cpp: bool,
}

impl Rope {
    /// Frequencies `1 / theta^(2i/dim)`, each divided by `freq_factors[i]` when given
    /// (Llama 3.x stores its long-context scaling that way, as `rope_freqs.weight`).
    pub fn new(
        theta: f64,
        dim: usize,
        freq_factors: Option<&[f32]>,
        linear_factor: f32,
        interleaved: bool,
    ) -> Result<Self> {
        if !dim.is_multiple_of(2) || dim == 0 {
            return Err(MlError::Unsupported(format!(
                "rotary dimension {dim} must be even and positive"
            )));
        }
        if let Some(f) = freq_factors {
            if f.len() != dim / 2 {
                return Err(MlError::Mismatch(format!(
                    "rope_freqs has {} factors, the rotary dimension {dim} needs {}",
                    f.len(),
                    dim / 2
                )));
            }
        }
        let inv_freq = (0..dim / 2)
            .map(|i| {
                let f = 1.0 / theta.powf(2.0 * i as f64 / dim as f64);
                let f = f / freq_factors.map(|ff| ff[i] as f64).unwrap_or(1.0);
                f as f32
            })
            .collect();
        Ok(Rope {
            inv_freq,
            interleaved,
            linear_factor,
            theta_scale: (theta as f32).powf(-2.0 / dim as f32),
            freq_factors: freq_factors.map(|f| f.to_vec()),
            llama_cpp: false,
        })
    }

    /// The same rotation computed as llama.cpp's CPU backend computes it, for models run
    /// the way llama.cpp runs them (quantized weights): the angle of pair `i + 1` is the
    /// angle of pair `i` times `theta^(-2/dim)` in f32, starting from the position (not
    /// `position · inv_freqᵢ`; the recurrence drifts by a few ulps over the pairs), and
    /// each rotated value is one fused multiply-add (`x₀·cos − x₁·sin` as
    /// `fma(x₀, cos, −(x₁·sin))`). Applies to CPU inference; a tracked input (training)
    /// and other devices keep the f32 form of the references.
    pub fn llama_cpp(mut self) -> Rope {
        self.llama_cpp = true;
        self
    }

    /// [`Rope::apply`] in llama.cpp's form (see [`Rope::llama_cpp`]) on host memory.
    fn apply_llama_cpp(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let (_, h, s, hd) = x.dims4()?;
        let half = self.inv_freq.len();
        let pos = positions.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let mut v = x.flatten_all()?.to_vec1::<f32>()?;
        let freq_scale = 1.0 / self.linear_factor;
        let (mut cos, mut sin) = (vec![0f32; half], vec![0f32; half]);
        for (bi, row_pos) in pos.iter().enumerate() {
            for (si, &p) in row_pos.iter().enumerate().take(s) {
                let mut theta = p as f32;
                for i in 0..half {
                    let ff = self.freq_factors.as_ref().map_or(1.0, |f| f[i]);
                    let t = freq_scale * (theta / ff);
                    cos[i] = t.cos();
                    sin[i] = t.sin();
                    theta *= self.theta_scale;
                }
                for hi in 0..h {
                    let start = ((bi * h + hi) * s + si) * hd;
                    let row = &mut v[start..start + hd];
                    for i in 0..half {
                        let (a, b) = if self.interleaved {
                            (2 * i, 2 * i + 1)
                        } else {
                            (i, i + half)
                        };
                        let (x0, x1) = (row[a], row[b]);
                        row[a] = x0.mul_add(cos[i], -(x1 * sin[i]));
                        row[b] = x0.mul_add(sin[i], x1 * cos[i]);
                    }
                }
            }
        }
        Ok(Tensor::from_vec(v, x.shape(), x.device())?)
    }

    /// Applies the rotation to `x` `[batch, heads, seq, head_dim]` at `positions`
    /// (`[batch][seq]`). Only the first `2 * inv_freq.len()` channels rotate.
    pub fn apply(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        if self.llama_cpp && !x.track_op() && x.device().is_cpu() && x.dtype() == DType::F32 {
            return self.apply_llama_cpp(x, positions);
        }
        let (b, _h, s, hd) = x.dims4()?;
        let half = self.inv_freq.len();
        let inv = Tensor::from_slice(&self.inv_freq, (1, 1, half), x.device())?;
        let pos =
            (positions.to_dtype(DType::F32)? / self.linear_factor as f64)?.reshape((b, s, 1))?;
        // Angles in f32 like the references (HF computes inv_freq @ positions in f32), then
        // cos and sin in the activations' type (HF casts them to bf16 the same way).
        let angles = pos.broadcast_mul(&inv)?;
        let cos = angles.cos()?.to_dtype(x.dtype())?.contiguous()?;
        let sin = angles.sin()?.to_dtype(x.dtype())?.contiguous()?;
        let rot_dim = 2 * half;
        let (head, rest) = if rot_dim < hd {
            (
                x.narrow(D::Minus1, 0, rot_dim)?,
                Some(x.narrow(D::Minus1, rot_dim, hd - rot_dim)?),
            )
        } else {
            (x.clone(), None)
        };
        let head = head.contiguous()?;
        let rotated = if x.track_op() {
            // candle's rotary kernels have no backward; this composition does.
            rotate_differentiable(&head, &cos, &sin, self.interleaved)?
        } else if self.interleaved {
            candle_nn::rotary_emb::rope_i(&head, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope(&head, &cos, &sin)?
        };
        Ok(match rest {
            Some(r) => Tensor::cat(&[&rotated, &r], D::Minus1)?,
            None => rotated,
        })
    }
}

/// The rotation of `x` `[b, h, s, d]` by angles with `cos`/`sin` `[b, s, d/2]`, built from
/// ops that all have a backward (same numbers as candle's `rope` / `rope_i` kernels).
/// `interleaved`: pairs `(2j, 2j+1)`; otherwise rotate-half pairs `(j, j + d/2)`.
pub fn rotate_differentiable(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    interleaved: bool,
) -> Result<Tensor> {
    let (b, h, s, d) = x.dims4()?;
    let half = d / 2;
    if interleaved {
        let cos = cos.reshape((b, 1, s, half, 1))?;
        let sin = sin.reshape((b, 1, s, half, 1))?;
        let x = x.reshape((b, h, s, half, 2))?;
        let x0 = x.narrow(D::Minus1, 0, 1)?;
        let x1 = x.narrow(D::Minus1, 1, 1)?;
        let r0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
        let r1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
        Ok(Tensor::cat(&[&r0, &r1], D::Minus1)?.reshape((b, h, s, d))?)
    } else {
        let cos = cos.reshape((b, 1, s, half))?;
        let sin = sin.reshape((b, 1, s, half))?;
        let x0 = x.narrow(D::Minus1, 0, half)?;
        let x1 = x.narrow(D::Minus1, half, half)?;
        let r0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
        let r1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
        Ok(Tensor::cat(&[&r0, &r1], D::Minus1)?)
    }
}

/// Softmax over the last dimension: candle's fused kernel for inference, the composed form
/// (which has a backward) when `x` is part of a graph.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(x)?
    })
}

/// Positions and masks for one padded batch, computed once and shared by all layers.
#[derive(Debug, Clone)]
pub struct BatchMasks {
    /// Position of each token, `[batch, seq]` u32: `cumsum(mask) - 1`, 0 on left padding.
    pub positions: Tensor,
    /// Additive bias `[batch, 1, seq, seq]`: 0 where query `i` may attend key `j`
    /// (`j <= i`, key `j` real), a large negative number elsewhere.
    pub full: Tensor,
    /// The same with a sliding window of `window` keys (`i - j < window`), when asked.
    pub sliding: Option<Tensor>,
}

/// Large enough to zero a softmax weight, finite so a row with every key masked (a query
/// on left padding) stays a uniform, harmless row instead of NaN.
const MASKED: f32 = -1e30;

impl BatchMasks {
    /// Builds positions and masks from the attention mask `[batch, seq]` (1 real, 0 pad;
    /// any numeric dtype).
    pub fn new(mask: &Tensor, window: Option<usize>, device: &Device) -> Result<Self> {
        let rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let b = rows.len();
        let s = rows.first().map(|r| r.len()).unwrap_or(0);
        let mut pos = Vec::with_capacity(b * s);
        let mut full = Vec::with_capacity(b * s * s);
        let mut slid = Vec::with_capacity(if window.is_some() { b * s * s } else { 0 });
        for row in &rows {
            let mut n = 0u32;
            for &m in row {
                if m > 0.5 {
                    n += 1;
                }
                pos.push(n.saturating_sub(1));
            }
            for i in 0..s {
                for (j, &m) in row.iter().enumerate() {
                    let ok = j <= i && m > 0.5;
                    full.push(if ok { 0.0 } else { MASKED });
                    if let Some(w) = window {
                        slid.push(if ok && i - j < w { 0.0 } else { MASKED });
                    }
                }
            }
        }
        Ok(BatchMasks {
            positions: Tensor::from_vec(pos, (b, s), device)?,
            full: Tensor::from_vec(full, (b, 1, s, s), device)?,
            sliding: match window {
                Some(_) => Some(Tensor::from_vec(slid, (b, 1, s, s), device)?),
                None => None,
            },
        })
    }
}

/// Repeats key/value heads `n_rep` times for grouped-query attention:
/// `[b, kv, s, d]` → `[b, kv * n_rep, s, d]`, each kv head adjacent to its copies.
pub fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kv, s, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kv, n_rep, s, d))?
        .reshape((b, kv * n_rep, s, d))?)
}

/// Scaled dot-product attention with an additive `bias` `[b, 1, s, s]`:
/// `softmax(q k^T * scale + bias) v`, on `[b, heads, s, d]` inputs.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, bias: &Tensor) -> Result<Tensor> {
    if q.track_op() || k.track_op() || q.dtype() == DType::BF16 {
        // Training: one graph node for scale, mask and softmax (keeps the raw scores and the
        // probabilities only, not the four intermediates of the composed form). bf16
        // scores (mixed precision, also when evaluating) take it too: it reads the f32 mask
        // and computes in f32.
        let probs = crate::train_ops::masked_softmax(&q.matmul(&k.t()?)?, bias, scale)?;
        return Ok(probs.matmul(v)?);
    }
    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(bias)?;
    let probs = softmax_last_dim(&scores)?;
    Ok(probs.matmul(v)?)
}

/// Splits `[b, s, heads * d]` into `[b, heads, s, d]` (contiguous).
pub fn split_heads(x: &Tensor, heads: usize, d: usize) -> Result<Tensor> {
    let (b, s, _) = x.dims3()?;
    Ok(x.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous()?)
}

/// Merges `[b, heads, s, d]` back into `[b, s, heads * d]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, s, d) = x.dims4()?;
    Ok(x.transpose(1, 2)?.reshape((b, s, h * d))?)
}

/// The output projection: `output.weight` when the file has one, otherwise the token
/// embedding (tied), built on first use because a large vocabulary makes it big.
#[derive(Debug)]
pub struct OutputHead {
    output: Option<DecoderLinear>,
    tied: std::sync::Mutex<Option<Arc<DecoderLinear>>>,
    mode: WeightMode,
}

impl OutputHead {
    /// Loads `output.weight` (`[vocab, hidden]`) when present.
    pub fn load(
        g: &GgufFile,
        vocab: usize,
        hidden: usize,
        mode: WeightMode,
        device: &Device,
    ) -> Result<Self> {
        let output = if g.has_tensor("output.weight") {
            Some(DecoderLinear::load(
                g,
                "output",
                [vocab, hidden],
                mode,
                device,
            )?)
        } else {
            None
        };
        Ok(OutputHead {
            output,
            tied: std::sync::Mutex::new(None),
            mode,
        })
    }

    /// Logits `[.., vocab]` for hidden states `[.., hidden]`.
    pub fn forward(&self, hidden: &Tensor, embed: &TokenEmbedding) -> Result<Tensor> {
        if let Some(o) = &self.output {
            return o.forward(hidden);
        }
        let head = {
            // A poisoned lock only means another thread panicked while building the head;
            // the slot holds either nothing or a finished head.
            let mut slot = match self.tied.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            match &*slot {
                Some(h) => h.clone(),
                None => {
                    let h = Arc::new(embed.as_linear(self.mode)?);
                    *slot = Some(h.clone());
                    h
                }
            }
        };
        head.forward(hidden)
    }
}

/// Sizes every decoder reports through [`super::decoder::DecoderLm`].
#[derive(Debug, Clone)]
pub struct DecoderDims {
    /// `general.architecture`.
    pub arch: String,
    /// Model width.
    pub hidden: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab: usize,
    /// Longest context the model was trained for.
    pub context: usize,
}

/// Head counts and widths of a decoder's attention, read from `{arch}.attention.*`.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    /// Model width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl HeadShape {
    /// Reads and checks the head layout of architecture `arch`.
    pub fn from_gguf(g: &GgufFile, arch: &str) -> Result<HeadShape> {
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = g.usize(&key("embedding_length"))?;
        let heads = g.usize(&key("attention.head_count"))?;
        let kv_heads = g
            .usize_opt(&key("attention.head_count_kv"))?
            .unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(MlError::Corrupt {
                path: g.path().to_path_buf(),
                what: format!(
                    "{heads} query heads ('{}') cannot be grouped over {kv_heads} key/value heads ('{}')",
                    key("attention.head_count"),
                    key("attention.head_count_kv")
                ),
            });
        }
        let head_dim = g
            .usize_opt(&key("attention.key_length"))?
            .unwrap_or(hidden / heads);
        Ok(HeadShape {
            hidden,
            heads,
            kv_heads,
            head_dim,
        })
    }
}

/// `{arch}.vocab_size`, or the embedding's row count when the key is absent.
pub fn vocab_size(g: &GgufFile, arch: &str) -> Result<usize> {
    match g.usize_opt(&format!("{arch}.vocab_size"))? {
        Some(v) => Ok(v),
        None => Ok(g.tensor_shape("token_embd.weight")?[0]),
    }
}

/// The linear rotary scaling factor from `{arch}.rope.scaling.*` (1 when none); other
/// scaling types are refused by name.
pub fn linear_rope_scaling(g: &GgufFile, arch: &str) -> Result<f32> {
    let key = format!("{arch}.rope.scaling.type");
    match g.string_opt(&key)? {
        None | Some("none") => Ok(1.0),
        Some("linear") => {
            Ok(g.f64_opt(&format!("{arch}.rope.scaling.factor"))?.unwrap_or(1.0) as f32)
        }
        Some(other) => Err(MlError::Unsupported(format!(
            "{}: rope scaling '{other}' ('{key}') is not supported; supported: none, linear (and Llama 3 frequency factors in rope_freqs.weight)",
            g.path().display()
        ))),
    }
}

/// Grouped-query self-attention of one block: projections, optional per-head q/k RMSNorm
/// (Gemma 3, Qwen3), rotation, scaled dot-product with an additive mask, output projection.
#[derive(Debug)]
pub struct SelfAttention {
    q: Projection,
    k: Projection,
    v: Projection,
    o: Projection,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    shape: HeadShape,
    scale: f64,
    /// Attend as llama.cpp's CPU backend does ([`SelfAttention::set_llama_cpp`]).
    llama_cpp: bool,
}

impl SelfAttention {
    /// Makes CPU inference attend exactly as llama.cpp's CPU backend does (F32 KV cache,
    /// no flash attention; see [`HostKv::attend_llama_cpp`]), for models run the way
    /// llama.cpp runs them (quantized weights). Training and other devices are unchanged.
    pub fn set_llama_cpp(&mut self) {
        self.llama_cpp = true;
    }

    /// Loads `{prefix}.attn_{q,k,v,output}` (with biases on q/k/v when `qkv_bias`) and,
    /// with `qk_norm`, `{prefix}.attn_{q,k}_norm`. Scores are multiplied by `scale`.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        g: &GgufFile,
        prefix: &str,
        shape: HeadShape,
        qkv_bias: bool,
        qk_norm: Option<f64>,
        scale: f64,
        mode: WeightMode,
        device: &Device,
    ) -> Result<Self> {
        let (h, hd) = (shape.hidden, shape.head_dim);
        let lin = |n: &str, out_in: [usize; 2], bias: bool| {
            Projection::load(g, &format!("{prefix}.{n}"), out_in, bias, mode, device)
        };
        let norm = |n: &str, eps: f64| RmsNorm::load(g, &format!("{prefix}.{n}"), hd, eps, device);
        Ok(SelfAttention {
            q: lin("attn_q", [shape.heads * hd, h], qkv_bias)?,
            k: lin("attn_k", [shape.kv_heads * hd, h], qkv_bias)?,
            v: lin("attn_v", [shape.kv_heads * hd, h], qkv_bias)?,
            o: lin("attn_output", [h, shape.heads * hd], false)?,
            q_norm: qk_norm.map(|eps| norm("attn_q_norm", eps)).transpose()?,
            k_norm: qk_norm.map(|eps| norm("attn_k_norm", eps)).transpose()?,
            shape,
            scale,
            llama_cpp: false,
        })
    }

    /// Records that the file stores the q and k rows in llama.cpp's permuted order (GGUF
    /// `llama` files; see [`llama_qk_rows`]), so adapters in Hugging Face order map onto them.
    pub fn set_llama_permuted_qk(&mut self) {
        let s = self.shape;
        self.q.set_hf_rows(llama_qk_rows(s.heads, s.head_dim));
        self.k.set_hf_rows(llama_qk_rows(s.kv_heads, s.head_dim));
    }

    /// The q, k, v and o projections.
    pub fn projections_mut(&mut self) -> [&mut Projection; 4] {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.o]
    }

    /// The q, k, v and o projections.
    pub fn projections(&self) -> [&Projection; 4] {
        [&self.q, &self.k, &self.v, &self.o]
    }

    /// Attends over normalized input `x` `[b, s, hidden]`, returning `[b, s, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        positions: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let HeadShape {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.shape;
        let mut q = split_heads(&self.q.forward(x)?, heads, head_dim)?;
        let mut k = split_heads(&self.k.forward(x)?, kv_heads, head_dim)?;
        let v = split_heads(&self.v.forward(x)?, kv_heads, head_dim)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let q = rope.apply(&q, positions)?;
        let k = repeat_kv(rope.apply(&k, positions)?, heads / kv_heads)?;
        let v = repeat_kv(v, heads / kv_heads)?;
        let a = attention(&q, &k, &v, self.scale, mask)?;
        self.o.forward(&merge_heads(&a)?)
    }

    /// Attends new tokens `x` `[1, n, hidden]` (normalized input) at `positions` `[1, n]`
    /// over the keys and values in `cache` plus their own, appending theirs to `cache`.
    /// `bias` is `[1, 1, n, cached + n]`, or `None` when every key is visible; `window` is
    /// the sliding window the bias encodes (`None` for full attention).
    pub fn forward_cached(
        &self,
        x: &Tensor,
        rope: &Rope,
        positions: &Tensor,
        bias: Option<&Tensor>,
        window: Option<usize>,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let HeadShape {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.shape;
        let [q, k, v] = forward_projections([&self.q, &self.k, &self.v], x)?;
        let mut q = split_heads(&q, heads, head_dim)?;
        let mut k = split_heads(&k, kv_heads, head_dim)?;
        let v = split_heads(&v, kv_heads, head_dim)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let q = rope.apply(&q, positions)?;
        let k = rope.apply(&k, positions)?;
        let (k, v) = if x.device().is_cpu() {
            let host = cache
                .host
                .get_or_insert_with(|| HostKv::new(kv_heads, head_dim));
            host.append(&k, &v)?;
            if self.llama_cpp && !q.track_op() {
                let n = q.dim(2)?;
                let q = q.transpose(1, 2)?.flatten_all()?.to_vec1::<f32>()?;
                let out = host.attend_llama_cpp(&q, n, self.scale as f32, window)?;
                let out = Tensor::from_vec(out, (1, n, heads * head_dim), x.device())?;
                return self.o.forward(&out);
            }
            if q.dim(2)? == 1 && !q.track_op() {
                // One new token: attention over the cache without candle ops (see
                // `HostKv::attend_one`).
                let out =
                    host.attend_one(&q.flatten_all()?.to_vec1::<f32>()?, self.scale, window)?;
                let out = Tensor::from_vec(out, (1, 1, heads * head_dim), x.device())?;
                return self.o.forward(&out);
            }
            host.tensors(x.device())?
        } else {
            let (k, v) = match cache.kv.take() {
                Some((ck, cv)) => (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?),
                None => (k.contiguous()?, v.contiguous()?),
            };
            // The cache outlives the step: keeping a LoRA graph alive in it would hold every
            // step's activations.
            cache.kv = Some((k.detach(), v.detach()));
            (k, v)
        };
        let k = repeat_kv(k, heads / kv_heads)?;
        let v = repeat_kv(v, heads / kv_heads)?;
        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        let scores = match bias {
            Some(b) => scores.broadcast_add(b)?,
            None => scores,
        };
        let probs = softmax_last_dim(&scores)?;
        self.o.forward(&merge_heads(&probs.matmul(&v)?)?)
    }
}

/// Keys (rotated) and values of one attention layer for the tokens seen so far: in host
/// memory on the CPU ([`HostKv`]), as tensors `[1, kv_heads, tokens, head_dim]` elsewhere.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
    host: Option<HostKv>,
}

/// A layer's keys and values on the CPU, token-major (`[tokens, kv_heads, head_dim]`), so
/// a step appends its rows in place instead of concatenating (copying) the whole cache
/// into new tensors, as `Tensor::cat` would at every token.
#[derive(Debug, Clone)]
pub struct HostKv {
    k: Vec<f32>,
    v: Vec<f32>,
    kv_heads: usize,
    head_dim: usize,
}

/// Below this many multiply-adds an attention step stays on one thread.
const PARALLEL_ATTENTION_WORK: usize = 1 << 16;

impl HostKv {
    fn new(kv_heads: usize, head_dim: usize) -> HostKv {
        HostKv {
            k: Vec::new(),
            v: Vec::new(),
            kv_heads,
            head_dim,
        }
    }

    /// Tokens held.
    fn len(&self) -> usize {
        self.k.len() / (self.kv_heads * self.head_dim)
    }

    /// Appends `k`, `v` (`[1, kv_heads, n, head_dim]`).
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        for (dst, t) in [(&mut self.k, k), (&mut self.v, v)] {
            let rows = t.transpose(1, 2)?.flatten_all()?.to_vec1::<f32>()?;
            dst.extend_from_slice(&rows);
        }
        Ok(())
    }

    /// Keys and values as tensors `[1, kv_heads, tokens, head_dim]` (a copy), for the
    /// multi-token path through candle's batched matmuls.
    fn tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let shape = (1, self.len(), self.kv_heads, self.head_dim);
        let t = |x: &[f32]| -> Result<Tensor> {
            Ok(Tensor::from_slice(x, shape, device)?
                .transpose(1, 2)?
                .contiguous()?)
        };
        Ok((t(&self.k)?, t(&self.v)?))
    }

    /// Attention of the newest `n` tokens (the last ones appended) as llama.cpp computes it
    /// (see [`llama_cpp_attention`]); `q` is `[n, heads, head_dim]` (rotated), the result
    /// `[n, heads · head_dim]`.
    fn attend_llama_cpp(
        &self,
        q: &[f32],
        n: usize,
        scale: f32,
        window: Option<usize>,
    ) -> Result<Vec<f32>> {
        let (kvh, hd) = (self.kv_heads, self.head_dim);
        let t = self.len();
        if n == 0
            || n > t
            || !q.len().is_multiple_of(n * hd)
            || !(q.len() / (n * hd)).is_multiple_of(kvh)
        {
            return Err(MlError::Mismatch(format!(
                "attention step: {} query values for {n} tokens of {kvh} key/value heads of width {hd} over {t} tokens",
                q.len()
            )));
        }
        Ok(llama_cpp_attention::attend(
            q, &self.k, &self.v, n, t, kvh, hd, scale, window,
        ))
    }

    /// Attention of the newest token (the last one appended): `q` holds its query heads
    /// (`[heads, head_dim]`, rotated); each head attends the keys of its group
    /// (`head / (heads / kv_heads)`, as [`repeat_kv`] pairs them) that a query at the last
    /// position sees (all of them, or the last `window`). Softmax as candle's kernel
    /// computes it: max, `exp(s - max)`, divided by the sum. Returns `[heads, head_dim]`.
    fn attend_one(&self, q: &[f32], scale: f64, window: Option<usize>) -> Result<Vec<f32>> {
        let (kvh, hd) = (self.kv_heads, self.head_dim);
        let heads = q.len() / hd;
        let t = self.len();
        if heads == 0 || !heads.is_multiple_of(kvh) || q.len() != heads * hd || t == 0 {
            return Err(MlError::Mismatch(format!(
                "attention step: {} query values for {kvh} key/value heads of width {hd} over {t} tokens",
                q.len()
            )));
        }
        let first = window.map_or(0, |w| t.saturating_sub(w));
        let rep = heads / kvh;
        let scale = scale as f32;
        let mut out = vec![0f32; heads * hd];
        let head = |h: usize, o: &mut [f32]| {
            let keys = HeadKeys {
                k: &self.k,
                v: &self.v,
                stride: kvh * hd,
                offset: h / rep * hd,
                hd,
                span: first..t,
            };
            let qh = &q[h * hd..(h + 1) * hd];
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the features were just detected.
                unsafe { attend_head_avx2(qh, scale, &keys, o) };
                return;
            }
            attend_head::<PortableDot>(qh, scale, &keys, o);
        };
        if 2 * heads * (t - first) * hd >= PARALLEL_ATTENTION_WORK {
            use rayon::prelude::*;
            out.par_chunks_mut(hd)
                .enumerate()
                .for_each(|(h, o)| head(h, o));
        } else {
            out.chunks_mut(hd).enumerate().for_each(|(h, o)| head(h, o));
        }
        Ok(out)
    }
}

/// llama.cpp's attention on the CPU, value for value (observed on its own tensors, F32
/// KV cache, no flash attention, x86 build with AVX-512; `scripts/diag/`):
///
/// * a score is ggml's f32 dot product of the query and key rows: 4 accumulators of 16
///   lanes over blocks of 64 values (fused multiply-adds), folded `a0+a2`, `a1+a3`, then
///   together, then [`reduce16`];
/// * the softmax subtracts the row maximum, exponentiates with ggml's vectorized `expf`
///   ([`ggml_expf`], not the C library's), sums each run of 16 keys in f32 ([`reduce16`])
///   and the runs in f64, and multiplies by `(1/sum) as f32`;
/// * the output is, per value channel, the dot product of the probabilities with the
///   values over the keys: for one query row ggml's dot product as above, for several
///   (a prompt) its tiled f32 GEMM, one accumulator of 16 lanes (key `j` in lane `j % 16`),
///   then [`reduce16`].
///
/// Keys a query does not see count as zero probability in their lane, as llama.cpp's
/// masked (`-inf`) scores do; its padded cache rows beyond the last token add zeros.
/// Scores are `(q·k)·scale`; llama.cpp scales Gemma's queries before the product
/// instead, the same numbers for its power-of-two scales.
mod llama_cpp_attention {
    /// Keys are padded to this multiple in llama.cpp's cache (zeros past the end).
    const PAD: usize = 64;

    /// ggml's `_mm512_reduce_add_ps` order of 16 lanes (the compiler's expansion): halves
    /// of 8, then of 4, then `(r0 + r2) + (r1 + r3)`.
    #[inline(always)]
    pub(super) fn reduce16(x: &[f32; 16]) -> f32 {
        let mut t8 = [0f32; 8];
        for i in 0..8 {
            t8[i] = x[i + 8] + x[i];
        }
        let mut t4 = [0f32; 4];
        for i in 0..4 {
            t4[i] = t8[i + 4] + t8[i];
        }
        (t4[0] + t4[2]) + (t4[1] + t4[3])
    }

    /// ggml's f32 dot product of two rows (see the module docs); rows shorter than a
    /// block of 64 count as zero-padded.
    #[inline(always)]
    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [[0f32; 16]; 4];
        let (mut ca, mut cb) = (a.chunks_exact(64), b.chunks_exact(64));
        for (xa, xb) in (&mut ca).zip(&mut cb) {
            for r in 0..4 {
                for l in 0..16 {
                    acc[r][l] = xa[16 * r + l].mul_add(xb[16 * r + l], acc[r][l]);
                }
            }
        }
        for (i, (&x, &y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
            let (r, l) = (i / 16, i % 16);
            acc[r][l] = x.mul_add(y, acc[r][l]);
        }
        // ggml folds its accumulators in halves: a0 + a2, a1 + a3, then the two.
        let [a0, a1, a2, a3] = acc;
        let mut folded = [0f32; 16];
        for (l, f) in folded.iter_mut().enumerate() {
            *f = (a0[l] + a2[l]) + (a1[l] + a3[l]);
        }
        reduce16(&folded)
    }

    /// [`dot`] in AVX2 registers: each of the 4 × 16 lanes takes the same fused
    /// multiply-adds, and the folds the same additions (lane-wise, then halves), so the
    /// result is the same number. The plain-array form compiled to 4-lane code shuffling
    /// its accumulators through the stack (most of a Gemma prompt's attention time).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = a.len().min(b.len());
        if !n.is_multiple_of(64) {
            return dot(a, b);
        }
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // acc[2r] holds lanes 0..8 of accumulator r, acc[2r + 1] lanes 8..16.
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..n).step_by(64) {
            for (h, s) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(c + 8 * h));
                let y = _mm256_loadu_ps(pb.add(c + 8 * h));
                *s = _mm256_fmadd_ps(x, y, *s);
            }
        }
        // (a0 + a2) + (a1 + a3), per half of 8 lanes.
        let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
        // `reduce16`: x[i + 8] + x[i], then t8[i + 4] + t8[i], then (r0 + r2) + (r1 + r3).
        let t8 = _mm256_add_ps(hi, lo);
        let t4 = _mm_add_ps(_mm256_extractf128_ps(t8, 1), _mm256_castps256_ps128(t8));
        let r = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
        _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)))
    }

    /// ggml's vectorized `expf` (AVX-512 build): `x = n·ln2 + b` with `n` rounded to an
    /// integer through `x·log2(e) + 1.5·2²³` and `ln2` split in two for the reduction, a
    /// degree-5 polynomial of `b` in the same fused steps, scaled by `2ⁿ` with one
    /// rounding; `|n| > 192` gives 0 or infinity. Within ~1.5 ulp of `exp`, and not the
    /// C library's result, so it is reproduced rather than approximated.
    pub(super) fn ggml_expf(x: f32) -> f32 {
        let shift = f32::from_bits(0x4B40_0000); // 1.5·2²³
        let z = x.mul_add(f32::from_bits(0x3FB8_AA3B), shift); // log2(e)
        let n = z - shift;
        let b = (-n).mul_add(f32::from_bits(0x3F31_7200), x); // ln2, high part
        let b = (-n).mul_add(f32::from_bits(0x35BF_BE8E), b); // ln2, low part
        let u = b * b;
        let p = f32::from_bits(0x3C07_2010).mul_add(b, f32::from_bits(0x3D2B_9F17));
        let q = f32::from_bits(0x3E2A_AF33).mul_add(b, f32::from_bits(0x3EFF_FEDB));
        let r = f32::from_bits(0x3F7F_FFF6).mul_add(b, 1.0);
        let j = p.mul_add(u, q).mul_add(u, r);
        if n.is_nan() || n.abs() > 192.0 {
            return if n <= 0.0 || n.is_nan() {
                0.0
            } else {
                f32::INFINITY
            };
        }
        // j·2ⁿ is exact in f64; one rounding to f32, as `scalef` does. 2ⁿ (|n| ≤ 192, a
        // normal f64) is built from its exponent bits: `powi` went through a runtime loop
        // that cost 7 % of a SmolLM2 decode step.
        let two_n = f64::from_bits(((n as i64 + 1023) as u64) << 52);
        (j as f64 * two_n) as f32
    }

    /// What one (query row, head) task of [`attend`] reads.
    pub(super) struct HeadJob<'a> {
        q: &'a [f32],
        k: &'a [f32],
        v: &'a [f32],
        n: usize,
        t: usize,
        heads: usize,
        rep: usize,
        stride: usize,
        hd: usize,
        padded: usize,
        scale: f32,
        window: Option<usize>,
    }

    /// [`dot`] for any target.
    struct GgmlDot;

    impl super::Dot for GgmlDot {
        #[inline(always)]
        fn dot(a: &[f32], b: &[f32]) -> f32 {
            dot(a, b)
        }
    }

    /// [`dot_avx2`]; only for [`head_fma`], which runs after the features were detected.
    #[cfg(target_arch = "x86_64")]
    struct GgmlDotAvx2;

    #[cfg(target_arch = "x86_64")]
    impl super::Dot for GgmlDotAvx2 {
        #[inline(always)]
        fn dot(a: &[f32], b: &[f32]) -> f32 {
            // SAFETY: only `head_fma` uses this type, after detecting the features.
            unsafe { dot_avx2(a, b) }
        }
    }

    /// The output of query row `ih / heads`, head `ih % heads` into `o` (`hd` values).
    #[inline(always)]
    fn head<D: super::Dot>(job: &HeadJob, ih: usize, o: &mut [f32]) {
        let HeadJob {
            q,
            k,
            v,
            n,
            t,
            heads,
            rep,
            stride,
            hd,
            padded,
            scale,
            window,
        } = *job;

        let (i, h) = (ih / heads, ih % heads);
        let g = h / rep;
        let pos = t - n + i;
        let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let qh = &q[ih * hd..(ih + 1) * hd];
        let mut p = vec![0f32; padded];
        let mut max = f32::NEG_INFINITY;
        for j in first..=pos {
            let s = D::dot(qh, &k[j * stride + g * hd..j * stride + (g + 1) * hd]) * scale;
            p[j] = s;
            max = max.max(s);
        }
        let mut sum = 0f64;
        for (c, run) in p.chunks_mut(16).enumerate() {
            let mut vals = [0f32; 16];
            for (l, x) in run.iter_mut().enumerate() {
                let j = c * 16 + l;
                *x = if j >= first && j <= pos {
                    ggml_expf(*x - max)
                } else {
                    0.0
                };
                vals[l] = *x;
            }
            sum += reduce16(&vals) as f64;
        }
        let inv = (1.0 / sum) as f32;
        p.iter_mut().for_each(|x| *x *= inv);
        // The output channels are summed over the keys in ggml's lanes, key `j` in lane
        // `j % 64` (one query row: its dot product's 4 accumulators of 16) or `j % 16` (a
        // prompt: its GEMM's one accumulator), every channel at once. Keys outside the
        // window would only add exact zeros.
        let lanes = if n == 1 { 64 } else { 16 };
        let mut acc = vec![0f32; lanes * hd];
        for (j, &pj) in p.iter().enumerate().take(pos + 1).skip(first) {
            let slot = j % lanes;
            let vr = &v[j * stride + g * hd..j * stride + (g + 1) * hd];
            for (a, &y) in acc[slot * hd..(slot + 1) * hd].iter_mut().zip(vr) {
                *a = pj.mul_add(y, *a);
            }
        }
        for (d, od) in o.iter_mut().enumerate() {
            let lane = |l: usize| acc[l * hd + d];
            let mut folded = [0f32; 16];
            for (l, f) in folded.iter_mut().enumerate() {
                *f = if n == 1 {
                    (lane(l) + lane(32 + l)) + (lane(16 + l) + lane(48 + l))
                } else {
                    lane(l)
                };
            }
            *od = reduce16(&folded);
        }
    }

    /// [`head`] compiled with FMA (the crate's baseline has none, and `mul_add` would be a
    /// libm call per product); the same numbers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn head_fma(job: &HeadJob, ih: usize, o: &mut [f32]) {
        head::<GgmlDotAvx2>(job, ih, o)
    }

    /// Attention of `n` query rows (`q`: `[n, heads, hd]`, the last `n` of `t` cached
    /// tokens) over the cache (`k`, `v`: `[t, kv_heads, hd]`); `[n, heads·hd]`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn attend(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
        t: usize,
        kv_heads: usize,
        hd: usize,
        scale: f32,
        window: Option<usize>,
    ) -> Vec<f32> {
        use rayon::prelude::*;
        let heads = q.len() / (n * hd);
        let rep = heads / kv_heads;
        let stride = kv_heads * hd;
        let padded = t.div_ceil(PAD) * PAD;
        #[cfg(target_arch = "x86_64")]
        let fma = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let fma = false;
        let job = HeadJob {
            q,
            k,
            v,
            n,
            t,
            heads,
            rep,
            stride,
            hd,
            padded,
            scale,
            window,
        };
        let one = |ih: usize, o: &mut [f32]| {
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: the features were detected above.
                unsafe { head_fma(&job, ih, o) };
                return;
            }
            head::<GgmlDot>(&job, ih, o);
        };
        let mut out = vec![0f32; n * heads * hd];
        if 2 * n * heads * padded * hd >= super::PARALLEL_ATTENTION_WORK {
            out.par_chunks_mut(hd)
                .enumerate()
                .for_each(|(ih, o)| one(ih, o));
        } else {
            out.chunks_mut(hd)
                .enumerate()
                .for_each(|(ih, o)| one(ih, o));
        }
        out
    }
}

/// The keys and values one query head attends: token `j`'s row starts at
/// `j · stride + offset` in `k` and `v`.
struct HeadKeys<'a> {
    k: &'a [f32],
    v: &'a [f32],
    stride: usize,
    offset: usize,
    hd: usize,
    span: std::ops::Range<usize>,
}

/// [`attend_head`] compiled for AVX2 (the crate's baseline is SSE2), with an FMA dot
/// product in two register accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_head_avx2(q: &[f32], scale: f32, keys: &HeadKeys, out: &mut [f32]) {
    attend_head::<Avx2Dot>(q, scale, keys, out)
}

/// A dot product for [`attend_head`].
trait Dot {
    fn dot(a: &[f32], b: &[f32]) -> f32;
}

/// [`dot`], for any target.
struct PortableDot;

impl Dot for PortableDot {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot(a, b)
    }
}

/// [`dot_avx2`]; only for code that has checked the features ([`attend_head_avx2`]).
#[cfg(target_arch = "x86_64")]
struct Avx2Dot;

#[cfg(target_arch = "x86_64")]
impl Dot for Avx2Dot {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: only `attend_head_avx2` uses this type, after detecting the features.
        unsafe { dot_avx2(a, b) }
    }
}

/// `Σ aᵢ·bᵢ` in two 8-lane FMA accumulators (a plain array of partial sums stayed on the
/// stack, one store-to-load round trip per 8 products).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
        s1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            s1,
        );
        i += 16;
    }
    if i + 8 <= n {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
        i += 8;
    }
    let s = _mm256_add_ps(s0, s1);
    let r = _mm_add_ps(_mm256_extractf128_ps(s, 1), _mm256_castps256_ps128(s));
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    let mut sum = _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)));
    while i < n {
        sum += a[i] * b[i];
        i += 1;
    }
    sum
}

/// One head's `softmax(q·kⱼ · scale) · vⱼ` over `keys.span`, added into `out`. Plain
/// loops: an iterator adapter's `fold` would stay an outlined function compiled for the
/// baseline instead of being inlined into [`attend_head_avx2`]. (Attending a key/value
/// group's query heads together, loading each row once for all of them, measured no
/// faster: the rows come from memory either way, and fewer tasks balance worse.)
#[inline(always)]
fn attend_head<D: Dot>(q: &[f32], scale: f32, keys: &HeadKeys, out: &mut [f32]) {
    let hd = keys.hd;
    let mut scores = Vec::with_capacity(keys.span.len());
    let mut max = f32::NEG_INFINITY;
    for j in keys.span.clone() {
        let start = j * keys.stride + keys.offset;
        let s = D::dot(q, &keys.k[start..start + hd]) * scale;
        max = max.max(s);
        scores.push(s);
    }
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for (s, j) in scores.iter().zip(keys.span.clone()) {
        let p = s / sum;
        let start = j * keys.stride + keys.offset;
        for (o, &v) in out.iter_mut().zip(&keys.v[start..start + hd]) {
            *o += p * v;
        }
    }
}

/// `Σ aᵢ·bᵢ` over 8 interleaved partial sums (so the compiler vectorizes it), added in a
/// fixed order.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + tail
}

/// The KV cache of a whole decoder for one sequence: one [`LayerCache`] per block and the
/// number of tokens already processed (the position of the next token).
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model of `layers` blocks.
    pub fn new(layers: usize) -> KvCache {
        KvCache {
            layers: vec![LayerCache::default(); layers],
            len: 0,
        }
    }

    /// Tokens held (the position the next token gets).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token has been processed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every token (a new conversation).
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            *l = LayerCache::default();
        }
        self.len = 0;
    }

    /// The per-layer caches, after checking that the cache was made for `layers` blocks.
    pub fn layers_mut(&mut self, layers: usize) -> Result<&mut [LayerCache]> {
        if self.layers.len() != layers {
            return Err(MlError::Mismatch(format!(
                "the KV cache has {} layers but the model {layers}; make the cache with the model's new_cache()",
                self.layers.len()
            )));
        }
        Ok(&mut self.layers)
    }

    /// Records that `n` more tokens went through every layer.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

/// Runs `f` on a thread of rayon's pool (directly when already on one). A decoding step
/// runs ~200 parallel products; started from an outside thread, each would be handed to the
/// pool while the caller blocks (a sleep and a wake-up per product). From a worker, the
/// products split their work with the other workers by work stealing.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Inputs of one incremental step over `ids` after `offset` cached tokens: the ids as a
/// `[1, n]` tensor, positions `offset..offset + n` as `[1, n]`, and the additive bias
/// `[1, 1, n, offset + n]` (causal, and with a sliding window when `window` is given);
/// the bias is `None` when every cached key is visible (a single new token, no window cut),
/// which saves building and adding it on every decoded token.
pub fn step_inputs(
    ids: &[u32],
    offset: usize,
    context: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<(Tensor, Tensor, StepBias)> {
    let n = ids.len();
    if n == 0 {
        return Err(MlError::Mismatch(
            "a decoding step needs at least one token".into(),
        ));
    }
    if offset + n > context {
        return Err(MlError::Mismatch(format!(
            "{} tokens ({offset} cached + {n} new) exceed the model's context length of {context} tokens; shorten the prompt or lower max tokens",
            offset + n
        )));
    }
    let ids_t = Tensor::from_slice(ids, (1, n), device)?;
    let pos: Vec<u32> = (offset..offset + n).map(|p| p as u32).collect();
    let positions = Tensor::from_vec(pos, (1, n), device)?;
    let total = offset + n;
    let build = |w: Option<usize>| -> Result<Option<Tensor>> {
        let all_visible = n == 1 && w.is_none_or(|w| total <= w);
        if all_visible {
            return Ok(None);
        }
        let mut bias = Vec::with_capacity(n * total);
        for i in offset..total {
            for j in 0..total {
                let ok = j <= i && w.is_none_or(|w| i - j < w);
                bias.push(if ok { 0.0f32 } else { MASKED });
            }
        }
        Ok(Some(Tensor::from_vec(bias, (1, 1, n, total), device)?))
    };
    let full = build(None)?;
    let sliding = match window {
        Some(w) => build(Some(w))?,
        None => None,
    };
    Ok((ids_t, positions, StepBias { full, sliding }))
}

/// Additive attention biases of one incremental step (see [`step_inputs`]); `None` means
/// no masking is needed.
#[derive(Debug, Clone)]
pub struct StepBias {
    /// Causal bias for full-attention layers.
    pub full: Option<Tensor>,
    /// Causal + sliding-window bias for sliding layers.
    pub sliding: Option<Tensor>,
}

/// Activation of a gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateActivation {
    /// SiLU (SwiGLU: Llama, Qwen).
    Silu,
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
}

/// `down(act(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct GatedMlp {
    gate: Projection,
    up: Projection,
    down: Projection,
    act: GateActivation,
    /// The activation as llama.cpp's CPU backend computes it, for quantized weights
    /// (computed the way llama.cpp does): GELU through its half-precision table
    /// ([`gelu_tanh_f16`]), SiLU with its vectorized `expf` ([`silu_llama_cpp`]).
    llama_cpp_act: bool,
}

impl GatedMlp {
    /// Loads `{prefix}.ffn_{gate,up,down}` for width `hidden` and inner width `ffn`.
    pub fn load(
        g: &GgufFile,
        prefix: &str,
        hidden: usize,
        ffn: usize,
        act: GateActivation,
        mode: WeightMode,
        device: &Device,
    ) -> Result<Self> {
        let lin = |n: &str, out_in| {
            Projection::load(g, &format!("{prefix}.{n}"), out_in, false, mode, device)
        };
        let gate = lin("ffn_gate", [ffn, hidden])?;
        // Float files keep dense weights in quantized mode and their f32 numbers.
        let llama_cpp_act = matches!(
            gate.base(),
            DecoderLinear::Quantized {
                weight: QMatMul::QTensor(_),
                ..
            }
        );
        Ok(GatedMlp {
            gate,
            up: lin("ffn_up", [ffn, hidden])?,
            down: lin("ffn_down", [hidden, ffn])?,
            act,
            llama_cpp_act,
        })
    }

    /// The gate, up and down projections.
    pub fn projections_mut(&mut self) -> [&mut Projection; 3] {
        [&mut self.gate, &mut self.up, &mut self.down]
    }

    /// The gate, up and down projections.
    pub fn projections(&self) -> [&Projection; 3] {
        [&self.gate, &self.up, &self.down]
    }

    /// Applies the MLP to `[.., hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [g, up] = forward_projections([&self.gate, &self.up], x)?;
        // The llama.cpp forms have no backward: a graph (LoRA training) takes candle's
        // ops, as do GPUs (llama.cpp's CUDA backend computes in f32 too).
        let llama_cpp = self.llama_cpp_act && !g.track_op() && g.device().is_cpu();
        let g = match self.act {
            GateActivation::Silu if llama_cpp => silu_llama_cpp(&g)?,
            GateActivation::Silu => candle_nn::ops::silu(&g)?,
            GateActivation::GeluTanh if llama_cpp => gelu_tanh_f16(&g)?,
            GateActivation::GeluTanh => g.gelu()?,
        };
        self.down.forward(&(g * up)?)
    }
}

/// GELU (tanh approximation) as llama.cpp's CPU backend computes it: the input rounded to
/// f16 indexes a table of f16 results computed in f32 (inputs beyond ±10 give 0 or
/// themselves). The result differs from the f32 formula by up to ~5e-4 relative; on Gemma
/// 3's MLP inputs (23 473 distinct f16 inputs over 18 layers) it reproduces llama.cpp's
/// output bit for bit where the f32 formula is up to 4e-4 away, enough to tip near-tied
/// argmaxes downstream.
pub fn gelu_tanh_f16(x: &Tensor) -> Result<Tensor> {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| {
                let v = half::f16::from_bits(bits).to_f32();
                // llama.cpp's build fuses `1 + a·x·x` into one multiply-add
                // (`fma(a·x, x, 1)`); without the fusion 18 of 698 368 GELU outputs of a
                // Gemma 3 prompt came out one f16 step away. tanh is correctly rounded to
                // f32 (through f64): the same table as glibc's `tanhf` over every f16
                // input, and independent of the platform's libm.
                let t = (0.797_884_6 * v * (0.044715 * v).mul_add(v, 1.0)) as f64;
                let g = 0.5 * v * (1.0 + t.tanh() as f32);
                half::f16::from_f32(g).to_f32()
            })
            .collect()
    });
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let ys: Vec<f32> = xs
        .iter()
        .map(|&v| {
            if v <= -10.0 {
                0.0
            } else if v >= 10.0 {
                v
            } else {
                table[half::f16::from_f32(v).to_bits() as usize]
            }
        })
        .collect();
    Ok(Tensor::from_vec(ys, x.shape(), x.device())?)
}

/// SiLU (`x / (1 + e⁻ˣ)`) as llama.cpp's CPU backend computes it in its fused SwiGLU:
/// runs of 16 values of a row with its vectorized `expf` ([`llama_cpp_attention`]'s
/// `ggml_expf`), the rest of the row with the C library's. On the CPU, for f32 `x`
/// `[.., width]`.
pub fn silu_llama_cpp(x: &Tensor) -> Result<Tensor> {
    #[inline(always)]
    fn rows(v: &mut [f32], width: usize) {
        for row in v.chunks_mut(width) {
            let simd = width - width % 16;
            for (i, a) in row.iter_mut().enumerate() {
                let e = if i < simd {
                    llama_cpp_attention::ggml_expf(-*a)
                } else {
                    (-*a).exp()
                };
                *a /= 1.0 + e;
            }
        }
    }
    /// [`rows`] with FMA (`ggml_expf`'s multiply-adds are libm calls without it).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_fma(v: &mut [f32], width: usize) {
        rows(v, width)
    }
    let width = x.dim(D::Minus1)?;
    let mut v = x.flatten_all()?.to_vec1::<f32>()?;
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        unsafe { rows_fma(&mut v, width) };
        return Ok(Tensor::from_vec(v, x.shape(), x.device())?);
    }
    rows(&mut v, width);
    Ok(Tensor::from_vec(v, x.shape(), x.device())?)
}

/// Every block's projections in module order (attention q, k, v, o, then MLP), for models
/// whose blocks are a [`SelfAttention`] and a [`GatedMlp`].
pub fn block_projections<'a>(
    blocks: impl Iterator<Item = (&'a SelfAttention, &'a GatedMlp)>,
) -> Vec<&'a Projection> {
    blocks
        .flat_map(|(attn, mlp)| attn.projections().into_iter().chain(mlp.projections()))
        .collect()
}

/// [`block_projections`], mutable.
pub fn block_projections_mut<'a>(
    blocks: impl Iterator<Item = (&'a mut SelfAttention, &'a mut GatedMlp)>,
) -> Vec<&'a mut Projection> {
    blocks
        .flat_map(|(attn, mlp)| {
            attn.projections_mut()
                .into_iter()
                .chain(mlp.projections_mut())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::llama_cpp_attention::{attend, ggml_expf};
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104729) % 1999) as f32 / 999.5 - 1.0)
            .collect()
    }

    #[test]
    fn powers_of_two_from_exponent_bits_equal_powi() {
        for n in -192i64..=192 {
            let bits = f64::from_bits(((n + 1023) as u64) << 52);
            assert_eq!(bits, 2f64.powi(n as i32), "2^{n}");
        }
    }

    #[test]
    fn ggml_expf_is_within_two_ulps_of_exp_and_flushes_like_ggml() {
        for i in 0..20_000 {
            let x = -100.0 + i as f32 * 0.0051;
            let (got, want) = (ggml_expf(x), (x as f64).exp() as f32);
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulps <= 2, "exp({x}): {got} vs {want}");
        }
        assert_eq!(ggml_expf(0.0), 1.0);
        assert_eq!(ggml_expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(ggml_expf(-200.0), 0.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn ggml_attention_dot_in_registers_is_the_plain_one_bit_for_bit() {
        use super::llama_cpp_attention::{dot, dot_avx2};
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            eprintln!("skipped: no AVX2/FMA on this CPU");
            return;
        }
        // Head sizes of 64, 128 and 256 take the register form; 80 falls back to `dot`.
        for (n, seed) in [(64, 5), (128, 6), (256, 7), (256, 8), (80, 9)] {
            let (a, b) = (values(n, seed), values(n, seed + 100));
            // Scaled so that the sums round differently in another order.
            let a: Vec<f32> = a
                .iter()
                .enumerate()
                .map(|(i, x)| x * (1.0 + i as f32 * 0.37))
                .collect();
            // SAFETY: the features were detected above.
            let got = unsafe { dot_avx2(&a, &b) };
            assert_eq!(got.to_bits(), dot(&a, &b).to_bits(), "n {n}");
        }
    }

    #[test]
    fn llama_cpp_attention_is_causal_windowed_softmax_attention() {
        let (heads, kvh, hd, t, n) = (4, 2, 64, 7, 3);
        let q = values(n * heads * hd, 1);
        let k = values(t * kvh * hd, 2);
        let v = values(t * kvh * hd, 3);
        let scale = 0.125f32;
        for window in [None, Some(3)] {
            let ours = attend(&q, &k, &v, n, t, kvh, hd, scale, window);
            for i in 0..n {
                let pos = t - n + i;
                let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                for h in 0..heads {
                    let g = h / (heads / kvh);
                    let row = |x: &[f32], j: usize| {
                        x[(j * kvh + g) * hd..(j * kvh + g + 1) * hd].to_vec()
                    };
                    let qh = &q[(i * heads + h) * hd..(i * heads + h + 1) * hd];
                    let s: Vec<f64> = (first..=pos)
                        .map(|j| {
                            let kj = row(&k, j);
                            qh.iter().zip(&kj).map(|(a, b)| (a * b) as f64).sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
                    for d in 0..hd {
                        let want: f64 = (first..=pos)
                            .zip(&s)
                            .map(|(j, sj)| (sj - max).exp() / z * row(&v, j)[d] as f64)
                            .sum();
                        let got = ours[(i * heads + h) * hd + d] as f64;
                        assert!((got - want).abs() < 1e-5, "{window:?} [{i}, {h}, {d}]");
                    }
                }
            }
        }
    }

    #[test]
    fn llama_cpp_rope_and_silu_agree_with_the_f32_forms_to_rounding() {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(values(2 * 3 * 5 * 64, 4), (2, 3, 5, 64), &dev).unwrap();
        let pos = Tensor::from_vec((0..10u32).map(|p| p * 3).collect(), (2, 5), &dev).unwrap();
        for interleaved in [false, true] {
            let rope = Rope::new(10_000.0, 64, None, 1.0, interleaved).unwrap();
            let plain = rope.apply(&x, &pos).unwrap();
            let ggml = rope.llama_cpp().apply(&x, &pos).unwrap();
            let diff = (plain - ggml).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "{interleaved}");
        }
        let g = Tensor::from_vec(values(3 * 40, 5), (3, 40), &dev).unwrap();
        let g = (g * 8.0).unwrap();
        let diff = (candle_nn::ops::silu(&g).unwrap() - silu_llama_cpp(&g).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
