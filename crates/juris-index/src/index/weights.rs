//! Computing per-posting impacts and per-term bounds for a scorer (at build time, and in
//! memory when a search overrides the index's scorer).

use crate::scoring::{length_norm, ScorerConfig};
use rayon::prelude::*;

/// Impacts of every posting and `(absent, max impact)` of every term.
pub(crate) struct Weights {
    /// `impact − absent` per posting.
    pub imp: Vec<f32>,
    /// Per term: `absent`, max of `imp` (0 for a term without postings).
    pub term_w: Vec<f32>,
}

/// Why the inputs could not be weighted (a corrupt index).
pub(crate) enum WeightError {
    /// A posting names a document beyond `doc_len`.
    DocOutOfRange { posting: usize, doc: u32 },
    /// An offsets table is inconsistent with the postings.
    Offsets,
}

/// Computes weights for `cfg` from the postings columns. `post_off` has `T+1` entries.
pub(crate) fn compute(
    cfg: &ScorerConfig,
    post_off: &[u64],
    post_doc: &[u32],
    post_tf: &[u32],
    doc_len: &[u32],
    total_terms: u64,
) -> Result<Weights, WeightError> {
    let scorer = cfg.scorer();
    let n_docs = doc_len.len() as u64;
    let avgdl = if n_docs > 0 {
        total_terms as f64 / n_docs as f64
    } else {
        0.0
    };
    let n_terms = post_off.len().saturating_sub(1);
    let n_post = post_doc.len();
    if post_tf.len() != n_post || post_off.last().copied().unwrap_or(0) != n_post as u64 {
        return Err(WeightError::Offsets);
    }
    let mut dfs = post_off.windows(2).map(|w| w[1].saturating_sub(w[0]));
    let idfs = scorer.idfs(&mut dfs, n_docs);
    // Length norms per document, computed once.
    let norms: Vec<f64> = doc_len
        .par_iter()
        .map(|&dl| length_norm(cfg.b, f64::from(dl), avgdl))
        .collect();

    // Split the postings into groups of whole terms of about 64k postings for the pool.
    let mut groups: Vec<(usize, usize)> = Vec::new(); // term ranges
    let mut start = 0usize;
    for t in 0..n_terms {
        let end_post = post_off[t + 1];
        let begin_post = post_off[start];
        if end_post < post_off[t] {
            return Err(WeightError::Offsets);
        }
        if end_post - begin_post >= 1 << 16 || t + 1 == n_terms {
            groups.push((start, t + 1));
            start = t + 1;
        }
    }
    let mut imp = vec![0f32; n_post];
    let mut slices: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(groups.len());
    let mut rest: &mut [f32] = &mut imp;
    let mut consumed = 0u64;
    for &(a, b) in &groups {
        let len = (post_off[b] - post_off[a]) as usize;
        if post_off[a] != consumed || len > rest.len() {
            return Err(WeightError::Offsets);
        }
        let (head, tail) = rest.split_at_mut(len);
        slices.push((a, b, head));
        rest = tail;
        consumed += len as u64;
    }
    let per_group: Vec<Result<Vec<(f32, f32)>, WeightError>> = slices
        .into_par_iter()
        .map(|(a, b, out)| {
            let mut tw = Vec::with_capacity(b - a);
            let base = post_off[a] as usize;
            for t in a..b {
                let idf = idfs[t];
                let absent = scorer.absent(idf);
                let absent32 = absent as f32;
                let (p0, p1) = (post_off[t] as usize, post_off[t + 1] as usize);
                let mut max = f32::NEG_INFINITY;
                for p in p0..p1 {
                    let doc = post_doc[p];
                    let l = *norms
                        .get(doc as usize)
                        .ok_or(WeightError::DocOutOfRange { posting: p, doc })?;
                    let v = (scorer.impact(idf, f64::from(post_tf[p]), l) - absent) as f32;
                    out[p - base] = v;
                    max = max.max(v);
                }
                if p0 == p1 {
                    max = 0.0;
                }
                tw.push((absent32, max));
            }
            Ok(tw)
        })
        .collect();
    let mut term_w = Vec::with_capacity(2 * n_terms);
    for g in per_group {
        for (a, m) in g? {
            term_w.push(a);
            term_w.push(m);
        }
    }
    Ok(Weights { imp, term_w })
}
