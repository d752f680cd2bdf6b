//! Ranking: term-at-a-time accumulation of precomputed impacts, and MaxScore dynamic
//! pruning that returns exactly the same top-k.
//!
//! **What a search returns.** The `k` best documents among those containing at least one
//! query term, ordered by score descending, then by document number ascending (ties are
//! frequent with duplicated documents; the order is deterministic). Scores are those of the
//! formulas in [`crate::scoring`], including the `Σ absent_t` part for the variants that
//! have one, so they equal the reference implementations' scores. Query terms unknown to
//! the index are ignored; a repeated query term counts once per occurrence.
//! [`Index::score_all`] gives the score of every document instead.
//!
//! **Exhaustive, accumulator** ([`Strategy::Accumulate`]): for each query term in query
//! order, add `w·impact` of each posting into a dense per-thread accumulator (untouched
//! entries hold `-∞`; first touches are recorded branch-free in a list used for the top-k
//! pass and the reset), then select the top k with a bounded heap whose floor rejects most
//! documents with one comparison.
//!
//! **Exhaustive, tiled** ([`Strategy::Tiled`]): the same sums, range of 8,192 documents by
//! range, into an accumulator that stays in L1 (untouched = `-0.0`); each tile is then
//! scanned in blocks of 16 entries: the k-th largest block maximum bounds the k-th score, and
//! only blocks that reach the bound (or the heap floor) are offered to the heap (the same
//! scan ends the exhaustive search of collections ≤ 65,536 documents). Chosen by [`Strategy::Exhaustive`]
//! for collections of ≥ 65,536 documents when a query has ≥ 1 posting per 8 documents.
//!
//! **MaxScore** ([`Strategy::MaxScore`]): terms sorted by upper bound (largest impact
//! times occurrences in the query); those whose summed bounds cannot lift a document above
//! the current k-th score are non-essential (plus, measured to pay off, one more list is
//! kept essential). Documents are enumerated window by window (4,096 documents) from the
//! essential lists, whose postings are scattered into a window accumulator and bitset; each
//! candidate whose bound still exceeds the k-th score probes the non-essential lists (linear
//! scan, then galloping search) in decreasing bound order while the bound allows entry.
//! Bounds carry a small relative slack, and every fully evaluated document's score is summed
//! in query-term order exactly as the exhaustive paths sum it, so all strategies return
//! bit-identical hits (tested on random corpora). [`Strategy::Auto`] uses MaxScore for
//! multi-term queries with ≥ 65,536 postings.
//!
//! Postings are read in place from the memory map; a document number beyond the index is
//! reported as [`IndexError::Corrupt`], never used to index memory.

use crate::error::IndexError;
use crate::format::{files, SKIP_BLOCK};
use crate::index::Index;
use crate::progress::Progress;
use juris_text::Lang;
use rayon::prelude::*;
use serde::Serialize;
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// One ranked document.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Hit {
    /// Document number (see [`Index::doc`], [`Index::doc_id`]).
    pub doc: u32,
    /// Score under the index's active scorer.
    pub score: f32,
}

/// How to evaluate a query. Every strategy returns the same hits with bit-identical scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// MaxScore for multi-term queries with long postings lists, exhaustive otherwise.
    #[default]
    Auto,
    /// Score every posting of every query term ([`Strategy::Tiled`] for queries with many
    /// postings relative to the collection, [`Strategy::Accumulate`] otherwise).
    Exhaustive,
    /// Exhaustive, with a dense accumulator over all documents and a list of the touched ones.
    Accumulate,
    /// Exhaustive, document range by document range through an L1-sized accumulator.
    Tiled,
    /// MaxScore dynamic pruning.
    MaxScore,
}

/// Options of [`Index::search_terms_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchOptions {
    /// Number of hits wanted.
    pub k: usize,
    /// Evaluation strategy.
    pub strategy: Strategy,
}

impl SearchOptions {
    /// `k` hits, automatic strategy.
    pub fn top(k: usize) -> Self {
        SearchOptions {
            k,
            strategy: Strategy::Auto,
        }
    }
}

/// Entries [`advance`] scans linearly before galloping.
const LINEAR_PROBE: usize = 8;
/// Non-essential lists (by MaxScore's bound) that are nevertheless scanned as essential.
const EXTRA_ESSENTIAL: usize = 1;

/// Documents per MaxScore window (a bitset and an accumulator of this size stay in L1).
const WINDOW: usize = 4096;

/// Exhaustive scoring uses tiles when a query has at least one posting per this many
/// documents (scanning the tiles then costs less than tracking touched documents).
const DENSE_DOCS_PER_POSTING: usize = 8;
/// Below this many documents the touched-list accumulator is faster than tiles (measured:
/// scifact, 5,183 documents: 72k vs 35k q/s; scifact × 97: 1.2k vs 1.5k q/s).
const TILED_MIN_DOCS: usize = 1 << 16;

/// Up to this many documents, exhaustive search scans a per-document accumulator instead of
/// tracking touched documents ([`Index::exhaustive_scan`]).
const SCAN_MAX_DOCS: usize = 1 << 16;

/// Below this many postings in total, Auto scores exhaustively.
const MAXSCORE_MIN_POSTINGS: usize = 1 << 16;

/// A query term resolved against the dictionary.
struct QTerm {
    /// Term number.
    id: u32,
    /// Occurrences in the query.
    w: f32,
    /// Postings range.
    a: usize,
    b: usize,
    /// Upper bound of `w·impact` (≥ 0).
    ub: f64,
}

/// A hit as one integer that orders like the ranking: a larger key is a better hit (score
/// descending in `f32::total_cmp` order, then document ascending). Comparing keys is one
/// integer comparison, where comparing `(score, doc)` pairs cost ~10 instructions; the heap
/// sifts of [`TopK`] went from ~150 to ~70 instructions per offered hit (callgrind).
#[inline]
fn hit_key(score: f32, doc: u32) -> u64 {
    let b = score.to_bits();
    // The usual total-order transform: flip all bits of negatives, the sign bit of the rest.
    let ord = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
    (u64::from(ord) << 32) | u64::from(u32::MAX - doc)
}

/// The `(score, doc)` of a [`hit_key`] (bit-exact).
#[inline]
fn key_hit(key: u64) -> (f32, u32) {
    let ord = (key >> 32) as u32;
    let b = if ord >> 31 == 1 {
        ord & 0x7fff_ffff
    } else {
        !ord
    };
    (f32::from_bits(b), u32::MAX - key as u32)
}

