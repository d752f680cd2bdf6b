//! The lexical side of juris: reading a body of law into [`corpus::Document`]s, building a
//! versioned on-disk inverted index from them, and ranking documents with BM25-family
//! [`scoring`] functions.
#![deny(missing_docs)]

pub mod corpus;
