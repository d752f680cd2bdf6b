//! Our f32 matrix product for the encoders' linear layers on the CPU (AVX-512F):
//! `y = x · Wᵀ` with the weight `W` (`[n, k]`, PyTorch's `[out, in]`) packed once, at model
//! load, into the layout the microkernel reads ([`PackedMatrix`]), and an epilogue run on each
//! finished chunk of output rows while they are still in cache (bias, activation, residual,
//! LayerNorm: the caller's closure).
//!
//! Why: candle's gemm (the `gemm` crate, AVX2 microkernel on this AVX-512 Zen 4) repacked every
//! weight on every call and was 66 % of the encoders' CPU time; the ops after it (bias + GELU,
//! add + LayerNorm) each read and wrote the whole activation again.
//!
//! Layout and blocking:
//! * the weight becomes panels of [`NR`] = 32 output columns: panel `j` holds, for every `k`,
//!   the 32 values `W[32j .. 32j + 32, k]` (zeros past `n`), 64-byte aligned, so one step of
//!   the microkernel loads two aligned zmm registers;
//! * the rows of `x` are cut into chunks of [`MC`] rows, one rayon task each (the threads split
//!   M; the weight is shared, read-only); a chunk walks K in blocks of [`KC`], first copying
//!   its KC-wide slice of `x` into micro-panels of [`MR`] = 12 rows of stride KC (zero rows
//!   past the end), so that the microkernel broadcasts from one pointer at constant offsets,
//!   then for every weight panel (kept in L1/L2 across the chunk's micro-panels)
//!   runs the microkernel over the chunk;
//! * microkernel: 12 rows × 32 columns in 24 zmm accumulators; per k step 2 loads of the
//!   weight and 12 broadcasts (folded into the FMAs) feed 24 FMAs. On Zen 4 a zmm FMA issues
//!   as two 256-bit halves, so the peak is AVX2's; the gain is fewer loads and instructions
//!   per FMA than a 12-accumulator AVX2 tile.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::cell::RefCell;

use rayon::prelude::*;

/// Output columns per weight panel (two zmm registers).
pub const NR: usize = 32;
/// Rows per microkernel tile.
pub const MR: usize = 12;
/// Depth of one K block: a weight micro-panel is `KC × NR` floats (48 KB). The encoders'
/// K of 384 then takes one block (no reload of the output tile); 128 and 256 measured 2–5 %
/// slower at 1 thread.
pub const KC: usize = 384;
/// Rows per rayon task (a multiple of [`MR`]): small enough that two threads stay balanced
/// on a 2,048-row pass, large enough that each weight micro-panel serves several tiles.
pub const MC: usize = 48;

/// Whether [`matmul`] can run on this CPU.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight `[n, k]` in the microkernel's panel layout (see the module docs).
pub struct PackedMatrix {
    k: usize,
    n: usize,
    /// Backing store; the panels start at `offset`, 64-byte aligned.
    data: Vec<f32>,
    offset: usize,
}

impl PackedMatrix {
    /// Packs `w`, row-major `[n, k]` (one row per output, as PyTorch stores a linear layer).
    pub fn from_out_in(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "weight of {} values is not {n} × {k}",
            w.len()
        );
        let panels = n.div_ceil(NR);
        // 16 floats of slack to move the start onto a 64-byte boundary.
        let mut data = vec![0f32; panels * k * NR + 16];
        let offset = data.as_ptr().align_offset(64).min(16);
        let dst = &mut data[offset..];
        for (o, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
            let (j, c) = (o / NR, o % NR);
            let panel = &mut dst[j * k * NR..(j + 1) * k * NR];
            for (kk, &v) in row.iter().enumerate() {
                panel[kk * NR + c] = v;
            }
        }
        PackedMatrix { k, n, data, offset }
    }

    /// Input width (K).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output width (N).
    pub fn n(&self) -> usize {
        self.n
    }

    fn panels(&self) -> &[f32] {
        &self.data[self.offset..]
    }
}

