//! One AdamW update of one parameter as a single op: the gradient's clip scale, both moments,
//! bias correction, decoupled weight decay and the step, in one pass over the elements (one
//! CUDA kernel, one launch).
//!
//! Why: composed of candle ops the update is ~13 ops per parameter, each a launch and an
//! allocation; a LoRA step over MiniLM's 72 adapter matrices spent ~1,000 launches on it
//! (19 % of a batch-32 step on the H100). The arithmetic here is the composed form's,
//! operation for operation and rounding for rounding (each candle `affine` is one multiply
//! then one add of its constant), so the fused update equals it bit for bit — on the CPU and,
//! through the same correctly rounded operations, on CUDA.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// The constants of one update, as the composed form passes them to candle (`f64`, cast to
/// the tensors' type where they meet them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Learning rate of this update.
    pub lr: f64,
    /// `1 - β₁ᵗ`.
    pub bias_correction1: f64,
    /// `1 - β₂ᵗ`.
    pub bias_correction2: f64,
    /// Gradient-clipping factor applied to the gradient first (`None`: not clipped).
    pub grad_scale: Option<f64>,
}

/// The per-element constants in the order the kernels take them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Consts<T> {
    pub beta1: T,
    pub one_minus_beta1: T,
    pub beta2: T,
    pub one_minus_beta2: T,
    pub inv_bc1: T,
    pub inv_bc2: T,
    pub eps: T,
    pub decay: T,
    pub lr: T,
    pub grad_scale: T,
    pub scaled: bool,
}

impl AdamWStep {
    pub(crate) fn consts<T: Copy>(&self, cast: impl Fn(f64) -> T) -> Consts<T> {
        Consts {
            beta1: cast(self.beta1),
            one_minus_beta1: cast(1.0 - self.beta1),
            beta2: cast(self.beta2),
            one_minus_beta2: cast(1.0 - self.beta2),
            inv_bc1: cast(1.0 / self.bias_correction1),
            inv_bc2: cast(1.0 / self.bias_correction2),
            eps: cast(self.eps),
            decay: cast(1.0 - self.lr * self.weight_decay),
            lr: cast(self.lr),
            grad_scale: cast(self.grad_scale.unwrap_or(1.0)),
            scaled: self.grad_scale.is_some(),
        }
    }
}

/// One update: `p` the parameter, `g` its gradient (same shape), `state` `[2, numel]` the
/// first and second moments. Returns `[3, numel]`: the new parameter, first and second
/// moments. f32 and f64.
pub fn adamw_step(p: &Tensor, g: &Tensor, state: &Tensor, step: &AdamWStep) -> Result<Tensor> {
    let n = p.elem_count();
    if g.elem_count() != n || state.dims() != [2, n] {
        return Err(crate::error::MlError::Unsupported(format!(
            "adamw: parameter of {n} elements, gradient of {}, state {:?} (want [2, {n}])",
            g.elem_count(),
            state.dims()
        )));
    }
    let flat = |t: &Tensor| -> Result<Tensor> { Ok(t.detach().flatten_all()?.contiguous()?) };
    let (p, g) = (flat(p)?, flat(g)?);
    let state = state.detach().contiguous()?;
    if !supports(p.dtype()) {
        return composed(&p, &g, &state, step);
    }
    Ok(p.apply_op3_no_bwd(&g, &state, &Op(*step))?)
}

