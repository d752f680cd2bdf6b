//! Building an index: analysis in parallel chunks, an in-memory inverted index, and an
//! atomic write of a new generation (see [`crate::format`]).

use super::weights::{self, WeightError};
use crate::corpus::Document;
use crate::error::IndexError;
use crate::format::{
    self, files, FileEntry, FileWriter, Manifest, FORMAT_NAME, FORMAT_VERSION, MANIFEST,
};
use crate::progress::Progress;
use crate::scoring::ScorerConfig;
use juris_text::{AnalyzerSet, AnalyzerSpec, Lang};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Documents read from the input and analyzed together (one parallel batch).
const BATCH: usize = 4096;
/// Documents one worker analyzes at a time inside a batch.
const SUB_BATCH: usize = 64;

/// How to build an index: which analyzers and which scorer's impacts to precompute.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct IndexConfig {
    /// Analyzers per language.
    pub analyzer: AnalyzerSpec,
    /// Scorer whose impacts are stored (others can still be chosen at search time).
    pub scorer: ScorerConfig,
}

/// What a build or update wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildReport {
    /// The index folder.
    pub path: PathBuf,
    /// The generation written.
    pub generation: u64,
    /// Documents in the index.
    pub n_docs: u64,
    /// Distinct terms.
    pub n_terms: u64,
    /// Postings.
    pub n_postings: u64,
    /// Sum of document lengths.
    pub total_terms: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl std::fmt::Display for BuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} documents, {} terms, {} postings (generation {})",
            self.n_docs, self.n_terms, self.n_postings, self.generation
        )
    }
}

/// The text of `doc` that is analyzed for the index: `title + "\n" + text`, or just `text`
/// when the title is empty.
pub fn analysis_text(doc: &Document) -> std::borrow::Cow<'_, str> {
    if doc.title.is_empty() {
        std::borrow::Cow::Borrowed(&doc.text)
    } else {
        let mut full = String::with_capacity(doc.title.len() + 1 + doc.text.len());
        full.push_str(&doc.title);
        full.push('\n');
        full.push_str(&doc.text);
        std::borrow::Cow::Owned(full)
    }
}

