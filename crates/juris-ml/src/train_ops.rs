//! Fused differentiable ops for the training forwards (`BertModel::forward_train`, the
//! decoders' blocks under a graph, LoRA dropout): scaled masked softmax, LayerNorm and
//! RMSNorm with frozen weights, and seeded dropout.
//!
//! Why: candle's graph holds every op's inputs until backward, so the same computations
//! composed of candle ops keep each intermediate alive — six `[batch, heads, seq, seq]`
//! tensors per attention layer (scores, scaled, masked, shifted, exponentials,
//! probabilities), five per LayerNorm, and a stored mask per dropout. Each op here is one
//! node: its backward needs only its input and output (softmax, LayerNorm) or its seed
//! (dropout: the mask is drawn again from it), so a training step keeps about a third
//! less (measured on MiniLM: see `examples/train_step_memory.rs` in juris-train).
//!
//! Forwards run on the CPU as loops here and on CUDA as one kernel each
//! (`src/cuda/train_ops.cu`: no input copy, one launch); backwards are one op each
//! ([`crate::train_grads`]), likewise.
//!
//! Element types: f32 and f64, and bf16 for mixed-precision training. bf16 is storage only:
//! values are widened to f32, computed in f32 and rounded to bf16 once per output (on the
//! CPU by widening the input, running the f32 loop and rounding its output; the CUDA
//! kernels load, compute and store the same way). A softmax mask meets bf16 scores in f32
//! ([`accumulate_dtype`]), so −∞ and −1e30 keep their meaning; norm weights and biases are
//! read in bf16, as a bf16 model holds them. The f32 and f64 paths are unchanged by bf16.
//!
//! Dropout masks come from a counter-based stream: element `i` of a tensor dropped with seed
//! `s` keeps or drops by the `i`-th output of SplitMix64 seeded with `s`, computed
//! directly from `i` (so rows are drawn in parallel, and a recomputation or a resumed run
//! draws the same mask). The CUDA kernel computes the same stream, so a mask drawn on the
//! GPU equals the CPU's.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};
use half::bf16;
use rayon::prelude::*;

use crate::error::Result;

/// SplitMix64's increment; element `i` of a stream seeded with `s` is the finalizer of
/// `s + (i + 1) · GAMMA`.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function.
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `i`-th 64-bit output (0-based) of SplitMix64 seeded with `seed`.
pub fn stream_u64(seed: u64, i: u64) -> u64 {
    finalize(seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// A seed for one named consumer (a LoRA module) of a pass seeded with `seed`: FNV-1a of
/// `name` mixed into `seed`.
pub fn sub_seed(seed: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    finalize(seed ^ finalize(h))
}

fn unsupported(op: &str, dtype: DType) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{op}: dtype {dtype:?} is not supported (f32, f64, bf16)"
    ))
}

/// The type the fused ops compute in for tensors of `dtype`, and the type of what they read
/// besides their tensor inputs (a softmax mask): f32 for bf16, the type itself otherwise.
pub(crate) fn accumulate_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 => DType::F32,
        other => other,
    }
}

/// bf16 values widened to f32 (exact), for the CPU loops.
pub(crate) fn widen(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// f32 results rounded to bf16 (to nearest even), once each.
pub(crate) fn narrow(v: Vec<f32>) -> Vec<bf16> {
    v.into_iter().map(bf16::from_f32).collect()
}

/// The contiguous slice a fused op reads (inputs are made contiguous by the wrappers).
pub(crate) fn contiguous<'a, T>(v: &'a [T], l: &Layout, op: &str) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => Err(candle_core::Error::Msg(format!(
            "{op}: the input is not contiguous"
        ))),
    }
}

/// Fresh contiguous storage starting at offset 0 (what the CUDA forwards copy from).
pub(crate) fn packed(x: &Tensor) -> Result<Tensor> {
    if x.is_contiguous() && x.layout().start_offset() == 0 {
        Ok(x.clone())
    } else {
        // `contiguous()` keeps a contiguous view's offset; an affine op writes a new buffer.
        Ok(x.contiguous()?.affine(1.0, 0.0)?)
    }
}

/// Dropout with keep probability `1 - p` and kept values scaled by `1 / (1 - p)`, the mask
/// drawn from `seed` (see the module docs). Differentiable; the backward draws the mask
/// again instead of keeping it.
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    Ok(packed(x)?.apply_op1(Dropout { p, seed })?)
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Dropout {
    p: f64,
    seed: u64,
}

impl Dropout {
    pub(crate) fn new(p: f64, seed: u64) -> Self {
        Dropout { p, seed }
    }

    pub(crate) fn p(&self) -> f64 {
        self.p
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// Elements whose 53-bit draw is below this are dropped: `u < p` for `u` uniform on the
    /// 2⁵³-point grid of `[0, 1)` (the same test as `SplitMix64::next_f64() < p`).
    fn threshold(&self) -> u64 {
        (self.p * (1u64 << 53) as f64).ceil() as u64
    }

    fn apply<T: Copy + Send + Sync + std::ops::Mul<Output = T>>(
        &self,
        x: &[T],
        keep: T,
        zero: T,
    ) -> Vec<T> {
        let thr = self.threshold();
        let seed = self.seed;
        let mut out = vec![zero; x.len()];
        const CHUNK: usize = 1 << 14;
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (o, xs))| {
                let base = (c * CHUNK) as u64;
                for (k, (o, &v)) in o.iter_mut().zip(xs).enumerate() {
                    let bits = stream_u64(seed, base + k as u64) >> 11;
                    *o = if bits < thr { zero } else { v * keep };
                }
            });
        out
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "juris-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let keep = 1.0 / (1.0 - self.p);
        let out = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(self.apply(contiguous(v, l, "dropout")?, keep as f32, 0.0))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(self.apply(contiguous(v, l, "dropout")?, keep, 0.0))
            }
            CpuStorage::BF16(v) => {
                let wide = widen(contiguous(v, l, "dropout")?);
                CpuStorage::BF16(narrow(self.apply(&wide, keep as f32, 0.0)))
            }
            other => return Err(unsupported("dropout", other.dtype())),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::dropout(s, l, self.p, self.seed, self.threshold())
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // d(x ⊙ m)/dx = m: the same op on the gradient.
        let g = packed(grad_res).map_err(candle_core::Error::wrap)?;
        Ok(Some(g.apply_op1(*self)?))
    }
}

