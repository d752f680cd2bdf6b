//! Errors of the text layer. Every message says what went wrong and what to do next.

/// An error raised while building or running an analyzer.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A language code that juris has no analyzer for.
    #[error("unknown language {code:?}: use one of auto, en, ja, ar, other")]
    UnknownLanguage {
        /// The code as the user wrote it.
        code: String,
    },
    /// An analyzer name that is not registered.
    #[error("unknown analyzer {name:?}: known analyzers are {known}")]
    UnknownAnalyzer {
        /// The name as written.
        name: String,
        /// Comma-separated list of registered names.
        known: String,
    },
    /// The morphological dictionary could not be found, built or loaded.
    #[error("Japanese dictionary: {message}")]
    Dictionary {
        /// What failed and how to fix it.
        message: String,
    },
    /// An I/O error with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// File or folder involved.
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}
