//! The `Retriever` seam of the CLI: one question (or a batch) in, ranked index documents
//! out, by BM25, by dense vectors, or by fusing both. Batch search, `tune`, `ask` and the
//! benchmarks all go through [`Retriever::retrieve_batch`], so a new ranking method is one
//! new implementation here.
//!
//! Dense retrieval reads the embedding store that `juris embed` wrote under
//! `<index>/embeddings/<name>/`; the store's rows follow the index's document order, which
//! is checked when it is opened (a stale store is an error that says to re-run `embed`).

use crate::progress::Bar;
use anyhow::{bail, Context, Result};
use juris_dense::{EmbeddingStore, ExactIndex, VectorIndex};
use juris_index::Index;
use juris_ml::{encode_batched, Encoder, EncoderOptions, TextRole};
use juris_text::Lang;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A question to rank documents for.
#[derive(Debug, Clone)]
pub struct QueryText {
    /// The question.
    pub text: String,
    /// Its language when known (else detected per query).
    pub lang: Option<Lang>,
}

/// Ranked documents of one query: (index document number, score), best first.
pub type Ranked = Vec<(u32, f32)>;

/// Ranks index documents for queries.
pub trait Retriever {
    /// What this retriever is, for messages ("bm25 lucene k1=1.2 b=0.75", "dense e5-small").
    fn describe(&self) -> String;
    /// The best `k` documents of each query, in query order.
    fn retrieve_batch(&self, queries: &[QueryText], k: usize, bar: &Bar) -> Result<Vec<Ranked>>;
    /// Loads what a batch of queries will read (e.g. an index's mapped postings) before the
    /// batch starts; nothing by default.
    fn preload(&self) {}
}

/// Lexical ranking with the index's (or an overridden) BM25-family scorer.
pub struct Bm25Retriever<'a> {
    /// The index, already carrying the scorer to use.
    pub index: &'a Index,
}

impl Retriever for Bm25Retriever<'_> {
    fn describe(&self) -> String {
        let s = self.index.scorer();
        format!("bm25 {} k1={} b={}", s.kind.name(), s.k1, s.b)
    }

    fn preload(&self) {
        self.index.preload();
    }

    fn retrieve_batch(&self, queries: &[QueryText], k: usize, bar: &Bar) -> Result<Vec<Ranked>> {
        use juris_index::Progress;
        let inputs: Vec<(String, Option<Lang>)> =
            queries.iter().map(|q| (q.text.clone(), q.lang)).collect();
        bar.start("searching", Some(inputs.len() as u64));
        let hits = self.index.search_batch(&inputs, k, bar)?;
        bar.finish();
        Ok(hits
            .into_iter()
            .map(|hs| hs.into_iter().map(|h| (h.doc, h.score)).collect())
            .collect())
    }
}

/// Settings an embedding store was written with, kept in its `model` field as JSON so that
/// queries are encoded exactly as the documents were.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EncoderSettings {
    /// Preset name or path given to `juris embed --model`.
    pub model: String,
    /// Token limit the documents were encoded with.
    pub max_len: usize,
    /// LoRA adapter folder merged into the model (`embed --adapter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<PathBuf>,
}

impl EncoderSettings {
    /// Parses a store's `model` field (JSON written by `embed`; a bare string is taken as the
    /// model spec with default settings).
    pub fn from_store_field(field: &str) -> EncoderSettings {
        serde_json::from_str(field).unwrap_or_else(|_| EncoderSettings {
            model: field.to_string(),
            max_len: EncoderOptions::default().max_len,
            adapter: None,
        })
    }

    /// The JSON kept in the store.
    pub fn to_store_field(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| self.model.clone())
    }
}

/// Folder holding an index's embedding stores.
pub fn stores_dir(index: &Path) -> PathBuf {
    index.join("embeddings")
}

/// The store name `embed` uses for a model spec: a preset name as is, a path's file or
/// folder name without extension, reduced to `[A-Za-z0-9._-]`.
pub fn store_name(model: &str) -> String {
    let p = Path::new(model);
    let base = if juris_ml::PRESETS.iter().any(|pr| pr.name == model) {
        model.to_string()
    } else {
        p.file_stem()
            .or_else(|| p.file_name())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| model.to_string())
    };
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "model".into()
    } else {
        clean
    }
}

/// The store name for a model with a LoRA adapter: `<model>-lora-<adapter folder name>`
/// (so that `embed --adapter` never replaces the base model's store).
pub fn store_name_with(model: &str, adapter: Option<&Path>) -> String {
    match adapter {
        None => store_name(model),
        Some(a) => {
            let abs = std::fs::canonicalize(a).unwrap_or_else(|_| a.to_path_buf());
            let dir = abs
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "adapter".into());
            format!("{}-lora-{}", store_name(model), store_name(&dir))
        }
    }
}