/// `softmax(scores · scale + mask)` over the last dimension, for `scores`
/// `[batch, heads, q, k]` and an additive `mask` broadcastable to it (e.g. `[batch, 1, 1,
/// k]` or `[batch, 1, q, k]`; −∞ or a large negative number hides a key). Differentiable in
/// `scores` (the mask is a constant); keeps only `scores` and the probabilities. The mask is
/// read in the scores' [`accumulate_dtype`] (f32 for bf16 scores: pass it in f32 to spare a
/// conversion per call).
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = packed(scores)?;
    let mask = mask
        .detach()
        .to_dtype(accumulate_dtype(scores.dtype()))?
        .broadcast_as(scores.shape())?;
    Ok(scores.apply_op1(MaskedSoftmax { mask, scale })?)
}

struct MaskedSoftmax {
    /// Broadcast view (stride 0 on repeated dimensions) of the mask, the scores' shape.
    mask: Tensor,
    scale: f64,
}

impl MaskedSoftmax {
    fn rows<T: num_like::Float>(&self, x: &[T], m: &[T], ml: &Layout, n: usize) -> Vec<T> {
        let dims = ml.dims();
        let st = ml.stride();
        let (d1, d2) = (dims[1], dims[2]);
        let scale = T::from_f64(self.scale);
        let start = ml.start_offset();
        let mut out = vec![T::zero(); x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .enumerate()
            .for_each(|(r, (o, xs))| {
                let (i0, i1, i2) = (r / (d1 * d2), (r / d2) % d1, r % d2);
                let mrow = start + i0 * st[0] + i1 * st[1] + i2 * st[2];
                let mut max = T::neg_infinity();
                for (j, (o, &v)) in o.iter_mut().zip(xs).enumerate() {
                    let s = v * scale + m[mrow + j * st[3]];
                    *o = s;
                    if s > max {
                        max = s;
                    }
                }
                let mut sum = T::zero();
                for o in o.iter_mut() {
                    // A row whose keys are all −∞ gives NaN, as the composed form does.
                    *o = (*o - max).exp();
                    sum = sum + *o;
                }
                for o in o.iter_mut() {
                    *o = *o / sum;
                }
            });
        out
    }
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "juris-masked-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        let (ms, ml) = self.mask.storage_and_layout();
        let Storage::Cpu(mc) = &*ms else {
            return Err(candle_core::Error::Msg(
                "masked softmax: mask and scores on different devices".into(),
            ));
        };
        if ml.dims().len() != 4 {
            return Err(candle_core::Error::Msg(
                "masked softmax: scores must be [batch, heads, q, k]".into(),
            ));
        }
        let out = match (s, mc) {
            (CpuStorage::F32(v), CpuStorage::F32(m)) => {
                CpuStorage::F32(self.rows(contiguous(v, l, "softmax")?, m, ml, n))
            }
            (CpuStorage::F64(v), CpuStorage::F64(m)) => {
                CpuStorage::F64(self.rows(contiguous(v, l, "softmax")?, m, ml, n))
            }
            (CpuStorage::BF16(v), CpuStorage::F32(m)) => {
                let wide = widen(contiguous(v, l, "softmax")?);
                CpuStorage::BF16(narrow(self.rows(&wide, m, ml, n)))
            }
            (other, _) => return Err(unsupported("masked softmax", other.dtype())),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::masked_softmax(s, l, &self.mask, self.scale)
    }

    fn bwd(&self, _arg: &Tensor, p: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // d softmax: p ⊙ (g − Σ_k g ⊙ p), times the scale of the scores, as one op.
        let grad = crate::train_grads::Grad::Softmax { scale: self.scale };
        Ok(Some(grad.apply(p, g).map_err(candle_core::Error::wrap)?))
    }
}

/// LayerNorm over the last dimension with weight `w` and bias `b` (`[hidden]`), in candle's
/// `layer_norm_slow` order. Differentiable in `x` only: `w` and `b` are frozen (LoRA
/// training). Keeps only `x` and the output; the backward recomputes the statistics.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let x = packed(x)?;
    Ok(x.apply_op1(FrozenNorm {
        w: w.detach(),
        b: Some(b.detach()),
        eps,
    })?)
}

/// RMSNorm over the last dimension, `x / sqrt(mean(x²) + eps) · w`, with a frozen weight
/// `w` (`[hidden]`). Differentiable in `x` only; keeps only `x` and the output.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let x = packed(x)?;
    Ok(x.apply_op1(FrozenNorm {
        w: w.detach(),
        b: None,
        eps,
    })?)
}

/// LayerNorm (with a bias: rows centred first) or RMSNorm (without: not centred) with frozen
/// parameters: one op for both, as they differ only in the centring and the bias.
struct FrozenNorm {
    w: Tensor,
    /// LayerNorm's bias; `None` makes the op RMSNorm.
    b: Option<Tensor>,
    eps: f64,
}

impl FrozenNorm {
    fn centred(&self) -> bool {
        self.b.is_some()
    }

    fn what(&self) -> &'static str {
        if self.centred() {
            "layer norm"
        } else {
            "rms norm"
        }
    }

    fn rows<T: num_like::Float>(&self, x: &[T], w: &[T], b: Option<&[T]>) -> Vec<T> {
        let n = w.len();
        let nf = T::from_f64(n as f64);
        let eps = T::from_f64(self.eps);
        let centred = self.centred();
        let mut out = vec![T::zero(); x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .for_each(|(o, xs)| {
                // RMSNorm's mean is 0, and `v - 0` is `v` exactly.
                let mut mean = T::zero();
                if centred {
                    let mut sum = T::zero();
                    for &v in xs {
                        sum = sum + v;
                    }
                    mean = sum / nf;
                }
                let mut sq = T::zero();
                for &v in xs {
                    sq = sq + (v - mean) * (v - mean);
                }
                let denom = (sq / nf + eps).sqrt();
                for (k, (o, &v)) in o.iter_mut().zip(xs).enumerate() {
                    let y = (v - mean) / denom * w[k];
                    *o = match b {
                        Some(b) => y + b[k],
                        None => y,
                    };
                }
            });
        out
    }
}

