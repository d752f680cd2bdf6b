//! The single error type of this crate.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading, writing or evaluating.
///
/// Messages that concern a file start with `path:line:` (1-based line) and, where
/// a single column is at fault, name it as `field N (name)`, for example
/// `qrels/dev.tsv:17: field 3 (score): "x" is not an integer`.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The input file does not exist.
    #[error(
        "{}: file not found (check the path, the dataset name and the split; \
         qrels are usually at <data>/<dataset>/qrels/<split>.tsv)",
        path.display()
    )]
    NotFound {
        /// The path that was tried.
        path: PathBuf,
    },
    /// An I/O error other than a missing file.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What was being done (`cannot read`, `cannot write`, ...).
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file has no content (or only a header / blank lines).
    #[error("{}: {what}", path.display())]
    Empty {
        /// The file concerned.
        path: PathBuf,
        /// What is missing, e.g. `file is empty`.
        what: String,
    },
    /// A line of the file cannot be parsed.
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        /// The file concerned.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong, naming the field where one is at fault.
        message: String,
    },
    /// A line is not valid UTF-8.
    #[error("{}:{line}: line is not valid UTF-8 (byte offset {offset} in the line)", path.display())]
    InvalidUtf8 {
        /// The file concerned.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Offset of the first invalid byte within the line.
        offset: usize,
    },
    /// The same (query, document) pair was added twice to a [`crate::Run`].
    #[error("duplicate document {doc_id:?} for query {query_id:?} in run")]
    DuplicateDoc {
        /// Query id.
        query_id: String,
        /// Document id.
        doc_id: String,
    },
    /// A score that is NaN or infinite was added to a [`crate::Run`].
    #[error("score {score} for query {query_id:?}, document {doc_id:?} is not a finite number")]
    NonFiniteScore {
        /// Query id.
        query_id: String,
        /// Document id.
        doc_id: String,
        /// The offending score.
        score: f64,
    },
    /// An id cannot be written to a whitespace-separated TREC file.
    #[error("{}: cannot write {what} {id:?}: TREC files cannot hold ids that are empty or contain whitespace", path.display())]
    InvalidId {
        /// The file being written.
        path: PathBuf,
        /// `query id` or `document id`.
        what: &'static str,
        /// The offending id.
        id: String,
    },
    /// Two reports cannot be compared.
    #[error("cannot compare runs: {message}")]
    Compare {
        /// Why.
        message: String,
    },
    /// A metric name cannot be parsed.
    #[error("unknown metric {spec:?}: {reason} (expected e.g. mrr@10, ndcg@10, recall@100, p@5, map, map@100, f2@5, r-precision)")]
    UnknownMetric {
        /// The text that was given.
        spec: String,
        /// Why it was rejected.
        reason: String,
    },
}

impl EvalError {
    pub(crate) fn parse(path: &Path, line: usize, message: impl Into<String>) -> Self {
        EvalError::Parse {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    pub(crate) fn open(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            EvalError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            EvalError::Io {
                path: path.to_path_buf(),
                action: "cannot read",
                source,
            }
        }
    }
}
