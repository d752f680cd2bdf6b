//! A LoRA-adapted frozen linear layer, `x Wᵀ + b + s·dropout(x) Aᵀ Bᵀ`, as one training
//! node with a hand-written backward.
//!
//! Why: composed of candle ops the layer is ~10 graph nodes (reshapes, the frozen product,
//! dropout, two products with transposed adapters, the scale, the sum), and candle's
//! backward gives every node's input a zeros tensor and an add of a whole gradient — on
//! `[tokens, width]` activations that is most of a LoRA step's memory traffic on the GPU
//! (3,144 add kernels, 39 % of the kernel time of a MiniLM step at batch 32, measured with
//! ncu). As one node the layer's input receives one gradient and each adapter matrix one.
//!
//! The forward runs the composed form's storage operations in its order (so its output is
//! the composed form's, bit for bit); the backward forms the same products candle's rules
//! form for those nodes, in the same layouts.
//!
//! In bf16 (mixed-precision training: `x`, the frozen layer and the adapters' bf16 copies)
//! every product is a bf16 tensor-core GEMM accumulating in f32, and the scale `α / r`
//! multiplies in f32 when it is no bf16 value ([`scale`]).

use candle_core::backend::BackendStorage;
use candle_core::op::Add;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Storage, Tensor};

use crate::error::Result;
use crate::frozen_linear::{self, out_shape, rows_layout};
use crate::train_ops::{self, Dropout};

/// The frozen part and the adapter's settings for one application.
pub struct LoraLinear<'a> {
    /// Frozen `[out, in]` weight.
    pub weight: &'a Tensor,
    /// Frozen `[out]` bias.
    pub bias: Option<&'a Tensor>,
    /// `α / r`.
    pub scale: f64,
    /// Dropout probability and mask seed of the adapter's input (`None`: no dropout).
    pub dropout: Option<(f64, u64)>,
}

impl LoraLinear<'_> {
    /// Applies the layer to `x` `[.., in]` with the trainable `a` `[r, in]` and `b`
    /// `[out, r]`; the result is `[.., out]`.
    pub fn forward(&self, x: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let x = if x.is_contiguous() {
            x.clone()
        } else {
            x.contiguous()?
        };
        let op = Node {
            weight: self.weight.detach(),
            bias: self.bias.map(Tensor::detach),
            scale: self.scale,
            dropout: self.dropout.map(|(p, seed)| Dropout::new(p, seed)),
        };
        Ok(x.apply_op3(a, b, op)?)
    }
}

struct Node {
    weight: Tensor,
    bias: Option<Tensor>,
    scale: f64,
    dropout: Option<Dropout>,
}

/// The composed form's forward on one backend: `y = x Wᵀ (+ b)`; `t = (d Aᵀ) · s`;
/// `y + t Bᵀ`, where `d` is the (dropped-out) input.
#[allow(clippy::too_many_arguments)]
fn forward<S: BackendStorage>(
    (x, xl): (&S, &Layout),
    (w, wl): (&S, &Layout),
    bias: Option<(&S, &Layout)>,
    (d, dl): (&S, &Layout),
    (a, al): (&S, &Layout),
    (b, bl): (&S, &Layout),
    scale: f64,
) -> candle_core::Result<S> {
    let (y, shape) = frozen_linear::forward(x, xl, w, wl, bias)?;
    let (rows, inp) = xl.shape().dims2()?;
    let (r, a_inp) = al.shape().dims2()?;
    let (out, b_r) = bl.shape().dims2()?;
    if a_inp != inp || b_r != r || shape.dims() != [rows, out] {
        return Err(candle_core::Error::Msg(format!(
            "lora linear: A {:?} and B {:?} for input width {inp} and output {:?}",
            al.dims(),
            bl.dims(),
            shape.dims()
        )));
    }
    let t1 = d.matmul(a, (1, rows, r, inp), dl, &al.transpose(0, 1)?)?;
    let low_l = Layout::contiguous((rows, r));
    let t2 = scale_storage(&t1, &low_l, scale)?;
    let t3 = t2.matmul(b, (1, rows, out, r), &low_l, &bl.transpose(0, 1)?)?;
    let yl = Layout::contiguous(shape);
    y.binary_impl::<Add>(&t3, &yl, &yl)
}

