//! `ar-light`: `ar-norm` words, minus Arabic stopwords, with light prefix stripping.
//!
//! The stripping rule, applied once per word on the normalized form, is deliberately
//! conservative because every Arabic letter that can be a prefix is also a root letter
//! (وزير, فرض, بيع, كتاب, لجنة):
//! 1. a leading conjunction و or ف is removed only when a definite article follows (وال,
//!    فال, وبال, فلل, …) or when at least 4 letters remain;
//! 2. a preposition ب or ك is removed only together with a following article (بال, كال),
//!    and ل likewise (لال is rare; لل is ل + ال with the alef elided, so لل is removed);
//! 3. the article ال is removed when at least 2 letters remain (الحق → حق).
//!
//! No suffix is removed: plural and pronoun endings overlap with root letters too often
//! (قانون ends in ون), and Snowball handles suffixes in `ar-snowball`.
//!
//! Stopwords ([`AR_STOPWORDS`]) are compared in normalized form, before and after stripping
//! (so وفي and فيما-like clitic forms of a stopword are dropped too).

use super::words::for_each_word;
use crate::fxhash::FxBuild;
use crate::normalize::normalize_arabic;
use crate::Analyzer;
use std::collections::HashSet;
use std::sync::OnceLock;

/// Arabic function words dropped by `ar-light` and `ar-snowball`, written with their usual
/// spelling; they are normalized ([`normalize_arabic`]) before comparison. Prepositions,
/// conjunctions, pronouns, demonstratives, relatives, particles, and the question words
/// of legal questions (ما هي، متى، كيف، هل).
pub const AR_STOPWORDS: &[&str] = &[
    // prepositions and particles
    "في",
    "من",
    "على",
    "إلى",
    "عن",
    "مع",
    "بين",
    "عند",
    "لدى",
    "منذ",
    "حتى",
    "نحو",
    "دون",
    "خلال",
    "ضمن",
    "عبر",
    "لدي",
    "أن",
    "إن",
    "أنّ",
    "إنّ",
    "لأن",
    "كأن",
    "لكن",
    "بل",
    "أو",
    "أم",
    "ثم",
    "إذا",
    "إذ",
    "لو",
    "لولا",
    "لا",
    "لم",
    "لن",
    "ما",
    "قد",
    "لقد",
    "سوف",
    "إلا",
    "غير",
    "سوى",
    "كي",
    "لكي",
    "حيث",
    "كما",
    "مثل",
    "أي",
    "أيّ",
    "كل",
    "بعض",
    "جميع",
    "هل",
    // pronouns and demonstratives
    "هو",
    "هي",
    "هم",
    "هن",
    "هما",
    "أنا",
    "نحن",
    "أنت",
    "أنتم",
    "هذا",
    "هذه",
    "ذلك",
    "تلك",
    "هذان",
    "هاتان",
    "هؤلاء",
    "أولئك",
    "هنا",
    "هناك",
    // relatives
    "الذي",
    "التي",
    "الذين",
    "اللذان",
    "اللتان",
    "اللذين",
    "اللتين",
    "اللاتي",
    "اللواتي",
    // forms with attached pronouns that carry no content
    "به",
    "بها",
    "بهم",
    "له",
    "لها",
    "لهم",
    "فيه",
    "فيها",
    "فيهم",
    "منه",
    "منها",
    "منهم",
    "عليه",
    "عليها",
    "عليهم",
    "عنه",
    "عنها",
    "إليه",
    "إليها",
    "أنه",
    "أنها",
    "إنه",
    "إنها",
    "مما",
    "عما",
    "فيما",
    "بما",
    "كما",
    "لما",
    "إنما",
    "أما",
    "بأن",
    "بأنه",
    // copulas
    "كان",
    "كانت",
    "يكون",
    "تكون",
    "ليس",
    "ليست",
    // question words
    "متى",
    "كيف",
    "ماذا",
    "لماذا",
    "أين",
    "كم",
    "ماهي",
    "ماهو",
];

