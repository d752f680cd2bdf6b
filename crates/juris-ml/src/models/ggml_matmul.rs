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
//! The sums are then ggml's own, so that the outputs are llama.cpp's bit for bit: AVX2
//! kernels here for Q8_0, Q5_0 and Q4_1 (ggml's x86 `vec_dot` order) and for Q4_K and Q6_K
//! (the order llama.cpp really uses for them, which depends on the number of rows: its
//! repacked Q4_K GEMV/GEMM and, for Q6_K, `vec_dot` for a token and its tiled kernel for a
//! prompt; see [`kquant`]), each with a scalar fallback that computes the same numbers.
//! Every quantized product of SmolLM2 Q4_1 and Gemma-3-270M Q4_K_M (prompt and decoded
//! token, all layers) equals llama.cpp's on its own inputs (`scripts/diag/`,
//! `examples/parity_probe.rs`); tests compare each kernel with ggml's order written out in
//! scalar code. For a prompt, the Q4_1, Q5_0, Q8_0, Q4_K and Q6_K kernels also run four
//! activation rows over each weight block at once ([`Rows4Kernel`]), with the same numbers
//! as one row at a time (for the K-quants: as one row at a time in a product of that many
//! rows, whose order they follow). Q4_0, Q5_1 and Q5_K still use candle's dot products on our activation
//! blocks. Only CPU tensors of the types above take this path; everything else goes to
//! candle's `QMatMul`.

use candle_core::quantized::k_quants::{
    BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType,
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
            GgmlDType::Q4K => return Some(avx2::rows_q4k),
            GgmlDType::Q6K => return Some(avx2::rows_q6k),
            _ => {}
        }
    }
    Some(match dtype {
        GgmlDType::Q4_0 => rows_candle::<BlockQ4_0>,
        GgmlDType::Q4_1 => rows_candle::<BlockQ4_1>,
        GgmlDType::Q5_0 => rows_candle::<BlockQ5_0>,
        GgmlDType::Q5_1 => rows_candle::<BlockQ5_1>,
        GgmlDType::Q8_0 => rows_candle::<BlockQ8_0>,
        GgmlDType::Q4K => kquant::rows_q4k,
        GgmlDType::Q5K => rows_candle::<BlockQ5K>,
        GgmlDType::Q6K => kquant::rows_q6k,
        _ => return None,
    })
}

/// Dots of consecutive weight rows with the four activation rows `row..row + 4` of `acts`:
/// `out[r]` gets row `row + r`'s outputs, each the same number the [`RowsKernel`] of the
/// type gives (the same operations in the same order), while every weight block is read and
/// decoded once for the four. Used for prompts, where several activation rows pass over the
/// same weights.
type Rows4Kernel = fn(w: &[u8], kb: usize, acts: &Acts, row: usize, out: [&mut [f32]; 4]);

/// The four-row kernel for weights of `dtype`, where there is one.
fn kernel4(dtype: GgmlDType) -> Option<Rows4Kernel> {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        match dtype {
            GgmlDType::Q4_1 => return Some(avx2::rows4_q4_1),
            GgmlDType::Q5_0 => return Some(avx2::rows4_q5_0),
            GgmlDType::Q8_0 => return Some(avx2::rows4_q8_0),
            GgmlDType::Q4K => return Some(avx2::rows4_q4k),
            GgmlDType::Q6K => return Some(avx2::rows4_q6k),
            _ => {}
        }
    }
    let _ = dtype;
    None
}

/// The Q8_K activation blocks of row `row` (`kb` blocks a row) and the number of rows
/// `m` of the product (llama.cpp's order for K-quants depends on it, see [`kquant`]).
fn q8k_row(acts: &Acts, row: usize, kb: usize) -> (&[Q8K], usize) {
    match acts {
        Acts::Q8K(blocks) => (&blocks[row * kb..(row + 1) * kb], blocks.len() / kb),
        _ => unreachable!("Q8_K activations for a K-quant weight"),
    }
}

/// Whether llama.cpp computes row `row` of `m` of a repacked Q4_K product in a group of
/// four rows (the first `m - m % 4` rows are).
fn q4k_grouped(row: usize, m: usize) -> bool {
    row < m - m % 4
}

/// Products of at least this many rows take llama.cpp's tiled path for Q6_K (one f32
/// product per superblock instead of `vec_dot`'s 8 lanes).
const Q6K_TILED_ROWS: usize = 8;

/// Q4_K and Q6_K products in llama.cpp's order, portable code (the AVX2 kernels in
/// [`avx2`] compute the same numbers faster).
///
/// llama.cpp does not use one order for these types. Observed on its own tensors
/// (llama-cpp-python 0.3.36, x86 with AVX2/AVX-512; `scripts/diag/llamacpp_tensors.py`)
/// and reproduced bit for bit:
///
/// * **Q4_K** weights are "repacked" at load time (8 rows interleaved; its CPU_REPACK
///   buffer, on by default). Every output then accumulates two f32 sums with FMA, one of
///   `scale·q·a` and one of `min·Σa` (the block minimum's share), each integer part exact,
///   multiplied by `d_w·d_a` and `dmin_w·d_a`, and subtracts them at the end. A row that
///   is part of a group of four activation rows (the first `m - m % 4` of `m`) adds one
///   integer per 64 values (two sub-blocks of 32); a lone row (a decoded token, or the
///   last `m % 4` rows of a prompt) one per superblock of 256.
/// * **Q6_K** is not repacked on x86. Fewer than [`Q6K_TILED_ROWS`] rows (a decoded
///   token) go through ggml's AVX2 `vec_dot`: 8 lanes of exact integer sums per
///   superblock (lane `l` holds the products of values `4l..4l+4` of each 32, with the
///   `-32` offset of the 6-bit codes taken off as `32·scale·Σa` of sub-blocks `2l` and
///   `2l+1`), fused into 8 f32 accumulators with `d_w·d_a`, then ggml's horizontal sum.
///   Longer products (a prompt) take its tiled kernel: one exact integer per superblock,
///   `(Σ as f32) · d_w`, fused into one accumulator with `d_a`.
mod kquant {
    use super::{q4k_grouped, q8k_row, Q6K_TILED_ROWS, Q8K, QK_K};
    use half::f16;

