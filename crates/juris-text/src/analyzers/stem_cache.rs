//! A per-thread memo of Snowball stems. Stemming is the most expensive step of the English
//! and Arabic analyzers, while the words of a corpus or a query stream repeat heavily (Zipf),
//! so each thread keeps the stems it has computed. The cache is cleared when it reaches
//! [`MAX_ENTRIES`], which bounds memory on corpora with huge vocabularies.

use crate::fxhash::FxBuild;
#[cfg(test)]
use rust_stemmers::Algorithm;
use rust_stemmers::Stemmer;
use std::cell::RefCell;
use std::collections::HashMap;

/// Words remembered per thread and language before the memo is cleared.
pub(crate) const MAX_ENTRIES: usize = 1 << 18;

thread_local! {
    static MEMO: RefCell<[HashMap<String, Box<str>, FxBuild>; 2]> = RefCell::new(Default::default());
}

/// Which memo a stemmer uses; one per algorithm, so languages never share entries.
#[derive(Clone, Copy)]
pub(crate) enum Memo {
    English = 0,
    Arabic = 1,
}

/// Calls `sink` with the stem of `word` (skipping empty stems), from the memo when present.
pub(crate) fn with_stem(stemmer: &Stemmer, memo: Memo, word: &str, sink: &mut dyn FnMut(&str)) {
    MEMO.with(|m| {
        // A sink that analyzes again on this thread finds the memo borrowed: stem directly.
        let Ok(mut maps) = m.try_borrow_mut() else {
            let stem = stemmer.stem(word);
            if !stem.is_empty() {
                sink(&stem);
            }
            return;
        };
        let map = &mut maps[memo as usize];
        if let Some(stem) = map.get(word) {
            if !stem.is_empty() {
                sink(stem);
            }
            return;
        }
        let stem: Box<str> = stemmer.stem(word).into();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        if !stem.is_empty() {
            sink(&stem);
        }
        map.insert(word.to_string(), stem);
    });
}

/// The algorithm a memo belongs to (for tests).
#[cfg(test)]
fn algorithm(memo: Memo) -> Algorithm {
    match memo {
        Memo::English => Algorithm::English,
        Memo::Arabic => Algorithm::Arabic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_returns_the_stemmer_result_every_time() {
        for (memo, words) in [
            (
                Memo::English,
                &["running", "contracts", "voidable", "running"][..],
            ),
            (Memo::Arabic, &["المكتبات", "القانون", "المكتبات"][..]),
        ] {
            let stemmer = Stemmer::create(algorithm(memo));
            for w in words {
                let mut got = Vec::new();
                with_stem(&stemmer, memo, w, &mut |s| got.push(s.to_string()));
                assert_eq!(got, [stemmer.stem(w).into_owned()]);
            }
        }
    }
}