/// A small, fast, non-cryptographic hasher for term strings (FxHash-style).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(a)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(i)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, i: usize) {
        self.0 = (self.0.rotate_left(5) ^ i as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A document after analysis, ready to be merged.
struct AnalyzedDoc {
    id: String,
    len: u32,
    /// (chunk-local term id, tf), any order.
    terms: Vec<(u32, u32)>,
    /// The JSON line for the store.
    record: Vec<u8>,
}

/// Analyzed documents with their chunk-local vocabulary.
struct AnalyzedChunk {
    local_terms: Vec<String>,
    docs: Vec<AnalyzedDoc>,
}

/// Counts terms of a run of documents against a chunk-local vocabulary.
#[derive(Default)]
struct LocalCounter {
    ids: FxMap<String, u32>,
    terms: Vec<String>,
    counts: Vec<u32>,
    touched: Vec<u32>,
    len: u64,
    overflow: bool,
}

impl LocalCounter {
    fn add(&mut self, term: &str) {
        let id = match self.ids.get(term) {
            Some(&id) => id,
            None => {
                let id = self.terms.len() as u32;
                self.ids.insert(term.to_string(), id);
                self.terms.push(term.to_string());
                self.counts.push(0);
                id
            }
        };
        let c = &mut self.counts[id as usize];
        if *c == 0 {
            self.touched.push(id);
        }
        match c.checked_add(1) {
            Some(n) => *c = n,
            None => self.overflow = true,
        }
        self.len += 1;
    }

    /// Takes the counts of the document just analyzed.
    fn take_doc(&mut self) -> (u64, Vec<(u32, u32)>, bool) {
        let mut terms = Vec::with_capacity(self.touched.len());
        for &id in &self.touched {
            terms.push((id, self.counts[id as usize]));
            self.counts[id as usize] = 0;
        }
        self.touched.clear();
        let out = (self.len, terms, self.overflow);
        self.len = 0;
        self.overflow = false;
        out
    }
}

/// One input document: raw (to analyze) or with its terms already known.
pub(crate) enum Input {
    Raw(Document),
    Analyzed(Document, Vec<String>),
}

fn analyze_chunk(
    inputs: Vec<Input>,
    analyzers: Option<&AnalyzerSet>,
    out_path: &Path,
) -> Result<AnalyzedChunk, IndexError> {
    let mut counter = LocalCounter::default();
    let mut docs = Vec::with_capacity(inputs.len());
    for input in inputs {
        let mut doc = match input {
            Input::Raw(mut doc) => {
                let set = analyzers.ok_or_else(|| {
                    IndexError::Scorer("internal: raw document without analyzers".into())
                })?;
                let hint = doc
                    .meta
                    .lang
                    .as_deref()
                    .map(|c| Lang::parse(c).unwrap_or(Lang::Other));
                let lang = set.analyze_with(&analysis_text(&doc), hint, &mut |t| counter.add(t))?;
                if doc.meta.lang.is_none() {
                    doc.meta.lang = Some(lang.code().to_string());
                }
                doc
            }
            Input::Analyzed(doc, terms) => {
                for t in &terms {
                    counter.add(t);
                }
                doc
            }
        };
        let (len, terms, overflow) = counter.take_doc();
        let len = match u32::try_from(len) {
            Ok(l) if !overflow => l,
            _ => {
                return Err(IndexError::TooLarge {
                    path: out_path.to_path_buf(),
                    id: doc.id,
                })
            }
        };
        let mut record = serde_json::to_vec(&doc)
            .map_err(|e| IndexError::io(out_path, std::io::Error::other(e)))?;
        record.push(b'\n');
        docs.push(AnalyzedDoc {
            id: std::mem::take(&mut doc.id),
            len,
            terms,
            record,
        });
    }
    Ok(AnalyzedChunk {
        local_terms: counter.terms,
        docs,
    })
}

/// The in-memory inverted index being built.
struct Accum {
    term_ids: FxMap<Box<str>, u32>,
    postings: Vec<Vec<(u32, u32)>>,
    doc_lens: Vec<u32>,
    ids: Vec<Box<str>>,
    id_doc: FxMap<Box<str>, u32>,
    dead: Vec<bool>,
    n_dead: u64,
    /// Documents taken from a previous generation (may be replaced by id).
    n_seeded: u32,
    store: FileWriter,
    store_off: Vec<u64>,
}

impl Accum {
    fn term_id(&mut self, term: &str) -> u32 {
        if let Some(&id) = self.term_ids.get(term) {
            return id;
        }
        let id = self.postings.len() as u32;
        self.term_ids.insert(term.into(), id);
        self.postings.push(Vec::new());
        id
    }

    fn n_docs(&self) -> usize {
        self.doc_lens.len()
    }

    /// Registers a document id; `Err((first_doc, ...))` on an illegal duplicate.
    fn register_id(&mut self, id: &str, doc: u32, out: &Path) -> Result<(), IndexError> {
        if id.is_empty() {
            return Err(IndexError::EmptyId {
                path: out.to_path_buf(),
                position: u64::from(doc),
            });
        }
        if let Some(&old) = self.id_doc.get(id) {
            if old < self.n_seeded && !self.dead[old as usize] {
                // An update replaces the previous version of the document.
                self.dead[old as usize] = true;
                self.n_dead += 1;
            } else {
                return Err(IndexError::DuplicateId {
                    path: out.to_path_buf(),
                    id: id.to_string(),
                    first: u64::from(old.saturating_sub(self.n_seeded)),
                    second: u64::from(doc.saturating_sub(self.n_seeded)),
                });
            }
        }
        self.id_doc.insert(id.into(), doc);
        Ok(())
    }

    fn next_doc(&self, out: &Path) -> Result<u32, IndexError> {
        u32::try_from(self.n_docs())
            .ok()
            .filter(|&d| d < u32::MAX)
            .ok_or_else(|| {
                IndexError::Scorer(format!("{}: more than 2^32 − 2 documents", out.display()))
            })
    }

    fn merge(&mut self, chunk: AnalyzedChunk, out: &Path) -> Result<(), IndexError> {
        let global: Vec<u32> = chunk.local_terms.iter().map(|t| self.term_id(t)).collect();
        for doc in chunk.docs {
            let d = self.next_doc(out)?;
            self.register_id(&doc.id, d, out)?;
            for (local, tf) in doc.terms {
                self.postings[global[local as usize] as usize].push((d, tf));
            }
            self.doc_lens.push(doc.len);
            self.dead.push(false);
            self.ids.push(doc.id.into());
            self.store.write(&doc.record)?;
            self.store_off.push(self.store.bytes_written());
        }
        Ok(())
    }
}

/// Builds a new generation of an index folder. Create with [`IndexBuilder::create`], add
/// documents, then [`IndexBuilder::finish`]. Dropping a builder without finishing removes
/// its temporary folder and leaves the index folder as it was.
pub struct IndexBuilder {
    out: PathBuf,
    tmp: PathBuf,
    generation: u64,
    config: IndexConfig,
    analyzers: Option<Arc<AnalyzerSet>>,
    acc: Accum,
    position: u64,
    started: Instant,
    done: bool,
}

/// Files of an index folder: the manifest, generations, temporaries, and the companions
/// other parts of juris keep beside the index (`embeddings/` from `juris embed`,
/// `tuned.json` from `juris tune`), which a rebuild leaves in place.
fn looks_like_ours(name: &str) -> bool {
    name == MANIFEST
        || name.starts_with("gen-")
        || name.contains(".tmp-")
        || name == "embeddings"
        || name == "tuned.json"
}

fn gen_of(name: &str) -> Option<u64> {
    name.strip_prefix("gen-").and_then(|rest| {
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    })
}

impl IndexBuilder {
    /// Prepares to write a new generation into `out`: creates `out` if missing; refuses a
    /// folder that holds files other than a juris index.
    pub fn create(out: &Path, config: IndexConfig) -> Result<IndexBuilder, IndexError> {
        config.scorer.validate()?;
        config.analyzer.validate()?;
        let mut generation = 0u64;
        match std::fs::metadata(out) {
            Ok(m) if !m.is_dir() => {
                return Err(IndexError::NotEmpty {
                    path: out.to_path_buf(),
                })
            }
            Ok(_) => {
                let entries = std::fs::read_dir(out).map_err(|e| IndexError::io(out, e))?;
                let mut foreign = false;
                for e in entries {
                    let e = e.map_err(|e| IndexError::io(out, e))?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !looks_like_ours(&name) {
                        foreign = true;
                    }
                    if let Some(g) = gen_of(&name) {
                        generation = generation.max(g);
                    }
                }
                if foreign {
                    return Err(IndexError::NotEmpty {
                        path: out.to_path_buf(),
                    });
                }
                if let Ok(m) = Manifest::read(out) {
                    generation = generation.max(m.generation);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(out).map_err(|e| IndexError::io(out, e))?;
            }
            Err(e) => return Err(IndexError::io(out, e)),
        }
        let generation = generation + 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = out.join(format!(
            "{}.tmp-{}-{nanos}",
            format::gen_dir_name(generation),
            std::process::id()
        ));
        std::fs::create_dir(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
        let store = match FileWriter::create(&tmp, files::STORE_DAT) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        Ok(IndexBuilder {
            out: out.to_path_buf(),
            tmp,
            generation,
            config,
            analyzers: None,
            acc: Accum {
                term_ids: FxMap::default(),
                postings: Vec::new(),
                doc_lens: Vec::new(),
                ids: Vec::new(),
                id_doc: FxMap::default(),
                dead: Vec::new(),
                n_dead: 0,
                n_seeded: 0,
                store,
                store_off: vec![0],
            },
            position: 0,
            started: Instant::now(),
            done: false,
        })
    }

    /// The index folder being written.
    pub fn path(&self) -> &Path {
        &self.out
    }

    /// Documents added so far (including ones later replaced).
    pub fn len(&self) -> usize {
        self.acc.n_docs()
    }

    /// Whether no document was added yet.
    pub fn is_empty(&self) -> bool {
        self.acc.n_docs() == 0
    }

    fn analyzers(&mut self) -> Result<Arc<AnalyzerSet>, IndexError> {
        if let Some(a) = &self.analyzers {
            return Ok(a.clone());
        }
        let a = Arc::new(AnalyzerSet::new(self.config.analyzer.clone())?);
        self.analyzers = Some(a.clone());
        Ok(a)
    }

    fn run_batch(&mut self, batch: Vec<Input>, progress: &dyn Progress) -> Result<(), IndexError> {
        let needs_analyzers = batch.iter().any(|i| matches!(i, Input::Raw(_)));
        let analyzers = if needs_analyzers {
            Some(self.analyzers()?)
        } else {
            None
        };
        let n = batch.len() as u64;
        let mut subs: Vec<Vec<Input>> = Vec::with_capacity(batch.len() / SUB_BATCH + 1);
        let mut it = batch.into_iter().peekable();
        while it.peek().is_some() {
            subs.push(it.by_ref().take(SUB_BATCH).collect());
        }
        let out = self.out.clone();
        let chunks: Vec<Result<AnalyzedChunk, IndexError>> = subs
            .into_par_iter()
            .map(|sub| {
                let k = sub.len() as u64;
                let r = analyze_chunk(sub, analyzers.as_deref(), &out);
                progress.inc(k);
                r
            })
            .collect();
        for c in chunks {
            self.acc.merge(c?, &self.out)?;
        }
        self.position += n;
        Ok(())
    }

    fn add_inputs<I, E>(&mut self, inputs: I, progress: &dyn Progress) -> Result<u64, IndexError>
    where
        I: Iterator<Item = Result<Input, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let before = self.position;
        let mut batch = Vec::with_capacity(BATCH);
        for item in inputs {
            match item {
                Ok(input) => batch.push(input),
                Err(e) => {
                    return Err(IndexError::Corpus {
                        path: self.out.clone(),
                        position: self.position + batch.len() as u64,
                        source: e.into(),
                    })
                }
            }
            if batch.len() == BATCH {
                self.run_batch(
                    std::mem::replace(&mut batch, Vec::with_capacity(BATCH)),
                    progress,
                )?;
            }
        }
        if !batch.is_empty() {
            self.run_batch(batch, progress)?;
        }
        Ok(self.position - before)
    }

    /// Analyzes and adds documents, in parallel batches on the current rayon pool. Document
    /// numbers follow input order. The text analyzed is `title + "\n" + text` (or `text`
    /// when the title is empty), in the language of `meta.lang` if set, else the detected
    /// one, which is stored in the document's `meta.lang`. A reader error stops the build
    /// with [`IndexError::Corpus`]. Returns the number of documents added.
    pub fn add_documents<I, E>(
        &mut self,
        docs: I,
        progress: &dyn Progress,
    ) -> Result<u64, IndexError>
    where
        I: IntoIterator<Item = Result<Document, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        self.add_inputs(docs.into_iter().map(|r| r.map(Input::Raw)), progress)
    }

    /// Adds documents whose terms are already known (no analyzer runs; `meta.lang` is
    /// stored as given). Returns the number of documents added.
    pub fn add_analyzed<I, S>(
        &mut self,
        docs: I,
        progress: &dyn Progress,
    ) -> Result<u64, IndexError>
    where
        I: IntoIterator<Item = (Document, Vec<S>)>,
        S: Into<String>,
    {
        let inputs = docs.into_iter().map(|(d, terms)| {
            Ok::<_, std::convert::Infallible>(Input::Analyzed(
                d,
                terms.into_iter().map(Into::into).collect(),
            ))
        });
        self.add_inputs(inputs, progress)
    }

    /// Seeds the builder with the documents of an existing index, except `drop` (by
    /// document number), copying postings and stored documents without re-analysis.
    pub(crate) fn seed_from(
        &mut self,
        index: &crate::Index,
        drop: &[bool],
        progress: &dyn Progress,
    ) -> Result<(), IndexError> {
        let data = index.data();
        let n_old = data.n_docs as usize;
        let mut remap = vec![u32::MAX; n_old];
        progress.start("copying documents", Some(n_old as u64));
        for (old, slot) in remap.iter_mut().enumerate() {
            if drop.get(old).copied().unwrap_or(false) {
                continue;
            }
            let d = self.acc.next_doc(&self.out)?;
            *slot = d;
            let id = data.doc_id(old as u32)?;
            self.acc.register_id(id, d, &self.out)?;
            self.acc.ids.push(id.into());
            self.acc.doc_lens.push(data.doc_len(old as u32)?);
            self.acc.dead.push(false);
            let rec = data.store_record(old as u32)?;
            self.acc.store.write(rec)?;
            self.acc.store_off.push(self.acc.store.bytes_written());
            if old % 4096 == 4095 {
                progress.inc(4096);
            }
        }
        progress.finish();
        self.acc.n_seeded = self.acc.n_docs() as u32;
        progress.start("copying postings", Some(data.n_terms));
        for t in 0..data.n_terms as u32 {
            let term = data.term(t)?;
            let (docs, tfs) = data.postings(t)?;
            let mut list = Vec::with_capacity(docs.len());
            for (&doc, &tf) in docs.iter().zip(tfs) {
                let new = *remap.get(doc as usize).ok_or_else(|| {
                    IndexError::corrupt(
                        data.file_path(files::POSTINGS_DOC),
                        format!("document number {doc} ≥ {n_old}"),
                    )
                })?;
                if new != u32::MAX {
                    list.push((new, tf));
                }
            }
            if !list.is_empty() {
                let id = self.acc.term_id(term);
                self.acc.postings[id as usize] = list;
            }
        }
        progress.finish();
        Ok(())
    }

    /// Writes the new generation and publishes it atomically; removes older generations.
    pub fn finish(mut self, progress: &dyn Progress) -> Result<BuildReport, IndexError> {
        let report = self.write_generation(progress)?;
        self.done = true;
        Ok(report)
    }

    fn write_generation(&mut self, progress: &dyn Progress) -> Result<BuildReport, IndexError> {
        let tmp = self.tmp.clone();
        let acc = &mut self.acc;
        let live = acc.n_docs() as u64 - acc.n_dead;
        if live == 0 {
            return Err(IndexError::EmptyCorpus {
                path: self.out.clone(),
            });
        }
        progress.start("writing index", None);
        let store_writer =
            std::mem::replace(&mut acc.store, FileWriter::create(&tmp, "store.scratch")?);
        let mut store_entry = store_writer.finish()?;
        let _ = std::fs::remove_file(tmp.join("store.scratch"));

        // Compact away replaced documents.
        if acc.n_dead > 0 {
            let mut remap = vec![u32::MAX; acc.n_docs()];
            let mut next = 0u32;
            for (d, dead) in acc.dead.iter().enumerate() {
                if !dead {
                    remap[d] = next;
                    next += 1;
                }
            }
            for list in acc.postings.iter_mut() {
                list.retain_mut(|(d, _)| {
                    let n = remap[*d as usize];
                    *d = n;
                    n != u32::MAX
                });
            }
            let old_store_path = tmp.join(files::STORE_DAT);
            let old_store =
                std::fs::read(&old_store_path).map_err(|e| IndexError::io(&old_store_path, e))?;
            let mut w = FileWriter::create(&tmp, "store.compact")?;
            let mut offs = vec![0u64];
            let mut lens = Vec::with_capacity(next as usize);
            let mut ids = Vec::with_capacity(next as usize);
            for d in 0..acc.n_docs() {
                if acc.dead[d] {
                    continue;
                }
                let (a, b) = (acc.store_off[d] as usize, acc.store_off[d + 1] as usize);
                w.write(old_store.get(a..b).unwrap_or(&[]))?;
                offs.push(w.bytes_written());
                lens.push(acc.doc_lens[d]);
                ids.push(std::mem::take(&mut acc.ids[d]));
            }
            drop(old_store);
            store_entry = w.finish()?;
            store_entry.name = files::STORE_DAT.to_string();
            let compact = tmp.join("store.compact");
            std::fs::rename(&compact, &old_store_path).map_err(|e| IndexError::io(&compact, e))?;
            acc.store_off = offs;
            acc.doc_lens = lens;
            acc.ids = ids;
            acc.dead = vec![false; next as usize];
            acc.n_dead = 0;
        }
        let n_docs = acc.doc_lens.len();

        // Sorted dictionary, without terms that lost all their postings.
        let mut terms: Vec<(Box<str>, u32)> = std::mem::take(&mut acc.term_ids)
            .into_iter()
            .filter(|(_, id)| !acc.postings[*id as usize].is_empty())
            .collect();
        terms.par_sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));

        let mut entries: Vec<FileEntry> = Vec::new();
        let mut w_dat = FileWriter::create(&tmp, files::TERMS_DAT)?;
        let mut term_off = Vec::with_capacity(terms.len() + 1);
        term_off.push(0u64);
        let n_post: usize = terms
            .iter()
            .map(|(_, id)| acc.postings[*id as usize].len())
            .sum();
        let mut post_off = Vec::with_capacity(terms.len() + 1);
        post_off.push(0u64);
        let mut post_doc = Vec::with_capacity(n_post);
        let mut post_tf = Vec::with_capacity(n_post);
        for (term, id) in &terms {
            w_dat.write(term.as_bytes())?;
            term_off.push(w_dat.bytes_written());
            let list = std::mem::take(&mut acc.postings[*id as usize]);
            for (d, tf) in list {
                post_doc.push(d);
                post_tf.push(tf);
            }
            post_off.push(post_doc.len() as u64);
        }
        drop(terms);
        acc.postings = Vec::new();
        entries.push(w_dat.finish()?);
        let mut w = FileWriter::create(&tmp, files::TERMS_OFF)?;
        w.write_u64s(&term_off)?;
        entries.push(w.finish()?);
        let n_terms = term_off.len() - 1;
        drop(term_off);

        let total_terms: u64 = acc.doc_lens.iter().map(|&l| u64::from(l)).sum();
        let wts = weights::compute(
            &self.config.scorer,
            &post_off,
            &post_doc,
            &post_tf,
            &acc.doc_lens,
            total_terms,
        )
        .map_err(|e| match e {
            WeightError::DocOutOfRange { doc, .. } => IndexError::corrupt(
                &tmp,
                format!("internal: posting for document {doc} ≥ {n_docs}"),
            ),
            WeightError::Offsets => {
                IndexError::corrupt(&tmp, "internal: inconsistent postings offsets")
            }
        })?;
        let mut w = FileWriter::create(&tmp, files::TERMS_W)?;
        w.write_f32s(&wts.term_w)?;
        entries.push(w.finish()?);
        let mut w = FileWriter::create(&tmp, files::POSTINGS_IMP)?;
        w.write_f32s(&wts.imp)?;
        entries.push(w.finish()?);

        drop(wts);
        let mut w = FileWriter::create(&tmp, files::POSTINGS_OFF)?;
        w.write_u64s(&post_off)?;
        entries.push(w.finish()?);
        let mut w = FileWriter::create(&tmp, files::POSTINGS_DOC)?;
        w.write_u32s(&post_doc)?;
        entries.push(w.finish()?);
        let skips = format::build_skips(&post_off, &post_doc)
            .ok_or_else(|| IndexError::corrupt(&tmp, "internal: inconsistent postings offsets"))?;
        drop(post_doc);
        let mut w = FileWriter::create(&tmp, files::POSTINGS_SKIP)?;
        w.write_u32s(&skips)?;
        entries.push(w.finish()?);
        drop(skips);
        let mut w = FileWriter::create(&tmp, files::POSTINGS_TF)?;
        w.write_u32s(&post_tf)?;
        entries.push(w.finish()?);
        drop(post_tf);
        let mut w = FileWriter::create(&tmp, files::DOCS_LEN)?;
        w.write_u32s(&acc.doc_lens)?;
        entries.push(w.finish()?);

        let mut w_ids = FileWriter::create(&tmp, files::IDS_DAT)?;
        let mut id_off = Vec::with_capacity(n_docs + 1);
        id_off.push(0u64);
        for id in &acc.ids {
            w_ids.write(id.as_bytes())?;
            id_off.push(w_ids.bytes_written());
        }
        entries.push(w_ids.finish()?);
        let mut w = FileWriter::create(&tmp, files::IDS_OFF)?;
        w.write_u64s(&id_off)?;
        entries.push(w.finish()?);
        let mut by_id: Vec<u32> = (0..n_docs as u32).collect();
        let ids = &acc.ids;
        by_id.par_sort_unstable_by(|&a, &b| {
            ids[a as usize].as_bytes().cmp(ids[b as usize].as_bytes())
        });
        let mut w = FileWriter::create(&tmp, files::IDS_SORT)?;
        w.write_u32s(&by_id)?;
        entries.push(w.finish()?);
        store_entry.name = files::STORE_DAT.to_string();
        entries.push(store_entry);
        let mut w = FileWriter::create(&tmp, files::STORE_OFF)?;
        w.write_u64s(&acc.store_off)?;
        entries.push(w.finish()?);

        // Publish: folder → gen-N, then the manifest, then remove the old generations.
        format::sync_dir(&tmp)?;
        let gen_dir = self.out.join(format::gen_dir_name(self.generation));
        if gen_dir.exists() {
            std::fs::remove_dir_all(&gen_dir).map_err(|e| IndexError::io(&gen_dir, e))?;
        }
        std::fs::rename(&tmp, &gen_dir).map_err(|e| IndexError::io(&gen_dir, e))?;
        format::sync_dir(&self.out)?;
        let manifest = Manifest {
            format: FORMAT_NAME.to_string(),
            version: u64::from(FORMAT_VERSION),
            generation: self.generation,
            analyzer: self.config.analyzer.clone(),
            scorer: self.config.scorer,
            n_docs: n_docs as u64,
            n_terms: n_terms as u64,
            n_postings: n_post as u64,
            total_terms,
            created_by: format!("juris-index {}", env!("CARGO_PKG_VERSION")),
            files: entries,
        };
        manifest.write_atomic(&self.out)?;
        remove_stale(&self.out, self.generation);
        progress.finish();
        Ok(BuildReport {
            path: self.out.clone(),
            generation: self.generation,
            n_docs: n_docs as u64,
            n_terms: n_terms as u64,
            n_postings: n_post as u64,
            total_terms,
            seconds: self.started.elapsed().as_secs_f64(),
        })
    }
}

