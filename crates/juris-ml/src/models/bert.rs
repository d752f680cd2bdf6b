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

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::encoder::{Encoder, EncoderOptions, TextRole};
use crate::error::{MlError, Result};
use crate::lora::{LoraAdapter, LoraTrain};
use crate::models::attention_cpu;
use crate::models::gemm_cpu::{self, PackedMatrix};
use crate::nn::{
    device_for, fast_exp, gelu_erf, has_avx2_fma, lanes_reduce, with_f32, Activation, Embedding,
    LayerNorm, Linear, Weights,
};
use crate::tokenize::{HfTokenizer, TextTokenizer};
use crate::{grad_checkpoint, train_ops};

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
    /// The CPU path's copies: q, k, v fused in one matrix (one gemm instead of three) and
    /// every bias and norm as plain slices for the fused kernels.
    fast: Option<FastLayer>,
}

impl Layer {
    /// The linear layers with their paths inside `encoder.layer.{i}`.
    fn named(&self) -> [(&'static str, &Linear); 6] {
        [
            ("attention.self.query", &self.q),
            ("attention.self.key", &self.k),
            ("attention.self.value", &self.v),
            ("attention.output.dense", &self.attn_out),
            ("intermediate.dense", &self.ff_in),
            ("output.dense", &self.ff_out),
        ]
    }

    fn named_mut(&mut self) -> [(&'static str, &mut Linear); 6] {
        [
            ("attention.self.query", &mut self.q),
            ("attention.self.key", &mut self.k),
            ("attention.self.value", &mut self.v),
            ("attention.output.dense", &mut self.attn_out),
            ("intermediate.dense", &mut self.ff_in),
            ("output.dense", &mut self.ff_out),
        ]
    }
}

/// A layer's weights as the fused CPU kernels read them.
struct FastLayer {
    /// The four matrices, for whichever matmul this CPU runs.
    mats: FastMatmuls,
    qkv_b: Vec<f32>,
    ao_b: Vec<f32>,
    attn_ln: (Vec<f32>, Vec<f32>),
    fi_b: Vec<f32>,
    fo_b: Vec<f32>,
    out_ln: (Vec<f32>, Vec<f32>),
    eps: f32,
}

/// The CPU path's matrices: packed once for our AVX-512 matmul ([`gemm_cpu`]), or candle
/// views for its gemm on other CPUs.
enum FastMatmuls {
    /// `[h, 3h]`-shaped view (`W_qkv^T`) of the stacked q, k, v weights, and the transposed
    /// views of the other three.
    Candle {
        qkv_t: Tensor,
        ao_t: Tensor,
        fi_t: Tensor,
        fo_t: Tensor,
    },
    /// q|k|v stacked, attention output, feed-forward in and out, in [`gemm_cpu`]'s panels.
    Packed {
        qkv: PackedMatrix,
        ao: PackedMatrix,
        fi: PackedMatrix,
        fo: PackedMatrix,
    },
}

impl FastLayer {
    fn new(l: &Layer) -> Result<Self> {
        let vec = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_vec1::<f32>()?) };
        let bias = |lin: &Linear| -> Result<Vec<f32>> {
            match &lin.bias {
                Some(b) => vec(b),
                None => Ok(vec![0.0; lin.weight.dim(0)?]),
            }
        };
        let mut qkv_b = bias(&l.q)?;
        qkv_b.extend(bias(&l.k)?);
        qkv_b.extend(bias(&l.v)?);
        let qkv = Tensor::cat(&[&l.q.weight, &l.k.weight, &l.v.weight], 0)?;
        let mats = if gemm_cpu::supported() {
            let pack = |w: &Tensor| -> Result<PackedMatrix> {
                let (n, k) = w.dims2()?;
                let v = w.flatten_all()?.to_vec1::<f32>()?;
                Ok(PackedMatrix::from_out_in(&v, n, k))
            };
            FastMatmuls::Packed {
                qkv: pack(&qkv)?,
                ao: pack(&l.attn_out.weight)?,
                fi: pack(&l.ff_in.weight)?,
                fo: pack(&l.ff_out.weight)?,
            }
        } else {
            FastMatmuls::Candle {
                qkv_t: qkv.t()?,
                ao_t: l.attn_out.weight.t()?,
                fi_t: l.ff_in.weight.t()?,
                fo_t: l.ff_out.weight.t()?,
            }
        };
        Ok(FastLayer {
            mats,
            qkv_b,
            ao_b: bias(&l.attn_out)?,
            attn_ln: (vec(&l.attn_ln.weight)?, vec(&l.attn_ln.bias)?),
            fi_b: bias(&l.ff_in)?,
            fo_b: bias(&l.ff_out)?,
            out_ln: (vec(&l.out_ln.weight)?, vec(&l.out_ln.bias)?),
            eps: l.out_ln.eps,
        })
    }
}

