//! [`HnswIndex`]: approximate search with a hierarchical navigable small-world graph
//! (Malkov & Yashunin, 2016/2018), written for this crate.
//!
//! The graph stores row numbers only; vectors stay in the [`EmbeddingStore`] (mapped, `f16`
//! or `f32`) and are scored with the same kernels as the exact index, so the graph costs
//! `4 · 2M` bytes per row on layer 0 plus a little for the upper layers.
//!
//! **Deterministic parallel build.** Levels come from a hash of `(seed, row)`. Rows are
//! inserted in row order in batches (1, 1, 2, 4, … up to [`MAX_BATCH`] rows): every row of a
//! batch searches the graph as it was before the batch, in parallel, and additionally scores
//! every other row of its batch exhaustively, so rows of one batch can link to each other as
//! sequential insertion would let them. Links are then applied, and over-full neighbour
//! lists are pruned, per target row in parallel. No step depends on thread timing, so the
//! same store and parameters always give the same graph, on any number of threads.
//!
//! **Build cost.** Per inserted row the build scores ~2,500 pairs (50k rows, M = 16,
//! ef_construction = 100): ~1,200 in the graph walk, ~500 within the batch, ~750 choosing
//! and pruning neighbours. The walk dominates the time because each of its rows is a cache
//! miss, so walks prefetch the rows they are about to score (and the next candidate's
//! list); the batch's all-pairs scores are computed once per pair on rows converted to f32
//! once per batch; neighbour selection keeps the chosen rows as f32. Together these cut the
//! 50k build from ~22 to ~15 CPU seconds without changing the graph.
//!
//! Neighbours are chosen with the paper's heuristic (a candidate is kept only if it is
//! closer to the new row than to every neighbour already kept), which keeps links between
//! clusters; layer 0 allows `2M` links per row, upper layers `M`.
//!
//! # File format (`hnsw.bin`, version [`HNSW_FORMAT_VERSION`], little-endian)
//!
//! `b"JHNSWIDX"`, `u32` version, `u64` store `write_id`, `u64` n, `u32` dim, `u32` M,
//! `u32` M0, `u32` ef_construction, `u32` ef_search, `u64` seed, `u32` entry row, `u32` top
//! level; `u8 × n` levels; `u32 × n` layer-0 list lengths; `u32 × n·M0` layer-0 lists (unused
//! slots 0); then for each row with level ≥ 1, for layers 1..=level: `u32` length and that
//! many `u32` rows. Written to a temporary file, fsynced and renamed. Loading checks every
//! length and row number, and that `write_id` matches the store (a graph built on another
//! version of the store is refused, not silently used).

use std::cell::RefCell;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{DenseError, Result};
use crate::kernels::{dot_f16, dot_f32, prefetch};
use crate::search::{check_query, Hit, Scored, TopK, VectorIndex};
use crate::store::{sync_dir, write_synced, EmbeddingStore, MatrixView};

/// File name of a saved graph inside the store folder.
pub const HNSW_FILE: &str = "hnsw.bin";
/// The graph format this crate writes and reads.
pub const HNSW_FORMAT_VERSION: u32 = 1;
/// Largest insertion batch of the parallel build (see the module docs).
pub const MAX_BATCH: usize = 512;
/// Rows prefetched ahead of the one being scored during graph walks. Measured on the 50k
/// bench build (CPU seconds, 2 busy cores): no prefetch 21.8 s; 1 or 2 rows ahead, whole
/// rows, plus the next candidate's list, ~15 s; 4 rows ahead 16.7 s (too many misses in
/// flight).
const PREFETCH_AHEAD: usize = 2;
const MAGIC: &[u8; 8] = b"JHNSWIDX";
const MAX_LEVEL: u8 = 16;

/// HNSW parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per row on upper layers (layer 0 allows `2·m`); 2 ..= 128. More links: better
    /// recall, slower build, more memory.
    pub m: usize,
    /// Candidate list size while building; ≥ 1. Larger builds a better graph, slower.
    pub ef_construction: usize,
    /// Candidate list size while searching (raised to `k` when smaller); the recall/speed
    /// knob, changeable after building with [`HnswIndex::set_ef_search`].
    pub ef_search: usize,
    /// Seed of the level assignment.
    pub seed: u64,
}