/// The k best (score desc, doc asc) seen so far.
struct TopK {
    k: usize,
    /// Keys of the held hits ([`hit_key`]), worst (smallest key) on top.
    heap: BinaryHeap<Reverse<u64>>,
    /// The worst held score once full, else -inf: anything below it cannot enter.
    floor: f32,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.min(1 << 16) + 1),
            floor: f32::NEG_INFINITY,
        }
    }

    /// The k-th score once k hits are held.
    #[inline]
    fn threshold(&self) -> Option<f32> {
        if self.heap.len() == self.k {
            self.heap.peek().map(|w| key_hit(w.0).0)
        } else {
            None
        }
    }

    /// Offers a hit; returns whether the threshold may have changed.
    #[inline(always)]
    fn push(&mut self, score: f32, doc: u32) -> bool {
        if score < self.floor {
            return false;
        }
        self.push_slow(score, doc)
    }

    #[inline(never)]
    fn push_slow(&mut self, score: f32, doc: u32) -> bool {
        if self.k == 0 {
            return false;
        }
        let e = hit_key(score, doc);
        if self.heap.len() < self.k {
            self.heap.push(Reverse(e));
            if self.heap.len() == self.k {
                self.floor = self.threshold().unwrap_or(f32::NEG_INFINITY);
                return true;
            }
            return false;
        }
        let changed = match self.heap.peek_mut() {
            Some(mut top) if e > top.0 => {
                *top = Reverse(e);
                true
            }
            _ => false,
        };
        if changed {
            self.floor = self.threshold().unwrap_or(f32::NEG_INFINITY);
        }
        changed
    }

    fn into_hits(self) -> Vec<Hit> {
        // Ascending `Reverse` order = descending key = best first.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse(key)| {
                let (score, doc) = key_hit(key);
                Hit { doc, score }
            })
            .collect()
    }
}

/// Per-thread dense accumulator; entries not in use hold `-∞`.
#[derive(Default)]
struct Scratch {
    acc: Vec<f32>,
    touched: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    static SCAN_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static TILE_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCAN_MAXIMA: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Bits of `-0.0f32`, the mark of an untouched tile entry.
const NEG_ZERO: u32 = 0x8000_0000;
/// Documents per tile of the tiled exhaustive path (8192 × 4 bytes: fits L1).
const TILE: usize = 8192;

/// Offers the touched entries at or above `thr` of consecutive rows (document of `rows[r][l]`:
/// `first + 8r + l`) to `top`, raising `thr` with the heap's floor (never below `bound`);
/// returns the last `thr`. Row by row, a bit mask of the entries that pass (vector compares
/// with AVX2), then only those go to the heap: testing each entry with its own branch
/// mispredicted about every other entry (perf: a quarter of the scan; `juris search` on
/// scifact 102–115k → 118–130k q/s). An entry below `thr` cannot enter (see [`scan_reset`]).
#[inline(always)]
fn offer_rows<const AVX2: bool>(
    rows: &[[f32; SCAN_LANES]],
    first: usize,
    mut thr: f32,
    bound: f32,
    absent: f32,
    top: &mut TopK,
) -> f32 {
    for (ri, row) in rows.iter().enumerate() {
        let mut hits = if AVX2 {
            // SAFETY: `AVX2` is true only in `scan_reset_avx2`, called after detection.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                row_mask_avx2(row, thr)
            }
            #[cfg(not(target_arch = "x86_64"))]
            row_mask(row, thr)
        } else {
            row_mask(row, thr)
        };
        if hits == 0 {
            continue;
        }
        let row_first = first + ri * SCAN_LANES;
        while hits != 0 {
            let l = hits.trailing_zeros() as usize;
            hits &= hits - 1;
            top.push(absent + row[l], (row_first + l) as u32);
        }
        thr = scan_threshold(top, absent).max(bound);
    }
    thr
}

/// Bit `l` set iff `row[l]` is touched (not `-0.0`) and at least `thr`.
#[inline(always)]
fn row_mask(row: &[f32; SCAN_LANES], thr: f32) -> u32 {
    let mut hits = 0u32;
    for (l, &v) in row.iter().enumerate() {
        hits |= u32::from(v >= thr && v.to_bits() != NEG_ZERO) << l;
    }
    hits
}

/// [`row_mask`] in three vector instructions and a movemask (the compiler kept the scalar
/// loop's branches).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_mask_avx2(row: &[f32; SCAN_LANES], thr: f32) -> u32 {
    use std::arch::x86_64::{
        _mm256_andnot_ps, _mm256_castps_si256, _mm256_castsi256_ps, _mm256_cmp_ps,
        _mm256_cmpeq_epi32, _mm256_loadu_ps, _mm256_movemask_ps, _mm256_set1_epi32, _mm256_set1_ps,
        _CMP_GE_OQ,
    };
    // SAFETY: `row` holds 8 f32 (an unaligned load reads exactly those).
    let v = unsafe { _mm256_loadu_ps(row.as_ptr()) };
    let ge = _mm256_cmp_ps::<_CMP_GE_OQ>(v, _mm256_set1_ps(thr));
    let untouched = _mm256_castsi256_ps(_mm256_cmpeq_epi32(
        _mm256_castps_si256(v),
        _mm256_set1_epi32(NEG_ZERO as i32),
    ));
    _mm256_movemask_ps(_mm256_andnot_ps(untouched, ge)) as u32
}

/// The relative margin by which [`scan_reset`] lowers its bounds, so that the rounding of
/// `absent + v` cannot matter.
#[inline(always)]
fn scan_margin(x: f32, absent: f32) -> f32 {
    (x.abs() + absent.abs()) * 1e-5 + f32::MIN_POSITIVE
}

/// The accumulator value below which an entry cannot enter `top` (minus the margin).
#[inline(always)]
fn scan_threshold(top: &TopK, absent: f32) -> f32 {
    let floor = top.floor;
    if floor.is_finite() {
        floor - absent - scan_margin(floor, absent)
    } else {
        f32::NEG_INFINITY
    }
}

/// Entries per lane of a [`scan_reset`] group (8 `f32` = one AVX2 register).
const SCAN_LANES: usize = 8;
/// Entries per [`scan_reset`] group: 16 rows of [`SCAN_LANES`].
const SCAN_GROUP: usize = 16 * SCAN_LANES;
/// Groups whose maxima [`scan_reset`] keeps on the stack for its first bound (the exhaustive
/// scan's largest accumulator, [`SCAN_MAX_DOCS`]); a longer accumulator goes without it.
const SCAN_MAX_GROUPS: usize = SCAN_MAX_DOCS / SCAN_GROUP;

/// Most block maxima [`scan_reset`] keeps to bound the k-th score before offering anything;
/// for a larger k it offers every block that passes the heap's own floor.
const BOUND_MAX_K: usize = 64;

