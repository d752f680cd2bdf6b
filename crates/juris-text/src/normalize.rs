//! Character-level normalization shared by every analyzer and by the structure splitter:
//! NFKC, Arabic orthographic folding, digit folding across scripts, the character classes
//! the tokenizers split on, and reading of Japanese numerals (`第九十条の二` → `90-2`).
//!
//! Everything here is a pure function of its input and never panics: malformed or unusual
//! Unicode (lone combining marks, unassigned code points, private use) passes through or is
//! dropped, it is never an error.

use std::borrow::Cow;
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// NFKC-normalizes `text`, borrowing it when it is already in NFKC (the common ASCII case).
///
/// NFKC folds full-width Latin and digits to ASCII, half-width katakana to full-width,
/// ligatures and Arabic presentation forms to their base letters, and composes
/// letter + combining hamza/madda into the precomposed Arabic letters.
pub fn nfkc(text: &str) -> Cow<'_, str> {
    if is_nfkc_quick(text.chars()) == IsNormalized::Yes {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.nfkc().collect())
    }
}

/// NFKC, then Unicode lowercase. The front half of every analyzer.
pub fn nfkc_lower(text: &str) -> String {
    if text.is_ascii() {
        // ASCII is already NFKC, and its Unicode lowercase is the ASCII one.
        return text.to_ascii_lowercase();
    }
    nfkc_lower_general(text)
}

/// [`nfkc_lower`] without the ASCII fast path.
fn nfkc_lower_general(text: &str) -> String {
    let n = nfkc(text);
    let mut out = String::with_capacity(n.len());
    for c in n.chars() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// NFKC, Arabic orthographic folding ([`fold_arabic_char`]), digit folding
/// ([`digit_value`]) and lowercase (for Latin mixed into Arabic text), in one pass.
pub fn normalize_arabic(text: &str) -> String {
    let n = nfkc(text);
    let mut out = String::with_capacity(n.len());
    for c in n.chars() {
        if let Some(f) = fold_arabic_char(c) {
            if f.is_ascii() {
                out.push(f.to_ascii_lowercase());
            } else {
                out.extend(f.to_lowercase());
            }
        }
    }
    out
}

/// Arabic orthographic folding of `text` alone (no NFKC, no lowercase): see
/// [`fold_arabic_char`]. Apply after NFKC, so that decomposed hamza/madda sequences are
/// composed before they are folded.
pub fn fold_arabic(text: &str) -> String {
    text.chars().filter_map(fold_arabic_char).collect()
}

/// Folds one character for Arabic matching; `None` means the character is dropped.
///
/// Choices (the usual ones of Arabic IR, e.g. Larkey et al.'s light stemmers):
/// - dropped: tashkeel and Quranic marks (U+064B–U+065F, superscript alef U+0670,
///   U+06D6–U+06ED) and tatweel (U+0640): they are optional in ordinary text;
/// - alef with hamza above/below, alef with madda and alef wasla (أ إ آ ٱ) → bare alef ا:
///   hamza on alef is written inconsistently;
/// - ta marbuta ة → ha ه and alef maqsura ى → ya ي: both are commonly written either way
///   at word end;
/// - hamza on waw ؤ → و and hamza on ya ئ → ي: the carrier letter is kept and the hamza
///   dropped, like the alef forms (bare hamza ء is left alone);
/// - Persian kaf ک → ك and Farsi ya ی → ي: Arabic text typed on Persian keyboards;
/// - Arabic-Indic (٠–٩) and Eastern Arabic-Indic (۰–۹) digits → ASCII digits, which NFKC
///   does not do.
pub fn fold_arabic_char(c: char) -> Option<char> {
    match c {
        '\u{064B}'..='\u{065F}' | '\u{0670}' | '\u{06D6}'..='\u{06ED}' | '\u{0640}' => None,
        'أ' | 'إ' | 'آ' | 'ٱ' => Some('ا'),
        'ة' => Some('ه'),
        'ى' => Some('ي'),
        'ؤ' => Some('و'),
        'ئ' => Some('ي'),
        'ک' => Some('ك'),
        'ی' => Some('ي'),
        _ => Some(fold_digit(c)),
    }
}

/// The value of a decimal digit in ASCII, full-width, Arabic-Indic or Eastern Arabic-Indic
/// form, or `None`.
pub fn digit_value(c: char) -> Option<u32> {
    match c {
        '0'..='9' => Some(c as u32 - '0' as u32),
        '０'..='９' => Some(c as u32 - '０' as u32),
        '٠'..='٩' => Some(c as u32 - '٠' as u32),
        '۰'..='۹' => Some(c as u32 - '۰' as u32),
        _ => None,
    }
}

/// Maps a digit of any of the scripts of [`digit_value`] to its ASCII digit; other
/// characters are returned unchanged.
pub fn fold_digit(c: char) -> char {
    match digit_value(c) {
        Some(d) => char::from(b'0' + d as u8),
        None => c,
    }
}

/// Replaces every digit of any of the scripts of [`digit_value`] by its ASCII digit.
pub fn fold_digits(text: &str) -> String {
    text.chars().map(fold_digit).collect()
}

/// True for characters of Japanese/Chinese writing that is not separated by spaces: Han
/// ideographs (all planes), hiragana, katakana (with the prolonged sound mark ー), and the
/// iteration/ideographic marks 々 〆 〇 ヶ.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3005..=0x3007        // 々 〆 〇
        | 0x3041..=0x309F      // hiragana and its marks
        | 0x30A0..=0x30FA      // katakana (without the middle dot U+30FB)
        | 0x30FC..=0x30FF      // ー ヽ ヾ ヿ
        | 0x31F0..=0x31FF      // katakana phonetic extensions
        | 0x3400..=0x4DBF      // Han extension A
        | 0x4E00..=0x9FFF      // Han
        | 0xF900..=0xFAFF      // Han compatibility
        | 0x20000..=0x3134F    // Han extensions B–G
    )
}

