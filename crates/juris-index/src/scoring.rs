//! BM25-family ranking functions behind one trait, [`Scorer`].
//!
//! Every scorer is written as a per-term *idf*, a per-posting *impact* and a per-term
//! *absent* contribution, so that the score of document `d` for query `q` is
//!
//! ```text
//! score(d) = Σ_{t∈q} absent_t  +  Σ_{t∈q, tf(t,d)>0} (impact_{t,d} − absent_t)
//! ```
//!
//! The index precomputes `impact_{t,d} − absent_t` as one `f32` per posting (see
//! [`crate::format`]), so query time is a sum of stored numbers. `absent_t` is 0 for every
//! scorer except [`ScorerKind::Bm25L`] and [`ScorerKind::RankBm25Plus`], whose formulas give
//! a document that lacks a query term a positive contribution for it.
//!
//! Notation: `N` documents, `df` documents containing the term, `tf` occurrences of the term
//! in the document, `dl` the document length in terms, `avgdl` the mean document length, and
//! `L = 1 − b + b·dl/avgdl`.
//!
//! | name | idf | impact (tf > 0) | absent | reference |
//! |---|---|---|---|---|
//! | `robertson` | `max(0, ln((N−df+0.5)/(df+0.5)))` | `idf·tf/(tf + k1·L)` | 0 | bm25s `method="robertson"` |
//! | `lucene` (default) | `ln(1 + (N−df+0.5)/(df+0.5))` | `idf·tf/(tf + k1·L)` | 0 | bm25s `method="lucene"` |
//! | `bm25l` | `ln((N+1)/(df+0.5))` | `idf·(k1+1)(c+δ)/(k1+c+δ)`, `c = tf/L` | `idf·(k1+1)δ/(k1+δ)` | bm25s `method="bm25l"` |
//! | `bm25plus` | `ln((N+1)/df)` | `idf·((k1+1)tf/(k1·L+tf) + δ)` | 0 | Lv & Zhai (CIKM 2011) |
//! | `rank-bm25-okapi` | `ln(N−df+0.5) − ln(df+0.5)`, negatives → `ε·mean idf` | `idf·tf(k1+1)/(tf + k1·L)` | 0 | rank_bm25 `BM25Okapi` |
//! | `rank-bm25-plus` | `ln((N+1)/df)` | `idf·(δ + tf(k1+1)/(k1·L+tf))` | `idf·δ` | rank_bm25 `BM25Plus`, bm25s `method="bm25+"` |
//! | `rank-bm25-l` | `ln(N+1) − ln(df+0.5)` | `idf·tf·(k1+1)(c+δ)/(k1+c+δ)` | 0 | rank_bm25 `BM25L` |
//!
//! Notes on the references:
//!
//! * bm25s clamps the Robertson idf at 0 (`inner < 1 → inner = 1`), so a term in more than
//!   half the documents scores 0 rather than negatively; `robertson` does the same.
//! * bm25s and Lucene drop the `(k1+1)` factor of the classic tf part (a constant factor that
//!   does not change rankings); rank_bm25 keeps it.
//! * **BM25+**: Lv & Zhai add δ only for query terms the document contains. bm25s's
//!   `"bm25+"` (like rank_bm25's `BM25Plus`) adds `idf_t·δ` for every query term known to the
//!   corpus, present in the document or not (its "non-occurrence" array). Hence
//!   `bm25s(d) = bm25plus(d) + Σ_{t∈q, tf(t,d)=0} idf_t·δ`: the gap is **not** a per-query
//!   constant, it depends on which query terms `d` lacks, and rankings can differ. Juris offers
//!   both: `bm25plus` (Lv & Zhai) and `rank-bm25-plus` (the bm25s/rank_bm25 formula).
//! * rank_bm25's `BM25L` multiplies the BM25L term by `tf` once more (so absent terms give 0);
//!   `rank-bm25-l` reproduces it as published, `bm25l` follows bm25s and the paper.
//! * The ε floor of `rank-bm25-okapi` uses the mean of the *raw* idfs over the whole
//!   vocabulary (negatives included), exactly as rank_bm25 computes it.
//! * Query terms unknown to the index contribute nothing (rank_bm25 gives them idf 0, bm25s
//!   drops them). **Repeated query terms count once per occurrence** in every scorer, as in
//!   both references (rank_bm25 loops over the query tokens; bm25s sums the score columns of
//!   every query token id, duplicates included).

