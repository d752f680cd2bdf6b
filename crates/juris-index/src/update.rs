//! Updating an index without rebuilding it: delete documents by id and add (or replace)
//! documents, analyzing only the added ones.
//!
//! The postings and stored documents of the kept documents are copied from the current
//! generation (no re-analysis), the added documents are analyzed and appended, global
//! statistics (N, avgdl, df) and all impacts are recomputed, and the result is published as
//! a new generation with the same atomic protocol as a build ([`crate::format`]). The
//! resulting index equals a fresh build of the same documents, except for document numbers:
//! kept documents keep their relative order and come first, added ones follow.

use crate::corpus::Document;
use crate::error::IndexError;
use crate::index::{BuildReport, Index, IndexBuilder, IndexConfig};
use crate::progress::Progress;
use serde::Serialize;
use std::path::Path;

/// What an update did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateReport {
    /// The new generation.
    pub build: BuildReport,
    /// Documents added (new ids).
    pub added: u64,
    /// Documents whose id already existed and whose old version was replaced.
    pub replaced: u64,
    /// Documents deleted by id.
    pub deleted: u64,
}

impl std::fmt::Display for UpdateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} added, {} replaced, {} deleted; now {}",
            self.added, self.replaced, self.deleted, self.build
        )
    }
}

fn update_with<F>(
    dir: &Path,
    delete: &[String],
    progress: &dyn Progress,
    add: F,
) -> Result<UpdateReport, IndexError>
where
    F: FnOnce(&mut IndexBuilder) -> Result<u64, IndexError>,
{
    let index = Index::open(dir)?;
    let n = index.n_docs() as usize;
    let mut drop = vec![false; n];
    let mut unknown = Vec::new();
    let mut deleted = 0u64;
    for id in delete {
        match index.lookup_id(id) {
            Some(d) => {
                if let Some(slot) = drop.get_mut(d as usize) {
                    if !*slot {
                        deleted += 1;
                    }
                    *slot = true;
                }
            }
            None => unknown.push(id.clone()),
        }
    }
    if !unknown.is_empty() {
        return Err(IndexError::UnknownIds {
            path: dir.to_path_buf(),
            ids: unknown,
        });
    }
    let config = IndexConfig {
        analyzer: index.manifest().analyzer.clone(),
        scorer: index.manifest().scorer,
    };
    let mut builder = IndexBuilder::create(dir, config)?;
    builder.seed_from(&index, &drop, progress)?;
    std::mem::drop(index);
    progress.start("indexing added documents", None);
    let incoming = add(&mut builder)?;
    progress.finish();
    let replaced = builder.replaced();
    let build = builder.finish(progress)?;
    Ok(UpdateReport {
        build,
        added: incoming - replaced,
        replaced,
        deleted,
    })
}

/// Deletes the documents with ids `delete` (all must exist, else nothing changes) and adds
/// `add`, analyzed with the index's analyzers; an added document whose id exists replaces
/// the old version. Writes a new generation atomically.
pub fn update_index<I, E>(
    dir: &Path,
    add: I,
    delete: &[String],
    progress: &dyn Progress,
) -> Result<UpdateReport, IndexError>
where
    I: IntoIterator<Item = Result<Document, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    update_with(dir, delete, progress, |b| b.add_documents(add, progress))
}

/// [`update_index`] for documents whose terms are already known.
pub fn update_index_analyzed<I, S>(
    dir: &Path,
    add: I,
    delete: &[String],
    progress: &dyn Progress,
) -> Result<UpdateReport, IndexError>
where
    I: IntoIterator<Item = (Document, Vec<S>)>,
    S: Into<String>,
{
    update_with(dir, delete, progress, |b| b.add_analyzed(add, progress))
}