/// Tokens (padding included) per forward pass of the CPU path: a batch is cut into groups of
/// whole texts up to this size. Keeps every activation below glibc's 32 MB mmap ceiling so
/// buffers are reused from the heap instead of being mapped, zero-faulted and unmapped per
/// op (page faults were ~12% of the time at batch 32 × 256 tokens), and lets each group pad
/// only to its own longest text.
const CPU_TOKENS_PER_PASS: usize = 2048;

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
                fast: None,
            });
        }
        // The fused CPU kernels are f32; other dtypes (f64 in gradient tests) take the
        // reference path.
        if w.device().is_cpu() && token_type.dtype() == DType::F32 {
            for layer in &mut layers {
                layer.fast = Some(FastLayer::new(layer)?);
            }
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

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The type of the weights and of the activations computed from them.
    pub fn dtype(&self) -> DType {
        self.token_type.dtype()
    }

    /// The model with its float weights in `dtype` (mixed-precision training keeps a bf16
    /// copy of the frozen base): matrices, biases, norms and a dense embedding table are
    /// converted; a 4-bit table stays 4-bit (its looked-up rows are converted in the
    /// forward). The fused CPU path exists for f32 weights on the CPU only, as at load.
    pub fn to_dtype(&self, dtype: DType) -> Result<BertModel> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let mut layer = Layer {
                q: l.q.to_dtype(dtype)?,
                k: l.k.to_dtype(dtype)?,
                v: l.v.to_dtype(dtype)?,
                attn_out: l.attn_out.to_dtype(dtype)?,
                attn_ln: l.attn_ln.to_dtype(dtype)?,
                ff_in: l.ff_in.to_dtype(dtype)?,
                ff_out: l.ff_out.to_dtype(dtype)?,
                out_ln: l.out_ln.to_dtype(dtype)?,
                fast: None,
            };
            if self.device.is_cpu() && dtype == DType::F32 {
                layer.fast = Some(FastLayer::new(&layer)?);
            }
            layers.push(layer);
        }
        Ok(BertModel {
            word: self.word.to_dtype(dtype)?,
            position: self.position.to_dtype(dtype)?,
            token_type: self.token_type.to_dtype(dtype)?,
            emb_ln: self.emb_ln.to_dtype(dtype)?,
            layers,
            act: self.act,
            heads: self.heads,
            first_position: self.first_position,
            config: self.config.clone(),
            device: self.device.clone(),
        })
    }

    /// Every linear layer with its module path as the HF base model names it
    /// (`encoder.layer.{i}.attention.self.query`, …), its input and output width.
    pub fn linears(&self) -> Vec<(String, usize, usize)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (name, lin) in l.named() {
                let (o, inp) = (
                    lin.weight.dim(0).unwrap_or(0),
                    lin.weight.dim(1).unwrap_or(0),
                );
                out.push((format!("encoder.layer.{i}.{name}"), inp, o));
            }
        }
        out
    }

    /// Adds each adapted module's `scale · B·A` to its weight (LoRA merged: inference is
    /// then exactly as fast as without it; a full-update adapter adds `ΔW` and `Δb`) and rebuilds the fused CPU weights. Fails, changing
    /// nothing, when the adapter names a module this model lacks or has other shapes.
    pub fn merge_lora(&mut self, adapter: &LoraAdapter) -> Result<()> {
        let known = self.linears();
        for (path, p) in &adapter.modules {
            let Some((_, inp, out)) = known.iter().find(|(n, _, _)| n == path) else {
                return Err(MlError::Mismatch(format!(
                    "the adapter has weights for module '{path}', which this model does not \
                     have; the adapter belongs to another model"
                )));
            };
            let (sa, sb) = adapter.shapes(*inp, *out);
            if p.a.dims() != sa || p.b.dims() != sb.as_slice() {
                return Err(MlError::Mismatch(format!(
                    "adapter module '{path}': {:?} / {:?} do not fit a {inp}→{out} layer",
                    p.a.dims(),
                    p.b.dims()
                )));
            }
        }
        let dtype = self.token_type.dtype();
        let device = self.device.clone();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, lin) in layer.named_mut() {
                let path = format!("encoder.layer.{i}.{name}");
                if let Some(d) = adapter.delta(&path)? {
                    lin.weight = (&lin.weight + d.to_dtype(dtype)?.to_device(&device)?)?;
                }
                if let Some(db) = adapter.bias_delta(&path) {
                    let db = db.to_dtype(dtype)?.to_device(&device)?;
                    lin.bias = Some(match &lin.bias {
                        Some(bias) => (bias + db)?,
                        None => db,
                    });
                }
            }
            if layer.fast.is_some() {
                layer.fast = Some(FastLayer::new(layer)?);
            }
        }
        Ok(())
    }

    /// The differentiable forward for training, with `lora` added to the adapted layers:
    /// final hidden states `[batch, seq, hidden]` for right-padded `ids` (`batch` rows of
    /// `seq` ids) whose real lengths are `lens`; padding keys are masked.
    pub fn forward_train(
        &self,
        ids: &[u32],
        lens: &[usize],
        seq: usize,
        lora: Option<&LoraTrain>,
    ) -> Result<Tensor> {
        grad_checkpoint::forward_all(&self.train_pass(ids, lens, seq, lora)?)
    }

    /// [`BertModel::forward_train`] cut at its layers (for gradient checkpointing): ops with
    /// backward passes only (the fused softmax and LayerNorm of [`train_ops`]).
    pub fn train_pass<'a>(
        &'a self,
        ids: &[u32],
        lens: &[usize],
        seq: usize,
        lora: Option<&'a LoraTrain>,
    ) -> Result<BertTrainPass<'a>> {
        let b = lens.len();
        let mut mask = vec![0f32; b * seq];
        for (row, &len) in lens.iter().enumerate() {
            for v in &mut mask[row * seq + len.clamp(1, seq)..(row + 1) * seq] {
                *v = f32::NEG_INFINITY;
            }
        }
        // In the type the fused softmax reads masks in (f32 for bf16 weights).
        let dtype = train_ops::accumulate_dtype(self.dtype());
        Ok(BertTrainPass {
            model: self,
            lora,
            ids: Tensor::from_slice(ids, (b, seq), &self.device)?,
            mask: Tensor::from_vec(mask, (b, 1, 1, seq), &self.device)?.to_dtype(dtype)?,
            b,
            seq,
        })
    }

    /// Final hidden states `[batch, seq, hidden]` for right-padded `ids` (`batch` rows of
    /// `seq` ids) whose real lengths are `lens`.
    ///
    /// On the CPU the states of padding positions are unspecified (they are never pooled);
    /// elsewhere they are those of the reference computation.
    pub fn forward(&self, ids: &[u32], lens: &[usize], seq: usize) -> Result<Tensor> {
        if self.has_cpu_path() {
            let out = self.forward_cpu(ids, lens, seq)?;
            let h = self.config.hidden_size;
            return Ok(Tensor::from_vec(out, (lens.len(), seq, h), &self.device)?);
        }
        self.forward_reference(ids, lens, seq)
    }

    /// [`BertModel::forward`]'s states as a flat `Vec` (`[batch * seq * hidden]`), without
    /// the tensor round trip on the CPU path (two serial copies of every state per batch).
    pub fn forward_vec(&self, ids: &[u32], lens: &[usize], seq: usize) -> Result<Vec<f32>> {
        if self.has_cpu_path() {
            return self.forward_cpu(ids, lens, seq);
        }
        let hidden = self.forward_reference(ids, lens, seq)?;
        Ok(hidden.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
    }

    fn has_cpu_path(&self) -> bool {
        self.layers.iter().all(|l| l.fast.is_some())
    }

    /// The CPU path: groups of whole texts of at most [`CPU_TOKENS_PER_PASS`] tokens, fused
    /// kernels around candle's gemm, attention over real tokens only.
    fn forward_cpu(&self, ids: &[u32], lens: &[usize], seq: usize) -> Result<Vec<f32>> {
        let b = lens.len();
        let h = self.config.hidden_size;
        let mut out = vec![0f32; b * seq * h];
        let mut start = 0;
        while start < b {
            // Texts arrive longest first from encode_batched, but any order works: the group
            // pads to its own longest text.
            let mut end = start + 1;
            let mut longest = lens[start].clamp(1, seq);
            while end < b {
                let l = longest.max(lens[end].clamp(1, seq));
                if (end + 1 - start) * l > CPU_TOKENS_PER_PASS {
                    break;
                }
                longest = l;
                end += 1;
            }
            let group_lens: Vec<usize> =
                lens[start..end].iter().map(|&l| l.clamp(1, seq)).collect();
            let mut group_ids = Vec::with_capacity((end - start) * longest);
            for row in start..end {
                group_ids.extend_from_slice(&ids[row * seq..row * seq + longest]);
            }
            let hidden = self.forward_group(&group_ids, &group_lens, longest)?;
            for (i, row) in (start..end).enumerate() {
                let dst = &mut out[row * seq * h..(row * seq + longest) * h];
                dst.copy_from_slice(&hidden[i * longest * h..(i + 1) * longest * h]);
            }
            start = end;
        }
        Ok(out)
    }

    /// Final states `[b * seq * h]` of one group on the CPU.
    fn forward_group(&self, ids: &[u32], lens: &[usize], seq: usize) -> Result<Vec<f32>> {
        if let Some(Some(FastLayer {
            mats: FastMatmuls::Packed { .. },
            ..
        })) = self.layers.first().map(|l| &l.fast)
        {
            return self.forward_group_packed(ids, lens, seq);
        }
        let b = lens.len();
        let h = self.config.hidden_size;
        let rows = b * seq;
        let dev = &self.device;
        let mut x = self.embed(ids, b, seq)?.reshape((rows, h))?;
        let heads = self.heads;
        for layer in &self.layers {
            let Some(f) = &layer.fast else {
                return Err(MlError::Unsupported(
                    "CPU path without fused weights".into(),
                ));
            };
            let FastMatmuls::Candle {
                qkv_t,
                ao_t,
                fi_t,
                fo_t,
            } = &f.mats
            else {
                return Err(MlError::Unsupported(
                    "mixed packed and candle layers".into(),
                ));
            };
            let qkv = x.matmul(qkv_t)?;
            let ctx = with_f32(&qkv, |qkv| attention(qkv, &f.qkv_b, lens, seq, h, heads))?;
            let attn = Tensor::from_vec(ctx, (rows, h), dev)?.matmul(ao_t)?;
            let x1 = add_norm(&x, &attn, &f.ao_b, &f.attn_ln, f.eps)?;
            let x1 = Tensor::from_vec(x1, (rows, h), dev)?;
            let mid = x1.matmul(fi_t)?;
            let act = self.act;
            let mid = with_f32(&mid, |m| bias_act(m, &f.fi_b, act))?;
            let ff = f.fi_b.len();
            let out = Tensor::from_vec(mid, (rows, ff), dev)?.matmul(fo_t)?;
            let x2 = add_norm(&x1, &out, &f.fo_b, &f.out_ln, f.eps)?;
            x = Tensor::from_vec(x2, (rows, h), dev)?;
        }
        with_f32(&x, |v| v.to_vec())
    }

    /// [`BertModel::forward_group`] with [`gemm_cpu`]'s matmul on plain buffers reused
    /// across layers: bias + GELU and bias + residual + LayerNorm run as the matmuls'
    /// epilogues, on each chunk of rows while it is in cache.
    fn forward_group_packed(&self, ids: &[u32], lens: &[usize], seq: usize) -> Result<Vec<f32>> {
        let b = lens.len();
        let h = self.config.hidden_size;
        let rows = b * seq;
        let heads = self.heads;
        let act = self.act;
        let mut x = with_f32(&self.embed(ids, b, seq)?, |v| v.to_vec())?;
        let ff = self.config.intermediate_size;
        let mut qkv = vec![0f32; rows * 3 * h];
        // The tiled attention reads q, k, v head-major, written by the q|k|v epilogue.
        let tiled = cfg!(target_arch = "x86_64") && attention_cpu::supported(h / heads);
        let mut hm = vec![0f32; if tiled { rows * 3 * h } else { 0 }];
        let mut ctx = vec![0f32; rows * h];
        let mut x1 = vec![0f32; rows * h];
        let mut mid = vec![0f32; rows * ff];
        for layer in &self.layers {
            let Some(FastLayer {
                mats:
                    FastMatmuls::Packed {
                        qkv: wqkv,
                        ao,
                        fi,
                        fo,
                    },
                ..
            }) = &layer.fast
            else {
                return Err(MlError::Unsupported(
                    "mixed packed and candle layers".into(),
                ));
            };
            let f = layer.fast.as_ref().expect("matched above");
            if tiled {
                let out = SharedRows(hm.as_mut_ptr());
                gemm_cpu::matmul(&x, rows, wqkv, &mut qkv, |r0, ys| {
                    // SAFETY: `hm` holds 3 · rows · h floats and each matmul chunk owns its
                    // rows `r0 ..`, so the chunks write disjoint parts of it.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        attention_cpu::scatter_heads(out.ptr(), rows, r0, ys, &f.qkv_b, h, heads)
                    };
                });
                attention_heads(&mut ctx, &hm, lens, seq, h, heads);
            } else {
                gemm_cpu::matmul(&x, rows, wqkv, &mut qkv, |_, _| {});
                attention_into(&mut ctx, &qkv, &f.qkv_b, lens, seq, h, heads);
            }
            let x_in = &x;
            gemm_cpu::matmul(&ctx, rows, ao, &mut x1, |r0, ys| {
                add_norm_in_place(ys, &x_in[r0 * h..], &f.ao_b, &f.attn_ln, f.eps)
            });
            gemm_cpu::matmul(&x1, rows, fi, &mut mid, |_, ys| {
                bias_act_in_place(ys, &f.fi_b, act)
            });
            let x1_in = &x1;
            gemm_cpu::matmul(&mid, rows, fo, &mut x, |r0, ys| {
                add_norm_in_place(ys, &x1_in[r0 * h..], &f.fo_b, &f.out_ln, f.eps)
            });
        }
        Ok(x)
    }

    /// Normalized input embeddings `[b, seq, h]` of `b` rows of `seq` ids.
    fn embed(&self, ids: &[u32], b: usize, seq: usize) -> Result<Tensor> {
        let dev = &self.device;
        let ids_t = Tensor::from_slice(ids, (b, seq), dev)?;
        let pos: Vec<u32> = (0..seq).map(|i| (i + self.first_position) as u32).collect();
        let pos_t = Tensor::from_slice(&pos, seq, dev)?;
        let x = self
            .word
            .forward(&ids_t)?
            .broadcast_add(&self.position.forward(&pos_t)?.unsqueeze(0)?)?
            .broadcast_add(&self.token_type)?;
        self.emb_ln.forward(&x)
    }

    /// The candle-ops forward, used off the CPU: the computation as first written, which the
    /// CPU path reproduces (parity tests: MiniLM cosine 0.9999996 with sentence-transformers).
    fn forward_reference(&self, ids: &[u32], lens: &[usize], seq: usize) -> Result<Tensor> {
        let b = lens.len();
        let h = self.config.hidden_size;
        let dev = &self.device;
        let mut x = self.embed(ids, b, seq)?;

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

/// One training forward of a [`BertModel`] over a padded batch, cut at its layers
/// ([`BertModel::train_pass`]).
pub struct BertTrainPass<'a> {
    model: &'a BertModel,
    lora: Option<&'a LoraTrain>,
    ids: Tensor,
    /// Additive key mask `[batch, 1, 1, seq]` (−∞ on padding), in the softmax's
    /// accumulation type.
    mask: Tensor,
    b: usize,
    seq: usize,
}