/// True for characters that belong inside a word: letters, digits and CJK. Combining marks
/// are handled by the tokenizers (they continue a word but never start one).
pub fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || is_cjk(c)
}

/// True for combining marks (general categories Mn, Mc, Me).
pub fn is_mark(c: char) -> bool {
    unicode_normalization::char::is_combining_mark(c)
}

/// The value of one Japanese numeral character: a digit (kanji, ASCII, full-width) or a
/// unit. Units are returned as `Err(unit)`.
fn ja_numeral(c: char) -> Option<Result<u64, u64>> {
    let d = match c {
        '〇' | '零' => 0,
        '一' | '壱' => 1,
        '二' | '弐' => 2,
        '三' | '参' => 3,
        '四' => 4,
        '五' => 5,
        '六' => 6,
        '七' => 7,
        '八' => 8,
        '九' => 9,
        '十' | '拾' => return Some(Err(10)),
        '百' => return Some(Err(100)),
        '千' => return Some(Err(1000)),
        '万' => return Some(Err(10_000)),
        '億' => return Some(Err(100_000_000)),
        _ => return digit_value(c).map(|d| Ok(d as u64)),
    };
    Some(Ok(d))
}

/// True if `c` can be part of a Japanese number ([`parse_japanese_number`]).
pub fn is_japanese_numeral(c: char) -> bool {
    ja_numeral(c).is_some()
}