/// Removes generations other than `keep` and leftover temporary folders (best effort: a
/// failure here leaves garbage, never a broken index).
fn remove_stale(dir: &Path, keep: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.contains(".tmp-") {
            if path.is_dir() {
                let _ = std::fs::remove_dir_all(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        } else if name.starts_with("gen-") && gen_of(&name) != Some(keep) && path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

impl Drop for IndexBuilder {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Builds an index in `out` from documents, analyzing each with the configured analyzers
/// (see [`IndexBuilder::add_documents`]). An existing index in `out` is replaced atomically;
/// on any error it is left as it was and no temporary files remain.
pub fn build_index<I, E>(
    docs: I,
    out: &Path,
    config: &IndexConfig,
    progress: &dyn Progress,
) -> Result<BuildReport, IndexError>
where
    I: IntoIterator<Item = Result<Document, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    let mut b = IndexBuilder::create(out, config.clone())?;
    progress.start("indexing", None);
    b.add_documents(docs, progress)?;
    progress.finish();
    b.finish(progress)
}

/// Builds an index from pre-analyzed documents (terms given; no analyzer runs).
pub fn build_index_from_terms<I, S>(
    docs: I,
    out: &Path,
    config: &IndexConfig,
    progress: &dyn Progress,
) -> Result<BuildReport, IndexError>
where
    I: IntoIterator<Item = (Document, Vec<S>)>,
    S: Into<String>,
{
    let mut b = IndexBuilder::create(out, config.clone())?;
    progress.start("indexing", None);
    b.add_analyzed(docs, progress)?;
    progress.finish();
    b.finish(progress)
}

impl IndexBuilder {
    /// Documents of a previous generation replaced by an added document with the same id.
    pub(crate) fn replaced(&self) -> u64 {
        self.acc.n_dead
    }
}