impl BertTrainPass<'_> {
    fn ln(l: &LayerNorm, x: &Tensor) -> Result<Tensor> {
        train_ops::layer_norm(x, &l.weight, &l.bias, l.eps as f64)
    }
}

impl grad_checkpoint::BlockPass for BertTrainPass<'_> {
    fn stem(&self) -> Result<Tensor> {
        let m = self.model;
        let dtype = m.token_type.dtype();
        let pos: Vec<u32> = (0..self.seq)
            .map(|i| (i + m.first_position) as u32)
            .collect();
        let pos_t = Tensor::from_slice(&pos, self.seq, &m.device)?;
        let x = m
            .word
            .forward(&self.ids)?
            .to_dtype(dtype)?
            .broadcast_add(&m.position.forward(&pos_t)?.to_dtype(dtype)?.unsqueeze(0)?)?
            .broadcast_add(&m.token_type)?;
        Self::ln(&m.emb_ln, &x)
    }

    fn num_blocks(&self) -> usize {
        self.model.layers.len()
    }

    fn block(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let m = self.model;
        let layer = &m.layers[i];
        let (b, seq, h) = (self.b, self.seq, m.config.hidden_size);
        let hd = h / m.heads;
        let lin = |name: &str, l: &Linear, x: &Tensor| -> Result<Tensor> {
            match self.lora {
                Some(lo) => lo.linear(
                    &format!("encoder.layer.{i}.{name}"),
                    x,
                    &l.weight,
                    l.bias.as_ref(),
                ),
                None => l.forward(x),
            }
        };
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, seq, m.heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(lin("attention.self.query", &layer.q, x)?)?;
        let k = split(lin("attention.self.key", &layer.k, x)?)?;
        let v = split(lin("attention.self.value", &layer.v, x)?)?;
        // One fused node for scale, mask and softmax: the graph keeps the raw scores and the
        // probabilities only (`k.t()` is a strided view the matmul reads directly).
        let scale = 1.0 / (hd as f64).sqrt();
        let probs = train_ops::masked_softmax(&q.matmul(&k.t()?)?, &self.mask, scale)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, seq, h))?;
        let attn = lin("attention.output.dense", &layer.attn_out, &ctx)?;
        let x = Self::ln(&layer.attn_ln, &(x + attn)?)?;
        let mid = m
            .act
            .forward(&lin("intermediate.dense", &layer.ff_in, &x)?)?;
        let out = lin("output.dense", &layer.ff_out, &mid)?;
        Self::ln(&layer.out_ln, &(x + out)?)
    }
}

