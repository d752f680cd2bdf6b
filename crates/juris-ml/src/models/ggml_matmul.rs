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

// The quantizers below are plain loops, no iterator adapters: they are inlined into
// `Acts::new_avx2`, and an adapter's `fold` would stay an outlined SSE2 function calling
// libm's `rintf` per value.

/// `127 / amax` and `amax / 127` of one block, as ggml's x86 `quantize_row_q8_0/1`.
#[inline(always)]
fn scales(xs: &[f32]) -> (f32, f32) {
    let mut amax = 0f32;
    for &x in xs {
        amax = amax.max(x.abs());
    }
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    (d, id)
}

#[inline(always)]
fn quantize_q8_0(xs: &[f32]) -> Vec<Q8_0> {
    let mut out = Vec::with_capacity(xs.len() / QK8);
    for b in xs.chunks_exact(QK8) {
        let (d, id) = scales(b);
        let mut qs = [0i8; QK8];
        for (q, &x) in qs.iter_mut().zip(b) {
            *q = (x * id).round_ties_even() as i8;
        }
        out.push(Q8_0 {
            d: f16::from_f32(d),
            qs,
        });
    }
    out
}

#[inline(always)]
fn quantize_q8_1(xs: &[f32]) -> Vec<Q8_1> {
    let mut out = Vec::with_capacity(xs.len() / QK8);
    for b in xs.chunks_exact(QK8) {
        let (d, id) = scales(b);
        let mut qs = [0i8; QK8];
        let mut sum = 0i32;
        for (q, &x) in qs.iter_mut().zip(b) {
            *q = (x * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        out.push(Q8_1 {
            d: f16::from_f32(d),
            s: f16::from_f32(d * sum as f32),
            qs,
        });
    }
    out
}

/// ggml's `quantize_row_q8_K_ref`: the scale comes from the signed value of largest
/// magnitude, rounding is to nearest even, quants are capped at 127.
#[inline(always)]
fn quantize_q8k(xs: &[f32]) -> Vec<Q8K> {
    let mut out = Vec::with_capacity(xs.len() / QK_K);
    for b in xs.chunks_exact(QK_K) {
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
        if amax != 0.0 {
            let iscale = -127.0 / max;
            for (q, &x) in y.qs.iter_mut().zip(b) {
                *q = ((iscale * x).round_ties_even() as i32).min(127) as i8;
            }
            for (s, qs) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
                for &q in qs {
                    *s += q as i16;
                }
            }
            y.d = 1.0 / iscale;
        }
        out.push(y);
    }
    out
}

/// Activation rows quantized into the vec-dot blocks of one weight type, `kb` blocks a
/// row. The Q8_0 / Q8_1 scales are also kept as f32: the kernels below read each activation
/// block once per several weight rows, and converting its f16 scale once per product
/// instead of once per dot changes no value.
enum Acts {
    Q8_0 {
        blocks: Vec<Q8_0>,
        d: Vec<f32>,
    },
    Q8_1 {
        blocks: Vec<Q8_1>,
        d: Vec<f32>,
        s: Vec<f32>,
    },
    Q8K(Vec<Q8K>),
}

/// The activation format a weight type's dot product takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ActKind {
    Q8_0,
    Q8_1,
    Q8K,
}

fn act_kind(dtype: GgmlDType) -> Option<ActKind> {
    Some(match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => ActKind::Q8_0,
        GgmlDType::Q4_1 | GgmlDType::Q5_1 => ActKind::Q8_1,
        GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => ActKind::Q8K,
        _ => return None,
    })
}

