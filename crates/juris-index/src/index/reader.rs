//! Opening an index: the memory-mapped files of one generation ([`Index`]).

use super::weights::{self, WeightError};
use crate::corpus::Document;
use crate::error::IndexError;
use crate::format::{self, check_offsets, files, Bytes, Column, Manifest};
use crate::scoring::ScorerConfig;
use juris_text::{AnalyzerSet, AnalyzerSpec};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The files of one generation, mapped.
pub(crate) struct Data {
    pub gen_dir: PathBuf,
    pub n_docs: u64,
    pub n_terms: u64,
    pub n_postings: u64,
    pub total_terms: u64,
    terms_dat: Bytes,
    terms_off: Column<u64>,
    term_w: Column<f32>,
    post_off: Column<u64>,
    post_doc: Column<u32>,
    post_tf: Column<u32>,
    post_imp: Column<f32>,
    post_skip: Column<u32>,
    doc_len: Column<u32>,
    ids_dat: Bytes,
    ids_off: Column<u64>,
    ids_sort: Column<u32>,
    store_dat: Bytes,
    store_off: Column<u64>,
    /// Term numbers by hash of the term (built on first lookup).
    term_table: std::sync::OnceLock<TermTable>,
}

/// Open-addressing hash table (linear probing) of term numbers; `EMPTY_SLOT` marks a free
/// slot. Its size is a power of two, `1 << bits`, with at least one free slot.
pub(crate) struct TermTable {
    slots: Vec<u32>,
    bits: u32,
}

const EMPTY_SLOT: u32 = u32::MAX;

/// The home slot of a term in a table of `1 << bits` slots (the high bits of the Fx hash).
fn table_slot(bytes: &[u8], bits: u32) -> usize {
    (juris_text::fxhash::hash_bytes(bytes) >> (64 - bits)) as usize
}

fn slice_by<'a, T>(
    data: &'a [T],
    off: &[u64],
    i: usize,
    path: impl Fn() -> PathBuf,
) -> Result<&'a [T], IndexError> {
    let (a, b) = match (off.get(i), off.get(i + 1)) {
        (Some(&a), Some(&b)) => (a, b),
        _ => {
            return Err(IndexError::corrupt(
                path(),
                format!("entry {i} is beyond the offsets table"),
            ))
        }
    };
    usize::try_from(a)
        .ok()
        .zip(usize::try_from(b).ok())
        .and_then(|(a, b)| data.get(a..b))
        .ok_or_else(|| {
            IndexError::corrupt(
                path(),
                format!("entry {i} points outside the data ({a}..{b})"),
            )
        })
}

