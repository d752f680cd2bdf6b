//! Training data: a BEIR folder's corpus (passages as the index analyzes them: title, a
//! newline, text), queries, and the judged queries of a split with their positive passages.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use juris_eval::Qrels;
use juris_index::corpus::{read_corpus_all, read_queries, CorpusOptions};

use crate::error::{Result, TrainError};

/// Corpus and queries of one dataset.
pub struct Dataset {
    /// The BEIR folder.
    pub dir: PathBuf,
    /// Passage ids, in corpus order.
    pub doc_ids: Vec<String>,
    /// Passage texts, aligned with `doc_ids`.
    pub doc_texts: Vec<String>,
    /// Passage id → position.
    pub doc_pos: HashMap<String, usize>,
    /// Query id → text.
    pub queries: HashMap<String, String>,
}

/// A judged query of a split.
#[derive(Debug, Clone)]
pub struct SplitQuery {
    /// Query id.
    pub id: String,
    /// Query text.
    pub text: String,
    /// Positions of its relevant passages (relevance > 0), ascending.
    pub positives: Vec<usize>,
}

/// The judged queries of one split and its qrels.
pub struct Split {
    /// Queries with at least one relevant passage in the corpus, in qrels order.
    pub queries: Vec<SplitQuery>,
    /// The qrels as read.
    pub qrels: Qrels,
}

impl Dataset {
    /// Reads `dir/corpus.jsonl` and `dir/queries.jsonl`.
    pub fn load(dir: &Path) -> Result<Self> {
        let corpus = dir.join("corpus.jsonl");
        let queries = dir.join("queries.jsonl");
        for p in [&corpus, &queries] {
            if !p.is_file() {
                return Err(TrainError::Data(format!(
                    "{}: missing; [data] dir must be a BEIR folder (corpus.jsonl, \
                     queries.jsonl, qrels/<split>.tsv)",
                    p.display()
                )));
            }
        }
        let docs = read_corpus_all(&corpus, &CorpusOptions::default())?;
        let mut doc_ids = Vec::with_capacity(docs.len());
        let mut doc_texts = Vec::with_capacity(docs.len());
        let mut doc_pos = HashMap::with_capacity(docs.len());
        for d in &docs {
            doc_pos.insert(d.id.clone(), doc_ids.len());
            doc_ids.push(d.id.clone());
            doc_texts.push(juris_index::analysis_text(d).into_owned());
        }
        let queries = read_queries(&queries)?
            .into_iter()
            .map(|q| (q.id, q.text))
            .collect();
        Ok(Dataset {
            dir: dir.to_path_buf(),
            doc_ids,
            doc_texts,
            doc_pos,
            queries,
        })
    }

    /// Reads `qrels/<split>.tsv` and keeps the queries with a relevant passage.
    pub fn split(&self, name: &str) -> Result<Split> {
        let path = self.dir.join("qrels").join(format!("{name}.tsv"));
        if !path.is_file() {
            return Err(TrainError::Data(format!(
                "{}: missing; the split '{name}' needs qrels/{name}.tsv",
                path.display()
            )));
        }
        let qrels = Qrels::read(&path)?;
        let mut queries = Vec::new();
        for (qid, judged) in qrels.iter() {
            let Some(text) = self.queries.get(qid) else {
                continue;
            };
            let mut positives: Vec<usize> = judged
                .iter()
                .filter(|(_, &rel)| rel > 0)
                .filter_map(|(d, _)| self.doc_pos.get(d).copied())
                .collect();
            positives.sort_unstable();
            if positives.is_empty() {
                continue;
            }
            queries.push(SplitQuery {
                id: qid.to_string(),
                text: text.clone(),
                positives,
            });
        }
        if queries.is_empty() {
            return Err(TrainError::Data(format!(
                "{}: no query has a relevant passage in the corpus and a text in queries.jsonl",
                path.display()
            )));
        }
        Ok(Split { queries, qrels })
    }
}
