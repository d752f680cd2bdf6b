//! `ar-norm`: Arabic orthographic normalization ([`crate::normalize::normalize_arabic`]:
//! NFKC, no diacritics or tatweel, folded alef/ta marbuta/alef maqsura/hamza carriers,
//! ASCII digits) plus lowercase, then words. No stopwords, no stemming.

use super::words::for_each_word;
use crate::normalize::normalize_arabic;
use crate::Analyzer;

/// The `ar-norm` analyzer.
#[derive(Debug, Default, Clone, Copy)]
pub struct ArNorm;

impl Analyzer for ArNorm {
    fn name(&self) -> &str {
        "ar-norm"
    }

    fn analyze_with(&self, text: &str, sink: &mut dyn FnMut(&str)) {
        let norm = normalize_arabic(text);
        for_each_word(&norm, |w| sink(w));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_words() {
        assert_eq!(
            ArNorm.analyze("تُعتبرُ المسؤوليةُ التقصيرية، وفقاً للمادة (٢٥٦)."),
            ["تعتبر", "المسووليه", "التقصيريه", "وفقا", "للماده", "256"]
        );
        assert_eq!(ArNorm.analyze("إلى القاضي ABC"), ["الي", "القاضي", "abc"]);
    }
}
