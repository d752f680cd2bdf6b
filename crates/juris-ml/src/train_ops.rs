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
//! Forwards run on the CPU as loops here and on CUDA through candle's own kernels (the fused
//! softmax and LayerNorm) on a copy of the input; backwards are composed of candle ops and
//! so run anywhere.
//!
//! Dropout masks come from a counter-based stream: element `i` of a tensor dropped with seed
//! `s` keeps or drops by the `i`-th output of SplitMix64 seeded with `s`, computed
//! directly from `i` (so rows are drawn in parallel, and a recomputation or a resumed run
//! draws the same mask). On CUDA the mask is drawn on the device by cuRAND's Philox
//! generator seeded with `s` — reproducible on the device, not equal to the CPU's mask.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor, D};
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
    candle_core::Error::Msg(format!("{op}: dtype {dtype:?} is not supported (f32, f64)"))
}

/// The contiguous slice a fused op reads (inputs are made contiguous by the wrappers).
fn contiguous<'a, T>(v: &'a [T], l: &Layout, op: &str) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => Err(candle_core::Error::Msg(format!(
            "{op}: the input is not contiguous"
        ))),
    }
}

/// Fresh contiguous storage starting at offset 0 (what the CUDA forwards copy from).
fn packed(x: &Tensor) -> Result<Tensor> {
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
struct Dropout {
    p: f64,
    seed: u64,
}

impl Dropout {
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
        let x = cuda::tensor_of(s, l)?;
        let u = cuda::uniform(s, l.shape(), self.seed)?;
        // cuRAND's uniforms lie in (0, 1]: `u > p` keeps with probability 1 - p.
        let mask = (u.gt(self.p)?.to_dtype(x.dtype())? * (1.0 / (1.0 - self.p)))?;
        cuda::storage_of(&(x * mask)?)
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
/// `scores` (the mask is a constant); keeps only `scores` and the probabilities.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = packed(scores)?;
    let mask = mask
        .detach()
        .to_dtype(scores.dtype())?
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
        let x = cuda::tensor_of(s, l)?;
        let z = (x * self.scale)?.broadcast_add(&self.mask)?;
        cuda::storage_of(&candle_nn::ops::softmax_last_dim(&z)?)
    }

    fn bwd(&self, _arg: &Tensor, p: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // d softmax: p ⊙ (g − Σ_k g ⊙ p), times the scale of the scores.
        let dot = (g * p)?.sum_keepdim(D::Minus1)?;
        Ok(Some(((p * g.broadcast_sub(&dot)?)? * self.scale)?))
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
        let out = match s {
            CpuStorage::F32(v) => {
                let w = self.w.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let b = match &self.b {
                    Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                    None => None,
                };
                CpuStorage::F32(self.rows(contiguous(v, l, what)?, &w, b.as_deref()))
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
        let x = cuda::tensor_of(s, l)?;
        let y = match &self.b {
            Some(b) => candle_nn::ops::layer_norm(&x, &self.w, b, self.eps as f32)?,
            None => candle_nn::ops::rms_norm(&x, &self.w.to_dtype(x.dtype())?, self.eps as f32)?,
        };
        cuda::storage_of(&y)
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // dx = r · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)), ĝ = g ⊙ w, x̂ = x_c · r,
        // r = 1 / sqrt(mean(x_c²) + eps); x_c = x − mean(x) and the mean(ĝ) term only for
        // LayerNorm (RMSNorm does not centre).
        let xc = if self.centred() {
            x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?
        } else {
            x.clone()
        };
        let r = (xc.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let xhat = xc.broadcast_mul(&r)?;
        let gw = g.broadcast_mul(&self.w.to_dtype(g.dtype())?)?;
        let gw_c = if self.centred() {
            gw.broadcast_sub(&gw.mean_keepdim(D::Minus1)?)?
        } else {
            gw.clone()
        };
        let inner = gw_c.sub(&xhat.broadcast_mul(&(&gw * &xhat)?.mean_keepdim(D::Minus1)?)?)?;
        Ok(Some(inner.broadcast_mul(&r)?))
    }
}

/// The float arithmetic the CPU loops need, for f32 and f64.
mod num_like {
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
            }
        };
    }
    float!(f32);
    float!(f64);
}

/// The CUDA forwards: candle's kernels on a tensor copied from the op's input storage,
/// and cuRAND for dropout uniforms.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::curand::{result as curand, sys};
    use candle_core::cuda_backend::cudarc::driver::DevicePtrMut;
    use candle_core::op::BackpropOp;
    use candle_core::{CudaStorage, Layout, Shape, Storage, Tensor};

    /// The op's input as a tensor of its own (a device copy; inputs start at offset 0 and
    /// are contiguous, which the wrappers ensure).
    pub fn tensor_of(s: &CudaStorage, l: &Layout) -> candle_core::Result<Tensor> {
        if !l.is_contiguous() || l.start_offset() != 0 {
            candle_core::bail!("fused training op: the input must be packed")
        }
        Ok(Tensor::from_storage(
            Storage::Cuda(s.try_clone(l)?),
            l.shape().clone(),
            BackpropOp::none(),
            false,
        ))
    }

    /// The storage of a result computed with candle ops (a device copy).
    pub fn storage_of(t: &Tensor) -> candle_core::Result<(CudaStorage, Shape)> {
        let t = t.contiguous()?;
        let (st, l) = t.storage_and_layout();
        match &*st {
            Storage::Cuda(c) if l.start_offset() == 0 => Ok((c.try_clone(l)?, l.shape().clone())),
            _ => candle_core::bail!("fused training op: expected a packed CUDA result"),
        }
    }

    /// Uniforms in (0, 1] of `shape` (f32) from cuRAND's Philox generator seeded with
    /// `seed`: a counter-based generator, so seeding per call costs nothing (candle's
    /// `set_seed` builds an XORWOW generator whose state setup runs on every seed).
    pub fn uniform(like: &CudaStorage, shape: &Shape, seed: u64) -> candle_core::Result<Tensor> {
        let dev = like.device().clone();
        let stream = dev.cuda_stream();
        let n = shape.elem_count();
        let wrap = |e: curand::CurandError| candle_core::Error::Msg(format!("cuRAND: {e:?}"));
        let mut buf = dev.alloc_zeros::<f32>(n.max(1))?;
        let gen =
            curand::create_generator_kind(sys::curandRngType_t::CURAND_RNG_PSEUDO_PHILOX4_32_10)
                .map_err(wrap)?;
        // SAFETY: `gen` was just created and is destroyed below on every path; `buf` holds
        // `n` f32 values on the stream the generator runs on.
        let filled = unsafe {
            curand::set_stream(gen, stream.cu_stream() as _)
                .and_then(|_| curand::set_seed(gen, seed))
                .and_then(|_| curand::set_offset(gen, 0))
                .and_then(|_| {
                    let (ptr, _record) = buf.device_ptr_mut(&stream);
                    curand::generate::uniform_f32(gen, ptr as *mut f32, n)
                })
        };
        // SAFETY: created above, not used after this.
        let destroyed = unsafe { curand::destroy_generator(gen) };
        filled.map_err(wrap)?;
        destroyed.map_err(wrap)?;
        let storage = CudaStorage::wrap_cuda_slice(buf, dev);
        Tensor::from_storage(Storage::Cuda(storage), n.max(1), BackpropOp::none(), false)
            .narrow(0, 0, n)?
            .reshape(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::SplitMix64;
    use candle_core::{Device, Var};

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
}