/// The same update composed of candle ops (any dtype; the fused op's reference).
pub fn composed(p: &Tensor, g: &Tensor, state: &Tensor, s: &AdamWStep) -> Result<Tensor> {
    let g = match s.grad_scale {
        Some(k) => (g * k)?,
        None => g.clone(),
    };
    let (m, v) = (state.get(0)?, state.get(1)?);
    let m = ((m * s.beta1)? + (&g * (1.0 - s.beta1))?)?;
    let v = ((v * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?;
    let denom = ((&v / s.bias_correction2)?.sqrt()? + s.eps)?;
    let decayed = (p * (1.0 - s.lr * s.weight_decay))?;
    let next = (decayed - (((&m / s.bias_correction1)? / denom)? * s.lr)?)?;
    Ok(Tensor::stack(&[next, m, v], 0)?)
}

struct Op(AdamWStep);

/// Float types of the CPU loop.
trait Elem:
    Copy
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    const ZERO: Self;
    fn sqrt(self) -> Self;
}
impl Elem for f32 {
    const ZERO: f32 = 0.0;
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
}
impl Elem for f64 {
    const ZERO: f64 = 0.0;
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
}

/// Element `i`'s update, each line one candle op of the composed form (`x * c + 0.0` is
/// `affine(c, 0)`, which turns −0 into +0 as the composed form does). `SCALED`: the
/// gradient is clipped first (a constant so that the loop has no branch).
#[inline(always)]
fn update_one<T: Elem, const SCALED: bool>(c: &Consts<T>, p: T, g: T, m: T, v: T) -> (T, T, T) {
    let z = T::ZERO;
    let g = if SCALED { g * c.grad_scale + z } else { g };
    let m = (m * c.beta1 + z) + (g * c.one_minus_beta1 + z);
    let v = (v * c.beta2 + z) + ((g * g) * c.one_minus_beta2 + z);
    let denom = (v * c.inv_bc2 + z).sqrt() + c.eps;
    let decayed = p * c.decay + z;
    let p = decayed - (((m * c.inv_bc1 + z) / denom) * c.lr + z);
    (p, m, v)
}

/// One chunk of elements: zipped slices, so the loop has no bounds checks.
fn update_chunk<T: Elem, const SCALED: bool>(
    c: &Consts<T>,
    (p, g, m, v): (&[T], &[T], &[T], &[T]),
    (op, om, ov): (&mut [T], &mut [T], &mut [T]),
) {
    let outs = op.iter_mut().zip(om.iter_mut()).zip(ov.iter_mut());
    let ins = p.iter().zip(g).zip(m).zip(v);
    for (((op, om), ov), (((&p, &g), &m), &v)) in outs.zip(ins) {
        (*op, *om, *ov) = update_one::<T, SCALED>(c, p, g, m, v);
    }
}

fn cpu_update<T: Elem>(c: Consts<T>, p: &[T], g: &[T], st: &[T]) -> Vec<T> {
    let n = p.len();
    let (m, v) = st.split_at(n);
    let mut out = vec![T::ZERO; 3 * n];
    let (op, rest) = out.split_at_mut(n);
    let (om, ov) = rest.split_at_mut(n);
    let chunk = |i: (&[T], &[T], &[T], &[T]), o: (&mut [T], &mut [T], &mut [T])| {
        if c.scaled {
            update_chunk::<T, true>(&c, i, o)
        } else {
            update_chunk::<T, false>(&c, i, o)
        }
    };
    // Parallel only where it pays: LoRA matrices (~10⁴ elements) are done faster by the
    // calling thread than by waking the pool.
    const CHUNK: usize = 1 << 16;
    if n <= CHUNK {
        chunk((p, g, m, v), (op, om, ov));
        return out;
    }
    op.par_chunks_mut(CHUNK)
        .zip(om.par_chunks_mut(CHUNK))
        .zip(ov.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(k, ((op, om), ov))| {
            let r = k * CHUNK..(k * CHUNK + op.len());
            let i = (&p[r.clone()], &g[r.clone()], &m[r.clone()], &v[r]);
            chunk(i, (op, om, ov));
        });
    out
}

fn slice<'a, T>(v: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => Err(candle_core::Error::Msg(
            "adamw: input not contiguous".into(),
        )),
    }
}

