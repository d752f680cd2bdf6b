//! Answer-quality metrics for question answering: SQuAD-style token F1 and ROUGE-L F1 over
//! the same tokens, defined so that Arabic and Japanese answers are scored as sensibly as
//! English ones.
//!
//! Tokens ([`qa_tokens`]): the text is lowercased, every Unicode punctuation (P*) or symbol
//! (S*) character becomes a space, and the text is split on whitespace; inside a word, each
//! Han, kana or CJK-symbol character is a token of its own (Japanese is written without
//! spaces and a morphological analyzer would make the metric depend on its dictionary, so
//! characters it is, as in the usual character-level F1 for Japanese and Chinese QA); the
//! English articles "a", "an" and "the" are dropped, as SQuAD's `normalize_answer` does.
//! Arabic words stay whole (SQuAD's ASCII-only punctuation list would leave "،" and "؟"
//! glued to them, and rouge-score's default tokenizer would drop Arabic letters altogether).
//!
//! [`token_f1`] is SQuAD's F1 (multiset overlap); [`rouge_l`] is the F-measure of the
//! longest common subsequence as Google's `rouge-score` computes `rougeL`. Both are checked
//! against `scripts/fixtures/qa_fixtures.py` (rouge-score with this tokenizer, and SQuAD's
//! F1) to 1e-9.

use std::collections::HashMap;
use unicode_categories::UnicodeCategories;

/// Han, kana and the CJK marks that Japanese writes inside words; each is one token.
fn is_cjk_char(c: char) -> bool {
    matches!(c as u32,
        0x3005..=0x3007          // 々 〆 〇
        | 0x3040..=0x30FF        // hiragana, katakana (ー included)
        | 0x31F0..=0x31FF        // katakana phonetic extensions
        | 0x3400..=0x4DBF        // CJK extension A
        | 0x4E00..=0x9FFF        // CJK unified ideographs
        | 0xF900..=0xFAFF        // CJK compatibility ideographs
        | 0xFF66..=0xFF9F) // halfwidth katakana
}

/// The tokens both metrics compare (see the module docs).
pub fn qa_tokens(text: &str) -> Vec<String> {
    let lowered = text.to_lowercase();
    let spaced: String = lowered
        .chars()
        .map(|c| {
            if c.is_punctuation() || c.is_symbol() {
                ' '
            } else {
                c
            }
        })
        .collect();
    let mut out = Vec::new();
    for word in spaced.split_whitespace() {
        let mut run = String::new();
        for c in word.chars() {
            if is_cjk_char(c) {
                if !run.is_empty() {
                    out.push(std::mem::take(&mut run));
                }
                out.push(c.to_string());
            } else {
                run.push(c);
            }
        }
        if !run.is_empty() {
            out.push(run);
        }
    }
    out.retain(|t| !matches!(t.as_str(), "a" | "an" | "the"));
    out
}

/// SQuAD's token F1 of `prediction` against `reference`: the harmonic mean of precision and
/// recall of their multiset overlap. Both empty: 1; one empty: 0.
pub fn token_f1(prediction: &str, reference: &str) -> f64 {
    let (p, r) = (qa_tokens(prediction), qa_tokens(reference));
    if p.is_empty() || r.is_empty() {
        return if p.is_empty() && r.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &r {
        *counts.entry(t.as_str()).or_default() += 1;
    }
    let mut same = 0usize;
    for t in &p {
        if let Some(n) = counts.get_mut(t.as_str()) {
            if *n > 0 {
                *n -= 1;
                same += 1;
            }
        }
    }
    f_measure(same, p.len(), r.len())
}

/// ROUGE-L F1 of `prediction` against `reference` (longest common subsequence of their
/// tokens); 0 when either has no tokens.
pub fn rouge_l(prediction: &str, reference: &str) -> f64 {
    let (p, r) = (qa_tokens(prediction), qa_tokens(reference));
    if p.is_empty() || r.is_empty() {
        return 0.0;
    }
    f_measure(lcs_len(&p, &r), p.len(), r.len())
}

/// `2PR / (P + R)` with `P = same / n_pred`, `R = same / n_ref`; 0 when nothing matches.
fn f_measure(same: usize, n_pred: usize, n_ref: usize) -> f64 {
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / n_pred as f64;
    let recall = same as f64 / n_ref as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Length of the longest common subsequence (one row of the DP table at a time).
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_by_script() {
        assert_eq!(
            qa_tokens("The lessee, may NOT!"),
            vec!["lessee", "may", "not"]
        );
        assert_eq!(
            qa_tokens("無効とする。"),
            vec!["無", "効", "と", "す", "る"]
        );
        assert_eq!(
            qa_tokens("Article 90は無効"),
            vec!["article", "90", "は", "無", "効"]
        );
        assert_eq!(
            qa_tokens("يعمل القانون؟ نعم،"),
            vec!["يعمل", "القانون", "نعم"]
        );
    }

    #[test]
    fn f1_and_rouge_on_small_cases() {
        assert_eq!(token_f1("", ""), 1.0);
        assert_eq!(token_f1("void", ""), 0.0);
        assert_eq!(rouge_l("", "void"), 0.0);
        assert!((token_f1("the act is void", "an act is void") - 1.0).abs() < 1e-12);
        // pred: a b c d, ref: a c e -> lcs 2, P 1/2, R 2/3
        let f = 2.0 * 0.5 * (2.0 / 3.0) / (0.5 + 2.0 / 3.0);
        assert!((rouge_l("x1 c1 x2 d1", "x1 x2 e1") - f).abs() < 1e-12);
    }
}
