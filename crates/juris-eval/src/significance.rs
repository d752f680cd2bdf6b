//! Paired significance tests on per-query metric values.
//!
//! Both tests take the per-query differences `d_i = a_i - b_i` of two systems on
//! the same queries. No external crate is used: the Student t distribution is
//! evaluated through the regularized incomplete beta function (continued
//! fraction), and the randomization test draws its sign flips from a seeded
//! SplitMix64 generator, so results are reproducible for a given seed.

use serde::{Deserialize, Serialize};

/// Result of a paired two-sided Student t-test.
///
/// Degenerate cases never produce NaN:
/// * `n < 2`: `t = None`, `df = 0`, `p_value = 1` (no evidence either way);
/// * all differences identical and zero: `t = None`, `p_value = 1`;
/// * all differences identical and non-zero (zero variance): `t = None`,
///   `p_value = 0` (the difference is perfectly consistent; scipy reports ±inf).
///
/// A NaN or infinite difference (impossible for values from [`crate::evaluate`])
/// gives `t = None` and a NaN p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TTest {
    /// Number of pairs.
    pub n: usize,
    /// Mean of the differences `a - b`.
    pub mean_diff: f64,
    /// Sample standard deviation of the differences (`n - 1` denominator; 0 if `n < 2`).
    pub std_diff: f64,
    /// The t statistic `mean / (sd / sqrt(n))`, when defined.
    pub t: Option<f64>,
    /// Degrees of freedom, `n - 1` (0 if `n < 2`).
    pub df: usize,
    /// Two-sided p-value.
    pub p_value: f64,
}

/// Paired two-sided t-test on differences `a_i - b_i` (as scipy's `ttest_rel(a, b)`).
pub fn paired_t_test(differences: &[f64]) -> TTest {
    let n = differences.len();
    let mean = if n == 0 {
        0.0
    } else {
        differences.iter().sum::<f64>() / n as f64
    };
    if n < 2 {
        return TTest {
            n,
            mean_diff: mean,
            std_diff: 0.0,
            t: None,
            df: 0,
            p_value: 1.0,
        };
    }
    let df = n - 1;
    if differences.iter().any(|d| !d.is_finite()) {
        return TTest {
            n,
            mean_diff: mean,
            std_diff: f64::NAN,
            t: None,
            df,
            p_value: f64::NAN,
        };
    }
    let var = differences.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / df as f64;
    let sd = var.sqrt();
    if sd == 0.0 {
        let all_zero = differences.iter().all(|&d| d == 0.0);
        return TTest {
            n,
            mean_diff: mean,
            std_diff: 0.0,
            t: None,
            df,
            p_value: if all_zero { 1.0 } else { 0.0 },
        };
    }
    let t = mean / (sd / (n as f64).sqrt());
    TTest {
        n,
        mean_diff: mean,
        std_diff: sd,
        t: Some(t),
        df,
        p_value: student_t_two_sided_p(t, df as f64),
    }
}

/// Result of a paired randomization (sign-flip permutation) test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomizationTest {
    /// Number of pairs.
    pub n: usize,
    /// Mean of the differences `a - b`.
    pub mean_diff: f64,
    /// Number of random sign assignments drawn.
    pub rounds: usize,
    /// Seed of the generator.
    pub seed: u64,
    /// Two-sided p-value `(c + 1) / (rounds + 1)`, where `c` counts the rounds
    /// whose |mean difference| is at least the observed one. 1 when `n = 0`
    /// or `rounds = 0` (and when all differences are 0); NaN if a difference
    /// is NaN or infinite.
    pub p_value: f64,
}

/// Default number of rounds for [`randomization_test`].
pub const DEFAULT_ROUNDS: usize = 10_000;

/// Paired randomization test: each round flips the sign of each difference
/// with probability 1/2 (the two systems' values are swapped) and compares the
/// absolute mean difference with the observed one (a relative tolerance of
/// 1e-12 absorbs rounding). Deterministic for a given `seed`.
pub fn randomization_test(differences: &[f64], rounds: usize, seed: u64) -> RandomizationTest {
    let n = differences.len();
    let observed: f64 = differences.iter().sum();
    let mean_diff = if n == 0 { 0.0 } else { observed / n as f64 };
    if differences.iter().any(|d| !d.is_finite()) {
        return RandomizationTest {
            n,
            mean_diff,
            rounds,
            seed,
            p_value: f64::NAN,
        };
    }
    if n == 0 || rounds == 0 {
        return RandomizationTest {
            n,
            mean_diff,
            rounds,
            seed,
            p_value: 1.0,
        };
    }
    let threshold = observed.abs() - 1e-12 * observed.abs().max(1.0);
    let mut rng = SplitMix64::new(seed);
    let mut at_least = 0usize;
    for _ in 0..rounds {
        let mut sum = 0.0;
        for chunk in differences.chunks(64) {
            let mut bits = rng.next_u64();
            for &d in chunk {
                sum += if bits & 1 == 1 { -d } else { d };
                bits >>= 1;
            }
        }
        if sum.abs() >= threshold {
            at_least += 1;
        }
    }
    RandomizationTest {
        n,
        mean_diff,
        rounds,
        seed,
        p_value: (at_least + 1) as f64 / (rounds + 1) as f64,
    }
}

