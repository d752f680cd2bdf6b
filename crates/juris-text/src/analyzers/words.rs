//! Tokenization loops shared by the analyzers: runs of word characters, character bigrams.
//! They work on already-normalized text and hand out slices of it, so no term is allocated
//! unless an analyzer rewrites it (stemming, prefix stripping).

use crate::normalize::{is_cjk, is_mark, is_word_char};

/// What a character contributes to a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Class {
    /// Ends a run and is not part of any term.
    Sep,
    /// Letters and digits of space-separated scripts.
    Word,
    /// Han and kana: scripts without spaces, indexed as bigrams.
    Cjk,
}

/// `standard`'s classes: CJK apart from other word characters.
pub(crate) fn class_split_cjk(c: char) -> Class {
    if is_cjk(c) {
        Class::Cjk
    } else if c.is_alphanumeric() {
        Class::Word
    } else {
        Class::Sep
    }
}

/// One class for every word character (CJK included): `ja-bigram` and the word analyzers.
pub(crate) fn class_word(c: char) -> Class {
    if is_word_char(c) {
        Class::Word
    } else {
        Class::Sep
    }
}

/// Calls `f(run, class)` for each maximal run of characters of one non-`Sep` class. A
/// combining mark continues the current run (a virama or vowel sign stays inside its word)
/// but never starts one, so lone marks are dropped.
pub(crate) fn for_each_run(
    text: &str,
    classify: impl Fn(char) -> Class,
    mut f: impl FnMut(&str, Class),
) {
    let mut start = 0usize;
    let mut cur = Class::Sep;
    for (i, c) in text.char_indices() {
        let class = match classify(c) {
            // (No ASCII character is a combining mark: skip the table lookup.)
            Class::Sep if cur != Class::Sep && !c.is_ascii() && is_mark(c) => cur,
            k => k,
        };
        if class != cur {
            if cur != Class::Sep {
                f(&text[start..i], cur);
            }
            start = i;
            cur = class;
        }
    }
    if cur != Class::Sep {
        f(&text[start..], cur);
    }
}

/// Calls `sink` with each maximal run of word characters (letters, digits, CJK).
pub(crate) fn for_each_word(text: &str, mut sink: impl FnMut(&str)) {
    for_each_run(text, class_word, |w, _| sink(w));
}

/// Emits the overlapping character bigrams of `run`, or `run` itself when it is one
/// character long. `bounds` is scratch space, reused across calls to avoid allocation.
pub(crate) fn bigrams(run: &str, bounds: &mut Vec<usize>, sink: &mut dyn FnMut(&str)) {
    bounds.clear();
    bounds.extend(run.char_indices().map(|(i, _)| i));
    bounds.push(run.len());
    if bounds.len() <= 3 {
        // Zero (impossible for a run) or one or two characters: the run is its own term.
        if !run.is_empty() {
            sink(run);
        }
        return;
    }
    for w in bounds.windows(3) {
        sink(&run[w[0]..w[2]]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(text: &str) -> Vec<(String, Class)> {
        let mut v = Vec::new();
        for_each_run(text, class_split_cjk, |r, c| v.push((r.to_string(), c)));
        v
    }

    #[test]
    fn runs_split_scripts() {
        assert_eq!(
            runs("npo法人 abc"),
            vec![
                ("npo".into(), Class::Word),
                ("法人".into(), Class::Cjk),
                ("abc".into(), Class::Word)
            ]
        );
        // A lone combining mark starts nothing; a virama stays in its word.
        assert_eq!(runs("\u{0301}"), vec![]);
        assert_eq!(
            runs("क्ष x"),
            vec![("क्ष".into(), Class::Word), ("x".into(), Class::Word)]
        );
    }

    #[test]
    fn bigram_shapes() {
        let mut b = Vec::new();
        let mut out = Vec::new();
        for s in ["a", "ab", "abc", "民法第"] {
            bigrams(s, &mut b, &mut |t| out.push(t.to_string()));
        }
        assert_eq!(out, ["a", "ab", "ab", "bc", "民法", "法第"]);
    }
}
