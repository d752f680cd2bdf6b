//! Negatives per training query, written to a JSONL file (one line per query: id, hard
//! candidates best first, a pool of random passages) so that a run can be repeated and
//! resumed with exactly the same negatives.
//!
//! * BM25 (phase 1): the query's BM25 top-k over the corpus (an index built under the run
//!   folder), positives removed.
//! * Mined (phase 2): the current model's dense top-k, positives removed, and candidates
//!   scoring above `(1 - relative_margin) ×` the weakest positive's score dropped as likely
//!   unlabeled positives (the false-negative guard of sentence-transformers'
//!   `mine_hard_negatives`); optionally the first `skip_top` non-positives skipped too.
//! * Candidates: the query's top-k in a first-stage TREC run (e.g. a hybrid run, the
//!   candidates a reranker will see), positives removed, the first `skip_top` skipped.
//! * Random ("easy"): passages drawn uniformly, positives excluded.

use std::io::Write;
use std::path::Path;

use juris_index::{Index, IndexConfig, NoProgress, ScorerConfig};
use juris_ml::lora::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::config::PhaseConfig;
use crate::data::{Dataset, Split};
use crate::error::{io, Result, TrainError};

/// One query's negatives (passage ids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryNegatives {
    /// Query id.
    pub qid: String,
    /// Hard candidates, best-scoring first.
    pub hard: Vec<String>,
    /// Random passages.
    pub random: Vec<String>,
}

/// Random passages (not positives) for each query: `n` per query, seeded.
fn random_pool(ds: &Dataset, positives: &[usize], n: usize, rng: &mut SplitMix64) -> Vec<String> {
    let total = ds.doc_ids.len();
    let mut out = Vec::with_capacity(n);
    if total <= positives.len() {
        return out;
    }
    while out.len() < n {
        let j = rng.below(total);
        if positives.binary_search(&j).is_err() {
            out.push(ds.doc_ids[j].clone());
        }
    }
    out
}

/// Size of the stored random pool per query.
fn pool_size(random_per_batch: usize) -> usize {
    (random_per_batch * 8).max(8)
}

/// BM25 negatives: builds (or reuses) an index of the corpus at `index_dir`.
pub fn bm25_negatives(
    ds: &Dataset,
    split: &Split,
    top_k: usize,
    random_per_batch: usize,
    index_dir: &Path,
    seed: u64,
) -> Result<Vec<QueryNegatives>> {
    if !index_dir.join("juris-index.json").is_file() {
        let docs = juris_index::corpus::read_corpus(
            &ds.dir.join("corpus.jsonl"),
            &juris_index::corpus::CorpusOptions::default(),
        )?;
        let config = IndexConfig {
            analyzer: juris_text::AnalyzerSpec::default(),
            scorer: ScorerConfig::default(),
        };
        juris_index::build_index(docs, index_dir, &config, &NoProgress)?;
    }
    let index = Index::open(index_dir)?;
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(split.queries.len());
    for q in &split.queries {
        let hits = index.search(&q.text, top_k + q.positives.len())?;
        let mut hard = Vec::with_capacity(top_k);
        for h in hits {
            let id = index.doc_id(h.doc)?;
            let is_pos = ds
                .doc_pos
                .get(id)
                .is_some_and(|p| q.positives.binary_search(p).is_ok());
            if !is_pos && hard.len() < top_k {
                hard.push(id.to_string());
            }
        }
        let random = random_pool(ds, &q.positives, pool_size(random_per_batch), &mut rng);
        out.push(QueryNegatives {
            qid: q.id.clone(),
            hard,
            random,
        });
    }
    Ok(out)
}

/// Negatives from a first-stage run: the query's ranked hits, positives removed, the
/// phase's `skip_top` skipped, then `top_k` taken; hits naming a passage the corpus lacks
/// are an error (the run belongs to another corpus). A training query the run lacks gets
/// only random negatives.
pub fn candidate_negatives(
    ds: &Dataset,
    split: &Split,
    run: &juris_eval::Run,
    run_path: &Path,
    phase: &PhaseConfig,
    seed: u64,
) -> Result<Vec<QueryNegatives>> {
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(split.queries.len());
    for q in &split.queries {
        let mut hard = Vec::with_capacity(phase.top_k);
        let mut skipped = 0;
        for (doc, _) in run.ranked(&q.id) {
            let Some(&j) = ds.doc_pos.get(doc) else {
                return Err(TrainError::Data(format!(
                    "{}: query {} ranks passage '{doc}', which {} does not have; the run \
                     must come from an index of this corpus",
                    run_path.display(),
                    q.id,
                    ds.dir.join("corpus.jsonl").display()
                )));
            };
            if q.positives.binary_search(&j).is_ok() {
                continue;
            }
            if skipped < phase.skip_top {
                skipped += 1;
                continue;
            }
            if hard.len() == phase.top_k {
                break;
            }
            hard.push(doc.to_string());
        }
        let random = random_pool(
            ds,
            &q.positives,
            pool_size(phase.random_negatives),
            &mut rng,
        );
        out.push(QueryNegatives {
            qid: q.id.clone(),
            hard,
            random,
        });
    }
    Ok(out)
}

