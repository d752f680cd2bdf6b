//! Register-tiled self-attention of one text on the CPU (AVX2 + FMA), for the BERT-family
//! encoders: a text attends over its own `len` tokens, so there is no mask and no padding in
//! the products. Per head, 6 query rows at a time: their scores against 16 keys at a time
//! stay in 12 registers while the head's features are summed, then the 6 rows' softmax, then
//! their context, 16 features at a time, again in 12 registers.
//!
//! Why: the row-at-a-time kernel it replaces (`bert::attend_text`) loaded and stored a score
//! row for every multiply-add and ran at ~18 GFLOP/s, a quarter of MiniLM's encoding time,
//! while candle's GEMM ran the linear layers at ~120 GFLOP/s (perf, 2 threads, this VM).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(doc)]
use crate::nn::fast_exp;

/// Query rows per tile.
const ROWS: usize = 6;
/// Keys (scores) or head features (context) per tile: two 8-lane registers.
const COLS: usize = 16;

/// Whether [`attend_text_tiled`] handles heads of `head_dim` features on this CPU.
pub fn supported(head_dim: usize) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(COLS) && crate::nn::has_avx2_fma()
}

/// One text's attention: `rows` are its `len` rows of fused q|k|v (`3h` wide, biases not yet
/// added), `ctx` its `[≥ len, h]` output (rows past `len` untouched).
///
/// # Safety
/// The CPU must have AVX2 and FMA, and `h / heads` must be a multiple of 16 ([`supported`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn attend_text_tiled(
    ctx: &mut [f32],
    rows: &[f32],
    bias: &[f32],
    len: usize,
    h: usize,
    heads: usize,
) {
    let hd = h / heads;
    debug_assert!(hd.is_multiple_of(COLS) && rows.len() >= len * 3 * h && ctx.len() >= len * h);
    let scale = 1.0 / (hd as f32).sqrt();
    let len_c = len.div_ceil(COLS) * COLS;
    let len_r = len.div_ceil(ROWS) * ROWS;
    // q (scaled) with zero rows past `len`, k transposed with zero columns past `len`, v.
    let mut q = vec![0f32; len_r * hd];
    let mut kt = vec![0f32; hd * len_c];
    let mut v = vec![0f32; len * hd];
    let mut s = vec![0f32; ROWS * len_c];
    for head in 0..heads {
        let (qo, ko, vo) = (head * hd, h + head * hd, 2 * h + head * hd);
        // Three loops, not one: the contiguous copies of q and v vectorize only without
        // the strided transpose of k beside them.
        for (t, row) in rows.chunks_exact(3 * h).take(len).enumerate() {
            let (qd, vd) = (&mut q[t * hd..(t + 1) * hd], &mut v[t * hd..(t + 1) * hd]);
            for ((x, r), b) in qd.iter_mut().zip(&row[qo..qo + hd]).zip(&bias[qo..qo + hd]) {
                *x = (r + b) * scale;
            }
            for ((x, r), b) in vd.iter_mut().zip(&row[vo..vo + hd]).zip(&bias[vo..vo + hd]) {
                *x = r + b;
            }
            for d in 0..hd {
                kt[d * len_c + t] = row[ko + d] + bias[ko + d];
            }
        }
        // SAFETY: `q` is `len_r × hd`, `kt` `hd × len_c`, `v` `len × hd`, `s` `ROWS × len_c`,
        // and `ctx` holds `len` rows of `h`; the caller vouched for AVX2/FMA and `hd`.
        unsafe { attend_head(&q, &kt, &v, &mut s, len, hd, &mut ctx[head * hd..], h) };
    }
}