thread_local! {
    /// Each worker's packed slice of `x`, reused across calls.
    static PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[m, n] = x[m, k] · Wᵀ`, then `epilogue(first_row, rows)` on each finished chunk of
/// whole output rows (`rows.len()` a multiple of `n`); chunks run in parallel on rayon's pool.
///
/// # Panics
/// When the CPU lacks AVX-512F ([`supported`]) or a slice is shorter than its shape.
pub fn matmul<E>(x: &[f32], m: usize, w: &PackedMatrix, out: &mut [f32], epilogue: E)
where
    E: Fn(usize, &mut [f32]) + Sync,
{
    let (k, n) = (w.k, w.n);
    assert!(supported(), "gemm_cpu::matmul needs AVX-512F");
    assert!(
        x.len() >= m * k && out.len() >= m * n,
        "matmul: slices too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    out[..m * n]
        .par_chunks_mut(MC * n)
        .enumerate()
        .for_each(|(ci, chunk)| {
            let row0 = ci * MC;
            let rows = chunk.len() / n;
            PACK.with(|buf| {
                let mut buf = buf.borrow_mut();
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512F was checked above; `x` holds `rows` rows of `k` from
                // `row0` and `chunk` holds `rows` rows of `n`.
                unsafe {
                    chunk_product(&x[row0 * k..(row0 + rows) * k], rows, w, chunk, &mut buf)
                };
            });
            epilogue(row0, chunk);
        });
}

/// `c[rows, n] = x[rows, k] · Wᵀ` for one chunk, on the calling thread.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chunk_product(
    x: &[f32],
    rows: usize,
    w: &PackedMatrix,
    c: &mut [f32],
    buf: &mut Vec<f32>,
) {
    let (k, n) = (w.k, w.n);
    assert!(x.len() >= rows * k && c.len() >= rows * n);
    if k == 0 {
        c[..rows * n].fill(0.0);
        return;
    }
    let blocks = rows.div_ceil(MR);
    let need = blocks * MR * KC;
    if buf.len() < need {
        buf.resize(need, 0.0);
    }
    let panels = w.panels();
    let cp = c.as_mut_ptr();
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        // Row r of micro-panel ib at `(ib · MR + r) · KC`: plain row copies (a transposed
        // `[k][row]` layout made LLVM emit scatters, ~6 % of the matmul's time), and the
        // microkernel still reads every row at a constant offset from one pointer.
        for (r, dst) in buf[..blocks * MR * KC].chunks_exact_mut(KC).enumerate() {
            if r < rows {
                dst[..kc].copy_from_slice(&x[r * k + k0..r * k + k0 + kc]);
            } else {
                dst[..kc].fill(0.0);
            }
        }
        for j in 0..n.div_ceil(NR) {
            let cols = NR.min(n - j * NR);
            let bp = panels[(j * k + k0) * NR..(j * k + k0 + kc) * NR].as_ptr();
            for ib in 0..blocks {
                let live = MR.min(rows - ib * MR);
                // SAFETY: `buf` holds this block's `MR × kc` values, `bp` the panel's
                // `kc × NR`, and `c` has `live` rows of `n ≥ j·NR + cols` from the tile.
                unsafe {
                    tile(
                        kc,
                        buf.as_ptr().add(ib * MR * KC),
                        bp,
                        cp.add(ib * MR * n + j * NR),
                        n,
                        live,
                        cols,
                        k0 > 0,
                    )
                };
            }
        }
    }
}

/// One 12 × 32 tile: `c[r, 0..cols] (+)= Σ_k a[r, k] · b[k, 0..32]` for the first `live`
/// rows; `accumulate` adds to what `c` holds (K blocks after the first).
///
/// # Safety
/// AVX-512F; `a` holds `MR` rows of stride `KC` with `kc ≤ KC` values each, `b` `kc × NR`
/// floats, 64-byte aligned; `c` has `live` rows of stride `ldc` with `cols` writable values
/// each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    live: usize,
    cols: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for kk in 0..kc {
        // SAFETY: kk < kc ≤ KC (caller's sizes).
        let (b0, b1, ak) = unsafe {
            (
                _mm512_load_ps(b.add(kk * NR)),
                _mm512_load_ps(b.add(kk * NR + 16)),
                a.add(kk),
            )
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: r < MR rows of KC.
            let av = _mm512_set1_ps(unsafe { *ak.add(r * KC) });
            acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
        }
    }
    // Column masks for a last panel narrower than 32.
    let lo = cols.min(16);
    let hi = cols.saturating_sub(16);
    let m0: __mmask16 = if lo == 16 { 0xffff } else { (1u16 << lo) - 1 };
    let m1: __mmask16 = if hi == 16 { 0xffff } else { (1u16 << hi) - 1 };
    // Constant indices (r < MR) keep `acc` in registers; `live` only gates the stores.
    for (r, acc) in acc.iter().enumerate() {
        if r >= live {
            break;
        }
        // SAFETY: r < live rows of stride ldc; the masks cover `cols` values.
        unsafe {
            let p = c.add(r * ldc);
            let (mut v0, mut v1) = (acc[0], acc[1]);
            if cols == NR {
                if accumulate {
                    v0 = _mm512_add_ps(v0, _mm512_loadu_ps(p));
                    v1 = _mm512_add_ps(v1, _mm512_loadu_ps(p.add(16)));
                }
                _mm512_storeu_ps(p, v0);
                _mm512_storeu_ps(p.add(16), v1);
            } else {
                if accumulate {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, p));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, p.add(16)));
                }
                _mm512_mask_storeu_ps(p, m0, v0);
                _mm512_mask_storeu_ps(p.add(16), m1, v1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    /// `x · Wᵀ` in f64, the reference.
    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for o in 0..n {
                out[i * n + o] = (0..k)
                    .map(|kk| f64::from(x[i * k + kk]) * f64::from(w[o * k + kk]))
                    .sum();
            }
        }
        out
    }

    fn check(m: usize, n: usize, k: usize, seed: u64) {
        let mut r = rng(seed);
        let x: Vec<f32> = (0..m * k).map(|_| r()).collect();
        let w: Vec<f32> = (0..n * k).map(|_| r()).collect();
        let packed = PackedMatrix::from_out_in(&w, n, k);
        // Two rows of NaN past the end: nothing may be written there.
        let mut out = vec![f32::NAN; (m + 2) * n];
        matmul(&x, m, &packed, &mut out, |_, _| {});
        let want = reference(&x, &w, m, n, k);
        let tol = 1e-5 * (k as f64).sqrt().max(1.0);
        for (i, (&g, &e)) in out.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(g) - e).abs() <= tol * (1.0 + e.abs()),
                "m {m} n {n} k {k} at ({}, {}): {g} vs {e}",
                i / n,
                i % n
            );
        }
        assert!(
            out[m * n..].iter().all(|v| v.is_nan()),
            "m {m} n {n} k {k}: wrote past the end"
        );
    }

    #[test]
    fn matches_f64_reference_on_awkward_shapes() {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        // Around the tile sizes (MR 12, NR 32, KC 384, MC 48), K = 1, and the model shapes.
        let shapes = [
            (1, 1, 1),
            (1, 32, 1),
            (11, 31, 7),
            (12, 32, 384),
            (13, 33, 385),
            (24, 64, 256),
            (47, 17, 3),
            (48, 64, 255),
            (49, 95, 513),
            (5, 384, 1),
            (100, 48, 384),
            (97, 384, 1536),
            (130, 1152, 384),
            (2, 1, 600),
        ];
        for (i, &(m, n, k)) in shapes.iter().enumerate() {
            check(m, n, k, 0x9e37_79b9 + i as u64);
        }
    }

    #[test]
    fn empty_inputs() {
        if !supported() {
            return;
        }
        let p = PackedMatrix::from_out_in(&[], 5, 0);
        let mut out = vec![f32::NAN; 15];
        matmul(&[], 3, &p, &mut out, |_, _| {});
        assert!(out.iter().all(|&v| v == 0.0));
        let p = PackedMatrix::from_out_in(&[1.0; 8], 2, 4);
        matmul(&[], 0, &p, &mut [], |_, _| panic!("no rows, no epilogue"));
    }

    #[test]
    fn epilogue_sees_every_row_once_with_its_index() {
        if !supported() {
            return;
        }
        let (m, n, k) = (101, 40, 9);
        let mut r = rng(7);
        let x: Vec<f32> = (0..m * k).map(|_| r()).collect();
        let w: Vec<f32> = (0..n * k).map(|_| r()).collect();
        let bias: Vec<f32> = (0..n).map(|_| r()).collect();
        let packed = PackedMatrix::from_out_in(&w, n, k);
        let mut plain = vec![0f32; m * n];
        matmul(&x, m, &packed, &mut plain, |_, _| {});
        // Epilogue: add the bias and the row index.
        let mut fused = vec![0f32; m * n];
        matmul(&x, m, &packed, &mut fused, |row0, rows| {
            assert_eq!(rows.len() % n, 0);
            for (i, row) in rows.chunks_exact_mut(n).enumerate() {
                for (v, b) in row.iter_mut().zip(&bias) {
                    *v += b + (row0 + i) as f32;
                }
            }
        });
        for i in 0..m {
            for o in 0..n {
                let want = plain[i * n + o] + (bias[o] + i as f32);
                assert_eq!(fused[i * n + o], want, "row {i} col {o}");
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use candle_core::{Device, Tensor};

    /// CPU seconds of this process (all threads), from /proc/self/stat: steadier than wall
    /// time on a shared machine.
    fn cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let rest = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
        let f: Vec<f64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
    }

    /// GFLOP/s per CPU second of ours and of candle at the encoder shapes; by hand:
    /// `RAYON_NUM_THREADS=1 cargo test --release -p juris-ml --lib gemm_speed -- --ignored
    /// --nocapture` (GEMM_SPEED=ours|candle runs one side only).
    #[test]
    #[ignore]
    fn gemm_speed() {
        let m = 2048;
        let which = std::env::var("GEMM_SPEED").unwrap_or_default();
        for &(n, k) in &[(1152usize, 384usize), (384, 384), (1536, 384), (384, 1536)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 104729) % 1000) as f32 / 1000.0)
                .collect();
            let flops = 2.0 * (m * n * k) as f64 * 40.0;
            if which != "candle" {
                let p = PackedMatrix::from_out_in(&w, n, k);
                let mut out = vec![0f32; m * n];
                matmul(&x, m, &p, &mut out, |_, _| {});
                let c0 = cpu_seconds();
                for _ in 0..40 {
                    matmul(&x, m, &p, &mut out, |_, _| {});
                }
                let g = flops / (cpu_seconds() - c0) / 1e9;
                eprintln!("m {m} n {n} k {k}: ours {g:.1} GFLOP/CPU-s");
            }
            if which != "ours" {
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
                let wt = wt.t().unwrap();
                let _ = xt.matmul(&wt).unwrap();
                let c0 = cpu_seconds();
                for _ in 0..40 {
                    std::hint::black_box(xt.matmul(&wt).unwrap());
                }
                let g = flops / (cpu_seconds() - c0) / 1e9;
                eprintln!("m {m} n {n} k {k}: candle {g:.1} GFLOP/CPU-s");
            }
        }
    }
}
