//! Dense retrieval for juris: an on-disk embedding store, vector search behind one trait
//! (exact and HNSW), and fusion of lexical and dense rankings.
//!
//! For the CLI and the training crates: encode documents with any encoder (this crate has no
//! ML dependency and never sees a model, only a fingerprint string), keep the vectors in an
//! [`EmbeddingStore`] next to the lexical index, search them with an [`ExactIndex`] or an
//! [`HnswIndex`] through [`VectorIndex`], and combine the hits with BM25 hits using
//! [`fusion::weighted_sum`] or [`fusion::reciprocal_rank`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use juris_dense::{EmbeddingStore, ExactIndex, HnswIndex, HnswParams, VectorIndex};
//! # fn main() -> juris_dense::Result<()> {
//! let store = Arc::new(EmbeddingStore::open("index/embeddings/e5-small".as_ref())?);
//! let exact = ExactIndex::new(store.clone());
//! let query = store.row(0).expect("non-empty store");
//! let hits = exact.search(&query, 10)?; // (row, score), best first
//! let ann = HnswIndex::build(store.clone(), HnswParams::default())?;
//! ann.save(&HnswIndex::default_path(&store))?;
//! let ids: Vec<&str> = hits.iter().map(|&(r, _)| store.ids()[r as usize].as_str()).collect();
//! # let _ = (ids, ann); Ok(()) }
//! ```
//!
//! **Key design decision: the store is the single source of vectors, and it is immutable.**
//! A store is a plain, versioned folder (`meta.json`, a headerless row-major `vectors.bin`
//! that is memory-mapped, `ids.txt`) replaced only as a whole by rename, so readers never see
//! a half-written store and search needs no load step. Indexes hold rows numbers only and
//! score against the mapped matrix (f16 by default: half the memory, with ranking quality
//! unchanged in practice); an HNSW graph records which store write it was built on and is
//! refused for any other. Incremental updates ([`refresh`]) rewrite the store, re-encoding
//! only new or changed documents, keyed by (id, content hash, model fingerprint).

#![deny(missing_docs)]

mod error;
pub mod fusion;
mod hnsw;
mod kernels;
pub mod search;
pub mod store;
pub mod synthetic;

pub use error::{DenseError, Result};
pub use hnsw::{HnswIndex, HnswParams, HNSW_FILE, HNSW_FORMAT_VERSION, MAX_BATCH};
pub use search::{ExactIndex, Hit, VectorIndex};
pub use store::{
    refresh, write_store, Dtype, EmbeddingStore, EncodeFn, RefreshStats, StoreMeta, StoreSpec,
    StoreWriter, STORE_FORMAT_VERSION,
};
