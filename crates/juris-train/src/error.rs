//! [`TrainError`]: how training fails, each message naming the file (and config key) and
//! what to do next.

use std::path::PathBuf;

/// Errors from configuring, running or resuming training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The config file is invalid: unknown key, wrong type, bad value.
    #[error("{path}: {what}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the key.
        what: String,
    },
    /// Training data is missing or inconsistent.
    #[error("{0}")]
    Data(String),
    /// A checkpoint cannot be used.
    #[error("{path}: {what}")]
    Checkpoint {
        /// The checkpoint folder.
        path: PathBuf,
        /// What is wrong and what to do.
        what: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The model failed to load or run.
    #[error(transparent)]
    Ml(#[from] juris_ml::MlError),
    /// A tensor operation failed (out of GPU memory: with what to change).
    #[error("tensor computation failed: {0}{hint}", hint = memory_hint(.0))]
    Candle(#[from] candle_core::Error),
    /// Building or searching the BM25 index for negatives failed.
    #[error(transparent)]
    Index(#[from] juris_index::IndexError),
    /// Reading the corpus or queries failed.
    #[error(transparent)]
    Corpus(#[from] juris_index::corpus::CorpusError),
    /// Reading qrels failed.
    #[error(transparent)]
    Eval(#[from] juris_eval::EvalError),
}

/// What to change when a step ran out of GPU memory (empty for other failures): activations
/// grow with sequences per micro-batch × tokens, and `grad_accum` keeps the effective batch.
fn memory_hint(e: &candle_core::Error) -> &'static str {
    let text = e.to_string();
    if text.contains("OUT_OF_MEMORY") || text.contains("out of memory") {
        "\n  the GPU ran out of memory: lower [train] batch_size (raise grad_accum to keep the \
         effective batch) or [model] max_len; retriever training can also set [train] \
         gradient_checkpointing = true"
    } else {
        ""
    }
}

/// Shorthand for results in this crate.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Wraps an IO error with its path.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_gpu_memory_says_what_to_change() {
        let oom = TrainError::from(candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        ))
        .to_string();
        assert!(
            oom.contains("CUDA_ERROR_OUT_OF_MEMORY") && oom.contains("[train] batch_size"),
            "{oom}"
        );
        let other = TrainError::from(candle_core::Error::Msg("shape mismatch".into())).to_string();
        assert_eq!(other, "tensor computation failed: shape mismatch");
    }
}
