//! Retrieval metrics with trec_eval semantics, and per-run evaluation.
//!
//! Every metric works on a query's ranking in [`trec_eval_order`](crate::trec_eval_order) (score
//! descending, ties broken by document id descending; rank column ignored) and
//! its qrels, where a grade `> 0` means relevant. With `R` = number of relevant
//! documents of the query, `rel_i` = grade of the document at rank `i` (0 when
//! unjudged), `n` = number of retrieved documents and `k` the cutoff:
//!
//! | metric | trec_eval | definition |
//! |---|---|---|
//! | `mrr@k` | `recip_rank` on the top `k` | `1 / rank` of the first relevant doc within rank `k`, else 0 |
//! | `ndcg@k` | `ndcg_cut_k` | `DCG@k / IDCG@k`, gain = grade (linear, negative grades count 0), discount `log2(rank + 1)`; ideal ranking from the qrels |
//! | `recall@k` | `recall_k` | relevant in top `k` / `R` |
//! | `p@k` | `P_k` | relevant in top `k` / `k` (divides by `k` even when `n < k`) |
//! | `map` | `map` | sum of precision at the rank of each retrieved relevant doc / `R` |
//! | `map@k` | `map_cut_k` | as `map`, counting only ranks `<= k`, still divided by `R` |
//! | `f2@k` | (COLIEE) | per query `P = rel in top k / min(k, n)`, `Rc = rel in top k / R`, `F2 = 5·P·Rc / (4·P + Rc)` (0 when both are 0) |
//! | `r-precision` | `Rprec` | relevant in top `R` / `R` |
//!
//! Without a cutoff, `mrr`, `ndcg` and `recall` use the whole ranking.
//! All metrics are averaged over queries (macro average; F2 too).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::report::Report;
use crate::{EvalError, Qrels, Run};

/// One retrieval metric, optionally with a rank cutoff `k >= 1`.
///
/// Parse with [`Metric::parse`] (`mrr@10`, `ndcg@10`, `recall@100`, `p@5`,
/// `map`, `map@100`, `f2@5`, `r-precision`; trec_eval names such as
/// `ndcg_cut_10`, `P_5`, `recall_100`, `map_cut_10`, `recip_rank`, `Rprec` are
/// accepted too) and print with `Display`, which gives the canonical form back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Reciprocal rank of the first relevant document within the cutoff.
    Mrr(Option<usize>),
    /// Normalised discounted cumulative gain (trec_eval `ndcg_cut`).
    Ndcg(Option<usize>),
    /// Fraction of the relevant documents retrieved within the cutoff.
    Recall(Option<usize>),
    /// Precision at `k` (always divided by `k`).
    Precision(usize),
    /// Mean average precision (`map_cut_k` with a cutoff).
    Map(Option<usize>),
    /// COLIEE-style F2 on the top `k`.
    F2(usize),
    /// Precision at rank `R`, the number of relevant documents.
    RPrecision,
}

impl Metric {
    /// The default set: `mrr@10`, `ndcg@10`, `recall@10`, `recall@100`.
    pub fn defaults() -> Vec<Metric> {
        vec![
            Metric::Mrr(Some(10)),
            Metric::Ndcg(Some(10)),
            Metric::Recall(Some(10)),
            Metric::Recall(Some(100)),
        ]
    }

    /// Parses a metric name, case-insensitively (see the type's docs for forms).
    pub fn parse(spec: &str) -> Result<Metric, EvalError> {
        let err = |reason: String| EvalError::UnknownMetric {
            spec: spec.to_string(),
            reason,
        };
        let s = spec.trim().to_ascii_lowercase();
        if s.is_empty() {
            return Err(err("empty metric name".to_string()));
        }
        // trec_eval spellings first: name_k / name.k
        for (prefix, ctor) in [
            ("ndcg_cut", Metric::Ndcg as fn(Option<usize>) -> Metric),
            ("map_cut", Metric::Map),
            ("recall", Metric::Recall),
        ] {
            for sep in ['_', '.'] {
                if let Some(k) = s.strip_prefix(prefix).and_then(|r| r.strip_prefix(sep)) {
                    return Ok(ctor(Some(parse_k(k).map_err(err)?)));
                }
            }
        }
        for sep in ['_', '.'] {
            if let Some(k) = s.strip_prefix('p').and_then(|r| r.strip_prefix(sep)) {
                return Ok(Metric::Precision(parse_k(k).map_err(err)?));
            }
        }
        let (name, k) = match s.split_once('@') {
            Some((n, k)) => (n.trim(), Some(parse_k(k.trim()).map_err(err)?)),
            None => (s.as_str(), None),
        };
        let need_k = |m: &str| err(format!("{m} needs a cutoff, e.g. {m}@10"));
        let no_k = |m: &str| err(format!("{m} takes no cutoff"));
        match name {
            "mrr" | "rr" | "recip_rank" => Ok(Metric::Mrr(k)),
            "ndcg" => Ok(Metric::Ndcg(k)),
            "recall" | "r" => Ok(Metric::Recall(k)),
            "p" | "precision" | "prec" => k.map(Metric::Precision).ok_or_else(|| need_k("p")),
            "map" | "ap" => Ok(Metric::Map(k)),
            "f2" => k.map(Metric::F2).ok_or_else(|| need_k("f2")),
            "r-precision" | "r_precision" | "rprecision" | "rprec" => match k {
                None => Ok(Metric::RPrecision),
                Some(_) => Err(no_k("r-precision")),
            },
            _ => Err(err("not a known metric name".to_string())),
        }
    }

