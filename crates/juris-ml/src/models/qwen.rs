//! Qwen2 / Qwen2.5 and Qwen3 decoders read from GGUF. They are Llama-family blocks (see
//! [`super::llama`]) with three switches: rotate-half rotary pairs (llama.cpp does not
//! permute Qwen's q/k rows), biases on the q/k/v projections (Qwen2), and a per-head RMSNorm
//! on q and k before rotation (Qwen3).
//!
//! Not yet checked against a reference on real weights (no Qwen GGUF among the fetched
//! models); the shared blocks are, through SmolLM2. Tiny random qwen2/qwen3 files (with a
//! merged LoRA) agree with llama.cpp and, exported as Hugging Face folders, with
//! transformers (`scripts/fixtures/qlora_fixtures.py --check-export`).

use candle_core::Device;

use super::decoder_layers::WeightMode;
use super::llama::{LlamaConfig, LlamaModel};
use crate::error::Result;
use crate::gguf::GgufFile;

/// Loads a `qwen2` or `qwen3` file (`arch` is its `general.architecture`).
pub fn load_qwen(
    g: &GgufFile,
    arch: &str,
    mode: WeightMode,
    device: &Device,
) -> Result<LlamaModel> {
    let mut cfg = LlamaConfig::from_gguf(g, arch)?;
    cfg.interleaved_rope = false;
    cfg.qkv_bias = arch == "qwen2";
    cfg.qk_norm = arch == "qwen3";
    LlamaModel::load(g, cfg, mode, device)
}