/// Dense negatives from `scores` (`split.queries.len()` rows of one score per passage):
/// the phase's `top_k` after its `skip_top`, minus positives, minus likely false negatives
/// (`relative_margin`), with `random_negatives` per batch in the random pool.
pub fn mined_negatives(
    ds: &Dataset,
    split: &Split,
    scores: &[f32],
    phase: &PhaseConfig,
    seed: u64,
) -> Vec<QueryNegatives> {
    let (top_k, skip) = (phase.top_k, phase.skip_top);
    let (relative_margin, random_per_batch) = (phase.relative_margin, phase.random_negatives);
    let n = ds.doc_ids.len();
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(split.queries.len());
    for (qi, q) in split.queries.iter().enumerate() {
        let row = &scores[qi * n..(qi + 1) * n];
        let weakest = q
            .positives
            .iter()
            .map(|&p| row[p])
            .fold(f32::INFINITY, f32::min);
        let ceiling = (1.0 - relative_margin) as f32 * weakest;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let hard = order
            .into_iter()
            .take(skip + top_k + q.positives.len())
            .filter(|j| q.positives.binary_search(j).is_err())
            .skip(skip)
            .filter(|&j| row[j] <= ceiling)
            .take(top_k)
            .map(|j| ds.doc_ids[j].clone())
            .collect();
        let random = random_pool(ds, &q.positives, pool_size(random_per_batch), &mut rng);
        out.push(QueryNegatives {
            qid: q.id.clone(),
            hard,
            random,
        });
    }
    out
}

/// Several sources' negatives for the same queries merged into one list per query: the
/// hard candidates taken round robin, best first, each passage once; the random pool is
/// the first source's. Every source must list the same queries in the same order (they
/// come from one split).
pub fn interleave(mut sources: Vec<Vec<QueryNegatives>>) -> Vec<QueryNegatives> {
    if sources.len() <= 1 {
        return sources.pop().unwrap_or_default();
    }
    let first = sources.remove(0);
    first
        .into_iter()
        .enumerate()
        .map(|(qi, mut merged)| {
            let lists: Vec<&[String]> = std::iter::once(merged.hard.as_slice())
                .chain(sources.iter().map(|s| s[qi].hard.as_slice()))
                .collect();
            debug_assert!(sources.iter().all(|s| s[qi].qid == merged.qid));
            let longest = lists.iter().map(|l| l.len()).max().unwrap_or(0);
            let mut seen = std::collections::HashSet::new();
            let mut hard = Vec::new();
            for rank in 0..longest {
                for list in &lists {
                    if let Some(id) = list.get(rank) {
                        if seen.insert(id.as_str()) {
                            hard.push(id.clone());
                        }
                    }
                }
            }
            merged.hard = hard;
            merged
        })
        .collect()
}

/// Writes `negs` as JSONL through a temporary file renamed into place.
pub fn write_jsonl(path: &Path, negs: &[QueryNegatives]) -> Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut w = std::io::BufWriter::new(f);
        for n in negs {
            let line = serde_json::to_string(n).map_err(|e| TrainError::Data(e.to_string()))?;
            writeln!(w, "{line}").map_err(io(&tmp))?;
        }
        w.flush().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Reads a negatives file, checking each line.
