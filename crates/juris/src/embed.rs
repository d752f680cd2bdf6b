//! `juris embed` (encode an index's documents into an embedding store, refreshing only what
//! changed) and `juris models list` (which presets are present).

use crate::progress::Bar;
use crate::retrieve::{encode_with_bar, store_name_with, stores_dir, EncoderSettings};
use anyhow::{Context, Result};
use juris_dense::{refresh, Dtype, StoreSpec};
use juris_index::{analysis_text, Index, Progress};
use juris_ml::{DeviceChoice, EncoderOptions, TextRole};
use sha2::{Digest, Sha256};
use std::path::Path;

/// What `embed` needs to know.
pub struct EmbedRequest<'a> {
    /// Index folder.
    pub index: &'a Path,
    /// Preset name or model path.
    pub model: &'a str,
    /// Store name (default: derived from the model).
    pub name: Option<&'a str>,
    /// Token limit per document.
    pub max_len: usize,
    /// Documents per forward pass.
    pub batch_size: usize,
    /// Element type on disk.
    pub dtype: Dtype,
    /// Where to compute.
    pub device: DeviceChoice,
    /// A PEFT LoRA adapter folder merged into the model.
    pub adapter: Option<&'a Path>,
}

/// Encodes the index's documents (title + text, as the lexical index analyzes them) with
/// the passage role, reusing the vectors of unchanged documents.
pub fn embed(req: &EmbedRequest<'_>, bar: &Bar) -> Result<()> {
    let index = Index::open(req.index)?;
    let opts = EncoderOptions {
        max_len: req.max_len,
        batch_size: req.batch_size,
        device: req.device,
    };
    if let Some(dir) = req.adapter {
        crate::rerank_cmd::refuse_cross_encoder(dir)?;
    }
    let encoder = juris_ml::load_encoder_with_adapter(req.model, &opts, req.adapter)?;
    let n = index.n_docs();
    let mut texts = Vec::with_capacity(n as usize);
    let mut docs = Vec::with_capacity(n as usize);
    for d in 0..n {
        let doc = index.doc(d)?;
        let text = analysis_text(&doc).into_owned();
        let hash = hex(&Sha256::digest(text.as_bytes())[..12]);
        docs.push((doc.id, hash));
        texts.push(text);
    }
    let name = req
        .name
        .map(str::to_string)
        .unwrap_or_else(|| store_name_with(req.model, req.adapter));
    let dir = stores_dir(req.index).join(&name);
    let settings = EncoderSettings {
        model: req.model.to_string(),
        max_len: req.max_len,
        adapter: req
            .adapter
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())),
    };
    let spec = StoreSpec {
        model: settings.to_store_field(),
        fingerprint: encoder.fingerprint(),
        dim: encoder.dim(),
        dtype: req.dtype,
    };
    let started = std::time::Instant::now();
    bar.start("embedding", Some(u64::from(n)));
    let mut tokens = 0usize;
    let stats = refresh(&dir, &spec, &docs, &mut |positions: &[usize]| {
        let batch: Vec<&str> = positions.iter().map(|&p| texts[p].as_str()).collect();
        for t in &batch {
            tokens += encoder.token_count(t, TextRole::Passage)?.min(req.max_len);
        }
        let vecs = encode_with_bar(
            encoder.as_ref(),
            &batch,
            TextRole::Passage,
            req.batch_size,
            bar,
        )?;
        Ok(vecs)
    })
    .with_context(|| format!("writing embeddings to {}", dir.display()))?;
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "embedded {} with {} into {}: {} encoded, {} reused, {} removed in {secs:.1}s ({:.1} docs/s, {:.0} tokens/s)",
        req.index.display(),
        encoder.name(),
        dir.display(),
        stats.encoded,
        stats.reused,
        stats.removed,
        stats.encoded as f64 / secs.max(1e-9),
        tokens as f64 / secs.max(1e-9),
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prints every preset, whether it is present in the models folder, and where.
pub fn list_models() -> Result<()> {
    let dir = juris_ml::models_dir();
    match &dir {
        Some(d) => println!("models folder: {}", d.display()),
        None => println!(
            "models folder: none found ($JURIS_MODELS_DIR, ./models or the juris cache); run `bash scripts/fetch-models.sh`"
        ),
    }
    println!(
        "{:<12} {:<8} {:<14} model",
        "preset", "present", "languages"
    );
    for p in juris_ml::PRESETS {
        let present = dir
            .as_ref()
            .map(|d| d.join(p.path).exists())
            .unwrap_or(false);
        println!(
            "{:<12} {:<8} {:<14} {}",
            p.name,
            if present { "yes" } else { "no" },
            p.langs,
            p.about
        );
    }
    Ok(())
}
