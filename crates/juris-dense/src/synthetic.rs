//! Seeded synthetic data for tests and benchmarks: clustered unit vectors, which resemble
//! text embeddings (many near-duplicates around topics) far better than uniform noise, on
//! which every ANN index looks worse than on real data.

use rayon::prelude::*;

/// A small, fast, seeded generator (SplitMix64); not for cryptography.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// Scales `v` to unit L2 norm (left as is when it is all zeros).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// `n` unit vectors of dimension `dim`, row-major, drawn around `clusters` random unit
/// centres with Gaussian noise of standard deviation `spread` per coordinate (relative to a
/// centre of norm 1; 1/√dim · 2 gives clusters that overlap a little), then normalized.
/// Row `i` depends only on `(seed, i)`, so prefixes of a larger set are identical.
pub fn clustered_unit_vectors(
    n: usize,
    dim: usize,
    clusters: usize,
    spread: f32,
    seed: u64,
) -> Vec<f32> {
    let clusters = clusters.max(1);
    let mut rng = Rng::new(seed);
    let mut centres = vec![0.0f32; clusters * dim];
    for c in centres.chunks_mut(dim) {
        c.iter_mut().for_each(|x| *x = rng.normal());
        normalize(c);
    }
    let mut out = vec![0.0f32; n * dim];
    out.par_chunks_mut(dim).enumerate().for_each(|(i, row)| {
        let mut r = Rng::new(
            seed ^ (i as u64)
                .wrapping_mul(0xD1B5_4A32_D192_ED03)
                .wrapping_add(1),
        );
        let c = (r.next_u64() % clusters as u64) as usize;
        for (x, &m) in row.iter_mut().zip(&centres[c * dim..(c + 1) * dim]) {
            *x = m + spread * r.normal();
        }
        normalize(row);
    });
    out
}
