//! Vector search behind one trait, [`VectorIndex`], and the exact (brute-force) index.
//!
//! Every index scores by inner product. Stores of unit rows ([`crate::StoreMeta::normalized`])
//! make that cosine similarity; pass unit queries too. Results are `(row, score)` pairs, best
//! first, ties broken by the lower row, so every index is deterministic.
//!
//! [`ExactIndex`] reads the matrix in blocks of [`BLOCK_ROWS`] rows: each block is converted
//! to `f32` once (F16C via `half`) and scored against every query of the batch while it is
//! in cache, so a batch of queries costs one pass over the matrix. Blocks are spread over
//! rayon's threads; each thread keeps one bounded heap per query and the heaps are merged.
//! One or two queries skip the conversion and score the f16 rows directly.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::error::{DenseError, Result};
use crate::kernels::{dot_f16, dot_f32};
use crate::store::{EmbeddingStore, MatrixView};

/// A search hit: row number in the store and inner-product score.
pub type Hit = (u32, f32);

/// Nearest-neighbour search by inner product over the rows of an [`EmbeddingStore`].
pub trait VectorIndex: Send + Sync {
    /// Vector dimension; queries must have exactly this many values.
    fn dim(&self) -> usize;

    /// Number of indexed rows.
    fn len(&self) -> usize;

    /// True when nothing is indexed.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `min(k, len)` best rows for `query`, best first (ties: lower row first).
    /// Errors with [`DenseError::Mismatch`] when `query.len() != dim()` and with
    /// [`DenseError::Invalid`] when the query holds NaN or infinity.
    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>>;

    /// [`VectorIndex::search`] for each of the row-major `queries` (a multiple of `dim()`
    /// values). The default runs the queries in parallel.
    fn search_batch(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        check_queries(queries, self.dim())?;
        queries
            .par_chunks(self.dim())
            .map(|q| self.search(q, k))
            .collect()
    }
}

/// Checks that `queries` is a whole number of finite vectors of length `dim`.
pub(crate) fn check_queries(queries: &[f32], dim: usize) -> Result<()> {
    if dim == 0 || queries.len() % dim != 0 {
        return Err(DenseError::Mismatch(format!(
            "query has {} values, the index's dim is {dim} (a batch must be a multiple)",
            queries.len()
        )));
    }
    if let Some(i) = queries.iter().position(|v| !v.is_finite()) {
        return Err(DenseError::Invalid(format!(
            "query value {i} is {} (queries must be finite)",
            queries[i]
        )));
    }
    Ok(())
}

/// Checks that `query` is one finite vector of length `dim`.
pub(crate) fn check_query(query: &[f32], dim: usize) -> Result<()> {
    if query.len() != dim {
        return Err(DenseError::Mismatch(format!(
            "query has {} values, the store's dim is {dim}",
            query.len()
        )));
    }
    check_queries(query, dim)
}

/// A scored candidate ordered so that "greater" means "better": higher score, then lower
/// row. Scores are compared with `total_cmp`, so the order is total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Scored {
    pub(crate) score: f32,
    pub(crate) row: u32,
}

impl Eq for Scored {}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.row.cmp(&self.row))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Keeps the `k` best [`Scored`] values seen (a min-heap of the best, worst on top).
#[derive(Clone, Debug)]
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<std::cmp::Reverse<Scored>>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> TopK {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, s: Scored) {
        if self.heap.len() < self.k {
            self.heap.push(std::cmp::Reverse(s));
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if s > worst.0 {
                *worst = std::cmp::Reverse(s);
            }
        }
    }

    pub(crate) fn merge(&mut self, other: TopK) {
        for s in other.heap {
            self.push(s.0);
        }
    }

    /// The worst value kept, once `k` values are kept (before that, everything enters).
    #[inline]
    pub(crate) fn threshold(&self) -> Option<Scored> {
        if self.heap.len() >= self.k {
            self.heap.peek().map(|r| r.0)
        } else {
            None
        }
    }

    /// Best first.
    pub(crate) fn into_sorted(self) -> Vec<Scored> {
        let mut v: Vec<Scored> = self.heap.into_iter().map(|r| r.0).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    }

    /// Best first.
    pub(crate) fn into_hits(self) -> Vec<Hit> {
        self.into_sorted()
            .into_iter()
            .map(|s| (s.row, s.score))
            .collect()
    }
}

