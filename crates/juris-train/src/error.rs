//! [`TrainError`]: how training fails, each message naming the file (and config key) and
//! what to do next.

use std::path::PathBuf;

/// Errors from configuring, running or resuming training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The config file is invalid: unknown key, wrong type, bad value.
    #[error("{path}: {what}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the key.
        what: String,
    },
    /// Training data is missing or inconsistent.
    #[error("{0}")]
    Data(String),
    /// A checkpoint cannot be used.
    #[error("{path}: {what}")]
    Checkpoint {
        /// The checkpoint folder.
        path: PathBuf,
        /// What is wrong and what to do.
        what: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The model failed to load or run.
    #[error(transparent)]
    Ml(#[from] juris_ml::MlError),
    /// A tensor operation failed.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// Building or searching the BM25 index for negatives failed.
    #[error(transparent)]
    Index(#[from] juris_index::IndexError),
    /// Reading the corpus or queries failed.
    #[error(transparent)]
    Corpus(#[from] juris_index::corpus::CorpusError),
    /// Reading qrels failed.
    #[error(transparent)]
    Eval(#[from] juris_eval::EvalError),
}

/// Shorthand for results in this crate.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Wraps an IO error with its path.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
