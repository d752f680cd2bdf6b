//! A tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata, as a programmatically
//! assembled [`tokenizers::Tokenizer`]:
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE with the file's merges; the
//!   pre-tokenizer split regex is chosen by `tokenizer.ggml.pre` (Llama 3, Qwen2, GPT-4o
//!   style families), else GPT-2's own byte-level regex (SmolLM2's `smollm` included).
//! * `tokenizer.ggml.model = "llama"`: SentencePiece BPE with byte fallback (`<0xXX>`
//!   tokens) and `▁` for spaces. A GGUF stores scores, not merges, so merges are rebuilt
//!   from the vocabulary, best score first (for Gemma, file order: its scores do not follow
//!   merge order). Gemma writes spaces as `▁` without a prefix space; other SentencePiece
//!   vocabularies prepend `▁` to the text unless `tokenizer.ggml.add_space_prefix` is false.
//!
//! Tokens marked control (type 3) become special tokens and user-defined ones (type 4) plain
//! added tokens, so both are matched whole. BOS/EOS are added according to
//! `tokenizer.ggml.add_bos_token` / `add_eos_token` (BOS defaults to on for SentencePiece
//! vocabularies, as llama.cpp does).
//!
//! Design decision: this follows transformers' GGUF tokenizer conversion (our parity
//! reference) step for step, so the same ids come out; the choices are spelled out above so
//! that a difference from llama.cpp can be traced.

use std::collections::{HashMap, HashSet};

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{MlError, Result};
use crate::gguf::GgufFile;

/// Which tokenizer family the file describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufTokenizerKind {
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
    ByteLevelBpe,
    /// SentencePiece BPE with byte fallback (`tokenizer.ggml.model = "llama"`).
    SentencePiece,
}

/// A tokenizer read from GGUF metadata.
pub struct GgufTokenizer {
    inner: Tokenizer,
    kind: GgufTokenizerKind,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    vocab_size: usize,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish()
    }
}

const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

// Split regexes by `tokenizer.ggml.pre`, as the families' own tokenizers define them.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split_regex(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => {
            Some(LLAMA3_SPLIT)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        "gpt-4o" | "llama4" => Some(GPT4O_SPLIT),
        _ => None,
    }
}

/// GPT-2's byte → printable character table (bytes that are printable map to themselves).
fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1u32..=0xAC);
    printable.extend(0xAEu32..=0xFF);
    let mut table = vec!['\0'; 256];
    let mut next = 0u32;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            next += 1;
            255 + next
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

fn tok_err(g: &GgufFile, e: impl std::fmt::Display) -> MlError {
    MlError::Tokenizer(format!(
        "{}: building the tokenizer from GGUF metadata: {e}",
        g.path().display()
    ))
}

/// `token -> id` with the last occurrence winning, and the distinct tokens in order of
/// first occurrence (Python dict semantics, which the reference relies on).
fn index_tokens(tokens: &[String]) -> (HashMap<&str, u32>, Vec<&str>) {
    let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
    let mut order = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if vocab.insert(t.as_str(), i as u32).is_none() {
            order.push(t.as_str());
        }
    }
    (vocab, order)
}

/// Merges implied by a SentencePiece vocabulary: every split of a token into two tokens,
/// ordered by the merged token's score (best first), then by longer left and right pieces;
/// ties keep vocabulary order.
fn merges_from_scores(
    order: &[&str],
    vocab: &HashMap<&str, u32>,
    score: &dyn Fn(&str) -> f64,
) -> Vec<(String, String)> {
    // (left, right, score, chars of left, chars of right): the sort keys are computed once
    // per merge, not per comparison (a 262k-token vocabulary has millions of merges).
    let mut merges: Vec<(&str, &str, f64, usize, usize)> = Vec::new();
    let mut local: Vec<(u32, u32, &str, &str)> = Vec::new();
    for &token in order {
        let s = score(token);
        local.clear();
        for (idx, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(idx);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                local.push((li, ri, l, r));
            }
        }
        local.sort_by_key(|&(li, ri, _, _)| (li, ri));
        merges.extend(
            local
                .iter()
                .map(|&(_, _, l, r)| (l, r, s, l.chars().count(), r.chars().count())),
        );
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4)));
    merges
        .into_iter()
        .map(|(l, r, ..)| (l.to_string(), r.to_string()))
        .collect()
}

