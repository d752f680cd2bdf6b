//! Splitting a law text into articles by its legal structure: article markers at line
//! start (`第九十条`, `المادة ٥`, `Article 90`), the caption line before a marker, and
//! paragraph numbering inside an article.
//!
//! Rules (all markers at line start, after optional whitespace, full-width space included):
//! - **Japanese**: `第` N `条`, N in kanji numerals or ASCII/full-width digits, then branch
//!   numbers `の` N any number of times (`第三条の二の三` → `3-2-3`). The marker must be
//!   followed by whitespace, `（`/`(` or the line end, so a sentence that starts with a
//!   reference (`第九十条の規定は…`) is not an article.
//! - **Arabic**: `المادة` / `مادة` (any diacritics, tatweel, ة or ه) then N in Arabic-Indic,
//!   Eastern Arabic-Indic or Latin digits, optionally in `( )` or `[ ]`, optionally followed
//!   by `مكرر` (→ `Nbis`), or an ordinal word (`الأولى` … `العاشرة`, `الحادية عشرة` …
//!   `التاسعة عشرة`, `العشرون` → 1…20), then optionally `:` `-` `–` `—` `.` `)`. Without such
//!   a separator or parentheses, a marker whose next word is a referencing word (من، في،
//!   وفق، المذكورة، …) is taken for a sentence, not an article.
//! - **English**: `Article` / `ARTICLE` / `Art.` (any case) then N (digits, or upper-case
//!   Roman numerals: `Article IV` → `4`), optional branches `-2` (→ `3-2`) or a suffix
//!   `bis`/`ter`/… or one letter (`3bis`, `3a`), optional `.` or `:`. A marker followed by a
//!   lower-case word (`Article 5 of the Act …`) is a sentence, not an article.
//! - `Lang::Other` tries the Japanese, then Arabic, then English rule on every line.
//!
//! A caption is a line made only of one parenthesized phrase (`（意思能力）`,
//! `(Mental Capacity)`), the nearest non-blank line before a marker; it becomes the
//! article's heading and its text starts there. Failing that, a parenthesized phrase right
//! after the marker (`Article 90 (Public Policy)`) is the heading. Phrases of digits, one
//! letter or Roman numerals (`(1)`, `(a)`, `(iv)`) are paragraph/item numbers, never headings.
//!
//! Paragraphs: the first is implicit; a later line that starts with the next paragraph
//! number counts (`２　…` / `2 …` in Japanese, `(2)` / `2.` / `2)` / `2-` elsewhere). Only
//! the number one above the current count is accepted, which keeps stray numbers out.
//!
//! Text before the first article (title, preamble, table of contents) is returned as
//! [`SplitLaw::preamble`]. Chapter and section headings between articles (`第二章`,
//! `الفصل الثاني`, `Chapter 2`) stay inside the preceding article's text. Supplementary
//! provisions (附則) that restart numbering yield repeated numbers; callers that need unique
//! ids should add the line or an occurrence counter.

use crate::normalize::{digit_value, is_cjk, normalize_arabic, parse_japanese_article_marker};
use crate::Lang;
use serde::{Deserialize, Serialize};

/// One article of a law text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArticleChunk {
    /// Normalized ASCII article number: `"90"`, `"3-2"`, `"3-2-3"`, `"3bis"`.
    pub number: String,
    /// The article caption without its parentheses, when there is one.
    pub heading: Option<String>,
    /// The full article text, caption line (if any) and marker line included, lines joined
    /// with `\n`, trailing blank lines dropped.
    pub text: String,
    /// Number of paragraphs (at least 1).
    pub paragraphs: u32,
    /// 1-based line of the article marker in the input.
    pub line: usize,
}

/// A law text split into its preamble and its articles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitLaw {
    /// Everything before the first article (or before its caption), trimmed; the whole text
    /// when there are no articles.
    pub preamble: String,
    /// The articles in text order.
    pub articles: Vec<ArticleChunk>,
}

/// An article marker found at the start of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArticleMarker {
    /// Normalized ASCII article number.
    pub number: String,
    /// A parenthesized caption right after the marker, if any.
    pub inline_heading: Option<String>,
}

/// Splits `text` into articles; the preamble is dropped (see [`split_law`] to keep it).
/// A text without article markers gives no articles: treat it as one document.
pub fn split_articles(text: &str, lang: Lang) -> Vec<ArticleChunk> {
    split_law(text, lang).articles
}

