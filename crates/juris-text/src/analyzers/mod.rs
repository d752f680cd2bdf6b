//! One file per analyzer. `build` maps a registry name to a constructed analyzer.
//! (Skeleton: implementations land in this folder.)

use crate::{Analyzer, TextError};
use std::sync::Arc;

/// Builds the analyzer registered under `name`, or `None` if the name is unknown.
pub(crate) fn build(name: &str) -> Option<Result<Arc<dyn Analyzer>, TextError>> {
    let _ = name;
    None
}
