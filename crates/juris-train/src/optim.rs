//! Optimization: AdamW (decoupled weight decay, bias-corrected moments, PyTorch's update
//! order) whose whole state can be saved and restored for an exact resume, the learning
//! rate schedule (linear warmup, then linear decay to 0), and global gradient-norm clipping.

use candle_core::{Tensor, Var};

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
    /// First moments, one per variable.
    pub m: Vec<Tensor>,
    /// Second moments, one per variable.
    pub v: Vec<Tensor>,
}

impl AdamW {
    /// Fresh state (zero moments) for `vars`.
    pub fn new(vars: &[Var], weight_decay: f64) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
        })
    }

    /// One update of every variable with its gradient (`grads[i]` belongs to `vars[i]`).
    pub fn update(&mut self, vars: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let p = var.as_tensor();
            let m = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
            let decayed = (p * (1.0 - lr * self.weight_decay))?;
            let next = (decayed - ((&m / bc1)? / denom)? * lr)?;
            var.set(&next)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
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

/// Scales `grads` so that their global norm is at most `max_norm` (0: unchanged); returns the
/// norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
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
    fn clipping_scales_to_max_norm() {
        let mut g = vec![Tensor::new(&[3.0f64, 4.0], &Device::Cpu).unwrap()];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-12);
        assert!((global_norm(&g).unwrap() - 1.0).abs() < 1e-6);
    }
}
