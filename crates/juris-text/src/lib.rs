//! Text processing for juris: Unicode normalization, language detection, per-language
//! analyzers (text → index terms) and splitting of law texts into articles.
//!
//! Everything that turns raw characters into terms lives here and nowhere else, so that the
//! index, the CLI and later the dense side agree on what a "term" is. The one key decision:
//! an [`Analyzer`] is a small object behind a trait, named by a stable string
//! (`"en-snowball"`, `"ja-bigram"`, …) that an index stores in its config, so an index is
//! always queried with exactly the pipeline that built it. A new language is one new file in
//! [`analyzers`] plus one line in [`analyzer::build_analyzer`].
#![deny(missing_docs)]

pub mod analyzer;
pub mod analyzers;
pub mod error;
pub mod fxhash;
pub mod lang;
pub mod normalize;
pub mod structure;

pub use analyzer::{build_analyzer, Analyzer, AnalyzerSet, AnalyzerSpec};
pub use error::TextError;
pub use lang::{detect_lang, Lang};
pub use structure::{split_articles, split_law, ArticleChunk, SplitLaw};