    /// Bytes of one Q4_K block: f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and
    /// minimums, 128 bytes of nibbles.
    pub(super) const Q4K_BYTES: usize = 144;
    /// Bytes of one Q6_K block: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16
    /// signed scales, f16 `d`.
    pub(super) const Q6K_BYTES: usize = 210;

    pub(super) fn f16_le(b: &[u8]) -> f32 {
        f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
    }

    /// The scales and minimums of a Q4_K block's eight sub-blocks of 32, unpacked from
    /// its 12 bytes (6 bits each: the first four in the low bits of bytes 0..8, the last
    /// four split between bytes 8..12 and the top bits of bytes 0..8).
    pub(super) fn q4k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
        let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
        for j in 0..4 {
            sc[j] = s[j] & 63;
            mn[j] = s[j + 4] & 63;
            sc[j + 4] = (s[j + 8] & 15) | ((s[j] >> 6) << 4);
            mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
        }
        (sc, mn)
    }

    /// `Σ min·(Σa)` over the two sub-blocks of each 64 values (Q8_K keeps sums of 16).
    pub(super) fn q4k_min_sums(mn: &[u8; 8], y: &Q8K) -> [i32; 4] {
        let mut out = [0i32; 4];
        for (p, o) in out.iter_mut().enumerate() {
            for (j, &m) in mn.iter().enumerate().skip(2 * p).take(2) {
                let bsum = y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32;
                *o += m as i32 * bsum;
            }
        }
        out
    }

    /// Adds one superblock's integer sums (per 64 values: `Σ scale·q·a`, `Σ min·Σa`)
    /// to the two accumulators, per 64 values for grouped rows, at once otherwise.
    #[inline(always)]
    pub(super) fn q4k_accumulate(
        sums: [i32; 4],
        mins: [i32; 4],
        d: f32,
        dmin: f32,
        grouped: bool,
        acc: &mut f32,
        accm: &mut f32,
    ) {
        if grouped {
            for (s, m) in sums.into_iter().zip(mins) {
                *acc = (s as f32).mul_add(d, *acc);
                *accm = (m as f32).mul_add(dmin, *accm);
            }
        } else {
            let s: i32 = sums.iter().sum();
            let m: i32 = mins.iter().sum();
            *acc = (s as f32).mul_add(d, *acc);
            *accm = (m as f32).mul_add(dmin, *accm);
        }
    }

    pub(super) fn rows_q4k(w: &[u8], kb: usize, acts: &super::Acts, row: usize, out: &mut [f32]) {
        let (a, m) = q8k_row(acts, row, kb);
        let grouped = q4k_grouped(row, m);
        for (o, wr) in out.iter_mut().zip(w.chunks_exact(kb * Q4K_BYTES)) {
            let (mut acc, mut accm) = (0f32, 0f32);
            for (x, y) in wr.chunks_exact(Q4K_BYTES).zip(a) {
                let (sc, mn) = q4k_scales_mins(&x[4..16]);
                let mut sums = [0i32; 4];
                for (p, s) in sums.iter_mut().enumerate() {
                    let qs = &x[16 + 32 * p..16 + 32 * p + 32];
                    let (lo, hi) = (&y.qs[64 * p..64 * p + 32], &y.qs[64 * p + 32..64 * p + 64]);
                    let (mut dl, mut dh) = (0i32, 0i32);
                    for ((&q, &a), &b) in qs.iter().zip(lo).zip(hi) {
                        dl += (q & 15) as i32 * a as i32;
                        dh += (q >> 4) as i32 * b as i32;
                    }
                    *s = sc[2 * p] as i32 * dl + sc[2 * p + 1] as i32 * dh;
                }
                let mins = q4k_min_sums(&mn, y);
                let d = f16_le(&x[0..2]) * y.d;
                let dmin = f16_le(&x[2..4]) * y.d;
                q4k_accumulate(sums, mins, d, dmin, grouped, &mut acc, &mut accm);
            }
            *o = acc - accm;
        }
    }

    /// The unsigned 6-bit code (0..64, the value plus 32) of value `e` of a Q6_K block:
    /// each half of 128 values keeps its low nibbles in 64 bytes (values `t` and `t + 64`
    /// share a byte, as do `t + 32` and `t + 96`) and its high bits in 32 bytes, two bits
    /// per value.
    pub(super) fn q6k_code(x: &[u8], e: usize) -> i32 {
        let (h, r) = (e / 128, e % 128);
        let (c, t) = (r / 32, r % 32);
        let l = x[64 * h + 32 * (c & 1) + t];
        let low = if c < 2 { l & 15 } else { l >> 4 };
        let high = (x[128 + 32 * h + t] >> (2 * c)) & 3;
        (low | (high << 4)) as i32
    }

    /// ggml's horizontal sum of 8 lanes: `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`.
    pub(super) fn hsum8(l: [f32; 8]) -> f32 {
        ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
    }

    /// `vec_dot`'s 8 integer lanes of one Q6_K block with one Q8_K block.
    pub(super) fn q6k_lanes(x: &[u8], y: &Q8K) -> [i32; 8] {
        let sc = |i: usize| x[192 + i] as i8 as i32;
        let mut lanes = [0i32; 8];
        for e in 0..QK_K {
            lanes[(e % 32) / 4] += sc(e / 16) * q6k_code(x, e) * y.qs[e] as i32;
        }
        for (l, lane) in lanes.iter_mut().enumerate() {
            let (s0, s1) = (y.bsums[2 * l] as i32, y.bsums[2 * l + 1] as i32);
            *lane -= 32 * (sc(2 * l) * s0 + sc(2 * l + 1) * s1);
        }
        lanes
    }

    pub(super) fn rows_q6k(w: &[u8], kb: usize, acts: &super::Acts, row: usize, out: &mut [f32]) {
        let (a, m) = q8k_row(acts, row, kb);
        for (o, wr) in out.iter_mut().zip(w.chunks_exact(kb * Q6K_BYTES)) {
            let blocks = wr.chunks_exact(Q6K_BYTES).zip(a);
            *o = if m >= Q6K_TILED_ROWS {
                let mut acc = 0f32;
                for (x, y) in blocks {
                    let s: i32 = q6k_lanes(x, y).iter().sum();
                    acc = (s as f32 * f16_le(&x[208..210])).mul_add(y.d, acc);
                }
                acc
            } else {
                let mut acc = [0f32; 8];
                for (x, y) in blocks {
                    let d = y.d * f16_le(&x[208..210]);
                    for (s, l) in acc.iter_mut().zip(q6k_lanes(x, y)) {
                        *s = (l as f32).mul_add(d, *s);
                    }
                }
                hsum8(acc)
            };
        }
    }
}

