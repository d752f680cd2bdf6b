//! Backward passes of the fused training nodes of [`crate::train_ops`] as one op each:
//! masked softmax, LayerNorm / RMSNorm with frozen weights, and exact GELU.
//!
//! Why: composed of candle ops, a softmax backward was 5 kernels over the
//! `[batch, heads, q, k]` probabilities, a norm backward ~15 over the hidden states and
//! candle's GELU backward ~10 over the feed-forward activations, each writing a fresh
//! tensor (with `bmul`/`bsub`/`fast_sum`/`affine` ~27 % of a MiniLM LoRA step's kernel time
//! on the H100 at batch 32, ncu). Here each reads its inputs once and writes its output once:
//! a loop over rows on the CPU, one CUDA kernel (`src/cuda/train_ops.cu`). The GELU slope
//! uses the exact `1/√(2π)` (candle's rule rounds it to 0.398942).
//!
//! f32, f64 and bf16 (mixed-precision training: computed in f32 and rounded once per output,
//! as the forwards of [`crate::train_ops`] are).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::train_ops::num_like::Float;
use crate::train_ops::{contiguous, narrow, packed, widen};

/// Which backward, with what it needs besides its two tensor inputs.
#[derive(Clone)]
pub(crate) enum Grad {
    /// `(p, g)` → `p ⊙ (g − Σ g ⊙ p) · scale` over the last dimension.
    Softmax { scale: f64 },
    /// `(x, g)` → the input gradient of `norm(x) ⊙ w (+ b)` over the last dimension.
    Norm { w: Tensor, centred: bool, eps: f64 },
    /// `(x, g)` → `g · GELU′(x)`.
    Gelu,
}

impl Grad {
    /// Applies the backward to its two inputs (made packed, same shape).
    pub(crate) fn apply(&self, a: &Tensor, g: &Tensor) -> Result<Tensor> {
        if a.shape() != g.shape() {
            return Err(crate::error::MlError::Unsupported(format!(
                "{}: input {:?} and gradient {:?} differ",
                self.what(),
                a.dims(),
                g.dims()
            )));
        }
        Ok(packed(a)?.apply_op2_no_bwd(&packed(g)?, self)?)
    }

    fn what(&self) -> &'static str {
        match self {
            Grad::Softmax { .. } => "softmax backward",
            Grad::Norm { .. } => "norm backward",
            Grad::Gelu => "gelu backward",
        }
    }

    fn cpu<T: Float>(&self, a: &[T], g: &[T], n: usize, w: Option<&[T]>) -> Vec<T> {
        let mut out = vec![T::zero(); a.len()];
        let n = n.max(1);
        match self {
            Grad::Softmax { scale } => {
                let scale = T::from_f64(*scale);
                out.par_chunks_mut(n)
                    .zip(a.par_chunks(n).zip(g.par_chunks(n)))
                    .for_each(|(o, (p, g))| {
                        let mut dot = T::zero();
                        for (&p, &g) in p.iter().zip(g) {
                            dot = dot + g * p;
                        }
                        for ((o, &p), &g) in o.iter_mut().zip(p).zip(g) {
                            *o = p * (g - dot) * scale;
                        }
                    });
            }
            Grad::Norm { centred, eps, .. } => {
                let w = w.unwrap_or(&[]);
                let (nf, eps) = (T::from_f64(n as f64), T::from_f64(*eps));
                out.par_chunks_mut(n)
                    .zip(a.par_chunks(n).zip(g.par_chunks(n)))
                    .for_each(|(o, (x, g))| {
                        let mut mean = T::zero();
                        if *centred {
                            let mut s = T::zero();
                            for &v in x {
                                s = s + v;
                            }
                            mean = s / nf;
                        }
                        let (mut sq, mut gsum) = (T::zero(), T::zero());
                        for ((&v, &g), &w) in x.iter().zip(g).zip(w) {
                            sq = sq + (v - mean) * (v - mean);
                            gsum = gsum + g * w;
                        }
                        let r = T::from_f64(1.0) / (sq / nf + eps).sqrt();
                        let gmean = if *centred { gsum / nf } else { T::zero() };
                        let mut cross = T::zero();
                        for ((&v, &g), &w) in x.iter().zip(g).zip(w) {
                            cross = cross + g * w * ((v - mean) * r);
                        }
                        let cross = cross / nf;
                        for (((o, &v), &g), &w) in o.iter_mut().zip(x).zip(g).zip(w) {
                            *o = r * (g * w - gmean - (v - mean) * r * cross);
                        }
                    });
            }
            Grad::Gelu => {
                const CHUNK: usize = 1 << 14;
                out.par_chunks_mut(CHUNK)
                    .zip(a.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                    .for_each(|(o, (x, g))| {
                        for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                            *o = g * T::from_f64(gelu_slope(x.to_f64()));
                        }
                    });
            }
        }
        out
    }
}