use crate::IndexError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The BM25 variants juris implements. See the [module documentation](self) for formulas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScorerKind {
    /// BM25 with Robertson's idf clamped at 0 (bm25s `robertson`).
    #[serde(rename = "robertson")]
    Robertson,
    /// BM25 with Lucene's always-positive idf (bm25s `lucene`); the default.
    #[serde(rename = "lucene")]
    Lucene,
    /// BM25L of Lv & Zhai as bm25s implements it.
    #[serde(rename = "bm25l")]
    Bm25L,
    /// BM25+ of Lv & Zhai: δ added for matched terms only.
    #[serde(rename = "bm25plus")]
    Bm25Plus,
    /// rank_bm25's `BM25Okapi`, ε idf floor included.
    #[serde(rename = "rank-bm25-okapi")]
    RankBm25Okapi,
    /// rank_bm25's `BM25Plus` (δ for every query term; same as bm25s `bm25+`).
    #[serde(rename = "rank-bm25-plus")]
    RankBm25Plus,
    /// rank_bm25's `BM25L` (with its extra `tf` factor).
    #[serde(rename = "rank-bm25-l")]
    RankBm25L,
}

impl ScorerKind {
    /// Every kind, in documentation order.
    pub const ALL: [ScorerKind; 7] = [
        ScorerKind::Robertson,
        ScorerKind::Lucene,
        ScorerKind::Bm25L,
        ScorerKind::Bm25Plus,
        ScorerKind::RankBm25Okapi,
        ScorerKind::RankBm25Plus,
        ScorerKind::RankBm25L,
    ];

    /// The stable name used on the command line and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            ScorerKind::Robertson => "robertson",
            ScorerKind::Lucene => "lucene",
            ScorerKind::Bm25L => "bm25l",
            ScorerKind::Bm25Plus => "bm25plus",
            ScorerKind::RankBm25Okapi => "rank-bm25-okapi",
            ScorerKind::RankBm25Plus => "rank-bm25-plus",
            ScorerKind::RankBm25L => "rank-bm25-l",
        }
    }

    /// The default δ of this kind (0 where δ is unused).
    pub fn default_delta(self) -> f64 {
        match self {
            ScorerKind::Bm25L | ScorerKind::RankBm25L => 0.5,
            ScorerKind::Bm25Plus | ScorerKind::RankBm25Plus => 1.0,
            _ => 0.0,
        }
    }

    /// Parses a scorer name (case-insensitive; `bm25+` and `okapi` accepted as aliases).
    pub fn parse(name: &str) -> Result<ScorerKind, IndexError> {
        name.parse()
    }

    /// Whether δ enters the formula.
    pub fn uses_delta(self) -> bool {
        self.default_delta() != 0.0
    }
}

impl fmt::Display for ScorerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScorerKind {
    type Err = IndexError;
    fn from_str(s: &str) -> Result<Self, IndexError> {
        let lower = s.trim().to_ascii_lowercase();
        let kind = match lower.as_str() {
            "robertson" | "okapi" | "bm25" => ScorerKind::Robertson,
            "lucene" => ScorerKind::Lucene,
            "bm25l" => ScorerKind::Bm25L,
            "bm25plus" | "bm25+" => ScorerKind::Bm25Plus,
            "rank-bm25-okapi" => ScorerKind::RankBm25Okapi,
            "rank-bm25-plus" => ScorerKind::RankBm25Plus,
            "rank-bm25-l" => ScorerKind::RankBm25L,
            _ => {
                let known: Vec<&str> = ScorerKind::ALL.iter().map(|k| k.name()).collect();
                return Err(IndexError::Scorer(format!(
                    "unknown scorer {s:?}: use one of {}",
                    known.join(", ")
                )));
            }
        };
        Ok(kind)
    }
}