pub fn read_jsonl(path: &Path) -> Result<Vec<QueryNegatives>> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(line).map_err(|e| {
            TrainError::Data(format!(
                "{}:{}: not a negatives record ({e}); delete the file to mine again",
                path.display(),
                i + 1
            ))
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SplitQuery;
    use std::collections::HashMap;

    /// Six passages; query 0's positive is d0; the model scores d0 > d5 > d4 > d3 > d2 > d1.
    fn setup() -> (Dataset, Split, Vec<f32>) {
        let ids: Vec<String> = (0..6).map(|i| format!("d{i}")).collect();
        let ds = Dataset {
            dir: "unused".into(),
            doc_pos: ids
                .iter()
                .enumerate()
                .map(|(i, d)| (d.clone(), i))
                .collect(),
            doc_texts: ids.clone(),
            doc_ids: ids,
            queries: HashMap::new(),
        };
        let split = Split {
            queries: vec![SplitQuery {
                id: "q0".into(),
                text: "q".into(),
                positives: vec![0],
            }],
            qrels: Default::default(),
        };
        (ds, split, vec![0.95, 0.1, 0.2, 0.3, 0.4, 0.9])
    }

    fn phase(extra: &str) -> PhaseConfig {
        toml::from_str(&format!(
            "name = \"p2\"\nnegatives = \"mined\"\ntop_k = 2\nrandom_negatives = 1\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn mined_negatives_follow_the_scores_the_guard_and_the_skip() {
        let (ds, split, scores) = setup();
        let hard = |extra: &str| {
            mined_negatives(&ds, &split, &scores, &phase(extra), 1)[0]
                .hard
                .clone()
        };
        // The two best non-positives (d5 at 0.9 is under 0.95 × 0.95).
        assert_eq!(hard("relative_margin = 0.05"), ["d5", "d4"]);
        // A wider guard (0.9 > 0.95 × 0.9) drops d5 from the top 2; it is not replaced.
        assert_eq!(hard("relative_margin = 0.1"), ["d4"]);
        // skip_top passes over the best-scoring non-positives first.
        assert_eq!(hard("relative_margin = 0.05\nskip_top = 1"), ["d4", "d3"]);
        assert_eq!(hard("relative_margin = 0.05\nskip_top = 2"), ["d3", "d2"]);
        assert_eq!(
            hard("relative_margin = 0.05\nskip_top = 5"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn interleaved_sources_alternate_best_first_without_repeats() {
        let q = |hard: &[&str], random: &[&str]| QueryNegatives {
            qid: "q0".into(),
            hard: hard.iter().map(|s| s.to_string()).collect(),
            random: random.iter().map(|s| s.to_string()).collect(),
        };
        let mined = vec![q(&["d5", "d4", "d3"], &["d1"])];
        let bm25 = vec![q(&["d4", "d2"], &["d2"])];
        let merged = interleave(vec![mined.clone(), bm25]);
        // Rank 0: d5 (mined), d4 (bm25); rank 1: d4 again (dropped), d2; rank 2: d3.
        assert_eq!(merged[0].hard, ["d5", "d4", "d2", "d3"]);
        // The random pool is the first source's.
        assert_eq!(merged[0].random, ["d1"]);
        // One source is left as it is.
        assert_eq!(interleave(vec![mined.clone()]), mined);
    }

    #[test]
    fn candidate_negatives_follow_the_run_without_positives() {
        let (ds, split, _) = setup();
        let mut run = juris_eval::Run::new("t");
        for (d, s) in [
            ("d3", 5.0),
            ("d0", 4.0),
            ("d1", 3.0),
            ("d5", 2.0),
            ("d2", 1.0),
        ] {
            run.push("q0", d, s).unwrap();
        }
        let path = Path::new("first.trec");
        let phase = |extra: &str| -> PhaseConfig {
            toml::from_str(&format!(
                "name = \"p\"\nnegatives = \"candidates\"\ntop_k = 2\n{extra}"
            ))
            .unwrap()
        };
        let hard = |extra: &str| {
            candidate_negatives(&ds, &split, &run, path, &phase(extra), 1).unwrap()[0]
                .hard
                .clone()
        };
        // Run order, the positive d0 left out, top_k 2.
        assert_eq!(hard(""), ["d3", "d1"]);
        assert_eq!(hard("skip_top = 1"), ["d1", "d5"]);
        assert_eq!(hard("skip_top = 3"), ["d2"]);
        // The random pool never holds the positive.
        let negs = candidate_negatives(&ds, &split, &run, path, &phase(""), 1).unwrap();
        assert!(!negs[0].random.is_empty() && !negs[0].random.contains(&"d0".to_string()));
        // A passage the corpus lacks: the error names the run, the query and the passage.
        run.push("q0", "gone", 0.5).unwrap();
        let e = candidate_negatives(&ds, &split, &run, path, &phase("skip_top = 9"), 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("first.trec") && e.contains("q0") && e.contains("'gone'"),
            "{e}"
        );
    }
}
