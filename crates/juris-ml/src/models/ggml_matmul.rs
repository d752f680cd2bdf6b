//! Quantized matrix products on CPU with the activations quantized exactly as llama.cpp's
//! CPU backend (ggml) quantizes them, so that a quantized model computes llama.cpp's
//! numbers up to the summation order of f32 sums.
//!
//! A quantized `x Wᵀ` first rounds each row of `x` to 8 bits, in blocks of the weight
//! type's "vec-dot" format: Q8_1 for Q4_1/Q5_1 weights, Q8_0 for Q4_0/Q5_0/Q8_0, Q8_K for
//! the K-quants. candle's kernels do that step differently from ggml in three ways, each
//! measured on the same input rows against llama.cpp's own output (SmolLM2 layer 0 q
//! projection, Q4_1; llama.cpp's tensors read through its eval callback):
//!
//! * the scale's inverse: candle multiplies by `1 / d` with `d = amax / 127`, ggml by
//!   `127 / amax` (they differ in the last bit for some blocks);
//! * ties: candle rounds half away from zero, ggml half to even (its SIMD path rounds with
//!   the current rounding mode, its K-quant path with the `+ 1.5·2²³` trick);
//! * Q8_1's block sum `s` (multiplied by the weight's block minimum in Q4_1): candle
//!   stores `f16(f16(Σq) · f16(d))`, ggml `f16(d · Σq)` with `d` unrounded.
//!
//! Together they move the outputs by up to 9e-4 of their range (candle's kernel vs
//! llama.cpp; ggml's recipe emulated in numpy: 1e-7, summation order). Through 30 layers
//! that became a ~0.1 median shift of the final logits and flipped near-tied argmaxes.
//!
//! The dot products are candle's ([`GgmlType::vec_dot`], SIMD where candle has it), fed
//! with activation blocks built here, except Q4_1 · Q8_1, whose candle kernel is scalar:
//! an AVX2 kernel here sums in ggml's x86 order, so SmolLM2's Q4_1 matmuls give llama.cpp's
//! outputs bit for bit, and decode no longer spends most of its time in scalar code. Only CPU tensors of the types above take
//! this path; everything else goes to candle's `QMatMul`.

use candle_core::quantized::k_quants::{
    BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0,
    BlockQ8_1, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::error::Result;

const QK8: usize = 32;
const QK_K: usize = 256;

/// ggml's Q8_0 block (`d`, 32 quants); same layout as candle's `BlockQ8_0`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Q8_0 {
    d: f16,
    qs: [i8; QK8],
}

/// ggml's Q8_1 block (`d`, `s = d·Σq`, 32 quants); same layout as candle's `BlockQ8_1`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Q8_1 {
    d: f16,
    s: f16,
    qs: [i8; QK8],
}

/// ggml's Q8_K block (`d`, 256 quants, sums of 16); same layout as candle's `BlockQ8K`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Q8K {
    d: f32,
    qs: [i8; QK_K],
    bsums: [i16; QK_K / 16],
}

const _: () = {
    assert!(std::mem::size_of::<Q8_0>() == std::mem::size_of::<BlockQ8_0>());
    assert!(std::mem::align_of::<Q8_0>() == std::mem::align_of::<BlockQ8_0>());
    assert!(std::mem::size_of::<Q8_1>() == std::mem::size_of::<BlockQ8_1>());
    assert!(std::mem::align_of::<Q8_1>() == std::mem::align_of::<BlockQ8_1>());
    assert!(std::mem::size_of::<Q8K>() == std::mem::size_of::<BlockQ8K>());
    assert!(std::mem::align_of::<Q8K>() == std::mem::align_of::<BlockQ8K>());
};

/// `127 / amax` and `amax / 127` of one block, as ggml's x86 `quantize_row_q8_0/1`.
fn scales(xs: &[f32]) -> (f32, f32) {
    let amax = xs.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    (d, id)
}

fn quantize_q8_0(xs: &[f32]) -> Vec<Q8_0> {
    xs.chunks_exact(QK8)
        .map(|b| {
            let (d, id) = scales(b);
            let mut qs = [0i8; QK8];
            for (q, &x) in qs.iter_mut().zip(b) {
                *q = (x * id).round_ties_even() as i8;
            }
            Q8_0 {
                d: f16::from_f32(d),
                qs,
            }
        })
        .collect()
}

fn quantize_q8_1(xs: &[f32]) -> Vec<Q8_1> {
    xs.chunks_exact(QK8)
        .map(|b| {
            let (d, id) = scales(b);
            let mut qs = [0i8; QK8];
            let mut sum = 0i32;
            for (q, &x) in qs.iter_mut().zip(b) {
                *q = (x * id).round_ties_even() as i8;
                sum += *q as i32;
            }
            Q8_1 {
                d: f16::from_f32(d),
                s: f16::from_f32(d * sum as f32),
                qs,
            }
        })
        .collect()
}