/// `LayerNorm(residual + y + bias)` row by row, into fresh memory.
fn add_norm(
    residual: &Tensor,
    y: &Tensor,
    bias: &[f32],
    ln: &(Vec<f32>, Vec<f32>),
    eps: f32,
) -> Result<Vec<f32>> {
    with_f32(residual, |r| {
        with_f32(y, |y| {
            let mut out = y.to_vec();
            add_norm_in_place(&mut out, r, bias, ln, eps);
            out
        })
    })?
}

/// `y = LayerNorm(residual + y + bias)` for the whole rows of `y` (width `bias.len()`);
/// `residual` starts at `y`'s first row. The matmul epilogue of the attention output and of
/// the feed-forward output.
fn add_norm_in_place(
    y: &mut [f32],
    residual: &[f32],
    bias: &[f32],
    ln: &(Vec<f32>, Vec<f32>),
    eps: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { add_norm_avx2(y, residual, bias, &ln.0, &ln.1, eps) };
        return;
    }
    add_norm_rows::<false>(y, residual, bias, &ln.0, &ln.1, eps);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn add_norm_avx2(y: &mut [f32], r: &[f32], bias: &[f32], w: &[f32], b: &[f32], eps: f32) {
    add_norm_rows::<true>(y, r, bias, w, b, eps)
}

