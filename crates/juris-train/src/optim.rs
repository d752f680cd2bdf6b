//! Optimization: AdamW (decoupled weight decay, bias-corrected moments, PyTorch's update
//! order) whose whole state can be saved and restored for an exact resume, the learning
//! rate schedule (linear warmup, then linear decay to 0), and global gradient-norm clipping.

use candle_core::{Tensor, Var};
use juris_ml::adamw::AdamWStep;

use crate::error::Result;

/// AdamW over a fixed, ordered list of variables.
pub struct AdamW {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Updates taken so far (bias correction uses it).
    pub step: u64,
    /// Both moments of each variable, `[2, numel]` (first, then second): the fused update
    /// reads and writes them as one tensor.
    state: Vec<Tensor>,
}

impl AdamW {
    /// Fresh state (zero moments) for `vars`.
    pub fn new(vars: &[Var], weight_decay: f64) -> Result<Self> {
        let zeros = |v: &Var| {
            let p = v.as_tensor();
            Tensor::zeros((2, p.elem_count()), p.dtype(), p.device())
        };
        Ok(AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            state: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
        })
    }

    /// The first moment of variable `i`, in the variable's shape.
    pub fn m(&self, i: usize, shape: &candle_core::Shape) -> Result<Tensor> {
        Ok(self.state[i].get(0)?.reshape(shape)?)
    }

    /// The second moment of variable `i`, in the variable's shape.
    pub fn v(&self, i: usize, shape: &candle_core::Shape) -> Result<Tensor> {
        Ok(self.state[i].get(1)?.reshape(shape)?)
    }

    /// Replaces both moments of variable `i` (as a checkpoint restores them).
    pub fn set_moments(&mut self, i: usize, m: &Tensor, v: &Tensor) -> Result<()> {
        self.state[i] = Tensor::stack(&[m.flatten_all()?, v.flatten_all()?], 0)?;
        Ok(())
    }

    /// One update of every variable with its gradient (`grads[i]` belongs to `vars[i]`).
    pub fn update(&mut self, vars: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        self.update_scaled(vars, grads, lr, None)
    }

    /// [`AdamW::update`] with every gradient multiplied by `grad_scale` first (gradient
    /// clipping) inside the same fused op: one op per variable (`juris_ml::adamw`), whose
    /// values equal the composed candle form bit for bit.
    pub fn update_scaled(
        &mut self,
        vars: &[Var],
        grads: &[Tensor],
        lr: f64,
        grad_scale: Option<f64>,
    ) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let step = AdamWStep {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            lr,
            bias_correction1: 1.0 - self.beta1.powi(t),
            bias_correction2: 1.0 - self.beta2.powi(t),
            grad_scale,
        };
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let p = var.as_tensor();
            let out = juris_ml::adamw::adamw_step(p, g, &self.state[i], &step)?;
            var.set(&out.get(0)?.reshape(p.shape())?)?;
            // A view into `out`: the next update reads it where it lies.
            self.state[i] = out.narrow(0, 1, 2)?;
        }
        Ok(())
    }

    /// Clips `grads` to a global L2 norm of `max_norm` (0: no clipping) and takes one
    /// update; returns the norm before clipping.
    pub fn clip_and_update(
        &mut self,
        vars: &[Var],
        grads: &[Tensor],
        lr: f64,
        max_norm: f64,
    ) -> Result<f64> {
        let norm = global_norm(grads)?;
        let scale = (max_norm > 0.0 && norm > max_norm).then(|| max_norm / (norm + 1e-6));
        self.update_scaled(vars, grads, lr, scale)?;
        Ok(norm)
    }
}

/// Learning rate of update `step` (0-based) out of `total`: linear warmup over the first
/// `warmup` updates (reaching `peak` at update `warmup - 1`), then linear decay to 0.
pub fn lr_at(step: u64, total: u64, warmup: u64, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let left = total.saturating_sub(step) as f64;
    let span = total.saturating_sub(warmup).max(1) as f64;
    peak * (left / span).clamp(0.0, 1.0)
}

/// Adds one micro-batch's gradients of `vars` (zeros for a variable its loss does not reach)
/// to `acc`, in `vars`' order: gradient accumulation over the micro-batches of a step.
pub fn accumulate_grads(
    acc: &mut Option<Vec<Tensor>>,
    vars: &[Var],
    grads: &candle_core::backprop::GradStore,
) -> Result<()> {
    let g: Vec<Option<Tensor>> = vars
        .iter()
        .map(|v| grads.get(v.as_tensor()).cloned())
        .collect();
    accumulate_sums(acc, vars, g)
}

