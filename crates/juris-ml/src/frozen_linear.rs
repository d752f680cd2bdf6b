//! `x Wᵀ (+ b)` with a frozen `W` and `b` as one differentiable node whose backward computes
//! only the input's gradient.
//!
//! Why: candle's `Matmul` backward always computes both sides' gradients, and a broadcast
//! add always reduces the gradient for its bias, whether or not the weight is a variable.
//! Under LoRA every base layer is frozen, so a training step spent one weight-sized GEMM
//! (`xᵀ g`, as many FLOPs as the forward product) and one bias reduction per layer on
//! gradients nobody reads, plus a zeros tensor and an add for each. This node runs the same
//! products as the composed form — the forward is candle's own `matmul` and broadcast add
//! on the storages, the input gradient the same `g W` as candle's backward — so its values
//! are those of the composed form, bit for bit, on every device.

use candle_core::backend::BackendStorage;
use candle_core::op::Add;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::error::Result;

/// `x Wᵀ + b` for `x` `[.., in]`, `w` `[out, in]`, `b` `[out]`: the base layer of a
/// training forward (`x` of any rank, without reshape nodes: each would cost the backward
/// a zeros tensor and an add). Falls back to the composed candle ops when `w` or `b` takes part in a
/// graph (a trained weight needs its gradient).
pub fn frozen_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let trained = w.track_op() || b.is_some_and(|b| b.track_op());
    if trained || !x.track_op() {
        let dims = x.dims().to_vec();
        let inp = w.dim(1)?;
        let rows = x.elem_count() / inp.max(1);
        let y = x.reshape((rows, inp))?.matmul(&w.t()?)?;
        let y = match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = w.dim(0)?;
        }
        return Ok(y.reshape(out)?);
    }
    let x = if x.is_contiguous() {
        x.clone()
    } else {
        x.contiguous()?
    };
    // Without a bias the weight stands in the bias's place; the forward does not read it.
    let op = FrozenLinear {
        w: w.clone(),
        has_bias: b.is_some(),
    };
    Ok(x.apply_op3(w, b.unwrap_or(w), op)?)
}

/// The node; holds the weight for the backward's `g W`.
struct FrozenLinear {
    w: Tensor,
    has_bias: bool,
}

/// The forward on any backend for `x` `[rows, in]`: candle's storage-level matmul with `w`
/// read transposed, then the bias added through a broadcast layout — the calls
/// `Tensor::matmul` and `Tensor::broadcast_add` make. Returns `[rows, out]`.
pub(crate) fn forward<S: BackendStorage>(
    x: &S,
    xl: &Layout,
    w: &S,
    wl: &Layout,
    bias: Option<(&S, &Layout)>,
) -> candle_core::Result<(S, Shape)> {
    let (rows, inp) = xl.shape().dims2()?;
    let (out, w_inp) = wl.shape().dims2()?;
    if inp != w_inp {
        return Err(candle_core::Error::Msg(format!(
            "frozen_linear: input width {inp} but weight [{out}, {w_inp}]"
        )));
    }
    let y = x.matmul(w, (1, rows, out, inp), xl, &wl.transpose(0, 1)?)?;
    let shape = Shape::from((rows, out));
    match bias {
        None => Ok((y, shape)),
        Some((b, bl)) => {
            let yl = Layout::contiguous(shape.clone());
            let y = y.binary_impl::<Add>(b, &yl, &bl.broadcast_as(shape.clone())?)?;
            Ok((y, shape))
        }
    }
}

/// `x`'s storage seen as `[rows, in]` (`x` contiguous, any rank).
pub(crate) fn rows_layout(l: &Layout) -> candle_core::Result<Layout> {
    let inp = l.dims().last().copied().unwrap_or(0);
    let rows = l.shape().elem_count() / inp.max(1);
    if !l.is_contiguous() {
        return Err(candle_core::Error::Msg(
            "linear: the input is not contiguous".into(),
        ));
    }
    Ok(Layout::contiguous_with_offset(
        (rows, inp),
        l.start_offset(),
    ))
}

/// The output shape of a linear layer: the input's with the last dimension `out`.
pub(crate) fn out_shape(l: &Layout, out: usize) -> Shape {
    let mut dims = l.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    Shape::from(dims)
}

impl FrozenLinear {
    /// The forward on any backend: `x` (any rank) seen as rows, the bias (the third input)
    /// read only when the layer has one.
    fn run<S: BackendStorage>(
        &self,
        (x, xl): (&S, &Layout),
        (w, wl): (&S, &Layout),
        b: (&S, &Layout),
    ) -> candle_core::Result<(S, Shape)> {
        let bias = self.has_bias.then_some(b);
        let (y, shape) = forward(x, &rows_layout(xl)?, w, wl, bias)?;
        Ok((y, out_shape(xl, shape.dims()[1])))
    }

    /// `∂L/∂x = g W`, the product candle's `Matmul` backward forms for its left side, for
    /// `x` and `g` of any rank.
    fn input_grad(&self, x: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
        let (out, inp) = self.w.dims2()?;
        let rows = x.elem_count() / inp.max(1);
        g.reshape((rows, out))?.matmul(&self.w)?.reshape(x.shape())
    }
}