/// M = 32 and ef_construction = 200 by default: on 1M × 384 synthetic clustered vectors
/// (BENCHMARKS.md) M = 16 / 100 plateaued at recall@10 0.94 while 32 / 200 reached 0.984 at
/// ef_search 64, 25× faster than exact search.
impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 32,
            ef_construction: 200,
            ef_search: 64,
            seed: 0x006a_7572_6973,
        }
    }
}

impl HnswParams {
    fn validate(&self) -> Result<()> {
        if !(2..=128).contains(&self.m) || self.ef_construction == 0 {
            return Err(DenseError::Invalid(format!(
                "HNSW needs 2 <= m <= 128 and ef_construction >= 1 (got m = {}, ef_construction = {})",
                self.m, self.ef_construction
            )));
        }
        Ok(())
    }
}

/// An HNSW graph over the rows of an [`EmbeddingStore`].
///
/// Invariants: every list holds distinct row numbers `< len`, never the row itself; layer-0
/// lists hold at most `2M` rows and upper lists at most `M`; `upper[r].len() == levels[r]`;
/// `entry` is a row of level `top` (the maximum level), when the store is not empty.
pub struct HnswIndex {
    store: Arc<EmbeddingStore>,
    params: HnswParams,
    m0: usize,
    levels: Vec<u8>,
    l0: Vec<u32>,
    l0_len: Vec<u32>,
    upper: Vec<Vec<Vec<u32>>>,
    entry: u32,
    top: usize,
}

impl std::fmt::Debug for HnswIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswIndex")
            .field("len", &self.levels.len())
            .field("params", &self.params)
            .field("top_level", &self.top)
            .finish()
    }
}

/// Per-thread "visited" marks, reset in O(1) by bumping a stamp.
struct Visited {
    marks: Vec<u32>,
    stamp: u32,
}

impl Visited {
    fn begin(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
    }

