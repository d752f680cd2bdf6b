//! [`IndexError`]: everything that can go wrong while building, opening, searching or
//! updating an index. Every message names the path involved and says what to do next.

use std::path::PathBuf;

/// The advice appended to messages about unusable indexes.
pub const REBUILD_HINT: &str = "rebuild with `juris index --corpus <corpus> --out <index dir>`";

/// An error of the index layer.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// An I/O error on a file or folder.
    #[error("{path}: {source}")]
    Io {
        /// File or folder involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file of the index is damaged or inconsistent with the manifest.
    #[error("corrupt index file {path}: {detail}; {}", REBUILD_HINT)]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The index was written by an incompatible version of juris.
    #[error(
        "{path}: index format version {found}, this juris reads {expected}: rebuild with `juris index --corpus <corpus> --out <index dir>`"
    )]
    Version {
        /// The manifest file.
        path: PathBuf,
        /// Version found in the manifest.
        found: u64,
        /// Version this build reads.
        expected: u32,
    },
    /// The folder holds no index.
    #[error("{path}: no juris index here (missing juris-index.json): build one with `juris index --corpus <corpus> --out {}`", path.display())]
    NotAnIndex {
        /// The folder.
        path: PathBuf,
    },
    /// Refusing to build into a folder that holds other files.
    #[error("{path}: folder exists, is not empty and holds no juris index; refusing to write into it: choose an empty or new --out folder")]
    NotEmpty {
        /// The folder.
        path: PathBuf,
    },
    /// The corpus holds no documents.
    #[error(
        "{path}: the corpus holds no documents, nothing to index: check --corpus and its format"
    )]
    EmptyCorpus {
        /// The index folder that was to be written.
        path: PathBuf,
    },
    /// Two documents share an id.
    #[error("{path}: duplicate document id {id:?} (documents #{first} and #{second} of the input); ids must be unique: fix the corpus")]
    DuplicateId {
        /// The index folder being written.
        path: PathBuf,
        /// The repeated id.
        id: String,
        /// Input position (0-based) of the first document with that id.
        first: u64,
        /// Input position of the repeat.
        second: u64,
    },
    /// A document has an empty id.
    #[error(
        "{path}: document #{position} of the input has an empty id: give every document an id"
    )]
    EmptyId {
        /// The index folder being written.
        path: PathBuf,
        /// Input position (0-based).
        position: u64,
    },
    /// Ids asked to be deleted that the index does not hold.
    #[error("{path}: cannot delete unknown document ids: {}; the index was left unchanged", ids.join(", "))]
    UnknownIds {
        /// The index folder.
        path: PathBuf,
        /// The ids not found.
        ids: Vec<String>,
    },
    /// A term occurs more often in one document than a u32 can count.
    #[error(
        "{path}: document {id:?} repeats one term more than 4294967295 times; split the document"
    )]
    TooLarge {
        /// The index folder being written.
        path: PathBuf,
        /// The document.
        id: String,
    },
    /// The corpus reader failed.
    #[error("reading the corpus (document #{position}): {source}; the index at {path} was left unchanged")]
    Corpus {
        /// The index folder that was to be written.
        path: PathBuf,
        /// Input position (0-based) where reading failed.
        position: u64,
        /// The reader's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The analyzer failed (unknown analyzer, missing dictionary, …).
    #[error("analyzer: {0}")]
    Text(#[from] juris_text::TextError),
    /// A scorer name or parameter that juris does not know.
    #[error("{0}")]
    Scorer(String),
    /// A document number outside the index.
    #[error("document number {doc} is out of range: the index holds {n_docs} documents")]
    NoSuchDoc {
        /// The number asked for.
        doc: u32,
        /// Documents in the index.
        n_docs: u32,
    },
}

impl IndexError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IndexError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        IndexError::Corrupt {
            path: path.into(),
            detail: detail.into(),
        }
    }
}