impl CustomOp3 for FrozenLinear {
    fn name(&self) -> &'static str {
        "juris-frozen-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((x, xl), (w, wl), (b, bl))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.run((x, xl), (w, wl), (b, bl))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.input_grad(x, g)?), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn seeded(shape: (usize, usize), seed: u64) -> Tensor {
        let mut rng = crate::lora::SplitMix64(seed);
        let n = shape.0 * shape.1;
        let v: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32 - 0.5).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Output and input gradient equal the composed candle ops bit for bit, with and
    /// without a bias, for an input that takes part in a graph.
    #[test]
    fn equals_the_composed_ops_bit_for_bit() {
        let w = seeded((7, 5), 1);
        let b = seeded((1, 7), 2).reshape(7).unwrap();
        let x0 = Var::from_tensor(&seeded((4, 5), 3)).unwrap();
        let upstream = seeded((4, 7), 4);
        for bias in [None, Some(&b)] {
            let run = |fused: bool| {
                let x = (x0.as_tensor() * 1.0).unwrap();
                let y = if fused {
                    frozen_linear(&x, &w, bias).unwrap()
                } else {
                    let y = x.matmul(&w.t().unwrap()).unwrap();
                    match bias {
                        Some(b) => y.broadcast_add(b).unwrap(),
                        None => y,
                    }
                };
                let loss = (&y * &upstream).unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                let gx = grads.get(x0.as_tensor()).unwrap().clone();
                let bits = |t: &Tensor| -> Vec<u32> {
                    t.flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                (bits(&y), bits(&gx))
            };
            assert_eq!(run(true), run(false), "bias {}", bias.is_some());
        }
    }

    /// On CUDA too the node's output and input gradient equal the composed ops' (the same
    /// cuBLAS products). Built only with the `cuda` feature; passes without a GPU.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_equals_the_composed_ops_bit_for_bit() {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return;
        };
        let on = |t: Tensor| t.to_device(&gpu).unwrap();
        let w = on(seeded((96, 64), 1));
        let b = on(seeded((1, 96), 2).reshape(96).unwrap());
        let x0 = Var::from_tensor(&on(seeded((50, 64), 3))).unwrap();
        let upstream = on(seeded((50, 96), 4));
        let run = |fused: bool| {
            let x = (x0.as_tensor() * 1.0).unwrap();
            let y = if fused {
                frozen_linear(&x, &w, Some(&b)).unwrap()
            } else {
                x.matmul(&w.t().unwrap())
                    .unwrap()
                    .broadcast_add(&b)
                    .unwrap()
            };
            let grads = (&y * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gx = grads.get(x0.as_tensor()).unwrap().clone();
            let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (v(&y), v(&gx))
        };
        assert_eq!(run(true), run(false));
    }

    /// In bf16 (the frozen base of mixed-precision training) the node's output is within two
    /// roundings of the f32 node's on the same values (the product, then its bias) and its
    /// input gradient, one product, within one: on the CPU exactly the f32 gradient rounded
    /// (candle widens bf16 products to f32), on CUDA cuBLAS's bf16 GEMM accumulating in f32.
    fn bf16_matches_f32(device: &Device) {
        use crate::train_ops::bf16_check::{assert_rounded, assert_within, values};
        let (ww, wn) = values(&[96, 64], 1, 0.3, device);
        let (bw, bn) = values(&[96], 2, 0.5, device);
        let (xw, xn) = values(&[5, 10, 64], 3, 1.0, device);
        let (uw, un) = values(&[5, 10, 96], 4, 1.0, device);
        let run = |w: &Tensor, b: &Tensor, x: &Tensor, u: &Tensor| {
            let x = Var::from_tensor(x).unwrap();
            let y = frozen_linear(x.as_tensor(), w, Some(b)).unwrap();
            let grads = (&y * u).unwrap().sum_all().unwrap().backward().unwrap();
            (y, grads.get(x.as_tensor()).unwrap().clone())
        };
        let ((y, g), (yw, gw)) = (run(&wn, &bn, &xn, &un), run(&ww, &bw, &xw, &uw));
        assert_within(&y, &yw, 2.0, 1.0, "output");
        if device.is_cpu() {
            assert_rounded(&g, &gw, "input gradient");
        } else {
            assert_within(&g, &gw, 1.0, 0.05, "input gradient");
        }
    }

    #[test]
    fn bf16_matches_f32_on_the_cpu() {
        bf16_matches_f32(&Device::Cpu);
    }

    /// The same on CUDA. Built only with the `cuda` feature; passes without a GPU.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_bf16_matches_f32() {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return;
        };
        bf16_matches_f32(&gpu);
    }

    /// A weight that is itself trained keeps its gradient (the composed form is used).
    #[test]
    fn a_trained_weight_still_gets_its_gradient() {
        let w = Var::from_tensor(&seeded((3, 2), 5)).unwrap();
        let x = Var::from_tensor(&seeded((4, 2), 6)).unwrap();
        let y = frozen_linear(x.as_tensor(), w.as_tensor(), None).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(w.as_tensor()).is_some());
        assert_eq!(y.dtype(), DType::F32);
    }

    #[test]
    fn a_width_mismatch_is_an_error() {
        let w = seeded((3, 2), 7);
        let x = Var::from_tensor(&seeded((4, 5), 8)).unwrap();
        assert!(frozen_linear(x.as_tensor(), &w, None).is_err());
    }
}
