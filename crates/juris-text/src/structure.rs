//! Splitting law texts into articles (skeleton).