impl GgufTokenizer {
    /// Builds the tokenizer `g` describes.
    pub fn from_gguf(g: &GgufFile) -> Result<GgufTokenizer> {
        let model = g.string("tokenizer.ggml.model")?;
        let arch = g.architecture()?;
        let mut tokens: Vec<String> = g
            .string_array("tokenizer.ggml.tokens")?
            .into_iter()
            .map(str::to_string)
            .collect();
        let types = g
            .int_array_opt("tokenizer.ggml.token_type")?
            .unwrap_or_default();
        let id = |k: &str| -> Result<Option<u32>> {
            Ok(g.usize_opt(&format!("tokenizer.ggml.{k}"))?
                .map(|v| v as u32))
        };
        let (bos, eos, unk, pad) = (
            id("bos_token_id")?,
            id("eos_token_id")?,
            id("unknown_token_id")?,
            id("padding_token_id")?,
        );
        for (name, v) in [
            ("bos", bos),
            ("eos", eos),
            ("unknown", unk),
            ("padding", pad),
        ] {
            if let Some(v) = v {
                if v as usize >= tokens.len() {
                    return Err(MlError::Corrupt {
                        path: g.path().to_path_buf(),
                        what: format!(
                            "tokenizer.ggml.{name}_token_id = {v} is outside the vocabulary of {} tokens",
                            tokens.len()
                        ),
                    });
                }
            }
        }
        let kind;
        let mut added_ok: Box<dyn Fn(&str) -> bool> = Box::new(|_| true);
        let mut inner = match model {
            "gpt2" => {
                kind = GgufTokenizerKind::ByteLevelBpe;
                let table = bytes_to_unicode();
                let alphabet: HashSet<char> = table.iter().copied().collect();
                for t in tokens.iter_mut() {
                    if !t.chars().all(|c| alphabet.contains(&c)) {
                        *t = t.bytes().map(|b| table[b as usize]).collect();
                    }
                }
                let merges: Vec<(String, String)> = g
                    .string_array("tokenizer.ggml.merges")?
                    .into_iter()
                    .filter_map(|m| m.split_once(' ').map(|(l, r)| (l.to_string(), r.to_string())))
                    .collect();
                let (vocab, _) = index_tokens(&tokens);
                let vocab: Vocab = vocab.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .continuing_subword_prefix(String::new())
                    .end_of_word_suffix(String::new())
                    .fuse_unk(false)
                    .build()
                    .map_err(|e| tok_err(g, e))?;
                let mut tk = Tokenizer::new(bpe);
                let pre = g.string_opt("tokenizer.ggml.pre")?.unwrap_or("default");
                let pt: PreTokenizerWrapper = match split_regex(pre) {
                    Some(re) => PreSequence::new(vec![
                        Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
                            .map_err(|e| tok_err(g, e))?
                            .into(),
                        ByteLevel::new(false, true, false).into(),
                    ])
                    .into(),
                    None => ByteLevel::new(false, true, true).into(),
                };
                tk.with_pre_tokenizer(Some(pt));
                tk.with_decoder(Some(ByteLevelDecoder::default()));
                // A control token spelled outside the byte alphabet is a converter mislabel;
                // adding it would grow the vocabulary past the embedding.
                added_ok = Box::new(move |t: &str| t.chars().all(|c| alphabet.contains(&c)));
                tk
            }
            "llama" => {
                kind = GgufTokenizerKind::SentencePiece;
                let gemma = matches!(arch, "gemma" | "gemma2" | "gemma3");
                if gemma {
                    // Gemma files store tokens of several spaces as real spaces; the
                    // tokenizer sees them as ▁ runs.
                    for t in tokens.iter_mut() {
                        if t.contains(' ') && t.chars().all(char::is_whitespace) {
                            *t = "\u{2581}".repeat(t.chars().count());
                        }
                    }
                }
                let scores = g.f32_array_opt("tokenizer.ggml.scores")?;
                let (vocab_idx, order) = index_tokens(&tokens);
                let merges = if gemma {
                    merges_from_scores(&order, &vocab_idx, &|t| -(vocab_idx[t] as f64))
                } else {
                    let Some(scores) = scores.as_ref().filter(|s| s.len() == tokens.len()) else {
                        return Err(MlError::Corrupt {
                            path: g.path().to_path_buf(),
                            what: format!(
                                "metadata key 'tokenizer.ggml.scores' is missing or not one score per token ({} tokens); a SentencePiece vocabulary needs it",
                                tokens.len()
                            ),
                        });
                    };
                    merges_from_scores(&order, &vocab_idx, &|t| scores[vocab_idx[t] as usize] as f64)
                };
                let vocab: Vocab =
                    vocab_idx.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                let mut builder = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .fuse_unk(true)
                    .byte_fallback(true);
                if gemma {
                    if let Some(u) = unk {
                        builder = builder.unk_token(tokens[u as usize].clone());
                    }
                }
                let mut tk = Tokenizer::new(builder.build().map_err(|e| tok_err(g, e))?);
                let mut dec: Vec<DecoderWrapper> = vec![
                    DecoderWrapper::Replace(
                        Replace::new("\u{2581}", " ").map_err(|e| tok_err(g, e))?,
                    ),
                    ByteFallback::new().into(),
                    Fuse::new().into(),
                ];
                if gemma {
                    tk.with_normalizer(Some(Replace::new(" ", "\u{2581}").map_err(|e| tok_err(g, e))?))
                        .map_err(|e| tok_err(g, e))?;
                    tk.with_pre_tokenizer(Some(
                        Split::new(" ", SplitDelimiterBehavior::MergedWithPrevious, false)
                            .map_err(|e| tok_err(g, e))?,
                    ));
                } else {
                    let prefix = g.bool_opt("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
                    let scheme = if prefix { PrependScheme::First } else { PrependScheme::Never };
                    tk.with_pre_tokenizer(Some(Metaspace::new('\u{2581}', scheme, false)));
                    if prefix {
                        dec.push(Strip::new(' ', 1, 0).into());
                    }
                }
                tk.with_decoder(Some(DecoderSequence::new(dec)));
                tk
            }
            other => {
                return Err(MlError::Unsupported(format!(
                    "{}: tokenizer.ggml.model = '{other}' is not supported; supported: gpt2 (byte-level BPE), llama (SentencePiece)",
                    g.path().display()
                )))
            }
        };
        let (vocab_idx, _) = index_tokens(&tokens);
        let mut specials: Vec<AddedToken> = Vec::new();
        let mut plain: Vec<AddedToken> = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            match types.get(i) {
                Some(&CONTROL) if added_ok(t) => {
                    specials.push(AddedToken::from(t.clone(), true).normalized(false))
                }
                Some(&USER_DEFINED) if vocab_idx.contains_key(t.as_str()) => {
                    plain.push(AddedToken::from(t.clone(), false).normalized(false))
                }
                _ => {}
            }
        }
        // The declared bos/eos/unk/pad are special even where token types are absent.
        for v in [bos, eos, unk, pad].into_iter().flatten() {
            let t = &tokens[v as usize];
            if added_ok(t) && !specials.iter().any(|s| &s.content == t) {
                specials.push(AddedToken::from(t.clone(), true).normalized(false));
            }
        }
        inner
            .add_special_tokens(specials)
            .map_err(|e| tok_err(g, e))?;
        inner.add_tokens(plain).map_err(|e| tok_err(g, e))?;
        let add_bos = g
            .bool_opt("tokenizer.ggml.add_bos_token")?
            .unwrap_or(kind == GgufTokenizerKind::SentencePiece);
        let add_eos = g.bool_opt("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        Ok(GgufTokenizer {
            inner,
            kind,
            bos,
            eos,
            pad,
            add_bos: add_bos && bos.is_some(),
            add_eos: add_eos && eos.is_some(),
            vocab_size: tokens.len(),
        })
    }

    /// The tokenizer family.
    pub fn kind(&self) -> GgufTokenizerKind {
        self.kind
    }

    /// Number of tokens in the file's vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// `tokenizer.ggml.bos_token_id`.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// `tokenizer.ggml.eos_token_id`.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// `tokenizer.ggml.padding_token_id`.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Whether [`GgufTokenizer::encode`] with `add_special` appends EOS.
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    /// Token ids of `text`; with `add_special`, BOS/EOS as the file's flags ask.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| MlError::Tokenizer(format!("encoding failed: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        if add_special && self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    /// Text of `ids`, special tokens dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| MlError::Tokenizer(format!("decoding failed: {e}")))
    }

    /// The id of `token`, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
