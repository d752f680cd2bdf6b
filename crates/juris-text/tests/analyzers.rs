//! Integration tests of the analyzer registry: exact terms on legal sentences, the IPADIC
//! analyzer when its sources are installed, determinism and robustness on odd input.

use juris_text::analyzer::ANALYZERS;
use juris_text::analyzers::ja_ipadic::{ipadic_cache_path, ipadic_source_dir};
use juris_text::{build_analyzer, Analyzer, AnalyzerSet, AnalyzerSpec, Lang};
use std::sync::Arc;

fn ipadic_available() -> bool {
    ipadic_cache_path(&ipadic_source_dir()).is_ok()
}

/// Every registered analyzer that can be built here (ja-ipadic only with its sources).
fn all_analyzers() -> Vec<Arc<dyn Analyzer>> {
    ANALYZERS
        .iter()
        .filter(|(n, _)| *n != "ja-ipadic" || ipadic_available())
        .map(|(n, _)| build_analyzer(n).unwrap_or_else(|e| panic!("{n}: {e}")))
        .collect()
}

fn terms(name: &str, text: &str) -> Vec<String> {
    build_analyzer(name).unwrap().analyze(text)
}

#[test]
fn registry_builds_every_name() {
    for a in all_analyzers() {
        assert!(ANALYZERS.iter().any(|(n, _)| *n == a.name()));
    }
    assert!(build_analyzer("nope").is_err());
}

#[test]
fn english_exact() {
    assert_eq!(
        terms("en-snowball", "The contracts were voidable"),
        ["contract", "voidabl"]
    );
    assert_eq!(
        terms("en-simple", "The contracts were voidable"),
        ["the", "contracts", "were", "voidable"]
    );
    assert_eq!(
        terms(
            "en-snowball",
            "A manifestation of intention based on fraud or duress is voidable."
        ),
        ["manifest", "intent", "base", "fraud", "duress", "voidabl"]
    );
}

#[test]
fn japanese_bigram_exact() {
    assert_eq!(
        terms("ja-bigram", "民法第九十条"),
        ["民法", "法第", "第九", "九十", "十条"]
    );
    assert_eq!(
        terms("standard", "民法第九十条"),
        ["民法", "法第", "第九", "九十", "十条"]
    );
}

#[test]
fn arabic_exact() {
    assert_eq!(
        terms("ar-norm", "المسؤولية التقصيرية"),
        ["المسووليه", "التقصيريه"]
    );
    assert_eq!(
        terms("ar-light", "والمسؤولية التقصيرية في القانون"),
        ["مسووليه", "تقصيريه", "قانون"]
    );
    // Inflected and cliticized forms of one word meet in one stem.
    let s = |t| terms("ar-snowball", t);
    assert_eq!(s("المحكمة"), s("للمحكمة"));
    assert_eq!(s("بالعقد"), s("العقد"));
    assert_eq!(s("العقود"), s("والعقود"));
    assert!(s("في من على إلى عن أن").is_empty());
}

#[test]
fn ja_ipadic_content_words() {
    if !ipadic_available() {
        println!(
            "skipped: IPADIC sources not found in {}",
            ipadic_source_dir().display()
        );
        return;
    }
    let t0 = std::time::Instant::now();
    let a = build_analyzer("ja-ipadic").expect("ja-ipadic builds when the sources are installed");
    println!("ja-ipadic ready in {:.1?}", t0.elapsed());
    let t = a.analyze("公の秩序又は善良の風俗に反する法律行為は、無効とする。");
    println!("{t:?}");
    for w in ["秩序", "善良", "風俗", "反する", "法律", "行為", "無効"] {
        assert!(t.iter().any(|x| x == w), "{w} missing from {t:?}");
    }
    for w in ["の", "は", "又は", "に", "、", "。", "とする", "する"] {
        assert!(!t.iter().any(|x| x == w), "{w} should be dropped: {t:?}");
    }
    // Inflected verbs come back as base forms; full-width input is NFKC'd.
    let t = a.analyze("債務者が履行しなかったときは、ＡＢＣ社に損害を賠償しなければならない。");
    println!("{t:?}");
    assert!(t.iter().any(|x| x == "債務"), "{t:?}");
    assert!(t.iter().any(|x| x == "abc"), "{t:?}");
    assert!(t.iter().any(|x| x == "損害"), "{t:?}");
    // A second analyzer shares the tokenizer and agrees.
    let b = build_analyzer("ja-ipadic").unwrap();
    assert_eq!(
        a.analyze("権利の濫用は、これを許さない。"),
        b.analyze("権利の濫用は、これを許さない。")
    );
}