impl CustomOp1 for FrozenNorm {
    fn name(&self) -> &'static str {
        if self.centred() {
            "juris-layer-norm"
        } else {
            "juris-rms-norm"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let what = self.what();
        // The weight and bias as f32 values, passing through `via` first (bf16: the values
        // the CUDA kernel reads, which takes them in the activations' type).
        let f32_params = |via: DType| -> candle_core::Result<(Vec<f32>, Option<Vec<f32>>)> {
            let f32_of = |t: &Tensor| t.to_dtype(via)?.to_dtype(DType::F32)?.to_vec1::<f32>();
            let b = match &self.b {
                Some(b) => Some(f32_of(b)?),
                None => None,
            };
            Ok((f32_of(&self.w)?, b))
        };
        let out = match s {
            CpuStorage::F32(v) => {
                let (w, b) = f32_params(DType::F32)?;
                CpuStorage::F32(self.rows(contiguous(v, l, what)?, &w, b.as_deref()))
            }
            CpuStorage::BF16(v) => {
                let (w, b) = f32_params(DType::BF16)?;
                let wide = widen(contiguous(v, l, what)?);
                CpuStorage::BF16(narrow(self.rows(&wide, &w, b.as_deref())))
            }
            CpuStorage::F64(v) => {
                let w = self.w.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                let b = match &self.b {
                    Some(b) => Some(b.to_dtype(DType::F64)?.to_vec1::<f64>()?),
                    None => None,
                };
                CpuStorage::F64(self.rows(contiguous(v, l, what)?, &w, b.as_deref()))
            }
            other => return Err(unsupported(what, other.dtype())),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::frozen_norm(s, l, &self.w, self.b.as_ref(), self.eps)
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // dx = r · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)), ĝ = g ⊙ w, x̂ = x_c · r,
        // r = 1 / sqrt(mean(x_c²) + eps); x_c = x − mean(x) and the mean(ĝ) term only for
        // LayerNorm (RMSNorm does not centre); as one op.
        let grad = crate::train_grads::Grad::Norm {
            w: self.w.clone(),
            centred: self.centred(),
            eps: self.eps,
        };
        Ok(Some(grad.apply(x, g).map_err(candle_core::Error::wrap)?))
    }
}

/// Exact GELU, `0.5 x (1 + erf(x / √2))`, with candle's forward (the same storage op as
/// `Tensor::gelu_erf`) and a backward of one op (`train_grads`) instead of candle's ten.
/// bf16 on CUDA takes a kernel of ours that computes in f32 and rounds once (candle's bf16
/// kernel rounds Φ(x) to bf16 before its bf16 product, two roundings); on the CPU candle's
/// bf16 form already computes in f64 and rounds once.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    Ok(packed(x)?.apply_op1(GeluErf)?)
}

struct GeluErf;

/// `Tensor::gelu_erf`'s storage op, on any backend.
fn gelu_forward<S: BackendStorage>(s: &S, l: &Layout) -> candle_core::Result<(S, Shape)> {
    Ok((
        s.unary_impl::<candle_core::op::GeluErf>(l)?,
        l.shape().clone(),
    ))
}

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "juris-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        gelu_forward(s, l)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match s.dtype() {
            DType::BF16 => cuda::gelu_erf_bf16(s, l),
            _ => gelu_forward(s, l),
        }
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = crate::train_grads::Grad::Gelu;
        Ok(Some(grad.apply(x, g).map_err(candle_core::Error::wrap)?))
    }
}

/// The float arithmetic the CPU loops need, for f32 and f64.
pub(crate) mod num_like {
    pub trait Float:
        Copy
        + Send
        + Sync
        + PartialOrd
        + std::ops::Add<Output = Self>
        + std::ops::Sub<Output = Self>
        + std::ops::Mul<Output = Self>
        + std::ops::Div<Output = Self>
    {
        fn zero() -> Self;
        fn neg_infinity() -> Self;
        fn from_f64(v: f64) -> Self;
        fn exp(self) -> Self;
        fn sqrt(self) -> Self;
        fn to_f64(self) -> f64;
    }

    macro_rules! float {
        ($t:ty) => {
            impl Float for $t {
                fn zero() -> Self {
                    0.0
                }
                fn neg_infinity() -> Self {
                    <$t>::NEG_INFINITY
                }
                fn from_f64(v: f64) -> Self {
                    v as $t
                }
                fn exp(self) -> Self {
                    <$t>::exp(self)
                }
                fn sqrt(self) -> Self {
                    <$t>::sqrt(self)
                }
                fn to_f64(self) -> f64 {
                    self as f64
                }
            }
        };
    }
    float!(f32);
    float!(f64);
}

