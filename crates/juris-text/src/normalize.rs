//! Unicode normalization shared by all analyzers (skeleton).