/// Splits `text` into its preamble and articles by the rules of `lang` (see the module doc).
pub fn split_law(text: &str, lang: Lang) -> SplitLaw {
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    // (text start line, marker line, marker, caption)
    let mut starts: Vec<(usize, usize, ArticleMarker, Option<String>)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(marker) = parse_article_marker(line, lang) else {
            continue;
        };
        let floor = starts.last().map_or(0, |s| s.1 + 1);
        let mut start = i;
        let mut caption = None;
        if let Some(j) = (floor..i).rev().find(|&j| !lines[j].trim().is_empty()) {
            if let Some(c) = caption_line(lines[j]) {
                start = j;
                caption = Some(c);
            }
        }
        starts.push((start, i, marker, caption));
    }
    let preamble_end = starts.first().map_or(lines.len(), |s| s.0);
    let preamble = lines[..preamble_end].join("\n").trim().to_string();
    let mut articles = Vec::with_capacity(starts.len());
    for (k, (start, marker_line, marker, caption)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(lines.len(), |s| s.0);
        let mut region = &lines[*start..end];
        while let Some((last, rest)) = region.split_last() {
            if last.trim().is_empty() {
                region = rest;
            } else {
                break;
            }
        }
        let mut paragraphs = 1u32;
        for l in &lines[marker_line + 1..end] {
            if paragraph_number(l, lang) == Some(paragraphs + 1) {
                paragraphs += 1;
            }
        }
        articles.push(ArticleChunk {
            number: marker.number.clone(),
            heading: caption.clone().or_else(|| marker.inline_heading.clone()),
            text: region.join("\n"),
            paragraphs,
            line: marker_line + 1,
        });
    }
    SplitLaw { preamble, articles }
}

/// Parses an article marker at the start of `line` (after whitespace) by the rules of
/// `lang`; `Lang::Other` tries every rule.
pub fn parse_article_marker(line: &str, lang: Lang) -> Option<ArticleMarker> {
    let line = line.trim_start();
    let (number, rest) = match lang {
        Lang::Ja => ja_marker(line)?,
        Lang::Ar => ar_marker(line)?,
        Lang::En => en_marker(line)?,
        Lang::Other => ja_marker(line)
            .or_else(|| ar_marker(line))
            .or_else(|| en_marker(line))?,
    };
    Some(ArticleMarker {
        number,
        inline_heading: inline_heading(rest),
    })
}

/// `第N条(のM)*` followed by whitespace, an opening parenthesis or the end.
fn ja_marker(line: &str) -> Option<(String, &str)> {
    let (number, len) = parse_japanese_article_marker(line)?;
    let rest = &line[len..];
    match rest.chars().next() {
        None => Some((number, rest)),
        Some(c) if c.is_whitespace() || c == '（' || c == '(' => Some((number, rest)),
        _ => None,
    }
}

/// Reads leading digits of any script; returns the ASCII digits and the rest.
fn leading_digits(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut end = 0;
    for (i, c) in s.char_indices() {
        match digit_value(c) {
            Some(d) if out.len() < 12 => {
                out.push(char::from(b'0' + d as u8));
                end = i + c.len_utf8();
            }
            _ => break,
        }
    }
    if out.is_empty() {
        return None;
    }
    // Drop leading zeros ("05" → "5") but keep "0".
    let trimmed = out.trim_start_matches('0');
    let out = if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_string()
    };
    Some((out, &s[end..]))
}

/// Strips an ASCII-case-insensitive prefix.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The value of an upper-case Roman numeral (I … MMMCMXCIX), or `None`.
fn roman_value(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 15 {
        return None;
    }
    let val = |c: char| match c {
        'I' => Some(1),
        'V' => Some(5),
        'X' => Some(10),
        'L' => Some(50),
        'C' => Some(100),
        'D' => Some(500),
        'M' => Some(1000),
        _ => None,
    };
    let vals: Vec<i64> = s.chars().map(val).collect::<Option<_>>()?;
    let mut total = 0i64;
    for (i, v) in vals.iter().enumerate() {
        if vals.get(i + 1).is_some_and(|n| n > v) {
            total -= v;
        } else {
            total += v;
        }
    }
    // Reject malformed numerals such as "IIII" or "IC" by round-tripping.
    let total = u32::try_from(total).ok().filter(|t| *t > 0)?;
    (to_roman(total) == s).then_some(total)
}

