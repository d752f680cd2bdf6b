//! `juris tune`: choose BM25's scorer, k1 and b, and the hybrid fusion (method and α), by a
//! metric on a chosen split, and store the choice in `<index>/tuned.json`, which `search`
//! then uses as its defaults.
//!
//! Search is done once per BM25 setting and once for the dense side, `depth` deep; every
//! fusion setting is then scored on those lists in memory, so the grid costs little more
//! than the BM25 runs themselves.

use crate::progress::Bar;
use crate::retrieve::{Bm25Retriever, DenseRetriever, FusionChoice, QueryText, Ranked, Retriever};
use anyhow::{bail, Context, Result};
use juris_eval::{evaluate, Metric, MissingPolicy, Qrels, Run};
use juris_index::corpus::Query;
use juris_index::{Index, ScorerConfig, ScorerKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File name of the tuned settings inside an index folder.
pub const TUNED_FILE: &str = "tuned.json";

/// BM25 grid: scorers (the parity-tested ones) × k1 × b.
const GRID_SCORERS: &[&str] = &["lucene", "robertson", "bm25l", "bm25plus", "rank-bm25-plus"];
const GRID_K1: &[f64] = &[0.6, 0.9, 1.2, 1.5, 2.0];
const GRID_B: &[f64] = &[0.3, 0.5, 0.75, 0.9];
/// How many of the best BM25 settings are tried again inside the hybrid.
const HYBRID_BM25_CANDIDATES: usize = 5;

/// What `tune` chose, as stored in `tuned.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tuned {
    /// Metric maximized, e.g. `ndcg@10`.
    pub metric: String,
    /// Queries and qrels the choice was made on.
    pub queries: String,
    /// Judgments file.
    pub qrels: String,
    /// Number of judged queries scored.
    pub num_queries: usize,
    /// Best lexical setting.
    pub bm25: TunedBm25,
    /// Best hybrid setting, when the index has embeddings.
    pub hybrid: Option<TunedHybrid>,
}

/// The chosen BM25 scorer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunedBm25 {
    /// Scorer config (kind, k1, b, δ).
    pub scorer: ScorerConfig,
    /// Metric value of BM25 alone on the tuning split.
    pub score: f64,
}

/// The chosen fusion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunedHybrid {
    /// Embedding store (name under `embeddings/`).
    pub store: String,
    /// BM25 setting used inside the hybrid (may differ from the best alone).
    pub scorer: ScorerConfig,
    /// Fusion method and weight.
    pub fusion: FusionChoice,
    /// Candidates per side.
    pub depth: usize,
    /// Metric value of the hybrid on the tuning split.
    pub score: f64,
    /// Metric value of dense retrieval alone on the tuning split.
    pub dense_score: f64,
}

/// Reads `<index>/tuned.json` if present.
pub fn load_tuned(index: &Path) -> Result<Option<Tuned>> {
    let path = index.join(TUNED_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let tuned = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a tuned-settings file; delete it or re-run `juris tune`",
            path.display()
        )
    })?;
    Ok(Some(tuned))
}

/// Arguments of one tuning run.
pub struct TuneRequest<'a> {
    /// Index folder.
    pub index: &'a Path,
    /// Queries file.
    pub queries: &'a Path,
    /// Judgments of the split to tune on.
    pub qrels: &'a Path,
    /// Embedding store / model for the hybrid; `None`: the only store, if any.
    pub model: Option<&'a str>,
    /// Metric to maximize.
    pub metric: Metric,
    /// Candidates per side in the hybrid.
    pub depth: usize,
    /// Device for encoding queries.
    pub device: juris_ml::DeviceChoice,
}

