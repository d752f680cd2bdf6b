//! Progress reporting for long operations. The CLI implements [`Progress`] with a progress
//! bar; library callers that do not care pass [`NoProgress`].

/// Receives progress of a long operation. Calls may come from several threads.
pub trait Progress: Sync {
    /// A new phase begins; `total` is the number of units if known.
    fn start(&self, what: &str, total: Option<u64>);
    /// `n` more units of the current phase are done.
    fn inc(&self, n: u64);
    /// The current phase is over.
    fn finish(&self);
}

/// A [`Progress`] that reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _what: &str, _total: Option<u64>) {}
    fn inc(&self, _n: u64) {}
    fn finish(&self) {}
}