/// Reads a Japanese number written with kanji numerals (`九十` → 90, `三百九十八` → 398,
/// `千二十` → 1020, `二万` → 20000), positional kanji digits (`一〇五` → 105), ASCII or
/// full-width digits (`９０` → 90), or a mix (`3万` → 30000). Returns `None` for an empty
/// string, any other character, or overflow.
pub fn parse_japanese_number(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0; // completed 万/億 groups
    let mut section: u64 = 0; // value below the current 万/億 group
    let mut digits: Option<u64> = None; // pending digit string (positional)
    for c in s.chars() {
        match ja_numeral(c)? {
            Ok(d) => digits = Some(digits.unwrap_or(0).checked_mul(10)?.checked_add(d)?),
            Err(unit) if unit < 10_000 => {
                section = section.checked_add(digits.take().unwrap_or(1).checked_mul(unit)?)?;
            }
            Err(unit) => {
                let group = section.checked_add(digits.take().unwrap_or(0))?;
                let group = if group == 0 { 1 } else { group };
                total = total.checked_add(group.checked_mul(unit)?)?;
                section = 0;
            }
        }
    }
    total.checked_add(section)?.checked_add(digits.unwrap_or(0))
}

/// Reads a Japanese article marker at the start of `s`: `第` number `条`, then any number of
/// branch numbers `の` number. Returns the normalized number (`第九十条` → `"90"`,
/// `第三条の二` → `"3-2"`, `第１条の２の３` → `"1-2-3"`) and the byte length consumed.
/// A `の` not followed by a number is not consumed (`第九十条の規定` → `"90"`, 12 bytes).
pub fn parse_japanese_article_marker(s: &str) -> Option<(String, usize)> {
    let rest = s.strip_prefix('第')?;
    let (n, len) = leading_japanese_number(rest)?;
    let rest = &rest[len..];
    let rest = rest.strip_prefix('条')?;
    let mut number = n.to_string();
    let mut consumed = s.len() - rest.len();
    let mut rest = rest;
    while let Some(after) = rest.strip_prefix('の') {
        match leading_japanese_number(after) {
            Some((b, blen)) => {
                number.push('-');
                number.push_str(&b.to_string());
                rest = &after[blen..];
                consumed = s.len() - rest.len();
            }
            None => break,
        }
    }
    Some((number, consumed))
}

/// Converts a whole Japanese article reference (`第九十条` → `"90"`, `第三条の二` → `"3-2"`);
/// `None` if `s` is anything else.
pub fn japanese_article_number(s: &str) -> Option<String> {
    let s = s.trim();
    match parse_japanese_article_marker(s) {
        Some((n, len)) if len == s.len() => Some(n),
        _ => None,
    }
}