fn to_roman(mut n: u32) -> String {
    const T: [(u32, &str); 13] = [
        (1000, "M"),
        (900, "CM"),
        (500, "D"),
        (400, "CD"),
        (100, "C"),
        (90, "XC"),
        (50, "L"),
        (40, "XL"),
        (10, "X"),
        (9, "IX"),
        (5, "V"),
        (4, "IV"),
        (1, "I"),
    ];
    let mut s = String::new();
    for (v, r) in T {
        while n >= v {
            s.push_str(r);
            n -= v;
        }
    }
    s
}

/// `Article N…` / `Art. N…` (see the module doc).
fn en_marker(line: &str) -> Option<(String, &str)> {
    let rest = if let Some(r) = strip_prefix_ci(line, "article") {
        if !r.starts_with(char::is_whitespace) {
            return None;
        }
        r
    } else {
        strip_prefix_ci(line, "art.")?
    };
    let rest = rest.trim_start();
    let (mut number, mut rest) = match leading_digits(rest) {
        Some(x) => x,
        None => {
            let end = rest
                .find(|c: char| !c.is_ascii_uppercase())
                .unwrap_or(rest.len());
            (roman_value(&rest[..end])?.to_string(), &rest[end..])
        }
    };
    // Branches: -2, -2-3 (hyphen or en dash directly between digits).
    loop {
        let after = rest.strip_prefix('-').or_else(|| rest.strip_prefix('–'));
        match after.and_then(leading_digits) {
            Some((b, r)) => {
                number.push('-');
                number.push_str(&b);
                rest = r;
            }
            None => break,
        }
    }
    // Latin suffixes (3bis, 3-bis, 3 bis) or one letter (3a).
    const SUFFIXES: [&str; 6] = ["bis", "ter", "quater", "quinquies", "sexies", "septies"];
    let cand = rest.strip_prefix(['-', ' ']).unwrap_or(rest);
    let word_end = cand
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(cand.len());
    let word = &cand[..word_end];
    let is_suffix = SUFFIXES.iter().any(|s| word.eq_ignore_ascii_case(s));
    // One letter only when glued to the number (`3a`, not `3 a`).
    if is_suffix || (word_end == 1 && cand.len() == rest.len()) {
        number.push_str(&word.to_ascii_lowercase());
        rest = &cand[word_end..];
    }
    let rest = rest.strip_prefix(['.', ':']).unwrap_or(rest);
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return None;
    }
    // "Article 5 of the Act applies…" is a sentence, not a heading.
    if rest
        .trim_start()
        .starts_with(|c: char| c.is_ascii_lowercase())
    {
        return None;
    }
    Some((number, rest))
}

/// Arabic words that, right after `المادة N`, show a reference inside a sentence.
const AR_REFERENCE_WORDS: &[&str] = &[
    "من",
    "في",
    "وفق",
    "وفقا",
    "المذكوره",
    "السابقه",
    "اعلاه",
    "عن",
    "الي",
    "علي",
    "او",
    "و",
    "بعد",
    "قبل",
];

/// Feminine ordinal stems (normalized, without ال) and their values.
const AR_ORDINALS: &[(&str, u32)] = &[
    ("اولي", 1),
    ("حاديه", 1),
    ("ثانيه", 2),
    ("ثالثه", 3),
    ("رابعه", 4),
    ("خامسه", 5),
    ("سادسه", 6),
    ("سابعه", 7),
    ("ثامنه", 8),
    ("تاسعه", 9),
    ("عاشره", 10),
];