impl Acts {
    /// Quantizes the rows of `xs` as ggml does for `kind` (a row's length is a multiple of
    /// the block size, so blocks never straddle rows).
    fn new(kind: ActKind, xs: &[f32]) -> Acts {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            // SAFETY: the features were just detected.
            return unsafe { Acts::new_avx2(kind, xs) };
        }
        Acts::quantize(kind, xs)
    }

    /// [`Acts::quantize`] compiled for AVX2, where rounding to nearest even is one
    /// instruction instead of a libm call per value (the crate's baseline is SSE2); the
    /// same numbers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn new_avx2(kind: ActKind, xs: &[f32]) -> Acts {
        Acts::quantize(kind, xs)
    }

    #[inline(always)]
    fn quantize(kind: ActKind, xs: &[f32]) -> Acts {
        match kind {
            ActKind::Q8_0 => {
                let blocks = quantize_q8_0(xs);
                let d = blocks.iter().map(|b| b.d.to_f32()).collect();
                Acts::Q8_0 { blocks, d }
            }
            ActKind::Q8_1 => {
                let blocks = quantize_q8_1(xs);
                let d = blocks.iter().map(|b| b.d.to_f32()).collect();
                let s = blocks.iter().map(|b| b.s.to_f32()).collect();
                Acts::Q8_1 { blocks, d, s }
            }
            ActKind::Q8K => Acts::Q8K(quantize_q8k(xs)),
        }
    }
}

/// Reinterprets ggml-layout blocks as candle's type of the same layout.
///
/// # Safety
/// `A` and `B` must be `#[repr(C)]` with identical size, alignment and field layout.
unsafe fn cast_blocks<A, B>(a: &[A]) -> &[B] {
    std::slice::from_raw_parts(a.as_ptr() as *const B, a.len())
}

/// Dots of consecutive weight rows (`w`, whole rows of `kb` blocks) with activation row
/// `row` of `acts`, one output per weight row.
type RowsKernel = fn(w: &[u8], kb: usize, acts: &Acts, row: usize, out: &mut [f32]);

/// [`RowsKernel`] through candle's dot product for `T` (SIMD where candle has it).
fn rows_candle<T: GgmlType>(w: &[u8], kb: usize, acts: &Acts, row: usize, out: &mut [f32]) {
    // SAFETY: `w` is a whole number of rows cut from candle's own `Vec<T>` storage at row
    // boundaries (multiples of `size_of::<T>()`), so aligned for `T`; `forward_fused`
    // checked the byte count.
    let w: &[T] =
        unsafe { std::slice::from_raw_parts(w.as_ptr() as *const T, w.len() / size_of::<T>()) };
    let span = row * kb..(row + 1) * kb;
    // SAFETY: each ggml block type here lays out exactly as candle's vec-dot block of the
    // same name (asserted at compile time above), and `act_kind` picked the one `T` takes.
    let a: &[T::VecDotType] = unsafe {
        match acts {
            Acts::Q8_0 { blocks, .. } => cast_blocks(&blocks[span]),
            Acts::Q8_1 { blocks, .. } => cast_blocks(&blocks[span]),
            Acts::Q8K(blocks) => cast_blocks(&blocks[span]),
        }
    };
    assert!(
        size_of::<T::VecDotType>()
            == match acts {
                Acts::Q8_0 { .. } => size_of::<Q8_0>(),
                Acts::Q8_1 { .. } => size_of::<Q8_1>(),
                Acts::Q8K(_) => size_of::<Q8K>(),
            },
        "activation blocks do not match {:?}'s vec-dot type",
        T::DTYPE
    );
    let k = kb * T::BLCK_SIZE;
    for (o, wr) in out.iter_mut().zip(w.chunks_exact(kb)) {
        *o = T::vec_dot(k, wr, a);
    }
}

/// The dot-product kernel for weights of `dtype`: ggml's x86 AVX2 order for the types its
/// sums are reproduced for here, candle's otherwise.
fn kernel(dtype: GgmlDType) -> Option<RowsKernel> {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        match dtype {
            GgmlDType::Q4_1 => return Some(avx2::rows_q4_1),
            GgmlDType::Q5_0 => return Some(avx2::rows_q5_0),
            GgmlDType::Q8_0 => return Some(avx2::rows_q8_0),
            _ => {}
        }
    }
    Some(match dtype {
        GgmlDType::Q4_0 => rows_candle::<BlockQ4_0>,
        GgmlDType::Q4_1 => rows_candle::<BlockQ4_1>,
        GgmlDType::Q5_0 => rows_candle::<BlockQ5_0>,
        GgmlDType::Q5_1 => rows_candle::<BlockQ5_1>,
        GgmlDType::Q8_0 => rows_candle::<BlockQ8_0>,
        GgmlDType::Q4K => rows_candle::<BlockQ4K>,
        GgmlDType::Q5K => rows_candle::<BlockQ5K>,
        GgmlDType::Q6K => rows_candle::<BlockQ6K>,
        _ => return None,
    })
}

