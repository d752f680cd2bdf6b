//! One file per analyzer; `build` maps a registry name (see [`crate::analyzer::ANALYZERS`])
//! to a constructed analyzer. The analyzer types are public so that code which knows what it
//! wants can skip the registry.

pub mod ar_light;
pub mod ar_norm;
pub mod ar_snowball;
pub mod en_simple;
pub mod en_snowball;
pub mod ja_bigram;
pub mod ja_ipadic;
pub mod standard;
mod stem_cache;
mod words;

pub use ar_light::{is_ar_stopword, light_strip, ArLight, AR_STOPWORDS};
pub use ar_norm::ArNorm;
pub use ar_snowball::ArSnowball;
pub use en_simple::EnSimple;
pub use en_snowball::{is_en_stopword, EnSnowball, EN_STOPWORDS};
pub use ja_bigram::JaBigram;
pub use ja_ipadic::JaIpadic;
pub use standard::Standard;

use crate::{Analyzer, TextError};
use std::sync::Arc;

/// Builds the analyzer registered under `name`, or `None` if the name is unknown.
pub(crate) fn build(name: &str) -> Option<Result<Arc<dyn Analyzer>, TextError>> {
    let a: Arc<dyn Analyzer> = match name {
        "standard" => Arc::new(Standard),
        "en-simple" => Arc::new(EnSimple),
        "en-snowball" => Arc::new(EnSnowball::default()),
        "ja-bigram" => Arc::new(JaBigram),
        "ja-ipadic" => return Some(JaIpadic::new().map(|a| Arc::new(a) as Arc<dyn Analyzer>)),
        "ar-norm" => Arc::new(ArNorm),
        "ar-light" => Arc::new(ArLight),
        "ar-snowball" => Arc::new(ArSnowball::default()),
        _ => return None,
    };
    Some(Ok(a))
}