/// Offers every touched entry of `acc` (document `base + i` scoring `absent + acc[i]`;
/// untouched entries hold `-0.0`) to `top`, and resets `acc` to `-0.0`.
///
/// Two passes over blocks of 16 entries (a block is one lane of a group of 16 rows of 8, see
/// [`scan_reset_body`]). The first takes each block's largest touched value and the k-th
/// largest of those maxima, `m`: k documents (one per block) score at least `absent + m`, so
/// the final k-th score is at least that — a bound known before the heap sees anything. The
/// second skips groups none of whose blocks reach the bound (or the heap's floor, whichever
/// is higher, lowered by a relative margin so that rounding of `absent + v` cannot matter)
/// and offers the other groups' entries that reach it ([`offer_rows`]). Offering in a single
/// pass let the floor rise only as good documents turned up, so early blocks all passed the
/// test and went through the heap (perf on scifact: 38 % of the search loop in the scan,
/// 10 % in heap pushes). The same hits either way: the heap orders by (score, document),
/// not by arrival. Blocks of contiguous entries (session 9) needed a horizontal maximum per
/// block and a selection among all of them: 19.9k instructions a scifact query against
/// ~11k now (callgrind).
fn scan_reset(acc: &mut [f32], base: usize, absent: f32, top: &mut TopK) {
    SCAN_MAXIMA.with(|cell| {
        let mut maxima = cell.borrow_mut();
        let need = acc.len() / SCAN_GROUP * SCAN_LANES;
        if maxima.len() < need {
            maxima.resize(need, 0.0);
        }
        let maxima = &mut maxima[..need];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { scan_reset_avx2(acc, maxima, base, absent, top) };
        }
        scan_reset_body::<false>(acc, maxima, base, absent, top)
    })
}

/// [`scan_reset`] compiled for AVX2: the maxima, the tests and the reset run 8 lanes wide
/// instead of SSE2's 4 (the release build targets baseline x86-64).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_reset_avx2(
    acc: &mut [f32],
    maxima: &mut [f32],
    base: usize,
    absent: f32,
    top: &mut TopK,
) {
    scan_reset_body::<true>(acc, maxima, base, absent, top)
}

#[inline(always)]
fn scan_reset_body<const AVX2: bool>(
    acc: &mut [f32],
    maxima: &mut [f32],
    base: usize,
    absent: f32,
    top: &mut TopK,
) {
    let (groups, rest) = acc.as_chunks::<SCAN_GROUP>();
    let (maxima, _) = maxima.as_chunks_mut::<SCAN_LANES>();
    // Lane maxima: the element-wise maximum of a group's 16 rows of 8 entries is the largest
    // value of 8 blocks at once (block = one lane of the group: 16 entries 8 apart), in
    // vertical vector max instructions with no horizontal reduction per block. An untouched
    // `-0.0` counts as 0: a k-th largest maximum above 0 comes from touched entries and
    // bounds the k-th score; at or below 0 it may not, and is not used. Each group's own
    // maximum goes into a short list whose k-th largest is a first bound (k documents in
    // distinct groups reach it): the k-th largest lane maximum is at least that, so the
    // selection among lanes only looks at lanes above it.
    let mut group_max = [f32::NEG_INFINITY; SCAN_MAX_GROUPS];
    for ((group, m), gm) in groups
        .iter()
        .zip(maxima.iter_mut())
        .zip(group_max.iter_mut())
    {
        let (rows, _) = group.as_chunks::<SCAN_LANES>();
        *m = rows[0];
        for row in &rows[1..] {
            for (m, &v) in m.iter_mut().zip(row) {
                *m = if v > *m { v } else { *m };
            }
        }
        *gm = m
            .iter()
            .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    }
    let maxima = &maxima[..groups.len()];
    let mut bound = None;
    if let Some(mut sel) = Largest::new(top.k) {
        if groups.len() <= SCAN_MAX_GROUPS {
            for &gm in &group_max[..groups.len()] {
                sel.offer(gm);
            }
            if let (Some(first), Some(mut lanes)) = (sel.kth(), Largest::new(top.k)) {
                // Only groups whose maximum reaches the first bound hold lanes that do.
                for (lane_max, &gm) in maxima.iter().zip(&group_max) {
                    if gm >= first {
                        for &m in lane_max {
                            lanes.offer(m);
                        }
                    }
                }
                bound = lanes.kth();
            }
        } else {
            for &m in maxima.as_flattened() {
                sel.offer(m);
            }
            bound = sel.kth();
        }
    }
    let bound = bound
        .filter(|&m| m > 0.0)
        .map_or(f32::NEG_INFINITY, |m| m - scan_margin(m, absent));
    let mut thr = scan_threshold(top, absent).max(bound);
    for (gi, (group, lane_max)) in groups.iter().zip(maxima).enumerate() {
        if lane_max.iter().all(|&m| m < thr) {
            continue;
        }
        let (rows, _) = group.as_chunks::<SCAN_LANES>();
        thr = offer_rows::<AVX2>(rows, base + gi * SCAN_GROUP, thr, bound, absent, top);
    }
    // The tail (fewer than a group): whole rows as above, then single entries.
    let (rows, last) = rest.as_chunks::<SCAN_LANES>();
    let first = base + groups.len() * SCAN_GROUP;
    offer_rows::<AVX2>(rows, first, thr, bound, absent, top);
    let first = first + rows.len() * SCAN_LANES;
    for (j, v) in last.iter().enumerate() {
        if v.to_bits() != NEG_ZERO {
            top.push(absent + *v, (first + j) as u32);
        }
    }
    acc.fill(-0.0);
}

/// The k largest values offered so far (k at most [`BOUND_MAX_K`]), held in descending
/// order: a newcomer above the smallest drops it and moves up past the smaller ones. Most
/// values fail the first comparison, and a replacement usually stops after a step or two;
/// the former unsorted array re-found its smallest with k comparisons per replacement
/// (~3.3k instructions a scifact query), `select_nth_unstable` cost ~9k. A plain struct,
/// not an iterator pipeline, so that it is compiled inside the AVX2 copy of [`scan_reset`]
/// (closures were not).
struct Largest {
    held: [f32; BOUND_MAX_K],
    k: usize,
}

impl Largest {
    /// `None` for k = 0 or k > [`BOUND_MAX_K`].
    #[inline(always)]
    fn new(k: usize) -> Option<Largest> {
        (k > 0 && k <= BOUND_MAX_K).then_some(Largest {
            held: [f32::NEG_INFINITY; BOUND_MAX_K],
            k,
        })
    }

    #[inline(always)]
    fn offer(&mut self, x: f32) {
        let held = &mut self.held[..self.k];
        let mut j = held.len() - 1;
        if x > held[j] {
            while j > 0 && held[j - 1] < x {
                held[j] = held[j - 1];
                j -= 1;
            }
            held[j] = x;
        }
    }

    /// The k-th largest value offered, once k finite values were.
    #[inline(always)]
    fn kth(&self) -> Option<f32> {
        let low = self.held[self.k - 1];
        low.is_finite().then_some(low)
    }
}

/// The k-th largest finite value of `xs` (see [`Largest`]).
#[cfg(test)]
fn kth_largest(xs: &[f32], k: usize) -> Option<f32> {
    let mut sel = Largest::new(k)?;
    for &x in xs {
        sel.offer(x);
    }
    sel.kth()
}

