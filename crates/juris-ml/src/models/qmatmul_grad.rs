//! A quantized matrix product that gradients can flow through (QLoRA): `x Wᵀ` with `W` kept
//! in its GGUF quantization, whose forward is candle's own quantized kernel (CPU and CUDA)
//! and whose backward gives `∂L/∂x = ∂L/∂y · W` with `W` dequantized on the fly.
//!
//! candle's `QMatMul` applies its op without a backward, so the graph silently stops at the
//! first quantized layer and LoRA adapters below it would get no gradient. `W` itself is
//! frozen, so only the input's gradient is needed. Dequantizing per backward call (one
//! matrix at a time, freed right after) keeps the base's memory at its quantized size; the
//! cost is one dequantization per layer and step, small next to the matmuls themselves.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::error::Result;

/// `x Wᵀ` for a quantized `W` `[out, in]`, differentiable with respect to `x`.
#[derive(Debug, Clone)]
pub struct QMatMulGrad {
    weight: Arc<QTensor>,
}

impl QMatMulGrad {
    /// Wraps the quantized weight `[out, in]`.
    pub fn new(weight: Arc<QTensor>) -> Self {
        QMatMulGrad { weight }
    }

    /// `x Wᵀ` for `x` `[.., in]` (f32), recording the op so that backward reaches `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // candle's quantized kernel needs a contiguous input.
        Ok(x.contiguous()?.apply_op1(self.clone())?)
    }
}

impl CustomOp1 for QMatMulGrad {
    fn name(&self) -> &'static str {
        "qmatmul-grad"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.weight.as_ref().cpu_fwd(storage, layout)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.weight.as_ref().cuda_fwd(storage, layout)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let w = self.weight.dequantize(grad_res.device())?;
        let w = if w.dtype() == grad_res.dtype() {
            w
        } else {
            w.to_dtype(grad_res.dtype())?
        };
        let out = w.dim(0)?;
        let rows = grad_res.elem_count() / out.max(1);
        let g = grad_res.reshape((rows, out))?.matmul(&w)?;
        let g = g.reshape(arg.shape())?;
        Ok(Some(if g.dtype() == arg.dtype() {
            g
        } else {
            g.to_dtype(arg.dtype())?
        }))
    }
}
