//! Cross-encoder reranking: a query and one passage are read by the encoder together, so
//! every layer attends across both, and the pair gets a relevance score.
//!
//! The score is the cosine between the pair's embedding (the pair text, [`pair_text`],
//! embedded in the passage role) and the embedding of a fixed anchor text ([`ANCHOR`],
//! embedded in the query role). Training moves both through the same adapter, so the anchor
//! acts as a learned relevance direction without a separate head: a reranker is any
//! [`Encoder`] (any model family, with or without a LoRA adapter), trained by the same
//! contrastive trainer, saved and loaded as the same PEFT folder as a bi-encoder.

use std::path::Path;

use crate::encoder::{encode_batched, Encoder, TextRole};
use crate::error::{MlError, Result};

/// The text whose embedding the pairs are compared with (in the query role, so that a
/// model's query prefix applies to it).
pub const ANCHOR: &str = "Does the passage answer the question?";

/// The text a (query, passage) pair is embedded as: the query first, so that truncation to
/// the model's token limit cuts the end of the passage, never the question.
pub fn pair_text(query: &str, passage: &str) -> String {
    format!("{query}\n\n{passage}")
}

/// The file that marks an adapter folder as a cross-encoder's (written by the trainer for
/// `[rerank]` runs beside the PEFT files), so that tools embedding single texts can refuse
/// it: its weights only make sense for pair texts scored against [`ANCHOR`].
pub const MARKER_FILE: &str = "juris_cross_encoder.json";

/// Marks the adapter folder `dir` as a cross-encoder's ([`MARKER_FILE`]: the anchor and the
/// pair layout, for a reader who finds the folder).
pub fn mark_cross_encoder_adapter(dir: &Path) -> Result<()> {
    let text = serde_json::json!({
        "kind": "cross-encoder",
        "anchor": ANCHOR,
        "pair": pair_text("<query>", "<passage>"),
        "score": "cosine(embed(pair, passage role), embed(anchor, query role))",
        "use": "juris rerank --adapter <this folder>",
    });
    let path = dir.join(MARKER_FILE);
    std::fs::write(&path, format!("{text:#}\n")).map_err(|e| MlError::Io {
        path: path.clone(),
        source: e,
    })
}

/// Whether `dir` holds a cross-encoder's adapter ([`MARKER_FILE`]).
pub fn is_cross_encoder_adapter(dir: &Path) -> bool {
    dir.join(MARKER_FILE).is_file()
}

/// Scores (query, passage) pairs: the reranking seam.
pub trait Reranker: Send + Sync {
    /// One relevance score per pair, higher is more relevant (comparable across the
    /// passages of one query). Pairs of several queries may share a call, so that a batch
    /// is filled across queries.
    fn score_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>>;

    /// One relevance score per passage of `query`.
    fn score(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>> {
        let pairs: Vec<(&str, &str)> = passages.iter().map(|p| (query, *p)).collect();
        self.score_pairs(&pairs)
    }
}

/// An encoder used as a cross-encoder (see the module's first lines).
pub struct CrossEncoder {
    encoder: Box<dyn Encoder>,
    anchor: Vec<f32>,
    batch_size: usize,
}

impl CrossEncoder {
    /// Wraps `encoder` (with its adapter already applied); pairs are embedded
    /// `batch_size` at a time.
    pub fn new(encoder: Box<dyn Encoder>, batch_size: usize) -> Result<Self> {
        let anchor = encoder.encode(&[ANCHOR], TextRole::Query)?;
        Ok(CrossEncoder {
            encoder,
            anchor,
            batch_size: batch_size.max(1),
        })
    }

    /// The wrapped encoder.
    pub fn encoder(&self) -> &dyn Encoder {
        self.encoder.as_ref()
    }
}

impl Reranker for CrossEncoder {
    fn score_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>> {
        let pairs: Vec<String> = pairs.iter().map(|(q, p)| pair_text(q, p)).collect();
        let refs: Vec<&str> = pairs.iter().map(String::as_str).collect();
        let vecs = encode_batched(
            self.encoder.as_ref(),
            &refs,
            TextRole::Passage,
            self.batch_size,
            &mut |_| {},
        )?;
        let dim = self.anchor.len();
        Ok(vecs
            .chunks_exact(dim)
            .map(|v| v.iter().zip(&self.anchor).map(|(a, b)| a * b).sum())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy encoder: the vector counts a few letters of the text, so that scores depend
    /// on the pair's content.
    struct Letters;
    impl Encoder for Letters {
        fn name(&self) -> &str {
            "letters"
        }
        fn dim(&self) -> usize {
            3
        }
        fn fingerprint(&self) -> String {
            "letters".into()
        }
        fn token_count(&self, text: &str, _: TextRole) -> Result<usize> {
            Ok(text.len())
        }
        fn encode(&self, texts: &[&str], _: TextRole) -> Result<Vec<f32>> {
            let mut out = Vec::new();
            for t in texts {
                let v: Vec<f32> = ['a', 'e', 's']
                    .iter()
                    .map(|c| t.chars().filter(|x| x == c).count() as f32 + 0.5)
                    .collect();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                out.extend(v.iter().map(|x| x / n));
            }
            Ok(out)
        }
    }

    #[test]
    fn scores_are_the_cosine_of_each_pair_with_the_anchor() {
        let ce = CrossEncoder::new(Box::new(Letters), 2).unwrap();
        let passages = ["aaa", "sss", "ease", "e"];
        let got = ce.score("sea", &passages).unwrap();
        let anchor = Letters.encode(&[ANCHOR], TextRole::Query).unwrap();
        for (p, g) in passages.iter().zip(&got) {
            let v = Letters
                .encode(&[&pair_text("sea", p)], TextRole::Passage)
                .unwrap();
            let want: f32 = v.iter().zip(&anchor).map(|(a, b)| a * b).sum();
            assert!((want - g).abs() < 1e-6, "{p}: {g} vs {want}");
        }
        // Batching (2 per pass, longest first) keeps the input order.
        assert!(got[1] != got[0]);
    }

    #[test]
    fn the_query_comes_first_so_truncation_cuts_the_passage() {
        assert!(pair_text("q?", "passage text").starts_with("q?"));
    }
}