impl CustomOp3 for Op {
    fn name(&self) -> &'static str {
        "juris-adamw"
    }

    fn cpu_fwd(
        &self,
        p: &CpuStorage,
        pl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
        st: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = pl.shape().elem_count();
        let out = match (p, g, st) {
            (CpuStorage::F32(p), CpuStorage::F32(g), CpuStorage::F32(s)) => {
                CpuStorage::F32(cpu_update(
                    self.0.consts(|v| v as f32),
                    slice(p, pl)?,
                    slice(g, gl)?,
                    slice(s, sl)?,
                ))
            }
            (CpuStorage::F64(p), CpuStorage::F64(g), CpuStorage::F64(s)) => {
                CpuStorage::F64(cpu_update(
                    self.0.consts(|v| v),
                    slice(p, pl)?,
                    slice(g, gl)?,
                    slice(s, sl)?,
                ))
            }
            _ => {
                return Err(candle_core::Error::Msg(format!(
                    "adamw: dtypes {:?}/{:?}/{:?} (want all f32 or all f64)",
                    p.dtype(),
                    g.dtype(),
                    st.dtype()
                )))
            }
        };
        Ok((out, Shape::from((3, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        p: &candle_core::CudaStorage,
        pl: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
        st: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::train_ops::cuda::adamw([(p, pl), (g, gl), (st, sl)], &self.0)
    }
}

/// Whether [`adamw_step`] takes tensors of `dtype`.
fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(n: usize, seed: u64, dtype: DType) -> Tensor {
        let mut rng = crate::lora::SplitMix64(seed);
        let v: Vec<f64> = (0..n)
            .map(|i| match i % 7 {
                0 => 0.0,
                1 => -0.0,
                _ => (rng.next_f64() - 0.5) * 10f64.powi((i % 5) as i32 - 3),
            })
            .collect();
        Tensor::from_vec(v, n, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u64> {
        let t = t.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
        t.to_vec1::<f64>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// Three consecutive updates, with and without clipping, f32 and f64, below and above
    /// the parallel chunk size: the fused op's parameter and moments equal the
    /// composed form's bit for bit (zeros of both signs included).
    #[test]
    fn equals_the_composed_form_bit_for_bit() {
        for dtype in [DType::F32, DType::F64] {
            // One sequential chunk, and parallel chunks with a ragged last one.
            for (grad_scale, n) in [
                (None, 1000),
                (Some(0.37), 1000),
                (None, 140_001),
                (Some(0.37), 140_001),
            ] {
                let p0 = values(n, 1, dtype);
                let v0 = values(n, 3, dtype).abs().unwrap();
                let s0 = Tensor::stack(&[values(n, 2, dtype), v0], 0).unwrap();
                let (mut p, mut st) = (p0.clone(), s0.clone());
                let (mut fp, mut fs) = (p0, s0);
                for t in 1..=3 {
                    let g = values(n, 10 + t, dtype);
                    let s = AdamWStep {
                        beta1: 0.9,
                        beta2: 0.999,
                        eps: 1e-8,
                        weight_decay: 0.01,
                        lr: 2e-3 * t as f64,
                        bias_correction1: 1.0 - 0.9f64.powi(t as i32),
                        bias_correction2: 1.0 - 0.999f64.powi(t as i32),
                        grad_scale,
                    };
                    let want = composed(&p, &g, &st, &s).unwrap();
                    (p, st) = (want.get(0).unwrap(), want.narrow(0, 1, 2).unwrap());
                    let out = adamw_step(&fp, &g, &fs, &s).unwrap();
                    (fp, fs) = (out.get(0).unwrap(), out.narrow(0, 1, 2).unwrap());
                    assert_eq!(bits(&out), bits(&want), "{dtype:?} {grad_scale:?} step {t}");
                }
            }
        }
    }

    /// The CUDA kernel's update equals the CPU's bit for bit (f32 and f64, clipped and
    /// not). Built only with the `cuda` feature; says so and passes without a GPU.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_equals_the_cpu_bit_for_bit() {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return;
        };
        for dtype in [DType::F32, DType::F64] {
            for grad_scale in [None, Some(0.37)] {
                let n = 70_001;
                let p = values(n, 1, dtype);
                let g = values(n, 2, dtype);
                let st = Tensor::stack(
                    &[values(n, 3, dtype), values(n, 4, dtype).abs().unwrap()],
                    0,
                )
                .unwrap();
                let s = AdamWStep {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.01,
                    lr: 3e-4,
                    bias_correction1: 1.0 - 0.9f64.powi(7),
                    bias_correction2: 1.0 - 0.999f64.powi(7),
                    grad_scale,
                };
                let cpu = adamw_step(&p, &g, &st, &s).unwrap();
                let on = |t: &Tensor| t.to_device(&gpu).unwrap();
                let cuda = adamw_step(&on(&p), &on(&g), &on(&st), &s).unwrap();
                let cuda = cuda.to_device(&Device::Cpu).unwrap();
                assert_eq!(bits(&cuda), bits(&cpu), "{dtype:?} {grad_scale:?}");
            }
        }
    }

    #[test]
    fn a_state_of_the_wrong_shape_is_an_error() {
        let p = values(4, 1, DType::F32);
        let st = values(6, 2, DType::F32).reshape((2, 3)).unwrap();
        let s = AdamWStep {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            lr: 1e-3,
            bias_correction1: 0.1,
            bias_correction2: 0.001,
            grad_scale: None,
        };
        let err = adamw_step(&p, &p, &st, &s).unwrap_err().to_string();
        assert!(err.contains("want [2, 4]"), "{err}");
    }
}