/// ggml's `quantize_row_q8_K_ref`: the scale comes from the signed value of largest
/// magnitude, rounding is to nearest even, quants are capped at 127.
fn quantize_q8k(xs: &[f32]) -> Vec<Q8K> {
    xs.chunks_exact(QK_K)
        .map(|b| {
            let (mut max, mut amax) = (0f32, 0f32);
            for &x in b {
                if x.abs() > amax {
                    amax = x.abs();
                    max = x;
                }
            }
            let mut y = Q8K {
                d: 0.0,
                qs: [0; QK_K],
                bsums: [0; QK_K / 16],
            };
            if amax == 0.0 {
                return y;
            }
            let iscale = -127.0 / max;
            for (q, &x) in y.qs.iter_mut().zip(b) {
                *q = ((iscale * x).round_ties_even() as i32).min(127) as i8;
            }
            for (s, qs) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
                *s = qs.iter().map(|&q| q as i16).sum();
            }
            y.d = 1.0 / iscale;
            y
        })
        .collect()
}

/// Reinterprets ggml-layout blocks as candle's type of the same layout.
///
/// # Safety
/// `A` and `B` must be `#[repr(C)]` with identical size, alignment and field layout.
unsafe fn cast_blocks<A, B>(a: &[A]) -> &[B] {
    std::slice::from_raw_parts(a.as_ptr() as *const B, a.len())
}

/// `x Wᵀ` for rows `x` (`m × k`, f32) and a weight of `T` blocks (`n × k`), the activations
/// quantized by `quant` into blocks of `T::VecDotType`.
fn matmul<T: GgmlType, A: Send + Sync>(
    w: &[u8],
    xs: &[f32],
    mkn: (usize, usize, usize),
    quant: impl Fn(&[f32]) -> Vec<A>,
) -> Vec<f32> {
    matmul_with::<T, A>(w, xs, mkn, quant, |k, w, a| T::vec_dot(k, w, a))
}

/// [`matmul`] with the dot product `dot(k, weight row, activation row)`.
fn matmul_with<T: GgmlType, A: Send + Sync>(
    w: &[u8],
    xs: &[f32],
    (m, k, n): (usize, usize, usize),
    quant: impl Fn(&[f32]) -> Vec<A>,
    dot: impl Fn(usize, &[T], &[T::VecDotType]) -> f32 + Sync,
) -> Vec<f32> {
    assert!(
        std::mem::size_of::<A>() == std::mem::size_of::<T::VecDotType>()
            && std::mem::align_of::<A>() == std::mem::align_of::<T::VecDotType>(),
        "activation blocks do not match {:?}'s vec-dot type",
        T::DTYPE
    );
    let kb = k / T::BLCK_SIZE;
    // SAFETY: the bytes are candle's own storage of `n · kb` blocks of `T` (a `Vec<T>`,
    // so aligned for `T`); the caller checked the element count.
    let w: &[T] = unsafe { std::slice::from_raw_parts(w.as_ptr() as *const T, n * kb) };
    let acts: Vec<A> = xs.chunks_exact(k).flat_map(&quant).collect();
    // SAFETY: `A` is the ggml block that `T::VecDotType` lays out identically (checked
    // at compile time above for the three pairs used).
    let acts: &[T::VecDotType] = unsafe { cast_blocks(&acts) };
    let mut out = vec![0f32; m * n];
    // Columns in chunks: enough work per task to hide rayon's scheduling, several tasks
    // per thread to balance.
    let chunk = (n / (4 * rayon::current_num_threads().max(1))).clamp(16, 1024);
    for (row, y) in out.chunks_exact_mut(n).enumerate() {
        let a = &acts[row * kb..(row + 1) * kb];
        y.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
            let first = c * chunk;
            for (j, v) in ys.iter_mut().enumerate() {
                let col = first + j;
                *v = dot(k, &w[col * kb..(col + 1) * kb], a);
            }
        });
    }
    out
}

/// Q4_1 · Q8_1 in ggml's x86 order (candle's is scalar): per block, 8 lanes of 4-product
/// integer sums, `acc += (d_w·d_a)·lanes` (fused), then ggml's horizontal sum plus the
/// running `Σ m_w·s_a`.
fn dot_q4_1_q8_1(k: usize, w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected; the slices hold k / 32 blocks each.
            return unsafe { dot_q4_1_q8_1_avx2(w, a) };
        }
    }
    BlockQ4_1::vec_dot(k, w, a)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_q4_1_q8_1_avx2(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    use std::arch::x86_64::*;
    const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
    // Raw layouts (candle's fields are private): Q4_1 `d, m: f16, qs: [u8; 16]`, Q8_1
    // `d, s: f16, qs: [i8; 32]`.
    let wb = w.as_ptr() as *const u8;
    let ab = a.as_ptr() as *const u8;
    let f16_at = |p: *const u8| f16::from_bits(u16::from_le_bytes([*p, *p.add(1)])).to_f32();
    let low = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for i in 0..w.len().min(a.len()) {
        let x = wb.add(i * 20);
        let y = ab.add(i * std::mem::size_of::<BlockQ8_1>());
        let (d0, m0) = (f16_at(x), f16_at(x.add(2)));
        let (d1, s1) = (f16_at(y), f16_at(y.add(2)));
        summs += m0 * s1;
        let d = _mm256_set1_ps(d0 * d1);
        let nib = _mm_loadu_si128(x.add(4) as *const __m128i);
        let qx = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nib, 4), nib), low);
        let qy = _mm256_loadu_si256(y.add(4) as *const __m256i);
        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), ones);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sums), acc);
    }
    let r = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    let r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r) + summs
}