/// One pass adds the residual and bias and sums the row, in 8 lanes (a single float
/// accumulator is a serial chain of adds that does not vectorize); then the variance in a
/// second pass (two-pass, as candle computes it) and the scaling.
#[inline(always)]
fn add_norm_rows<const FMA: bool>(
    y: &mut [f32],
    r: &[f32],
    bias: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
) {
    let h = bias.len();
    let n = h as f32;
    for (o, r) in y.chunks_exact_mut(h).zip(r.chunks_exact(h)) {
        for ((o, r), bb) in o.iter_mut().zip(r).zip(bias) {
            *o += r + bb;
        }
        let mean = lanes_reduce(o, 0.0, |a, v| a + v) / n;
        let mut sq = [0f32; 8];
        let mut chunks = o.chunks_exact(8);
        for c in &mut chunks {
            for (s, v) in sq.iter_mut().zip(c) {
                let d = v - mean;
                *s += d * d;
            }
        }
        let tail: f32 = chunks
            .remainder()
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum();
        let var = (sq.iter().sum::<f32>() + tail) / n;
        let inv = 1.0 / (var + eps).sqrt();
        for ((x, w), b) in o.iter_mut().zip(w).zip(b) {
            *x = (*x - mean) * inv * w + b;
        }
    }
}