/// Attention of one text over per-head q, k, v laid out head-major: `hm` is
/// `[3][heads][rows][hd]` (q, then k, then v; row `r0 + t` is the text's token `t`), with the
/// biases added and q already scaled by `1/√hd` (the q|k|v matmul's epilogue writes it so,
/// [`scatter_heads`]). `ctx` is the text's `[≥ len, h]` output (rows past `len` untouched).
///
/// Why: read row-major (`[rows][3h]`), every head pulled 128 bytes from each 4.6 KB row of a
/// block larger than L2, and those copies were a fifth of the attention's time.
///
/// # Safety
/// The CPU must have AVX2 and FMA, and `h / heads` must be a multiple of 16 ([`supported`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attend_text_heads(
    ctx: &mut [f32],
    hm: &[f32],
    rows: usize,
    r0: usize,
    len: usize,
    h: usize,
    heads: usize,
) {
    let hd = h / heads;
    assert!(hd.is_multiple_of(COLS) && r0 + len <= rows && hm.len() >= 3 * rows * h);
    assert!(ctx.len() >= len * h);
    let len_c = len.div_ceil(COLS) * COLS;
    let len_r = len.div_ceil(ROWS) * ROWS;
    let mut q = vec![0f32; len_r * hd];
    let mut kt = vec![0f32; hd * len_c];
    let mut s = vec![0f32; ROWS * len_c];
    let slab = |part: usize, head: usize| {
        let at = ((part * heads + head) * rows + r0) * hd;
        &hm[at..at + len * hd]
    };
    for head in 0..heads {
        q[..len * hd].copy_from_slice(slab(0, head));
        for (t, krow) in slab(1, head).chunks_exact(hd).enumerate() {
            for (d, &x) in krow.iter().enumerate() {
                kt[d * len_c + t] = x;
            }
        }
        // SAFETY: as in `attend_text_tiled`; `v` is the slab itself, `len × hd`.
        unsafe {
            attend_head(
                &q,
                &kt,
                slab(2, head),
                &mut s,
                len,
                hd,
                &mut ctx[head * hd..],
                h,
            )
        };
    }
}

/// Writes a chunk of q|k|v matmul rows (`ys`, `[n, 3h]`, starting at pass row `row0`) into
/// the head-major `hm` of [`attend_text_heads`], adding `bias` and scaling q by `1/√hd`.
///
/// # Safety
/// `hm` must point to `3 · rows · h` floats, and no other thread may touch the rows
/// `row0 .. row0 + n` of it meanwhile (each matmul chunk owns its rows).
pub unsafe fn scatter_heads(
    hm: *mut f32,
    rows: usize,
    row0: usize,
    ys: &[f32],
    bias: &[f32],
    h: usize,
    heads: usize,
) {
    let hd = h / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    for (i, y) in ys.chunks_exact(3 * h).enumerate() {
        for (g, (src, b)) in y.chunks_exact(hd).zip(bias.chunks_exact(hd)).enumerate() {
            // g = part · heads + head: q|k|v side by side, heads within each.
            let mul = if g < heads { scale } else { 1.0 };
            // SAFETY: g < 3·heads and row0 + i < rows, so the slice lies inside `hm`; this
            // chunk owns the row (caller's contract).
            let dst =
                unsafe { std::slice::from_raw_parts_mut(hm.add((g * rows + row0 + i) * hd), hd) };
            for ((d, x), b) in dst.iter_mut().zip(src).zip(b) {
                *d = (x + b) * mul;
            }
        }
    }
}

/// One head of one text: `q` (`len_r × hd`, zero rows past `len`, scaled), `kt` (`hd ×
/// len_c`, zero columns past `len`), `v` (`len × hd`); `s` is scratch (`ROWS × len_c`);
/// writes `ctx[t · stride .. + hd]` for every token `t < len`.
///
/// # Safety
/// AVX2 and FMA; `hd` a multiple of 16; the sizes above.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_head(
    q: &[f32],
    kt: &[f32],
    v: &[f32],
    s: &mut [f32],
    len: usize,
    hd: usize,
    ctx: &mut [f32],
    stride: usize,
) {
    let len_c = len.div_ceil(COLS) * COLS;
    let len_r = len.div_ceil(ROWS) * ROWS;
    for i0 in (0..len_r).step_by(ROWS) {
        // SAFETY: `q` has `len_r ≥ i0 + ROWS` rows of `hd`, `kt` is `hd × len_c`, `s` is
        // `ROWS × len_c`, and `len_c` is a multiple of COLS.
        unsafe { scores_tile(&q[i0 * hd..(i0 + ROWS) * hd], kt, s, hd, len_c) };
        let live = (len - i0.min(len)).min(ROWS);
        let mut inv = [0f32; ROWS];
        for (r, inv) in inv.iter_mut().enumerate().take(live) {
            // SAFETY: the row has len_c values, a multiple of 16 (so of 8).
            *inv = 1.0 / unsafe { softmax_row(&mut s[r * len_c..(r + 1) * len_c], len) };
        }
        for c0 in (0..hd).step_by(COLS) {
            // SAFETY: `v` is `len × hd` with `c0 + COLS ≤ hd`, `s` is `ROWS × len_c`
            // with `len ≤ len_c`, and `ctx` has `len` rows of `stride`.
            unsafe {
                context_tile(
                    s,
                    v,
                    len,
                    len_c,
                    hd,
                    c0,
                    &inv,
                    live,
                    &mut ctx[i0 * stride + c0..],
                    stride,
                )
            };
        }
    }
}