    /// The cutoff `k`, if any.
    pub fn cutoff(&self) -> Option<usize> {
        match *self {
            Metric::Mrr(k) | Metric::Ndcg(k) | Metric::Recall(k) | Metric::Map(k) => k,
            Metric::Precision(k) | Metric::F2(k) => Some(k),
            Metric::RPrecision => None,
        }
    }

    /// The equivalent trec_eval / pytrec_eval measure name, where one exists.
    ///
    /// `mrr@k` maps to `recip_rank` evaluated on the run cut to its top `k`;
    /// `recall` without cutoff has no direct trec_eval measure (`None`), nor has `f2@k`.
    pub fn trec_eval_name(&self) -> Option<String> {
        match *self {
            Metric::Mrr(_) => Some("recip_rank".to_string()),
            Metric::Ndcg(None) => Some("ndcg".to_string()),
            Metric::Ndcg(Some(k)) => Some(format!("ndcg_cut_{k}")),
            Metric::Recall(Some(k)) => Some(format!("recall_{k}")),
            Metric::Recall(None) => None,
            Metric::Precision(k) => Some(format!("P_{k}")),
            Metric::Map(None) => Some("map".to_string()),
            Metric::Map(Some(k)) => Some(format!("map_cut_{k}")),
            Metric::F2(_) => None,
            Metric::RPrecision => Some("Rprec".to_string()),
        }
    }

    /// The metric's value for one query.
    ///
    /// `ranked_relevance` holds the qrels grade of each retrieved document in
    /// ranking order (0 for unjudged documents); `judged` holds the grades of
    /// all the query's judged documents (order irrelevant). A query without a
    /// relevant judgment scores 0 on every metric.
    pub fn compute(&self, ranked_relevance: &[i32], judged: &[i32]) -> f64 {
        let ideal = IdealGains::new(judged.iter().copied());
        self.value(ranked_relevance, &ideal)
    }

    fn value(&self, rels: &[i32], ideal: &IdealGains) -> f64 {
        let num_rel = ideal.num_rel;
        if num_rel == 0 {
            return 0.0;
        }
        let top = |k: Option<usize>| &rels[..k.unwrap_or(usize::MAX).min(rels.len())];
        let count_rel = |s: &[i32]| s.iter().filter(|&&r| r > 0).count() as f64;
        match *self {
            Metric::Mrr(k) => top(k)
                .iter()
                .position(|&r| r > 0)
                .map_or(0.0, |i| 1.0 / (i + 1) as f64),
            Metric::Ndcg(k) => {
                let dcg: f64 = top(k)
                    .iter()
                    .enumerate()
                    .filter(|(_, &r)| r > 0)
                    .map(|(i, &r)| f64::from(r) / ((i + 2) as f64).log2())
                    .fold(0.0, |acc, x| acc + x);
                let n_ideal = k.unwrap_or(usize::MAX).min(ideal.gains.len());
                let idcg: f64 = ideal.gains[..n_ideal]
                    .iter()
                    .enumerate()
                    .map(|(i, &g)| f64::from(g) / ((i + 2) as f64).log2())
                    .fold(0.0, |acc, x| acc + x);
                if idcg > 0.0 {
                    dcg / idcg
                } else {
                    0.0
                }
            }
            Metric::Recall(k) => count_rel(top(k)) / num_rel as f64,
            Metric::Precision(k) => count_rel(top(Some(k))) / k as f64,
            Metric::Map(k) => {
                let mut found = 0usize;
                let mut sum = 0.0;
                for (i, &r) in top(k).iter().enumerate() {
                    if r > 0 {
                        found += 1;
                        sum += found as f64 / (i + 1) as f64;
                    }
                }
                sum / num_rel as f64
            }
            Metric::F2(k) => {
                let top_k = top(Some(k));
                let retrieved = top_k.len();
                let hits = count_rel(top_k);
                let p = if retrieved == 0 {
                    0.0
                } else {
                    hits / retrieved as f64
                };
                let r = hits / num_rel as f64;
                if 4.0 * p + r > 0.0 {
                    5.0 * p * r / (4.0 * p + r)
                } else {
                    0.0
                }
            }
            Metric::RPrecision => count_rel(top(Some(num_rel))) / num_rel as f64,
        }
    }
}