/// Runs the grid, prints a summary, writes `tuned.json` atomically and returns the choice.
pub fn tune(req: &TuneRequest<'_>, bar: &Bar) -> Result<Tuned> {
    let index = Index::open(req.index)?;
    let qrels = Qrels::read(req.qrels)?;
    let all = juris_index::corpus::read_queries(req.queries)?;
    let judged: std::collections::HashSet<&str> = qrels.query_ids().collect();
    let queries: Vec<&Query> = all
        .iter()
        .filter(|q| judged.contains(q.id.as_str()))
        .collect();
    if queries.is_empty() {
        bail!(
            "{} shares no query id with {}: nothing to tune on",
            req.queries.display(),
            req.qrels.display()
        );
    }
    let texts: Vec<QueryText> = queries
        .iter()
        .map(|q| QueryText {
            text: q.text.clone(),
            lang: q
                .lang
                .as_deref()
                .and_then(|c| juris_text::Lang::parse(c).ok()),
        })
        .collect();
    let ids: Vec<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    let depth = req.depth.max(10);

    // 1. BM25 grid.
    let quiet = Bar::new(true);
    let mut bm25: Vec<(f64, ScorerConfig, Vec<Ranked>)> = Vec::new();
    use juris_index::Progress;
    let grid: Vec<ScorerConfig> = GRID_SCORERS
        .iter()
        .flat_map(|s| {
            GRID_K1
                .iter()
                .flat_map(move |&k1| GRID_B.iter().map(move |&b| (*s, k1, b)))
        })
        .map(|(s, k1, b)| -> Result<ScorerConfig> {
            let mut cfg = ScorerConfig::new(ScorerKind::parse(s)?);
            cfg.k1 = k1;
            cfg.b = b;
            Ok(cfg)
        })
        .collect::<Result<_>>()?;
    bar.start("bm25 grid", Some(grid.len() as u64));
    for cfg in grid {
        let scored = index.with_scorer(cfg)?;
        let lists = Bm25Retriever { index: &scored }.retrieve_batch(&texts, depth, &quiet)?;
        let score = metric_of(&index, &ids, &lists, &qrels, req.metric)?;
        bm25.push((score, cfg, lists));
        bar.inc(1);
    }
    bar.finish();
    bm25.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (best_score, best_cfg, _) = &bm25[0];
    eprintln!(
        "bm25: best {} = {:.4} with {} k1={} b={} (of {} settings, {} queries)",
        req.metric,
        best_score,
        best_cfg.kind.name(),
        best_cfg.k1,
        best_cfg.b,
        bm25.len(),
        queries.len()
    );

    // 2. Hybrid grid, when there are embeddings.
    let has_store = req.model.is_some() || !crate::retrieve::list_stores(req.index).is_empty();
    let hybrid = if has_store {
        let dense = DenseRetriever::open(&index, req.model, None, req.device)?;
        let dense_lists = dense.retrieve_batch(&texts, depth, bar)?;
        let dense_score = metric_of(&index, &ids, &dense_lists, &qrels, req.metric)?;
        eprintln!(
            "dense ({}): {} = {:.4}",
            dense.store_name(),
            req.metric,
            dense_score
        );
        let mut fusions = Vec::new();
        for step in 0..=20 {
            let alpha = step as f64 / 20.0;
            fusions.push(FusionChoice::MinMax { alpha });
            fusions.push(FusionChoice::ZScore { alpha });
        }
        fusions.push(FusionChoice::Rrf { k: 60.0 });
        let mut best: Option<(f64, ScorerConfig, FusionChoice)> = None;
        for (_, cfg, lexical) in bm25.iter().take(HYBRID_BM25_CANDIDATES) {
            for fusion in &fusions {
                let fused: Vec<Ranked> = lexical
                    .iter()
                    .zip(&dense_lists)
                    .map(|(l, d)| fusion.fuse(l, d, depth))
                    .collect();
                let score = metric_of(&index, &ids, &fused, &qrels, req.metric)?;
                // Strictly better only: ties keep the earlier (smaller α, min-max) choice.
                if best.as_ref().is_none_or(|b| score > b.0 + 1e-12) {
                    best = Some((score, *cfg, *fusion));
                }
            }
        }
        let (score, scorer, fusion) = best.context("no fusion setting was scored")?;
        eprintln!(
            "hybrid: best {} = {:.4} with {} and bm25 {} k1={} b={}",
            req.metric,
            score,
            fusion.describe(),
            scorer.kind.name(),
            scorer.k1,
            scorer.b
        );
        Some(TunedHybrid {
            store: dense.store_name().to_string(),
            scorer,
            fusion,
            depth,
            score,
            dense_score,
        })
    } else {
        eprintln!("no embeddings in {}: tuned BM25 only", req.index.display());
        None
    };

    let tuned = Tuned {
        metric: req.metric.to_string(),
        queries: req.queries.display().to_string(),
        qrels: req.qrels.display().to_string(),
        num_queries: queries.len(),
        bm25: TunedBm25 {
            scorer: *best_cfg,
            score: *best_score,
        },
        hybrid,
    };
    write_atomic(
        &req.index.join(TUNED_FILE),
        &serde_json::to_string_pretty(&tuned)?,
    )?;
    eprintln!("wrote {}", req.index.join(TUNED_FILE).display());
    Ok(tuned)
}

/// Mean of `metric` over the judged queries for ranked lists in `ids` order.
fn metric_of(
    index: &Index,
    ids: &[&str],
    lists: &[Ranked],
    qrels: &Qrels,
    metric: Metric,
) -> Result<f64> {
    let mut run = Run::new("tune");
    for (qid, list) in ids.iter().zip(lists) {
        for &(doc, score) in list {
            run.push(*qid, index.doc_id(doc)?, f64::from(score))?;
        }
    }
    let report = evaluate(&run, qrels, &[metric], MissingPolicy::Zero);
    report
        .mean(metric)
        .with_context(|| format!("metric {metric} was not computed"))
}

/// Writes `text` to a temporary sibling and renames it over `path`.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp: PathBuf = path.with_extension(format!("json.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("publishing {}", path.display()))?;
    Ok(())
}