/// Smallest position `≥ pos` whose document is `≥ target` (lists ascend): a short linear
/// scan (most jumps are short and the next cache lines are being prefetched anyway), then
/// galloping and binary search for long jumps.
#[inline]
fn advance(docs: &[u32], pos: usize, target: u32) -> usize {
    let Some(rest) = docs.get(pos..) else {
        return pos;
    };
    let near = rest.len().min(LINEAR_PROBE);
    if let Some(i) = rest[..near].iter().position(|&x| x >= target) {
        return pos + i;
    }
    if near == rest.len() {
        return docs.len();
    }
    gallop(docs, pos + near - 1, LINEAR_PROBE, target)
}

/// Smallest index `> from` whose value is `≥ target` (`xs.len()` if none), given ascending
/// `xs` with `xs[from] < target`: probes `from + step`, `from + 2·step`, `from + 4·step` …
/// until one reaches the target, then binary-searches the last span.
#[inline]
fn gallop(xs: &[u32], from: usize, step: usize, target: u32) -> usize {
    let (mut lo, mut step) = (from, step);
    let mut hi = from + step;
    while hi < xs.len() && xs[hi] < target {
        lo = hi;
        step *= 2;
        hi = from + step;
    }
    let hi = hi.min(xs.len());
    lo + 1 + xs[lo + 1..hi].partition_point(|&x| x < target)
}

/// The block of a list (its skip entries `skips`, [`crate::format::skip_start`]) that holds
/// the first position `≥ pos` whose document is `≥ target`, found by galloping from `pos`'s
/// block in the skip table, which is 1/16 of the list and mostly in cache; `skips.len()` when
/// no block does.
#[inline]
fn locate(skips: &[u32], pos: usize, target: u32) -> usize {
    let j = pos / SKIP_BLOCK;
    if j >= skips.len() || skips[j] >= target {
        return j;
    }
    gallop(skips, j, 1, target)
}

/// Asks the CPU to fetch block `j`'s documents and impacts (≤ 2 cache lines each) while
/// other work goes on: a probe of a long list in a large index otherwise waits for memory
/// twice, once for the document and once for its impact.
#[inline]
fn prefetch_block(docs: &[u32], imps: &[f32], j: usize) {
    // SAFETY: a prefetch is a hint that never faults, whatever the address; the pointers are
    // formed with `wrapping_add` and never dereferenced.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = docs.as_ptr().wrapping_add(j * SKIP_BLOCK) as *const i8;
        _mm_prefetch(p, _MM_HINT_T0);
        _mm_prefetch(p.wrapping_add(60), _MM_HINT_T0);
        let p = imps.as_ptr().wrapping_add(j * SKIP_BLOCK) as *const i8;
        _mm_prefetch(p, _MM_HINT_T0);
        _mm_prefetch(p.wrapping_add(60), _MM_HINT_T0);
    }
}

/// The first position `≥ pos` of block `j` whose document is `≥ target` (the block's end if
/// none: only with a corrupt skip table), or `docs.len()` past the last block.
#[inline]
fn scan_block(docs: &[u32], pos: usize, j: usize, target: u32) -> usize {
    if j * SKIP_BLOCK >= docs.len() {
        return docs.len();
    }
    let start = pos.max(j * SKIP_BLOCK);
    let end = ((j + 1) * SKIP_BLOCK).min(docs.len());
    start
        + docs[start..end]
            .iter()
            .position(|&x| x >= target)
            .unwrap_or(end - start)
}

/// Adds `weight(imp[i])` into `acc[docs[i] & mask]` for every posting; `acc` has `mask + 1`
/// entries, so the mask keeps every index in bounds without a check. Eight postings per
/// step: callgrind per scifact query 24k → 20k instructions for the ~3,650 postings (the
/// compiler's own unrolling by two kept a loop counter and a bounds test per pair).
#[inline(always)]
fn add_postings(
    acc: &mut [f32],
    mask: usize,
    docs: &[u32],
    imp: &[f32],
    weight: impl Fn(f32) -> f32,
) {
    let (d8, d_rest) = docs.as_chunks::<8>();
    let (x8, x_rest) = imp.as_chunks::<8>();
    for (d, x) in d8.iter().zip(x8) {
        for (&d, &x) in d.iter().zip(x) {
            acc[d as usize & mask] += weight(x);
        }
    }
    // `docs` and `imp` have the same length, so their remainders pair up.
    for (&d, &x) in d_rest.iter().zip(x_rest) {
        acc[d as usize & mask] += weight(x);
    }
}

/// MaxScore prefetches the first non-essential list's block for the candidate this many
/// places ahead (measured on scifact × 97: 1 to 4 within noise, 8 slower).
const LOOKAHEAD: usize = 3;

/// Adds `w·imp` of the leading postings with `w0 ≤ doc < w0 + WINDOW` into `wacc` and marks
/// them in `mask`; returns how many postings it took. One test per posting: `off` is below
/// WINDOW exactly for `w0 ≤ d < w0 + WINDOW` (a document below `w0` wraps around to a huge
/// offset). A function of its own so that its few live values stay in registers (inside
/// `maxscore` they were reloaded from the stack for every posting).
///
/// The sums are `f32`: they only bound a candidate's score (the exact score is recomputed in
/// query order), and the rounding of ≤ a few dozen `f32` additions (relative ~1e-6) is well
/// inside the relative slack of 1e-5 that every MaxScore comparison keeps.
#[inline(never)]
fn scatter_window(
    docs: &[u32],
    imps: &[f32],
    w: f32,
    w0: u32,
    wacc: &mut [f32; WINDOW],
    mask: &mut [u64; WINDOW / 64],
) -> usize {
    let mut taken = 0usize;
    if w == 1.0 {
        for (&d, &im) in docs.iter().zip(imps) {
            let off = d.wrapping_sub(w0) as usize;
            if off >= WINDOW {
                break;
            }
            wacc[off] += im;
            mask[off >> 6] |= 1u64 << (off & 63);
            taken += 1;
        }
    } else {
        for (&d, &im) in docs.iter().zip(imps) {
            let off = d.wrapping_sub(w0) as usize;
            if off >= WINDOW {
                break;
            }
            wacc[off] += w * im;
            mask[off >> 6] |= 1u64 << (off & 63);
            taken += 1;
        }
    }
    taken
}

