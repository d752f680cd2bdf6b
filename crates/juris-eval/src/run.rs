//! Retrieval runs: reading and (atomically) writing TREC run files.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use crate::lines::{for_each_line, quote};
use crate::EvalError;

const RUN_FIELDS: [&str; 6] = ["query-id", "Q0", "doc-id", "rank", "score", "tag"];

/// The order trec_eval ranks a query's documents in: score descending, ties
/// broken by document id in descending byte-wise (`strcmp`) order.
///
/// The rank column of a run file plays no part in it.
pub fn trec_eval_order(a: (&str, f64), b: (&str, f64)) -> Ordering {
    b.1.partial_cmp(&a.1)
        .unwrap_or(Ordering::Equal)
        .then_with(|| b.0.cmp(a.0))
}

/// A retrieval run: for each query id, scored documents, plus the run tag.
///
/// Documents are stored unordered; [`Run::ranked`] returns them in
/// [`trec_eval_order`], which is the ranking every metric uses. A document may
/// appear at most once per query and scores must be finite.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run {
    tag: String,
    map: BTreeMap<String, HashMap<String, f64>>,
}

impl Run {
    /// An empty run with the given tag (the last column of a TREC run file).
    pub fn new(tag: impl Into<String>) -> Self {
        Run {
            tag: tag.into(),
            map: BTreeMap::new(),
        }
    }

    /// The run tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Replaces the run tag.
    pub fn set_tag(&mut self, tag: impl Into<String>) {
        self.tag = tag.into();
    }

    /// Adds one scored document for a query.
    ///
    /// Errors with [`EvalError::DuplicateDoc`] if the document is already in the
    /// run for that query, and with [`EvalError::NonFiniteScore`] for NaN or
    /// infinite scores; the run is unchanged in both cases.
    pub fn push(
        &mut self,
        query_id: impl Into<String>,
        doc_id: impl Into<String>,
        score: f64,
    ) -> Result<(), EvalError> {
        let query_id = query_id.into();
        let doc_id = doc_id.into();
        if !score.is_finite() {
            return Err(EvalError::NonFiniteScore {
                query_id,
                doc_id,
                score,
            });
        }
        if self
            .map
            .get(&query_id)
            .is_some_and(|d| d.contains_key(&doc_id))
        {
            return Err(EvalError::DuplicateDoc { query_id, doc_id });
        }
        let docs = self.map.entry(query_id).or_default();
        docs.insert(doc_id, score);
        Ok(())
    }

    /// Reads a TREC run file: `qid Q0 docid rank score tag`, whitespace-separated.
    ///
    /// The `Q0` and rank columns are ignored for ranking (rank must still be an
    /// integer); the score must be a finite number; the tag of the first line
    /// becomes the run tag. A document listed twice for the same query is an
    /// error. Blank lines are skipped. Errors name the file, 1-based line and field.
    pub fn read(path: &Path) -> Result<Run, EvalError> {
        let mut run = Run::new("");
        let mut first = true;
        for_each_line(path, |line_no, line| {
            let mut fields = [""; 6];
            let mut n = 0usize;
            for f in line.split_whitespace() {
                if n < 6 {
                    fields[n] = f;
                }
                n += 1;
            }
            if n != 6 {
                return Err(EvalError::parse(
                    path,
                    line_no,
                    format!("expected 6 whitespace-separated fields (TREC run: qid Q0 docid rank score tag), found {n}"),
                ));
            }
            if fields[3].parse::<i64>().is_err() {
                return Err(EvalError::parse(
                    path,
                    line_no,
                    format!(
                        "field 4 ({}): {} is not an integer",
                        RUN_FIELDS[3],
                        quote(fields[3])
                    ),
                ));
            }
            let score: f64 = match fields[4].parse::<f64>() {
                Ok(s) if s.is_finite() => s,
                Ok(_) => {
                    return Err(EvalError::parse(
                        path,
                        line_no,
                        format!(
                            "field 5 ({}): {} is not a finite number",
                            RUN_FIELDS[4],
                            quote(fields[4])
                        ),
                    ))
                }
                Err(_) => {
                    return Err(EvalError::parse(
                        path,
                        line_no,
                        format!(
                            "field 5 ({}): {} is not a number",
                            RUN_FIELDS[4],
                            quote(fields[4])
                        ),
                    ))
                }
            };
            if first {
                run.tag = fields[5].to_string();
                first = false;
            }
            let docs = run.map.entry(fields[0].to_string()).or_default();
            if docs.contains_key(fields[2]) {
                return Err(EvalError::parse(
                    path,
                    line_no,
                    format!(
                        "field 3 ({}): duplicate document {} for query {} (each document may appear once per query)",
                        RUN_FIELDS[2],
                        quote(fields[2]),
                        quote(fields[0])
                    ),
                ));
            }
            docs.insert(fields[2].to_string(), score);
            Ok(())
        })?;
        Ok(run)
    }

