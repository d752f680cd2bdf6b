//! The contrastive loss: InfoNCE of each query against every passage of the batch (its
//! positive, its own and other queries' hard negatives, other queries' positives as
//! in-batch negatives), on cosine similarities divided by a temperature.

use candle_core::{Tensor, D};

use crate::error::Result;

/// Added to the logit of a passage that is another positive of the query (it must not count
/// as a negative); large enough that `exp` gives exactly 0, finite so that no NaN appears.
const EXCLUDED: f32 = -1e9;

/// Mean over queries of `-log softmax(q·dᵀ/τ)[target]`.
///
/// `q` `[B, h]` and `d` `[N, h]` are L2-normalized; `targets[i]` is the column of query
/// `i`'s positive; `excluded` lists `(i, j)` pairs where passage `j` is also relevant to
/// query `i` (so it is neither target nor negative). Built from ops with backward passes
/// (the row maximum is subtracted as a constant).
pub fn info_nce(
    q: &Tensor,
    d: &Tensor,
    targets: &[usize],
    excluded: &[(usize, usize)],
    tau: f64,
) -> Result<Tensor> {
    let (b, _) = q.dims2()?;
    let (n, _) = d.dims2()?;
    let dev = q.device();
    let dtype = q.dtype();
    let mut mask = vec![0f32; b * n];
    let mut onehot = vec![0f32; b * n];
    for &(i, j) in excluded {
        if targets[i] != j {
            mask[i * n + j] = EXCLUDED;
        }
    }
    for (i, &t) in targets.iter().enumerate() {
        onehot[i * n + t] = 1.0;
    }
    let mask = Tensor::from_vec(mask, (b, n), dev)?.to_dtype(dtype)?;
    let onehot = Tensor::from_vec(onehot, (b, n), dev)?.to_dtype(dtype)?;
    let logits = ((q.matmul(&d.t()?)? / tau)? + mask)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + max)?;
    let pos = (&logits * onehot)?.sum_keepdim(D::Minus1)?;
    Ok((lse - pos)?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn normalized(v: Vec<f64>, rows: usize, cols: usize) -> Tensor {
        let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
        let n = t.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
        t.broadcast_div(&n).unwrap()
    }

    #[test]
    fn matches_a_direct_computation() {
        let q = normalized(vec![1.0, 0.2, 0.1, 0.9], 2, 2);
        let d = normalized(vec![1.0, 0.0, 0.0, 1.0, 0.7, 0.7], 3, 2);
        let tau = 0.5;
        let l: f64 = info_nce(&q, &d, &[0, 1], &[(0, 2)], tau)
            .unwrap()
            .to_scalar()
            .unwrap();
        let qv: Vec<Vec<f64>> = q.to_vec2().unwrap();
        let dv: Vec<Vec<f64>> = d.to_vec2().unwrap();
        let s = |i: usize, j: usize| (qv[i][0] * dv[j][0] + qv[i][1] * dv[j][1]) / tau;
        // Query 0: passage 2 is excluded.
        let l0 = -(s(0, 0).exp() / (s(0, 0).exp() + s(0, 1).exp())).ln();
        let l1 = -(s(1, 1).exp() / (0..3).map(|j| s(1, j).exp()).sum::<f64>()).ln();
        assert!(
            (l - (l0 + l1) / 2.0).abs() < 1e-12,
            "{l} vs {}",
            (l0 + l1) / 2.0
        );
    }

    /// The loss's gradient through the normalization matches central differences (f64).
    #[test]
    fn gradient_matches_finite_differences() {
        let raw: Vec<f64> = (0..5 * 4)
            .map(|i| ((i * 7 % 11) as f64 - 5.0) / 4.0)
            .collect();
        let qraw: Vec<f64> = (0..2 * 4)
            .map(|i| ((i * 5 % 7) as f64 - 3.0) / 3.0)
            .collect();
        let dvar = Var::from_tensor(&Tensor::from_vec(raw.clone(), (5, 4), &Device::Cpu).unwrap())
            .unwrap();
        let qvar = Var::from_tensor(&Tensor::from_vec(qraw.clone(), (2, 4), &Device::Cpu).unwrap())
            .unwrap();
        let loss = |q: &Tensor, d: &Tensor| -> Tensor {
            let nq = q.broadcast_div(&q.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap());
            let nd = d.broadcast_div(&d.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap());
            info_nce(&nq.unwrap(), &nd.unwrap(), &[0, 3], &[(1, 4)], 0.1).unwrap()
        };
        let g = loss(qvar.as_tensor(), dvar.as_tensor()).backward().unwrap();
        let gd: Vec<f64> = g
            .get(dvar.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let gq: Vec<f64> = g
            .get(qvar.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let eps = 1e-6;
        for (which, base, grad) in [(0, &qraw, &gq), (1, &raw, &gd)] {
            for i in 0..base.len() {
                let at = |delta: f64| -> f64 {
                    let mut v = base.clone();
                    v[i] += delta;
                    let t = Tensor::from_vec(v, (base.len() / 4, 4), &Device::Cpu).unwrap();
                    let l = if which == 0 {
                        loss(&t, dvar.as_tensor())
                    } else {
                        loss(qvar.as_tensor(), &t)
                    };
                    l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                assert!(
                    (fd - grad[i]).abs() < 1e-6 + 1e-5 * fd.abs(),
                    "input {which} [{i}]: backprop {} vs finite difference {fd}",
                    grad[i]
                );
            }
        }
    }
}
