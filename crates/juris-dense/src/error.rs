//! The crate's one error type, [`DenseError`]. Every variant that concerns a file names it,
//! and every message says what to do next, so the CLI can print it as is.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in `juris-dense`.
#[derive(Debug, thiserror::Error)]
pub enum DenseError {
    /// The operating system refused a read, write, rename or map.
    #[error("{path}: {source} (check that the path exists and is writable)")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A store or index file exists but its content is not what its metadata promises.
    #[error("{path}: {what} (the file is damaged or from another version: rebuild it)")]
    Corrupt {
        /// The file that is wrong.
        path: PathBuf,
        /// Which field or size is wrong, with the expected and found values.
        what: String,
    },
    /// Two things that must agree do not (a query's dimension and the store's, a saved HNSW
    /// graph and the store it was built on, the lengths of two argument lists).
    #[error("mismatch: {0}")]
    Mismatch(String),
    /// An argument is out of its domain (k = 0 is fine; NaN in a query, an id with a
    /// newline, M < 2 are not).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The caller's encoder failed during [`crate::refresh`].
    #[error("encoder failed: {0}")]
    Encode(Box<dyn std::error::Error + Send + Sync>),
}

/// Shorthand for results of this crate.
pub type Result<T, E = DenseError> = std::result::Result<T, E>;

impl DenseError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DenseError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, what: impl Into<String>) -> Self {
        DenseError::Corrupt {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}
