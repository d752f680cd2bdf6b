//! `ar-snowball`: `ar-light` terms stemmed with Snowball Arabic (`rust-stemmers`).

use super::ar_light::for_each_light_term;
use super::stem_cache::{with_stem, Memo};
use crate::Analyzer;
use rust_stemmers::{Algorithm, Stemmer};

/// The `ar-snowball` analyzer.
pub struct ArSnowball {
    stemmer: Stemmer,
}

impl Default for ArSnowball {
    fn default() -> Self {
        ArSnowball {
            stemmer: Stemmer::create(Algorithm::Arabic),
        }
    }
}

impl std::fmt::Debug for ArSnowball {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArSnowball")
    }
}

impl Analyzer for ArSnowball {
    fn name(&self) -> &str {
        "ar-snowball"
    }

    fn analyze_with(&self, text: &str, sink: &mut dyn FnMut(&str)) {
        for_each_light_term(text, |w| {
            with_stem(&self.stemmer, Memo::Arabic, w, sink);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems() {
        let a = ArSnowball::default();
        let t = a.analyze("ما هي عقوبة السرقة في القانون الأردني؟");
        assert_eq!(t.len(), 4, "{t:?}");
    }
}