/// Rows per block of [`ExactIndex`]: 128 rows × 384 dims × 4 bytes = 192 KiB of `f32`,
/// which stays in a core's L2 cache while every query of a batch is scored against it.
pub const BLOCK_ROWS: usize = 128;

/// Up to this many queries, [`ExactIndex`] scores f16 rows directly (converting in registers)
/// instead of converting each block to f32 first: the conversion pass writes and rereads
/// the block, which for one query costs more than the scoring. `dot_f16` and `dot_f32` on
/// the converted row agree bit for bit, so both paths rank identically.
const DIRECT_MAX_QUERIES: usize = 2;

/// Exact search: scores every row. The reference for approximate indexes, and the right
/// choice up to a few hundred thousand rows or for large query batches.
#[derive(Debug, Clone)]
pub struct ExactIndex {
    store: Arc<EmbeddingStore>,
}

impl ExactIndex {
    /// An exact index over `store` (no preprocessing; the matrix stays memory-mapped).
    pub fn new(store: Arc<EmbeddingStore>) -> ExactIndex {
        ExactIndex { store }
    }

    /// The store searched.
    pub fn store(&self) -> &Arc<EmbeddingStore> {
        &self.store
    }

    fn run(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        let dim = self.dim();
        check_queries(queries, dim)?;
        let nq = queries.len() / dim;
        if nq == 0 {
            return Ok(Vec::new());
        }
        let n = self.len();
        let k = k.min(n);
        if k == 0 {
            return Ok(vec![Vec::new(); nq]);
        }
        let view = self.store.view();
        let blocks = n.div_ceil(BLOCK_ROWS);
        let score_block = |(mut heaps, mut buf): (Vec<TopK>, Vec<f32>), b: usize| {
            let start = b * BLOCK_ROWS;
            let end = (start + BLOCK_ROWS).min(n);
            let rows: &[f32] = match view {
                MatrixView::F32(m) => &m[start * dim..end * dim],
                MatrixView::F16(m) if nq <= DIRECT_MAX_QUERIES => {
                    // Few queries: converting the block would cost more than the scores.
                    let block = &m[start * dim..end * dim];
                    for (q, heap) in queries.chunks_exact(dim).zip(heaps.iter_mut()) {
                        for (j, row) in block.chunks_exact(dim).enumerate() {
                            heap.push(Scored {
                                score: dot_f16(q, row),
                                row: (start + j) as u32,
                            });
                        }
                    }
                    return (heaps, buf);
                }
                MatrixView::F16(m) => {
                    buf.resize((end - start) * dim, 0.0);
                    m[start * dim..end * dim].convert_to_f32_slice(&mut buf);
                    &buf
                }
            };
            for (q, heap) in queries.chunks_exact(dim).zip(heaps.iter_mut()) {
                for (j, row) in rows.chunks_exact(dim).enumerate() {
                    heap.push(Scored {
                        score: dot_f32(q, row),
                        row: (start + j) as u32,
                    });
                }
            }
            (heaps, buf)
        };
        let init = || (vec![TopK::new(k); nq], Vec::new());
        let (heaps, _) =
            (0..blocks)
                .into_par_iter()
                .fold(init, score_block)
                .reduce(init, |mut a, b| {
                    for (x, y) in a.0.iter_mut().zip(b.0) {
                        x.merge(y);
                    }
                    a
                });
        Ok(heaps.into_iter().map(TopK::into_hits).collect())
    }
}

impl VectorIndex for ExactIndex {
    fn dim(&self) -> usize {
        self.store.dim()
    }

    fn len(&self) -> usize {
        self.store.len()
    }

    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        check_query(query, self.dim())?;
        Ok(self.run(query, k)?.pop().unwrap_or_default())
    }

    fn search_batch(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        // Large batches are split so that the per-query heaps and the query block stay
        // small; each split still reads the matrix once.
        const SPLIT: usize = 256;
        check_queries(queries, self.dim())?;
        let mut out = Vec::with_capacity(queries.len() / self.dim());
        for chunk in queries.chunks(SPLIT * self.dim()) {
            out.extend(self.run(chunk, k)?);
        }
        Ok(out)
    }
}