/// `المادة N` / `مادة (N)` / `المادة الأولى` … (see the module doc). Works on the
/// normalized line, so the returned rest is normalized text too (only used for the
/// inline-heading check).
fn ar_marker(line: &str) -> Option<(String, &str)> {
    // Cheap reject before normalizing: the line must start with an Arabic letter.
    if !line.starts_with(|c: char| {
        ('\u{0600}'..='\u{06FF}').contains(&c) || ('\u{FB50}'..='\u{FEFF}').contains(&c)
    }) {
        return None;
    }
    // Normalize only the head of the line; the marker is short.
    let head: String = line.chars().take(80).collect();
    let norm = normalize_arabic(&head);
    let rest = norm
        .strip_prefix("الماده")
        .or_else(|| norm.strip_prefix("ماده"))?;
    if !rest
        .starts_with(|c: char| c.is_whitespace() || matches!(c, '(' | '[') || c.is_ascii_digit())
    {
        return None;
    }
    let mut r = rest.trim_start();
    let mut bracketed = false;
    if let Some(x) = r.strip_prefix(['(', '[']) {
        bracketed = true;
        r = x.trim_start();
    }
    let mut number;
    if let Some((n, x)) = leading_digits(r) {
        number = n;
        r = x;
    } else {
        let mut words = r.split_whitespace();
        let w1 = words.next()?;
        let w1c = w1.trim_end_matches([':', '-', '–', '—', '.', ')', ']']);
        let stem = w1c.strip_prefix("ال").unwrap_or(w1c);
        let w2 = words
            .next()
            .map(|w| w.trim_end_matches([':', '-', '–', '—', '.', ')', ']']));
        let w2s = w2.map(|w| w.strip_prefix("ال").unwrap_or(w));
        let unit = AR_ORDINALS
            .iter()
            .find(|(s, _)| *s == stem)
            .map(|(_, v)| *v);
        let (value, used_two) = match (unit, w2s) {
            (Some(u), Some("عشره" | "عشر")) if w1c == w1 => (u + 10, true),
            (Some(u), _) if stem != "حاديه" => (u, false),
            (None, _) if stem == "عشرون" => (20, false),
            _ => return None,
        };
        number = value.to_string();
        // Advance r past the consumed words (but not the trailing separator).
        let consumed_word = if used_two { w2? } else { w1c };
        let pos = r.find(consumed_word)? + consumed_word.len();
        r = &r[pos..];
    }
    // مكرر: the Arabic "bis".
    let t = r.trim_start();
    if let Some(x) = t.strip_prefix("مكررا").or_else(|| t.strip_prefix("مكرر")) {
        number.push_str("bis");
        r = x;
    }
    let mut r = r.trim_start();
    if bracketed {
        r = r.strip_prefix([')', ']']).unwrap_or(r).trim_start();
    }
    let mut had_sep = false;
    if let Some(x) = r.strip_prefix([':', '-', '–', '—', '.', ')']) {
        had_sep = true;
        r = x;
    }
    let first = r.split_whitespace().next();
    match first {
        Some(w) if !had_sep && !bracketed && AR_REFERENCE_WORDS.contains(&w) => return None,
        _ => {}
    }
    // `r` borrows `norm`; hand back a rest that lives as long as `line` (only its
    // parenthesized prefix matters, and Arabic captions are rare) by locating it again.
    let rest_in_line = locate_rest(line, r);
    Some((number, rest_in_line))
}

/// Finds the part of `line` corresponding to the normalized tail `tail`: the suffix of
/// `line` from the first character of `tail` after skipping as many word characters as were
/// consumed. Approximate by design (diacritics may shift it); only used to look for an
/// inline parenthesized heading, so on doubt it returns "" (no heading).
fn locate_rest<'a>(line: &'a str, tail: &str) -> &'a str {
    let t = tail.trim_start();
    match t.chars().next() {
        Some(c @ ('(' | '（')) => line.find(c).map_or("", |i| &line[i..]),
        _ => "",
    }
}

/// A parenthesized heading at the start of `rest` (after whitespace), if it qualifies.
fn inline_heading(rest: &str) -> Option<String> {
    let r = rest.trim_start();
    let (open, close) = if r.starts_with('（') {
        ('（', '）')
    } else if r.starts_with('(') {
        ('(', ')')
    } else {
        return None;
    };
    let inner = &r[open.len_utf8()..];
    let end = inner.find(close)?;
    heading_text(&inner[..end])
}

/// A line that is exactly one parenthesized caption; returns the caption.
fn caption_line(line: &str) -> Option<String> {
    let t = line.trim();
    let inner = if let Some(x) = t.strip_prefix('（') {
        x.strip_suffix('）')?
    } else {
        t.strip_prefix('(')?.strip_suffix(')')?
    };
    if inner.contains(['（', '）', '(', ')']) || inner.chars().count() > 120 {
        return None;
    }
    heading_text(inner)
}