/// `row[j] = e^(row[j] − max)` over the first `len` scores, 0 past them (the padded key
/// columns), returning the sum. Explicit AVX2: the generic folds with `f32::max` kept a scalar,
/// NaN-checking tail that cost as much as the exponentials on rows of ~130 keys.
///
/// # Safety
/// AVX2 and FMA; `row.len()` a multiple of 8 and at least `len`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row(row: &mut [f32], len: usize) -> f32 {
    assert!(row.len().is_multiple_of(8) && len <= row.len());
    row[len..].fill(f32::NEG_INFINITY);
    let p = row.as_mut_ptr();
    let n = row.len();
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    for j in (0..n).step_by(8) {
        // SAFETY: j + 8 ≤ n.
        m = _mm256_max_ps(m, unsafe { _mm256_loadu_ps(p.add(j)) });
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    let max = lanes
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let mx = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    for j in (0..n).step_by(8) {
        // SAFETY: j + 8 ≤ n.
        unsafe {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.add(j)), mx));
            _mm256_storeu_ps(p.add(j), e);
            sum = _mm256_add_ps(sum, e);
        }
    }
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}

/// [`fast_exp`] on 8 lanes: `2^n · p(r)`, `x = n ln 2 + r`, the same polynomial and range
/// (0 at or below −87, so −∞ gives 0).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp256(x: __m256) -> __m256 {
    let under = _mm256_cmp_ps::<_CMP_LE_OQ>(x, _mm256_set1_ps(-87.0));
    let xc = _mm256_max_ps(
        _mm256_min_ps(x, _mm256_set1_ps(88.0)),
        _mm256_set1_ps(-87.0),
    );
    let magic = _mm256_set1_ps(12_582_912.0);
    let n = _mm256_sub_ps(
        _mm256_fmadd_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E), magic),
        magic,
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)))
}