/// `act(m + bias)` row by row into fresh memory.
fn bias_act(m: &[f32], bias: &[f32], act: Activation) -> Vec<f32> {
    let mut out = m.to_vec();
    bias_act_in_place(&mut out, bias, act);
    out
}

/// `m = act(m + bias)` for the whole rows of `m` (width `bias.len()`): the matmul epilogue
/// of the feed-forward input.
fn bias_act_in_place(m: &mut [f32], bias: &[f32], act: Activation) {
    #[cfg(target_arch = "x86_64")]
    if act == Activation::GeluErf && gemm_cpu::supported() {
        // SAFETY: `gemm_cpu::supported` checked AVX-512F; `m` holds whole rows.
        unsafe { crate::nn::bias_gelu_erf_avx512(m, bias) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { bias_act_avx2(m, bias, act) };
        return;
    }
    bias_act_rows::<false>(m, bias, act);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bias_act_avx2(m: &mut [f32], bias: &[f32], act: Activation) {
    bias_act_rows::<true>(m, bias, act)
}

#[inline(always)]
fn bias_act_rows<const FMA: bool>(m: &mut [f32], bias: &[f32], act: Activation) {
    for o in m.chunks_exact_mut(bias.len()) {
        match act {
            Activation::GeluErf => {
                for (o, b) in o.iter_mut().zip(bias) {
                    *o = gelu_erf(*o + b);
                }
            }
            Activation::GeluTanh => {
                for (o, b) in o.iter_mut().zip(bias) {
                    let x = *o + b;
                    // tanh(u) = 1 - 2 / (e^{2u} + 1)
                    let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
                    let t = 1.0 - 2.0 / (fast_exp(2.0 * u) + 1.0);
                    *o = 0.5 * x * (1.0 + t);
                }
            }
            Activation::Relu => {
                for (o, b) in o.iter_mut().zip(bias) {
                    *o = (*o + b).max(0.0);
                }
            }
        }
    }
}

/// Multi-head self-attention over `qkv` (`[b * seq, 3h]`: q, k, v side by side, before their
/// bias) for right-padded texts of lengths `lens`; returns the context `[b * seq, h]`.
/// Each text attends over its own `len` keys only, and padding rows stay zero: no mask, no
/// `[b, heads, seq, seq]` score tensor. Texts run in parallel on rayon's pool.
fn attention(
    qkv: &[f32],
    bias: &[f32],
    lens: &[usize],
    seq: usize,
    h: usize,
    heads: usize,
) -> Vec<f32> {
    let mut ctx = vec![0f32; lens.len() * seq * h];
    attention_into(&mut ctx, qkv, bias, lens, seq, h, heads);
    ctx
}

/// [`attention`] from the head-major q|k|v of [`attention_cpu::attend_text_heads`] (`hm`,
/// biases added, q scaled) into `ctx`, whose padding rows are left as they are. Texts run in
/// parallel on rayon's pool.
fn attention_heads(
    ctx: &mut [f32],
    hm: &[f32],
    lens: &[usize],
    seq: usize,
    h: usize,
    heads: usize,
) {
    use rayon::prelude::*;
    let rows = lens.len() * seq;
    ctx[..rows * h]
        .par_chunks_mut(seq * h)
        .zip(lens.par_iter())
        .enumerate()
        .for_each(|(bi, (ctx, &len))| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller runs this only where `attention_cpu::supported` holds.
            unsafe {
                attention_cpu::attend_text_heads(ctx, hm, rows, bi * seq, len, h, heads)
            };
        });
}

/// A base pointer that rayon tasks share to write disjoint rows of one buffer (the q|k|v
/// epilogue scatters each chunk's rows into every head's slab).
#[derive(Clone, Copy)]
struct SharedRows(*mut f32);

// SAFETY: only used where every task writes rows no other task touches.
unsafe impl Send for SharedRows {}
// SAFETY: as above.
unsafe impl Sync for SharedRows {}

impl SharedRows {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// [`attention`] into `ctx` (`[b * seq, h]`), whose padding rows are left as they are.
fn attention_into(
    ctx: &mut [f32],
    qkv: &[f32],
    bias: &[f32],
    lens: &[usize],
    seq: usize,
    h: usize,
    heads: usize,
) {
    use rayon::prelude::*;
    ctx[..lens.len() * seq * h]
        .par_chunks_mut(seq * h)
        .zip(lens.par_iter())
        .enumerate()
        .for_each(|(bi, (ctx, &len))| {
            let rows = &qkv[bi * seq * 3 * h..(bi * seq + len) * 3 * h];
            #[cfg(target_arch = "x86_64")]
            if super::attention_cpu::supported(h / heads) {
                // SAFETY: `supported` checked AVX2, FMA and the head size.
                unsafe { super::attention_cpu::attend_text_tiled(ctx, rows, bias, len, h, heads) };
                return;
            }
            // The portable kernel adds into its output.
            ctx[..len * h].fill(0.0);
            attend_text(ctx, rows, bias, len, h, heads);
        });
}

/// One text's attention: `rows` are its `len` q|k|v rows, `ctx` its `[seq, h]` output. The
/// portable path, for CPUs without AVX2/FMA and head sizes that are not a multiple of 16
/// (elsewhere [`super::attention_cpu`]'s tiled kernel runs).
#[inline(always)]
fn attend_text(ctx: &mut [f32], rows: &[f32], bias: &[f32], len: usize, h: usize, heads: usize) {
    let hd = h / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    // Per head: q (scaled) `[len, hd]`, k transposed `[hd, len]`, v `[len, hd]`, so that both
    // products below are unit-stride multiply-adds that vectorize.
    let mut q = vec![0f32; len * hd];
    let mut kt = vec![0f32; hd * len];
    let mut v = vec![0f32; len * hd];
    let mut p = vec![0f32; 4 * len];
    for head in 0..heads {
        let (qo, ko, vo) = (head * hd, h + head * hd, 2 * h + head * hd);
        for (t, row) in rows.chunks_exact(3 * h).enumerate() {
            for d in 0..hd {
                q[t * hd + d] = (row[qo + d] + bias[qo + d]) * scale;
                kt[d * len + t] = row[ko + d] + bias[ko + d];
                v[t * hd + d] = row[vo + d] + bias[vo + d];
            }
        }
        // Four query rows at a time: each `k` element loaded serves four rows (the loop
        // was bound by loads and stores of the score rows).
        let mut i0 = 0;
        while i0 < len {
            let nrows = (len - i0).min(4);
            p.fill(0.0);
            let (p0, rest) = p.split_at_mut(len);
            let (p1, rest) = rest.split_at_mut(len);
            let (p2, p3) = rest.split_at_mut(len);
            for d in 0..hd {
                let qv = |r: usize| {
                    if r < nrows {
                        q[(i0 + r) * hd + d]
                    } else {
                        0.0
                    }
                };
                let (a0, a1, a2, a3) = (qv(0), qv(1), qv(2), qv(3));
                let krow = &kt[d * len..(d + 1) * len];
                for ((((x0, x1), x2), x3), &kj) in p0
                    .iter_mut()
                    .zip(p1.iter_mut())
                    .zip(p2.iter_mut())
                    .zip(p3.iter_mut())
                    .zip(krow)
                {
                    *x0 += a0 * kj;
                    *x1 += a1 * kj;
                    *x2 += a2 * kj;
                    *x3 += a3 * kj;
                }
            }
            for (r, pr) in [&mut *p0, &mut *p1, &mut *p2, &mut *p3]
                .into_iter()
                .take(nrows)
                .enumerate()
            {
                let max = lanes_reduce(pr, f32::NEG_INFINITY, f32::max);
                for pj in pr.iter_mut() {
                    *pj = fast_exp(*pj - max);
                }
                let inv = 1.0 / lanes_reduce(pr, 0.0, |a, b| a + b);
                let i = i0 + r;
                let out = &mut ctx[i * h + head * hd..i * h + head * hd + hd];
                for (j, &pj) in pr.iter().enumerate() {
                    let w = pj * inv;
                    for (o, vj) in out.iter_mut().zip(&v[j * hd..(j + 1) * hd]) {
                        *o += w * *vj;
                    }
                }
            }
            i0 += nrows;
        }
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

    /// Pooling of right-padded rows of lengths `lens` (padded to `seq`) as weights over
    /// token positions, `[lens.len() * seq]` row-major: a matmul with the hidden states pools
    /// them differentiably (training). `None` for max pooling, which is not a weighted sum.
    pub fn weights(self, lens: &[usize], seq: usize) -> Option<Vec<f32>> {
        let mut w = vec![0f32; lens.len() * seq];
        for (row, &len) in lens.iter().enumerate() {
            let len = len.clamp(1, seq);
            let r = &mut w[row * seq..(row + 1) * seq];
            match self {
                Pooling::Mean => r[..len].iter_mut().for_each(|x| *x = 1.0 / len as f32),
                Pooling::Cls => r[0] = 1.0,
                Pooling::LastToken => r[len - 1] = 1.0,
                Pooling::Max => return None,
            }
        }
        Some(w)
    }

    /// The mode's name as `from_name` reads it.
    pub fn name(self) -> &'static str {
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

    /// The ids `text` becomes in `role` (prefix and special tokens included, truncated to the
    /// encoder's token limit), exactly as [`Encoder::encode`] feeds them to the model; lets a
    /// benchmark run a reference implementation on the same ids.
    pub fn token_ids(&self, text: &str, role: TextRole) -> Result<Vec<u32>> {
        self.ids(text, role, Some(self.parts.max_len))
    }

    /// Ids of `texts` in `role` truncated to `max_len` (capped by the encoder's limit),
    /// right-padded: `(ids, lens, seq)` with `ids.len() == texts.len() * seq`.
    pub fn batch_ids(
        &self,
        texts: &[&str],
        role: TextRole,
        max_len: usize,
    ) -> Result<(Vec<u32>, Vec<usize>, usize)> {
        let limit = max_len.clamp(2, self.parts.max_len.max(2));
        // Texts are tokenized in parallel on rayon's pool: serial, the tokenizer left the
        // other threads idle between forward passes.
        use rayon::prelude::*;
        let seqs: Vec<Vec<u32>> = texts
            .par_iter()
            .map(|t| self.ids(t, role, Some(limit)))
            .collect::<Result<_>>()?;
        let seq = seqs.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut ids = vec![self.parts.pad_id; texts.len() * seq];
        for (row, s) in seqs.iter().enumerate() {
            ids[row * seq..row * seq + s.len()].copy_from_slice(s);
        }
        let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        Ok((ids, lens, seq))
    }

    /// Hidden-state pooling over a padded batch, without normalization (for tests and
    /// training code that wants raw vectors).
    pub fn pooled(&self, texts: &[&str], role: TextRole) -> Result<Vec<f32>> {
        let dim = self.dim();
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, lens, seq) = self.batch_ids(texts, role, self.parts.max_len)?;
        let hidden = self.model.forward_vec(&ids, &lens, seq)?;
        let mut out = vec![0f32; texts.len() * dim];
        for (row, &len) in lens.iter().enumerate() {
            let rows = &hidden[row * seq * dim..(row + 1) * seq * dim];
            self.parts
                .pooling
                .pool(rows, len, dim, &mut out[row * dim..(row + 1) * dim]);
        }
        Ok(out)
    }

    /// L2-normalized embeddings `[texts.len(), dim]` as a candle tensor computed with
    /// [`BertModel::forward_train`] (differentiable; `lora` added), for training.
    pub fn embed_train(
        &self,
        texts: &[&str],
        role: TextRole,
        max_len: usize,
        lora: Option<&LoraTrain>,
    ) -> Result<Tensor> {
        let (ids, lens, seq) = self.batch_ids(texts, role, max_len)?;
        let hidden = self.model.forward_train(&ids, &lens, seq, lora)?;
        self.pool_train(&hidden, &lens, seq)
    }

    /// The pooled, L2-normalized embeddings `[batch, hidden]` of final hidden states from
    /// the training forward (differentiable). bf16 states are widened to f32 first, so that
    /// pooling, the norm and everything after them (similarities, the loss) are f32.
    pub fn pool_train(&self, hidden: &Tensor, lens: &[usize], seq: usize) -> Result<Tensor> {
        let w = self.parts.pooling.weights(lens, seq).ok_or_else(|| {
            MlError::Unsupported("training with max pooling is not supported".into())
        })?;
        let hidden = &hidden.to_dtype(train_ops::accumulate_dtype(hidden.dtype()))?;
        let w =
            Tensor::from_vec(w, (lens.len(), 1, seq), hidden.device())?.to_dtype(hidden.dtype())?;
        let pooled = w.matmul(hidden)?.squeeze(1)?;
        let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
        Ok(pooled.broadcast_div(&norm)?)
    }

    /// The transformer.
    pub fn model(&self) -> &BertModel {
        &self.model
    }

    /// How token states are pooled.
    pub fn pooling(&self) -> Pooling {
        self.parts.pooling
    }

    /// Token limit per text.
    pub fn max_len(&self) -> usize {
        self.parts.max_len
    }

    /// Converts the model's float weights to `dtype` in place ([`BertModel::to_dtype`]; e.g.
    /// bf16 for mixed-precision training, without keeping the f32 copy). The fingerprint
    /// names the type, since vectors computed in another precision differ.
    pub fn cast_weights(&mut self, dtype: DType) -> Result<()> {
        if self.model.dtype() == dtype {
            return Ok(());
        }
        self.model = self.model.to_dtype(dtype)?;
        self.fingerprint = format!("{}:dtype={}", self.fingerprint, dtype.as_str());
        Ok(())
    }

    /// Merges the PEFT LoRA adapter in `dir` into the weights (see
    /// [`BertModel::merge_lora`]) and adds the adapter's digest to the fingerprint, so that
    /// vectors made with and without it are never mixed.
    pub fn apply_adapter(&mut self, dir: &Path) -> Result<()> {
        let adapter = LoraAdapter::load(dir, &self.model.device)?;
        self.model.merge_lora(&adapter)?;
        let digest = LoraAdapter::folder_digest(dir)?;
        self.fingerprint = format!("{}:lora={digest}", self.fingerprint);
        Ok(())
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