/// A scorer and its parameters, as stored in an index manifest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScorerConfig {
    /// Which formula.
    pub kind: ScorerKind,
    /// Term-frequency saturation (default 1.5).
    pub k1: f64,
    /// Length normalization, 0..=1 (default 0.75).
    pub b: f64,
    /// δ of the BM25L / BM25+ variants (default 0.5 for the L variants, 1.0 for the + ones).
    pub delta: f64,
    /// ε of `rank-bm25-okapi`'s idf floor (default 0.25).
    pub epsilon: f64,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        ScorerConfig::new(ScorerKind::Lucene)
    }
}

impl ScorerConfig {
    /// The kind with its default parameters (k1 = 1.5, b = 0.75, ε = 0.25, δ per kind).
    pub fn new(kind: ScorerKind) -> Self {
        ScorerConfig {
            kind,
            k1: 1.5,
            b: 0.75,
            delta: kind.default_delta(),
            epsilon: 0.25,
        }
    }

    /// Checks the parameters are in range.
    pub fn validate(&self) -> Result<(), IndexError> {
        let bad = |what: &str| Err(IndexError::Scorer(format!("scorer {}: {what}", self.kind)));
        if !(self.k1.is_finite() && self.k1 >= 0.0) {
            return bad(&format!("k1 must be a finite number ≥ 0, got {}", self.k1));
        }
        if !(0.0..=1.0).contains(&self.b) {
            return bad(&format!("b must lie in 0..=1, got {}", self.b));
        }
        if !(self.delta.is_finite() && self.delta >= 0.0) {
            return bad(&format!(
                "delta must be a finite number ≥ 0, got {}",
                self.delta
            ));
        }
        if !self.epsilon.is_finite() {
            return bad(&format!("epsilon must be finite, got {}", self.epsilon));
        }
        Ok(())
    }

    /// The scorer object for this configuration.
    pub fn scorer(&self) -> Box<dyn Scorer> {
        let p = *self;
        match self.kind {
            ScorerKind::Robertson => Box::new(Robertson(p)),
            ScorerKind::Lucene => Box::new(Lucene(p)),
            ScorerKind::Bm25L => Box::new(Bm25L(p)),
            ScorerKind::Bm25Plus => Box::new(Bm25Plus(p)),
            ScorerKind::RankBm25Okapi => Box::new(RankBm25Okapi(p)),
            ScorerKind::RankBm25Plus => Box::new(RankBm25Plus(p)),
            ScorerKind::RankBm25L => Box::new(RankBm25L(p)),
        }
    }
}

impl fmt::Display for ScorerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},k1={},b={}", self.kind, self.k1, self.b)?;
        if self.kind.uses_delta() {
            write!(f, ",delta={}", self.delta)?;
        }
        if self.kind == ScorerKind::RankBm25Okapi {
            write!(f, ",epsilon={}", self.epsilon)?;
        }
        Ok(())
    }
}

