//! `en-simple`: English words without stemming or stopwords. NFKC, lowercase, split on
//! anything that is not a letter or digit; an apostrophe between two letters stays inside
//! the word (`don't`, `o'brien`, typographic ’ folded to '), and a possessive `'s` is
//! dropped (`party's` → `party`; `parties'` → `parties`). Digits are kept as terms.

use super::words::{for_each_run, Class};
use crate::normalize::{is_word_char, nfkc_lower};
use crate::Analyzer;

/// The `en-simple` analyzer.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnSimple;

/// Lowercased NFKC text with typographic apostrophes (’ ‘ ʼ ＇) folded to `'`.
pub(crate) fn normalize_en(text: &str) -> String {
    let mut s = nfkc_lower(text);
    if text.is_ascii() {
        return s; // no typographic apostrophe
    }
    if s.contains(['\u{2019}', '\u{2018}', '\u{02BC}']) {
        s = s.replace(['\u{2019}', '\u{2018}', '\u{02BC}'], "'");
    }
    s
}

/// Calls `sink` with each English word of normalized text `norm` (see the module doc).
pub(crate) fn for_each_en_word(norm: &str, mut sink: impl FnMut(&str)) {
    // An apostrophe joins two word characters; everything else not a word char splits.
    let classify = |c: char| {
        if is_word_char(c) || c == '\'' {
            Class::Word
        } else {
            Class::Sep
        }
    };
    let on_run = |run: &str| {
        // Most runs hold no apostrophe: the run is then the word (and splitting would build
        // a substring searcher per word).
        if !run.contains('\'') {
            sink(run);
            return;
        }
        // Split the run at apostrophes that are not between two word characters.
        for word in split_apostrophes(run) {
            let word = word.strip_suffix("'s").unwrap_or(word);
            if !word.is_empty() {
                sink(word);
            }
        }
    };
    if norm.is_ascii() {
        for_each_ascii_run(norm, on_run);
    } else {
        let mut on_run = on_run;
        for_each_run(norm, classify, |run, _| on_run(run));
    }
}

/// [`for_each_run`] with the classes of [`for_each_en_word`], for ASCII text: a byte loop
/// (no character decoding; no ASCII character is CJK or a combining mark, so a run is a
/// maximal stretch of ASCII letters, digits and apostrophes).
fn for_each_ascii_run(norm: &str, mut f: impl FnMut(&str)) {
    let mut start: Option<usize> = None;
    for (i, &b) in norm.as_bytes().iter().enumerate() {
        let word = b.is_ascii_alphanumeric() || b == b'\'';
        match (word, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                f(&norm[s..i]);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        f(&norm[s..]);
    }
}

/// Pieces of `run` (word chars and apostrophes) with leading/trailing/doubled apostrophes
/// removed: `'quoted'` → `quoted`, `a''b` → `a`, `b`.
fn split_apostrophes(run: &str) -> impl Iterator<Item = &str> {
    run.split("''").flat_map(|p| {
        let p = p.trim_matches('\'');
        if p.is_empty() {
            None
        } else {
            Some(p)
        }
    })
}

impl Analyzer for EnSimple {
    fn name(&self) -> &str {
        "en-simple"
    }

    fn analyze_with(&self, text: &str, sink: &mut dyn FnMut(&str)) {
        let norm = normalize_en(text);
        for_each_en_word(&norm, |w| sink(w));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_words() {
        assert_eq!(
            EnSimple.analyze("The Lessee's rights under Article 612(2) aren't VOID."),
            ["the", "lessee", "rights", "under", "article", "612", "2", "aren't", "void"]
        );
        assert_eq!(
            EnSimple.analyze("the parties’ agreement"),
            ["the", "parties", "agreement"]
        );
        assert_eq!(
            EnSimple.analyze("'quoted' o'brien ''x"),
            ["quoted", "o'brien", "x"]
        );
        assert_eq!(EnSimple.analyze("ＦＵＬＬ－ｗｉｄｔｈ"), ["full", "width"]);
        assert!(EnSimple.analyze("' '' '''").is_empty());
    }

    #[test]
    fn ascii_and_apostrophe_fast_paths_match_general_code() {
        let classify = |c: char| {
            if is_word_char(c) || c == '\'' {
                Class::Word
            } else {
                Class::Sep
            }
        };
        for t in crate::normalize::tests::MIXED {
            let norm = normalize_en(t);
            let mut fast = Vec::new();
            for_each_en_word(&norm, |w| fast.push(w.to_string()));
            let mut slow = Vec::new();
            // The general character loop (the ASCII byte loop is what `fast` used for ASCII).
            for_each_run(&norm, classify, |run, _| {
                for word in split_apostrophes(run) {
                    let word = word.strip_suffix("'s").unwrap_or(word);
                    if !word.is_empty() {
                        slow.push(word.to_string());
                    }
                }
            });
            assert_eq!(fast, slow, "{t:?}");
        }
    }
}