impl Data {
    fn open(dir: &Path, m: &Manifest) -> Result<Data, IndexError> {
        let gen_dir = dir.join(m.gen_dir_name());
        let mpath = dir.join(format::MANIFEST);
        let size = |name: &str| -> Result<u64, IndexError> {
            m.file(name)
                .map(|f| f.bytes)
                .ok_or_else(|| IndexError::corrupt(&mpath, format!("no entry for file {name}")))
        };
        let (t, p, d) = (m.n_terms, m.n_postings, m.n_docs);
        let col_u64 = |name: &str, n: u64| Column::<u64>::open(&gen_dir.join(name), n);
        let col_u32 = |name: &str, n: u64| Column::<u32>::open(&gen_dir.join(name), n);
        let col_f32 = |name: &str, n: u64| Column::<f32>::open(&gen_dir.join(name), n);
        let data = Data {
            terms_dat: Bytes::open(&gen_dir.join(files::TERMS_DAT), size(files::TERMS_DAT)?)?,
            terms_off: col_u64(files::TERMS_OFF, t + 1)?,
            term_w: col_f32(files::TERMS_W, 2 * t)?,
            post_off: col_u64(files::POSTINGS_OFF, t + 1)?,
            post_doc: col_u32(files::POSTINGS_DOC, p)?,
            post_tf: col_u32(files::POSTINGS_TF, p)?,
            post_imp: col_f32(files::POSTINGS_IMP, p)?,
            post_skip: col_u32(files::POSTINGS_SKIP, format::skip_len(p, t))?,
            doc_len: col_u32(files::DOCS_LEN, d)?,
            ids_dat: Bytes::open(&gen_dir.join(files::IDS_DAT), size(files::IDS_DAT)?)?,
            ids_off: col_u64(files::IDS_OFF, d + 1)?,
            ids_sort: col_u32(files::IDS_SORT, d)?,
            store_dat: Bytes::open(&gen_dir.join(files::STORE_DAT), size(files::STORE_DAT)?)?,
            store_off: col_u64(files::STORE_OFF, d + 1)?,
            term_table: std::sync::OnceLock::new(),
            gen_dir,
            n_docs: d,
            n_terms: t,
            n_postings: p,
            total_terms: m.total_terms,
        };
        for name in files::ALL {
            let expected = size(name)?;
            let path = data.gen_dir.join(name);
            let actual = std::fs::metadata(&path)
                .map_err(|e| IndexError::io(&path, e))?
                .len();
            if actual != expected {
                return Err(IndexError::corrupt(
                    path,
                    format!("size is {actual} bytes, the manifest says {expected}"),
                ));
            }
        }
        check_offsets(
            &data.file_path(files::TERMS_OFF),
            data.terms_off.as_slice(),
            data.terms_dat.as_slice().len() as u64,
        )?;
        check_offsets(
            &data.file_path(files::POSTINGS_OFF),
            data.post_off.as_slice(),
            p,
        )?;
        check_offsets(
            &data.file_path(files::IDS_OFF),
            data.ids_off.as_slice(),
            data.ids_dat.as_slice().len() as u64,
        )?;
        check_offsets(
            &data.file_path(files::STORE_OFF),
            data.store_off.as_slice(),
            data.store_dat.as_slice().len() as u64,
        )?;
        if let Some(i) = data
            .ids_sort
            .as_slice()
            .iter()
            .position(|&x| u64::from(x) >= d)
        {
            return Err(IndexError::corrupt(
                data.file_path(files::IDS_SORT),
                format!("entry {i} is not a document number"),
            ));
        }
        Ok(data)
    }

    pub(crate) fn file_path(&self, name: &str) -> PathBuf {
        self.gen_dir.join(name)
    }

    pub(crate) fn term_bytes(&self, t: u32) -> Result<&[u8], IndexError> {
        slice_by(
            self.terms_dat.as_slice(),
            self.terms_off.as_slice(),
            t as usize,
            || self.file_path(files::TERMS_OFF),
        )
    }

    pub(crate) fn term(&self, t: u32) -> Result<&str, IndexError> {
        std::str::from_utf8(self.term_bytes(t)?).map_err(|_| {
            IndexError::corrupt(
                self.file_path(files::TERMS_DAT),
                format!("term {t} is not UTF-8"),
            )
        })
    }

    /// The term table: one pass over the dictionary on first use, after which a lookup is
    /// one hash of the term and, on average, one or two comparisons (the former two-byte
    /// prefix buckets needed ~6 binary-search probes, ~750 instructions per lookup).
    fn term_table(&self) -> &TermTable {
        self.term_table.get_or_init(|| {
            let n = self.n_terms as usize;
            // Load factor ≤ 2/3 with linear probing.
            let size = (n + n / 2 + 1).next_power_of_two().max(2);
            let bits = size.trailing_zeros();
            let mut slots = vec![EMPTY_SLOT; size];
            let mask = size - 1;
            for t in 0..n as u32 {
                // A term that cannot be read is left out: lookups of it find nothing, as
                // the binary search they replace did.
                let Ok(bytes) = self.term_bytes(t) else {
                    continue;
                };
                let mut i = table_slot(bytes, bits);
                while slots[i] != EMPTY_SLOT {
                    i = (i + 1) & mask;
                }
                slots[i] = t;
            }
            TermTable { slots, bits }
        })
    }

