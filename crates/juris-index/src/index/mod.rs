//! The index: [`IndexBuilder`] writes generations, [`Index`] reads them.

mod builder;
mod reader;
pub(crate) mod weights;

pub use builder::{
    analysis_text, build_index, build_index_from_terms, BuildReport, IndexBuilder, IndexConfig,
};
pub use reader::{Index, IndexStats};