/// Odd inputs every analyzer must survive without panicking.
fn odd_inputs() -> Vec<String> {
    vec![
        String::new(),
        " \t\n\r".into(),
        "、。!?()（）「」…—–-‐''\"§¶".into(),
        "\u{0301}\u{0651}\u{064B}\u{20DD}".into(),
        "a\u{0301}\u{0301}\u{0301}b".into(),
        "\u{FEFF}\u{200B}\u{200C}\u{200D}\u{2028}\u{2029}".into(),
        "\u{FDFD}\u{FDFA}\u{FEFB}\u{FB50}".into(),
        "\u{E000}\u{F8FF}\u{10FFFF}\u{FFFF}\u{FFFE}\u{0000}".into(),
        "ﾊﾟﾋﾟﾌﾟﾍﾟﾎﾟ ｶﾞ ㍻ ㌔ ①②③ ⅻ ﬁ".into(),
        "İstanbul ΣΊΣΥΦΟΣ ß ǅ".into(),
        "الماده ١٢ Article 3 第三条 Гражданский 😀👩‍⚖️ 𠮷野家".into(),
        "ـــــ".into(),
        "ー々〆〇ヽヾ".into(),
        "'s ' 's's".into(),
        "ﷲ ﷺ".into(),
    ]
}

#[test]
fn robust_on_odd_input() {
    for a in all_analyzers() {
        for s in odd_inputs() {
            let t = a.analyze(&s);
            assert!(
                t.iter().all(|x| !x.is_empty()),
                "{}: empty term on {s:?}: {t:?}",
                a.name()
            );
        }
        assert!(a.analyze("").is_empty(), "{}", a.name());
        assert!(a.analyze("、。!?()（）").is_empty(), "{}", a.name());
    }
}

#[test]
fn robust_on_huge_input() {
    let unit = "第九十条　公の秩序又は善良の風俗に反する法律行為は、無効とする。Article 90 A juristic act is void. المادة ٩٠ يعتبر العقد باطلا.\n";
    let mut big = String::with_capacity(1 << 20);
    while big.len() < 1 << 20 {
        big.push_str(unit);
    }
    // One megabyte without any separator at all, too.
    let solid = "法".repeat((1 << 20) / 3);
    for a in all_analyzers() {
        let n = a.analyze(&big).len();
        assert!(n > 1000, "{}: {n}", a.name());
        let m = a.analyze(&solid).len();
        assert!(m > 0, "{}", a.name());
    }
}

#[test]
fn deterministic() {
    let text = "第九十条　公の秩序に反する法律行為は、無効とする。The contracts were voidable. والمسؤولية التقصيرية";
    for a in all_analyzers() {
        assert_eq!(a.analyze(text), a.analyze(text), "{}", a.name());
        let mut streamed = Vec::new();
        a.analyze_with(text, &mut |t| streamed.push(t.to_string()));
        assert_eq!(streamed, a.analyze(text), "{}", a.name());
    }
}

#[test]
fn analyzer_set_routes_by_language() {
    let set = AnalyzerSet::new(AnalyzerSpec::default()).unwrap();
    assert_eq!(set.lang_of("民法第九十条", None), Lang::Ja);
    assert_eq!(
        set.analyze("民法第九十条", None).unwrap(),
        ["民法", "法第", "第九", "九十", "十条"]
    );
    assert_eq!(
        set.analyze("The contracts were voidable", None).unwrap(),
        ["contract", "voidabl"]
    );
    assert!(!set.analyze("القانون المدني", None).unwrap().is_empty());
}