    /// Marks `i`; true when it was not marked yet.
    #[inline]
    fn insert(&mut self, i: u32) -> bool {
        let m = &mut self.marks[i as usize];
        let new = *m != self.stamp;
        *m = self.stamp;
        new
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = const { RefCell::new(Visited { marks: Vec::new(), stamp: 0 }) };
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The level of `row`: ⌊−ln(u)·mL⌋ with u uniform in (0, 1] from a hash of (seed, row).
fn level_of(seed: u64, row: usize, ml: f64) -> u8 {
    let h = splitmix64(seed ^ splitmix64(row as u64));
    let u = ((h >> 11) + 1) as f64 / (1u64 << 53) as f64;
    ((-u.ln() * ml).floor() as u64).min(MAX_LEVEL as u64) as u8
}

impl HnswIndex {
    /// Builds the graph over every row of `store`, in parallel on rayon's pool.
    pub fn build(store: Arc<EmbeddingStore>, params: HnswParams) -> Result<HnswIndex> {
        params.validate()?;
        let n = store.len();
        if n > u32::MAX as usize {
            return Err(DenseError::Invalid(format!(
                "{n} rows exceed the HNSW limit of 2^32 − 1"
            )));
        }
        let m0 = 2 * params.m;
        let ml = 1.0 / (params.m as f64).ln();
        let levels: Vec<u8> = (0..n).map(|r| level_of(params.seed, r, ml)).collect();
        let mut idx = HnswIndex {
            upper: levels
                .iter()
                .map(|&l| vec![Vec::new(); l as usize])
                .collect(),
            l0: vec![0; n * m0],
            l0_len: vec![0; n],
            levels,
            store,
            params,
            m0,
            entry: 0,
            top: 0,
        };
        if n == 0 {
            return Ok(idx);
        }
        idx.top = idx.levels[0] as usize;
        let mut inserted = 1;
        while inserted < n {
            let b = inserted.min(MAX_BATCH).min(n - inserted);
            idx.insert_batch(inserted, inserted + b);
            inserted += b;
        }
        Ok(idx)
    }

    /// Inserts rows `lo..hi`, given that rows `< lo` form the graph.
    fn insert_batch(&mut self, lo: usize, hi: usize) {
        let dim = self.store.dim();
        let b = hi - lo;
        // The batch's rows as f32, converted once: they are the queries of phase 1 and the
        // operands of its all-pairs scores.
        let mut rows = vec![0.0f32; b * dim];
        rows.par_chunks_mut(dim)
            .enumerate()
            .for_each(|(i, out)| self.store.row_into(lo + i, out));
        // All-pairs scores of the batch, each pair computed once (the matrix is symmetric:
        // `dot_f32` sums `x·y` products, which commute exactly). This used to score every
        // pair twice against f16 rows: 506 of ~2,500 scores per inserted row at 50k rows.
        let mut gram = vec![0.0f32; b * b];
        gram.par_chunks_mut(b).enumerate().for_each(|(i, out)| {
            let qi = &rows[i * dim..(i + 1) * dim];
            for (j, o) in out.iter_mut().enumerate().skip(i + 1) {
                *o = dot_f32(qi, &rows[j * dim..(j + 1) * dim]);
            }
        });
        for i in 0..b {
            for j in 0..i {
                gram[i * b + j] = gram[j * b + i];
            }
        }
        // Phase 1: each new row's forward lists, from the frozen graph and its batch.
        let forward: Vec<Vec<Vec<u32>>> = (0..b)
            .into_par_iter()
            .map(|i| {
                let v = lo + i;
                let q = &rows[i * dim..(i + 1) * dim];
                let lv = self.levels[v] as usize;
                let mut batch: Vec<Scored> = (0..b)
                    .filter(|&j| j != i)
                    .map(|j| Scored {
                        score: gram[i * b + j],
                        row: (lo + j) as u32,
                    })
                    .collect();
                batch.sort_unstable_by(|a, b| b.cmp(a));
                let mut lists = vec![Vec::new(); lv + 1];
                let mut eps = vec![self.greedy_descent(q, lv)];
                for l in (0..=lv).rev() {
                    let mut cands = Vec::new();
                    if l <= self.top {
                        cands = self.search_layer(q, &eps, self.params.ef_construction, l, lo);
                        eps = cands.clone();
                    }
                    cands.extend(
                        batch
                            .iter()
                            .filter(|s| self.levels[s.row as usize] as usize >= l)
                            .take(self.params.ef_construction),
                    );
                    cands.sort_unstable_by(|a, b| b.cmp(a));
                    lists[l] = self.select(&cands, self.params.m);
                }
                lists
            })
            .collect();

        // Phase 2: install forward lists; collect reverse links (target, layer, source).
        let mut reverse: Vec<(u32, u8, u32)> = Vec::new();
        for (i, lists) in forward.into_iter().enumerate() {
            let v = lo + i;
            for (l, list) in lists.into_iter().enumerate() {
                reverse.extend(list.iter().map(|&u| (u, l as u8, v as u32)));
                self.set_list(v, l, &list);
            }
        }
        reverse.sort_unstable();
        reverse.dedup();

        // Phase 3: add reverse links, pruning over-full lists, per (target, layer) in parallel.
        let groups: Vec<&[(u32, u8, u32)]> =
            reverse.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1).collect();
        let updates: Vec<(u32, u8, Vec<u32>)> = groups
            .par_iter()
            .map(|g| {
                let (u, l) = (g[0].0, g[0].1 as usize);
                let mut list = self.list(u, l).to_vec();
                for &(_, _, v) in g.iter() {
                    if v != u && !list.contains(&v) {
                        list.push(v);
                    }
                }
                let cap = if l == 0 { self.m0 } else { self.params.m };
                if list.len() > cap {
                    let mut q = vec![0.0; dim];
                    self.store.row_into(u as usize, &mut q);
                    // These rows were last touched long ago (cold): load ahead.
                    for &r in list.iter().take(PREFETCH_AHEAD) {
                        self.prefetch_row(r);
                    }
                    let mut cands: Vec<Scored> = list
                        .iter()
                        .enumerate()
                        .map(|(i, &r)| {
                            if let Some(&ahead) = list.get(i + PREFETCH_AHEAD) {
                                self.prefetch_row(ahead);
                            }
                            Scored {
                                score: self.sim(&q, r),
                                row: r,
                            }
                        })
                        .collect();
                    cands.sort_unstable_by(|a, b| b.cmp(a));
                    list = self.select(&cands, cap);
                }
                (u, l as u8, list)
            })
            .collect();
        for (u, l, list) in updates {
            self.set_list(u as usize, l as usize, &list);
        }
        for v in lo..hi {
            if self.levels[v] as usize > self.top {
                self.top = self.levels[v] as usize;
                self.entry = v as u32;
            }
        }
    }

    fn set_list(&mut self, v: usize, l: usize, list: &[u32]) {
        if l == 0 {
            self.l0[v * self.m0..v * self.m0 + list.len()].copy_from_slice(list);
            self.l0_len[v] = list.len() as u32;
        } else {
            self.upper[v][l - 1] = list.to_vec();
        }
    }

    #[inline]
    fn list(&self, v: u32, l: usize) -> &[u32] {
        let v = v as usize;
        if l == 0 {
            &self.l0[v * self.m0..v * self.m0 + self.l0_len[v] as usize]
        } else {
            &self.upper[v][l - 1]
        }
    }

    #[inline]
    fn sim(&self, q: &[f32], r: u32) -> f32 {
        let d = q.len();
        let r = r as usize;
        match self.store.view() {
            MatrixView::F16(m) => dot_f16(q, &m[r * d..(r + 1) * d]),
            MatrixView::F32(m) => dot_f32(q, &m[r * d..(r + 1) * d]),
        }
    }

    /// The paper's heuristic: walk candidates best first, keep one when it is more similar
    /// to the base than to every row kept so far, stop at `m`.
    ///
    /// Kept rows are held as f32 in a small buffer, so each candidate is converted once
    /// and compared against cache-resident rows (scores equal `dot_f16`'s: the conversion
    /// is exact and both kernels sum in the same order, so the graph is unchanged).
    fn select(&self, cands: &[Scored], m: usize) -> Vec<u32> {
        let dim = self.store.dim();
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        let mut kept_rows: Vec<f32> = Vec::with_capacity(m * dim);
        let mut row = vec![0.0; dim];
        for c in cands {
            if kept.len() >= m {
                break;
            }
            if kept.contains(&c.row) {
                continue;
            }
            self.store.row_into(c.row as usize, &mut row);
            if kept_rows
                .chunks_exact(dim)
                .all(|k| dot_f32(&row, k) < c.score)
            {
                kept.push(c.row);
                kept_rows.extend_from_slice(&row);
            }
        }
        kept
    }

    /// Starts loading row `r` into cache (see [`prefetch`]).
    #[inline]
    fn prefetch_row(&self, r: u32) {
        let d = self.store.dim();
        let r = r as usize;
        match self.store.view() {
            MatrixView::F16(m) => prefetch(&m[r * d..(r + 1) * d]),
            MatrixView::F32(m) => prefetch(&m[r * d..(r + 1) * d]),
        }
    }

    /// Greedy walk from the entry point down to layer `stop + 1`; returns the closest row
    /// found, the entry for layer `stop`.
    fn greedy_descent(&self, q: &[f32], stop: usize) -> Scored {
        let mut cur = Scored {
            score: self.sim(q, self.entry),
            row: self.entry,
        };
        for l in ((stop + 1)..=self.top).rev() {
            loop {
                let mut best = cur;
                let list = self.list(cur.row, l);
                for &nb in list.iter().take(PREFETCH_AHEAD) {
                    self.prefetch_row(nb);
                }
                for (i, &nb) in list.iter().enumerate() {
                    if let Some(&ahead) = list.get(i + PREFETCH_AHEAD) {
                        self.prefetch_row(ahead);
                    }
                    let s = Scored {
                        score: self.sim(q, nb),
                        row: nb,
                    };
                    if s > best {
                        best = s;
                    }
                }
                if best == cur {
                    break;
                }
                cur = best;
            }
        }
        cur
    }

    /// Best-first search of layer `l` from `eps`, keeping `ef` results; only rows `< limit`
    /// are in the graph (during a build, later rows are not). Best first.
    fn search_layer(
        &self,
        q: &[f32],
        eps: &[Scored],
        ef: usize,
        l: usize,
        limit: usize,
    ) -> Vec<Scored> {
        VISITED.with(|cell| {
            let mut visited = cell.borrow_mut();
            visited.begin(self.levels.len());
            let mut cands: BinaryHeap<Scored> = BinaryHeap::with_capacity(ef * 2);
            let mut results = TopK::new(ef);
            for &e in eps {
                if visited.insert(e.row) {
                    cands.push(e);
                    results.push(e);
                }
            }
            let mut fresh: Vec<u32> = Vec::with_capacity(self.m0);
            while let Some(c) = cands.pop() {
                if results.threshold().is_some_and(|w| c < w) {
                    break;
                }
                // The next candidate's list is a cache miss too; start loading it now.
                if let Some(next) = cands.peek() {
                    prefetch(self.list(next.row, l));
                }
                fresh.clear();
                fresh.extend(
                    self.list(c.row, l)
                        .iter()
                        .filter(|&&nb| (nb as usize) < limit && visited.insert(nb)),
                );
                // Rows to score are known up front: keep PREFETCH_AHEAD of them loading
                // while scoring the current one.
                for &nb in fresh.iter().take(PREFETCH_AHEAD) {
                    self.prefetch_row(nb);
                }
                for (i, &nb) in fresh.iter().enumerate() {
                    if let Some(&ahead) = fresh.get(i + PREFETCH_AHEAD) {
                        self.prefetch_row(ahead);
                    }
                    let s = Scored {
                        score: self.sim(q, nb),
                        row: nb,
                    };
                    if results.threshold().map_or(true, |w| s > w) {
                        cands.push(s);
                        results.push(s);
                    }
                }
            }
            results.into_sorted()
        })
    }

    /// Sets the search-time candidate list size (raised to `k` per query when smaller).
    pub fn set_ef_search(&mut self, ef: usize) {
        self.params.ef_search = ef.max(1);
    }

    /// The parameters the graph was built with (and the current `ef_search`).
    pub fn params(&self) -> HnswParams {
        self.params
    }

    /// The store searched.
    pub fn store(&self) -> &Arc<EmbeddingStore> {
        &self.store
    }

    /// Path of the saved graph of `store`: `<store-dir>/hnsw.bin`.
    pub fn default_path(store: &EmbeddingStore) -> PathBuf {
        store.dir().join(HNSW_FILE)
    }

    /// Saves the graph to `path` atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let n = self.levels.len();
        let mut b: Vec<u8> = Vec::with_capacity(64 + n * (5 + 4 * self.m0));
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&HNSW_FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&self.store.meta().write_id.to_le_bytes());
        b.extend_from_slice(&(n as u64).to_le_bytes());
        for v in [
            self.store.dim(),
            self.params.m,
            self.m0,
            self.params.ef_construction,
            self.params.ef_search,
        ] {
            b.extend_from_slice(&(v as u32).to_le_bytes());
        }
        b.extend_from_slice(&self.params.seed.to_le_bytes());
        b.extend_from_slice(&self.entry.to_le_bytes());
        b.extend_from_slice(&(self.top as u32).to_le_bytes());
        b.extend_from_slice(&self.levels);
        for &x in self.l0_len.iter().chain(&self.l0) {
            b.extend_from_slice(&x.to_le_bytes());
        }
        for lists in &self.upper {
            for list in lists {
                b.extend_from_slice(&(list.len() as u32).to_le_bytes());
                for &x in list {
                    b.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        let name = path
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or(HNSW_FILE);
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        write_synced(&tmp, &b)?;
        std::fs::rename(&tmp, path).map_err(|e| DenseError::io(path, e))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// Loads a graph saved by [`HnswIndex::save`] for `store`, checking that it was built
    /// on this very store (its `write_id`) and that every field is in range.
    pub fn load(store: Arc<EmbeddingStore>, path: &Path) -> Result<HnswIndex> {
        let bytes = std::fs::read(path).map_err(|e| DenseError::io(path, e))?;
        let mut r = Reader {
            b: &bytes,
            pos: 0,
            path,
        };
        if r.take(8, "magic")? != MAGIC {
            return Err(DenseError::corrupt(
                path,
                "not an HNSW graph file (bad magic)",
            ));
        }
        let version = r.u32("version")?;
        if version != HNSW_FORMAT_VERSION {
            return Err(DenseError::corrupt(
                path,
                format!("version is {version}, this build reads {HNSW_FORMAT_VERSION}"),
            ));
        }
        let write_id = r.u64("write_id")?;
        if write_id != store.meta().write_id {
            return Err(DenseError::Mismatch(format!(
                "{} was built on another version of the store {}: rebuild the HNSW index",
                path.display(),
                store.dir().display()
            )));
        }
        let n = r.u64("n")? as usize;
        let dim = r.u32("dim")? as usize;
        if n != store.len() || dim != store.dim() {
            return Err(DenseError::corrupt(
                path,
                format!(
                    "n = {n}, dim = {dim}, but the store has {} rows of dim {}",
                    store.len(),
                    store.dim()
                ),
            ));
        }
        let params = HnswParams {
            m: r.u32("m")? as usize,
            ef_construction: 0,
            ef_search: 0,
            seed: 0,
        };
        let m0 = r.u32("m0")? as usize;
        let ef_construction = r.u32("ef_construction")? as usize;
        let ef_search = r.u32("ef_search")? as usize;
        let seed = r.u64("seed")?;
        let params = HnswParams {
            ef_construction,
            ef_search,
            seed,
            ..params
        };
        params
            .validate()
            .map_err(|e| DenseError::corrupt(path, e.to_string()))?;
        if m0 != 2 * params.m {
            return Err(DenseError::corrupt(
                path,
                format!("m0 = {m0}, expected 2·m = {}", 2 * params.m),
            ));
        }
        let entry = r.u32("entry")?;
        let top = r.u32("top level")? as usize;
        let levels = r.take(n, "levels")?.to_vec();
        let l0_len = r.u32s(n, "layer-0 lengths")?;
        let l0 = r.u32s(n * m0, "layer-0 lists")?;
        let mut upper = Vec::with_capacity(n);
        for &lv in &levels {
            if lv > MAX_LEVEL {
                return Err(DenseError::corrupt(
                    path,
                    format!("a level is {lv} > {MAX_LEVEL}"),
                ));
            }
            let mut lists = Vec::with_capacity(lv as usize);
            for _ in 0..lv {
                let len = r.u32("upper list length")? as usize;
                if len > params.m {
                    return Err(DenseError::corrupt(
                        path,
                        format!("an upper list holds {len} > m rows"),
                    ));
                }
                lists.push(r.u32s(len, "upper list")?);
            }
            upper.push(lists);
        }
        if r.pos != bytes.len() {
            return Err(DenseError::corrupt(
                path,
                format!("{} bytes after the last list", bytes.len() - r.pos),
            ));
        }
        let bad_row = |x: &u32| *x as usize >= n;
        if l0_len.iter().any(|&l| l as usize > m0)
            || l0.iter().any(bad_row)
            || upper.iter().flatten().flatten().any(bad_row)
            || (n > 0 && (entry as usize >= n || levels[entry as usize] as usize != top))
        {
            return Err(DenseError::corrupt(
                path,
                "a list length, row number or the entry is out of range",
            ));
        }
        Ok(HnswIndex {
            store,
            params,
            m0,
            levels,
            l0,
            l0_len,
            upper,
            entry,
            top,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, field: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                DenseError::corrupt(
                    self.path,
                    format!("truncated at byte {} reading {field}", self.pos),
                )
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, field)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, field)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32s(&mut self, count: usize, field: &str) -> Result<Vec<u32>> {
        let len = count
            .checked_mul(4)
            .ok_or_else(|| DenseError::corrupt(self.path, format!("{field} too long")))?;
        Ok(self
            .take(len, field)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

impl VectorIndex for HnswIndex {
    fn dim(&self) -> usize {
        self.store.dim()
    }

    fn len(&self) -> usize {
        self.levels.len()
    }

    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        check_query(query, self.dim())?;
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        let ep = self.greedy_descent(query, 0);
        let ef = self.params.ef_search.max(k);
        let mut found = self.search_layer(query, &[ep], ef, 0, self.len());
        found.truncate(k);
        Ok(found.into_iter().map(|s| (s.row, s.score)).collect())
    }
}