/// Positive grades of a query's judgments, sorted descending (the ideal ranking).
struct IdealGains {
    gains: Vec<i32>,
    num_rel: usize,
}

impl IdealGains {
    fn new(judged: impl Iterator<Item = i32>) -> Self {
        let mut gains: Vec<i32> = judged.filter(|&r| r > 0).collect();
        gains.sort_unstable_by(|a, b| b.cmp(a));
        let num_rel = gains.len();
        IdealGains { gains, num_rel }
    }
}

fn parse_k(k: &str) -> Result<usize, String> {
    match k.parse::<usize>() {
        Ok(0) => Err("the cutoff must be at least 1".to_string()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("cutoff {k:?} is not a positive integer")),
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_k = |f: &mut fmt::Formatter<'_>, name: &str, k: Option<usize>| match k {
            Some(k) => write!(f, "{name}@{k}"),
            None => f.write_str(name),
        };
        match *self {
            Metric::Mrr(k) => with_k(f, "mrr", k),
            Metric::Ndcg(k) => with_k(f, "ndcg", k),
            Metric::Recall(k) => with_k(f, "recall", k),
            Metric::Precision(k) => write!(f, "p@{k}"),
            Metric::Map(k) => with_k(f, "map", k),
            Metric::F2(k) => write!(f, "f2@{k}"),
            Metric::RPrecision => f.write_str("r-precision"),
        }
    }
}

impl FromStr for Metric {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::parse(s)
    }
}

impl Serialize for Metric {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Metric {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Metric::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What to do with a query that has relevant qrels but no document in the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingPolicy {
    /// Score it 0 on every metric and include it in the means (the default:
    /// a system that returns nothing for a query is not excused).
    #[default]
    Zero,
    /// Leave it out, evaluating only queries present in both run and qrels
    /// (what pytrec_eval / trec_eval without `-c` do).
    Skip,
}

impl fmt::Display for MissingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MissingPolicy::Zero => "zero",
            MissingPolicy::Skip => "skip",
        })
    }
}

/// Evaluates a run against qrels on the given metrics.
///
/// The queries considered are those with at least one relevant (grade `> 0`)
/// judgment. Of those, a query absent from the run is counted in
/// [`Report::n_missing`] and scored 0 ([`MissingPolicy::Zero`]) or left out
/// ([`MissingPolicy::Skip`]). Run queries without a relevant judgment are
/// ignored and counted in [`Report::n_run_only`]. Means are plain averages
/// over the evaluated queries (0 when there are none).
pub fn evaluate(run: &Run, qrels: &Qrels, metrics: &[Metric], missing: MissingPolicy) -> Report {
    let mut per_query: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut n_missing = 0usize;
    let mut rels: Vec<i32> = Vec::new();
    for (qid, judged) in qrels.iter() {
        let ideal = IdealGains::new(judged.values().copied());
        if ideal.num_rel == 0 {
            continue;
        }
        if !run.contains_query(qid) {
            n_missing += 1;
            if missing == MissingPolicy::Zero {
                per_query.insert(qid.to_string(), vec![0.0; metrics.len()]);
            }
            continue;
        }
        rels.clear();
        rels.extend(
            run.ranked(qid)
                .iter()
                .map(|(d, _)| judged.get(*d).copied().unwrap_or(0)),
        );
        let values = metrics.iter().map(|m| m.value(&rels, &ideal)).collect();
        per_query.insert(qid.to_string(), values);
    }
    let n_run_only = run
        .query_ids()
        .filter(|q| qrels.num_relevant(q) == 0)
        .count();
    let n = per_query.len();
    let means = (0..metrics.len())
        .map(|j| {
            if n == 0 {
                0.0
            } else {
                per_query.values().map(|v| v[j]).fold(0.0, |acc, x| acc + x) / n as f64
            }
        })
        .collect();
    Report {
        run_tag: run.tag().to_string(),
        metrics: metrics.to_vec(),
        per_query,
        means,
        n_queries: n,
        n_missing,
        n_run_only,
        missing_policy: missing,
    }
}