/// Scores of `ROWS` query rows (`q`, `ROWS × hd`) against every key (`kt`, `hd × len_c`)
/// into `s` (`ROWS × len_c`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_tile(q: &[f32], kt: &[f32], s: &mut [f32], hd: usize, len_c: usize) {
    assert!(q.len() >= ROWS * hd && kt.len() >= hd * len_c && s.len() >= ROWS * len_c);
    let (qp, kp, sp) = (q.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
    for j0 in (0..len_c).step_by(COLS) {
        let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
        for d in 0..hd {
            // SAFETY: d < hd and j0 + 16 ≤ len_c (asserted sizes above).
            let (k0, k1) = unsafe {
                (
                    _mm256_loadu_ps(kp.add(d * len_c + j0)),
                    _mm256_loadu_ps(kp.add(d * len_c + j0 + 8)),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: r < ROWS, d < hd.
                let a = unsafe { _mm256_broadcast_ss(&*qp.add(r * hd + d)) };
                acc[0] = _mm256_fmadd_ps(a, k0, acc[0]);
                acc[1] = _mm256_fmadd_ps(a, k1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: r < ROWS, j0 + 16 ≤ len_c.
            unsafe {
                _mm256_storeu_ps(sp.add(r * len_c + j0), acc[0]);
                _mm256_storeu_ps(sp.add(r * len_c + j0 + 8), acc[1]);
            }
        }
    }
}

/// Context features `c0..c0 + 16` of the tile's first `live` rows: `Σ_j p[r, j] v[j, c]`
/// over the `len` keys, times the row's `1 / Σ p`, written to `out[r · stride + ..16]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn context_tile(
    s: &[f32],
    v: &[f32],
    len: usize,
    len_c: usize,
    hd: usize,
    c0: usize,
    inv: &[f32; ROWS],
    live: usize,
    out: &mut [f32],
    stride: usize,
) {
    assert!(s.len() >= ROWS * len_c && len <= len_c && v.len() >= len * hd && c0 + COLS <= hd);
    assert!(live == 0 || out.len() >= (live - 1) * stride + COLS);
    let (sp, vp) = (s.as_ptr(), v.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
    for j in 0..len {
        // SAFETY: j < len rows of v, c0 + 16 ≤ hd.
        let (v0, v1) = unsafe {
            (
                _mm256_loadu_ps(vp.add(j * hd + c0)),
                _mm256_loadu_ps(vp.add(j * hd + c0 + 8)),
            )
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: r < ROWS, j < len ≤ len_c.
            let p = unsafe { _mm256_broadcast_ss(&*sp.add(r * len_c + j)) };
            acc[0] = _mm256_fmadd_ps(p, v0, acc[0]);
            acc[1] = _mm256_fmadd_ps(p, v1, acc[1]);
        }
    }
    let op = out.as_mut_ptr();
    for (r, acc) in acc.iter().enumerate().take(live) {
        let w = _mm256_set1_ps(inv[r]);
        // SAFETY: r < live and out holds (live - 1) · stride + 16 values (asserted).
        unsafe {
            _mm256_storeu_ps(op.add(r * stride), _mm256_mul_ps(acc[0], w));
            _mm256_storeu_ps(op.add(r * stride + 8), _mm256_mul_ps(acc[1], w));
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Plain f64 attention of one text, the reference.
    fn reference(rows: &[f32], bias: &[f32], len: usize, h: usize, heads: usize) -> Vec<f64> {
        let hd = h / heads;
        let at = |t: usize, c: usize| f64::from(rows[t * 3 * h + c] + bias[c]);
        let mut out = vec![0f64; len * h];
        for head in 0..heads {
            for i in 0..len {
                let scores: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..hd)
                            .map(|d| at(i, head * hd + d) * at(j, h + head * hd + d))
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    out[i * h + head * hd + d] = (0..len)
                        .map(|j| e[j] / z * at(j, 2 * h + head * hd + d))
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn tiled_attention_matches_f64_reference() {
        if !supported(16) {
            eprintln!("skipped: this CPU has no AVX2/FMA");
            return;
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        // Lengths around the tile sizes (6 rows, 16 keys), two head sizes.
        for &(h, heads) in &[(64usize, 4usize), (96, 3), (64, 2)] {
            for &len in &[1usize, 5, 6, 7, 16, 17, 40, 97] {
                let rows: Vec<f32> = (0..len * 3 * h).map(|_| rnd() * 2.0).collect();
                let bias: Vec<f32> = (0..3 * h).map(|_| rnd() * 0.1).collect();
                let mut ctx = vec![f32::NAN; (len + 2) * h];
                // SAFETY: `supported` checked AVX2/FMA; h / heads is 16 or 32.
                unsafe { attend_text_tiled(&mut ctx, &rows, &bias, len, h, heads) };
                let want = reference(&rows, &bias, len, h, heads);
                for (i, (&got, &want)) in ctx.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(got) - want).abs() <= 2e-5 * (1.0 + want.abs()),
                        "h {h} heads {heads} len {len} at {i}: {got} vs {want}"
                    );
                }
                // Rows past `len` are not written.
                assert!(ctx[len * h..].iter().all(|x| x.is_nan()));

                // The same text at rows 3.. of a 5-row-longer pass, head-major, written in
                // two chunks as two matmul epilogues would.
                let total = len + 5;
                let mut pass = vec![0f32; total * 3 * h];
                pass[3 * 3 * h..(3 + len) * 3 * h].copy_from_slice(&rows);
                let mut hm = vec![f32::NAN; total * 3 * h];
                let cut = total / 2;
                for (r0, chunk) in [(0, &pass[..cut * 3 * h]), (cut, &pass[cut * 3 * h..])] {
                    // SAFETY: `hm` holds 3 · total · h floats; one chunk at a time.
                    unsafe { scatter_heads(hm.as_mut_ptr(), total, r0, chunk, &bias, h, heads) };
                }
                let mut ctx2 = vec![f32::NAN; (len + 2) * h];
                // SAFETY: as above.
                unsafe { attend_text_heads(&mut ctx2, &hm, total, 3, len, h, heads) };
                for (i, (&got, &want)) in ctx2.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(got) - want).abs() <= 2e-5 * (1.0 + want.abs()),
                        "head-major: h {h} heads {heads} len {len} at {i}: {got} vs {want}"
                    );
                }
                assert!(ctx2[len * h..].iter().all(|x| x.is_nan()));
            }
        }
    }
}