/// Whether `v` is a bf16 value (so that candle's `affine`, which rounds its constant to the
/// tensor's type, multiplies by `v` itself).
fn exact_in_bf16(v: f64) -> bool {
    half::bf16::from_f64(v).to_f64() == v
}

/// `t · scale` on a backend: candle's `affine(scale, 0)` (what `Tensor * f64` runs), except
/// for bf16 `t` and a scale that is no bf16 value (`16 / 12` would become 1.3359, 0.2 % off
/// every adapter update): then `t` is widened, multiplied in f32 and rounded once, as
/// PyTorch multiplies a bf16 tensor by a Python float.
fn scale_storage<S: BackendStorage>(t: &S, l: &Layout, scale: f64) -> candle_core::Result<S> {
    if t.dtype() != DType::BF16 || exact_in_bf16(scale) {
        return t.affine(l, scale, 0.0);
    }
    let wl = Layout::contiguous(l.shape());
    t.to_dtype(l, DType::F32)?
        .affine(&wl, scale, 0.0)?
        .to_dtype(&wl, DType::BF16)
}

/// [`scale_storage`] on tensors: `t * scale` (the same op), with the bf16 exception.
pub(crate) fn scale(t: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    if t.dtype() != DType::BF16 || exact_in_bf16(scale) {
        return t * scale;
    }
    (t.to_dtype(DType::F32)? * scale)?.to_dtype(DType::BF16)
}

/// What the forward needs of a backend beyond candle's storage operations: its storage
/// inside a [`Storage`], and the dropout op's forward.
trait Backend: BackendStorage + Sized {
    fn pick(s: &Storage) -> Option<&Self>;
    fn dropout(op: &Dropout, s: &Self, l: &Layout) -> candle_core::Result<Self>;
}

impl Backend for CpuStorage {
    fn pick(s: &Storage) -> Option<&Self> {
        match s {
            Storage::Cpu(c) => Some(c),
            _ => None,
        }
    }
    fn dropout(op: &Dropout, s: &Self, l: &Layout) -> candle_core::Result<Self> {
        Ok(op.cpu_fwd(s, l)?.0)
    }
}

#[cfg(feature = "cuda")]
impl Backend for candle_core::CudaStorage {
    fn pick(s: &Storage) -> Option<&Self> {
        match s {
            Storage::Cuda(c) => Some(c),
            _ => None,
        }
    }
    fn dropout(op: &Dropout, s: &Self, l: &Layout) -> candle_core::Result<Self> {
        Ok(op.cuda_fwd(s, l)?.0)
    }
}

/// A frozen tensor's storage on the op's backend, or an error.
fn frozen_storage<S: Backend>(guard: &Storage) -> candle_core::Result<&S> {
    S::pick(guard).ok_or_else(|| {
        candle_core::Error::Msg("lora linear: weights and input on different devices".into())
    })
}

impl Node {
    /// The forward on backend `S`: the frozen weight and bias read from their tensors, the
    /// input dropped out first when the adapter has dropout.
    fn run<S: Backend>(
        &self,
        (x, xl): (&S, &Layout),
        a: (&S, &Layout),
        b: (&S, &Layout),
    ) -> candle_core::Result<(S, Shape)> {
        let x2 = rows_layout(xl)?;
        let (wg, wl) = self.weight.storage_and_layout();
        let bias = self.bias.as_ref().map(|t| t.storage_and_layout());
        let bias = match &bias {
            Some((g, l)) => Some((frozen_storage::<S>(g)?, *l)),
            None => None,
        };
        let dropped = match &self.dropout {
            Some(op) => Some(S::dropout(op, x, &x2)?),
            None => None,
        };
        let d2 = Layout::contiguous(x2.shape());
        let d = match &dropped {
            Some(s) => (s, &d2),
            None => (x, &x2),
        };
        let w = (frozen_storage::<S>(&wg)?, wl);
        let y = forward((x, &x2), w, bias, d, a, b, self.scale)?;
        Ok((y, out_shape(xl, wl.dims()[0])))
    }
}