/// The longest prefix of `s` made of Japanese numeral characters, and its value.
fn leading_japanese_number(s: &str) -> Option<(u64, usize)> {
    let len = s
        .char_indices()
        .find(|(_, c)| !is_japanese_numeral(*c))
        .map_or(s.len(), |(i, _)| i);
    if len == 0 {
        return None;
    }
    Some((parse_japanese_number(&s[..len])?, len))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn nfkc_folds_width() {
        assert_eq!(nfkc("ＡＢＣ１２３"), "ABC123");
        assert_eq!(nfkc("ｶﾀｶﾅ"), "カタカナ");
        assert!(matches!(nfkc("plain ascii"), Cow::Borrowed(_)));
        assert_eq!(nfkc_lower("Ｌａｗ ＡＣＴ"), "law act");
    }

    /// Texts for checking fast paths against the general code: ASCII, Latin with accents and
    /// ligatures, full-width, typographic apostrophes, Arabic, Japanese, combining marks.
    pub(crate) const MIXED: &[&str] = &[
        "",
        "The Lessee's rights under Article 612(2) aren't VOID; o'brien ''x' 'quoted'",
        "ALL CAPS, digits 0123456789 and punctuation !\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n",
        "Café naïve ÉCOLE ﬁnance Straße İstanbul ΣΟΦΙΑ the parties’ agreement ʼx‘y",
        "ＦＵＬＬ－ｗｉｄｔｈ ＡＢＣ１２３ ｶﾀｶﾅ",
        "ما هي عقوبة السرقة في القانون الأردني؟ المادة ١٢٣ \u{FEFB}",
        "民法第九十条の規定により無効とする。NPO法人の設立について",
        "e\u{0301}te\u{0301} क्ष x \u{0301} lone",
    ];

    #[test]
    fn ascii_fast_path_matches_general() {
        for t in MIXED {
            assert_eq!(nfkc_lower(t), nfkc_lower_general(t), "{t:?}");
        }
        // The tokenizers skip the combining-mark lookup for ASCII.
        assert!((0u8..128).all(|b| !is_mark(char::from(b))));
    }

    #[test]
    fn arabic_folding() {
        // Diacritics and tatweel are dropped.
        assert_eq!(normalize_arabic("القَانُونُ"), "القانون");
        assert_eq!(normalize_arabic("المــادة"), "الماده");
        // Alef forms, ta marbuta, alef maqsura, hamza carriers.
        assert_eq!(normalize_arabic("أحكام إلى آخر ٱلله"), "احكام الي اخر الله");
        assert_eq!(normalize_arabic("مسؤولية"), "مسووليه");
        assert_eq!(normalize_arabic("هيئة"), "هييه");
        assert_eq!(normalize_arabic("مستشفى"), "مستشفي");
        // Digits of both Arabic-Indic blocks, and Latin lowercased.
        assert_eq!(
            normalize_arabic("المادة ١٢٣ و ۴۵ ABC"),
            "الماده 123 و 45 abc"
        );
        // Presentation forms go through NFKC first (lam-alef ligature).
        assert_eq!(normalize_arabic("\u{FEFB}"), "لا");
        // Decomposed alef + hamza above composes, then folds.
        assert_eq!(normalize_arabic("\u{0627}\u{0654}"), "ا");
        // Lone combining marks vanish without panicking.
        assert_eq!(normalize_arabic("\u{064E}\u{0651}"), "");
    }

    #[test]
    fn japanese_numbers() {
        assert_eq!(parse_japanese_number("九十"), Some(90));
        assert_eq!(parse_japanese_number("十"), Some(10));
        assert_eq!(parse_japanese_number("三百九十八"), Some(398));
        assert_eq!(parse_japanese_number("千二十"), Some(1020));
        assert_eq!(parse_japanese_number("七百二十四"), Some(724));
        assert_eq!(parse_japanese_number("一〇五"), Some(105));
        assert_eq!(parse_japanese_number("２０"), Some(20));
        assert_eq!(parse_japanese_number("二万三千"), Some(23000));
        assert_eq!(parse_japanese_number("万"), Some(10000));
        assert_eq!(parse_japanese_number(""), None);
        assert_eq!(parse_japanese_number("九x"), None);
        assert_eq!(parse_japanese_number("99999999999999999999999"), None);
        // Odd but harmless: repeated units just accumulate, never overflow silently.
        assert_eq!(parse_japanese_number("億億"), Some(200_000_000));
        assert_eq!(
            parse_japanese_number(&"億".repeat(100_000)),
            Some(10_000_000_000_000)
        );
    }

    #[test]
    fn japanese_article_markers() {
        assert_eq!(japanese_article_number("第九十条").as_deref(), Some("90"));
        assert_eq!(
            japanese_article_number("第三条の二").as_deref(),
            Some("3-2")
        );
        assert_eq!(
            japanese_article_number("第１条の２の３").as_deref(),
            Some("1-2-3")
        );
        assert_eq!(
            japanese_article_number("第三百九十八条の二十二").as_deref(),
            Some("398-22")
        );
        assert_eq!(japanese_article_number("第九十条の規定"), None);
        assert_eq!(japanese_article_number("第条"), None);
        assert_eq!(
            parse_japanese_article_marker("第九十条の規定"),
            Some(("90".to_string(), 12))
        );
    }

    #[test]
    fn digits() {
        assert_eq!(fold_digits("٣٤ ۵ ７"), "34 5 7");
        assert_eq!(digit_value('x'), None);
    }
}
