//! Evaluation for juris (skeleton).
#![deny(missing_docs)]