impl CustomOp3 for Node {
    fn name(&self) -> &'static str {
        "juris-lora-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((x, xl), (a, al), (b, bl))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        a: &candle_core::CudaStorage,
        al: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.run((x, xl), (a, al), (b, bl))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let wrap = candle_core::Error::wrap;
        let (out, inp) = self.weight.dims2()?;
        let rows = x.elem_count() / inp.max(1);
        let (x2, g2) = (
            x.detach().reshape((rows, inp))?,
            g.detach().reshape((rows, out))?,
        );
        let (a, b) = (a.detach(), b.detach());
        let d = match &self.dropout {
            Some(op) => train_ops::dropout(&x2, op.p(), op.seed()).map_err(wrap)?,
            None => x2,
        };
        // The products candle's rules form for the composed nodes: t2 = (d Aᵀ)·s, y = t2 Bᵀ.
        let t2 = scale(&d.matmul(&a.t()?)?, self.scale)?;
        let g_t1 = scale(&g2.matmul(&b)?, self.scale)?;
        let grad_b = t2.t()?.matmul(&g2)?.t()?;
        let grad_a = d.t()?.matmul(&g_t1)?.t()?;
        let g_d = g_t1.matmul(&a)?;
        let g_low = match &self.dropout {
            Some(op) => train_ops::dropout(&g_d, op.p(), op.seed()).map_err(wrap)?,
            None => g_d,
        };
        let grad_x = (g2.matmul(&self.weight)? + g_low)?.reshape(x.shape())?;
        Ok((Some(grad_x), Some(grad_a), Some(grad_b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn seeded(shape: &[usize], seed: u64, device: &Device) -> Tensor {
        let mut rng = crate::lora::SplitMix64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32 - 0.5).collect();
        Tensor::from_vec(v, shape, device).unwrap()
    }

    /// The composed candle form the node replaces (`Linear` + `LoraTrain::apply`).
    fn composed(x: &Tensor, a: &Tensor, b: &Tensor, l: &LoraLinear) -> Tensor {
        let inp = l.weight.dim(1).unwrap();
        let rows = x.elem_count() / inp;
        let x2 = x.reshape((rows, inp)).unwrap();
        let mut y = x2.matmul(&l.weight.t().unwrap()).unwrap();
        if let Some(bias) = l.bias {
            y = y.broadcast_add(bias).unwrap();
        }
        let d = match l.dropout {
            Some((p, seed)) => train_ops::dropout(&x2, p, seed).unwrap(),
            None => x2,
        };
        let low = ((d.matmul(&a.t().unwrap()).unwrap() * l.scale).unwrap())
            .matmul(&b.t().unwrap())
            .unwrap();
        let mut dims = x.dims().to_vec();
        *dims.last_mut().unwrap() = l.weight.dim(0).unwrap();
        (y + low).unwrap().reshape(dims).unwrap()
    }

    /// Forward bit for bit, and the three gradients within f32 rounding of the composed
    /// form's (the input's gradient is summed in another order), with and without bias
    /// and dropout, on `device`.
    pub(crate) fn check(device: &Device) {
        let w = seeded(&[6, 5], 1, device);
        let bias = seeded(&[6], 2, device);
        let up = seeded(&[2, 3, 6], 5, device);
        for (with_bias, dropout) in [(true, Some((0.3, 9))), (false, None), (true, None)] {
            let l = LoraLinear {
                weight: &w,
                bias: with_bias.then_some(&bias),
                scale: 2.0,
                dropout,
            };
            let x = Var::from_tensor(&seeded(&[2, 3, 5], 3, device)).unwrap();
            let a = Var::from_tensor(&seeded(&[4, 5], 4, device)).unwrap();
            let b = Var::from_tensor(&seeded(&[6, 4], 6, device)).unwrap();
            let run = |fused: bool| {
                let y = if fused {
                    l.forward(x.as_tensor(), a.as_tensor(), b.as_tensor())
                        .unwrap()
                } else {
                    composed(x.as_tensor(), a.as_tensor(), b.as_tensor(), &l)
                };
                let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
                let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let g = |t: &Var| v(grads.get(t.as_tensor()).unwrap());
                (v(&y), [g(&x), g(&a), g(&b)])
            };
            let ((y1, g1), (y2, g2)) = (run(true), run(false));
            assert_eq!(y1, y2, "forward, bias {with_bias}, dropout {dropout:?}");
            for (k, (p, q)) in g1.iter().zip(&g2).enumerate() {
                let worst = p
                    .iter()
                    .zip(q)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst < 1e-6,
                    "gradient {k}: {worst} ({with_bias}, {dropout:?})"
                );
            }
        }
    }

    #[test]
    fn equals_the_composed_form() {
        check(&Device::Cpu);
    }

    /// The same on CUDA. Built only with the `cuda` feature; passes without a GPU.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_equals_the_composed_form() {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return;
        };
        check(&gpu);
    }

    /// The node on bf16 inputs (frozen layer, input and adapters; scale 2, a bf16 value,
    /// and 4/3, which is not) against the node on the same values in f32: output and the
    /// three gradients within a chain of 4 bf16 roundings of the largest value (the base
    /// product, its bias, the rank-r product, its scale, the up-projection and the sum each
    /// round once; a gradient passes through at most 4 of them).
    fn bf16_matches_f32(device: &Device) {
        use crate::train_ops::bf16_check::{assert_within, values};
        let (ww, wn) = values(&[24, 40], 1, 0.3, device);
        let (bw, bn) = values(&[24], 2, 0.5, device);
        let (xw, xn) = values(&[2, 7, 40], 3, 1.0, device);
        let (aw, an) = values(&[4, 40], 4, 0.3, device);
        let (b2w, b2n) = values(&[24, 4], 5, 0.3, device);
        let (uw, un) = values(&[2, 7, 24], 6, 1.0, device);
        for (scale, dropout) in [(2.0, Some((0.25, 3))), (4.0 / 3.0, None)] {
            let run = |w: &Tensor, b: &Tensor, x: &Tensor, a: &Tensor, b2: &Tensor, u: &Tensor| {
                let l = LoraLinear {
                    weight: w,
                    bias: Some(b),
                    scale,
                    dropout,
                };
                let (x, a, b2) = (
                    Var::from_tensor(x).unwrap(),
                    Var::from_tensor(a).unwrap(),
                    Var::from_tensor(b2).unwrap(),
                );
                let y = l
                    .forward(x.as_tensor(), a.as_tensor(), b2.as_tensor())
                    .unwrap();
                let grads = (&y * u).unwrap().sum_all().unwrap().backward().unwrap();
                let g = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
                [y, g(&x), g(&a), g(&b2)]
            };
            let narrow = run(&wn, &bn, &xn, &an, &b2n, &un);
            let wide = run(&ww, &bw, &xw, &aw, &b2w, &uw);
            for (k, what) in ["output", "input gradient", "A gradient", "B gradient"]
                .iter()
                .enumerate()
            {
                assert_within(
                    &narrow[k],
                    &wide[k],
                    4.0,
                    1.0,
                    &format!("{what}, scale {scale}"),
                );
            }
        }
    }

    #[test]
    fn bf16_matches_f32_on_the_cpu() {
        bf16_matches_f32(&Device::Cpu);
    }

    /// The same on CUDA (bf16 tensor-core products against f32 ones). Built only with the
    /// `cuda` feature; passes without a GPU.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_bf16_matches_f32() {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return;
        };
        bf16_matches_f32(&gpu);
    }

    /// A bf16 tensor times a scale that is no bf16 value (4/3) is the f32 product rounded
    /// once, not the product with the scale rounded to bf16 first (candle's affine, 0.2 %
    /// off); a bf16 scale (2) and f32 tensors take candle's affine unchanged.
    #[test]
    fn a_bf16_scale_is_not_rounded() {
        use crate::train_ops::bf16_check::{assert_rounded, values};
        let (w, n) = values(&[64, 16], 9, 4.0, &Device::Cpu);
        let exact = (&w * (4.0 / 3.0)).unwrap();
        assert_rounded(&scale(&n, 4.0 / 3.0).unwrap(), &exact, "scale 4/3");
        let naive = (&n * (4.0 / 3.0)).unwrap().to_dtype(DType::F32).unwrap();
        let got = scale(&n, 4.0 / 3.0).unwrap().to_dtype(DType::F32).unwrap();
        let differ = naive
            .ne(&got)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            differ > 0.0,
            "candle's affine rounded the scale to no effect here"
        );
        assert_rounded(&scale(&n, 2.0).unwrap(), &(&w * 2.0).unwrap(), "scale 2");
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&scale(&w, 4.0 / 3.0).unwrap()), bits(&exact));
    }
}