/// Takes every marked entry of the window (clearing `wacc` and `mask`) and keeps those whose
/// partial sum is above `cut`, in ascending order; returns how many it kept. Branch-free
/// (each entry is written, the count moves only for a kept one): on scifact × 97 about one
/// marked entry in 18 is kept, and separating this tight pass from the probes of the kept
/// ones let the probes be prefetched ahead ([`LOOKAHEAD`]).
#[inline(never)]
fn collect_window(
    wacc: &mut [f32; WINDOW],
    mask: &mut [u64; WINDOW / 64],
    cut: f64,
    offs: &mut [u32; WINDOW],
    parts: &mut [f32; WINDOW],
) -> usize {
    let mut n = 0usize;
    for (wi, slot) in mask.iter_mut().enumerate() {
        let mut word = std::mem::take(slot);
        while word != 0 {
            let off = (wi * 64 + word.trailing_zeros() as usize) & (WINDOW - 1);
            word &= word - 1;
            let p = std::mem::take(&mut wacc[off]);
            let i = n & (WINDOW - 1);
            offs[i] = off as u32;
            parts[i] = p;
            n += usize::from(f64::from(p) > cut);
        }
    }
    n
}

impl Index {
    /// Resolves query terms: known terms in first-occurrence order with their counts, and
    /// `Σ w·absent`.
    fn prepare<S: AsRef<str>>(&self, terms: &[S]) -> Result<(Vec<QTerm>, f32), IndexError> {
        self.prepare_ids(terms.iter().filter_map(|t| self.data.find_term(t.as_ref())))
    }

    /// [`Index::prepare`] for the term numbers of the known query terms, in query order.
    fn prepare_ids(
        &self,
        term_ids: impl Iterator<Item = u32>,
    ) -> Result<(Vec<QTerm>, f32), IndexError> {
        let (_, term_w) = self.weights();
        let cap = term_ids.size_hint().1.unwrap_or(0);
        let mut ids: Vec<u32> = Vec::with_capacity(cap);
        let mut q: Vec<QTerm> = Vec::with_capacity(cap);
        for id in term_ids {
            if let Some(i) = ids.iter().position(|&x| x == id) {
                q[i].w += 1.0;
                continue;
            }
            let (a, b) = self.data.postings_range(id)?;
            ids.push(id);
            q.push(QTerm {
                id,
                w: 1.0,
                a,
                b,
                ub: 0.0,
            });
        }
        let mut absent_sum = 0f32;
        for (qt, &id) in q.iter_mut().zip(&ids) {
            let i = id as usize * 2;
            let (absent, max) = match (term_w.get(i), term_w.get(i + 1)) {
                (Some(&a), Some(&m)) => (a, m),
                _ => {
                    return Err(IndexError::corrupt(
                        self.data.file_path(files::TERMS_W),
                        format!("no weights for term {id}"),
                    ))
                }
            };
            // Repeated terms: w·absent equals absent added w times up to rounding.
            absent_sum += qt.w * absent;
            qt.ub = f64::from(qt.w) * f64::from(max.max(0.0));
        }
        Ok((q, absent_sum))
    }

    fn corrupt_doc(&self, doc: u32) -> IndexError {
        IndexError::corrupt(
            self.data.file_path(files::POSTINGS_DOC),
            format!(
                "posting names document {doc}, the index holds {}",
                self.data.n_docs
            ),
        )
    }