/// `inner` as a heading, unless it is a paragraph or item number: digits, one letter,
/// lower-case Roman numerals.
fn heading_text(inner: &str) -> Option<String> {
    let h = inner.trim();
    let letters = h
        .chars()
        .filter(|c| c.is_alphabetic() || is_cjk(*c))
        .count();
    if letters == 0 {
        return None;
    }
    let is_cjk_text = h.chars().any(is_cjk);
    if !is_cjk_text && (letters == 1 || h.chars().all(|c| matches!(c, 'i' | 'v' | 'x' | 'l' | 'c')))
    {
        return None;
    }
    Some(h.to_string())
}

/// The paragraph number a line starts with, if it is formatted as one for `lang`:
/// Japanese `２　…` (digits then whitespace); elsewhere `(2)`, `2.`, `2)`, `2-` followed by
/// whitespace or the end (not another digit, so `2.5` or `1976.` mid-text dates fail only
/// when followed by a digit).
fn paragraph_number(line: &str, lang: Lang) -> Option<u32> {
    let t = line.trim_start();
    let (paren, t) = match t.strip_prefix(['(', '（']) {
        Some(x) => (true, x),
        None => (false, t),
    };
    let (digits, rest) = leading_digits(t)?;
    let n: u32 = digits.parse().ok()?;
    let rest = if paren {
        rest.strip_prefix([')', '）'])?
    } else if let Some(r) = rest.strip_prefix(['.', ')', '-', '–', '）']) {
        r
    } else if matches!(lang, Lang::Ja | Lang::Other) && rest.starts_with(char::is_whitespace) {
        rest
    } else {
        return None;
    };
    match rest.chars().next() {
        None => Some(n),
        Some(c) if c.is_whitespace() => Some(n),
        Some(c) if !c.is_ascii_digit() && !paren && matches!(lang, Lang::Ar) => Some(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JA: &str = "民法\n\n第一編　総則\n\n（基本原則）\n第一条　私権は、公共の福祉に適合しなければならない。\n２　権利の行使及び義務の履行は、信義に従い誠実に行わなければならない。\n３　権利の濫用は、これを許さない。\n\n（意思能力）\n第三条の二　法律行為の当事者が意思表示をした時に意思能力を有しなかったときは、その法律行為は、無効とする。\n第九十条　公の秩序又は善良の風俗に反する法律行為は、無効とする。\n第九十条の規定は、ここでは条文の始まりではない。\n第３９８条の２の３　テスト\n";

    #[test]
    fn japanese() {
        let law = split_law(JA, Lang::Ja);
        assert_eq!(law.preamble, "民法\n\n第一編　総則");
        let nums: Vec<_> = law.articles.iter().map(|a| a.number.as_str()).collect();
        assert_eq!(nums, ["1", "3-2", "90", "398-2-3"]);
        let a1 = &law.articles[0];
        assert_eq!(a1.heading.as_deref(), Some("基本原則"));
        assert_eq!(a1.paragraphs, 3);
        assert_eq!(a1.line, 6);
        assert!(a1.text.starts_with("（基本原則）\n第一条"));
        assert!(a1.text.ends_with("これを許さない。"));
        assert_eq!(law.articles[1].heading.as_deref(), Some("意思能力"));
        assert_eq!(law.articles[1].paragraphs, 1);
        let a90 = &law.articles[2];
        assert_eq!(a90.heading, None);
        assert!(
            a90.text.contains("第九十条の規定は"),
            "a reference line stays in the text"
        );
        assert_eq!(a90.line, 12);
    }

    #[test]
    fn arabic() {
        let text = "القانون المدني الأردني\nالمادة 1\nيسمى هذا القانون.\nالمادة (٢): تسري نصوص هذا القانون\n1- على المسائل\n2- وعلى غيرها\nمادة ۳ –\nنص\nالمــادّة الرابعة\nنص\nالمادة الحادية عشرة:\nنص\nالمادة 5 من هذا القانون لا تبدأ مادة.\nالمادة 12 مكرر\nنص";
        let law = split_law(text, Lang::Ar);
        assert_eq!(law.preamble, "القانون المدني الأردني");
        let nums: Vec<_> = law.articles.iter().map(|a| a.number.as_str()).collect();
        assert_eq!(nums, ["1", "2", "3", "4", "11", "12bis"]);
        assert_eq!(law.articles[1].paragraphs, 2);
        assert_eq!(law.articles[0].line, 2);
        assert!(law.articles[4].text.contains("المادة 5 من هذا القانون"));
    }

    #[test]
    fn arabic_ordinals() {
        for (s, n) in [
            ("المادة الأولى", "1"),
            ("المادة الثانية:", "2"),
            ("المادة العاشرة -", "10"),
            ("المادة الثانية عشرة", "12"),
            ("المادة العشرون", "20"),
            ("مادة (٧)", "7"),
            ("المادة [15]", "15"),
            ("المادة05", "5"),
        ] {
            assert_eq!(
                parse_article_marker(s, Lang::Ar)
                    .map(|m| m.number)
                    .as_deref(),
                Some(n),
                "{s}"
            );
        }
        for s in [
            "المادة",
            "المادة الحادية",
            "المادتين 3 و 4",
            "المادة 5 من القانون",
            "مادة س",
        ] {
            assert_eq!(parse_article_marker(s, Lang::Ar), None, "{s}");
        }
    }

    #[test]
    fn english() {
        let text = "CIVIL CODE\nPart I\n(Fundamental Principles)\nArticle 1 (1) Private rights must be congruent with the public welfare.\n(2) The exercise of rights must be done in good faith.\n(3) Abuse of rights is not permitted.\n(Mental Capacity)\nArticle 3-2 If the party had no mental capacity, the act is void.\nArticle 5 of the Act is not a heading.\nART. 90: A juristic act contrary to public order is void.\nArticle 3bis\nText.\nArticle IV (Scope)\n1. Text.\n2. More.\n";
        let law = split_law(text, Lang::En);
        assert_eq!(law.preamble, "CIVIL CODE\nPart I");
        let nums: Vec<_> = law.articles.iter().map(|a| a.number.as_str()).collect();
        assert_eq!(nums, ["1", "3-2", "90", "3bis", "4"]);
        assert_eq!(
            law.articles[0].heading.as_deref(),
            Some("Fundamental Principles")
        );
        assert_eq!(law.articles[0].paragraphs, 3);
        assert_eq!(law.articles[1].heading.as_deref(), Some("Mental Capacity"));
        assert!(law.articles[1].text.contains("Article 5 of the Act"));
        assert_eq!(law.articles[4].heading.as_deref(), Some("Scope"));
        assert_eq!(law.articles[4].paragraphs, 2);
        assert_eq!(law.articles[0].line, 4);
    }

    #[test]
    fn english_markers() {
        let n = |s: &str| parse_article_marker(s, Lang::En).map(|m| m.number);
        assert_eq!(n("Article 12.").as_deref(), Some("12"));
        assert_eq!(n("  article 7a").as_deref(), Some("7a"));
        assert_eq!(n("Art.5").as_deref(), Some("5"));
        assert_eq!(n("Article 3-2-1:").as_deref(), Some("3-2-1"));
        assert_eq!(n("Article 10 - Definitions").as_deref(), Some("10"));
        assert_eq!(n("Article 3 bis").as_deref(), Some("3bis"));
        assert_eq!(n("Articles 3 and 4"), None);
        assert_eq!(n("Article IIII"), None);
        assert_eq!(n("Article"), None);
        assert_eq!(n("Artist 5"), None);
        assert_eq!(n("Article 5x5"), None);
    }

    #[test]
    fn other_tries_all() {
        let text = "第一条　甲\nالمادة ٢\nArticle 3\n";
        let nums: Vec<_> = split_articles(text, Lang::Other)
            .into_iter()
            .map(|a| a.number)
            .collect();
        assert_eq!(nums, ["1", "2", "3"]);
        // A fixed language only uses its own rule.
        assert_eq!(split_articles(text, Lang::Ja).len(), 1);
    }

    #[test]
    fn no_markers() {
        let law = split_law("Just a memo.\nNo articles here.", Lang::En);
        assert!(law.articles.is_empty());
        assert_eq!(law.preamble, "Just a memo.\nNo articles here.");
        assert_eq!(split_law("", Lang::Other), SplitLaw::default());
    }

    #[test]
    fn crlf_and_trailing_blanks() {
        let law = split_law("Article 1\r\nText\r\n\r\n\r\nArticle 2\r\n", Lang::En);
        assert_eq!(law.articles[0].text, "Article 1\nText");
        assert_eq!(law.articles[1].text, "Article 2");
        assert_eq!(law.articles[1].line, 5);
    }
}
