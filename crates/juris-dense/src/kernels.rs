//! Inner-product kernels: `f32·f32` and `f32·f16`, chosen at run time.
//!
//! Search spends nearly all of its time here, so on x86-64 with AVX2 and FMA (and F16C for
//! half-precision rows) the kernels use 256-bit intrinsics with four independent
//! accumulators (one accumulator would serialize on the FMA latency). Elsewhere a portable
//! version with eight accumulators lets the compiler vectorize for the baseline target.
//! Both sum in a different order from a sequential loop, so results differ from a naive
//! sum in the last bits; ranking ties are broken by row number, never by summation order.

use half::f16;

/// `Σ a[i]·b[i]` over the shorter of the two lengths (callers pass equal lengths).
#[inline]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features the function is compiled for were just detected.
            return unsafe { x86::dot_f32(a, b) };
        }
    }
    portable_dot_f32(a, b)
}

/// `Σ q[i]·f32(r[i])` over the shorter of the two lengths.
#[inline]
pub(crate) fn dot_f16(q: &[f32], r: &[f16]) -> f32 {
    let n = q.len().min(r.len());
    let (q, r) = (&q[..n], &r[..n]);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features the function is compiled for were just detected.
            return unsafe { x86::dot_f16(q, r) };
        }
    }
    portable_dot_f16(q, r)
}

/// Hints the CPU to start loading `data` into cache (a no-op off x86-64). Graph search
/// scores rows at random places of a matrix far larger than the caches, so each score
/// otherwise waits on main memory; prefetching the next rows while scoring the current
/// one overlaps those waits (see `HnswIndex::search_layer`).
#[inline(always)]
pub(crate) fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = data.as_ptr() as *const i8;
        let bytes = std::mem::size_of_val(data);
        let mut off = 0;
        while off < bytes {
            // SAFETY: SSE is part of the x86-64 baseline, and a prefetch never faults; the
            // address lies inside `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

fn portable_dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// Same summation order as [`portable_dot_f32`] on the converted row (eight lanes, then
/// the tail), so `dot_f16(q, r) == dot_f32(q, f32(r))` bit for bit, as on x86: exact search
/// scores single queries straight from f16 rows and batches from converted blocks, and
/// both must rank identically.
fn portable_dot_f16(q: &[f32], r: &[f16]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut buf = [0.0f32; 8];
    let mut cq = q.chunks_exact(8);
    let mut cr = r.chunks_exact(8);
    for (x, y) in (&mut cq).zip(&mut cr) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(y, &mut buf);
        for j in 0..8 {
            acc[j] += x[j] * buf[j];
        }
    }
    let tail: f32 = cq
        .remainder()
        .iter()
        .zip(cr.remainder())
        .map(|(x, y)| x * y.to_f32())
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `a.len() == b.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + 8·k + 8 <= n by the loop bounds.
        while i + 32 <= n {
            for (k, slot) in acc.iter_mut().enumerate() {
                let x = unsafe { _mm256_loadu_ps(pa.add(i + 8 * k)) };
                let y = unsafe { _mm256_loadu_ps(pb.add(i + 8 * k)) };
                *slot = _mm256_fmadd_ps(x, y, *slot);
            }
            i += 32;
        }
        while i + 8 <= n {
            let x = unsafe { _mm256_loadu_ps(pa.add(i)) };
            let y = unsafe { _mm256_loadu_ps(pb.add(i)) };
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum(v);
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `q.len() == r.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16(q: &[f32], r: &[f16]) -> f32 {
        let n = q.len();
        let (pq, pr) = (q.as_ptr(), r.as_ptr() as *const u16);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + 8·k + 8 <= n by the loop bounds; f16 is a u16 bit pattern.
        while i + 32 <= n {
            for (k, slot) in acc.iter_mut().enumerate() {
                let h = unsafe { _mm_loadu_si128(pr.add(i + 8 * k) as *const __m128i) };
                let y = _mm256_cvtph_ps(h);
                let x = unsafe { _mm256_loadu_ps(pq.add(i + 8 * k)) };
                *slot = _mm256_fmadd_ps(x, y, *slot);
            }
            i += 32;
        }
        while i + 8 <= n {
            let h = unsafe { _mm_loadu_si128(pr.add(i) as *const __m128i) };
            let x = unsafe { _mm256_loadu_ps(pq.add(i)) };
            acc[0] = _mm256_fmadd_ps(x, _mm256_cvtph_ps(h), acc[0]);
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum(v);
        while i < n {
            s += q[i] * r[i].to_f32();
            i += 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_f64_sum_on_odd_lengths() {
        for n in [0usize, 1, 7, 8, 9, 31, 32, 33, 100, 384] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 11 % 13) as f32 - 6.0) / 6.0).collect();
            let bh: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
            let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let want_h: f64 = a.iter().zip(&bh).map(|(&x, y)| x as f64 * y.to_f64()).sum();
            assert!((dot_f32(&a, &b) as f64 - want).abs() < 1e-4, "n={n}");
            assert!(
                (portable_dot_f32(&a, &b) as f64 - want).abs() < 1e-4,
                "n={n}"
            );
            assert!((dot_f16(&a, &bh) as f64 - want_h).abs() < 1e-4, "n={n}");
            assert!(
                (portable_dot_f16(&a, &bh) as f64 - want_h).abs() < 1e-4,
                "n={n}"
            );
            let b_back: Vec<f32> = bh.iter().map(|x| x.to_f32()).collect();
            assert_eq!(
                dot_f16(&a, &bh).to_bits(),
                dot_f32(&a, &b_back).to_bits(),
                "n={n}"
            );
            assert_eq!(
                portable_dot_f16(&a, &bh).to_bits(),
                portable_dot_f32(&a, &b_back).to_bits(),
                "n={n}"
            );
        }
    }
}
