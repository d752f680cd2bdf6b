//! The lexical side of juris: reading a body of law into [`corpus::Document`]s, building a
//! versioned on-disk inverted index from them, and ranking documents with BM25-family
//! [`scoring`] functions.
//!
//! * [`scoring`] — the BM25 variants behind one trait, with their formulas and sources.
//! * [`index`] — [`build_index`] / [`IndexBuilder`] write an index folder;
//!   [`Index::open`] maps it.
//! * [`format`] — the files of an index and the atomic publication protocol.
//! * [`search`] — exhaustive and MaxScore top-k retrieval ([`Index::search`]).
//! * [`update`] — adding, replacing and deleting documents without re-analyzing the rest.
//! * [`error`], [`progress`] — [`IndexError`] and the [`Progress`] callback.
//!
//! ```no_run
//! use juris_index::{build_index, Index, IndexConfig, NoProgress};
//! # fn docs() -> Vec<Result<juris_index::corpus::Document, std::io::Error>> { vec![] }
//! let out = std::path::Path::new("law-index");
//! build_index(docs(), out, &IndexConfig::default(), &NoProgress)?;
//! let index = Index::open(out)?;
//! for hit in index.search("public order void juristic act", 10)? {
//!     println!("{} {:.3}", index.doc_id(hit.doc)?, hit.score);
//! }
//! # Ok::<(), juris_index::IndexError>(())
//! ```
#![deny(missing_docs)]

pub mod corpus;
pub mod error;
pub mod format;
pub mod index;
pub mod progress;
pub mod scoring;
pub mod search;
pub mod update;

pub use error::IndexError;
pub use index::{
    analysis_text, build_index, build_index_from_terms, BuildReport, Index, IndexBuilder,
    IndexConfig, IndexStats,
};
pub use progress::{NoProgress, Progress};
pub use scoring::{Scorer, ScorerConfig, ScorerKind};
pub use search::{Hit, SearchOptions, Strategy};
pub use update::{update_index, update_index_analyzed, UpdateReport};
