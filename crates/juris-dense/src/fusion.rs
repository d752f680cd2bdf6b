//! Hybrid ranking: fusing a lexical (BM25) and a dense ranked list per query.
//!
//! Two methods, both matching [ranx](https://github.com/AmenRa/ranx) `fuse` (tested against
//! fixtures it produced, `tests/fixtures/fusion_reference.json`):
//!
//! * [`weighted_sum`]: each list's scores are normalized per query ([`Norm::MinMax`] or
//!   [`Norm::ZScore`]), then `fused = α · lexical + (1 − α) · dense` — the seed paper's α
//!   weighting of BM25+ and the dense retriever.
//! * [`reciprocal_rank`]: `Σ 1 / (k + rank)` over the lists a document appears in (rank
//!   from 1; `k` = 60 by default, [`RRF_K`]).
//!
//! **Documents missing from one list.** ranx gives them 0 *after* normalization, and so does
//! [`Missing::Zero`], the default. Under min-max that is the list's minimum, the natural
//! choice. Under z-score 0 is the list's *mean*, which rewards a document for being absent
//! from a list (it then beats every retrieved document below the mean); [`Missing::Min`]
//! gives it the list's normalized minimum instead, which we think is more sensible, but it
//! is not what ranx does, so it is opt-in.
//!
//! Details that follow ranx: min-max divides by `max(max − min, 1e-9)`; z-score uses the
//! population standard deviation and divides by `max(σ, 1e-9)`; ranks for RRF come from
//! sorting each list by score, best first (ties keep input order). A document listed twice
//! in one list counts once, at its first position. Output is sorted by fused score, best
//! first, ties by ascending key.

use std::collections::HashMap;
use std::hash::Hash;

/// Default `k` of reciprocal-rank fusion (Cormack et al., 2009).
pub const RRF_K: f64 = 60.0;

/// Per-query score normalization before a weighted sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    /// `(s − min) / (max − min)`: scores in [0, 1]; ranx `"min-max"`.
    MinMax,
    /// `(s − mean) / σ`: zero mean, unit variance; ranx `"zmuv"`.
    ZScore,
}

/// The score a document gets from a list it is missing from (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missing {
    /// 0 after normalization, as ranx does (the minimum under min-max, the mean under z-score).
    #[default]
    Zero,
    /// The smallest normalized score of that list (0 for an empty list).
    Min,
}

/// Deduplicates a list (first occurrence wins) and sorts it by score, best first, stably.
fn ranked<K: Clone + Eq + Hash>(list: &[(K, f64)]) -> Vec<(K, f64)> {
    let mut seen = std::collections::HashSet::with_capacity(list.len());
    let mut v: Vec<(K, f64)> = list
        .iter()
        .filter(|(k, _)| seen.insert(k.clone()))
        .cloned()
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// Normalizes scores in place as ranx does.
fn normalize(scores: &mut [f64], norm: Norm) {
    if scores.is_empty() {
        return;
    }
    match norm {
        Norm::MinMax => {
            let min = scores.iter().copied().fold(f64::INFINITY, f64::min);
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let den = (max - min).max(1e-9);
            scores.iter_mut().for_each(|s| *s = (*s - min) / den);
        }
        Norm::ZScore => {
            let n = scores.len() as f64;
            let mean = scores.iter().sum::<f64>() / n;
            let var = scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / n;
            let den = var.sqrt().max(1e-9);
            scores.iter_mut().for_each(|s| *s = (*s - mean) / den);
        }
    }
}

fn sorted_output<K: Ord>(acc: HashMap<K, f64>) -> Vec<(K, f64)> {
    let mut out: Vec<(K, f64)> = acc.into_iter().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// Weighted sum of normalized scores: `alpha · lexical + (1 − alpha) · dense` for every
/// document in either list. `alpha` = 1 is lexical only, 0 dense only. Keys are anything
/// comparable: document ids (`String`, `&str`) or row numbers.
pub fn weighted_sum<K: Clone + Eq + Hash + Ord>(
    lexical: &[(K, f64)],
    dense: &[(K, f64)],
    alpha: f64,
    norm: Norm,
    missing: Missing,
) -> Vec<(K, f64)> {
    let mut acc: HashMap<K, f64> = HashMap::with_capacity(lexical.len() + dense.len());
    let lists = [(ranked(lexical), alpha), (ranked(dense), 1.0 - alpha)];
    let mut normalized = Vec::with_capacity(2);
    for (list, w) in &lists {
        let mut scores: Vec<f64> = list.iter().map(|(_, s)| *s).collect();
        normalize(&mut scores, norm);
        let floor = match missing {
            Missing::Zero => 0.0,
            // An empty list has no minimum; every document then gets 0 from it.
            Missing::Min if scores.is_empty() => 0.0,
            Missing::Min => scores.iter().copied().fold(f64::INFINITY, f64::min),
        };
        for (k, _) in list {
            acc.entry(k.clone()).or_insert(0.0);
        }
        normalized.push((scores, *w, floor));
    }
    // Every document starts from the missing-score floor of each list, then a list it is in
    // replaces its floor by the real normalized score.
    let floor_total: f64 = normalized.iter().map(|(_, w, f)| w * f).sum();
    acc.values_mut().for_each(|v| *v = floor_total);
    for ((list, _), (scores, w, floor)) in lists.iter().zip(&normalized) {
        for ((k, _), s) in list.iter().zip(scores) {
            *acc.get_mut(k).expect("inserted above") += w * (s - floor);
        }
    }
    sorted_output(acc)
}

/// Reciprocal-rank fusion of any number of lists: `Σ 1 / (k + rank)`, rank from 1 after
/// sorting each list by score. Use [`RRF_K`] for `k` unless tuned.
pub fn reciprocal_rank<K: Clone + Eq + Hash + Ord>(lists: &[&[(K, f64)]], k: f64) -> Vec<(K, f64)> {
    let mut acc: HashMap<K, f64> = HashMap::new();
    for list in lists {
        for (rank, (key, _)) in ranked(list).into_iter().enumerate() {
            *acc.entry(key).or_insert(0.0) += 1.0 / (k + rank as f64 + 1.0);
        }
    }
    sorted_output(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_one_is_lexical_order() {
        let lex = [("a", 3.0), ("b", 2.0), ("c", 1.0)];
        let den = [("c", 0.9), ("b", 0.8)];
        let f = weighted_sum(&lex, &den, 1.0, Norm::MinMax, Missing::Zero);
        let keys: Vec<&str> = f.iter().map(|x| x.0).collect();
        assert_eq!(keys, ["a", "b", "c"]);
    }

    #[test]
    fn missing_min_under_zscore_does_not_reward_absence() {
        let lex = [("a", 3.0), ("b", 2.0), ("c", 1.0)];
        let den = [("a", 0.9), ("b", 0.5), ("c", 0.1), ("d", 0.0)];
        let f = weighted_sum(&lex, &den, 0.5, Norm::ZScore, Missing::Min);
        assert_eq!(f.last().unwrap().0, "d");
        let score_c = f.iter().find(|x| x.0 == "c").unwrap().1;
        let score_d = f.iter().find(|x| x.0 == "d").unwrap().1;
        assert!(score_d < score_c);
    }

    #[test]
    fn rrf_ties_break_by_key() {
        let a = [("x", 2.0), ("y", 1.0)];
        let b = [("y", 2.0), ("x", 1.0)];
        let f = reciprocal_rank(&[&a[..], &b[..]], RRF_K);
        assert_eq!(f[0].0, "x");
        assert!((f[0].1 - f[1].1).abs() < 1e-15);
    }
}