/// ggml's AVX2 dot products (`ggml-cpu/arch/x86/quants.c`), each summed in ggml's order:
/// per block, 8 lanes of exact integer sums of 4 products, `acc = fma(d_w·d_a, lanes, acc)`
/// in block order, then ggml's horizontal sum. One weight row at a time, as ggml does:
/// passing 4 rows together over each activation block (so the activations are loaded
/// once) measured 2× slower per decoded token, the interleaved short streams defeating the
/// hardware prefetcher that one sequential stream keeps busy.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::kquant::{q4k_accumulate, q4k_min_sums, q4k_scales_mins, Q4K_BYTES, Q6K_BYTES};
    use super::{q4k_grouped, q8k_row, Acts, Q6K_TILED_ROWS, Q8K, Q8_0, Q8_1};
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }

    /// The f16 at `p` (unaligned) as f32, exactly. Broadcast, not inserted into lane 0:
    /// LLVM merged an inserted scalar into whatever register was free — often the running
    /// sum of the previous block, which chained every block's scale to that sum (a Q8_0 or
    /// Q6_K row's blocks then ran one after the other: ~10 instead of ~4 cycles a Q8_0
    /// block).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_at(p: *const u8) -> f32 {
        let bits = (p as *const i16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(bits)))
    }

    /// The f16 at `p` times `dy`, in all 8 lanes: each lane is the scalar `f16_at(p) * dy`,
    /// bit for bit, with one broadcast fewer.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_times(p: *const u8, dy: f32) -> __m256 {
        let h = _mm_set1_epi16((p as *const i16).read_unaligned());
        _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(dy))
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
            let d = f16_times(x, dy);
            let qx = _mm256_loadu_si256(x.add(2) as *const __m256i);
            let qy = _mm256_loadu_si256(ya.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc);
        }
        hsum_float_8(acc)
    }

    /// The Q8_0 activation blocks and scales of the four rows `row..row + 4`.
    #[allow(clippy::type_complexity)]
    fn q8_0_acts4(acts: &Acts, row: usize, kb: usize) -> ([&[Q8_0]; 4], [&[f32]; 4]) {
        (
            std::array::from_fn(|r| q8_0_acts(acts, row + r, kb).0),
            std::array::from_fn(|r| q8_0_acts(acts, row + r, kb).1),
        )
    }

    /// One weight row against four rows of Q8_0 activations (`q8_0_row4`, `q5_0_row4`).
    type Q8_0Row4 = unsafe fn(*const u8, &[&[Q8_0]; 4], &[&[f32]; 4]) -> [f32; 4];

    /// `row4` on each weight row (`kb` blocks of `block_bytes`) with the activation rows
    /// `row..row + 4`, for the weight types whose products take Q8_0 activations.
    fn rows4_q8_0_acts(
        w: &[u8],
        kb: usize,
        acts: &Acts,
        row: usize,
        out: [&mut [f32]; 4],
        block_bytes: usize,
        row4: Q8_0Row4,
    ) {
        let (a, ad) = q8_0_acts4(acts, row, kb);
        let [o0, o1, o2, o3] = out;
        for (j, wr) in w.chunks_exact(kb * block_bytes).enumerate() {
            // SAFETY: as in `rows_q8_0`; each of the four rows holds `kb` blocks.
            let v = unsafe { row4(wr.as_ptr(), &a, &ad) };
            (o0[j], o1[j], o2[j], o3[j]) = (v[0], v[1], v[2], v[3]);
        }
    }

    /// [`rows_q8_0`] for four activation rows at once (see [`super::Rows4Kernel`]).
    pub(super) fn rows4_q8_0(w: &[u8], kb: usize, acts: &Acts, row: usize, out: [&mut [f32]; 4]) {
        rows4_q8_0_acts(w, kb, acts, row, out, 34, q8_0_row4);
    }

    /// [`q8_0_row`] for four activation rows: per row the same operations in the same order
    /// (`f16_times` is the converted scale times `dy`), the weight block read once.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_row4(w: *const u8, a: &[&[Q8_0]; 4], ad: &[&[f32]; 4]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        for b in 0..a[0].len() {
            let x = w.add(b * 34);
            let dx = _mm256_cvtph_ps(_mm_set1_epi16((x as *const i16).read_unaligned()));
            let qx = _mm256_loadu_si256(x.add(2) as *const __m256i);
            for r in 0..4 {
                let d = _mm256_mul_ps(dx, _mm256_set1_ps(ad[r][b]));
                let qy = _mm256_loadu_si256(a[r][b].qs.as_ptr() as *const __m256i);
                acc[r] = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc[r]);
            }
        }
        std::array::from_fn(|r| hsum_float_8(acc[r]))
    }

    /// [`rows_q5_0`] for four activation rows at once (see [`super::Rows4Kernel`]).
    pub(super) fn rows4_q5_0(w: &[u8], kb: usize, acts: &Acts, row: usize, out: [&mut [f32]; 4]) {
        rows4_q8_0_acts(w, kb, acts, row, out, 22, q5_0_row4);
    }

    /// [`q5_0_row`] for four activation rows: per row the same operations in the same order,
    /// the weight block's scale and 5-bit values decoded once.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5_0_row4(w: *const u8, a: &[&[Q8_0]; 4], ad: &[&[f32]; 4]) -> [f32; 4] {
        let high = _mm256_set1_epi8(0xF0u8 as i8);
        let mut acc = [_mm256_setzero_ps(); 4];
        for b in 0..a[0].len() {
            let x = w.add(b * 22);
            let dx = _mm256_cvtph_ps(_mm_set1_epi16((x as *const i16).read_unaligned()));
            let hi = _mm256_andnot_si256(bytes_from_bits_32(x.add(2)), high);
            let qx = _mm256_or_si256(bytes_from_nibbles_32(x.add(6)), hi);
            for r in 0..4 {
                let d = _mm256_mul_ps(dx, _mm256_set1_ps(ad[r][b]));
                let qy = _mm256_loadu_si256(a[r][b].qs.as_ptr() as *const __m256i);
                acc[r] = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc[r]);
            }
        }
        std::array::from_fn(|r| hsum_float_8(acc[r]))
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
            let d = f16_times(x, dy);
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

    /// [`rows_q4_1`] for four activation rows at once (see [`super::Rows4Kernel`]).
    pub(super) fn rows4_q4_1(w: &[u8], kb: usize, acts: &Acts, row: usize, out: [&mut [f32]; 4]) {
        let (blocks, d, s) = match acts {
            Acts::Q8_1 { blocks, d, s } => (blocks, d, s),
            _ => unreachable!("Q8_1 activations for a Q4_1 weight"),
        };
        let span = |r: usize| (row + r) * kb..(row + r + 1) * kb;
        let a: [&[Q8_1]; 4] = std::array::from_fn(|r| &blocks[span(r)]);
        let ad: [&[f32]; 4] = std::array::from_fn(|r| &d[span(r)]);
        let as_: [&[f32]; 4] = std::array::from_fn(|r| &s[span(r)]);
        let [o0, o1, o2, o3] = out;
        for (j, wr) in w.chunks_exact(kb * 20).enumerate() {
            // SAFETY: as in `rows_q8_0`; each of the four rows holds `kb` blocks.
            let v = unsafe { q4_1_row4(wr.as_ptr(), &a, &ad, &as_) };
            (o0[j], o1[j], o2[j], o3[j]) = (v[0], v[1], v[2], v[3]);
        }
    }

    /// [`q4_1_row`] for four activation rows: per row the same operations in the same
    /// order, the weight block's scale, minimum and nibbles decoded once.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_row4(
        w: *const u8,
        a: &[&[Q8_1]; 4],
        ad: &[&[f32]; 4],
        as_: &[&[f32]; 4],
    ) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut summs = [0f32; 4];
        for b in 0..a[0].len() {
            let x = w.add(b * 20);
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((x as *const i32).read_unaligned()));
            let (dx, mx) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
            let qx = bytes_from_nibbles_32(x.add(4));
            for r in 0..4 {
                summs[r] += mx * as_[r][b];
                let d = _mm256_set1_ps(dx * ad[r][b]);
                let qy = _mm256_loadu_si256(a[r][b].qs.as_ptr() as *const __m256i);
                acc[r] = _mm256_fmadd_ps(d, mul_sum_us8_pairs_float(qx, qy), acc[r]);
            }
        }
        std::array::from_fn(|r| hsum_float_8(acc[r]) + summs[r])
    }

    /// The 8 i32 lanes of `x` summed (exact; the order does not matter).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum_i32_8(x: __m256i) -> i32 {
        let r = _mm_add_epi32(_mm256_extracti128_si256(x, 1), _mm256_castsi256_si128(x));
        let r = _mm_add_epi32(r, _mm_unpackhi_epi64(r, r));
        let r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0b01));
        _mm_cvtsi128_si32(r)
    }

    /// Q4_K weights · Q8_K in llama.cpp's order (see [`super::kquant`]).
    pub(super) fn rows_q4k(w: &[u8], kb: usize, acts: &Acts, row: usize, out: &mut [f32]) {
        let (a, m) = q8k_row(acts, row, kb);
        let grouped = q4k_grouped(row, m);
        for (o, wr) in out.iter_mut().zip(w.chunks_exact(kb * Q4K_BYTES)) {
            // SAFETY: `available()` chose this kernel; `wr` holds `kb` blocks, as does `a`.
            *o = unsafe { q4k_row(wr.as_ptr(), a, grouped) };
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4k_row(w: *const u8, a: &[Q8K], grouped: bool) -> f32 {
        let m4 = _mm256_set1_epi8(15);
        let (mut acc, mut accm) = (0f32, 0f32);
        for (b, y) in a.iter().enumerate() {
            let x = w.add(b * Q4K_BYTES);
            let (sc, mn) = q4k_scales_mins(std::slice::from_raw_parts(x.add(4), 12));
            let mut sums = [0i32; 4];
            for (p, s) in sums.iter_mut().enumerate() {
                // 32 bytes: low nibbles are sub-block 2p, high nibbles sub-block 2p + 1.
                let bits = _mm256_loadu_si256(x.add(16 + 32 * p) as *const __m256i);
                let lo = _mm256_and_si256(bits, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                let ya = _mm256_loadu_si256(y.qs.as_ptr().add(64 * p) as *const __m256i);
                let yb = _mm256_loadu_si256(y.qs.as_ptr().add(64 * p + 32) as *const __m256i);
                // Pairs of products fit i16 (2·15·127), scaled pairs i32: exact.
                let pl = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(lo, ya),
                    _mm256_set1_epi16(sc[2 * p] as i16),
                );
                let ph = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(hi, yb),
                    _mm256_set1_epi16(sc[2 * p + 1] as i16),
                );
                *s = hsum_i32_8(_mm256_add_epi32(pl, ph));
            }
            let mins = q4k_min_sums(&mn, y);
            let d = f16_at(x) * y.d;
            let dmin = f16_at(x.add(2)) * y.d;
            q4k_accumulate(sums, mins, d, dmin, grouped, &mut acc, &mut accm);
        }
        acc - accm
    }

    /// [`rows_q4k`] for four activation rows at once (see [`super::Rows4Kernel`]): rows of
    /// a group of four, so each adds one integer per 64 values ([`super::q4k_grouped`]).
    pub(super) fn rows4_q4k(w: &[u8], kb: usize, acts: &Acts, row: usize, out: [&mut [f32]; 4]) {
        let a: [&[Q8K]; 4] = std::array::from_fn(|r| q8k_row(acts, row + r, kb).0);
        debug_assert!(q4k_grouped(row + 3, q8k_row(acts, row, kb).1));
        let [o0, o1, o2, o3] = out;
        for (j, wr) in w.chunks_exact(kb * Q4K_BYTES).enumerate() {
            // SAFETY: `available()` chose this kernel; `wr` and each of the four rows
            // hold `kb` blocks.
            let v = unsafe { q4k_row4(wr.as_ptr(), &a) };
            (o0[j], o1[j], o2[j], o3[j]) = (v[0], v[1], v[2], v[3]);
        }
    }

    /// 4 × 4 i32 transpose: lane `r` of output `p` is lane `p` of input `r`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn transpose4(v: [__m128i; 4]) -> [__m128i; 4] {
        let t0 = _mm_unpacklo_epi32(v[0], v[1]);
        let t1 = _mm_unpacklo_epi32(v[2], v[3]);
        let t2 = _mm_unpackhi_epi32(v[0], v[1]);
        let t3 = _mm_unpackhi_epi32(v[2], v[3]);
        [
            _mm_unpacklo_epi64(t0, t1),
            _mm_unpackhi_epi64(t0, t1),
            _mm_unpacklo_epi64(t2, t3),
            _mm_unpackhi_epi64(t2, t3),
        ]
    }

    /// The lane sums of four vectors of 8 i32: lane `r` is the (exact) sum of `v[r]`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum4_i32_8(v: [__m256i; 4]) -> __m128i {
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
    }

    /// [`q4k_row`] (grouped) for four activation rows. Lane `r` of the f32 accumulators is
    /// row `r`'s `acc` / `accm`, and takes the scalar kernel's operations in its order
    /// (`d_w·d_a` rounded, then one fused multiply-add per 64 values); the integer sums
    /// are exact, so how they are added up does not matter.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4k_row4(w: *const u8, a: &[&[Q8K]; 4]) -> [f32; 4] {
        let m4 = _mm256_set1_epi8(15);
        // Byte pairs (2j, 2j + 1) of a 16-byte vector, for spreading 8 minimums over 16 lanes.
        let dup = _mm_set_epi8(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
        let (mut acc, mut accm) = (_mm_setzero_ps(), _mm_setzero_ps());
        for b in 0..a[0].len() {
            let y: [&Q8K; 4] = a.map(|row| &row[b]);
            let x = w.add(b * Q4K_BYTES);
            let (sc, mn) = q4k_scales_mins(std::slice::from_raw_parts(x.add(4), 12));
            let mut sums = [_mm_setzero_si128(); 4];
            for (p, s) in sums.iter_mut().enumerate() {
                let bits = _mm256_loadu_si256(x.add(16 + 32 * p) as *const __m256i);
                let lo = _mm256_and_si256(bits, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                let (sl, sh) = (
                    _mm256_set1_epi16(sc[2 * p] as i16),
                    _mm256_set1_epi16(sc[2 * p + 1] as i16),
                );
                let per_row: [__m256i; 4] = std::array::from_fn(|r| {
                    let q = y[r].qs.as_ptr().add(64 * p);
                    let ya = _mm256_loadu_si256(q as *const __m256i);
                    let yb = _mm256_loadu_si256(q.add(32) as *const __m256i);
                    let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, ya), sl);
                    let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, yb), sh);
                    _mm256_add_epi32(pl, ph)
                });
                // Lane r: row r's sum of these 64 values.
                *s = hsum4_i32_8(per_row);
            }
            // Minimum times Σa per sub-block (lane j of 8), then per 64 values (lanes 0..4).
            let mins16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(
                _mm_loadl_epi64(mn.as_ptr() as *const __m128i),
                dup,
            ));
            let mins: [__m128i; 4] = std::array::from_fn(|r| {
                let bs = _mm256_loadu_si256(y[r].bsums.as_ptr() as *const __m256i);
                let m = _mm256_madd_epi16(bs, mins16);
                let pairs = _mm256_hadd_epi32(m, m);
                _mm256_castsi256_si128(_mm256_permute4x64_epi64(pairs, 0b1000))
            });
            let mins = transpose4(mins);
            let yd = _mm_set_ps(y[3].d, y[2].d, y[1].d, y[0].d);
            let d = _mm_mul_ps(_mm_set1_ps(f16_at(x)), yd);
            let dmin = _mm_mul_ps(_mm_set1_ps(f16_at(x.add(2))), yd);
            for p in 0..4 {
                acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sums[p]), d, acc);
                accm = _mm_fmadd_ps(_mm_cvtepi32_ps(mins[p]), dmin, accm);
            }
        }
        let mut out = [0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), _mm_sub_ps(acc, accm));
        out
    }

    /// [`rows_q6k`] for four activation rows at once (see [`super::Rows4Kernel`]): the
    /// tiled order of a prompt of at least [`Q6K_TILED_ROWS`] rows with each weight block
    /// decoded once for the four; shorter products take the one-row kernel per row.
    pub(super) fn rows4_q6k(w: &[u8], kb: usize, acts: &Acts, row: usize, out: [&mut [f32]; 4]) {
        let m = q8k_row(acts, row, kb).1;
        if m < Q6K_TILED_ROWS {
            for (r, o) in out.into_iter().enumerate() {
                rows_q6k(w, kb, acts, row + r, o);
            }
            return;
        }
        let a: [&[Q8K]; 4] = std::array::from_fn(|r| q8k_row(acts, row + r, kb).0);
        let [o0, o1, o2, o3] = out;
        for (j, wr) in w.chunks_exact(kb * Q6K_BYTES).enumerate() {
            // SAFETY: as in `rows4_q4k`.
            let v = unsafe { q6k_row4_tiled(wr.as_ptr(), &a) };
            (o0[j], o1[j], o2[j], o3[j]) = (v[0], v[1], v[2], v[3]);
        }
    }

    /// [`q6k_row_tiled`] for four activation rows: the exact integer of each block as
    /// [`q6k_lanes`] gives it, then per row lane `(s·d_w)·d_a + acc` as the scalar kernel.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6k_row4_tiled(w: *const u8, a: &[&[Q8K]; 4]) -> [f32; 4] {
        let m4 = _mm256_set1_epi8(15);
        let m2 = _mm256_set1_epi8(3);
        let mut acc = _mm_setzero_ps();
        for b in 0..a[0].len() {
            let y: [&Q8K; 4] = a.map(|row| &row[b]);
            let x = w.add(b * Q6K_BYTES);
            let sc = x.add(192) as *const i8;
            let mut sumi = [_mm256_setzero_si256(); 4];
            for run in 0..8 {
                // Run `run` of 32 values: half `run / 4`, position `run % 4` in it (see
                // `q6k_lanes`).
                let (h, c) = (run / 4, run % 4);
                let l = _mm256_loadu_si256(x.add(64 * h + 32 * (c & 1)) as *const __m256i);
                let low = if c < 2 { l } else { _mm256_srli_epi16(l, 4) };
                let hb = _mm256_loadu_si256(x.add(128 + 32 * h) as *const __m256i);
                let high = match c {
                    0 => hb,
                    1 => _mm256_srli_epi16(hb, 2),
                    2 => _mm256_srli_epi16(hb, 4),
                    _ => _mm256_srli_epi16(hb, 6),
                };
                let code = _mm256_or_si256(
                    _mm256_and_si256(low, m4),
                    _mm256_slli_epi16(_mm256_and_si256(high, m2), 4),
                );
                let scale = _mm256_set_m128i(
                    _mm_set1_epi16(*sc.add(2 * run + 1) as i16),
                    _mm_set1_epi16(*sc.add(2 * run) as i16),
                );
                for (r, s) in sumi.iter_mut().enumerate() {
                    let qy = _mm256_loadu_si256(y[r].qs.as_ptr().add(32 * run) as *const __m256i);
                    *s = _mm256_add_epi32(
                        *s,
                        _mm256_madd_epi16(_mm256_maddubs_epi16(code, qy), scale),
                    );
                }
            }
            let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
            for (r, s) in sumi.iter_mut().enumerate() {
                let bsums = _mm256_loadu_si256(y[r].bsums.as_ptr() as *const __m256i);
                let offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales), 5);
                *s = _mm256_sub_epi32(*s, offset);
            }
            let s = _mm_cvtepi32_ps(hsum4_i32_8(sumi));
            let yd = _mm_set_ps(y[3].d, y[2].d, y[1].d, y[0].d);
            acc = _mm_fmadd_ps(_mm_mul_ps(s, _mm_set1_ps(f16_at(x.add(208)))), yd, acc);
        }
        let mut out = [0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), acc);
        out
    }

    /// Q6_K weights · Q8_K in llama.cpp's order for `m` rows (see [`super::kquant`]).
    pub(super) fn rows_q6k(w: &[u8], kb: usize, acts: &Acts, row: usize, out: &mut [f32]) {
        let (a, m) = q8k_row(acts, row, kb);
        let tiled = m >= Q6K_TILED_ROWS;
        for (o, wr) in out.iter_mut().zip(w.chunks_exact(kb * Q6K_BYTES)) {
            // SAFETY: as in `rows_q4k`.
            *o = unsafe {
                if tiled {
                    q6k_row_tiled(wr.as_ptr(), a)
                } else {
                    q6k_row(wr.as_ptr(), a)
                }
            };
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6k_row(w: *const u8, a: &[Q8K]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (b, y) in a.iter().enumerate() {
            let x = w.add(b * Q6K_BYTES);
            let d = f16_times(x.add(208), y.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q6k_lanes(x, y)), acc);
        }
        hsum_float_8(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6k_row_tiled(w: *const u8, a: &[Q8K]) -> f32 {
        let mut acc = 0f32;
        for (b, y) in a.iter().enumerate() {
            let x = w.add(b * Q6K_BYTES);
            let s = hsum_i32_8(q6k_lanes(x, y)) as f32;
            acc = (s * f16_at(x.add(208))).mul_add(y.d, acc);
        }
        acc
    }

    /// `vec_dot`'s 8 exact integer lanes of one Q6_K block (at `x`) with `y`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6k_lanes(x: *const u8, y: &Q8K) -> __m256i {
        let m4 = _mm256_set1_epi8(15);
        let m2 = _mm256_set1_epi8(3);
        {
            let sc = x.add(192) as *const i8;
            let mut sumi = _mm256_setzero_si256();
            for h in 0..2 {
                let l0 = _mm256_loadu_si256(x.add(64 * h) as *const __m256i);
                let l1 = _mm256_loadu_si256(x.add(64 * h + 32) as *const __m256i);
                let hb = _mm256_loadu_si256(x.add(128 + 32 * h) as *const __m256i);
                // Bits 4-5 of the codes of the four runs (no carry crosses a byte).
                let h0 = _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4);
                let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4);
                let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4);
                let h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4);
                // The four runs of 32 values of this half, as unsigned codes 0..64.
                let codes = [
                    _mm256_or_si256(_mm256_and_si256(l0, m4), h0),
                    _mm256_or_si256(_mm256_and_si256(l1, m4), h1),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3),
                ];
                for (c, q) in codes.into_iter().enumerate() {
                    let run = 4 * h + c;
                    let qy = _mm256_loadu_si256(y.qs.as_ptr().add(32 * run) as *const __m256i);
                    // i32 lane l takes values 4l..4l+4 of the run: the first four lanes
                    // are sub-block 2·run, the last four 2·run + 1.
                    let scale = _mm256_set_m128i(
                        _mm_set1_epi16(*sc.add(2 * run + 1) as i16),
                        _mm_set1_epi16(*sc.add(2 * run) as i16),
                    );
                    sumi = _mm256_add_epi32(
                        sumi,
                        _mm256_madd_epi16(_mm256_maddubs_epi16(q, qy), scale),
                    );
                }
            }
            // The codes' +32: lane l gives back 32·(scale·Σa) of sub-blocks 2l, 2l + 1.
            let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
            let bsums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales), 5);
            _mm256_sub_epi32(sumi, offset)
        }
    }
}