    /// The number of `term` in the dictionary.
    pub(crate) fn find_term(&self, term: &str) -> Option<u32> {
        let key = term.as_bytes();
        let table = self.term_table();
        let mask = table.slots.len() - 1;
        let mut i = table_slot(key, table.bits);
        loop {
            let t = *table.slots.get(i)?;
            if t == EMPTY_SLOT {
                return None;
            }
            if self.term_bytes(t).is_ok_and(|b| b == key) {
                return Some(t);
            }
            i = (i + 1) & mask;
        }
    }

    pub(crate) fn postings_range(&self, t: u32) -> Result<(usize, usize), IndexError> {
        let off = self.post_off.as_slice();
        match (off.get(t as usize), off.get(t as usize + 1)) {
            (Some(&a), Some(&b)) if a <= b && b <= self.n_postings => Ok((a as usize, b as usize)),
            _ => Err(IndexError::corrupt(
                self.file_path(files::POSTINGS_OFF),
                format!("bad entry for term {t}"),
            )),
        }
    }

    pub(crate) fn postings(&self, t: u32) -> Result<(&[u32], &[u32]), IndexError> {
        let (a, b) = self.postings_range(t)?;
        let docs = self.post_doc.as_slice().get(a..b);
        let tfs = self.post_tf.as_slice().get(a..b);
        docs.zip(tfs).ok_or_else(|| {
            IndexError::corrupt(
                self.file_path(files::POSTINGS_DOC),
                format!("postings of term {t} out of range"),
            )
        })
    }

    pub(crate) fn doc_id(&self, d: u32) -> Result<&str, IndexError> {
        if u64::from(d) >= self.n_docs {
            return Err(IndexError::NoSuchDoc {
                doc: d,
                n_docs: self.n_docs as u32,
            });
        }
        let b = slice_by(
            self.ids_dat.as_slice(),
            self.ids_off.as_slice(),
            d as usize,
            || self.file_path(files::IDS_OFF),
        )?;
        std::str::from_utf8(b).map_err(|_| {
            IndexError::corrupt(
                self.file_path(files::IDS_DAT),
                format!("id of document {d} is not UTF-8"),
            )
        })
    }

    pub(crate) fn doc_len(&self, d: u32) -> Result<u32, IndexError> {
        self.doc_len
            .as_slice()
            .get(d as usize)
            .copied()
            .ok_or(IndexError::NoSuchDoc {
                doc: d,
                n_docs: self.n_docs as u32,
            })
    }

    pub(crate) fn store_record(&self, d: u32) -> Result<&[u8], IndexError> {
        if u64::from(d) >= self.n_docs {
            return Err(IndexError::NoSuchDoc {
                doc: d,
                n_docs: self.n_docs as u32,
            });
        }
        slice_by(
            self.store_dat.as_slice(),
            self.store_off.as_slice(),
            d as usize,
            || self.file_path(files::STORE_OFF),
        )
    }

    pub(crate) fn lookup_id(&self, id: &str) -> Option<u32> {
        let sorted = self.ids_sort.as_slice();
        let key = id.as_bytes();
        let (mut lo, mut hi) = (0usize, sorted.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let d = *sorted.get(mid)?;
            let b = slice_by(
                self.ids_dat.as_slice(),
                self.ids_off.as_slice(),
                d as usize,
                PathBuf::new,
            )
            .ok()?;
            match b.cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(d),
            }
        }
        None
    }

    pub(crate) fn post_doc(&self) -> &[u32] {
        self.post_doc.as_slice()
    }

    /// The skip table entries of term `t`, whose postings are `a..b`
    /// ([`format::skip_start`]).
    pub(crate) fn skips(&self, t: u32, a: usize, b: usize) -> Result<&[u32], IndexError> {
        let start = format::skip_start(a, t as usize);
        let n = b.saturating_sub(a).div_ceil(format::SKIP_BLOCK);
        self.post_skip
            .as_slice()
            .get(start..start + n)
            .ok_or_else(|| {
                IndexError::corrupt(
                    self.file_path(files::POSTINGS_SKIP),
                    format!("no skip entries for term {t}"),
                )
            })
    }

    fn compute_weights(&self, cfg: &ScorerConfig) -> Result<weights::Weights, IndexError> {
        weights::compute(
            cfg,
            self.post_off.as_slice(),
            self.post_doc.as_slice(),
            self.post_tf.as_slice(),
            self.doc_len.as_slice(),
            self.total_terms,
        )
        .map_err(|e| match e {
            WeightError::DocOutOfRange { posting, doc } => IndexError::corrupt(
                self.file_path(files::POSTINGS_DOC),
                format!(
                    "posting {posting} names document {doc}, the index holds {}",
                    self.n_docs
                ),
            ),
            WeightError::Offsets => IndexError::corrupt(
                self.file_path(files::POSTINGS_OFF),
                "offsets inconsistent with the postings",
            ),
        })
    }
}

