//! Languages juris knows by name, and script-based language detection.
//!
//! Detection counts letters by Unicode script: any kana, or a majority of Han among letters,
//! means Japanese; a majority of Arabic letters means Arabic; a majority of Latin letters
//! means English; anything else is [`Lang::Other`], which gets the language-neutral analyzer.
//! Script counting is enough for the languages juris ships analyzers for and never guesses a
//! language it cannot analyze.

use crate::TextError;
use serde::{Deserialize, Serialize};

/// A language with its own analyzer, or `Other` for every language without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// English.
    En,
    /// Japanese.
    Ja,
    /// Arabic.
    Ar,
    /// Any other language: analyzed by the language-neutral `standard` analyzer.
    Other,
}

impl Lang {
    /// Every language, in a fixed order.
    pub const ALL: [Lang; 4] = [Lang::En, Lang::Ja, Lang::Ar, Lang::Other];

    /// The short code used on the command line and in files.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ja => "ja",
            Lang::Ar => "ar",
            Lang::Other => "other",
        }
    }

    /// Parses a code (`en`, `ja`, `ar`, `other`; case-insensitive, region suffixes such as
    /// `en-US` or `ja_JP` allowed).
    pub fn parse(code: &str) -> Result<Lang, TextError> {
        let lower = code.trim().to_ascii_lowercase();
        let base = lower.split(['-', '_']).next().unwrap_or("");
        match base {
            "en" | "eng" | "english" => Ok(Lang::En),
            "ja" | "jpn" | "japanese" => Ok(Lang::Ja),
            "ar" | "ara" | "arabic" => Ok(Lang::Ar),
            "other" | "und" => Ok(Lang::Other),
            _ => Err(TextError::UnknownLanguage {
                code: code.to_string(),
            }),
        }
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// Detects the language of `text` from the scripts of its letters.
pub fn detect_lang(text: &str) -> Lang {
    let (mut kana, mut han, mut arabic, mut latin, mut other) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    for c in text.chars() {
        let u = c as u32;
        match u {
            0x3040..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9F => kana += 1,
            0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0xF900..=0xFAFF => han += 1,
            0x0600..=0x06FF
            | 0x0750..=0x077F
            | 0x08A0..=0x08FF
            | 0xFB50..=0xFDFF
            | 0xFE70..=0xFEFF => arabic += 1,
            _ if c.is_ascii_alphabetic()
                || (0x00C0..=0x024F).contains(&u)
                || (0xFF21..=0xFF5A).contains(&u) =>
            {
                latin += 1
            }
            _ if c.is_alphabetic() => other += 1,
            _ => {}
        }
    }
    let total = kana + han + arabic + latin + other;
    if total == 0 {
        return Lang::Other;
    }
    if kana > 0 && (kana + han) * 5 >= total {
        return Lang::Ja;
    }
    [
        (han, Lang::Ja),
        (arabic, Lang::Ar),
        (latin, Lang::En),
        (other, Lang::Other),
    ]
    .into_iter()
    .max_by_key(|(n, _)| *n)
    .map(|(_, l)| l)
    .unwrap_or(Lang::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_scripts() {
        assert_eq!(
            detect_lang("民法第九十条の規定により無効とする。"),
            Lang::Ja
        );
        assert_eq!(
            detect_lang("ما هي عقوبة السرقة في القانون الأردني؟"),
            Lang::Ar
        );
        assert_eq!(
            detect_lang("A juristic act contrary to public order is void."),
            Lang::En
        );
        assert_eq!(detect_lang("Гражданский кодекс"), Lang::Other);
        assert_eq!(detect_lang("12345 !!"), Lang::Other);
        // Japanese with a Latin acronym stays Japanese.
        assert_eq!(detect_lang("NPO法人の設立について"), Lang::Ja);
    }

    #[test]
    fn parses_codes() {
        assert_eq!(Lang::parse("ja_JP").unwrap(), Lang::Ja);
        assert_eq!(Lang::parse("EN").unwrap(), Lang::En);
        assert!(Lang::parse("xx").is_err());
    }
}
