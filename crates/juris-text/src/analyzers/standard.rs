//! `standard`: the language-neutral fallback. NFKC, lowercase, Unicode words (letter/digit
//! runs); runs of Han/kana become overlapping character bigrams, since those scripts do not
//! separate words with spaces.

use super::words::{bigrams, class_split_cjk, for_each_run, Class};
use crate::normalize::nfkc_lower;
use crate::Analyzer;

/// The `standard` analyzer.
#[derive(Debug, Default, Clone, Copy)]
pub struct Standard;

impl Analyzer for Standard {
    fn name(&self) -> &str {
        "standard"
    }

    fn analyze_with(&self, text: &str, sink: &mut dyn FnMut(&str)) {
        let norm = nfkc_lower(text);
        let mut bounds = Vec::new();
        for_each_run(&norm, class_split_cjk, |run, class| match class {
            Class::Cjk => bigrams(run, &mut bounds, sink),
            _ => sink(run),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_bigrams() {
        assert_eq!(
            Standard.analyze("The NPO法人 Act, § 3(２) — Гражданский кодекс"),
            [
                "the",
                "npo",
                "法人",
                "act",
                "3",
                "2",
                "гражданский",
                "кодекс"
            ]
        );
        assert_eq!(
            Standard.analyze("民法第九十条"),
            ["民法", "法第", "第九", "九十", "十条"]
        );
        // A one-character CJK run is emitted as is; digits split off from Han.
        assert_eq!(Standard.analyze("第90条"), ["第", "90", "条"]);
        assert!(Standard.analyze("").is_empty());
        assert!(Standard.analyze("、。!?（）").is_empty());
    }
}
