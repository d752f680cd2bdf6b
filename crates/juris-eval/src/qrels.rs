//! Relevance judgments (qrels): reading BEIR TSV and TREC qrels files.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::lines::{for_each_line, quote};
use crate::EvalError;

/// The on-disk layout a qrels file was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QrelsFormat {
    /// BEIR: `query-id<TAB>corpus-id<TAB>score`, usually with that header line.
    Beir,
    /// TREC: `qid iteration docid relevance`, whitespace-separated, no header.
    Trec,
}

const BEIR_FIELDS: [&str; 3] = ["query-id", "corpus-id", "score"];
const TREC_FIELDS: [&str; 4] = ["query-id", "iteration", "doc-id", "relevance"];

/// Graded relevance judgments: query id → document id → relevance grade.
///
/// A grade `> 0` means relevant; `0` and negative grades mean judged
/// non-relevant (negative grades contribute no gain to nDCG, as in trec_eval).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qrels {
    map: BTreeMap<String, BTreeMap<String, i32>>,
}

impl Qrels {
    /// An empty set of judgments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces one judgment; returns the previous grade, if any.
    pub fn insert(
        &mut self,
        query_id: impl Into<String>,
        doc_id: impl Into<String>,
        relevance: i32,
    ) -> Option<i32> {
        self.map
            .entry(query_id.into())
            .or_default()
            .insert(doc_id.into(), relevance)
    }

    /// Reads a qrels file, detecting its layout from the first non-blank line.
    ///
    /// * BEIR TSV: three tab-separated fields `query-id corpus-id score`; a first
    ///   line such as `query-id<TAB>corpus-id<TAB>score` is recognised as a header
    ///   and skipped.
    /// * TREC: four whitespace-separated fields `qid iteration docid relevance`
    ///   (the iteration field is ignored).
    ///
    /// Relevance must be an integer. A (query, document) pair judged twice with
    /// the same grade is accepted; with different grades it is an error. Blank
    /// lines are skipped. Errors name the file, 1-based line and field.
    pub fn read(path: &Path) -> Result<Qrels, EvalError> {
        Self::read_with_format(path).map(|(q, _)| q)
    }

    /// Like [`Qrels::read`], also returning the detected layout.
    pub fn read_with_format(path: &Path) -> Result<(Qrels, QrelsFormat), EvalError> {
        let mut qrels = Qrels::new();
        let mut format: Option<QrelsFormat> = None;
        let mut saw_header = false;
        for_each_line(path, |line_no, line| {
            let mut fields: Vec<&str> = Vec::with_capacity(4);
            if line.contains('\t') && format != Some(QrelsFormat::Trec) {
                fields.extend(line.split('\t').map(str::trim));
            } else {
                fields.extend(line.split_whitespace());
            }
            let fmt = match format {
                Some(f) => f,
                None => {
                    let f = match fields.len() {
                        3 => QrelsFormat::Beir,
                        4 => QrelsFormat::Trec,
                        n => {
                            return Err(EvalError::parse(
                                path,
                                line_no,
                                format!(
                                    "expected 3 tab-separated fields (BEIR: query-id corpus-id score) \
                                     or 4 whitespace-separated fields (TREC: qid iteration docid relevance), \
                                     found {n}"
                                ),
                            ))
                        }
                    };
                    format = Some(f);
                    if f == QrelsFormat::Beir && looks_like_header(&fields) {
                        saw_header = true;
                        return Ok(());
                    }
                    f
                }
            };
            let names: &[&str] = match fmt {
                QrelsFormat::Beir => &BEIR_FIELDS,
                QrelsFormat::Trec => &TREC_FIELDS,
            };
            if fields.len() != names.len() {
                let layout = match fmt {
                    QrelsFormat::Beir => "BEIR qrels: query-id<TAB>corpus-id<TAB>score",
                    QrelsFormat::Trec => "TREC qrels: qid iteration docid relevance",
                };
                return Err(EvalError::parse(
                    path,
                    line_no,
                    format!(
                        "expected {} fields ({layout}), found {}",
                        names.len(),
                        fields.len()
                    ),
                ));
            }
            for (i, f) in fields.iter().enumerate() {
                if f.is_empty() {
                    return Err(EvalError::parse(
                        path,
                        line_no,
                        format!("field {} ({}) is empty", i + 1, names[i]),
                    ));
                }
            }
            let (qid, did, rel_idx) = match fmt {
                QrelsFormat::Beir => (fields[0], fields[1], 2),
                QrelsFormat::Trec => (fields[0], fields[2], 3),
            };
            let rel: i32 = fields[rel_idx].parse().map_err(|_| {
                EvalError::parse(
                    path,
                    line_no,
                    format!(
                        "field {} ({}): {} is not an integer",
                        rel_idx + 1,
                        names[rel_idx],
                        quote(fields[rel_idx])
                    ),
                )
            })?;
            let docs = qrels.map.entry(qid.to_string()).or_default();
            if let Some(&prev) = docs.get(did) {
                if prev != rel {
                    return Err(EvalError::parse(
                        path,
                        line_no,
                        format!(
                            "query {} document {} judged again with a different relevance \
                             ({rel}, earlier {prev})",
                            quote(qid),
                            quote(did)
                        ),
                    ));
                }
            } else {
                docs.insert(did.to_string(), rel);
            }
            Ok(())
        })?;
        match format {
            Some(f) if !qrels.map.is_empty() => Ok((qrels, f)),
            _ => Err(EvalError::Empty {
                path: path.to_path_buf(),
                what: if saw_header {
                    "file has a header line but no judgments".to_string()
                } else {
                    "file contains no judgments".to_string()
                },
            }),
        }
    }

