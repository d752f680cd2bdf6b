//! Helpers shared by the integration tests.
#![allow(dead_code)]

use juris_index::corpus::Document;
use juris_index::{build_index_from_terms, Index, IndexConfig, NoProgress, ScorerConfig};
use std::path::Path;

/// Deterministic xorshift64* generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Zipf-ish term index in 0..v.
    pub fn zipf(&mut self, v: u64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((v as f64).powf(u) - 1.0).floor().min(v as f64 - 1.0) as u64
    }
}

/// A document with id `id` whose text is its terms joined by spaces.
pub fn doc(id: &str, terms: &[String]) -> Document {
    Document {
        id: id.to_string(),
        title: String::new(),
        text: terms.join(" "),
        ..Default::default()
    }
}

/// Random corpus: `n` documents over a vocabulary of `v` Zipf-distributed terms.
pub fn random_corpus(seed: u64, n: usize, v: u64) -> Vec<(String, Vec<String>)> {
    let mut r = Rng(seed | 1);
    (0..n)
        .map(|i| {
            let cap = if r.below(10) == 0 { 300 } else { 40 };
            let len = 1 + r.below(cap) as usize;
            let terms = (0..len).map(|_| format!("t{}", r.zipf(v))).collect();
            (format!("doc-{i}"), terms)
        })
        .collect()
}

pub fn build(dir: &Path, docs: &[(String, Vec<String>)], scorer: ScorerConfig) -> Index {
    let cfg = IndexConfig {
        scorer,
        ..Default::default()
    };
    build_index_from_terms(
        docs.iter().map(|(id, t)| (doc(id, t), t.clone())),
        dir,
        &cfg,
        &NoProgress,
    )
    .expect("build");
    Index::open(dir).expect("open")
}

/// Straightforward f64 scoring of every document, written independently of the index.
pub fn naive_scores(cfg: &ScorerConfig, docs: &[Vec<String>], query: &[String]) -> Vec<f64> {
    use juris_index::ScorerKind as K;
    use std::collections::HashMap;
    let n = docs.len() as f64;
    let avgdl = docs.iter().map(|d| d.len()).sum::<usize>() as f64 / n;
    let mut df: HashMap<&str, f64> = HashMap::new();
    let tfs: Vec<HashMap<&str, f64>> = docs
        .iter()
        .map(|d| {
            let mut m = HashMap::new();
            for t in d {
                *m.entry(t.as_str()).or_insert(0.0) += 1.0;
            }
            for t in m.keys() {
                *df.entry(t).or_insert(0.0) += 1.0;
            }
            m
        })
        .collect();
    let raw_okapi = |df: f64| (n - df + 0.5).ln() - (df + 0.5).ln();
    let mean_okapi = df.values().map(|&d| raw_okapi(d)).sum::<f64>() / df.len() as f64;
    let (k1, b, delta) = (cfg.k1, cfg.b, cfg.delta);
    let idf = |df: f64| -> f64 {
        match cfg.kind {
            K::Robertson => ((n - df + 0.5) / (df + 0.5)).ln().max(0.0),
            K::Lucene => (1.0 + (n - df + 0.5) / (df + 0.5)).ln(),
            K::Bm25L => ((n + 1.0) / (df + 0.5)).ln(),
            K::Bm25Plus | K::RankBm25Plus => ((n + 1.0) / df).ln(),
            K::RankBm25Okapi => {
                let r = raw_okapi(df);
                if r < 0.0 {
                    cfg.epsilon * mean_okapi
                } else {
                    r
                }
            }
            K::RankBm25L => (n + 1.0).ln() - (df + 0.5).ln(),
        }
    };
    docs.iter()
        .zip(&tfs)
        .map(|(d, tf)| {
            let l = 1.0 - b + b * d.len() as f64 / avgdl;
            let mut s = 0.0;
            for t in query {
                let Some(&dft) = df.get(t.as_str()) else {
                    continue;
                };
                let i = idf(dft);
                let f = tf.get(t.as_str()).copied().unwrap_or(0.0);
                let c = f / l;
                s += match cfg.kind {
                    K::Robertson | K::Lucene => i * f / (f + k1 * l),
                    K::Bm25L => i * (k1 + 1.0) * (c + delta) / (k1 + c + delta),
                    K::Bm25Plus => {
                        if f > 0.0 {
                            i * ((k1 + 1.0) * f / (k1 * l + f) + delta)
                        } else {
                            0.0
                        }
                    }
                    K::RankBm25Okapi => i * f * (k1 + 1.0) / (f + k1 * l),
                    K::RankBm25Plus => i * (delta + f * (k1 + 1.0) / (k1 * l + f)),
                    K::RankBm25L => i * f * (k1 + 1.0) * (c + delta) / (k1 + c + delta),
                };
            }
            s
        })
        .collect()
}

/// `|a − b| ≤ rel·|b| + abs`.
pub fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= rel * b.abs() + abs
}