/// `d/dx [x Φ(x)] = Φ(x) + x φ(x)` for the standard normal CDF Φ and density φ.
fn gelu_slope(x: f64) -> f64 {
    const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
    0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))
        + x * FRAC_1_SQRT_2PI * (-0.5 * x * x).exp()
}

impl CustomOp2 for Grad {
    fn name(&self) -> &'static str {
        match self {
            Grad::Softmax { .. } => "juris-softmax-grad",
            Grad::Norm { .. } => "juris-norm-grad",
            Grad::Gelu => "juris-gelu-grad",
        }
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = al.dims().last().copied().unwrap_or(1);
        let what = self.what();
        let weight = |dtype: DType| -> candle_core::Result<Option<Tensor>> {
            match self {
                Grad::Norm { w, .. } => Ok(Some(w.to_dtype(dtype)?)),
                _ => Ok(None),
            }
        };
        let out = match (a, g) {
            (CpuStorage::F32(a), CpuStorage::F32(g)) => {
                let w = weight(DType::F32)?
                    .map(|w| w.to_vec1::<f32>())
                    .transpose()?;
                let (a, g) = (contiguous(a, al, what)?, contiguous(g, gl, what)?);
                CpuStorage::F32(self.cpu(a, g, n, w.as_deref()))
            }
            (CpuStorage::F64(a), CpuStorage::F64(g)) => {
                let w = weight(DType::F64)?
                    .map(|w| w.to_vec1::<f64>())
                    .transpose()?;
                let (a, g) = (contiguous(a, al, what)?, contiguous(g, gl, what)?);
                CpuStorage::F64(self.cpu(a, g, n, w.as_deref()))
            }
            (CpuStorage::BF16(a), CpuStorage::BF16(g)) => {
                // The weight as the CUDA kernel reads it: in bf16.
                let w = weight(DType::BF16)?
                    .map(|w| w.to_dtype(DType::F32)?.to_vec1::<f32>())
                    .transpose()?;
                let (a, g) = (
                    widen(contiguous(a, al, what)?),
                    widen(contiguous(g, gl, what)?),
                );
                CpuStorage::BF16(narrow(self.cpu(&a, &g, n, w.as_deref())))
            }
            _ => {
                return Err(candle_core::Error::Msg(format!(
                    "{what}: dtypes {:?} and {:?} (want both f32, f64 or bf16)",
                    a.dtype(),
                    g.dtype()
                )))
            }
        };
        Ok((out, al.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        al: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::train_ops::cuda::grad(self, (a, al), (g, gl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    fn values(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::lora::SplitMix64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.next_f64() * 4.0 - 2.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn worst(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Each backward equals its composed candle form (f64, 1e-12), and its f32 run is
    /// within f32 rounding.
    #[test]
    fn backwards_equal_their_composed_forms() {
        let (x, g) = (values(&[3, 5, 37], 1), values(&[3, 5, 37], 2));
        // Softmax: p = softmax(x) rows.
        let p = candle_nn::ops::softmax_last_dim(&x).unwrap();
        let dot = (&g * &p).unwrap().sum_keepdim(D::Minus1).unwrap();
        let want = ((&p * g.broadcast_sub(&dot).unwrap()).unwrap() * 0.125).unwrap();
        let got = Grad::Softmax { scale: 0.125 }.apply(&p, &g).unwrap();
        assert!(worst(&got, &want) < 1e-12);
        // Norms: LayerNorm and RMSNorm, through the composed gradient of candle's graph.
        let w = values(&[37], 3);
        for centred in [true, false] {
            let xv = candle_core::Var::from_tensor(&x).unwrap();
            let xt = xv.as_tensor();
            let xc = if centred {
                xt.broadcast_sub(&xt.mean_keepdim(D::Minus1).unwrap())
                    .unwrap()
            } else {
                xt.clone()
            };
            let r = (xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-5)
                .unwrap()
                .sqrt()
                .unwrap();
            let y = xc.broadcast_div(&r).unwrap().broadcast_mul(&w).unwrap();
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let want = grads.get(xt).unwrap();
            let op = Grad::Norm {
                w: w.clone(),
                centred,
                eps: 1e-5,
            };
            let got = op.apply(&x, &g).unwrap();
            assert!(worst(&got, want) < 1e-12, "centred {centred}");
        }
        // GELU: candle's own rule (its 0.398942 makes it differ by ~1e-7).
        let xv = candle_core::Var::from_tensor(&x).unwrap();
        let y = xv.as_tensor().gelu_erf().unwrap();
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let got = Grad::Gelu.apply(&x, &g).unwrap();
        assert!(worst(&got, grads.get(xv.as_tensor()).unwrap()) < 1e-5);
        // The exact slope against a central difference of the exact GELU.
        let gelu = |v: f64| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
        for v in [-3.0, -0.7, 0.0, 0.4, 2.5] {
            let fd = (gelu(v + 1e-6) - gelu(v - 1e-6)) / 2e-6;
            assert!((gelu_slope(v) - fd).abs() < 1e-8, "{v}");
        }
        // f32 runs of all three are within rounding of the f64 ones.
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let back = |t: Tensor| t.to_dtype(DType::F64).unwrap();
        let ops = [
            (Grad::Softmax { scale: 0.125 }, p.clone()),
            (
                Grad::Norm {
                    w: w.clone(),
                    centred: true,
                    eps: 1e-5,
                },
                x.clone(),
            ),
            (Grad::Gelu, x.clone()),
        ];
        for (op, a) in ops {
            let wide = op.apply(&a, &g).unwrap();
            let narrow = back(op.apply(&f(&a), &f(&g)).unwrap());
            assert!(worst(&wide, &narrow) < 1e-4, "{}", op.what());
        }
    }

    /// The CUDA kernels equal the CPU loops within rounding (f32 2e-5, f64 1e-12). Built only
    /// with the `cuda` feature; passes without a GPU.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_equals_the_cpu() {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return;
        };
        for (dtype, tol) in [(DType::F32, 2e-5), (DType::F64, 1e-12)] {
            let (x, g) = (values(&[4, 3, 200], 1), values(&[4, 3, 200], 2));
            let w = values(&[200], 3);
            let ops = [
                Grad::Softmax { scale: 0.3 },
                Grad::Norm {
                    w: w.clone(),
                    centred: true,
                    eps: 1e-5,
                },
                Grad::Norm {
                    w: w.to_device(&gpu).unwrap(),
                    centred: false,
                    eps: 1e-6,
                },
                Grad::Gelu,
            ];
            for op in ops {
                let on = |t: &Tensor, d: &Device| t.to_dtype(dtype).unwrap().to_device(d).unwrap();
                let cpu = op
                    .apply(&on(&x, &Device::Cpu), &on(&g, &Device::Cpu))
                    .unwrap();
                let cuda = op.apply(&on(&x, &gpu), &on(&g, &gpu)).unwrap();
                let back = |t: Tensor| {
                    t.to_device(&Device::Cpu)
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                };
                let err = worst(&back(cpu), &back(cuda));
                assert!(err < tol, "{} {dtype:?}: {err}", op.what());
            }
        }
    }

    /// Each backward on bf16 inputs equals the f32 backward on the same values, rounded to
    /// bf16: on the CPU bit for bit (the same f32 loop), on CUDA within one rounding
    /// (`bf16_check::assert_within`, k = 1).
    fn bf16_backwards_match_f32(device: &Device) {
        use crate::train_ops::bf16_check::{assert_rounded, assert_within, values};
        let shape = [4, 3, 130];
        let (pw, pn) = values(&shape, 1, 1.0, device);
        let (pw, pn) = (pw.abs().unwrap(), pn.abs().unwrap());
        let (xw, xn) = values(&shape, 2, 3.0, device);
        let (gw, gn) = values(&shape, 3, 1.0, device);
        let (ww, wn) = values(&[130], 4, 1.0, device);
        let ops = [
            (
                Grad::Softmax { scale: 0.3 },
                Grad::Softmax { scale: 0.3 },
                &pw,
                &pn,
            ),
            (
                Grad::Norm {
                    w: ww.clone(),
                    centred: true,
                    eps: 1e-5,
                },
                Grad::Norm {
                    w: wn.clone(),
                    centred: true,
                    eps: 1e-5,
                },
                &xw,
                &xn,
            ),
            (
                Grad::Norm {
                    w: ww.clone(),
                    centred: false,
                    eps: 1e-6,
                },
                Grad::Norm {
                    w: wn.clone(),
                    centred: false,
                    eps: 1e-6,
                },
                &xw,
                &xn,
            ),
            (Grad::Gelu, Grad::Gelu, &xw, &xn),
        ];
        for (wide_op, narrow_op, aw, an) in ops {
            let wide = wide_op.apply(aw, &gw).unwrap();
            let narrow = narrow_op.apply(an, &gn).unwrap();
            if device.is_cpu() {
                assert_rounded(&narrow, &wide, wide_op.what());
            } else {
                assert_within(&narrow, &wide, 1.0, 0.0, wide_op.what());
            }
        }
    }

    #[test]
    fn bf16_backwards_match_f32_on_the_cpu() {
        bf16_backwards_match_f32(&Device::Cpu);
    }

    /// The same with the CUDA kernels. Built only with the `cuda` feature; passes without a
    /// GPU.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_bf16_backwards_match_f32() {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return;
        };
        bf16_backwards_match_f32(&gpu);
    }
}