/// Names of the embedding stores an index has, sorted.
pub fn list_stores(index: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(stores_dir(index))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("meta.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Picks the store for `--model` (a store name or a model spec) or, without it, the only
/// store the index has.
pub fn pick_store(index: &Path, model: Option<&str>, adapter: Option<&Path>) -> Result<PathBuf> {
    let stores = list_stores(index);
    let name = match model {
        Some(m) if stores.iter().any(|s| s == m) => m.to_string(),
        Some(m) => store_name_with(m, adapter),
        None => match stores.as_slice() {
            [one] => one.clone(),
            [] => bail!(
                "{}: no embeddings; run `juris embed --index {} --model <preset|path>` first",
                index.display(),
                index.display()
            ),
            many => bail!(
                "{} has embeddings of several models ({}); choose one with --model",
                index.display(),
                many.join(", ")
            ),
        },
    };
    let dir = stores_dir(index).join(&name);
    if !dir.join("meta.json").is_file() {
        bail!(
            "{}: no embeddings named '{name}' (present: {}); run `juris embed --index {} --model {}`",
            index.display(),
            if stores.is_empty() { "none".to_string() } else { stores.join(", ") },
            index.display(),
            model.unwrap_or("<preset|path>")
        );
    }
    Ok(dir)
}

/// Dense ranking: queries encoded by the store's model, exact inner-product search.
pub struct DenseRetriever {
    encoder: Box<dyn Encoder>,
    search: Box<dyn VectorIndex>,
    store_name: String,
    batch_size: usize,
}

impl DenseRetriever {
    /// Opens the store `model` picks (see [`pick_store`]) and the encoder that wrote it
    /// (with the LoRA adapter the store records, or `adapter` when given), checking that it
    /// matches the index and the model.
    pub fn open(
        index: &Index,
        model: Option<&str>,
        adapter: Option<&Path>,
        device: juris_ml::DeviceChoice,
    ) -> Result<Self> {
        let dir = pick_store(index.path(), model, adapter)?;
        let store = EmbeddingStore::open(&dir)?;
        check_fresh(index, &store, &dir)?;
        let settings = EncoderSettings::from_store_field(&store.meta().model);
        let opts = EncoderOptions {
            max_len: settings.max_len,
            device,
            ..Default::default()
        };
        let adapter = adapter.map(Path::to_path_buf).or(settings.adapter.clone());
        if let Some(dir) = &adapter {
            crate::rerank_cmd::refuse_cross_encoder(dir)?;
        }
        let encoder =
            juris_ml::load_encoder_with_adapter(&settings.model, &opts, adapter.as_deref())
                .with_context(|| format!("loading the model of {}", dir.display()))?;
        if encoder.dim() != store.dim() {
            bail!(
                "{}: vectors have {} dimensions but model {} gives {}; re-run `juris embed`",
                dir.display(),
                store.dim(),
                settings.model,
                encoder.dim()
            );
        }
        if encoder.fingerprint() != store.meta().fingerprint {
            bail!(
                "{}: embeddings were made by another version of {} (fingerprint {} vs {}); re-run `juris embed --index {} --model {}`",
                dir.display(),
                settings.model,
                store.meta().fingerprint,
                encoder.fingerprint(),
                index.path().display(),
                settings.model
            );
        }
        let store_name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(DenseRetriever {
            encoder,
            search: Box::new(ExactIndex::new(Arc::new(store))),
            store_name,
            batch_size: opts.batch_size,
        })
    }

    /// The store's name (its folder under `embeddings/`).
    pub fn store_name(&self) -> &str {
        &self.store_name
    }
}

/// [`encode_batched`] advancing `bar` (already started by the caller) by each finished text.
pub fn encode_with_bar(
    encoder: &dyn Encoder,
    texts: &[&str],
    role: TextRole,
    batch_size: usize,
    bar: &Bar,
) -> Result<Vec<f32>> {
    use juris_index::Progress;
    let mut last = 0usize;
    Ok(encode_batched(
        encoder,
        texts,
        role,
        batch_size,
        &mut |done| {
            bar.inc((done - last) as u64);
            last = done;
        },
    )?)
}

/// A store is usable only if its rows are the index's documents in index order.
fn check_fresh(index: &Index, store: &EmbeddingStore, dir: &Path) -> Result<()> {
    let n = index.n_docs() as usize;
    let stale = store.len() != n
        || store
            .ids()
            .iter()
            .enumerate()
            .any(|(i, id)| index.doc_id(i as u32).map(|d| d != id).unwrap_or(true));
    if stale {
        bail!(
            "{}: embeddings are out of date with the index ({} vectors, {} documents, or a different order); run `juris embed --index {}` again",
            dir.display(),
            store.len(),
            n,
            index.path().display()
        );
    }
    Ok(())
}

impl Retriever for DenseRetriever {
    fn describe(&self) -> String {
        format!("dense {}", self.store_name)
    }

    fn retrieve_batch(&self, queries: &[QueryText], k: usize, bar: &Bar) -> Result<Vec<Ranked>> {
        use juris_index::Progress;
        let texts: Vec<&str> = queries.iter().map(|q| q.text.as_str()).collect();
        bar.start("encoding", Some(texts.len() as u64));
        let vectors = encode_with_bar(
            self.encoder.as_ref(),
            &texts,
            TextRole::Query,
            self.batch_size,
            bar,
        )?;
        bar.finish();
        Ok(self.search.search_batch(&vectors, k)?)
    }
}

/// How lexical and dense scores are combined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum FusionChoice {
    /// `alpha · norm(bm25) + (1 − alpha) · norm(dense)` with per-query min-max normalization.
    MinMax {
        /// Weight of the lexical score (the seed paper's α on BM25+).
        alpha: f64,
    },
    /// The same weighted sum after per-query z-score normalization.
    ZScore {
        /// Weight of the lexical score.
        alpha: f64,
    },
    /// Reciprocal-rank fusion, `Σ 1 / (k + rank)`.
    Rrf {
        /// The RRF constant (60 in Cormack et al.).
        k: f64,
    },
}

impl FusionChoice {
    /// Parses `--fusion` with `--alpha` / `--rrf-k`.
    pub fn parse(name: &str, alpha: f64, rrf_k: f64) -> Result<FusionChoice> {
        if !(0.0..=1.0).contains(&alpha) {
            bail!("--alpha must be between 0 and 1 (got {alpha})");
        }
        Ok(match name {
            "minmax" | "min-max" => FusionChoice::MinMax { alpha },
            "zscore" | "z-score" => FusionChoice::ZScore { alpha },
            "rrf" => FusionChoice::Rrf { k: rrf_k },
            other => bail!("unknown --fusion '{other}' (known: minmax, zscore, rrf)"),
        })
    }

    /// Short description for messages and run tags.
    pub fn describe(&self) -> String {
        match self {
            FusionChoice::MinMax { alpha } => format!("minmax alpha={alpha}"),
            FusionChoice::ZScore { alpha } => format!("zscore alpha={alpha}"),
            FusionChoice::Rrf { k } => format!("rrf k={k}"),
        }
    }

    /// Fuses one query's lexical and dense lists into the best `k`. A document missing from
    /// one list gets that list's lowest normalized score (for min-max that is 0, as in ranx;
    /// for z-score ranx would give the list's mean, which rewards absence).
    pub fn fuse(&self, lexical: &[(u32, f32)], dense: &[(u32, f32)], k: usize) -> Ranked {
        use juris_dense::fusion::{reciprocal_rank, weighted_sum, Missing, Norm};
        let wide = |l: &[(u32, f32)]| -> Vec<(u32, f64)> {
            l.iter().map(|&(d, s)| (d, f64::from(s))).collect()
        };
        let (lexical, dense) = (wide(lexical), wide(dense));
        let fused = match *self {
            FusionChoice::MinMax { alpha } => {
                weighted_sum(&lexical, &dense, alpha, Norm::MinMax, Missing::Zero)
            }
            FusionChoice::ZScore { alpha } => {
                weighted_sum(&lexical, &dense, alpha, Norm::ZScore, Missing::Min)
            }
            FusionChoice::Rrf { k } => reciprocal_rank(&[&lexical, &dense], k),
        };
        fused
            .into_iter()
            .take(k)
            .map(|(d, s)| (d, s as f32))
            .collect()
    }
}

/// BM25 and dense candidates (each `depth` deep) fused per query.
pub struct HybridRetriever<'a> {
    /// Lexical side.
    pub bm25: Bm25Retriever<'a>,
    /// Dense side.
    pub dense: DenseRetriever,
    /// How the two are combined.
    pub fusion: FusionChoice,
    /// Candidates taken from each side before fusing.
    pub depth: usize,
}

