//! Documents and the readers that produce them (BEIR corpus.jsonl, generic JSONL, folders of
//! law texts split into articles).

use serde::{Deserialize, Serialize};

/// One retrievable unit: an article of a law (or a whole document when it has no structure).
/// Invariant: `id` is non-empty and unique within a corpus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Document {
    /// Stable identifier, e.g. `civil-code:90` or a BEIR `_id`.
    pub id: String,
    /// Title or caption; may be empty.
    #[serde(default)]
    pub title: String,
    /// Body text.
    pub text: String,
    /// Legal-structure metadata, where known.
    #[serde(default)]
    pub meta: DocMeta,
}

/// Where a document sits in the body of law.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DocMeta {
    /// Name of the law (file stem for folders, or a JSONL field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub law: Option<String>,
    /// Article number as written in the law, normalized to ASCII (`"3-2"`, `"154"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub article: Option<String>,
    /// Number of paragraphs found in the article, when split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paragraphs: Option<u32>,
    /// Language code (`en`, `ja`, `ar`, `other`) given in the input or detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
}