    /// Writes the run as a TREC run file, atomically.
    ///
    /// Queries are written in sorted id order, each query's documents in
    /// [`trec_eval_order`] with ranks 1, 2, ...; scores use Rust's shortest
    /// round-trip formatting, so [`Run::read`] gives back identical scores. The
    /// tag has whitespace replaced by `_` (an empty tag becomes `juris`). The file
    /// is written to a temporary file in the same directory, synced, then renamed
    /// over `path`, so readers never see a partial file. Ids that are empty or
    /// contain whitespace cannot be represented and are an error (nothing is written).
    pub fn write_trec(&self, path: &Path) -> Result<(), EvalError> {
        for (q, docs) in &self.map {
            check_id(path, "query id", q)?;
            for d in docs.keys() {
                check_id(path, "document id", d)?;
            }
        }
        let tag: String = if self.tag.trim().is_empty() {
            "juris".to_string()
        } else {
            self.tag
                .trim()
                .chars()
                .map(|c| if c.is_whitespace() { '_' } else { c })
                .collect()
        };
        let io_err = |source: std::io::Error| EvalError::Io {
            path: path.to_path_buf(),
            action: "cannot write",
            source,
        };
        let tmp = temp_path(path);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err)?;
        let result = (|| -> std::io::Result<File> {
            let mut w = BufWriter::with_capacity(1 << 16, file);
            for q in self.map.keys() {
                for (i, (d, s)) in self.ranked(q).into_iter().enumerate() {
                    writeln!(w, "{q} Q0 {d} {} {s} {tag}", i + 1)?;
                }
            }
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(file)
        })();
        match result {
            Ok(file) => {
                drop(file);
                fs::rename(&tmp, path).map_err(|e| {
                    let _ = fs::remove_file(&tmp);
                    io_err(e)
                })
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(io_err(e))
            }
        }
    }

    /// A query's documents in [`trec_eval_order`] (empty if the query is absent).
    pub fn ranked(&self, query_id: &str) -> Vec<(&str, f64)> {
        let mut v: Vec<(&str, f64)> = match self.map.get(query_id) {
            Some(d) => d.iter().map(|(k, &s)| (k.as_str(), s)).collect(),
            None => Vec::new(),
        };
        v.sort_by(|a, b| trec_eval_order(*a, *b));
        v
    }

    /// A copy holding only each query's top `k` documents in [`trec_eval_order`].
    pub fn truncated(&self, k: usize) -> Run {
        let mut out = Run::new(self.tag.clone());
        for q in self.map.keys() {
            let docs = self
                .ranked(q)
                .into_iter()
                .take(k)
                .map(|(d, s)| (d.to_string(), s))
                .collect();
            out.map.insert(q.clone(), docs);
        }
        out
    }

    /// The score of a document for a query, if present.
    pub fn score(&self, query_id: &str, doc_id: &str) -> Option<f64> {
        self.map.get(query_id)?.get(doc_id).copied()
    }

    /// True if the run has at least one document for the query.
    pub fn contains_query(&self, query_id: &str) -> bool {
        self.map.get(query_id).is_some_and(|d| !d.is_empty())
    }

    /// Query ids with at least one document, in sorted order.
    pub fn query_ids(&self) -> impl Iterator<Item = &str> {
        self.map
            .iter()
            .filter(|(_, d)| !d.is_empty())
            .map(|(q, _)| q.as_str())
    }

    /// Number of queries with at least one document.
    pub fn num_queries(&self) -> usize {
        self.map.values().filter(|d| !d.is_empty()).count()
    }

    /// Total number of (query, document) entries.
    pub fn len(&self) -> usize {
        self.map.values().map(HashMap::len).sum()
    }

    /// True when the run holds no documents.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn check_id(path: &Path, what: &'static str, id: &str) -> Result<(), EvalError> {
    if id.is_empty() || id.chars().any(char::is_whitespace) {
        return Err(EvalError::InvalidId {
            path: path.to_path_buf(),
            what,
            id: id.to_string(),
        });
    }
    Ok(())
}

/// `dir/.name.tmp-<pid>-<n>` next to `path`, so the final rename stays on one
/// file system.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, AtomicOrdering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".to_string());
    let tmp_name = format!(".{name}.tmp-{}-{n}", std::process::id());
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(tmp_name),
        _ => PathBuf::from(tmp_name),
    }
}