/// The SplitMix64 pseudo-random generator (Steele, Lea & Flood, 2014): tiny,
/// fast, and good enough for permutation tests.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Two-sided p-value `P(|T| >= |t|)` for Student's t with `df > 0` degrees of
/// freedom: `I_{df/(df+t^2)}(df/2, 1/2)`.
pub fn student_t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return 1.0;
    }
    if t.is_infinite() {
        return 0.0;
    }
    let x = df / (df + t * t);
    regularized_incomplete_beta(df / 2.0, 0.5, x).clamp(0.0, 1.0)
}

/// Cumulative distribution function of Student's t with `df > 0` degrees of freedom.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    let tail = 0.5 * student_t_two_sided_p(t, df);
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The regularized incomplete beta function `I_x(a, b)` for `a, b > 0`,
/// `0 <= x <= 1`, via its continued fraction (modified Lentz), using the
/// symmetry `I_x(a, b) = 1 - I_{1-x}(b, a)` where that converges faster.
/// Returns NaN for arguments outside the domain.
pub fn regularized_incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if !(a > 0.0 && b > 0.0 && (0.0..=1.0).contains(&x)) {
        return f64::NAN;
    }
    if x == 0.0 {
        return 0.0;
    }
    if x == 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_continued_fraction(b, a, 1.0 - x) / b
    }
}

/// Evaluates the continued fraction for `I_x(a, b)` (DLMF 8.17.22) with the
/// modified Lentz method.
fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-15;
    const MAX_ITER: usize = 10_000;
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let mut c = 1.0;
    let mut d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0));
    let mut h = d;
    for m in 1..=MAX_ITER {
        let m = m as f64;
        // even step: d_{2m}
        let num = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 / guard(1.0 + num * d);
        c = guard(1.0 + num / c);
        h *= d * c;
        // odd step: d_{2m+1}
        let num = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 / guard(1.0 + num * d);
        c = guard(1.0 + num / c);
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// Natural logarithm of the gamma function for `x > 0` (Lanczos approximation,
/// g = 7, 9 terms; relative error around 1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // reflection: Gamma(x) Gamma(1 - x) = pi / sin(pi x)
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEF[0];
    for (i, &c) in COEF.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-13);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        assert!((ln_gamma(100.5) - 361.435_540_467_777_6).abs() < 1e-9);
    }

    #[test]
    fn t_distribution_known_values() {
        // df = 1 is the Cauchy distribution: P(|T| >= 1) = 0.5.
        assert!((student_t_two_sided_p(1.0, 1.0) - 0.5).abs() < 1e-12);
        // df = 2: P(|T| >= t) = 1 - t / sqrt(2 + t^2).
        let t: f64 = 1.7;
        let want = 1.0 - t / (2.0 + t * t).sqrt();
        assert!((student_t_two_sided_p(t, 2.0) - want).abs() < 1e-12);
        // large df approaches the normal: 1.959963984540054 → 0.05.
        assert!((student_t_two_sided_p(1.959_963_984_540_054, 1e7) - 0.05).abs() < 1e-6);
        assert!((student_t_cdf(0.0, 5.0) - 0.5).abs() < 1e-12);
        assert!(student_t_cdf(-3.0, 5.0) < 0.05);
    }

    #[test]
    fn degenerate_t_tests() {
        let r = paired_t_test(&[]);
        assert_eq!((r.n, r.t, r.p_value), (0, None, 1.0));
        let r = paired_t_test(&[0.3]);
        assert_eq!((r.n, r.t, r.df, r.p_value), (1, None, 0, 1.0));
        let r = paired_t_test(&[0.0, 0.0, 0.0]);
        assert_eq!((r.t, r.p_value), (None, 1.0));
        let r = paired_t_test(&[0.5, 0.5, 0.5]);
        assert_eq!((r.t, r.p_value, r.df), (None, 0.0, 2));
        assert!(r.mean_diff == 0.5);
    }

    #[test]
    fn randomization_degenerate_and_deterministic() {
        assert_eq!(randomization_test(&[], 100, 1).p_value, 1.0);
        assert_eq!(randomization_test(&[0.0; 5], 100, 1).p_value, 1.0);
        assert_eq!(randomization_test(&[0.1, 0.2], 0, 1).p_value, 1.0);
        let d = [0.1, -0.05, 0.2, 0.3, 0.0, 0.15, -0.1, 0.25];
        let a = randomization_test(&d, 2000, 42);
        let b = randomization_test(&d, 2000, 42);
        assert_eq!(a, b);
        assert!(a.p_value > 0.0 && a.p_value <= 1.0);
    }

    #[test]
    fn splitmix_is_reproducible_and_spread() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut r = SplitMix64::new(1);
        let mean = (0..10_000).map(|_| r.next_f64()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02);
    }
}