/// Scores of postings for the active scorer: the stored ones or recomputed in memory.
pub(crate) enum ActiveWeights {
    Stored,
    Owned(weights::Weights),
}

/// Counts and settings of an index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexStats {
    /// The index folder.
    pub path: PathBuf,
    /// Generation in use.
    pub generation: u64,
    /// Documents.
    pub n_docs: u64,
    /// Distinct terms.
    pub n_terms: u64,
    /// Postings (document–term pairs).
    pub n_postings: u64,
    /// Sum of document lengths.
    pub total_terms: u64,
    /// Mean document length.
    pub avgdl: f64,
    /// Analyzers of the index.
    pub analyzer: AnalyzerSpec,
    /// The scorer in use (the stored one unless overridden with [`Index::with_scorer`]).
    pub scorer: ScorerConfig,
    /// The scorer the stored impacts were computed for.
    pub stored_scorer: ScorerConfig,
}

/// An open index. Cheap to clone (shared memory maps); `Send + Sync`, so one index can
/// serve searches from many threads.
#[derive(Clone)]
pub struct Index {
    pub(crate) dir: PathBuf,
    pub(crate) manifest: Arc<Manifest>,
    pub(crate) data: Arc<Data>,
    pub(crate) scorer: ScorerConfig,
    pub(crate) weights: Arc<ActiveWeights>,
    pub(crate) analyzers: Arc<AnalyzerSet>,
}