/// [`accumulate_grads`] for gradients already gathered per variable (`sums[i]` for
/// `vars[i]`, `None`: not reached), as gradient checkpointing collects them.
pub fn accumulate_sums(
    acc: &mut Option<Vec<Tensor>>,
    vars: &[Var],
    sums: Vec<Option<Tensor>>,
) -> Result<()> {
    let g: Vec<Tensor> = vars
        .iter()
        .zip(sums)
        .map(|(v, g)| match g {
            Some(g) => Ok(g),
            None => v.as_tensor().zeros_like(),
        })
        .collect::<candle_core::Result<_>>()?;
    *acc = Some(match acc.take() {
        None => g,
        Some(a) => a
            .iter()
            .zip(&g)
            .map(|(x, y)| x + y)
            .collect::<candle_core::Result<_>>()?,
    });
    Ok(())
}

/// Global L2 norm of `grads`: each variable's sum of squares in its own dtype, widened to
/// f64, all read back to the host in one transfer and added there in order.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    // One read for all variables: reading each sum on its own waited for the device once
    // per variable (72 waits a step for MiniLM's LoRA).
    let sums: Vec<Tensor> = grads
        .iter()
        .map(|g| g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64))
        .collect::<candle_core::Result<_>>()?;
    let sums: Vec<f64> = Tensor::stack(&sums, 0)?.to_vec1()?;
    Ok(sums.iter().sum::<f64>().sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((lr_at(0, 10, 2, 1.0) - 0.5).abs() < 1e-12);
        assert!((lr_at(1, 10, 2, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(2, 10, 2, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(6, 10, 2, 1.0) - 0.5).abs() < 1e-12);
        assert_eq!(lr_at(10, 10, 2, 1.0), 0.0);
        assert!((lr_at(0, 4, 0, 2.0) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn adamw_matches_hand_computation() {
        let var = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0], &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(std::slice::from_ref(&var), 0.1).unwrap();
        let g = Tensor::new(&[0.5f64, -1.0], &Device::Cpu).unwrap();
        opt.update(std::slice::from_ref(&var), std::slice::from_ref(&g), 0.01)
            .unwrap();
        // Step 1: m̂ = g, v̂ = g², so the step is lr·g/(|g|+ε) = ±lr, after decay p(1 - lr·wd).
        let p: Vec<f64> = var.as_tensor().to_vec1().unwrap();
        let want0 = 1.0 * (1.0 - 0.001) - 0.01 * 0.5 / (0.5 + 1e-8);
        let want1 = -2.0 * (1.0 - 0.001) + 0.01 * 1.0 / (1.0 + 1e-8);
        assert!(
            (p[0] - want0).abs() < 1e-12 && (p[1] - want1).abs() < 1e-12,
            "{p:?}"
        );
    }

    #[test]
    fn clipping_scales_the_gradients_to_max_norm() {
        let p = Tensor::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let g = Tensor::new(&[3.0f64, 4.0], &Device::Cpu).unwrap();
        let clipped = Var::from_tensor(&p).unwrap();
        let mut opt = AdamW::new(std::slice::from_ref(&clipped), 0.0).unwrap();
        let norm = opt
            .clip_and_update(
                std::slice::from_ref(&clipped),
                std::slice::from_ref(&g),
                0.1,
                1.0,
            )
            .unwrap();
        assert!((norm - 5.0).abs() < 1e-12);
        // The same update from gradients scaled to norm 1 by hand.
        let by_hand = Var::from_tensor(&p).unwrap();
        let mut opt2 = AdamW::new(std::slice::from_ref(&by_hand), 0.0).unwrap();
        let scaled = (&g * (1.0 / (5.0 + 1e-6))).unwrap();
        opt2.update(std::slice::from_ref(&by_hand), &[scaled], 0.1)
            .unwrap();
        let (a, b): (Vec<f64>, Vec<f64>) = (
            clipped.as_tensor().to_vec1().unwrap(),
            by_hand.as_tensor().to_vec1().unwrap(),
        );
        assert_eq!(a, b);
        let m = opt.m(0, p.shape()).unwrap().to_vec1::<f64>().unwrap();
        assert!((m[0] - 0.1 * 3.0 / (5.0 + 1e-6)).abs() < 1e-12, "{m:?}");
    }
}
