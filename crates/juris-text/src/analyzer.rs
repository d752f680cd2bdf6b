//! The [`Analyzer`] seam (text → terms), the registry of analyzers by name, and
//! [`AnalyzerSet`], which routes each text to the analyzer of its language.

use crate::{analyzers, detect_lang, Lang, TextError};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};

/// Turns text into index terms. Implementations are pure functions of their input: the same
/// text always yields the same terms, which is what lets an index be updated incrementally.
pub trait Analyzer: Send + Sync {
    /// The stable registry name, stored in index configs (e.g. `"ja-bigram"`).
    fn name(&self) -> &str;

    /// Calls `sink` once per term of `text`, in text order. Terms may repeat.
    fn analyze_with(&self, text: &str, sink: &mut dyn FnMut(&str));

    /// Collects the terms of `text`.
    fn analyze(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.analyze_with(text, &mut |t| out.push(t.to_string()));
        out
    }
}

/// Every registered analyzer name with a one-line description, for help texts and errors.
pub const ANALYZERS: &[(&str, &str)] = &[
    (
        "standard",
        "NFKC, lowercase, Unicode words; Han/kana runs as character bigrams",
    ),
    (
        "en-simple",
        "English: NFKC, lowercase words, no stemming, no stopwords",
    ),
    (
        "en-snowball",
        "English: lowercase words, stopwords removed, Snowball (Porter2) stems",
    ),
    (
        "ja-bigram",
        "Japanese: NFKC, overlapping character bigrams (dictionary-free)",
    ),
    (
        "ja-ipadic",
        "Japanese: MeCab-IPADIC morphological analysis, content-word base forms",
    ),
    ("ar-norm", "Arabic: orthographic normalization, words"),
    (
        "ar-light",
        "Arabic: normalization and light prefix stripping (و ف ب ك ل + ال)",
    ),
    (
        "ar-snowball",
        "Arabic: normalization, light prefix stripping, Snowball Arabic stems",
    ),
];

/// Builds the analyzer registered under `name`.
pub fn build_analyzer(name: &str) -> Result<Arc<dyn Analyzer>, TextError> {
    analyzers::build(name).unwrap_or_else(|| {
        Err(TextError::UnknownAnalyzer {
            name: name.to_string(),
            known: ANALYZERS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
    })
}

/// Which analyzer each language gets, and whether the language is fixed or detected per text.
/// This is what an index stores, so that queries are analyzed as the documents were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalyzerSpec {
    /// Analyzer for English text.
    pub en: String,
    /// Analyzer for Japanese text.
    pub ja: String,
    /// Analyzer for Arabic text.
    pub ar: String,
    /// Analyzer for text in any other language.
    pub other: String,
    /// `Some(lang)`: every text is taken to be in `lang`; `None`: detected per text.
    pub fixed: Option<Lang>,
}

impl Default for AnalyzerSpec {
    fn default() -> Self {
        AnalyzerSpec {
            en: "en-snowball".into(),
            ja: "ja-bigram".into(),
            ar: "ar-snowball".into(),
            other: "standard".into(),
            fixed: None,
        }
    }
}

impl AnalyzerSpec {
    /// The analyzer name for `lang`.
    pub fn name_for(&self, lang: Lang) -> &str {
        match lang {
            Lang::En => &self.en,
            Lang::Ja => &self.ja,
            Lang::Ar => &self.ar,
            Lang::Other => &self.other,
        }
    }

    /// Sets the analyzer for `lang`.
    pub fn set(&mut self, lang: Lang, name: &str) {
        let slot = match lang {
            Lang::En => &mut self.en,
            Lang::Ja => &mut self.ja,
            Lang::Ar => &mut self.ar,
            Lang::Other => &mut self.other,
        };
        *slot = name.to_string();
    }

    /// Checks that every name is registered, without building anything.
    pub fn validate(&self) -> Result<(), TextError> {
        for lang in Lang::ALL {
            let name = self.name_for(lang);
            if !ANALYZERS.iter().any(|(n, _)| *n == name) {
                return Err(TextError::UnknownAnalyzer {
                    name: name.to_string(),
                    known: ANALYZERS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(())
    }
}

/// Routes texts to per-language analyzers. Analyzers are built on first use, so an English
/// corpus never loads the Japanese dictionary.
pub struct AnalyzerSet {
    spec: AnalyzerSpec,
    built: [OnceLock<Arc<dyn Analyzer>>; 4],
}

impl AnalyzerSet {
    /// Creates a set from a spec; fails if a name is not registered.
    pub fn new(spec: AnalyzerSpec) -> Result<Self, TextError> {
        spec.validate()?;
        Ok(AnalyzerSet {
            spec,
            built: Default::default(),
        })
    }

    /// The spec this set was made from.
    pub fn spec(&self) -> &AnalyzerSpec {
        &self.spec
    }

    /// The language `text` is analyzed as: the fixed one, the hint, or the detected one.
    pub fn lang_of(&self, text: &str, hint: Option<Lang>) -> Lang {
        self.spec
            .fixed
            .or(hint)
            .unwrap_or_else(|| detect_lang(text))
    }

    /// The analyzer for `lang`, building it on first use.
    pub fn analyzer(&self, lang: Lang) -> Result<&Arc<dyn Analyzer>, TextError> {
        let slot = &self.built[lang as usize];
        if let Some(a) = slot.get() {
            return Ok(a);
        }
        let a = build_analyzer(self.spec.name_for(lang))?;
        Ok(slot.get_or_init(|| a))
    }

    /// Analyzes `text` in its language (see [`AnalyzerSet::lang_of`]) and returns that language.
    pub fn analyze_with(
        &self,
        text: &str,
        hint: Option<Lang>,
        sink: &mut dyn FnMut(&str),
    ) -> Result<Lang, TextError> {
        let lang = self.lang_of(text, hint);
        self.analyzer(lang)?.analyze_with(text, sink);
        Ok(lang)
    }

    /// Collects the terms of `text`.
    pub fn analyze(&self, text: &str, hint: Option<Lang>) -> Result<Vec<String>, TextError> {
        let mut out = Vec::new();
        self.analyze_with(text, hint, &mut |t| out.push(t.to_string()))?;
        Ok(out)
    }
}