fn stopwords() -> &'static HashSet<String, FxBuild> {
    static SET: OnceLock<HashSet<String, FxBuild>> = OnceLock::new();
    SET.get_or_init(|| AR_STOPWORDS.iter().map(|w| normalize_arabic(w)).collect())
}

/// True if `word` (already normalized with [`normalize_arabic`]) is an Arabic stopword.
pub fn is_ar_stopword(word: &str) -> bool {
    stopwords().contains(word)
}

/// Light prefix stripping of one normalized Arabic word (see the module doc for the rule).
/// Returns a suffix of `word`; words without Arabic prefixes come back unchanged.
pub fn light_strip(word: &str) -> &str {
    let n = |s: &str| s.chars().count();
    let mut s = word;
    // 1. conjunction
    if let Some(r) = s.strip_prefix('و').or_else(|| s.strip_prefix('ف')) {
        let article_follows = ["ال", "بال", "كال", "لل"]
            .iter()
            .any(|p| r.starts_with(p) && n(&r[p.len()..]) >= 2);
        if article_follows || n(r) >= 4 {
            s = r;
        }
    }
    // 2 + 3. preposition with article, or article alone, or لل
    for p in ["بال", "كال", "لل", "ال"] {
        if let Some(r) = s.strip_prefix(p) {
            if n(r) >= 2 {
                return r;
            }
            break;
        }
    }
    s
}

/// Calls `sink` with each `ar-light` term of `text`.
pub(crate) fn for_each_light_term(text: &str, mut sink: impl FnMut(&str)) {
    let norm = normalize_arabic(text);
    let stops = stopwords();
    for_each_word(&norm, |w| {
        if stops.contains(w) {
            return;
        }
        let s = light_strip(w);
        if !stops.contains(s) {
            sink(s);
        }
    });
}

/// The `ar-light` analyzer.
#[derive(Debug, Default, Clone, Copy)]
pub struct ArLight;

impl Analyzer for ArLight {
    fn name(&self) -> &str {
        "ar-light"
    }

    fn analyze_with(&self, text: &str, sink: &mut dyn FnMut(&str)) {
        for_each_light_term(text, |w| sink(w));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_prefixes_conservatively() {
        assert_eq!(light_strip("والمحكمه"), "محكمه");
        assert_eq!(light_strip("بالعقد"), "عقد");
        assert_eq!(light_strip("للمحكمه"), "محكمه");
        assert_eq!(light_strip("الحق"), "حق");
        assert_eq!(light_strip("وبالتالي"), "تالي");
        // Root letters that look like prefixes stay.
        assert_eq!(light_strip("وزير"), "وزير");
        assert_eq!(light_strip("بيع"), "بيع");
        assert_eq!(light_strip("كتاب"), "كتاب");
        assert_eq!(light_strip("لجنه"), "لجنه");
        assert_eq!(light_strip("فرض"), "فرض");
        // و + at least 4 letters: a conjunction.
        assert_eq!(light_strip("وعقوبه"), "عقوبه");
        assert_eq!(light_strip("ال"), "ال");
        assert_eq!(light_strip(""), "");
    }

    #[test]
    fn analyzes_sentence() {
        assert_eq!(
            ArLight.analyze("ما هي عقوبة السرقة في القانون الأردني؟"),
            ["عقوبه", "سرقه", "قانون", "اردني"]
        );
        assert_eq!(
            ArLight.analyze("وللمحكمة أن تقضي بالتعويض وفقاً للمادة ٢٥٦"),
            ["محكمه", "تقضي", "تعويض", "وفقا", "ماده", "256"]
        );
    }

    #[test]
    fn stopwords_normalized() {
        assert!(is_ar_stopword("الي"));
        assert!(is_ar_stopword("علي"));
        assert!(is_ar_stopword("التي"));
        assert!(!is_ar_stopword("قانون"));
    }
}