/// Output rows per parallel task: enough work to hide rayon's scheduling, several tasks
/// per thread to balance; a multiple of 4.
fn rows_per_task(total_rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (total_rows / (8 * threads)).clamp(16, 512) / 4 * 4
}

/// A row-major output that parallel tasks share, each writing its own columns (the
/// outputs of its weight rows) of every activation row.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: only used where every task writes elements no other task touches.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Copies `vals` to `n`-wide row `i` from column `first` on.
    ///
    /// # Safety
    /// The buffer holds that row's `first..first + vals.len()` (within `n`), and no other
    /// task reads or writes those elements while this runs.
    unsafe fn put(self, i: usize, n: usize, first: usize, vals: &[f32]) {
        std::ptr::copy_nonoverlapping(vals.as_ptr(), self.0.add(i * n + first), vals.len());
    }
}

/// `x Wᵢᵀ` for every weight `Wᵢ` (`[nᵢ, k]`) and rows `xs` (`m × k`), the activations
/// quantized once for all of them (they share a vec-dot format) and all outputs computed
/// in one parallel pass. Each result is `m × nᵢ`, row-major.
fn matmuls(ws: &[(&[u8], GgmlDType, usize)], xs: &[f32], k: usize, kind: ActKind) -> Vec<Vec<f32>> {
    let m = xs.len() / k;
    let acts = Acts::new(kind, xs);
    let total: usize = ws.iter().map(|w| w.2).sum();
    let per_task = rows_per_task(total);
    // Each task owns a run of one weight's rows, which stay in cache while every
    // activation row passes over them, and writes their columns of each output row.
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; w.2 * m]).collect();
    let mut tasks = Vec::new();
    for (wi, out) in outs.iter_mut().enumerate() {
        let (data, dtype, n) = ws[wi];
        let row_bytes = data.len() / n;
        let kern = kernel(dtype).expect("checked by forward_fused");
        let kern4 = kernel4(dtype);
        let kb = k / dtype.block_size();
        let shared = SharedOut(out.as_mut_ptr());
        for first in (0..n).step_by(per_task) {
            let rows = per_task.min(n - first);
            let w = &data[first * row_bytes..(first + rows) * row_bytes];
            tasks.push((kern, kern4, kb, w, shared, n, first, rows));
        }
    }
    tasks
        .into_par_iter()
        .for_each(|(kern, kern4, kb, w, out, n, first, rows)| {
            let kern4 = kern4.filter(|_| m >= 4);
            // Room for four output rows only where the four-row kernel runs (not per token).
            let mut cols = vec![0f32; if kern4.is_some() { 4 } else { 1 } * rows];
            let mut i = 0;
            if let Some(kern4) = kern4 {
                while i + 4 <= m {
                    let (c0, rest) = cols.split_at_mut(rows);
                    let (c1, rest) = rest.split_at_mut(rows);
                    let (c2, c3) = rest.split_at_mut(rows);
                    kern4(w, kb, &acts, i, [c0, c1, c2, c3]);
                    for (r, col) in cols.chunks_exact(rows).enumerate() {
                        // SAFETY: this task alone owns columns `first..first + rows` of
                        // this weight's output, and `outs` outlives the parallel pass.
                        unsafe { out.put(i + r, n, first, col) };
                    }
                    i += 4;
                }
            }
            let col = &mut cols[..rows];
            for i in i..m {
                kern(w, kb, &acts, i, col);
                // SAFETY: as above.
                unsafe { out.put(i, n, first, col) };
            }
        });
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

    /// An `n × k` weight and `m` activation rows (`[1, m, k]`) of [`pattern`] values, and
    /// the activations as one flat vector.
    fn product_inputs(m: usize, k: usize, n: usize) -> (Tensor, Tensor, Vec<f32>) {
        let w = pattern(n * k, 7919, 1000, 500.0, 1.0);
        let x = pattern(m * k, 104729, 997, 498.0, 1.0);
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let xt = Tensor::from_vec(x.clone(), (1, m, k), &Device::Cpu).unwrap();
        (w, xt, x)
    }

    #[test]
    fn matches_the_dequantized_product_for_each_type() {
        let (m, k, n) = (3, 512, 40);
        let dev = Device::Cpu;
        let (w, x, _) = product_inputs(m, k, n);
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

    #[test]
    fn a_prompt_gets_the_numbers_of_its_rows_one_by_one() {
        // Several activation rows go through the four-row kernels and the one-row
        // kernels for the rest: every output must equal the one-row product bit for bit, so
        // a prompt's logits stay llama.cpp's. 7 rows: one group of four and three left over.
        let (m, k, n) = (7, 256, 37);
        let dev = Device::Cpu;
        let (w, xt, x) = product_inputs(m, k, n);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let all = forward(&q, &xt).unwrap().expect("a covered type");
            let all = all.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for i in 0..m {
                let row =
                    Tensor::from_vec(x[i * k..(i + 1) * k].to_vec(), (1, 1, k), &dev).unwrap();
                let one = forward(&q, &row).unwrap().expect("a covered type");
                let one = one.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (j, (a, b)) in all[i * n..(i + 1) * n].iter().zip(&one).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{dtype:?} row {i} column {j}: {a} vs {b}"
                    );
                }
            }
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

    /// A K-quant block's per-value integers read from the raw GGUF layout, one value at a
    /// time: (scale of the value's sub-block, minimum of it (Q4_K) or 0, its code: the
    /// 4-bit value (Q4_K) or the 6-bit value plus 32 (Q6_K)), and `d`, `dmin`.
    fn k_block_values(dtype: GgmlDType, b: &[u8]) -> (Vec<(i32, i32, i32)>, f32, f32) {
        let h = |o: usize| f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])).to_f32();
        let mut vals = Vec::with_capacity(QK_K);
        match dtype {
            GgmlDType::Q4K => {
                let s = &b[4..16];
                for e in 0..QK_K {
                    let j = e / 32;
                    // 6-bit scale and min of sub-block j: low 6 bits of bytes j, j + 4
                    // for j < 4; else 4 bits of byte j + 4 plus the top 2 bits of j - 4, j.
                    let (sc, mn) = if j < 4 {
                        (s[j] & 63, s[j + 4] & 63)
                    } else {
                        (
                            (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4),
                            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                        )
                    };
                    let byte = b[16 + 32 * (e / 64) + e % 32];
                    let q = if e % 64 < 32 { byte & 15 } else { byte >> 4 };
                    vals.push((sc as i32, mn as i32, q as i32));
                }
                (vals, h(0), h(2))
            }
            GgmlDType::Q6K => {
                for e in 0..QK_K {
                    let (half, r) = (e / 128, e % 128);
                    let l = b[64 * half + r % 64];
                    let low = if r < 64 { l & 15 } else { l >> 4 };
                    let high = (b[128 + 32 * half + r % 32] >> (2 * (r / 32))) & 3;
                    let sc = b[192 + e / 16] as i8 as i32;
                    vals.push((sc, 0, (low | (high << 4)) as i32));
                }
                (vals, h(208), 0.0)
            }
            other => unreachable!("{other:?}"),
        }
    }

    /// llama.cpp's Q4_K / Q6_K dot product of one weight row with activation row `i` of
    /// `m`, written out value by value (see `kquant` for the orders).
    fn ggml_k_dot(dtype: GgmlDType, w: &[u8], x: &[f32], i: usize, m: usize) -> f32 {
        let bytes = dtype.type_size();
        let (mut acc, mut accm, mut lanes8) = (0f32, 0f32, [0f32; 8]);
        for (wb, xb) in w.chunks_exact(bytes).zip(x.chunks_exact(QK_K)) {
            let (vals, d, dmin) = k_block_values(dtype, wb);
            let a = &quantize_q8k(xb)[0];
            let aq = |e: usize| a.qs[e] as i32;
            if dtype == GgmlDType::Q4K {
                // Per 64 values for rows in a group of four, per 256 otherwise.
                let span = if i < m - m % 4 { 64 } else { QK_K };
                for g in (0..QK_K).step_by(span) {
                    let sum: i32 = (g..g + span).map(|e| vals[e].0 * vals[e].2 * aq(e)).sum();
                    let mins: i32 = (g..g + span).map(|e| vals[e].1 * aq(e)).sum();
                    acc = (sum as f32).mul_add(d * a.d, acc);
                    accm = (mins as f32).mul_add(dmin * a.d, accm);
                }
            } else if m >= 8 {
                let sum: i32 = (0..QK_K)
                    .map(|e| vals[e].0 * (vals[e].2 - 32) * aq(e))
                    .sum();
                acc = (sum as f32 * d).mul_add(a.d, acc);
            } else {
                for (l, lane) in lanes8.iter_mut().enumerate() {
                    let mut s = 0i32;
                    for e in (0..QK_K).filter(|e| (e % 32) / 4 == l) {
                        s += vals[e].0 * vals[e].2 * aq(e);
                    }
                    // The codes' +32, taken off per pair of sub-blocks of 16.
                    for sub in [2 * l, 2 * l + 1] {
                        let asum: i32 = (16 * sub..16 * sub + 16).map(aq).sum();
                        s -= 32 * vals[16 * sub].0 * asum;
                    }
                    *lane = (s as f32).mul_add(a.d * d, *lane);
                }
            }
        }
        match dtype {
            GgmlDType::Q4K => acc - accm,
            _ if m >= 8 => acc,
            _ => {
                let l = lanes8;
                ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
            }
        }
    }

    #[test]
    fn k_quant_kernels_sum_in_llama_cpp_order() {
        let (k, n) = (512, 8);
        let w = pattern(n * k, 7919, 1013, 506.0, 1.0);
        let dev = Device::Cpu;
        let wt = Tensor::from_vec(w, (n, k), &dev).unwrap();
        // 1 row (a decoded token); 3, 5, 9 rows (lone rows after groups of four; Q6_K's
        // tiled order from 8 rows on); 4, 5, 8, 9 rows also take the four-row kernels
        // (Q6_K's below 8 rows through its one-row kernel).
        for m in [1, 3, 4, 5, 8, 9] {
            let x = pattern(m * k, 104729, 997, 211.0, 2.3);
            let xt = Tensor::from_vec(x.clone(), (m, k), &dev).unwrap();
            let acts = Acts::new(ActKind::Q8K, &x);
            for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
                let q = QTensor::quantize(&wt, dtype).unwrap();
                let data = q.data().unwrap();
                let row_bytes = data.len() / n;
                let ours = forward(&q, &xt).unwrap().unwrap().to_vec2::<f32>().unwrap();
                let portable = match dtype {
                    GgmlDType::Q4K => kquant::rows_q4k,
                    _ => kquant::rows_q6k,
                };
                for (i, xr) in x.chunks_exact(k).enumerate() {
                    let mut port = vec![0f32; n];
                    portable(&data, k / QK_K, &acts, i, &mut port);
                    for (j, wr) in data.chunks_exact(row_bytes).enumerate() {
                        let want = ggml_k_dot(dtype, wr, xr, i, m);
                        let at = format!("{dtype:?} m {m} [{i}, {j}]");
                        assert_eq!(ours[i][j].to_bits(), want.to_bits(), "{at}");
                        assert_eq!(port[j].to_bits(), want.to_bits(), "portable {at}");
                    }
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