/// `x Wᵀ` computed as llama.cpp computes it (see the module docs), for `x` `[.., k]` f32 on
/// CPU and `W` `[n, k]` of a supported type; `None` when this path does not apply.
pub fn forward(w: &QTensor, x: &Tensor) -> Result<Option<Tensor>> {
    if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let (n, k) = w.shape().dims2()?;
    let blk = w.dtype().block_size();
    if x.dims().last() != Some(&k) || !k.is_multiple_of(blk) {
        return Ok(None);
    }
    if !matches!(
        w.dtype(),
        GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q5_0
            | GgmlDType::Q5_1
            | GgmlDType::Q8_0
            | GgmlDType::Q4K
            | GgmlDType::Q5K
            | GgmlDType::Q6K
    ) {
        return Ok(None);
    }
    let data = w.data()?;
    if data.len() != n * k / blk * w.dtype().type_size() {
        return Ok(None);
    }
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let m = xs.len() / k;
    let mkn = (m, k, n);
    let y = match w.dtype() {
        GgmlDType::Q4_0 => matmul::<BlockQ4_0, _>(&data, &xs, mkn, quantize_q8_0),
        GgmlDType::Q4_1 => {
            matmul_with::<BlockQ4_1, _>(&data, &xs, mkn, quantize_q8_1, |k, w, a| {
                dot_q4_1_q8_1(k, w, a)
            })
        }
        GgmlDType::Q5_0 => matmul::<BlockQ5_0, _>(&data, &xs, mkn, quantize_q8_0),
        GgmlDType::Q5_1 => matmul::<BlockQ5_1, _>(&data, &xs, mkn, quantize_q8_1),
        GgmlDType::Q8_0 => matmul::<BlockQ8_0, _>(&data, &xs, mkn, quantize_q8_0),
        GgmlDType::Q4K => matmul::<BlockQ4K, _>(&data, &xs, mkn, quantize_q8k),
        GgmlDType::Q5K => matmul::<BlockQ5K, _>(&data, &xs, mkn, quantize_q8k),
        GgmlDType::Q6K => matmul::<BlockQ6K, _>(&data, &xs, mkn, quantize_q8k),
        _ => return Ok(None),
    };
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("x has a last dimension") = n;
    Ok(Some(Tensor::from_vec(y, dims, x.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_round_half_to_even_with_ggml_block_sums() {
        // amax 127 makes the scale 1, so x.5 values are exact ties.
        let mut xs = [0f32; QK8];
        xs[..5].copy_from_slice(&[127.0, 2.5, -3.5, 0.5, 1.5]);
        assert_eq!(&quantize_q8_0(&xs)[0].qs[..5], &[127, 2, -4, 0, 2]);
        let b = &quantize_q8_1(&xs)[0];
        assert_eq!(&b.qs[..5], &[127, 2, -4, 0, 2]);
        assert_eq!(b.s, f16::from_f32((127 + 2 - 4 + 2) as f32));
        let mut xs = vec![0f32; QK_K];
        xs[..3].copy_from_slice(&[127.0, 2.5, 3.5]);
        let b = &quantize_q8k(&xs)[0];
        // ggml scales by -127/max (max signed): the largest magnitude maps to -127.
        assert_eq!(&b.qs[..3], &[-127, -2, -4]);
        assert_eq!(b.d, -1.0);
        assert_eq!(b.bsums[0], -127 - 2 - 4);
    }

    #[test]
    fn matches_the_dequantized_product_for_each_type() {
        let (m, k, n) = (3, 512, 40);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104729 % 997) as f32 / 498.0) - 1.0)
            .collect();
        let dev = Device::Cpu;
        let w = Tensor::from_vec(w, (n, k), &dev).unwrap();
        let x = Tensor::from_vec(x, (1, m, k), &dev).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let exact = x
                .broadcast_matmul(&q.dequantize(&dev).unwrap().t().unwrap())
                .unwrap();
            let ours = forward(&q, &x).unwrap().expect("a covered type");
            assert_eq!(ours.dims(), &[1, m, n]);
            let err = (ours - &exact)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = exact
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // Only the activations' 8-bit rounding separates the two.
            assert!(err < 0.02 * scale, "{dtype:?}: {err} vs {scale}");
        }
    }
}