/// ggml's AVX2 dot products (`ggml-cpu/arch/x86/quants.c`), each summed in ggml's order:
/// per block, 8 lanes of exact integer sums of 4 products, `acc = fma(d_w·d_a, lanes, acc)`
/// in block order, then ggml's horizontal sum. One weight row at a time, as ggml does:
/// passing 4 rows together over each activation block (so the activations are loaded
/// once) measured 2× slower per decoded token, the interleaved short streams defeating the
/// hardware prefetcher that one sequential stream keeps busy.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Acts, Q8_0, Q8_1};
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }

    /// The f16 at `p` (unaligned) as f32, exactly.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_at(p: *const u8) -> f32 {
        let bits = (p as *const u16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum_float_8(x: __m256) -> f32 {
        let r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        let r = _mm_add_ss(r, _mm_movehdup_ps(r));
        _mm_cvtss_f32(r)
    }

    /// 8 lanes, each the sum of 4 adjacent products of unsigned `ax` and signed `sy`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn mul_sum_us8_pairs_float(ax: __m256i, sy: __m256i) -> __m256 {
        let dot = _mm256_maddubs_epi16(ax, sy);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot))
    }

    /// The same for two signed vectors (the sign moved onto `y`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn mul_sum_i8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
        mul_sum_us8_pairs_float(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
    }

    /// 32 packed nibbles at `p` as bytes: low nibbles first, then high nibbles.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bytes_from_nibbles_32(p: *const u8) -> __m256i {
        let tmp = _mm_loadu_si128(p as *const __m128i);
        let bytes = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
        _mm256_and_si256(bytes, _mm256_set1_epi8(0x0F))
    }

    /// Bit `i` of the 32 bits at `p` spread to byte `i` (0xFF when set, 0 otherwise).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bytes_from_bits_32(p: *const u8) -> __m256i {
        let x32 = (p as *const u32).read_unaligned();
        let shuf = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32 as i32), shuf);
        let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
        _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
    }

    fn q8_0_acts(acts: &Acts, row: usize, kb: usize) -> (&[Q8_0], &[f32]) {
        match acts {
            Acts::Q8_0 { blocks, d } => (
                &blocks[row * kb..(row + 1) * kb],
                &d[row * kb..(row + 1) * kb],
            ),
            _ => unreachable!("Q8_0 activations for a Q8_0-dot weight"),
        }
    }

    /// Q8_0 weights (34-byte blocks: f16 `d`, 32 `i8`) · Q8_0 activations.
    pub(super) fn rows_q8_0(w: &[u8], kb: usize, acts: &Acts, row: usize, out: &mut [f32]) {
        let (a, ad) = q8_0_acts(acts, row, kb);
        for (o, wr) in out.iter_mut().zip(w.chunks_exact(kb * 34)) {
            // SAFETY: `available()` chose this kernel; `wr` holds `kb` blocks, as do `a`
            // and `ad`.
            *o = unsafe { q8_0_row(wr.as_ptr(), a, ad) };
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_row(w: *const u8, a: &[Q8_0], ad: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (b, (ya, &dy)) in a.iter().zip(ad).enumerate() {
            let x = w.add(b * 34);
            let d = _mm256_set1_ps(f16_at(x) * dy);
            let qx = _mm256_loadu_si256(x.add(2) as *const __m256i);
            let qy = _mm256_loadu_si256(ya.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc);
        }
        hsum_float_8(acc)
    }

    /// Q5_0 weights (22-byte blocks: f16 `d`, 32 high bits, 16 bytes of nibbles) · Q8_0.
    pub(super) fn rows_q5_0(w: &[u8], kb: usize, acts: &Acts, row: usize, out: &mut [f32]) {
        let (a, ad) = q8_0_acts(acts, row, kb);
        for (o, wr) in out.iter_mut().zip(w.chunks_exact(kb * 22)) {
            // SAFETY: as in `rows_q8_0`.
            *o = unsafe { q5_0_row(wr.as_ptr(), a, ad) };
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5_0_row(w: *const u8, a: &[Q8_0], ad: &[f32]) -> f32 {
        let high = _mm256_set1_epi8(0xF0u8 as i8);
        let mut acc = _mm256_setzero_ps();
        for (b, (ya, &dy)) in a.iter().zip(ad).enumerate() {
            let x = w.add(b * 22);
            let d = _mm256_set1_ps(f16_at(x) * dy);
            // A clear fifth bit makes the nibble negative: (q | 0xF0) = q - 16.
            let hi = _mm256_andnot_si256(bytes_from_bits_32(x.add(2)), high);
            let qx = _mm256_or_si256(bytes_from_nibbles_32(x.add(6)), hi);
            let qy = _mm256_loadu_si256(ya.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc);
        }
        hsum_float_8(acc)
    }

    /// Q4_1 weights (20-byte blocks: f16 `d`, f16 `m`, 16 bytes of nibbles) · Q8_1, with
    /// ggml's running `Σ m_w·s_a` added after the horizontal sum.
    pub(super) fn rows_q4_1(w: &[u8], kb: usize, acts: &Acts, row: usize, out: &mut [f32]) {
        let (a, ad, as_) = match acts {
            Acts::Q8_1 { blocks, d, s } => (
                &blocks[row * kb..(row + 1) * kb],
                &d[row * kb..(row + 1) * kb],
                &s[row * kb..(row + 1) * kb],
            ),
            _ => unreachable!("Q8_1 activations for a Q4_1 weight"),
        };
        for (o, wr) in out.iter_mut().zip(w.chunks_exact(kb * 20)) {
            // SAFETY: as in `rows_q8_0`.
            *o = unsafe { q4_1_row(wr.as_ptr(), a, ad, as_) };
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_row(w: *const u8, a: &[Q8_1], ad: &[f32], as_: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        for (b, ((ya, &dy), &sy)) in a.iter().zip(ad).zip(as_).enumerate() {
            let x = w.add(b * 20);
            // `d` and `m` are adjacent: one conversion gives both.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((x as *const i32).read_unaligned()));
            let (dx, mx) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
            summs += mx * sy;
            let d = _mm256_set1_ps(dx * dy);
            let qx = bytes_from_nibbles_32(x.add(4));
            let qy = _mm256_loadu_si256(ya.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_us8_pairs_float(qx, qy), acc);
        }
        hsum_float_8(acc) + summs
    }
}

/// Output rows per parallel task: enough work to hide rayon's scheduling, several tasks
/// per thread to balance; a multiple of 4.
fn rows_per_task(total_rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (total_rows / (8 * threads)).clamp(16, 512) / 4 * 4
}

/// `x Wᵢᵀ` for every weight `Wᵢ` (`[nᵢ, k]`) and rows `xs` (`m × k`), the activations
/// quantized once for all of them (they share a vec-dot format) and all outputs computed
/// in one parallel pass. Each result is `m × nᵢ`, row-major.
fn matmuls(ws: &[(&[u8], GgmlDType, usize)], xs: &[f32], k: usize, kind: ActKind) -> Vec<Vec<f32>> {
    let m = xs.len() / k;
    let acts = Acts::new(kind, xs);
    let total: usize = ws.iter().map(|w| w.2).sum();
    let per_task = rows_per_task(total);
    // Outputs column-major (`nᵢ × m`) while computing, so each task owns one contiguous
    // slice: its weight rows stay in cache while every activation row passes over them.
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; w.2 * m]).collect();
    let mut tasks = Vec::new();
    for (wi, out) in outs.iter_mut().enumerate() {
        let (data, dtype, n) = ws[wi];
        let row_bytes = data.len() / n;
        let kern = kernel(dtype).expect("checked by forward_fused");
        let kb = k / dtype.block_size();
        for (c, o) in out.chunks_mut(per_task * m).enumerate() {
            let rows = o.len() / m;
            let first = c * per_task;
            let w = &data[first * row_bytes..(first + rows) * row_bytes];
            tasks.push((kern, kb, w, o));
        }
    }
    tasks.into_par_iter().for_each(|(kern, kb, w, o)| {
        if m == 1 {
            kern(w, kb, &acts, 0, o);
            return;
        }
        let mut col = vec![0f32; o.len() / m];
        for i in 0..m {
            kern(w, kb, &acts, i, &mut col);
            for (j, v) in col.iter().enumerate() {
                o[j * m + i] = *v;
            }
        }
    });
    if m > 1 {
        for (out, w) in outs.iter_mut().zip(ws) {
            let n = w.2;
            let mut t = vec![0f32; out.len()];
            for j in 0..n {
                for i in 0..m {
                    t[i * n + j] = out[j * m + i];
                }
            }
            *out = t;
        }
    }
    outs
}

/// `x Wᵀ` computed as llama.cpp computes it (see the module docs), for `x` `[.., k]` f32 on
/// CPU and `W` `[n, k]` of a supported type; `None` when this path does not apply.
pub fn forward(w: &QTensor, x: &Tensor) -> Result<Option<Tensor>> {
    Ok(forward_fused(&[w], x)?.and_then(|mut v| v.pop()))
}

/// [`forward`] for several weights applied to the same `x` (a block's q, k and v, or its
/// gate and up projections): the activations are quantized once and one parallel pass
/// computes every output, saving the repeated rounding and a thread hand-off per weight.
/// The numbers are those of [`forward`] on each weight. `None` when any weight is not
/// covered or they take different activation formats.
pub fn forward_fused(ws: &[&QTensor], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
    if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 || ws.is_empty() {
        return Ok(None);
    }
    let k = match x.dims().last() {
        Some(&k) => k,
        None => return Ok(None),
    };
    let mut kind = None;
    let mut datas = Vec::with_capacity(ws.len());
    for w in ws {
        let (n, wk) = w.shape().dims2()?;
        let blk = w.dtype().block_size();
        let this = act_kind(w.dtype());
        if wk != k || !k.is_multiple_of(blk) || this.is_none() || (kind.is_some() && kind != this) {
            return Ok(None);
        }
        kind = this;
        let data = w.data()?;
        if data.len() != n * k / blk * w.dtype().type_size() {
            return Ok(None);
        }
        datas.push((data, w.dtype(), n));
    }
    let kind = kind.expect("at least one weight");
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let refs: Vec<(&[u8], GgmlDType, usize)> =
        datas.iter().map(|(d, t, n)| (d.as_ref(), *t, *n)).collect();
    let ys = matmuls(&refs, &xs, k, kind);
    let mut out = Vec::with_capacity(ys.len());
    for (y, (_, _, n)) in ys.into_iter().zip(&refs) {
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("x has a last dimension") = *n;
        out.push(Tensor::from_vec(y, dims, x.device())?);
    }
    Ok(Some(out))
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

    /// `n` deterministic values `(i · mul mod modulus) / div - shift`, spread over the
    /// residues so blocks get varied scales.
    fn pattern(n: usize, mul: usize, modulus: usize, div: f32, shift: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i * mul % modulus) as f32 / div - shift)
            .collect()
    }

    #[test]
    fn matches_the_dequantized_product_for_each_type() {
        let (m, k, n) = (3, 512, 40);
        let w = pattern(n * k, 7919, 1000, 500.0, 1.0);
        let x = pattern(m * k, 104729, 997, 498.0, 1.0);
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

    /// A weight block's integer values in element order, its scale and (Q4_1) minimum,
    /// read from the raw GGUF layout.
    fn weight_block(dtype: GgmlDType, b: &[u8]) -> ([i32; QK8], f32, f32) {
        let h = |o: usize| f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])).to_f32();
        let mut q = [0i32; QK8];
        match dtype {
            GgmlDType::Q8_0 => {
                for (i, v) in q.iter_mut().enumerate() {
                    *v = b[2 + i] as i8 as i32;
                }
                (q, h(0), 0.0)
            }
            GgmlDType::Q5_0 => {
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for (i, v) in q.iter_mut().enumerate() {
                    let nib = if i < 16 {
                        b[6 + i] & 15
                    } else {
                        b[6 + i - 16] >> 4
                    } as i32;
                    *v = (nib | (((qh >> i) & 1) as i32) << 4) - 16;
                }
                (q, h(0), 0.0)
            }
            GgmlDType::Q4_1 => {
                for (i, v) in q.iter_mut().enumerate() {
                    *v = if i < 16 {
                        b[4 + i] & 15
                    } else {
                        b[4 + i - 16] >> 4
                    } as i32;
                }
                (q, h(0), h(2))
            }
            other => unreachable!("{other:?}"),
        }
    }

    /// ggml's AVX2 dot product written out in scalar code: per block, 8 lanes of 4-product
    /// integer sums fused into per-lane accumulators, then `(l0+l4 + l2+l6) + (l1+l5 +
    /// l3+l7)`, plus Q4_1's running `Σ m·s`.
    fn ggml_order_dot(dtype: GgmlDType, w: &[u8], x: &[f32]) -> f32 {
        let bytes = dtype.type_size();
        let mut lanes = [0f32; 8];
        let mut summs = 0f32;
        for (wb, xb) in w.chunks_exact(bytes).zip(x.chunks_exact(QK8)) {
            let (q, d, m) = weight_block(dtype, wb);
            let (aq, ad, as_) = if dtype == GgmlDType::Q4_1 {
                let a = &quantize_q8_1(xb)[0];
                (a.qs, a.d.to_f32(), a.s.to_f32())
            } else {
                let a = &quantize_q8_0(xb)[0];
                (a.qs, a.d.to_f32(), 0.0)
            };
            summs += m * as_;
            for (l, lane) in lanes.iter_mut().enumerate() {
                let s: i32 = (4 * l..4 * l + 4).map(|i| q[i] * aq[i] as i32).sum();
                *lane = (d * ad).mul_add(s as f32, *lane);
            }
        }
        let r: Vec<f32> = (0..4).map(|i| lanes[i + 4] + lanes[i]).collect();
        (r[0] + r[2]) + (r[1] + r[3]) + summs
    }

    #[test]
    fn kernels_sum_in_ggml_order() {
        let (m, k, n) = (3, 256, 7);
        let w = pattern(n * k, 7919, 1013, 506.0, 1.0);
        let x = pattern(m * k, 104729, 997, 211.0, 2.3);
        let dev = Device::Cpu;
        let wt = Tensor::from_vec(w, (n, k), &dev).unwrap();
        let xt = Tensor::from_vec(x.clone(), (m, k), &dev).unwrap();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q5_0, GgmlDType::Q4_1] {
            let q = QTensor::quantize(&wt, dtype).unwrap();
            let data = q.data().unwrap();
            let row_bytes = data.len() / n;
            let ours = forward(&q, &xt).unwrap().unwrap().to_vec2::<f32>().unwrap();
            for (i, xr) in x.chunks_exact(k).enumerate() {
                for (j, wr) in data.chunks_exact(row_bytes).enumerate() {
                    let want = ggml_order_dot(dtype, wr, xr);
                    assert_eq!(ours[i][j].to_bits(), want.to_bits(), "{dtype:?} [{i}, {j}]");
                }
            }
        }
    }

    #[test]
    fn fused_products_equal_separate_ones() {
        let (k, dev) = (128, Device::Cpu);
        let x = Tensor::from_vec(
            (0..2 * k)
                .map(|i| (i as f32 * 0.37).sin())
                .collect::<Vec<_>>(),
            (1, 2, k),
            &dev,
        )
        .unwrap();
        let weight = |n: usize, dtype| {
            let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
            QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev).unwrap(), dtype).unwrap()
        };
        let (a, b) = (weight(40, GgmlDType::Q5_0), weight(24, GgmlDType::Q8_0));
        let fused = forward_fused(&[&a, &b], &x).unwrap().unwrap();
        for (f, w) in fused.iter().zip([&a, &b]) {
            let alone = forward(w, &x).unwrap().unwrap();
            assert_eq!(f.dims(), alone.dims());
            let (f, alone) = (f.flatten_all().unwrap(), alone.flatten_all().unwrap());
            assert_eq!(f.to_vec1::<f32>().unwrap(), alone.to_vec1::<f32>().unwrap());
        }
        // Different activation formats (Q8_0 vs Q8_1) do not fuse.
        let c = weight(8, GgmlDType::Q4_1);
        assert!(forward_fused(&[&a, &c], &x).unwrap().is_none());
    }
}