impl FromStr for ScorerConfig {
    type Err = IndexError;
    /// Parses `name` or `name,k1=1.2,b=0.75,delta=0.5,epsilon=0.25` (any subset of the
    /// parameters; the others take the kind's defaults).
    fn from_str(s: &str) -> Result<Self, IndexError> {
        let mut parts = s.split(',');
        let kind: ScorerKind = parts.next().unwrap_or("").parse()?;
        let mut cfg = ScorerConfig::new(kind);
        for part in parts {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                IndexError::Scorer(format!(
                    "scorer {s:?}: expected key=value after the name, got {part:?} (e.g. lucene,k1=1.2,b=0.75)"
                ))
            })?;
            let v: f64 = value.trim().parse().map_err(|_| {
                IndexError::Scorer(format!("scorer {s:?}: {key} = {value:?} is not a number"))
            })?;
            match key.trim() {
                "k1" => cfg.k1 = v,
                "b" => cfg.b = v,
                "delta" | "d" => cfg.delta = v,
                "epsilon" | "eps" => cfg.epsilon = v,
                other => {
                    return Err(IndexError::Scorer(format!(
                        "scorer {s:?}: unknown parameter {other:?}; use k1, b, delta or epsilon"
                    )))
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// One BM25-family formula, split into the parts the index precomputes.
///
/// A new variant is one implementation of this trait plus one [`ScorerKind`].
pub trait Scorer: Send + Sync {
    /// The configuration this scorer was made from.
    fn config(&self) -> &ScorerConfig;

    /// The idf of a term found in `df` of `n_docs` documents.
    fn idf(&self, df: u64, n_docs: u64) -> f64;

    /// The idf of every term of the vocabulary, given all document frequencies in order.
    /// The default applies [`Scorer::idf`] term by term; scorers whose idf depends on the
    /// whole vocabulary (rank_bm25's ε floor) override it.
    fn idfs(&self, dfs: &mut dyn Iterator<Item = u64>, n_docs: u64) -> Vec<f64> {
        dfs.map(|df| self.idf(df, n_docs)).collect()
    }

    /// The contribution of a term with idf `idf` occurring `tf > 0` times in a document whose
    /// length norm is `l = 1 − b + b·dl/avgdl`.
    fn impact(&self, idf: f64, tf: f64, l: f64) -> f64;

    /// The contribution of a query term to a document that lacks it (0 for most scorers).
    fn absent(&self, _idf: f64) -> f64 {
        0.0
    }
}

/// The length norm `1 − b + b·dl/avgdl` (1 when `avgdl` is 0).
pub fn length_norm(b: f64, dl: f64, avgdl: f64) -> f64 {
    if avgdl > 0.0 {
        1.0 - b + b * dl / avgdl
    } else {
        1.0
    }
}

/// `tf/(tf + k1·L)`, the tf part of bm25s and Lucene.
fn tf_lucene(k1: f64, tf: f64, l: f64) -> f64 {
    tf / (tf + k1 * l)
}

/// `tf(k1+1)/(tf + k1·L)`, the classic tf part.
fn tf_classic(k1: f64, tf: f64, l: f64) -> f64 {
    tf * (k1 + 1.0) / (tf + k1 * l)
}

/// `(k1+1)(c+δ)/(k1+c+δ)` with `c = tf/L`, BM25L's tf part.
fn tf_bm25l(k1: f64, delta: f64, tf: f64, l: f64) -> f64 {
    let c = tf / l;
    (k1 + 1.0) * (c + delta) / (k1 + c + delta)
}

struct Robertson(ScorerConfig);
impl Scorer for Robertson {
    fn config(&self) -> &ScorerConfig {
        &self.0
    }
    fn idf(&self, df: u64, n: u64) -> f64 {
        let inner = (n as f64 - df as f64 + 0.5) / (df as f64 + 0.5);
        if inner < 1.0 {
            0.0
        } else {
            inner.ln()
        }
    }
    fn impact(&self, idf: f64, tf: f64, l: f64) -> f64 {
        idf * tf_lucene(self.0.k1, tf, l)
    }
}

struct Lucene(ScorerConfig);
impl Scorer for Lucene {
    fn config(&self) -> &ScorerConfig {
        &self.0
    }
    fn idf(&self, df: u64, n: u64) -> f64 {
        (1.0 + (n as f64 - df as f64 + 0.5) / (df as f64 + 0.5)).ln()
    }
    fn impact(&self, idf: f64, tf: f64, l: f64) -> f64 {
        idf * tf_lucene(self.0.k1, tf, l)
    }
}

struct Bm25L(ScorerConfig);
impl Scorer for Bm25L {
    fn config(&self) -> &ScorerConfig {
        &self.0
    }
    fn idf(&self, df: u64, n: u64) -> f64 {
        ((n as f64 + 1.0) / (df as f64 + 0.5)).ln()
    }
    fn impact(&self, idf: f64, tf: f64, l: f64) -> f64 {
        idf * tf_bm25l(self.0.k1, self.0.delta, tf, l)
    }
    fn absent(&self, idf: f64) -> f64 {
        idf * tf_bm25l(self.0.k1, self.0.delta, 0.0, 1.0)
    }
}

struct Bm25Plus(ScorerConfig);
impl Scorer for Bm25Plus {
    fn config(&self) -> &ScorerConfig {
        &self.0
    }
    fn idf(&self, df: u64, n: u64) -> f64 {
        ((n as f64 + 1.0) / df as f64).ln()
    }
    fn impact(&self, idf: f64, tf: f64, l: f64) -> f64 {
        idf * (tf_classic(self.0.k1, tf, l) + self.0.delta)
    }
}

struct RankBm25Okapi(ScorerConfig);
impl Scorer for RankBm25Okapi {
    fn config(&self) -> &ScorerConfig {
        &self.0
    }
    fn idf(&self, df: u64, n: u64) -> f64 {
        (n as f64 - df as f64 + 0.5).ln() - (df as f64 + 0.5).ln()
    }
    fn idfs(&self, dfs: &mut dyn Iterator<Item = u64>, n: u64) -> Vec<f64> {
        let mut idfs: Vec<f64> = dfs.map(|df| self.idf(df, n)).collect();
        if idfs.is_empty() {
            return idfs;
        }
        // rank_bm25 sums in dictionary insertion order; the sum of the same numbers in
        // another order differs only in the last bits.
        let mean = idfs.iter().sum::<f64>() / idfs.len() as f64;
        let floor = self.0.epsilon * mean;
        for idf in &mut idfs {
            if *idf < 0.0 {
                *idf = floor;
            }
        }
        idfs
    }
    fn impact(&self, idf: f64, tf: f64, l: f64) -> f64 {
        idf * tf_classic(self.0.k1, tf, l)
    }
}

struct RankBm25Plus(ScorerConfig);
impl Scorer for RankBm25Plus {
    fn config(&self) -> &ScorerConfig {
        &self.0
    }
    fn idf(&self, df: u64, n: u64) -> f64 {
        ((n as f64 + 1.0) / df as f64).ln()
    }
    fn impact(&self, idf: f64, tf: f64, l: f64) -> f64 {
        idf * (self.0.delta + tf_classic(self.0.k1, tf, l))
    }
    fn absent(&self, idf: f64) -> f64 {
        idf * self.0.delta
    }
}

struct RankBm25L(ScorerConfig);
impl Scorer for RankBm25L {
    fn config(&self) -> &ScorerConfig {
        &self.0
    }
    fn idf(&self, df: u64, n: u64) -> f64 {
        (n as f64 + 1.0).ln() - (df as f64 + 0.5).ln()
    }
    fn impact(&self, idf: f64, tf: f64, l: f64) -> f64 {
        idf * tf * tf_bm25l(self.0.k1, self.0.delta, tf, l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_params() {
        let c: ScorerConfig = "bm25l,k1=1.2,b=0.5".parse().unwrap();
        assert_eq!(c.kind, ScorerKind::Bm25L);
        assert_eq!((c.k1, c.b, c.delta), (1.2, 0.5, 0.5));
        assert_eq!("bm25+".parse::<ScorerKind>().unwrap(), ScorerKind::Bm25Plus);
        assert!("bm26".parse::<ScorerKind>().is_err());
        assert!("lucene,b=2".parse::<ScorerConfig>().is_err());
        for k in ScorerKind::ALL {
            assert_eq!(k.name().parse::<ScorerKind>().unwrap(), k);
            let json = serde_json::to_string(&ScorerConfig::new(k)).unwrap();
            let back: ScorerConfig = serde_json::from_str(&json).unwrap();
            assert_eq!(back, ScorerConfig::new(k));
        }
    }

    #[test]
    fn robertson_idf_is_clamped() {
        let s = ScorerConfig::new(ScorerKind::Robertson).scorer();
        assert_eq!(s.idf(10, 10), 0.0);
        assert!(s.idf(1, 10) > 0.0);
    }
}