impl Index {
    /// Opens the index in `dir`, checking the manifest, the presence and sizes of all files
    /// and the consistency of every offsets table.
    pub fn open(dir: &Path) -> Result<Index, IndexError> {
        // A concurrent update may remove the generation between reading the manifest and
        // mapping its files: read the manifest again once if that happens.
        let mut attempt = 0;
        loop {
            let manifest = Manifest::read(dir)?;
            match Data::open(dir, &manifest) {
                Ok(data) => {
                    let analyzers = AnalyzerSet::new(manifest.analyzer.clone())?;
                    return Ok(Index {
                        dir: dir.to_path_buf(),
                        scorer: manifest.scorer,
                        manifest: Arc::new(manifest),
                        data: Arc::new(data),
                        weights: Arc::new(ActiveWeights::Stored),
                        analyzers: Arc::new(analyzers),
                    });
                }
                Err(e) => {
                    attempt += 1;
                    let again = Manifest::read(dir)
                        .map(|m| m.generation != manifest.generation)
                        .unwrap_or(false);
                    if attempt >= 2 || !again {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// A view of this index ranking with another scorer or other parameters. When `cfg`
    /// differs from the stored scorer, impacts are recomputed in memory (in parallel; one
    /// `f32` per posting).
    pub fn with_scorer(&self, cfg: ScorerConfig) -> Result<Index, IndexError> {
        cfg.validate()?;
        let weights = if cfg == self.manifest.scorer {
            ActiveWeights::Stored
        } else {
            ActiveWeights::Owned(self.data.compute_weights(&cfg)?)
        };
        Ok(Index {
            scorer: cfg,
            weights: Arc::new(weights),
            ..self.clone()
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The index folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The scorer searches use.
    pub fn scorer(&self) -> &ScorerConfig {
        &self.scorer
    }

    /// The analyzers queries go through (the ones the documents went through).
    pub fn analyzers(&self) -> &AnalyzerSet {
        &self.analyzers
    }

    /// Number of documents.
    pub fn n_docs(&self) -> u32 {
        self.data.n_docs as u32
    }

    /// The analyzers and the active scorer, as a build config.
    pub fn config(&self) -> super::IndexConfig {
        super::IndexConfig {
            analyzer: self.manifest.analyzer.clone(),
            scorer: self.scorer,
        }
    }

    /// Same as [`Index::stats`] (serializable summary for `juris info`).
    pub fn info(&self) -> IndexStats {
        self.stats()
    }

    /// Counts and settings.
    pub fn stats(&self) -> IndexStats {
        let d = &self.data;
        IndexStats {
            path: self.dir.clone(),
            generation: self.manifest.generation,
            n_docs: d.n_docs,
            n_terms: d.n_terms,
            n_postings: d.n_postings,
            total_terms: d.total_terms,
            avgdl: if d.n_docs > 0 {
                d.total_terms as f64 / d.n_docs as f64
            } else {
                0.0
            },
            analyzer: self.manifest.analyzer.clone(),
            scorer: self.scorer,
            stored_scorer: self.manifest.scorer,
        }
    }

    /// The stored document `doc`.
    pub fn doc(&self, doc: u32) -> Result<Document, IndexError> {
        let rec = self.data.store_record(doc)?;
        serde_json::from_slice(rec).map_err(|e| {
            IndexError::corrupt(
                self.data.file_path(files::STORE_DAT),
                format!("document {doc}: {e}"),
            )
        })
    }

    /// The id of document `doc`.
    pub fn doc_id(&self, doc: u32) -> Result<&str, IndexError> {
        self.data.doc_id(doc)
    }

    /// The document number of `id`, if the index holds it.
    pub fn lookup_id(&self, id: &str) -> Option<u32> {
        self.data.lookup_id(id)
    }

    /// Documents containing `term` (an analyzed term), or `None` if the index lacks it.
    pub fn doc_freq(&self, term: &str) -> Option<u64> {
        let t = self.data.find_term(term)?;
        self.data
            .postings_range(t)
            .ok()
            .map(|(a, b)| (b - a) as u64)
    }

    pub(crate) fn data(&self) -> &Data {
        &self.data
    }

    /// Impacts and per-term `(absent, max)` of the active scorer.
    pub(crate) fn weights(&self) -> (&[f32], &[f32]) {
        match &*self.weights {
            ActiveWeights::Stored => (self.data.post_imp.as_slice(), self.data.term_w.as_slice()),
            ActiveWeights::Owned(w) => (&w.imp, &w.term_w),
        }
    }

    /// Brings the files a search reads (postings, impacts, term weights and the term
    /// dictionary) into memory now, one read per 4 KiB page, so that a batch of queries does
    /// not pay the first touch of each mapped page inside its loop — what loading an
    /// in-memory index (bm25s, rank_bm25) does before its first query. Returns the bytes
    /// touched. Costs one pass over those files; a single query should not call it.
    pub fn preload(&self) -> u64 {
        fn touch<T: Copy>(xs: &[T]) -> u64 {
            let step = (4096 / std::mem::size_of::<T>().max(1)).max(1);
            let mut i = 0;
            while i < xs.len() {
                // black_box: the reads must happen although their values are unused.
                std::hint::black_box(xs[i]);
                i += step;
            }
            std::mem::size_of_val(xs) as u64
        }
        let (imp, term_w) = self.weights();
        touch(self.data.post_doc())
            + touch(imp)
            + touch(term_w)
            + touch(self.data.post_off.as_slice())
            + touch(self.data.terms_dat.as_slice())
            + touch(self.data.terms_off.as_slice())
    }

    /// Checks everything: checksums of all files, dictionary order, postings order and
    /// ranges, tfs, document lengths, ids and stored documents. O(size of the index).
    pub fn verify(&self) -> Result<(), IndexError> {
        let d = &self.data;
        for f in &self.manifest.files {
            let path = d.file_path(&f.name);
            let bytes = std::fs::read(&path).map_err(|e| IndexError::io(&path, e))?;
            let sum = format!("{:016x}", format::checksum(&bytes));
            if sum != f.checksum {
                return Err(IndexError::corrupt(
                    path,
                    format!("checksum {sum} differs from the manifest's {}", f.checksum),
                ));
            }
        }
        let mut prev: Option<&[u8]> = None;
        for t in 0..d.n_terms as u32 {
            let b = d.term_bytes(t)?;
            if prev.is_some_and(|p| p >= b) {
                return Err(IndexError::corrupt(
                    d.file_path(files::TERMS_DAT),
                    format!("terms not sorted at {t}"),
                ));
            }
            prev = Some(b);
            d.term(t)?;
            let (docs, tfs) = d.postings(t)?;
            if docs.is_empty() {
                return Err(IndexError::corrupt(
                    d.file_path(files::POSTINGS_OFF),
                    format!("term {t} has no postings"),
                ));
            }
            if docs.windows(2).any(|w| w[0] >= w[1])
                || docs.iter().any(|&x| u64::from(x) >= d.n_docs)
            {
                return Err(IndexError::corrupt(
                    d.file_path(files::POSTINGS_DOC),
                    format!("postings of term {t} not ascending or out of range"),
                ));
            }
            if tfs.contains(&0) {
                return Err(IndexError::corrupt(
                    d.file_path(files::POSTINGS_TF),
                    format!("zero tf in term {t}"),
                ));
            }
            let (a, b) = d.postings_range(t)?;
            let skips = d.skips(t, a, b)?;
            let blocks = docs.chunks(format::SKIP_BLOCK).map(|c| c[c.len() - 1]);
            if !blocks.eq(skips.iter().copied()) {
                return Err(IndexError::corrupt(
                    d.file_path(files::POSTINGS_SKIP),
                    format!("skip entries of term {t} differ from its postings"),
                ));
            }
        }
        let total: u64 = d.doc_len.as_slice().iter().map(|&x| u64::from(x)).sum();
        if total != d.total_terms {
            return Err(IndexError::corrupt(
                d.file_path(files::DOCS_LEN),
                "lengths do not sum to total_terms",
            ));
        }
        for doc in 0..d.n_docs as u32 {
            let id = d.doc_id(doc)?;
            if self.lookup_id(id) != Some(doc) {
                return Err(IndexError::corrupt(
                    d.file_path(files::IDS_SORT),
                    format!("id {id:?} not found by lookup"),
                ));
            }
            let parsed = self.doc(doc)?;
            if parsed.id != id {
                return Err(IndexError::corrupt(
                    d.file_path(files::STORE_DAT),
                    format!("document {doc} has id {:?}, ids.dat says {id:?}", parsed.id),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{IndexBuilder, IndexConfig, NoProgress};

    #[test]
    fn term_table_finds_every_term_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ix");
        // Many terms sharing prefixes, of every length, non-ASCII included.
        let mut vocab: Vec<String> = (0..3000).map(|i| format!("t{i}")).collect();
        vocab.extend(["a", "ab", "abc", "法", "民法", "القانون", "café", "x'y"].map(String::from));
        let docs = vocab.chunks(7).enumerate().map(|(i, terms)| {
            let doc = crate::corpus::Document {
                id: format!("d{i}"),
                ..Default::default()
            };
            (doc, terms.to_vec())
        });
        let mut b = IndexBuilder::create(&out, IndexConfig::default()).unwrap();
        b.add_analyzed(docs, &NoProgress).unwrap();
        b.finish(&NoProgress).unwrap();
        let index = crate::Index::open(&out).unwrap();
        let data = &index.data;
        assert_eq!(data.n_terms as usize, vocab.len());
        for t in 0..data.n_terms as u32 {
            assert_eq!(data.find_term(data.term(t).unwrap()), Some(t));
        }
        for absent in ["", "t", "t3000", "t00", "abcd", "民", "cafe", "x", "T1"] {
            assert_eq!(data.find_term(absent), None, "{absent:?}");
        }
    }
}