    /// The judgments of one query (document id → grade), if it has any.
    pub fn get(&self, query_id: &str) -> Option<&BTreeMap<String, i32>> {
        self.map.get(query_id)
    }

    /// The grade of one document for one query, if judged.
    pub fn relevance(&self, query_id: &str, doc_id: &str) -> Option<i32> {
        self.map.get(query_id)?.get(doc_id).copied()
    }

    /// Number of documents with grade `> 0` for a query (0 if it has no judgments).
    pub fn num_relevant(&self, query_id: &str) -> usize {
        self.map
            .get(query_id)
            .map_or(0, |d| d.values().filter(|&&r| r > 0).count())
    }

    /// All query ids with at least one judgment, in sorted order.
    pub fn query_ids(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// Query ids with at least one relevant (grade `> 0`) judgment, sorted.
    ///
    /// These are the queries that [`crate::evaluate`] considers.
    pub fn query_ids_with_relevant(&self) -> impl Iterator<Item = &str> {
        self.map
            .iter()
            .filter(|(_, d)| d.values().any(|&r| r > 0))
            .map(|(q, _)| q.as_str())
    }

    /// Iterates over (query id, judgments) in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &BTreeMap<String, i32>)> {
        self.map.iter().map(|(q, d)| (q.as_str(), d))
    }

    /// Number of queries with at least one judgment.
    pub fn num_queries(&self) -> usize {
        self.map.len()
    }

    /// Total number of judgments (relevant or not).
    pub fn num_judgments(&self) -> usize {
        self.map.values().map(BTreeMap::len).sum()
    }

    /// True when there are no judgments.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A first BEIR line is a header when its score field is not an integer and its
/// names look like column names (`query-id`, `qid`, `score`, ...).
fn looks_like_header(fields: &[&str]) -> bool {
    if fields[2].parse::<i64>().is_ok() {
        return false;
    }
    let f0 = fields[0].to_ascii_lowercase();
    let f2 = fields[2].to_ascii_lowercase();
    matches!(
        f0.as_str(),
        "query-id" | "query_id" | "queryid" | "qid" | "query" | "q_id"
    ) || matches!(
        f2.as_str(),
        "score" | "relevance" | "rel" | "label" | "grade" | "judgment"
    )
}
