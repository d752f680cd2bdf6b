//! [`MlError`]: every way loading or running a model can fail, each naming the file and
//! saying what to do next.

use std::path::PathBuf;

/// Errors from model loading, tokenization and inference.
#[derive(Debug, thiserror::Error)]
pub enum MlError {
    /// A file the model needs is absent.
    #[error("{path}: missing; {hint}")]
    Missing {
        /// The file that was looked for.
        path: PathBuf,
        /// What to do about it (e.g. run `bash scripts/fetch-models.sh`).
        hint: String,
    },
    /// A file is present but its contents are not what the format requires.
    #[error("{path}: {what}")]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// What is wrong, with the field or offset where known.
        what: String,
    },
    /// The model or its configuration asks for something juris does not implement.
    #[error("{0}")]
    Unsupported(String),
    /// Inputs disagree with the model (e.g. a tokenizer whose vocabulary exceeds the
    /// embedding table, or vectors of another dimension).
    #[error("{0}")]
    Mismatch(String),
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An error from candle while computing.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// An error from the tokenizer.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Shorthand for results in this crate.
pub type Result<T> = std::result::Result<T, MlError>;