impl Retriever for HybridRetriever<'_> {
    fn describe(&self) -> String {
        format!(
            "hybrid ({}) + ({}), {}, depth {}",
            self.bm25.describe(),
            self.dense.describe(),
            self.fusion.describe(),
            self.depth
        )
    }

    fn preload(&self) {
        self.bm25.preload();
    }

    fn retrieve_batch(&self, queries: &[QueryText], k: usize, bar: &Bar) -> Result<Vec<Ranked>> {
        let deep = self.depth.max(k);
        let lexical = self.bm25.retrieve_batch(queries, deep, bar)?;
        let dense = self.dense.retrieve_batch(queries, deep, bar)?;
        Ok(lexical
            .iter()
            .zip(&dense)
            .map(|(l, d)| fuse_head_stable(&self.fusion, self.depth, l, d, k))
            .collect())
    }
}

/// Fuses one query's lists (each ranked best first) so that the ranking does not depend on
/// `k`: the head is the fusion of each side's top `depth` — the candidates `juris tune`
/// scored when it chose the fusion — and a `k` beyond what that head holds appends the rest
/// of the deeper lists' fusion below it. (Normalizing the deeper lists instead moves every
/// score, so `-k 1000` would reorder the top 10 that tune measured.) Appended scores are
/// shifted to stay below the head's last one, so runs sorted by score keep this order.
fn fuse_head_stable(
    fusion: &FusionChoice,
    depth: usize,
    lexical: &[(u32, f32)],
    dense: &[(u32, f32)],
    k: usize,
) -> Ranked {
    let cut = |l: &[(u32, f32)]| l.len().min(depth);
    let mut head = fusion.fuse(&lexical[..cut(lexical)], &dense[..cut(dense)], k);
    if head.len() >= k || (lexical.len() <= depth && dense.len() <= depth) {
        return head;
    }
    let placed: HashSet<u32> = head.iter().map(|&(doc, _)| doc).collect();
    let tail: Ranked = fusion
        .fuse(lexical, dense, k)
        .into_iter()
        .filter(|(doc, _)| !placed.contains(doc))
        .collect();
    if let (Some(&(_, floor)), Some(&(_, top))) = (head.last(), tail.first()) {
        // A step below the head's last score at its magnitude, so f32 tells them apart.
        let gap = (top - floor) + floor.abs().max(1.0) * 1e-4;
        head.extend(tail.into_iter().map(|(doc, s)| (doc, s - gap)));
    } else {
        head.extend(tail);
    }
    head.truncate(k);
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(r: &Ranked) -> Vec<u32> {
        r.iter().map(|&(d, _)| d).collect()
    }

    #[test]
    fn a_deeper_k_appends_below_the_tuned_head_and_never_reorders_it() {
        // BM25 has a steep head and a flat tail, dense the opposite: normalizing six-deep
        // lists instead of two-deep ones changes which of docs 0, 1, 5, 4 leads.
        let lexical: Vec<(u32, f32)> =
            vec![(0, 10.0), (1, 9.0), (2, 1.2), (3, 1.1), (4, 1.0), (5, 0.9)];
        let dense: Vec<(u32, f32)> = vec![
            (5, 0.90),
            (4, 0.89),
            (3, 0.2),
            (2, 0.1),
            (1, 0.05),
            (0, 0.0),
        ];
        for fusion in [
            FusionChoice::ZScore { alpha: 0.5 },
            FusionChoice::MinMax { alpha: 0.5 },
            FusionChoice::Rrf { k: 1.0 },
        ] {
            let depth = 2;
            let head = fusion.fuse(&lexical[..depth], &dense[..depth], 6);
            assert_eq!(head.len(), 4, "{fusion:?}");
            for k in [1, 2, 4] {
                let got = fuse_head_stable(&fusion, depth, &lexical, &dense, k);
                assert_eq!(ids(&got), ids(&head)[..k], "{fusion:?} k {k}");
            }
            let got = fuse_head_stable(&fusion, depth, &lexical, &dense, 6);
            assert_eq!(ids(&got)[..4], ids(&head)[..], "{fusion:?}: the head moved");
            let mut all = ids(&got);
            all.sort_unstable();
            assert_eq!(
                all,
                vec![0, 1, 2, 3, 4, 5],
                "{fusion:?}: each document once"
            );
            assert!(
                got.windows(2)
                    .all(|w| w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0)),
                "{fusion:?}: scores must keep the order: {got:?}"
            );
            assert!(
                got[4].1 < got[3].1,
                "{fusion:?}: the tail starts below the head"
            );
        }
        // What normalizing the six-deep lists would have given: another head (so the test
        // above can tell the two apart).
        let naive = FusionChoice::ZScore { alpha: 0.5 }.fuse(&lexical, &dense, 4);
        let head = FusionChoice::ZScore { alpha: 0.5 }.fuse(&lexical[..2], &dense[..2], 4);
        assert_ne!(ids(&naive), ids(&head));
    }
}