    /// Analyzes `query` with the index's analyzers (language detected) and returns the top
    /// `k` hits.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, IndexError> {
        self.search_lang(query, None, k)
    }

    /// Like [`Index::search`], analyzing the query as `lang` when given (unless the index
    /// fixes one language).
    pub fn search_lang(
        &self,
        query: &str,
        lang: Option<Lang>,
        k: usize,
    ) -> Result<Vec<Hit>, IndexError> {
        self.search_lang_with(query, lang, &SearchOptions::top(k))
    }

    /// Like [`Index::search_lang`], with options (e.g. a forced [`Strategy`]).
    pub fn search_lang_with(
        &self,
        query: &str,
        lang: Option<Lang>,
        opts: &SearchOptions,
    ) -> Result<Vec<Hit>, IndexError> {
        // Terms are looked up as the analyzer hands them out: no string is allocated.
        let mut ids: Vec<u32> = Vec::with_capacity(16);
        self.analyzers.analyze_with(query, lang, &mut |t| {
            if let Some(id) = self.data.find_term(t) {
                ids.push(id);
            }
        })?;
        let (q, absent) = self.prepare_ids(ids.into_iter())?;
        self.search_prepared(q, absent, opts)
    }

    /// The top `k` hits for already-analyzed query terms.
    pub fn search_terms<S: AsRef<str>>(
        &self,
        terms: &[S],
        k: usize,
    ) -> Result<Vec<Hit>, IndexError> {
        self.search_terms_with(terms, &SearchOptions::top(k))
    }

    /// The top hits for already-analyzed query terms, with options.
    pub fn search_terms_with<S: AsRef<str>>(
        &self,
        terms: &[S],
        opts: &SearchOptions,
    ) -> Result<Vec<Hit>, IndexError> {
        let (q, absent) = self.prepare(terms)?;
        self.search_prepared(q, absent, opts)
    }

    /// Ranks resolved query terms.
    fn search_prepared(
        &self,
        q: Vec<QTerm>,
        absent: f32,
        opts: &SearchOptions,
    ) -> Result<Vec<Hit>, IndexError> {
        if q.is_empty() || opts.k == 0 {
            return Ok(Vec::new());
        }
        let total: usize = q.iter().map(|t| t.b - t.a).sum();
        let n_docs = self.data.n_docs as usize;
        let dense =
            n_docs >= TILED_MIN_DOCS && total.saturating_mul(DENSE_DOCS_PER_POSTING) >= n_docs;
        let strategy = match opts.strategy {
            Strategy::Auto if q.len() > 1 && total >= MAXSCORE_MIN_POSTINGS => Strategy::MaxScore,
            Strategy::Auto | Strategy::Exhaustive if dense => Strategy::Tiled,
            Strategy::Auto | Strategy::Exhaustive => Strategy::Accumulate,
            s => s,
        };
        match strategy {
            Strategy::MaxScore => self.maxscore(&q, absent, opts.k),
            Strategy::Tiled => self.tiled(&q, absent, opts.k),
            _ => self.exhaustive(&q, absent, opts.k),
        }
    }

    /// Searches many `(query text, language hint)` pairs in parallel on the current rayon
    /// pool (analysis included); results come back in input order. `progress` receives one
    /// unit per query.
    pub fn search_batch(
        &self,
        queries: &[(String, Option<Lang>)],
        k: usize,
        progress: &dyn Progress,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        queries
            .par_iter()
            .map(|(text, lang)| {
                let r = self.search_lang(text, *lang, k);
                progress.inc(1);
                r
            })
            .collect()
    }

    /// Like [`Index::search_batch`] for already-analyzed queries.
    pub fn search_terms_batch<S: AsRef<str> + Sync>(
        &self,
        queries: &[Vec<S>],
        k: usize,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        queries
            .par_iter()
            .map(|terms| self.search_terms(terms, k))
            .collect()
    }

    /// Accumulates `w·impact` of every posting into the thread's accumulator, calls `f`
    /// with the accumulator and the touched documents, then resets the accumulator.
    fn accumulate<R>(
        &self,
        q: &[QTerm],
        f: impl FnOnce(&[f32], &[u32]) -> R,
    ) -> Result<R, IndexError> {
        let (imps, _) = self.weights();
        let docs_all = self.data.post_doc();
        let n = self.data.n_docs as usize;
        SCRATCH.with(|cell| {
            let mut s = cell.borrow_mut();
            let Scratch { acc, touched } = &mut *s;
            if acc.len() < n {
                acc.resize(n, f32::NEG_INFINITY);
            }
            // Every document enters `touched` at most once per query.
            if touched.len() < n {
                touched.resize(n, 0);
            }
            let acc = &mut acc[..n];
            let touched = &mut touched[..n];
            let mut n_touched = 0usize;
            let mut bad: Option<u32> = None;
            'terms: for t in q {
                let (Some(docs), Some(imp)) = (docs_all.get(t.a..t.b), imps.get(t.a..t.b)) else {
                    bad = Some(u32::MAX);
                    break;
                };
                let w = t.w;
                for (&d, &i) in docs.iter().zip(imp) {
                    let c = w * i;
                    let Some(slot) = acc.get_mut(d as usize) else {
                        bad = Some(d);
                        break 'terms;
                    };
                    // Branch-free first-touch bookkeeping: the slot holds -inf until touched.
                    let old = *slot;
                    let fresh = old == f32::NEG_INFINITY;
                    *slot = if fresh { c } else { old + c };
                    if let Some(x) = touched.get_mut(n_touched) {
                        *x = d;
                    }
                    n_touched += usize::from(fresh);
                }
            }
            let touched = &touched[..n_touched.min(n)];
            let r = if bad.is_none() {
                Some(f(acc, touched))
            } else {
                None
            };
            for &d in touched {
                acc[d as usize] = f32::NEG_INFINITY;
            }
            match (r, bad) {
                (Some(r), _) => Ok(r),
                (None, Some(d)) => Err(self.corrupt_doc(d)),
                (None, None) => Err(self.corrupt_doc(u32::MAX)),
            }
        })
    }

    fn exhaustive(&self, q: &[QTerm], absent: f32, k: usize) -> Result<Vec<Hit>, IndexError> {
        if (self.data.n_docs as usize) <= SCAN_MAX_DOCS {
            return self.exhaustive_scan(q, absent, k);
        }
        self.accumulate(q, |acc, touched| {
            let mut top = TopK::new(k);
            for &d in touched {
                top.push(absent + acc[d as usize], d);
            }
            top.into_hits()
        })
    }

    /// Exhaustive scoring of a small collection: one accumulator entry per document, holding
    /// `-0.0` until touched (no sum of impacts produces `-0.0`, as in [`Index::tiled`]), so
    /// the per-posting work is a plain add with no first-touch bookkeeping; then one scan of
    /// the accumulator feeds the heap and resets it. Same sums in the same order as
    /// [`Index::accumulate`], hence bit-identical hits. Measured by callgrind on scifact
    /// (5,183 documents, ~3,650 postings per query): ~39 → ~8 instructions per posting, plus
    /// ~2 per document for the scan; since then ~6.5 per posting (no bounds check, no multiply
    /// for terms that occur once) and ~1.8 per document ([`scan_reset`]).
    fn exhaustive_scan(&self, q: &[QTerm], absent: f32, k: usize) -> Result<Vec<Hit>, IndexError> {
        let (imps, _) = self.weights();
        let docs_all = self.data.post_doc();
        let n = self.data.n_docs as usize;
        if n == 0 {
            return Ok(Vec::new());
        }
        let last = n - 1;
        // A power-of-two accumulator lets `d & mask` keep every index in bounds with one
        // instruction (a `min(last)` cost ~4 per posting); the padding past `n` only ever
        // receives postings of a corrupt list, reported below, and is never read, so it is
        // not reset either (resetting it cost ~2 % of a scifact query).
        let size = n.next_power_of_two();
        let mask = size - 1;
        SCAN_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() != size {
                *buf = vec![-0.0f32; size];
            }
            // Sliced to `mask + 1` so that the compiler sees `d & mask` is in bounds: the
            // posting loop below then has no bounds check (callgrind: 11 → 6.5 instructions
            // per posting).
            let acc = &mut buf[..=mask];
            // Postings naming a document beyond the index (a corrupt file) are clamped to the
            // last document so that the hot loop needs no branch, and reported after it.
            let mut beyond = false;
            for t in q {
                let (Some(docs), Some(imp)) = (docs_all.get(t.a..t.b), imps.get(t.a..t.b)) else {
                    beyond = true;
                    break;
                };
                // Lists ascend, so the last document is the largest; the mask keeps even a
                // corrupt, unsorted list in bounds (wrong scores, never a panic).
                beyond |= docs.last().is_some_and(|&d| d as usize > last);
                let w = t.w;
                if w == 1.0 {
                    // Most query terms occur once; `1.0 * x` is exactly `x`, so skipping the
                    // multiply changes no bit (one instruction less per posting).
                    add_postings(acc, mask, docs, imp, |x| x);
                } else {
                    add_postings(acc, mask, docs, imp, |x| w * x);
                }
            }
            let mut top = TopK::new(k);
            scan_reset(&mut acc[..n], 0, absent, &mut top);
            if beyond {
                let bad = q
                    .iter()
                    .filter_map(|t| docs_all.get(t.a..t.b))
                    .flat_map(|docs| docs.iter().copied())
                    .find(|&d| d as usize > last)
                    .unwrap_or(u32::MAX);
                return Err(self.corrupt_doc(bad));
            }
            Ok(top.into_hits())
        })
    }

    /// Exhaustive scoring in tiles of [`TILE`] documents: every term adds its postings of the
    /// tile into a small accumulator that stays in the L1 cache (untouched entries hold
    /// `-0.0`, which no sum of impacts can produce), then the tile is scanned for hits and
    /// reset. Same arithmetic, in the same order, as [`Index::exhaustive`].
    fn tiled(&self, q: &[QTerm], absent: f32, k: usize) -> Result<Vec<Hit>, IndexError> {
        let (imps, _) = self.weights();
        let docs_all = self.data.post_doc();
        let n = self.data.n_docs as usize;
        let mut lists: Vec<(&[u32], &[f32], f32)> = Vec::with_capacity(q.len());
        for t in q {
            let (Some(docs), Some(im)) = (docs_all.get(t.a..t.b), imps.get(t.a..t.b)) else {
                return Err(self.corrupt_doc(u32::MAX));
            };
            lists.push((docs, im, t.w));
        }
        let mut pos = vec![0usize; lists.len()];
        let mut top = TopK::new(k);
        TILE_BUF.with(|cell| {
            let mut tile = cell.borrow_mut();
            if tile.len() != TILE {
                *tile = vec![-0.0f32; TILE];
            }
            let tile = &mut tile[..];
            let mut t0 = 0usize;
            let mut bad = None;
            'tiles: while t0 < n {
                let t1 = (t0 + TILE).min(n);
                for ((docs, im, w), p) in lists.iter().zip(pos.iter_mut()) {
                    let mut i = *p;
                    let (docs, im) = (&docs[i..], &im[i..]);
                    for (&d, &x) in docs.iter().zip(im) {
                        if d as usize >= t1 {
                            break;
                        }
                        match tile.get_mut((d as usize).wrapping_sub(t0)) {
                            Some(slot) => *slot += w * x,
                            None => {
                                bad = Some(d);
                                break 'tiles;
                            }
                        }
                        i += 1;
                    }
                    *p = i;
                }
                scan_reset(&mut tile[..t1 - t0], t0, absent, &mut top);
                t0 = t1;
            }
            if bad.is_some() {
                tile.fill(-0.0);
            }
            // Postings left over name documents beyond the index.
            let leftover = lists
                .iter()
                .zip(&pos)
                .find_map(|((docs, _, _), &p)| docs.get(p).copied());
            match bad.or(leftover) {
                Some(d) => Err(self.corrupt_doc(d)),
                None => Ok(top.into_hits()),
            }
        })
    }

    /// The score of every document (index = document number) for analyzed query terms,
    /// computed exhaustively; documents without any query term get `Σ absent_t`.
    pub fn score_all<S: AsRef<str>>(&self, terms: &[S]) -> Result<Vec<f32>, IndexError> {
        let (q, absent) = self.prepare(terms)?;
        let mut out = vec![absent; self.data.n_docs as usize];
        self.accumulate(&q, |acc, touched| {
            for &d in touched {
                out[d as usize] = absent + acc[d as usize];
            }
        })?;
        Ok(out)
    }

    fn maxscore(&self, q: &[QTerm], absent: f32, k: usize) -> Result<Vec<Hit>, IndexError> {
        struct Cur<'a> {
            docs: &'a [u32],
            imps: &'a [f32],
            pos: usize,
            w: f32,
            orig: usize,
            skips: &'a [u32],
        }
        let (imps, _) = self.weights();
        let docs_all = self.data.post_doc();
        let n_docs = self.data.n_docs;
        let mut order: Vec<usize> = (0..q.len()).collect();
        order.sort_by(|&a, &b| q[a].ub.total_cmp(&q[b].ub));
        let mut curs: Vec<Cur> = Vec::with_capacity(q.len());
        for &orig in &order {
            let t = &q[orig];
            let (Some(docs), Some(im)) = (docs_all.get(t.a..t.b), imps.get(t.a..t.b)) else {
                return Err(self.corrupt_doc(u32::MAX));
            };
            curs.push(Cur {
                docs,
                imps: im,
                pos: 0,
                w: t.w,
                orig,
                skips: self.data.skips(t.id, t.a, t.b)?,
            });
        }
        let n = curs.len();
        let mut prefix = vec![0f64; n + 1];
        for i in 0..n {
            prefix[i + 1] = prefix[i] + q[order[i]].ub;
        }
        let base = f64::from(absent);
        let slack = 1e-5 * (base.abs() + prefix[n]) + 1e-12;
        // contrib[orig] is valid for the current document iff seen[orig] == that document.
        let mut contrib = vec![0f32; n];
        let mut seen = vec![u32::MAX; n];
        let mut fpos = vec![0usize; n];
        let mut blk = vec![0usize; n];
        let mut top = TopK::new(k);
        // Terms 0..first_ess are non-essential: their bounds sum to at most the threshold.
        let mut min_ess = 0usize;
        let mut threshold = f64::NEG_INFINITY;
        // Fixed-size arrays: an offset checked against WINDOW indexes them without bounds checks.
        let mut wacc: Box<[f32; WINDOW]> = Box::new([0f32; WINDOW]);
        let mut surv_off: Box<[u32; WINDOW]> = Box::new([0u32; WINDOW]);
        let mut surv_part: Box<[f32; WINDOW]> = Box::new([0f32; WINDOW]);
        let mut mask: Box<[u64; WINDOW / 64]> = Box::new([0u64; WINDOW / 64]);
        loop {
            // Next window: starts at the smallest current document of an essential list.
            let mut w0 = u32::MAX;
            if min_ess >= n {
                break; // no document can beat the k-th score any more
            }
            // One list more than MaxScore's minimum is treated as essential: scattering it
            // (sequential) is cheaper than probing it for every candidate (measured).
            let first_ess = min_ess.saturating_sub(EXTRA_ESSENTIAL);
            for c in &curs[first_ess..] {
                if let Some(&x) = c.docs.get(c.pos) {
                    w0 = w0.min(x);
                }
            }
            if w0 == u32::MAX {
                break;
            }
            if u64::from(w0) >= n_docs {
                return Err(self.corrupt_doc(w0));
            }
            // Scatter the essential lists' postings of the window (bounds only: any order).
            for (i, c) in curs.iter_mut().enumerate().skip(first_ess) {
                fpos[i] = c.pos;
                let w = c.w;
                let docs = c.docs.get(c.pos..).unwrap_or_default();
                let imps = c.imps.get(c.pos..).unwrap_or_default();
                let taken = scatter_window(docs, imps, w, w0, &mut wacc, &mut mask);
                // d ≥ w0 because w0 is the minimum and lists ascend: a list that does not
                // ascend is corrupt.
                if let Some(&d) = docs.get(taken).filter(|&&d| d < w0) {
                    return Err(self.corrupt_doc(d));
                }
                c.pos += taken;
            }
            // Candidates: documents of the window whose essential sum plus every non-essential
            // bound can beat the threshold (each is checked again below, against the
            // threshold of the moment).
            let noness_bound = prefix[first_ess];
            let cut = threshold - base - noness_bound - slack;
            let n_surv = collect_window(&mut wacc, &mut mask, cut, &mut surv_off, &mut surv_part);
            for si in 0..n_surv {
                // Survivors come in ascending order, so the block a later one needs is known
                // now: fetching it early overlaps its memory wait with this one's probes.
                if first_ess > 0 && si + LOOKAHEAD < n_surv {
                    let c = &curs[first_ess - 1];
                    let ahead = w0.wrapping_add(surv_off[si + LOOKAHEAD]);
                    prefetch_block(c.docs, c.imps, locate(c.skips, c.pos, ahead));
                }
                let off = surv_off[si];
                let partial = f64::from(surv_part[si]);
                if base + partial + noness_bound + slack <= threshold {
                    continue;
                }
                let d = w0.wrapping_add(off);
                if u64::from(d) >= n_docs {
                    return Err(self.corrupt_doc(d));
                }
                let mut bound = partial;
                let mut alive = true;
                if first_ess > 0 {
                    let i = first_ess - 1;
                    let c = &curs[i];
                    let j = locate(c.skips, c.pos, d);
                    blk[i] = j;
                    prefetch_block(c.docs, c.imps, j);
                }
                for i in (0..first_ess).rev() {
                    if base + bound + prefix[i + 1] + slack <= threshold {
                        alive = false;
                        break;
                    }
                    if i > 0 {
                        let c = &curs[i - 1];
                        let j = locate(c.skips, c.pos, d);
                        blk[i - 1] = j;
                        prefetch_block(c.docs, c.imps, j);
                    }
                    let c = &mut curs[i];
                    let p = scan_block(c.docs, c.pos, blk[i], d);
                    c.pos = p;
                    if c.docs.get(p) == Some(&d) {
                        let v = c.w * c.imps.get(p).copied().unwrap_or(0.0);
                        contrib[c.orig] = v;
                        seen[c.orig] = d;
                        bound += f64::from(v);
                    }
                }
                if !alive {
                    continue;
                }
                for i in first_ess..n {
                    let c = &curs[i];
                    fpos[i] = advance(c.docs, fpos[i], d);
                    if c.docs.get(fpos[i]) == Some(&d) {
                        contrib[c.orig] = c.w * c.imps.get(fpos[i]).copied().unwrap_or(0.0);
                        seen[c.orig] = d;
                    }
                }
                // The exact score, summed in query order as the exhaustive path sums it.
                let mut s: Option<f32> = None;
                for (v, &seen_doc) in contrib.iter().zip(&seen) {
                    if seen_doc == d {
                        s = Some(match s {
                            None => *v,
                            Some(x) => x + *v,
                        });
                    }
                }
                let Some(s) = s else { continue };
                if top.push(absent + s, d) {
                    if let Some(th) = top.threshold() {
                        threshold = f64::from(th);
                    }
                }
            }
            while min_ess < n && base + prefix[min_ess + 1] + slack <= threshold {
                min_ess += 1;
            }
        }
        Ok(top.into_hits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_finds_first_not_less() {
        let docs = [1u32, 3, 5, 7, 9, 11, 13, 15, 17];
        for pos in 0..docs.len() {
            for target in 0..20 {
                let want = (pos..docs.len())
                    .find(|&i| docs[i] >= target)
                    .unwrap_or(docs.len());
                assert_eq!(
                    advance(&docs, pos, target),
                    want,
                    "pos {pos} target {target}"
                );
            }
        }
    }

    #[test]
    fn hit_keys_order_like_the_ranking() {
        let scores = [
            f32::NEG_INFINITY,
            -3.5,
            -f32::MIN_POSITIVE,
            -0.0,
            0.0,
            f32::MIN_POSITIVE,
            1.0,
            1.0 + f32::EPSILON,
            f32::MAX,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        let docs = [0u32, 1, 7, u32::MAX - 1, u32::MAX];
        for &s1 in &scores {
            for &d1 in &docs {
                assert_eq!(key_hit(hit_key(s1, d1)).0.to_bits(), s1.to_bits());
                assert_eq!(key_hit(hit_key(s1, d1)).1, d1);
                for &s2 in &scores {
                    for &d2 in &docs {
                        // Better = higher score (total order), then lower document.
                        let better = s2.total_cmp(&s1).then(d1.cmp(&d2));
                        assert_eq!(hit_key(s2, d2).cmp(&hit_key(s1, d1)), better);
                    }
                }
            }
        }
    }

    #[test]
    fn topk_orders_by_score_then_doc() {
        let mut t = TopK::new(3);
        for (s, d) in [(1.0, 5), (2.0, 9), (2.0, 3), (0.5, 1), (2.0, 1), (1.0, 0)] {
            t.push(s, d);
        }
        let hits: Vec<(f32, u32)> = t
            .into_hits()
            .into_iter()
            .map(|h| (h.score, h.doc))
            .collect();
        assert_eq!(hits, vec![(2.0, 1), (2.0, 3), (2.0, 9)]);
    }

    #[test]
    fn kth_largest_matches_a_sort() {
        let xs: Vec<f32> = (0..300u32)
            .map(|i| ((i * 7919) % 613) as f32 - 200.0)
            .collect();
        for k in [1, 2, 10, 64] {
            let mut sorted = xs.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            assert_eq!(kth_largest(&xs, k), Some(sorted[k - 1]), "k {k}");
        }
        assert_eq!(kth_largest(&xs[..5], 10), None, "fewer values than k");
        assert_eq!(kth_largest(&xs, 65), None, "k above the bound's limit");
        assert_eq!(kth_largest(&xs, 0), None);
    }

    /// The scan's hits equal a full sort of the touched entries, for positive and negative
    /// sums (Robertson idf can be negative), ties, few touched entries, a non-zero `absent`
    /// and a tail shorter than a block; and the accumulator is reset.
    #[test]
    fn scan_reset_equals_sorting_the_touched_entries() {
        // A tail of single entries, and a tail of whole rows and single entries.
        for (case, absent, n) in [
            (0u32, 0.0f32, 647),
            (1, 1.5, 647),
            (2, -0.75, 647),
            (3, 0.0, 647),
            (4, 0.0, 647),
            (0, 0.0, 128 * 5 + 29),
            (1, 1.5, 128 * 5 + 29),
            (2, -0.75, 128 * 5 + 29),
        ] {
            let mut acc = vec![-0.0f32; n];
            for (i, v) in acc.iter_mut().enumerate() {
                let i = i as u32;
                let touched = match case {
                    // Whole blocks, then blocks with one touched entry: counting untouched
                    // entries as 0 would let those blocks' maxima hide the negative ones.
                    2 => i < 320 || i.is_multiple_of(16),
                    3 => i % 97 == 5, // fewer touched blocks than k for large k
                    _ => !(i * 31 + case).is_multiple_of(5),
                };
                if touched {
                    *v = match case {
                        2 => -(((i * 13) % 17) as f32) / 4.0 - 0.25, // all negative
                        4 => 1.0,                                    // all tied
                        _ => ((i * 7919 + case) % 101) as f32 / 8.0 - 3.0,
                    };
                }
            }
            for k in [1, 10, 64, 100] {
                let mut want: Vec<(f32, u32)> = acc
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.to_bits() != NEG_ZERO)
                    .map(|(d, v)| (absent + v, d as u32 + 1000))
                    .collect();
                want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                want.truncate(k);
                let mut scratch = acc.clone();
                let mut top = TopK::new(k);
                scan_reset(&mut scratch, 1000, absent, &mut top);
                let got: Vec<(f32, u32)> =
                    top.into_hits().iter().map(|h| (h.score, h.doc)).collect();
                assert_eq!(got, want, "case {case}, k {k}");
                assert!(scratch.iter().all(|v| v.to_bits() == NEG_ZERO));
            }
        }
    }
}