/// The CUDA forwards: one kernel each from `src/cuda/train_ops.cu` (PTX built by build.rs),
/// reading the op's input in place and writing a fresh output; each kernel exists for f32,
/// f64 and bf16 (AdamW: f32 and f64), its scalar arguments in the type it computes in.
#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, DType, Device, Layout, Shape, Storage, Tensor};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/train_ops.ptx"));
    const MODULE: &str = "juris_train_ops";
    /// Threads per block of the row kernels: 4 warps, one row each.
    const ROW_BLOCK: u32 = 128;

    fn bail<T>(msg: String) -> candle_core::Result<T> {
        Err(candle_core::Error::Msg(msg))
    }

    /// The name of kernel `base` for `T` (the `.cu` file instantiates each per type).
    fn kernel<T: Float>(base: &str) -> String {
        format!("{base}_{}", T::SUFFIX)
    }

    /// A kernel's output `y` as the op's result of `l`'s shape.
    fn output<T: Float>(dev: &CudaDevice, y: CudaSlice<T>, l: &Layout) -> (CudaStorage, Shape) {
        (
            CudaStorage::wrap_cuda_slice(y, dev.clone()),
            l.shape().clone(),
        )
    }

    /// The contiguous elements `l` describes in `s`.
    fn view<'a, T: CudaDType>(
        s: &'a CudaStorage,
        l: &Layout,
        op: &str,
    ) -> candle_core::Result<CudaView<'a, T>> {
        match l.contiguous_offsets() {
            Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
            None => bail(format!("{op}: the input is not contiguous")),
        }
    }

    /// A frozen parameter (weight or bias) as a packed tensor of `T` on the op's device.
    fn param<T: Float>(t: &Tensor) -> candle_core::Result<Tensor> {
        t.to_dtype(T::DTYPE)?.contiguous()
    }

    fn rows_config(rows: usize) -> LaunchConfig {
        let warps_per_block = (ROW_BLOCK / 32) as usize;
        LaunchConfig {
            grid_dim: (rows.div_ceil(warps_per_block).max(1) as u32, 1, 1),
            block_dim: (ROW_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Element types the kernels take, with their kernel-name suffix and the type they
    /// compute in (`Acc`: scalar arguments and softmax masks are passed in it).
    trait Float: CudaDType + DeviceRepr + Copy {
        const SUFFIX: &'static str;
        const DTYPE: DType;
        type Acc: CudaDType + DeviceRepr + Copy;
        /// A scalar argument in the type the kernel computes in.
        fn acc(v: f64) -> Self::Acc;
    }
    impl Float for f32 {
        const SUFFIX: &'static str = "f32";
        const DTYPE: DType = DType::F32;
        type Acc = f32;
        fn acc(v: f64) -> f32 {
            v as f32
        }
    }
    impl Float for f64 {
        const SUFFIX: &'static str = "f64";
        const DTYPE: DType = DType::F64;
        type Acc = f64;
        fn acc(v: f64) -> f64 {
            v
        }
    }
    impl Float for half::bf16 {
        const SUFFIX: &'static str = "bf16";
        const DTYPE: DType = DType::BF16;
        type Acc = f32;
        fn acc(v: f64) -> f32 {
            v as f32
        }
    }

    /// Calls `f::<T>(args)` for the element type `dtype` (f32, f64 or bf16).
    macro_rules! by_dtype {
        ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
            match $dtype {
                DType::F32 => $f::<f32>($($arg),*),
                DType::F64 => $f::<f64>($($arg),*),
                DType::BF16 => $f::<half::bf16>($($arg),*),
                other => bail(format!(
                    "dtype {other:?} is not supported on CUDA (f32, f64, bf16)"
                )),
            }
        };
    }

    /// Dropout: element `i` kept (scaled by `1 / (1 - p)`) unless its SplitMix64 draw is
    /// below `threshold` — the CPU's mask, bit for bit.
    pub fn dropout(
        s: &CudaStorage,
        l: &Layout,
        p: f64,
        seed: u64,
        threshold: u64,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        by_dtype!(s.dtype(), dropout_t(s, l, p, seed, threshold))
    }

    fn dropout_t<T: Float>(
        s: &CudaStorage,
        l: &Layout,
        p: f64,
        seed: u64,
        threshold: u64,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s.device();
        let x = view::<T>(s, l, "dropout")?;
        let n = l.shape().elem_count();
        // SAFETY: every element is written by the kernel below (n > 0) or there are none.
        let y = unsafe { dev.alloc::<T>(n.max(1)) }?;
        if n > 0 {
            let f = dev.get_or_load_custom_func(&kernel::<T>("juris_dropout"), MODULE, PTX)?;
            let (n64, keep) = (n as u64, T::acc(1.0 / (1.0 - p)));
            let mut b = f.builder();
            b.arg(&x)
                .arg(&y)
                .arg(&n64)
                .arg(&seed)
                .arg(&threshold)
                .arg(&keep);
            let cfg = LaunchConfig::for_num_elems(n.min(1 << 24) as u32);
            // SAFETY: argument types and order match the kernel's signature.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok(output(dev, y, l))
    }

    /// Exact GELU of bf16 values, computed in f32 and rounded once (the GELU training
    /// node's bf16 forward).
    pub fn gelu_erf_bf16(s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s.device();
        let x = view::<half::bf16>(s, l, "gelu")?;
        let n = l.shape().elem_count();
        // SAFETY: every element is written by the kernel below (n > 0) or there are none.
        let y = unsafe { dev.alloc::<half::bf16>(n.max(1)) }?;
        if n > 0 {
            let f = dev.get_or_load_custom_func("juris_gelu_erf_bf16", MODULE, PTX)?;
            let n64 = n as u64;
            let mut b = f.builder();
            b.arg(&x).arg(&y).arg(&n64);
            let cfg = LaunchConfig::for_num_elems(n.min(1 << 24) as u32);
            // SAFETY: argument types and order match the kernel's signature.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok(output(dev, y, l))
    }

    /// `softmax(scores · scale + mask)` over the last dimension; `mask` is a broadcast view
    /// of the scores' shape.
    pub fn masked_softmax(
        s: &CudaStorage,
        l: &Layout,
        mask: &Tensor,
        scale: f64,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        by_dtype!(s.dtype(), masked_softmax_t(s, l, mask, scale))
    }

    fn masked_softmax_t<T: Float>(
        s: &CudaStorage,
        l: &Layout,
        mask: &Tensor,
        scale: f64,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s.device();
        let x = view::<T>(s, l, "masked softmax")?;
        let (ms, ml) = mask.storage_and_layout();
        let Storage::Cuda(mc) = &*ms else {
            return bail("masked softmax: mask and scores on different devices".into());
        };
        let (dims, st) = (ml.dims(), ml.stride());
        if dims.len() != 4 || l.dims() != dims {
            return bail("masked softmax: scores must be [batch, heads, q, k]".into());
        }
        let m = mc.as_cuda_slice::<T::Acc>()?;
        let n = dims[3];
        let rows = l.shape().elem_count() / n.max(1);
        // SAFETY: the kernel writes every element of every row.
        let y = unsafe { dev.alloc::<T>((rows * n).max(1)) }?;
        if rows * n > 0 {
            let f =
                dev.get_or_load_custom_func(&kernel::<T>("juris_masked_softmax"), MODULE, PTX)?;
            let [rows64, n64, d1, d2, moff, s0, s1, s2, s3] = [
                rows,
                n,
                dims[1],
                dims[2],
                ml.start_offset(),
                st[0],
                st[1],
                st[2],
                st[3],
            ]
            .map(|v| v as u64);
            let scale = T::acc(scale);
            let mut b = f.builder();
            b.arg(&x)
                .arg(m)
                .arg(&y)
                .arg(&rows64)
                .arg(&n64)
                .arg(&d1)
                .arg(&d2);
            b.arg(&moff).arg(&s0).arg(&s1).arg(&s2).arg(&s3).arg(&scale);
            // SAFETY: argument types and order match the kernel's signature; the mask's
            // strides address only its own elements.
            unsafe { b.launch(rows_config(rows)) }.w()?;
        }
        Ok(output(dev, y, l))
    }

    /// LayerNorm (`b` given) or RMSNorm over the last dimension with frozen `w` (and `b`).
    pub fn frozen_norm(
        s: &CudaStorage,
        l: &Layout,
        w: &Tensor,
        b: Option<&Tensor>,
        eps: f64,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        by_dtype!(s.dtype(), frozen_norm_t(s, l, w, b, eps))
    }

    fn frozen_norm_t<T: Float>(
        s: &CudaStorage,
        l: &Layout,
        w: &Tensor,
        b: Option<&Tensor>,
        eps: f64,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s.device();
        let x = view::<T>(s, l, "norm")?;
        let w = param::<T>(w)?;
        let n = w.elem_count();
        if l.dims().last() != Some(&n) {
            return bail(format!("norm: weight of {n} for rows of {:?}", l.dims()));
        }
        // RMSNorm passes the weight again in the bias's place; the kernel does not read it.
        let centred = i32::from(b.is_some());
        let b = match b {
            Some(b) => param::<T>(b)?,
            None => w.clone(),
        };
        if b.elem_count() != n {
            return bail(format!("norm: bias of {} for rows of {n}", b.elem_count()));
        }
        let (ws, wl) = w.storage_and_layout();
        let (bs, bl) = b.storage_and_layout();
        let (Storage::Cuda(wc), Storage::Cuda(bc)) = (&*ws, &*bs) else {
            return bail("norm: weights and input on different devices".into());
        };
        let (wv, bv) = (
            view::<T>(wc, wl, "norm weight")?,
            view::<T>(bc, bl, "norm bias")?,
        );
        let rows = l.shape().elem_count() / n.max(1);
        // SAFETY: the kernel writes every element of every row.
        let y = unsafe { dev.alloc::<T>((rows * n).max(1)) }?;
        if rows * n > 0 {
            let f = dev.get_or_load_custom_func(&kernel::<T>("juris_frozen_norm"), MODULE, PTX)?;
            let (rows64, n64, eps) = (rows as u64, n as u64, T::acc(eps));
            let mut bld = f.builder();
            bld.arg(&x)
                .arg(&wv)
                .arg(&bv)
                .arg(&y)
                .arg(&rows64)
                .arg(&n64)
                .arg(&centred);
            bld.arg(&eps);
            // SAFETY: argument types and order match the kernel's signature.
            unsafe { bld.launch(rows_config(rows)) }.w()?;
        }
        Ok(output(dev, y, l))
    }

    /// One fused AdamW update (`crate::adamw`): `[3, n]` = new parameter, first and second
    /// moments from the parameter, gradient and `[2, n]` state; f32 or f64 (master weights).
    pub fn adamw(
        args: [(&CudaStorage, &Layout); 3],
        step: &crate::adamw::AdamWStep,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        match args[0].0.dtype() {
            DType::F32 => adamw_t::<f32>(args, step),
            DType::F64 => adamw_t::<f64>(args, step),
            other => bail(format!("adamw: dtype {other:?} on CUDA (want f32 or f64)")),
        }
    }

    fn adamw_t<T: Float<Acc = T>>(
        [(p, pl), (g, gl), (st, sl)]: [(&CudaStorage, &Layout); 3],
        step: &crate::adamw::AdamWStep,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = p.device();
        let (pv, gv, sv) = (
            view::<T>(p, pl, "adamw")?,
            view::<T>(g, gl, "adamw")?,
            view::<T>(st, sl, "adamw")?,
        );
        let n = pl.shape().elem_count();
        // SAFETY: the kernel writes all 3n elements (n > 0) or there are none.
        let y = unsafe { dev.alloc::<T>((3 * n).max(1)) }?;
        if n > 0 {
            let f = dev.get_or_load_custom_func(&kernel::<T>("juris_adamw"), MODULE, PTX)?;
            let c = step.consts(T::acc);
            let (n64, scaled) = (n as u64, i32::from(c.scaled));
            let mut b = f.builder();
            b.arg(&pv).arg(&gv).arg(&sv).arg(&y).arg(&n64).arg(&scaled);
            b.arg(&c.beta1)
                .arg(&c.one_minus_beta1)
                .arg(&c.beta2)
                .arg(&c.one_minus_beta2);
            b.arg(&c.inv_bc1)
                .arg(&c.inv_bc2)
                .arg(&c.eps)
                .arg(&c.decay)
                .arg(&c.lr);
            b.arg(&c.grad_scale);
            let cfg = LaunchConfig::for_num_elems(n.min(1 << 24) as u32);
            // SAFETY: argument types and order match the kernel's signature.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev.clone()),
            Shape::from((3, n)),
        ))
    }

    /// One backward op of `train_grads` (softmax, norm or GELU) as one kernel.
    pub(crate) fn grad(
        op: &crate::train_grads::Grad,
        a: (&CudaStorage, &Layout),
        g: (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        by_dtype!(a.0.dtype(), grad_t(op, a, g))
    }

    fn grad_t<T: Float>(
        op: &crate::train_grads::Grad,
        (a, al): (&CudaStorage, &Layout),
        (g, gl): (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        use crate::train_grads::Grad;
        let dev = a.device();
        let (av, gv) = (view::<T>(a, al, "grad")?, view::<T>(g, gl, "grad")?);
        let total = al.shape().elem_count();
        let n = al.dims().last().copied().unwrap_or(1).max(1);
        let rows = total / n;
        // SAFETY: each kernel writes every element (total > 0) or there are none.
        let y = unsafe { dev.alloc::<T>(total.max(1)) }?;
        if total == 0 {
            return Ok(output(dev, y, al));
        }
        let (rows64, n64, total64) = (rows as u64, n as u64, total as u64);
        match op {
            Grad::Softmax { scale } => {
                let f =
                    dev.get_or_load_custom_func(&kernel::<T>("juris_softmax_grad"), MODULE, PTX)?;
                let scale = T::acc(*scale);
                let mut b = f.builder();
                b.arg(&av)
                    .arg(&gv)
                    .arg(&y)
                    .arg(&rows64)
                    .arg(&n64)
                    .arg(&scale);
                // SAFETY: argument types and order match the kernel's signature.
                unsafe { b.launch(rows_config(rows)) }.w()?;
            }
            Grad::Norm { w, centred, eps } => {
                let w = param::<T>(&w.to_device(&Device::Cuda(dev.clone()))?)?;
                if w.elem_count() != n {
                    return bail(format!(
                        "norm backward: weight of {} for rows of {n}",
                        w.elem_count()
                    ));
                }
                let (ws, wl) = w.storage_and_layout();
                let Storage::Cuda(wc) = &*ws else {
                    return bail("norm backward: weight not on the GPU".into());
                };
                let wv = view::<T>(wc, wl, "norm weight")?;
                let f =
                    dev.get_or_load_custom_func(&kernel::<T>("juris_norm_grad"), MODULE, PTX)?;
                let (centred, eps) = (i32::from(*centred), T::acc(*eps));
                let mut b = f.builder();
                b.arg(&av).arg(&gv).arg(&wv).arg(&y).arg(&rows64).arg(&n64);
                b.arg(&centred).arg(&eps);
                // SAFETY: argument types and order match the kernel's signature.
                unsafe { b.launch(rows_config(rows)) }.w()?;
            }
            Grad::Gelu => {
                let f =
                    dev.get_or_load_custom_func(&kernel::<T>("juris_gelu_grad"), MODULE, PTX)?;
                let mut b = f.builder();
                b.arg(&av).arg(&gv).arg(&y).arg(&total64);
                let cfg = LaunchConfig::for_num_elems(total.min(1 << 24) as u32);
                // SAFETY: argument types and order match the kernel's signature.
                unsafe { b.launch(cfg) }.w()?;
            }
        }
        Ok(output(dev, y, al))
    }
}

/// What the bf16 tests of the fused ops share: bf16-representable inputs and the
/// tolerance of a bf16 result against the f32 op's.
///
/// The tolerance: bf16 keeps 8 significant bits, so rounding to nearest moves a value by at
/// most `U = 2⁻⁸` of its magnitude. An op that widens bf16 inputs to f32, computes in f32 and
/// rounds each output once gives, on the same (bf16-representable) inputs, the f32 op's
/// result rounded: on the CPU exactly that (the same f32 loop), on CUDA that within the f32
/// kernels' own reordering (~1e-6 relative). A chain of `k` roundings (a bf16 intermediate
/// feeding the next product) stays within about `k·U` of the largest value involved.
#[cfg(test)]
pub(crate) mod bf16_check {
    use candle_core::{DType, Device, Tensor};

    /// bf16's unit roundoff, 2⁻⁸.
    pub const U: f64 = 1.0 / 256.0;

    /// Values in `[-scale, scale)` rounded to bf16, as an f32 tensor and a bf16 tensor with
    /// the same values, on `device`.
    pub fn values(shape: &[usize], seed: u64, scale: f64, device: &Device) -> (Tensor, Tensor) {
        let mut rng = crate::lora::SplitMix64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| half::bf16::from_f64((rng.next_f64() * 2.0 - 1.0) * scale).to_f32())
            .collect();
        let wide = Tensor::from_vec(v, shape, device).unwrap();
        let narrow = wide.to_dtype(DType::BF16).unwrap();
        (wide, narrow)
    }

    fn host(t: &Tensor) -> Vec<f32> {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// `narrow` is bf16 and holds `wide` rounded to bf16, bit for bit.
    pub fn assert_rounded(narrow: &Tensor, wide: &Tensor, what: &str) {
        assert_eq!(narrow.dtype(), DType::BF16, "{what}: dtype");
        let want: Vec<u16> = host(wide)
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect();
        let got: Vec<u16> = host(narrow)
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect();
        let bad = want.iter().zip(&got).filter(|(a, b)| a != b).count();
        assert_eq!(
            bad,
            0,
            "{what}: {bad} of {} values are not the f32 result rounded",
            want.len()
        );
    }

    /// `narrow` is bf16 and every value is within `k·U·|wide|` of `wide`'s, plus `k·U` of
    /// the largest `|wide|` times `floor` (a small share for values that cancel to near
    /// zero in a composite) and 1e-6 of it (f32 reordering).
    pub fn assert_within(narrow: &Tensor, wide: &Tensor, k: f64, floor: f64, what: &str) {
        assert_eq!(narrow.dtype(), DType::BF16, "{what}: dtype");
        let (a, b) = (host(narrow), host(wide));
        assert_eq!(a.len(), b.len(), "{what}: sizes");
        let top = b.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
        for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
            let (x, y) = (x as f64, y as f64);
            let tol = k * U * (y.abs() + floor * top) + 1e-6 * top;
            assert!(
                (x - y).abs() <= tol,
                "{what}[{i}]: bf16 {x} vs f32 {y} (tolerance {tol:.3e})"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::SplitMix64;
    use candle_core::{Device, Var, D};

    fn t(v: Vec<f64>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f64) {
        let a: Vec<f64> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f64> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "[{i}] {x} vs {y}");
        }
    }

    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut r = SplitMix64(seed);
        (0..n).map(|_| r.next_f64() * 4.0 - 2.0).collect()
    }

    #[test]
    fn stream_is_splitmix64() {
        let mut r = SplitMix64(99);
        for i in 0..10 {
            assert_eq!(stream_u64(99, i), r.next_u64());
        }
    }

    /// Forward and gradient equal the composed candle ops they replace (f64).
    #[test]
    fn masked_softmax_and_layer_norm_match_composed_ops() {
        let (b, h, s) = (2, 3, 5);
        let x = Var::from_tensor(&t(values(b * h * s * s, 1), &[b, h, s, s])).unwrap();
        let mut mask = vec![0f64; b * s];
        mask[s - 1] = f64::NEG_INFINITY;
        mask[s + 3] = -1e30;
        let mask = t(mask, &[b, 1, 1, s]);
        let probe = t(values(b * h * s * s, 2), &[b, h, s, s]);
        let fused = masked_softmax(x.as_tensor(), &mask, 0.3).unwrap();
        let z = (x.as_tensor() * 0.3).unwrap().broadcast_add(&mask).unwrap();
        let composed = candle_nn::ops::softmax(&z, D::Minus1).unwrap();
        close(&fused, &composed, 1e-12);
        let gf = (&fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (&composed * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(gf.get(&x).unwrap(), gc.get(&x).unwrap(), 1e-12);

        let hid = 6;
        let x = Var::from_tensor(&t(values(4 * hid, 3), &[2, 2, hid])).unwrap();
        let w = t(values(hid, 4), &[hid]);
        let bias = t(values(hid, 5), &[hid]);
        let probe = t(values(4 * hid, 6), &[2, 2, hid]);
        let fused = layer_norm(x.as_tensor(), &w, &bias, 1e-5).unwrap();
        let composed = candle_nn::ops::layer_norm_slow(x.as_tensor(), &w, &bias, 1e-5).unwrap();
        close(&fused, &composed, 1e-12);
        let gf = (&fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (&composed * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(gf.get(&x).unwrap(), gc.get(&x).unwrap(), 1e-10);

        let fused = rms_norm(x.as_tensor(), &w, 1e-5).unwrap();
        let composed = candle_nn::ops::rms_norm_slow(x.as_tensor(), &w, 1e-5).unwrap();
        close(&fused, &composed, 1e-12);
        let gf = (&fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (&composed * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(gf.get(&x).unwrap(), gc.get(&x).unwrap(), 1e-10);
    }

    /// The mask is `SplitMix64(seed).next_f64() < p` per element, the gradient applies the
    /// same mask, and another seed draws another mask.
    #[test]
    fn dropout_is_seeded_and_its_gradient_uses_the_same_mask() {
        let n = 40_000;
        let x = Var::from_tensor(&t(vec![1.0; n], &[200, 200])).unwrap();
        let y: Vec<f64> = dropout(x.as_tensor(), 0.25, 7)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut r = SplitMix64(7);
        for &v in &y {
            let want = if r.next_f64() < 0.25 { 0.0 } else { 1.0 / 0.75 };
            assert_eq!(v, want);
        }
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.25).abs() < 0.01, "{dropped}");
        let g = dropout(x.as_tensor(), 0.25, 7)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g: Vec<f64> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(g, y);
        let other: Vec<f64> = dropout(x.as_tensor(), 0.25, 8)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(other, y);
    }

    /// The CUDA kernels give the CPU forwards' values (dropout: the same mask, bit for bit)
    /// and the same gradients, in f32 and f64, on awkward shapes and broadcast masks. Built
    /// only with the `cuda` feature; says so and passes when no GPU is present.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_forwards_equal_the_cpu_ones() {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return;
        };
        for dtype in [DType::F32, DType::F64] {
            let tol = if dtype == DType::F32 { 2e-6 } else { 1e-12 };
            let on = |v: Vec<f64>, shape: &[usize], d: &Device| {
                t(v, shape).to_dtype(dtype).unwrap().to_device(d).unwrap()
            };
            let back = |x: &Tensor| {
                x.to_device(&Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
            };
            // Dropout: identical masks, identical gradients.
            let shape = [3, 5, 71];
            let v = values(3 * 5 * 71, 3);
            let (xc, xg) = (on(v.clone(), &shape, &Device::Cpu), on(v, &shape, &gpu));
            let (yc, yg) = (
                dropout(&xc, 0.3, 11).unwrap(),
                dropout(&xg, 0.3, 11).unwrap(),
            );
            close(&back(&yg), &back(&yc), 0.0);
            // Masked softmax under a key mask [b, 1, 1, k] and a causal one [b, 1, q, k].
            let (b, h, q, k) = (2, 3, 5, 37);
            let scores = values(b * h * q * k, 5);
            let keys: Vec<f64> = (0..b * k)
                .map(|i| if i % k > 30 - i / k { -1e9 } else { 0.0 })
                .collect();
            let causal: Vec<f64> = (0..b * q * k)
                .map(|i| {
                    if i % k > (i / k) % q + 20 {
                        f64::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            for (mask, mshape) in [(keys, vec![b, 1, 1, k]), (causal, vec![b, 1, q, k])] {
                let run = |d: &Device| {
                    let x = Var::from_tensor(&on(scores.clone(), &[b, h, q, k], d)).unwrap();
                    let m = on(mask.clone(), &mshape, d);
                    let y = masked_softmax(x.as_tensor(), &m, 0.125).unwrap();
                    let w = on(values(b * h * q * k, 9), &[b, h, q, k], d);
                    let g = (&y * w).unwrap().sum_all().unwrap().backward().unwrap();
                    (back(&y), back(g.get(&x).unwrap()))
                };
                let ((yc, gc), (yg, gg)) = (run(&Device::Cpu), run(&gpu));
                close(&yg, &yc, tol);
                close(&gg, &gc, tol);
            }
            // LayerNorm and RMSNorm over rows of 130.
            let (rows, n) = (7, 130);
            let x = values(rows * n, 13);
            let (w, bias) = (values(n, 17), values(n, 19));
            for centred in [true, false] {
                let run = |d: &Device| {
                    let xv = Var::from_tensor(&on(x.clone(), &[rows, n], d)).unwrap();
                    let (w, bias) = (on(w.clone(), &[n], d), on(bias.clone(), &[n], d));
                    let y = if centred {
                        layer_norm(xv.as_tensor(), &w, &bias, 1e-5).unwrap()
                    } else {
                        rms_norm(xv.as_tensor(), &w, 1e-6).unwrap()
                    };
                    let g = (&y * &y).unwrap().sum_all().unwrap().backward().unwrap();
                    (back(&y), back(g.get(&xv).unwrap()))
                };
                let ((yc, gc), (yg, gg)) = (run(&Device::Cpu), run(&gpu));
                close(&yg, &yc, tol * 10.0);
                close(&gg, &gc, tol * 10.0);
            }
        }
    }

    /// The bf16 forwards of dropout, masked softmax (key and causal masks), LayerNorm,
    /// RMSNorm and GELU on bf16 inputs equal the f32 forwards' results rounded to bf16 (on
    /// the CPU bit for bit; on CUDA within [`bf16_check::assert_within`] with `k = 1`), and
    /// the gradients through them arrive in bf16 with the same relation, except the
    /// softmax's, whose backward reads the (rounded) probabilities: 3 roundings.
    fn bf16_forwards_match_f32(device: &Device) {
        use super::bf16_check::{assert_rounded, assert_within, values};
        let exact = device.is_cpu();
        let same = |narrow: &Tensor, wide: &Tensor, what: &str| {
            if exact {
                assert_rounded(narrow, wide, what)
            } else {
                assert_within(narrow, wide, 1.0, 0.0, what)
            }
        };
        // One forward of `f` at bf16 and at f32 with the same inputs; the loss is Σ y ⊙ w
        // (w bf16-representable, so both backwards start from the same gradient).
        let run = |shape: &[usize], seed: u64, f: &dyn Fn(&Tensor) -> Tensor| {
            let (xw, xn) = values(shape, seed, 2.0, device);
            let (ww, wn) = values(shape, seed + 100, 1.0, device);
            let mut out = Vec::new();
            for (x, w) in [(xn, wn), (xw, ww)] {
                let v = Var::from_tensor(&x).unwrap();
                let y = f(v.as_tensor());
                let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                out.push((y, g.get(v.as_tensor()).unwrap().clone()));
            }
            let (wide, narrow) = (out.pop().unwrap(), out.pop().unwrap());
            (narrow, wide)
        };
        let shape = [3, 5, 70];
        let ((y, g), (yw, gw)) = run(&shape, 1, &|x| dropout(x, 0.3, 11).unwrap());
        same(&y, &yw, "dropout");
        same(&g, &gw, "dropout gradient");
        let ((y, g), (yw, gw)) = run(&shape, 2, &|x| gelu_erf(x).unwrap());
        // The CPU's bf16 GELU is candle's (computed in f64), its f32 one in f32.
        assert_within(&y, &yw, 1.0, 0.0, "gelu");
        same(&g, &gw, "gelu gradient");
        let (n, wseed) = (70, 7);
        let (lw, ln) = values(&[n], wseed, 1.0, device);
        let (bw, bn) = values(&[n], wseed + 1, 0.5, device);
        for centred in [true, false] {
            let norm = |x: &Tensor| {
                let (w, b) = if x.dtype() == DType::BF16 {
                    (&ln, &bn)
                } else {
                    (&lw, &bw)
                };
                if centred {
                    layer_norm(x, w, b, 1e-5).unwrap()
                } else {
                    rms_norm(x, w, 1e-6).unwrap()
                }
            };
            let ((y, g), (yw, gw)) = run(&shape, 3, &norm);
            same(&y, &yw, &format!("norm (centred {centred})"));
            same(&g, &gw, &format!("norm gradient (centred {centred})"));
        }
        let (b, h, q, k) = (2, 3, 5, 37);
        let keys: Vec<f32> = (0..b * k)
            .map(|i| {
                if i % k > 30 - i / k {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let causal: Vec<f32> = (0..b * q * k)
            .map(|i| if i % k > (i / k) % q + 20 { -1e30 } else { 0.0 })
            .collect();
        for (mask, mshape) in [(keys, vec![b, 1, 1, k]), (causal, vec![b, 1, q, k])] {
            let mask = Tensor::from_vec(mask, mshape, device).unwrap();
            let ((y, g), (yw, gw)) = run(&[b, h, q, k], 4, &|x| {
                masked_softmax(x, &mask, 0.125).unwrap()
            });
            same(&y, &yw, "masked softmax");
            // Σ g ⊙ p moves with every rounded probability, by up to U·max|g|: an error
            // of the row, not of the element, hence the floor of max|gradient|.
            assert_within(&g, &gw, 3.0, 1.0, "masked softmax gradient");
        }
    }

    #[test]
    fn bf16_forwards_match_f32_on_the_cpu() {
        bf16_forwards_match_f32(&Device::Cpu);
    }

    /// The same on CUDA: the bf16 kernels against the f32 kernels. Built only with the
    /// `cuda` feature; says so and passes without a GPU.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_bf16_forwards_match_f32() {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return;
        };
        bf16_forwards_match_f32(&gpu);
    }

    /// The CUDA bf16 kernels give the CPU's bf16 results (each the f32 result rounded, so
    /// at most one bf16 step apart where the f32 values straddle a rounding boundary).
    /// Built only with the `cuda` feature; passes without a GPU.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_bf16_forwards_equal_the_cpu_ones() {
        use super::bf16_check::{assert_within, values};
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return;
        };
        let (_, x) = values(&[4, 3, 9, 130], 21, 3.0, &Device::Cpu);
        let (_, w) = values(&[130], 22, 1.0, &Device::Cpu);
        let (_, bias) = values(&[130], 23, 1.0, &Device::Cpu);
        let keys: Vec<f32> = (0..4 * 130)
            .map(|i| {
                if i % 130 > 100 {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(keys, (4, 1, 1, 130), &Device::Cpu).unwrap();
        type Op<'a> = Box<dyn Fn(&Tensor, &Device) -> Tensor + 'a>;
        let ops: [(&str, Op); 5] = [
            ("dropout", Box::new(|x, _| dropout(x, 0.2, 5).unwrap())),
            ("gelu", Box::new(|x, _| gelu_erf(x).unwrap())),
            (
                "layer norm",
                Box::new(|x, d| {
                    let on = |t: &Tensor| t.to_device(d).unwrap();
                    layer_norm(x, &on(&w), &on(&bias), 1e-5).unwrap()
                }),
            ),
            (
                "rms norm",
                Box::new(|x, d| rms_norm(x, &w.to_device(d).unwrap(), 1e-6).unwrap()),
            ),
            (
                "masked softmax",
                Box::new(|x, d| masked_softmax(x, &mask.to_device(d).unwrap(), 0.3).unwrap()),
            ),
        ];
        for (what, op) in ops {
            let cpu = op(&x, &Device::Cpu);
            let cuda = op(&x.to_device(&gpu).unwrap(), &gpu);
            assert_within(&cuda, &cpu.to_dtype(DType::F32).unwrap(), 2.0, 0.0, what);
        }
    }
}
